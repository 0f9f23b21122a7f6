//! The steps of one recovery or rebalance job, phase by phase, and their
//! backout. Which phase follows which, and how each is backed out, is the
//! table in gp_recovery_core::job; here is only what each phase does.
//!
//! Nothing here blocks: a step on a segment's files or processes is a
//! supervised script (`supervise::Tool`), a call to a segment is a task on
//! the jobs runtime (`segment_client::Task`), and each phase's function
//! starts or polls them, once per tick of the worker's loop. A catalog
//! change is handed to the loop, which commits it together with the phase
//! that follows.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use gp_recovery_core::events::{History, SegmentEvent};
use gp_recovery_core::host::{self, Scripts};
use gp_recovery_core::identity::{self, HostAsk, HostNames};
use gp_recovery_core::job::{self, Action, Backout, Failure, FailureKind, JobKind, JobState, Phase, Undo};
use gp_recovery_core::probe::{ProbeResult, MIRROR_APPLICATION_NAME, SLOT_NAME};
use gp_recovery_core::rebalance;
use gp_recovery_core::recovery::{self, Attempt, JobRecord, Progress, ProgressReader, RecoveryMode};
use gp_recovery_core::segment::{Mode, Pair, Role, Segment, Status};
use pgrx::prelude::*;
use tokio::sync::oneshot;

use crate::job_table::{self, try_transaction};
use crate::segment_client::{server_user, Target, Task};
use crate::segment_host::{self, HostError, SegmentHost};
use crate::supervise::Tool;
use crate::{catalog, fts, gucs};

/// History texts, as gprecoverseg writes them.
const RESYNC: &str = "gprecoverseg: segment config for resync";
const BACKOUT: &str = "gprecoverseg: segment config for backout";
const REBALANCE: &str = "gp_rebalance: segment config for rebalance";

/// The tools whose output reports copy progress.
const COPY_TOOLS: [&str; 3] = ["pg_rewind", "pg_basebackup", "rsync"];

/// Short steps (checks, moves, configuration) must end within this.
const SHORT_STEP: Duration = Duration::from_secs(300);

/// A catalog change, committed by the loop with the phase that follows.
pub type CatalogChange = Box<dyn FnOnce() -> Result<(), String>>;

/// What one tick of a phase decided.
pub enum Step {
    Stay,
    /// The phase is done: on to the table's next phase (or its alternative).
    Next {
        alternative: bool,
        change: Option<CatalogChange>,
    },
    Fail(Failure),
}

/// A step that failed, of a kind.
fn fail(kind: FailureKind, message: impl Into<String>) -> Step {
    Step::Fail(Failure::new(kind, message))
}

/// A step that failed for a reason no kind names.
fn failed(message: impl Into<String>) -> Step {
    Step::Fail(Failure::other(message))
}

fn next() -> Step {
    Step::Next { alternative: false, change: None }
}

fn next_with(change: CatalogChange) -> Step {
    Step::Next { alternative: false, change: Some(change) }
}

/// On to the next phase, with a history row about `row` committed with it.
fn next_with_history(row: Segment, event: SegmentEvent, text: String) -> Step {
    next_with(Box::new(move || {
        catalog::history(&History { row, event, text });
        Ok(())
    }))
}

/// What a call to a segment returned.
enum Answer {
    Done,
    /// Something accepts connections at the address and port.
    Listening(bool),
    Probe(ProbeResult),
    /// A switchover's primary and mirror, probed together.
    Pair(Box<(ProbeResult, ProbeResult)>),
    Bytes(i64),
    Lsn(u64),
    /// A differential copy's backup_label and tablespace_map.
    Label(String, String),
    /// Done, with what could not be done beside it.
    Warnings(String),
}

/// A differential copy's base backup: its session lives in a task until
/// told to stop (or dropped, which ends the backup).
struct Backup {
    started: oneshot::Receiver<Result<(), String>>,
    stop: Option<oneshot::Sender<()>>,
}

/// One host's part of a relocation's identity check, while it runs.
struct HostCheck {
    ask: HostAsk,
    tool: Option<Tool>,
    result: Option<Result<String, String>>,
}

pub struct Ending {
    state: JobState,
    failure: Failure,
    steps: VecDeque<Undo>,
    notes: Vec<String>,
    success_after_all: bool,
    /// An auto job's attempt that failed: once backed out, the next starts.
    retry: bool,
}

/// What an ending came to.
pub enum Ended {
    /// The job is over, in this state, with this failure.
    Over(JobState, Option<Failure>),
    /// An auto job's attempt is abandoned (backed out); the next follows.
    Retry(Attempt),
}

/// What a phase's earlier steps found, for its later ones: it lives and
/// dies with the phase (`enter` drops it), and each phase has its own.
#[derive(Default)]
enum Scratch {
    #[default]
    Empty,
    CheckingHost(HostScratch),
    Copying(BackupScratch),
    SwitchingRoles(ReplayScratch),
    Configuring(AutoConf),
    Waiting(Wait),
}

/// A phase's scratch type, taken out of `Job::scratch` while a step runs.
trait PhaseScratch: Default {
    fn of(scratch: Scratch) -> Option<Self>;
    fn into_scratch(self) -> Scratch;
}

macro_rules! phase_scratch {
    ($($variant:ident($ty:ty)),* $(,)?) => {$(
        impl PhaseScratch for $ty {
            fn of(scratch: Scratch) -> Option<Self> {
                match scratch {
                    Scratch::$variant(s) => Some(s),
                    _ => None,
                }
            }
            fn into_scratch(self) -> Scratch {
                Scratch::$variant(self)
            }
        }
    )*};
}

phase_scratch!(
    CheckingHost(HostScratch),
    Copying(BackupScratch),
    SwitchingRoles(ReplayScratch),
    Configuring(AutoConf),
    Waiting(Wait),
);

/// Checking the host.
#[derive(Default)]
struct HostScratch {
    /// What the source's databases hold.
    source_bytes: i64,
    /// A relocation's identity check, host by host, while it runs.
    checks: Vec<HostCheck>,
    /// The machine each host that answered the identity check turned out
    /// to be, recorded in the catalog with the phase's change.
    machines: Vec<(String, String)>,
}

/// A differential copy.
#[derive(Default)]
struct BackupScratch {
    backup: Option<Backup>,
    /// pg_backup_stop's backup label and tablespace map.
    label: (String, String),
}

/// A switchover's wait for the mirror.
#[derive(Default)]
struct ReplayScratch {
    /// The stopped primary's final checkpoint, and until when the mirror may take to replay it.
    aim: Option<(u64, Instant)>,
}

/// The target's postgresql.auto.conf, rewritten, before it is written.
#[derive(Default)]
struct AutoConf {
    text: String,
}

/// A wait for the stream or the fault tolerance service.
#[derive(Default)]
struct Wait {
    deadline: Option<Instant>,
    /// Catching up: a round was asked for as the wait began.
    asked: bool,
    /// Catching up: the last WAL distance seen, and when it last shrank.
    behind: Option<(i64, Instant)>,
}

pub struct Job {
    pub rec: JobRecord,
    pub kind: JobKind,
    pub phase: Phase,
    /// The step of the phase that runs (of the phase's row in the table).
    action: Option<Action>,
    scratch: Scratch,
    target: Segment,
    source: Segment,
    target_host: Result<SegmentHost, String>,
    original_host: Result<SegmentHost, String>,
    tool: Option<Tool>,
    task: Option<Task<Result<Answer, String>>>,
    rewound: bool,
    /// The source's tablespace locations outside its data directory, as
    /// checking the source found them: a full copy in place maps each.
    tablespaces: Vec<String>,
    /// The source's pg_hba.conf, as checking the source found it.
    hba_file: String,
    next_check: Instant,
    /// A failure waiting for the cause from the segment's log.
    diagnosing: Option<Failure>,
    /// When the running copy tool last printed progress.
    last_output: Instant,
    /// A switchover's mirror did not replay the stopped primary's final
    /// checkpoint in time.
    mirror_lagged: bool,
    pub ending: Option<Ending>,
    pub progress: Option<Progress>,
    /// Reads the running copy tool's output as it grows.
    progress_reader: ProgressReader,
    pub wal_remaining: Option<i64>,
    pub logfile: Option<std::path::PathBuf>,
}

fn call_timeout() -> Duration {
    gucs::seconds(&gucs::JOB_CALL_TIMEOUT)
}

/// Adds gp_recovery.max_rate (kB/s) to a copy tool's arguments.
fn with_rate(mut args: Vec<String>, option: &str) -> Vec<String> {
    let rate = gucs::MAX_RATE.get();
    if rate > 0 {
        // pg_basebackup accepts 32 kB/s at the least.
        args.insert(0, format!("{option}{}k", rate.max(32)));
    }
    args
}

fn lsn_text(l: u64) -> String {
    format!("{:X}/{:X}", l >> 32, l & 0xFFFF_FFFF)
}

impl Job {
    pub fn new(rec: JobRecord) -> Result<Job, String> {
        let kind = rec.kind().map_err(|e| e.to_string())?;
        let phase: Phase = rec.phase.parse().map_err(|e: gp_recovery_core::CoreError| e.to_string())?;
        Ok(Job {
            kind,
            phase,
            target: rec.target(),
            source: rec.source(),
            target_host: SegmentHost::of(&rec.target_hostname),
            original_host: SegmentHost::of(&rec.original.hostname),
            rec,
            action: job::steps(kind, phase).first().copied(),
            scratch: Scratch::Empty,
            tool: None,
            task: None,
            rewound: false,
            tablespaces: Vec::new(),
            hba_file: String::new(),
            next_check: Instant::now(),
            diagnosing: None,
            last_output: Instant::now(),
            mirror_lagged: false,
            ending: None,
            progress: None,
            progress_reader: ProgressReader::default(),
            wal_remaining: None,
            logfile: None,
        })
    }

    pub fn id(&self) -> i64 {
        self.rec.job_id
    }

    pub fn dbid(&self) -> i16 {
        self.rec.dbid
    }

    /// The step scripts, acting for this job: what it claims carries its
    /// id, and a server is stopped only when it is the pair's.
    fn scripts(&self) -> Scripts {
        let owner = host::Owner {
            job: self.rec.job_id,
            dbid: self.rec.dbid,
            system_identifier: self.rec.system_identifier.clone().unwrap_or_default(),
        };
        segment_host::scripts(call_timeout().as_secs().min(60), Some(owner))
    }

    /// Called by the loop when the job enters a phase.
    pub fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        self.action = job::steps(self.kind, phase).first().copied();
        self.scratch = Scratch::Empty;
    }

    /// Runs a script on `host` (first call) or polls it (later calls):
    /// Some once it ended, with its output.
    fn tool(
        &mut self,
        host: Result<SegmentHost, String>,
        name: &'static str,
        script: impl FnOnce() -> String,
        limit: Option<Duration>,
    ) -> Option<Result<String, HostError>> {
        if self.tool.is_none() {
            let log_name = job::log_file_name(name, self.id(), self.dbid());
            let started = host.and_then(|h| {
                let remote = h.is_remote();
                let name_of_host = h.name.clone();
                Tool::spawn(h, name, &log_name, &script(), limit).inspect(|t| {
                    log!(
                        "gp_recovery: job {} (dbid {}): running {name} on host {name_of_host}{}; output in {}",
                        self.rec.job_id,
                        self.rec.dbid,
                        if remote { " through gp_recovery.remote_shell" } else { "" },
                        t.log.display()
                    )
                })
            });
            return match started {
                Ok(t) => {
                    if COPY_TOOLS.contains(&name) {
                        self.logfile = Some(t.log.clone());
                        self.progress_reader = ProgressReader::default();
                        self.last_output = Instant::now();
                    }
                    self.tool = Some(t);
                    None
                }
                Err(e) => Some(Err(HostError::other(e))),
            };
        }
        let tool = self.tool.as_mut()?;
        if COPY_TOOLS.contains(&tool.name) {
            let appended = tool.appended();
            if !appended.is_empty() {
                self.last_output = Instant::now();
            }
            if let Some(p) = self.progress_reader.feed(&appended) {
                self.progress = Some(p);
            }
            // A source that hangs mid-copy would hold the content forever.
            let stall = gucs::seconds(&gucs::COPY_STALL_TIMEOUT);
            if self.last_output.elapsed() > stall && tool.running() {
                let name = tool.name;
                if let Some(mut t) = self.tool.take() {
                    t.kill();
                }
                return Some(Err(HostError {
                    message: format!(
                        "{name} made no progress for {} s (gp_recovery.copy_stall_timeout): its source or the \
                         network between them may hang; the copy was stopped",
                        stall.as_secs()
                    ),
                    kind: FailureKind::CopyStalled,
                }));
            }
        }
        let finished = tool.poll()?;
        self.tool = None;
        Some(finished.result.map(|()| finished.output))
    }

    /// A script on the target's host.
    fn target_tool(
        &mut self,
        name: &'static str,
        script: impl FnOnce(&Scripts) -> String,
        limit: Option<Duration>,
    ) -> Option<Result<String, HostError>> {
        let s = self.scripts();
        self.tool(self.target_host.clone(), name, || script(&s), limit)
    }

    /// Starts a call to segments (first call) or polls it.
    fn call(
        &mut self,
        future: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Answer, String>> + Send>>,
    ) -> Option<Result<Answer, String>> {
        match self.task.as_mut() {
            None => {
                self.task = Some(Task::spawn(future()));
                None
            }
            Some(t) => {
                let r = t.poll()?;
                self.task = None;
                Some(r.and_then(|r| r))
            }
        }
    }

    /// The acting primary's report, at most twenty times a second.
    fn probe_source(&mut self) -> Option<ProbeResult> {
        if self.task.is_none() && Instant::now() < self.next_check {
            return None;
        }
        let t = Target::new(&self.source, call_timeout());
        let answer = self.call(|| Box::pin(async move { Ok(Answer::Probe(t.probe().await)) }))?;
        self.next_check = Instant::now() + Duration::from_millis(50);
        Some(match answer {
            Ok(Answer::Probe(p)) => p,
            Ok(_) => Err("unexpected answer".into()),
            Err(e) => Err(e),
        })
    }

    /// Runs the current phase one step further: its steps in the table's
    /// order, as many as are done at once.
    pub fn step(&mut self) -> Step {
        loop {
            if self.diagnosing.is_some() {
                return self.diagnose();
            }
            let Some(action) = self.action else {
                return failed(format!("a running job cannot be in phase {}", self.phase));
            };
            let step = self.act(action);
            // A step's catalog change or alternative ends the phase; a plain
            // done moves on to the phase's next step, if there is one.
            if let Step::Next { alternative: false, change: None } = step {
                let steps = job::steps(self.kind, self.phase);
                let following = steps.iter().position(|a| *a == action).and_then(|i| steps.get(i + 1));
                if let Some(a) = following {
                    self.action = Some(*a);
                    continue;
                }
            }
            return step;
        }
    }

    /// One tick of one step.
    fn act(&mut self, action: Action) -> Step {
        use Action::*;
        match action {
            CheckHost => self.check_host(),
            MeasureSource => self.with_scratch(Job::measure_source),
            CheckSpace => self.with_scratch(Job::check_space),
            CheckIdentity => self.with_scratch(Job::check_identity),
            CheckPort => self.check_port(),
            StartInCatalog => self.with_scratch(Job::start_in_catalog),
            StopSegment => self.stop_segment(),
            FindSource => self.find_source(),
            PrepareSource => self.prepare_source(),
            AllowNewHost => self.allow_new_host(),
            FindPair => self.find_pair(),
            CheckpointPrimary => self.checkpoint_primary(),
            LastLook => self.last_look(),
            StopTarget => self.stop_target(),
            CheckpointSource => self.checkpoint_source(),
            Rewind => self.rewind(),
            BaseBackup => self.base_backup(),
            StartBackup => self.with_scratch(Job::start_backup),
            Rsync => self.with_scratch(Job::rsync),
            StopBackup => self.with_scratch(Job::stop_backup),
            InstallLabel => self.with_scratch(Job::install_label),
            Swap => self.swap(),
            ReadCheckpoint => self.with_scratch(Job::read_checkpoint),
            AwaitReplay => self.with_scratch(Job::await_replay),
            Promote => self.promote(),
            ReadAutoConf => self.with_scratch(Job::read_auto_conf),
            Configure => self.with_scratch(Job::configure),
            Start => self.start(),
            AwaitStream => self.with_scratch(Job::await_stream),
            MarkUp => self.mark_up(),
            AwaitStreaming => self.with_scratch(Job::await_streaming),
            AwaitSynchronized => self.with_scratch(Job::await_synchronized),
            RemoveOld => self.remove_old(),
            ForgetOldHost => self.forget_old_host(),
        }
    }

    /// Runs a step that reads or writes its phase's scratch.
    fn with_scratch<S: PhaseScratch>(&mut self, step: fn(&mut Job, &mut S) -> Step) -> Step {
        let mut scratch = S::of(std::mem::take(&mut self.scratch)).unwrap_or_default();
        let result = step(self, &mut scratch);
        self.scratch = scratch.into_scratch();
        result
    }

    /// Fails with `message` and the cause read from the segment's log.
    fn fail_with_log(&mut self, failure: Failure) -> Step {
        self.diagnosing = Some(failure);
        self.diagnose()
    }

    fn diagnose(&mut self) -> Step {
        let dir = self.target.datadir.clone();
        let Some(out) = self.target_tool("server_log", |s| s.server_log_tail(&dir), Some(Duration::from_secs(60)))
        else {
            return Step::Stay;
        };
        let failure = self.diagnosing.take().unwrap_or_else(|| Failure::other(""));
        match out.ok().and_then(|log| job::diagnose_server_log(&log, self.dbid())) {
            // The log's cause names the kind when the step's own output did not.
            Some((kind, cause)) => fail(
                if failure.kind == FailureKind::Other { kind } else { failure.kind },
                format!("{}: {cause}", failure.message),
            ),
            None => Step::Fail(failure),
        }
    }

    /// The target's host must answer and have the server programs before
    /// the catalog changes (gprecoverseg: "The recovery target segment ...
    /// is unreachable").
    fn check_host(&mut self) -> Step {
        let dir = self.target.datadir.clone();
        match self.target_tool("check", |s| s.check(&dir), Some(Duration::from_secs(60))) {
            None => Step::Stay,
            // The check fails only for a host it cannot reach, or programs not installed.
            Some(Err(e)) if e.kind == FailureKind::HostUnreachable => Step::Fail(e.into()),
            Some(Err(e)) => fail(FailureKind::ProgramsMissing, e.message),
            Some(Ok(_)) => next(),
        }
    }

    /// A copy must fit on the target's file system: checked before the
    /// catalog or any directory changes, against what the source holds.
    fn measure_source(&mut self, s: &mut HostScratch) -> Step {
        let t = Target::new(&self.source, call_timeout());
        match self.call(|| Box::pin(async move { t.database_bytes().await.map(Answer::Bytes) })) {
            None => Step::Stay,
            Some(Ok(Answer::Bytes(b))) => {
                s.source_bytes = b;
                next()
            }
            Some(Ok(_)) => failed("unexpected answer"),
            Some(Err(e)) => {
                fail(FailureKind::SourceUnreachable, format!("the acting primary dbid {}: {e}", self.source.dbid))
            }
        }
    }

    fn check_space(&mut self, s: &mut HostScratch) -> Step {
        let dir = self.target.datadir.clone();
        let beside = self.kind != JobKind::Relocation;
        let measure = self.kind == JobKind::Differential;
        let out = match self.target_tool("space", |s| s.space(&dir, beside, measure), Some(Duration::from_secs(60))) {
            None => return Step::Stay,
            Some(Err(e)) => return Step::Fail(e.into()),
            Some(Ok(out)) => out,
        };
        let Some(space) = recovery::Space::parse(&out) else {
            return failed(format!("could not read the free space on host {}: {out}", self.target.hostname));
        };
        match recovery::check_space(self.kind, self.dbid(), &self.target.hostname, s.source_bytes, &space) {
            Ok(()) => next(),
            Err(e) => fail(FailureKind::NoSpace, e),
        }
    }

    /// The catalog change of a job whose host answered, committed with the
    /// next phase, with the machines the identity check found.
    fn start_in_catalog(&mut self, s: &mut HostScratch) -> Step {
        let (rec, kind, machines) = (self.rec.clone(), self.kind, std::mem::take(&mut s.machines));
        next_with(Box::new(move || {
            catalog::record_host_ids(&machines);
            start_in_catalog(&rec, kind)
        }))
    }

    /// A relocation's new directory, resolved on its host and compared, on
    /// every host of the cluster, with what must not be touched
    /// (`identity::identity_asks`, `identity::judge`). Nothing is created
    /// before this.
    fn check_identity(&mut self, s: &mut HostScratch) -> Step {
        if s.checks.is_empty() {
            let loaded = try_transaction(|| Ok((catalog::load(), job_table::active(), catalog::host_ids())));
            let (catalog, active, recorded) = match loaded {
                Ok(l) => l,
                Err(e) => return fail(FailureKind::Refused, e),
            };
            let scripts = self.scripts();
            let (id, dbid) = (self.id(), self.dbid());
            let asks = identity::identity_asks(&self.target, id, &catalog, &active, &recorded);
            for (i, ask) in asks.into_iter().enumerate() {
                let log_name = job::log_file_name(&format!("identify_{i}"), id, dbid);
                let script = scripts.identify(&ask.paths, i == 0);
                let spawned = SegmentHost::of(&ask.hostname)
                    .and_then(|h| Tool::spawn(h, "identify", &log_name, &script, Some(Duration::from_secs(60))));
                s.checks.push(match spawned {
                    Ok(t) => HostCheck { ask, tool: Some(t), result: None },
                    Err(e) => HostCheck { ask, tool: None, result: Some(Err(e)) },
                });
            }
        }
        for check in s.checks.iter_mut().filter(|c| c.result.is_none()) {
            let finished = check.tool.as_mut().and_then(Tool::poll);
            if let Some(f) = finished {
                check.result = Some(f.result.map(|()| f.output).map_err(String::from));
                check.tool = None;
            }
        }
        let mut asks = Vec::new();
        let mut reports = Vec::new();
        for check in &s.checks {
            let Some(result) = &check.result else { return Step::Stay };
            asks.push(check.ask.clone());
            reports.push(result.clone());
        }
        s.checks.clear();
        match identity::judge(&self.target.datadir, &asks, &reports) {
            Ok(judged) => {
                for (host, e) in judged.unanswered {
                    log!(
                        "gp_recovery: job {}: host {host} did not report its directories ({e}); they were compared by name only",
                        self.id()
                    );
                }
                s.machines = judged.machines;
                next()
            }
            Err(e) => fail(FailureKind::Refused, e),
        }
    }

    /// A relocation to another host or port: nothing may accept
    /// connections there yet (a server not in the catalog would take the
    /// new segment's port, and a fence aimed at it would reach that server).
    fn check_port(&mut self) -> Step {
        let local_hosts = gucs::local_hosts();
        let hosts = segment_host::hosts_by_name(&local_hosts);
        let original = &self.rec.original;
        if original.port == self.target.port && hosts.same_host(&original.hostname, &self.target.hostname) {
            return next();
        }
        let (address, port) = (self.target.address.clone(), self.target.port);
        let answer = self.call(|| {
            Box::pin(async move {
                let port = u16::try_from(port).unwrap_or(0);
                let connect = tokio::net::TcpStream::connect((address.as_str(), port));
                let listening = tokio::time::timeout(Duration::from_secs(2), connect).await.is_ok_and(|r| r.is_ok());
                Ok(Answer::Listening(listening))
            })
        });
        match answer {
            None => Step::Stay,
            Some(Ok(Answer::Listening(false))) => next(),
            Some(Ok(Answer::Listening(true))) => fail(
                FailureKind::Refused,
                format!(
                    "port {} on host {} already accepts connections, yet no segment of the catalog is there: another \
                 server uses it; choose another port",
                    self.target.port, self.target.hostname
                ),
            ),
            Some(Ok(_)) => failed("unexpected answer"),
            Some(Err(e)) => fail(FailureKind::Refused, e),
        }
    }

    /// Makes sure the failed segment is not running. Rebalance stops the
    /// acting primary, which must be running.
    fn stop_segment(&mut self) -> Step {
        let rebalance = self.kind == JobKind::Rebalance;
        let dir = self.rec.original.datadir.clone();
        let s = self.scripts();
        let host = self.original_host.clone();
        match self.tool(host, "stop", || s.stop(&dir, rebalance), Some(Duration::from_secs(120))) {
            None => Step::Stay,
            Some(Ok(_)) => next(),
            // gprecoverseg: a relocation away from a dead host skips the stop.
            Some(Err(e)) if e.kind == FailureKind::HostUnreachable && self.kind == JobKind::Relocation => {
                log!("gp_recovery: job {}: not stopping the failed segment: {}", self.id(), e.message);
                next()
            }
            Some(Err(e)) => Step::Fail(e.into()),
        }
    }

    /// The source must still be the content's acting primary.
    fn find_source(&mut self) -> Step {
        let catalog = match try_transaction(|| Ok(catalog::load())) {
            Ok(c) => c,
            Err(e) => return failed(e),
        };
        let Some(source) = catalog.iter().find(|s| s.content == self.rec.content && s.role == Role::Primary).cloned()
        else {
            return fail(
                FailureKind::DoubleFault,
                format!("double fault: content {} has no acting primary", self.rec.content),
            );
        };
        if source.dbid != self.rec.source_dbid {
            return failed(format!(
                "the acting primary of content {} changed from dbid {} to dbid {} since the job was submitted; submit it again",
                self.rec.content, self.rec.source_dbid, source.dbid
            ));
        }
        self.source = source;
        next()
    }

    /// The source must answer as the acting primary; it gets the slot its
    /// mirror will stream from, and (before a rewind) a CHECKPOINT so its
    /// control file shows its current timeline.
    fn prepare_source(&mut self) -> Step {
        let t = Target::new(&self.source, call_timeout());
        let checkpoint = self.kind == JobKind::Incremental;
        let answer = self.call(|| {
            Box::pin(async move {
                let probe = t.probe().await;
                if let Ok(p) = &probe {
                    if !p.in_recovery {
                        t.create_slot().await?;
                        if checkpoint {
                            t.checkpoint().await?;
                        }
                    }
                }
                Ok(Answer::Probe(probe))
            })
        });
        match answer {
            None => Step::Stay,
            Some(Ok(Answer::Probe(p))) => {
                let relocate = self.kind == JobKind::Relocation;
                match recovery::verify_source(&self.source, &self.target, self.kind.mode(), relocate, &p) {
                    Ok(()) => {
                        let p = p.unwrap_or_default();
                        self.tablespaces = p.outside_tablespaces.into_iter().map(|t| t.location).collect();
                        self.hba_file = p.hba_file;
                        next()
                    }
                    Err(e @ gp_recovery_core::CoreError::DoubleFault(_)) => {
                        fail(FailureKind::DoubleFault, e.to_string())
                    }
                    Err(e) => failed(e.to_string()),
                }
            }
            Some(Ok(_)) => failed("unexpected answer"),
            Some(Err(e)) => {
                fail(FailureKind::SourceUnreachable, format!("the acting primary dbid {}: {e}", self.source.dbid))
            }
        }
    }

    /// A relocation onto another host than the segment's.
    fn moves_host(&self) -> bool {
        self.kind == JobKind::Relocation && !self.target.hostname.eq_ignore_ascii_case(&self.rec.original.hostname)
    }

    /// Before a relocation's copy onto another host: the acting primary's
    /// pg_hba.conf lets the new host connect and replicate (gprecoverseg
    /// updates pg_hba.conf the same way), recorded in the history when it
    /// changed.
    fn allow_new_host(&mut self) -> Step {
        if !self.moves_host() {
            return next();
        }
        let (host, by_name) = (self.target.hostname.clone(), gucs::HBA_HOSTNAMES.get());
        let entry = host::hba_entry(&self.target.address, &host, by_name);
        let (dir, hba, user, s) = (self.source.datadir.clone(), self.hba_file.clone(), server_user(), self.scripts());
        let source_host = SegmentHost::of(&self.source.hostname);
        let script = || s.allow_host(&dir, &hba, &user, &entry, &host);
        match self.tool(source_host, "allow_host", script, Some(SHORT_STEP)) {
            None => Step::Stay,
            Some(Err(e)) => failed(format!(
                "could not let host {host} into the pg_hba.conf of the acting primary dbid {}: {}",
                self.source.dbid, e.message
            )),
            Some(Ok(out)) if host::printed(&out, host::HBA_CHANGED) => {
                let text = format!(
                    "gp_recovery: pg_hba.conf of dbid {} lets host {host} ({entry}) connect and replicate, for the relocation of dbid {}",
                    self.source.dbid,
                    self.dbid()
                );
                next_with_history(self.source.clone(), SegmentEvent::HostAllowed, text)
            }
            Some(Ok(_)) => next(),
        }
    }

    /// Rebalance: the pair must still be switched, up and synchronized.
    fn find_pair(&mut self) -> Step {
        let catalog = match try_transaction(|| Ok(catalog::load())) {
            Ok(c) => c,
            Err(e) => return failed(e),
        };
        let find = |dbid: i16| catalog.iter().find(|s| s.dbid == dbid).cloned();
        let (Some(primary), Some(mirror)) = (find(self.dbid()), find(self.rec.source_dbid)) else {
            return failed("the pair is no longer in the catalog");
        };
        let healthy =
            |s: &Segment, role: Role| s.role == role && s.status == Status::Up && s.mode == Mode::Synchronized;
        if !healthy(&primary, Role::Primary) || !healthy(&mirror, Role::Mirror) {
            return failed(format!(
                "dbid {} and dbid {} are no longer an up, synchronized primary and mirror",
                primary.dbid, mirror.dbid
            ));
        }
        self.source = mirror;
        next()
    }

    /// A checkpoint while the primary still serves commits leaves its
    /// shutdown checkpoint little to write: the switchover's commit gap
    /// then hardly depends on the disk. Only a speed-up, so a failure is
    /// logged and the switchover goes on.
    fn checkpoint_primary(&mut self) -> Step {
        let t = Target::new(&self.target, call_timeout());
        match self.call(|| Box::pin(async move { t.checkpoint().await.map(|()| Answer::Done) })) {
            None => return Step::Stay,
            Some(Err(e)) => log!(
                "gp_recovery: job {}: CHECKPOINT on dbid {} before the switchover failed: {e}",
                self.id(),
                self.dbid()
            ),
            Some(Ok(_)) => {}
        }
        next()
    }

    /// The last look before the stop, while the primary still runs: the
    /// mirror must be the pair's and replay promptly, or the stop would be
    /// an outage.
    fn last_look(&mut self) -> Step {
        let (pt, mt) = (Target::new(&self.target, call_timeout()), Target::new(&self.source, call_timeout()));
        let answer =
            self.call(|| Box::pin(async move { Ok(Answer::Pair(Box::new((pt.probe().await, mt.probe().await)))) }));
        let (primary, mirror) = match answer {
            None => return Step::Stay,
            Some(Ok(Answer::Pair(probes))) => *probes,
            Some(Ok(_)) => return failed("unexpected answer"),
            Some(Err(e)) => return failed(e),
        };
        let (sysid, dbid, location) =
            (self.rec.system_identifier.clone().unwrap_or_default(), self.source.dbid, self.source.location());
        if let Ok(m) = &mirror {
            let member = identity::Member { system_identifier: &sysid, datadir: &self.source.datadir };
            if let Some(why) = member.refusal(&m.system_identifier, &m.data_directory) {
                return fail(FailureKind::Refused, format!("the server at {location} is not dbid {dbid}: {why}"));
            }
        }
        let pair = Pair { primary: &self.target, mirror: &self.source };
        match rebalance::live_refusal(&pair, &primary, &mirror, gucs::switchover_replay_lag()) {
            Some(why) => fail(FailureKind::Refused, why),
            None => next(),
        }
    }

    /// Rebalance: an old primary that could not follow the new timeline is
    /// stopped before it is rewound.
    fn stop_target(&mut self) -> Step {
        let dir = self.target.datadir.clone();
        match self.target_tool("stop", |s| s.stop(&dir, false), Some(Duration::from_secs(120))) {
            None => Step::Stay,
            Some(Err(e)) => Step::Fail(e.into()),
            Some(Ok(_)) => next(),
        }
    }

    /// Rebalance: the new primary's control file shows its new timeline.
    fn checkpoint_source(&mut self) -> Step {
        let t = Target::new(&self.source, call_timeout());
        match self.call(|| Box::pin(async move { t.checkpoint().await.map(|()| Answer::Done) })) {
            None => Step::Stay,
            Some(Err(e)) => fail(FailureKind::SourceUnreachable, format!("CHECKPOINT on the new primary failed: {e}")),
            Some(Ok(_)) => next(),
        }
    }

    /// pg_rewind against the acting primary (an incremental recovery's
    /// script skips it for a mirror that merely stopped).
    fn rewind(&mut self) -> Step {
        let rebalance = self.kind == JobKind::Rebalance;
        let dir = self.target.datadir.clone();
        let conninfo = user_conninfo(&self.source, "gp_recovery_pg_rewind");
        match self.target_tool("pg_rewind", |s| s.rewind(&dir, &conninfo, !rebalance), None) {
            None => Step::Stay,
            Some(Ok(_)) => {
                self.rewound = true;
                next()
            }
            Some(Err(e)) => self.copy_failure(e),
        }
    }

    /// Adds gprecoverseg's advice to a failed copy: one text.
    fn copy_failure(&self, e: impl Into<Failure>) -> Step {
        let e: Failure = e.into();
        let dbid = self.dbid();
        let what = match self.kind {
            JobKind::Incremental => "Incremental recovery failed",
            JobKind::Differential => "Differential recovery failed and left the data directory marked incomplete",
            JobKind::Full | JobKind::Relocation => return Step::Fail(e),
            JobKind::Rebalance => "The old primary could not be rewound to follow the new primary",
        };
        fail(e.kind, format!("{}. {what}: {}", e.message, job::copy_advice(dbid)))
    }

    /// pg_basebackup; its WAL streams through a temporary slot of its own,
    /// so the mirror's slot keeps what it holds should the copy fail.
    fn base_backup(&mut self) -> Step {
        let args = vec![
            "-h".into(),
            self.source.address.clone(),
            "-p".into(),
            self.source.port.to_string(),
            "-U".into(),
            server_user(),
            "-X".into(),
            "stream".into(),
            "-c".into(),
            "fast".into(),
            "--no-verify-checksums".into(),
            "--progress".into(),
            "--verbose".into(),
        ];
        let (dir, relocate) = (self.target.datadir.clone(), self.kind == JobKind::Relocation);
        let tablespaces = self.tablespaces.clone();
        match self.target_tool(
            "pg_basebackup",
            |s| s.basebackup(&dir, relocate, &with_rate(args, "--max-rate="), &tablespaces),
            None,
        ) {
            None => Step::Stay,
            Some(Ok(_)) => next(),
            Some(Err(e)) => Step::Fail(e.into()),
        }
    }

    /// A differential copy's pg_backup_start, in a session that lives in a
    /// task until told to stop (or dropped, which ends the backup).
    fn start_backup(&mut self, s: &mut BackupScratch) -> Step {
        let backup = match &mut s.backup {
            Some(b) => b,
            None => {
                let (started_tx, started) = oneshot::channel();
                let (stop, stop_rx) = oneshot::channel::<()>();
                let t = Target::new(&self.source, call_timeout());
                let label = format!("gp_recovery job {}", self.id());
                self.task = Some(Task::spawn(async move {
                    let session = match t.backup_start(&label).await {
                        Ok(s) => {
                            let _ = started_tx.send(Ok(()));
                            s
                        }
                        Err(e) => {
                            let _ = started_tx.send(Err(e.clone()));
                            return Err(e);
                        }
                    };
                    // Dropped unsent (the job failed or was canceled): the
                    // session closes, which ends the backup.
                    stop_rx.await.map_err(|_| "the base backup was abandoned".to_string())?;
                    let (label, map) = t.backup_stop(&session).await?;
                    Ok(Answer::Label(label, map))
                }));
                s.backup.insert(Backup { started, stop: Some(stop) })
            }
        };
        match backup.started.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => Step::Stay,
            Err(oneshot::error::TryRecvError::Closed) => failed("the base backup did not start"),
            Ok(Err(e)) => fail(FailureKind::SourceUnreachable, format!("pg_backup_start failed: {e}")),
            Ok(Ok(())) => next(),
        }
    }

    /// rsync in place while the backup is open.
    fn rsync(&mut self, s: &mut BackupScratch) -> Step {
        let dir = self.target.datadir.clone();
        // --no-whole-file: the delta algorithm even between local
        // directories, so only changed blocks are sent; --inplace: only
        // those blocks are written; --stats reports the bytes sent.
        let mut args: Vec<String> = [
            "-a",
            "--delete",
            "--checksum",
            "--no-whole-file",
            "--inplace",
            "--stats",
            "--info=progress2",
            "--no-inc-recursive",
        ]
        .map(String::from)
        .to_vec();
        args.extend(recovery::RSYNC_EXCLUDES.iter().map(|e| format!("--exclude={e}")));
        // From another host, rsync on the target's host pulls through the
        // same remote shell.
        let source = self.source.clone();
        let source_host =
            (!source.hostname.eq_ignore_ascii_case(&self.target.hostname)).then_some(source.hostname.clone());
        let shell = gucs::remote_shell();
        match self.target_tool(
            "rsync",
            |s| s.rsync(&dir, &source.datadir, source_host.as_deref(), &shell, &with_rate(args, "--bwlimit=")),
            None,
        ) {
            None => Step::Stay,
            Some(Err(e)) => self.copy_failure(e),
            Some(Ok(_)) => {
                if let Some(stop) = s.backup.as_mut().and_then(|b| b.stop.take()) {
                    let _ = stop.send(());
                }
                next()
            }
        }
    }

    /// pg_backup_stop, in the backup's session.
    fn stop_backup(&mut self, s: &mut BackupScratch) -> Step {
        let Some(task) = self.task.as_mut() else { return failed("the base backup is gone") };
        let Some(r) = task.poll() else { return Step::Stay };
        self.task = None;
        s.backup = None;
        match r.and_then(|r| r) {
            Ok(Answer::Label(label, map)) => {
                s.label = (label, map);
                next()
            }
            Ok(_) => failed("unexpected answer"),
            Err(e) => {
                self.copy_failure(Failure::new(FailureKind::SourceUnreachable, format!("pg_backup_stop failed: {e}")))
            }
        }
    }

    /// WAL of the old timeline must not be replayed: the mirror streams
    /// what it needs from the slot.
    fn install_label(&mut self, s: &mut BackupScratch) -> Step {
        let dir = self.target.datadir.clone();
        let (label, map) = &s.label;
        match self.target_tool("backup_label", |s| s.install_backup_label(&dir, label, map), Some(SHORT_STEP)) {
            None => Step::Stay,
            Some(Ok(_)) => next(),
            Some(Err(e)) => self.copy_failure(e),
        }
    }

    /// Full in place: the complete copy replaces the old directory, which
    /// moves aside until the job succeeds.
    fn swap(&mut self) -> Step {
        let dir = self.target.datadir.clone();
        match self.target_tool("swap", |s| s.swap_in(&dir), Some(SHORT_STEP)) {
            None => Step::Stay,
            Some(Ok(_)) => next(),
            Some(Err(e)) => Step::Fail(e.into()),
        }
    }

    /// Rebalance: the stopped primary's final checkpoint, which the mirror
    /// must replay before it is promoted.
    fn read_checkpoint(&mut self, s: &mut ReplayScratch) -> Step {
        let dir = self.rec.original.datadir.clone();
        match self.target_tool("pg_controldata", |s| s.controldata(&dir), Some(SHORT_STEP)) {
            None => Step::Stay,
            Some(Err(e)) => failed(format!("could not read the stopped primary's final checkpoint: {}", e.message)),
            Some(Ok(report)) => match rebalance::controldata_checkpoint(&report) {
                Some(l) => {
                    // Writes wait while the primary is stopped: the mirror
                    // gets a few seconds, then the old primary is started
                    // again.
                    s.aim = Some((l, Instant::now() + gucs::seconds(&gucs::SWITCHOVER_TIMEOUT)));
                    next()
                }
                None => failed("pg_controldata did not report the stopped primary's final checkpoint"),
            },
        }
    }

    /// Rebalance: once the preferred primary has replayed the stopped
    /// primary's final checkpoint (so no acknowledged commit is missing),
    /// the catalog names it primary; the promotion follows in the next phase.
    fn await_replay(&mut self, s: &mut ReplayScratch) -> Step {
        let Some((checkpoint, deadline)) = s.aim else { return failed("the final checkpoint was not read") };
        if self.task.is_none() && Instant::now() < self.next_check {
            return Step::Stay;
        }
        let t = Target::new(&self.source, call_timeout());
        let Some(replayed) = self.call(|| Box::pin(async move { t.replay_lsn().await.map(Answer::Lsn) })) else {
            return Step::Stay;
        };
        self.next_check = Instant::now() + Duration::from_millis(25);
        match replayed {
            Ok(Answer::Lsn(r)) if r > checkpoint => {
                let rows = [
                    Segment {
                        role: Role::Mirror,
                        status: Status::Down,
                        mode: Mode::NotInSync,
                        ..self.rec.original.clone()
                    },
                    Segment { role: Role::Primary, status: Status::Up, mode: Mode::NotInSync, ..self.source.clone() },
                ];
                self.source = rows[1].clone();
                next_with(Box::new(move || {
                    let now = catalog::lock_rows(&[rows[0].dbid, rows[1].dbid]);
                    let switched = |dbid: i16, role: Role| now.iter().any(|s| s.dbid == dbid && s.role == role);
                    if !switched(rows[0].dbid, Role::Primary) || !switched(rows[1].dbid, Role::Mirror) {
                        return Err("the pair's roles changed in the catalog meanwhile".into());
                    }
                    let changes = rows.map(|r| History::update(REBALANCE, SegmentEvent::Rebalance, r));
                    catalog::update_rows(&changes);
                    Ok(())
                }))
            }
            other => {
                if Instant::now() > deadline {
                    self.mirror_lagged = true;
                    return failed(format!(
                        "dbid {} did not replay the old primary's final checkpoint at {} within {} s \
                         (gp_recovery.switchover_timeout; {}); not promoting it",
                        self.source.dbid,
                        lsn_text(checkpoint),
                        gucs::SWITCHOVER_TIMEOUT.get(),
                        match other {
                            Ok(Answer::Lsn(r)) => format!("replayed up to {}", lsn_text(r)),
                            Err(e) => e,
                            Ok(_) => "no answer".into(),
                        }
                    ));
                }
                Step::Stay
            }
        }
    }

    /// Rebalance: the catalog already names the new primary; promote it,
    /// turn synchronous replication off there and give it the slot for its
    /// mirror. If this fails, the fault tolerance service repeats the
    /// promotion (the acting primary in recovery with its peer down).
    fn promote(&mut self) -> Step {
        let t = Target::new(&self.source, call_timeout());
        let sysid = self.rec.system_identifier.clone();
        let answer = self.call(|| {
            Box::pin(async move {
                t.promote(sysid.as_deref()).await?;
                let mut warnings = Vec::new();
                for (what, result) in [
                    ("turn synchronous replication off", t.disable_sync_rep().await),
                    ("create the slot", t.create_slot().await),
                ] {
                    if let Err(e) = result {
                        warnings.push(format!("could not {what}: {e}"));
                    }
                }
                if warnings.is_empty() {
                    Ok(Answer::Done)
                } else {
                    Ok(Answer::Warnings(warnings.join("; ")))
                }
            })
        });
        match answer {
            None => Step::Stay,
            Some(Ok(Answer::Warnings(w))) => {
                warning!("gp_recovery: job {}: dbid {}: {w}", self.id(), self.source.dbid);
                next()
            }
            Some(Ok(_)) => next(),
            Some(Err(e)) => failed(format!("could not promote dbid {}: {e}", self.source.dbid)),
        }
    }

    /// primary_conninfo to the acting primary, the slot, and the segment's
    /// own port (a copy brought the source's settings), over what the
    /// target's postgresql.auto.conf holds.
    fn read_auto_conf(&mut self, s: &mut AutoConf) -> Step {
        let dir = self.target.datadir.clone();
        match self.target_tool("read_auto_conf", |s| s.read_auto_conf(&dir), Some(SHORT_STEP)) {
            None => Step::Stay,
            Some(Err(e)) => failed(format!("could not configure {dir}: {}", e.message)),
            Some(Ok(existing)) => {
                s.text = recovery::rewrite_auto_conf(
                    &existing,
                    &[
                        ("port", self.target.port.to_string()),
                        ("primary_conninfo", user_conninfo(&self.source, MIRROR_APPLICATION_NAME)),
                        ("primary_slot_name", SLOT_NAME.to_string()),
                        ("synchronous_standby_names", String::new()),
                    ],
                );
                next()
            }
        }
    }

    /// standby.signal and the rewritten postgresql.auto.conf.
    fn configure(&mut self, s: &mut AutoConf) -> Step {
        let dir = self.target.datadir.clone();
        match self.target_tool("configure", |scripts| scripts.configure_standby(&dir, &s.text), Some(SHORT_STEP)) {
            None => Step::Stay,
            Some(Ok(_)) => next(),
            Some(Err(e)) => failed(format!("could not configure {dir}: {}", e.message)),
        }
    }

    fn start(&mut self) -> Step {
        let dir = self.target.datadir.clone();
        let limit = gucs::seconds(&gucs::JOB_START_TIMEOUT);
        // pg_ctl's own wait is the bound; the step's limit only backs it up.
        match self.target_tool(
            "pg_ctl",
            |s| s.start(&dir, false, limit.as_secs()),
            Some(limit + Duration::from_secs(30)),
        ) {
            None => Step::Stay,
            Some(Ok(_)) => next(),
            Some(Err(e)) => {
                self.fail_with_log(Failure::new(e.kind, format!("the segment did not start: {}", e.message)))
            }
        }
    }

    /// Waits until the primary reports a stream from the new mirror, so that
    /// the fault tolerance service never sees an 'up' mirror without one.
    fn await_stream(&mut self, s: &mut Wait) -> Step {
        // A demoted primary that cannot follow the new timeline is rewound
        // after 30 s instead of failing.
        let rewind_instead = self.kind == JobKind::Rebalance && !self.rewound;
        let deadline = *s.deadline.get_or_insert_with(|| {
            let wait = if rewind_instead { Duration::from_secs(30) } else { gucs::seconds(&gucs::JOB_CONNECT_TIMEOUT) };
            Instant::now() + wait
        });
        if let Some(Ok(p)) = self.probe_source() {
            if let Some(r) = p.mirror_replication() {
                self.wal_remaining = r.bytes_behind;
                return next();
            }
        }
        if Instant::now() > deadline {
            self.task = None;
            if rewind_instead {
                log!(
                    "gp_recovery: job {}: dbid {} does not follow the new primary; rewinding it",
                    self.id(),
                    self.dbid()
                );
                return Step::Next { alternative: true, change: None };
            }
            return self.fail_with_log(Failure::other(format!(
                "the segment started but its primary reported no stream from it within {} s",
                gucs::JOB_CONNECT_TIMEOUT.get()
            )));
        }
        Step::Stay
    }

    /// The target becomes an up mirror, and the fault tolerance service
    /// watches the pair again; committed with the next phase.
    fn mark_up(&mut self) -> Step {
        let (target, job_id) = (self.target.clone(), self.id());
        next_with(Box::new(move || {
            job_table::release_hold(job_id)?;
            let rows = catalog::lock_rows(&[target.dbid]);
            match rows.first() {
                Some(now) if now.status == Status::Down => {
                    let up =
                        Segment { status: Status::Up, mode: Mode::NotInSync, role: Role::Mirror, ..target.clone() };
                    catalog::update_rows(&[History::update(RESYNC, SegmentEvent::SegmentUp, up)]);
                    Ok(())
                }
                _ => Err(format!("dbid {} is no longer down in the catalog", target.dbid)),
            }
        }))
    }

    /// Until the stream reaches 'streaming'; fails after
    /// gp_recovery.job_catchup_timeout without progress.
    fn await_streaming(&mut self, s: &mut Wait) -> Step {
        if !s.asked {
            fts::request_round();
            s.asked = true;
        }
        let limit = gucs::seconds(&gucs::JOB_CATCHUP_TIMEOUT);
        if let Some(Ok(p)) = self.probe_source() {
            match p.mirror_replication() {
                Some(r) => {
                    self.wal_remaining = r.bytes_behind;
                    if r.state == "streaming" {
                        fts::request_round();
                        return next();
                    }
                    let now = r.bytes_behind.unwrap_or(i64::MAX);
                    match s.behind {
                        Some((before, _)) if now >= before => {}
                        _ => s.behind = Some((now, Instant::now())),
                    }
                }
                None => self.wal_remaining = None,
            }
        }
        let since = s.behind.get_or_insert((i64::MAX, Instant::now())).1;
        if since.elapsed() > limit {
            return self.fail_with_log(Failure::other(format!(
                "the mirror made no progress catching up for {} s; it stays up and the fault tolerance service watches it",
                limit.as_secs()
            )));
        }
        Step::Stay
    }

    /// The fault tolerance service turns synchronous replication on and
    /// marks the pair 's'; the job ends when it has.
    fn await_synchronized(&mut self, s: &mut Wait) -> Step {
        let limit = gucs::seconds(&gucs::JOB_SYNC_TIMEOUT);
        let deadline = *s.deadline.get_or_insert(Instant::now() + limit);
        if Instant::now() < self.next_check {
            return Step::Stay;
        }
        self.next_check = Instant::now() + Duration::from_millis(50);
        let catalog = match try_transaction(|| Ok(catalog::load())) {
            Ok(c) => c,
            Err(e) => return failed(e),
        };
        let pair: Vec<&Segment> = catalog.iter().filter(|s| s.content == self.rec.content).collect();
        if pair.len() == 2 && pair.iter().all(|s| s.status == Status::Up && s.mode == Mode::Synchronized) {
            self.wal_remaining = Some(0);
            return next();
        }
        if Instant::now() > deadline {
            return failed(format!(
                "the fault tolerance service did not mark the pair synchronized within {} s; the segment stays up",
                limit.as_secs()
            ));
        }
        fts::request_round();
        Step::Stay
    }

    fn remove_old(&mut self) -> Step {
        let dir = self.target.datadir.clone();
        match self.target_tool("remove_old", |s| s.remove_old(&dir), Some(SHORT_STEP)) {
            None => Step::Stay,
            Some(Ok(_)) => next(),
            Some(Err(e)) => failed(format!("could not remove the old data directory: {}", e.message)),
        }
    }

    /// The old host's lines in the acting primary's pg_hba.conf go once no
    /// segment is on it (only lines gp_recovery added).
    fn forget_old_host(&mut self) -> Step {
        if !self.moves_host() || self.hba_file.is_empty() {
            return next();
        }
        let old_host = self.rec.original.hostname.clone();
        // Looked at once, before the script starts.
        if self.tool.is_none() {
            match try_transaction(|| Ok(catalog::load())) {
                Ok(c) if c.iter().any(|s| s.hostname.eq_ignore_ascii_case(&old_host)) => return next(),
                Ok(_) => {}
                Err(e) => return failed(e),
            }
        }
        let (dir, hba, s) = (self.source.datadir.clone(), self.hba_file.clone(), self.scripts());
        let source_host = SegmentHost::of(&self.source.hostname);
        match self.tool(source_host, "forget_host", || s.forget_host(&dir, &hba, &old_host), Some(SHORT_STEP)) {
            None => Step::Stay,
            Some(Err(e)) => {
                failed(format!("could not remove host {old_host} from the acting primary's pg_hba.conf: {}", e.message))
            }
            Some(Ok(out)) if host::printed(&out, host::HBA_CHANGED) => {
                let text = format!(
                    "gp_recovery: pg_hba.conf of dbid {} no longer lets host {old_host} in: no segment is on it",
                    self.source.dbid
                );
                next_with_history(self.source.clone(), SegmentEvent::HostRemoved, text)
            }
            Some(Ok(_)) => next(),
        }
    }
}

fn user_conninfo(source: &Segment, application_name: &str) -> String {
    let port = source.port.to_string();
    let user = server_user();
    recovery::conninfo(&[
        ("host", &source.address),
        ("port", &port),
        ("user", &user),
        ("dbname", "postgres"),
        ("application_name", application_name),
    ])
}

/// The catalog step when a job's host answered: a relocation moves the row to its
/// new place (same dbid) and a full recovery records that it replaces the
/// segment, as gprecoverseg does. The row must still be what was planned.
fn start_in_catalog(rec: &JobRecord, kind: JobKind) -> Result<(), String> {
    let rows = catalog::lock_rows(&[rec.dbid]);
    let now = rows.first().ok_or_else(|| format!("dbid {} is no longer in gp_segment_configuration", rec.dbid))?;
    if now.status != Status::Down {
        return Err(format!("dbid {} is no longer down", rec.dbid));
    }
    if matches!(kind, JobKind::Full | JobKind::Relocation) {
        let target = Segment { status: Status::Down, mode: Mode::NotInSync, ..rec.target() };
        catalog::update_rows(&[History {
            text: format!(
                "{RESYNC}: inserted segment configuration for full recovery or original dbid {}",
                target.dbid
            ),
            row: target,
            event: SegmentEvent::FullRecovery,
        }]);
    }
    Ok(())
}

impl Job {
    /// The kind an auto job tries next after a failure of `kind`, if any.
    pub fn next_attempt(&self, kind: FailureKind) -> Option<JobKind> {
        (self.rec.mode().ok()? == RecoveryMode::Auto).then(|| job::next_attempt(self.kind, self.phase, kind))?
    }

    /// A failed auto attempt: backed out like a failure, then the next
    /// attempt starts (`Ended::Retry`).
    pub fn begin_retry(&mut self, failure: Failure) {
        self.begin_ending(JobState::Failed, failure);
        if let Some(e) = self.ending.as_mut() {
            e.retry = true;
        }
    }

    /// Stops what runs and plans the backout of the current phase (from the
    /// table); `step_ending` carries it out.
    pub fn begin_ending(&mut self, state: JobState, failure: Failure) {
        if let Some(mut t) = self.tool.take() {
            t.kill();
        }
        self.task = None;
        // Drops a differential copy's backup session, which ends the backup.
        self.scratch = Scratch::Empty;
        self.diagnosing = None;
        let backout = job::backout(self.kind, self.phase);
        let steps: VecDeque<Undo> = backout.undo(self.mirror_lagged).iter().copied().collect();
        let mut notes = Vec::new();
        match backout {
            Backout::LeaveToFts => {
                notes.push("the segment stays up; the fault tolerance service synchronizes it or marks it down".into())
            }
            Backout::KeepNewPrimary => notes.push(format!(
                "dbid {} is the primary now; dbid {} was left down: recover it with gp_recover_segment({})",
                self.rec.source_dbid,
                self.dbid(),
                self.dbid()
            )),
            _ => {}
        }
        self.ending =
            Some(Ending { state, failure, steps, notes, success_after_all: backout == Backout::Finish, retry: false });
    }

    /// Carries the backout one step further; Some once done.
    pub fn step_ending(&mut self) -> Option<Ended> {
        loop {
            let Some(step) = self.ending.as_ref()?.steps.front().copied() else { break };
            let result = match step {
                Undo::StopTarget => self.undo_stop(),
                Undo::RestoreDirectory => self.undo_directory(),
                Undo::RestoreCatalog => Some(self.undo_catalog()),
                Undo::StartOldPrimary => self.undo_start_old_primary(),
                Undo::GiveUpMirror => self.undo_give_up_mirror(),
                Undo::KeepNewPrimary => Some(self.undo_keep_new_primary()),
            }?;
            let ending = self.ending.as_mut()?;
            ending.steps.pop_front();
            if let Err(e) = result {
                ending.notes.push(e);
            }
        }
        let ending = self.ending.take()?;
        if ending.state == JobState::Succeeded {
            return Some(Ended::Over(JobState::Succeeded, None));
        }
        if ending.success_after_all {
            warning!("gp_recovery: job {}: {}", self.id(), ending.failure.message);
            return Some(Ended::Over(JobState::Succeeded, None));
        }
        let mut failure = ending.failure;
        if !ending.notes.is_empty() {
            failure.message = format!("{}; {}", failure.message, ending.notes.join("; "));
        }
        if ending.retry {
            return Some(Ended::Retry(Attempt {
                mode: self.kind.to_string(),
                phase: self.phase.to_string(),
                reason: failure.message,
                bytes: self.progress.map(|p| p.done_bytes),
                failure: Some(failure.kind.to_string()),
            }));
        }
        Some(Ended::Over(ending.state, Some(failure)))
    }

    fn undo_stop(&mut self) -> Option<Result<(), String>> {
        let dir = self.target.datadir.clone();
        match self.target_tool("stop", |s| s.stop(&dir, false), Some(Duration::from_secs(120)))? {
            Ok(_) => Some(Ok(())),
            Err(e) if e.kind == FailureKind::Refused => {
                Some(Err(format!("the target was left running: {}", e.message)))
            }
            Err(e) => Some(Err(format!("could not stop the target: {}", e.message))),
        }
    }

    fn undo_directory(&mut self) -> Option<Result<(), String>> {
        let (dir, relocate) = (self.target.datadir.clone(), self.kind == JobKind::Relocation);
        match self.target_tool("restore", |s| s.back_out_copy(&dir, relocate), Some(SHORT_STEP))? {
            Ok(_) => Some(Ok(())),
            Err(e) if e.kind == FailureKind::Refused => {
                Some(Err(format!("the data directory was left as it is: {}", e.message)))
            }
            Err(e) => Some(Err(format!("could not restore the data directory: {}", e.message))),
        }
    }

    /// The segment stays down with its catalog row as before the job (a
    /// full copy's original row back, with a backout row), and a pair whose
    /// mirror is down is not in sync.
    fn undo_catalog(&mut self) -> Result<(), String> {
        let (original, full) = (self.rec.original.clone(), matches!(self.kind, JobKind::Full | JobKind::Relocation));
        try_transaction(|| {
            let catalog_now = catalog::load();
            let Some(now) = catalog_now.iter().find(|s| s.dbid == original.dbid) else {
                return Ok(());
            };
            catalog::lock_rows(&[original.dbid]);
            if full {
                // As gprecoverseg: the original row goes back, with a backout
                // row even when in place nothing moved.
                let row = Segment { status: Status::Down, mode: Mode::NotInSync, ..original.clone() };
                catalog::update_rows(&[History {
                    text: format!(
                        "{BACKOUT}: inserted segment configuration for full recovery or original dbid {}",
                        row.dbid
                    ),
                    row,
                    event: SegmentEvent::Backout,
                }]);
            } else {
                let down = Segment { status: Status::Down, mode: Mode::NotInSync, role: Role::Mirror, ..now.clone() };
                if &down != now {
                    catalog::update_rows(&[History::update(BACKOUT, SegmentEvent::Backout, down)]);
                }
            }
            if let Some(p) = catalog_now
                .iter()
                .find(|s| s.content == original.content && s.dbid != original.dbid && s.mode == Mode::Synchronized)
            {
                let p = Segment { mode: Mode::NotInSync, ..p.clone() };
                catalog::update_rows(&[History::update(BACKOUT, SegmentEvent::Backout, p)]);
            }
            Ok(())
        })
        .map_err(|e| format!("could not restore the catalog: {e}"))
    }

    /// Rebalance before the catalog swap: the stopped primary runs again.
    fn undo_start_old_primary(&mut self) -> Option<Result<(), String>> {
        let dir = self.rec.original.datadir.clone();
        let (dbid, content) = (self.dbid(), self.rec.content);
        match self.target_tool("pg_ctl_start", |s| s.start(&dir, true, 120), Some(Duration::from_secs(150)))? {
            Ok(out) if host::printed(&out, host::ALREADY_RUNNING) => Some(Ok(())),
            Ok(_) => Some(Err(format!("dbid {dbid} was started again as the primary"))),
            Err(e) => Some(Err(format!(
                "dbid {dbid} could not be started again: content {content} has no running primary ({})",
                e.message
            ))),
        }
    }

    /// A switchover whose mirror did not replay in time, once the old
    /// primary runs again: the mirror is marked down and synchronous
    /// replication turned off, as the fault tolerance service would after
    /// its grace period, so writes go on at once instead of waiting for a
    /// standby that does not stream. A recovery brings the mirror back.
    fn undo_give_up_mirror(&mut self) -> Option<Result<(), String>> {
        let (primary, mirror) = (self.rec.original.clone(), self.source.clone());
        // Marked once, before the call below starts.
        if self.task.is_none() {
            let marked = try_transaction(|| {
                let now = catalog::lock_rows(&[primary.dbid, mirror.dbid]);
                let find = |dbid: i16| now.iter().find(|s| s.dbid == dbid);
                let still = find(primary.dbid).is_some_and(|p| p.role == Role::Primary)
                    && find(mirror.dbid).is_some_and(|m| m.role == Role::Mirror && m.status == Status::Up);
                if still {
                    let rows = [
                        (
                            Segment { status: Status::Down, mode: Mode::NotInSync, ..mirror.clone() },
                            SegmentEvent::MirrorDown,
                        ),
                        (Segment { mode: Mode::NotInSync, ..primary.clone() }, SegmentEvent::SyncOff),
                    ];
                    let changes: Vec<History> = rows.into_iter().map(|(r, e)| History::update(BACKOUT, e, r)).collect();
                    catalog::update_rows(&changes);
                }
                Ok(())
            });
            if let Err(e) = marked {
                return Some(Err(format!("could not mark dbid {} down: {e}", mirror.dbid)));
            }
        }
        let t = Target::new(&primary, call_timeout());
        match self.call(|| Box::pin(async move { t.disable_sync_rep().await.map(|()| Answer::Done) }))? {
            Ok(_) => Some(Err(format!(
                "dbid {} did not keep up, so it was marked down and synchronous replication turned off on dbid {}: \
                 recover it with gp_recover_segment({})",
                mirror.dbid, primary.dbid, mirror.dbid
            ))),
            Err(e) => Some(Err(format!(
                "dbid {} did not keep up; synchronous replication could not be turned off on dbid {}: {e}",
                mirror.dbid, primary.dbid
            ))),
        }
    }

    /// Rebalance after the catalog swap: the old primary is a down mirror.
    fn undo_keep_new_primary(&mut self) -> Result<(), String> {
        let old = self.rec.original.clone();
        try_transaction(|| {
            let row = Segment { role: Role::Mirror, status: Status::Down, mode: Mode::NotInSync, ..old.clone() };
            let now = catalog::lock_rows(&[row.dbid]);
            if !now.contains(&row) {
                catalog::update_rows(&[History::update(BACKOUT, SegmentEvent::Backout, row)]);
            }
            Ok(())
        })
        .map_err(|e| format!("could not record dbid {} down: {e}", old.dbid))
    }

    /// Ends whatever runs, at once (the worker is shutting down).
    pub fn abandon(&mut self) {
        if let Some(mut t) = self.tool.take() {
            t.kill();
        }
        self.task = None;
        self.scratch = Scratch::Empty;
    }
}
