//! The recovery jobs worker: a background worker on the coordinator that
//! runs queued gp_recovery_job rows, several at once up to
//! gp_recovery.max_parallel_jobs, each through its phases:
//!
//!   checking host → stopping → checking source → rewinding / copying →
//!   configuring → starting → connecting → marking up → catching up →
//!   synchronizing
//!
//! and rebalance jobs (gp_rebalance) through
//!
//!   checking host → checking pair → stopping (the acting primary, fast) → promoting (once
//!   its mirror replayed the final checkpoint) → configuring (the old
//!   primary as a standby) → starting → connecting (pg_rewind only if it
//!   cannot follow the new timeline) → marking up → catching up → synchronizing
//!
//! Every step on a segment's files or processes is a script (built in
//! gp_recovery_core::host) run on the segment's host: directly on the
//! coordinator's own, else through gp_recovery.remote_shell. Its output
//! streams to a log file under the coordinator's gp_recovery_log/, read
//! back for progress. Nothing changes the catalog before the target host
//! answered (checking host). Nothing holds a transaction
//! open while a child runs: each tick polls the children, then writes phase
//! and progress in one short transaction. The pair becomes synchronized
//! through the fault tolerance service, which the job asks for rounds.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use gp_recovery_core::host::{self, Scripts};
use gp_recovery_core::probe::{ProbeResult, MIRROR_APPLICATION_NAME, SLOT_NAME};
use gp_recovery_core::rebalance;
use gp_recovery_core::recovery::{self, JobRecord, Progress, RecoveryMode};
use gp_recovery_core::segment::{update_history, Mode, Role, Segment, Status};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};

use crate::error::OrRaise;
use crate::segment_client::{block_on, server_user, Target};
use crate::segment_host::{self, HostError, SegmentHost};
use crate::{catalog, fts, gucs, latch};

static JOBS_WORKER_PID: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"gp_recovery_jobs_worker_pid") };

/// Shared memory and the worker; only while loading via shared_preload_libraries.
pub fn init() {
    pg_shmem_init!(JOBS_WORKER_PID);
    BackgroundWorkerBuilder::new("gp_recovery jobs")
        .set_type("gp_recovery jobs")
        .set_library("gp_recovery")
        .set_function("gp_recovery_jobs_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// Tells the worker there is something to do.
pub fn wake() {
    if crate::preloaded() {
        latch::wake(JOBS_WORKER_PID.get().load(Ordering::SeqCst));
    }
}

/// History texts, as gprecoverseg writes them.
const RESYNC: &str = "gprecoverseg: segment config for resync";
const BACKOUT: &str = "gprecoverseg: segment config for backout";
const REBALANCE: &str = "gp_rebalance: segment config for rebalance";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    CheckingHost,
    Stopping,
    CheckingSource,
    Copying,
    Promoting,
    Configuring,
    Starting,
    Connecting,
    MarkingUp,
    CatchingUp,
    Synchronizing,
}

impl Phase {
    fn name(self, mode: RecoveryMode) -> &'static str {
        match self {
            Phase::CheckingHost => "checking host",
            Phase::Stopping => "stopping",
            Phase::CheckingSource if mode == RecoveryMode::Rebalance => "checking pair",
            Phase::CheckingSource => "checking source",
            Phase::Copying if mode == RecoveryMode::Rebalance => "rewinding",
            Phase::Copying if mode == RecoveryMode::Incremental => "rewinding",
            Phase::Copying => "copying",
            Phase::Promoting => "promoting",
            Phase::Configuring => "configuring",
            Phase::Starting => "starting",
            Phase::Connecting => "connecting",
            Phase::MarkingUp => "marking up",
            Phase::CatchingUp => "catching up",
            Phase::Synchronizing => "synchronizing",
        }
    }

    fn from_name(name: &str) -> Option<Phase> {
        [
            Phase::CheckingHost,
            Phase::Stopping,
            Phase::CheckingSource,
            Phase::Copying,
            Phase::Promoting,
            Phase::Configuring,
            Phase::Starting,
            Phase::Connecting,
            Phase::MarkingUp,
            Phase::CatchingUp,
            Phase::Synchronizing,
        ]
        .into_iter()
        .find(|p| {
            [RecoveryMode::Full, RecoveryMode::Incremental, RecoveryMode::Rebalance].iter().any(|m| p.name(*m) == name)
        })
    }
}

/// What one step of a job decided.
enum Step {
    Stay,
    Next(Phase),
    Succeeded,
    Fail(String),
}

/// A step's script running on a host, with the file its output goes to.
struct Tool {
    name: &'static str,
    host: SegmentHost,
    child: Child,
    /// Held open while the script runs: closing it ends the script.
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

/// The tools whose output reports copy progress.
const COPY_TOOLS: [&str; 3] = ["pg_rewind", "pg_basebackup", "rsync"];

/// A running job.
struct Job {
    rec: JobRecord,
    mode: RecoveryMode,
    target: Segment,
    /// Where the target's steps run; an error if the settings cannot say.
    target_host: Result<SegmentHost, String>,
    /// Where the failed segment was (a relocation leaves its host).
    original_host: Result<SegmentHost, String>,
    source: Option<Segment>,
    phase: Phase,
    tool: Option<Tool>,
    /// The session holding a differential recovery's base backup open.
    backup: Option<tokio_postgres::Client>,
    /// Rebalance: the preferred primary has been promoted.
    promoted: bool,
    /// Rebalance: the old primary was rewound after it could not follow.
    rewound: bool,
    /// Rebalance: the old primary's final checkpoint, which its mirror must
    /// have replayed before it is promoted.
    checkpoint_lsn: Option<u64>,
    next_check: Instant,
    deadline: Option<Instant>,
    progress: Option<Progress>,
    wal_remaining: Option<i64>,
    logfile: Option<PathBuf>,
}

/// gp_recovery_log/ under the coordinator's data directory.
fn log_dir() -> PathBuf {
    // SAFETY: DataDir is set before any worker starts.
    let data = unsafe { std::ffi::CStr::from_ptr(pg_sys::DataDir) };
    PathBuf::from(&*data.to_string_lossy()).join("gp_recovery_log")
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

fn timeout() -> Duration {
    Duration::from_secs(u64::try_from(gucs::FTS_PROBE_TIMEOUT.get()).unwrap_or(20).max(1))
}

fn scripts() -> Scripts {
    segment_host::scripts(timeout().as_secs())
}

impl Job {
    fn new(rec: JobRecord) -> Result<Job, String> {
        let mode = rec.mode().map_err(|e| e.to_string())?;
        let phase = Phase::from_name(&rec.phase).unwrap_or(Phase::Stopping);
        Ok(Job {
            target: rec.target(),
            target_host: SegmentHost::of(&rec.target_hostname),
            original_host: SegmentHost::of(&rec.original.hostname),
            rec,
            mode,
            source: None,
            phase,
            tool: None,
            backup: None,
            promoted: false,
            rewound: false,
            checkpoint_lsn: None,
            next_check: Instant::now(),
            deadline: None,
            progress: None,
            wal_remaining: None,
            logfile: None,
        })
    }

    fn id(&self) -> i64 {
        self.rec.job_id
    }

    fn dbid(&self) -> i16 {
        self.rec.dbid
    }

    fn phase_name(&self) -> &'static str {
        self.phase.name(self.mode)
    }

    fn source(&self) -> Result<&Segment, String> {
        self.source.as_ref().ok_or_else(|| "the source was not checked".to_string())
    }

    fn host(&self) -> Result<SegmentHost, String> {
        self.target_host.clone()
    }

    /// Starts a step's script on `host`, its output going to the job's log
    /// file for that step.
    fn spawn_on(&mut self, host: SegmentHost, name: &'static str, script: &str) -> Result<(), String> {
        let dir = log_dir();
        fs::create_dir_all(&dir).map_err(|e| format!("could not create {}: {e}", dir.display()))?;
        let log = dir.join(format!("{name}.job{}.dbid{}.out", self.id(), self.dbid()));
        let out = fs::File::create(&log).map_err(|e| format!("could not create {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut child = host
            .command(script)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("could not run {name} for host {}: {e}", host.name))?;
        log!(
            "gp_recovery: job {} (dbid {}): running {name} on host {}{}; output in {}",
            self.id(),
            self.dbid(),
            host.name,
            if host.is_remote() { " through gp_recovery.remote_shell" } else { "" },
            log.display()
        );
        if COPY_TOOLS.contains(&name) {
            self.logfile = Some(log.clone());
        }
        let stdin = child.stdin.take();
        self.tool = Some(Tool { name, host, child, stdin, log });
        Ok(())
    }

    /// Starts a step's script on the target's host.
    fn spawn(&mut self, name: &'static str, script: &str) -> Result<(), String> {
        let host = self.host()?;
        self.spawn_on(host, name, script)
    }

    /// Runs a short step on the target's host to its end.
    fn run(&self, what: &str, script: &str) -> Result<String, String> {
        Ok(self.host()?.run(what, script)?)
    }

    /// None while the step runs; its result once it has exited.
    fn poll_tool(&mut self) -> Option<Result<(), HostError>> {
        let tool = self.tool.as_mut()?;
        let read = |log: &PathBuf| fs::read(log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        if COPY_TOOLS.contains(&tool.name) {
            if let Some(p) = recovery::parse_progress(&read(&tool.log)) {
                self.progress = Some(p);
            }
        }
        let status = match tool.child.try_wait() {
            Ok(None) => return None,
            Ok(Some(status)) => status,
            Err(e) => {
                return Some(Err(HostError {
                    message: format!("could not wait for {}: {e}", tool.name),
                    unreachable: false,
                }))
            }
        };
        let tool = self.tool.take()?;
        // rsync's 24: some source files vanished while copying (dropped
        // tables); the WAL replayed from the backup start covers them.
        Some(if status.success() || (tool.name == "rsync" && status.code() == Some(24)) {
            Ok(())
        } else {
            let mut e = tool.host.failure(tool.name, status, &read(&tool.log));
            e.message = format!("{} (output in {})", e.message, tool.log.display());
            Err(e)
        })
    }

    /// Ends a running step and everything it started, on its host: closing
    /// its standard input ends the script's session there; if it does not
    /// exit, its local process group is killed.
    fn kill_tool(&mut self) {
        let Some(mut tool) = self.tool.take() else {
            return;
        };
        drop(tool.stdin.take());
        let group = -(tool.child.id() as i32);
        for signal in [None, Some(libc::SIGTERM), Some(libc::SIGKILL)] {
            if let Some(sig) = signal {
                // SAFETY: signals the process group this job created.
                unsafe { libc::kill(group, sig) };
            }
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                if let Ok(Some(_)) = tool.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Runs the current phase one step further.
    fn step(&mut self) -> Step {
        match self.phase {
            Phase::CheckingHost => self.checking_host(),
            Phase::Stopping => self.stopping(),
            Phase::CheckingSource => self.checking_source(),
            Phase::Copying => self.copying(),
            Phase::Promoting => self.promoting(),
            Phase::Configuring => self.configuring(),
            Phase::Starting => self.starting(),
            Phase::Connecting => self.connecting(),
            Phase::MarkingUp => self.marking_up(),
            Phase::CatchingUp => self.catching_up(),
            Phase::Synchronizing => self.synchronizing(),
        }
    }

    /// The target's host must answer and have the server programs before
    /// the catalog changes (gprecoverseg: "The recovery target segment ...
    /// is unreachable").
    fn checking_host(&mut self) -> Step {
        if self.tool.is_some() {
            return match self.poll_tool() {
                None => Step::Stay,
                Some(Err(e)) => Step::Fail(e.message),
                Some(Ok(())) => match BackgroundWorker::transaction(|| start_in_catalog(&self.rec)) {
                    Ok(()) if self.mode == RecoveryMode::Rebalance => Step::Next(Phase::CheckingSource),
                    Ok(()) => Step::Next(Phase::Stopping),
                    Err(e) => Step::Fail(e),
                },
            };
        }
        let script = scripts().check(&self.target.datadir);
        match self.spawn("check", &script) {
            Ok(()) => Step::Stay,
            Err(e) => Step::Fail(e),
        }
    }

    /// Makes sure the failed segment is not running. Rebalance stops the
    /// acting primary, which must be running.
    fn stopping(&mut self) -> Step {
        let rebalance = self.mode == RecoveryMode::Rebalance;
        let next = if rebalance { Phase::Promoting } else { Phase::CheckingSource };
        if self.tool.is_some() {
            return match self.poll_tool() {
                None => Step::Stay,
                Some(Ok(())) => Step::Next(next),
                // gprecoverseg: a relocation away from a dead host skips the stop.
                Some(Err(e)) if e.unreachable && self.rec.relocate => {
                    log!("gp_recovery: job {}: not stopping the failed segment: {}", self.id(), e.message);
                    Step::Next(next)
                }
                Some(Err(e)) => Step::Fail(e.message),
            };
        }
        let script = scripts().stop(&self.rec.original.datadir, rebalance);
        match self.original_host.clone().and_then(|h| self.spawn_on(h, "stop", &script)) {
            Ok(()) => Step::Stay,
            Err(e) => Step::Fail(e),
        }
    }

    /// The source must still be the content's acting primary, up, and answer
    /// as a primary.
    fn checking_source(&mut self) -> Step {
        if self.mode == RecoveryMode::Rebalance {
            return self.checking_pair();
        }
        let catalog = BackgroundWorker::transaction(catalog::load);
        let Some(source) = catalog.iter().find(|s| s.content == self.rec.content && s.role == Role::Primary).cloned()
        else {
            return Step::Fail(format!("double fault: content {} has no acting primary", self.rec.content));
        };
        if source.dbid != self.rec.source_dbid {
            return Step::Fail(format!(
                "the acting primary of content {} changed from dbid {} to dbid {} since the job was submitted; submit it again",
                self.rec.content, self.rec.source_dbid, source.dbid
            ));
        }
        let probe = block_on(Target::new(&source, timeout()).probe());
        if let Err(e) = recovery::verify_source(&source, &probe) {
            return Step::Fail(e.to_string());
        }
        self.source = Some(source);
        Step::Next(Phase::Copying)
    }

    /// Rebalance: the pair must still be switched, up and synchronized, and
    /// the preferred primary must answer as a standby.
    fn checking_pair(&mut self) -> Step {
        let catalog = BackgroundWorker::transaction(catalog::load);
        let find = |dbid: i16| catalog.iter().find(|s| s.dbid == dbid).cloned();
        let (Some(primary), Some(mirror)) = (find(self.dbid()), find(self.rec.source_dbid)) else {
            return Step::Fail("the pair is no longer in the catalog".into());
        };
        let healthy =
            |s: &Segment, role: Role| s.role == role && s.status == Status::Up && s.mode == Mode::Synchronized;
        if !healthy(&primary, Role::Primary) || !healthy(&mirror, Role::Mirror) {
            return Step::Fail(format!(
                "dbid {} and dbid {} are no longer an up, synchronized primary and mirror",
                primary.dbid, mirror.dbid
            ));
        }
        match block_on(Target::new(&mirror, timeout()).probe()) {
            Ok(p) if p.in_recovery => {
                self.source = Some(mirror);
                Step::Next(Phase::Stopping)
            }
            Ok(_) => Step::Fail(format!("dbid {} is not in recovery", mirror.dbid)),
            Err(e) => Step::Fail(format!("dbid {} does not answer: {e}", mirror.dbid)),
        }
    }

    /// Rebalance: once the preferred primary has replayed the stopped
    /// primary's final checkpoint (so no acknowledged commit is missing),
    /// promote it, record the switch, and give it the slot for its mirror.
    fn promoting(&mut self) -> Step {
        let new = match self.source() {
            Ok(s) => s.clone(),
            Err(e) => return Step::Fail(e),
        };
        let t = Target::new(&new, timeout());
        let Some(checkpoint) = self.checkpoint_lsn else {
            let report = self.run("pg_controldata", &scripts().controldata(&self.rec.original.datadir));
            return match report.map(|r| rebalance::controldata_checkpoint(&r)) {
                Ok(Some(l)) => {
                    self.checkpoint_lsn = Some(l);
                    self.deadline = Some(Instant::now() + Duration::from_secs(60));
                    Step::Stay
                }
                Ok(None) => Step::Fail("pg_controldata did not report the stopped primary's final checkpoint".into()),
                Err(e) => Step::Fail(format!("could not read the stopped primary's final checkpoint: {e}")),
            };
        };
        match block_on(t.replay_lsn()) {
            Ok(replayed) if replayed > checkpoint => {}
            other => {
                if self.deadline.is_some_and(|d| Instant::now() > d) {
                    return Step::Fail(format!(
                        "dbid {} did not replay the old primary's final checkpoint at {:X}/{:X} within 60 s ({}); not promoting it",
                        new.dbid,
                        checkpoint >> 32,
                        checkpoint & 0xFFFF_FFFF,
                        other.map_or_else(|e| e, |r| format!("replayed up to {:X}/{:X}", r >> 32, r & 0xFFFF_FFFF))
                    ));
                }
                return Step::Stay;
            }
        }
        if let Err(e) = block_on(t.promote()) {
            return Step::Fail(format!("could not promote dbid {}: {e}", new.dbid));
        }
        self.promoted = true;
        let rows = [
            Segment { role: Role::Mirror, status: Status::Down, mode: Mode::NotInSync, ..self.rec.original.clone() },
            Segment { role: Role::Primary, status: Status::Up, mode: Mode::NotInSync, ..new.clone() },
        ];
        BackgroundWorker::transaction(|| {
            catalog::lock_rows(&[rows[0].dbid, rows[1].dbid]);
            catalog::update_rows(&rows, |s| update_history(REBALANCE, s));
        });
        self.source = Some(rows[1].clone());
        for (what, result) in [
            ("turn synchronous replication off", block_on(t.disable_sync_rep())),
            ("create the slot", block_on(t.create_slot())),
        ] {
            if let Err(e) = result {
                warning!("gp_recovery: job {}: could not {what} on dbid {}: {e}", self.id(), new.dbid);
            }
        }
        Step::Next(Phase::Configuring)
    }

    fn copying(&mut self) -> Step {
        if self.tool.is_some() {
            return match self.poll_tool() {
                None => Step::Stay,
                Some(Err(e)) => Step::Fail(self.copy_failure(e.message)),
                Some(Ok(())) => match self.copy_done() {
                    Ok(()) => Step::Next(Phase::Configuring),
                    Err(e) => Step::Fail(self.copy_failure(e)),
                },
            };
        }
        match self.start_copy() {
            Ok(()) => Step::Stay,
            Err(e) => Step::Fail(self.copy_failure(e)),
        }
    }

    /// Adds gprecoverseg's advice to a failed copy.
    fn copy_failure(&self, e: String) -> String {
        let dbid = self.dbid();
        match self.mode {
            RecoveryMode::Incremental => format!(
                "{e}. Incremental recovery failed: run gp_recover_segment({dbid}, 'differential') or gp_recover_segment({dbid}, 'full')"
            ),
            RecoveryMode::Differential => format!(
                "{e}. Differential recovery failed and may have changed the data directory: run gp_recover_segment({dbid}, 'differential') again or gp_recover_segment({dbid}, 'full')"
            ),
            RecoveryMode::Full => e,
            RecoveryMode::Rebalance => format!(
                "{e}. The old primary dbid {dbid} could not follow the new primary: recover it with gp_recover_segment({dbid}, 'full')"
            ),
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

    /// Starts the mode's copy on the target's host.
    fn start_copy(&mut self) -> Result<(), String> {
        let source = self.source()?.clone();
        let src = Target::new(&source, timeout());
        let target_dir = self.target.datadir.clone();
        match self.mode {
            RecoveryMode::Rebalance => self.spawn_rewind(&source, &target_dir, false),
            RecoveryMode::Incremental => {
                block_on(src.create_slot())?;
                self.spawn_rewind(&source, &target_dir, true)
            }
            RecoveryMode::Full => {
                // The copy streams its WAL through a temporary slot of its
                // own: the mirror's slot keeps what it holds (all WAL since
                // the failover) should this copy fail or be canceled.
                block_on(src.create_slot())?;
                let args = vec![
                    "-h".into(),
                    source.address.clone(),
                    "-p".into(),
                    source.port.to_string(),
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
                let script = scripts().basebackup(&target_dir, self.rec.relocate, &with_rate(args, "--max-rate="));
                self.spawn("pg_basebackup", &script)
            }
            RecoveryMode::Differential => {
                // The slot keeps all WAL from before the backup starts (at
                // the latest), so the mirror streams what the copy needs.
                block_on(src.create_slot())?;
                self.backup = Some(block_on(src.backup_start(&format!("gp_recovery job {}", self.id())))?);
                // --no-whole-file: the delta algorithm even between local
                // directories, so only changed blocks are sent; --inplace:
                // only those blocks are written, not a new copy of every
                // changed file (a failed run already needs a new one);
                // --stats reports the bytes sent in the job's log.
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
                // From another host, rsync on the target's host pulls
                // through the same remote shell.
                let source_host =
                    (!source.hostname.eq_ignore_ascii_case(&self.target.hostname)).then_some(source.hostname.as_str());
                let script = scripts().rsync(
                    &target_dir,
                    &source.datadir,
                    source_host,
                    &gucs::remote_shell(),
                    &with_rate(args, "--bwlimit="),
                );
                self.spawn("rsync", &script)
            }
        }
    }

    /// pg_rewind of the target against the source, after a CHECKPOINT there
    /// so the source's control file shows its current timeline.
    fn spawn_rewind(&mut self, source: &Segment, target_dir: &str, skip_standby: bool) -> Result<(), String> {
        block_on(Target::new(source, timeout()).checkpoint())?;
        let conninfo = Self::user_conninfo(source, "gp_recovery_pg_rewind");
        self.spawn("pg_rewind", &scripts().rewind(target_dir, &conninfo, skip_standby))
    }

    /// What follows a successful copy.
    fn copy_done(&mut self) -> Result<(), String> {
        let target_dir = self.target.datadir.clone();
        match self.mode {
            RecoveryMode::Incremental | RecoveryMode::Rebalance => Ok(()),
            // The new copy is complete: only now does the old data directory
            // move aside (removed once the job succeeds).
            RecoveryMode::Full => {
                self.run("moving the copy in place", &scripts().swap_in(&target_dir, self.rec.relocate)).map(drop)
            }
            RecoveryMode::Differential => {
                let source = self.source()?.clone();
                let session = self.backup.take().ok_or("the backup session is gone")?;
                let (label, map) = block_on(Target::new(&source, timeout()).backup_stop(&session))?;
                drop(session);
                // WAL of the old timeline must not be replayed: the mirror
                // streams what it needs from the slot.
                self.run("writing backup_label", &scripts().install_backup_label(&target_dir, &label, &map)).map(drop)
            }
        }
    }

    /// standby.signal, primary_conninfo to the acting primary, the slot, and
    /// the segment's own port (the copy brought the source's settings).
    fn configuring(&mut self) -> Step {
        let source = match self.source() {
            Ok(s) => s.clone(),
            Err(e) => return Step::Fail(e),
        };
        let dir = self.target.datadir.clone();
        let result = self.run("reading postgresql.auto.conf", &scripts().read_auto_conf(&dir)).and_then(|existing| {
            let text = recovery::rewrite_auto_conf(
                &existing,
                &[
                    ("port", self.target.port.to_string()),
                    ("primary_conninfo", Self::user_conninfo(&source, MIRROR_APPLICATION_NAME)),
                    ("primary_slot_name", SLOT_NAME.to_string()),
                    ("synchronous_standby_names", String::new()),
                ],
            );
            self.run("configuring the standby", &scripts().configure_standby(&dir, &text))
        });
        match result {
            Ok(_) => Step::Next(Phase::Starting),
            Err(e) => Step::Fail(format!("could not configure {dir}: {e}")),
        }
    }

    fn starting(&mut self) -> Step {
        if self.tool.is_some() {
            return match self.poll_tool() {
                None => Step::Stay,
                Some(Err(e)) => Step::Fail(format!("the segment did not start: {}", e.message)),
                Some(Ok(())) => {
                    // A demoted primary that cannot follow the new timeline
                    // is rewound after 30 s instead of failing.
                    let wait = if self.mode == RecoveryMode::Rebalance && !self.rewound { 30 } else { 120 };
                    self.deadline = Some(Instant::now() + Duration::from_secs(wait));
                    Step::Next(Phase::Connecting)
                }
            };
        }
        // The postmaster outlives the step: pg_ctl detaches it.
        match self.spawn("pg_ctl", &scripts().start(&self.target.datadir, false, 600)) {
            Ok(()) => Step::Stay,
            Err(e) => Step::Fail(e),
        }
    }

    /// What the acting primary reports now, at most five times a second.
    fn source_probe(&mut self) -> Option<ProbeResult> {
        if Instant::now() < self.next_check {
            return None;
        }
        self.next_check = Instant::now() + Duration::from_millis(200);
        let source = self.source.clone()?;
        Some(block_on(Target::new(&source, timeout()).probe()))
    }

    /// Waits until the primary reports a stream from the new mirror, so that
    /// the fault tolerance service never sees an 'up' mirror without one.
    fn connecting(&mut self) -> Step {
        if let Some(Ok(p)) = self.source_probe() {
            if let Some(r) = p.mirror_replication() {
                self.wal_remaining = r.bytes_behind;
                return Step::Next(Phase::MarkingUp);
            }
        }
        if self.deadline.is_some_and(|d| Instant::now() > d) {
            if self.mode == RecoveryMode::Rebalance && !self.rewound {
                log!(
                    "gp_recovery: job {}: dbid {} does not follow the new primary; rewinding it",
                    self.id(),
                    self.dbid()
                );
                self.rewound = true;
                return match self.stop_target() {
                    Ok(()) => Step::Next(Phase::Copying),
                    Err(e) => Step::Fail(e),
                };
            }
            return Step::Fail("the segment started but did not stream from its primary in time".into());
        }
        Step::Stay
    }

    /// pg_ctl stop -m fast of the target, waiting for it; a segment that
    /// does not run is fine.
    fn stop_target(&self) -> Result<(), String> {
        self.run("stop", &scripts().stop(&self.target.datadir, false)).map(drop)
    }

    fn marking_up(&mut self) -> Step {
        let target = self.target.clone();
        let job_id = self.id();
        if self.mode == RecoveryMode::Rebalance {
            // The demoted primary's slot served its old mirror; as a standby
            // it would only keep WAL forever.
            if let Err(e) = block_on(Target::new(&target, timeout()).drop_slot()) {
                warning!("gp_recovery: job {job_id}: could not drop the old slot on dbid {}: {e}", target.dbid);
            }
        }
        let marked = BackgroundWorker::transaction(|| {
            // From here on the fault tolerance service watches the pair again.
            Spi::run_with_args(
                "UPDATE public.gp_recovery_job SET fts_hold = false WHERE job_id = $1",
                &[job_id.into()],
            )
            .or_raise();
            let rows = catalog::lock_rows(&[target.dbid]);
            match rows.first() {
                Some(now) if now.status == Status::Down => {
                    let up =
                        Segment { status: Status::Up, mode: Mode::NotInSync, role: Role::Mirror, ..target.clone() };
                    catalog::update_rows(&[up], |s| update_history(RESYNC, s));
                    true
                }
                _ => false,
            }
        });
        if !marked {
            return Step::Fail(format!("dbid {} is no longer down in the catalog", target.dbid));
        }
        fts::request_round();
        Step::Next(Phase::CatchingUp)
    }

    fn catching_up(&mut self) -> Step {
        if let Some(Ok(p)) = self.source_probe() {
            match p.mirror_replication() {
                Some(r) => {
                    self.wal_remaining = r.bytes_behind;
                    if r.state == "streaming" {
                        fts::request_round();
                        return Step::Next(Phase::Synchronizing);
                    }
                }
                None => self.wal_remaining = None,
            }
        }
        Step::Stay
    }

    /// The fault tolerance service turns synchronous replication on and
    /// marks the pair 's'; the job ends when it has.
    fn synchronizing(&mut self) -> Step {
        if Instant::now() < self.next_check {
            return Step::Stay;
        }
        self.next_check = Instant::now() + Duration::from_millis(200);
        let catalog = BackgroundWorker::transaction(catalog::load);
        let pair: Vec<&Segment> = catalog.iter().filter(|s| s.content == self.rec.content).collect();
        if pair.len() == 2 && pair.iter().all(|s| s.status == Status::Up && s.mode == Mode::Synchronized) {
            self.wal_remaining = Some(0);
            return Step::Succeeded;
        }
        fts::request_round();
        Step::Stay
    }

    /// After a failure or cancel: stop what runs, put the old data directory
    /// back (full), and leave the segment down with the catalog as before.
    /// Returns notes for the error text.
    fn back_out(&mut self) -> String {
        self.kill_tool();
        // Before the host check nothing changed, on the host or in the catalog.
        if self.phase == Phase::CheckingHost {
            return String::new();
        }
        if self.mode == RecoveryMode::Rebalance {
            return self.back_out_rebalance();
        }
        let mut notes = Vec::new();
        // Closing the session ends a differential's base backup.
        self.backup = None;
        if self.phase >= Phase::Starting {
            if let Err(e) = self.stop_target() {
                notes.push(e);
            }
        }
        if self.mode == RecoveryMode::Full {
            let copied = self.phase > Phase::Copying;
            let script = scripts().back_out_copy(&self.target.datadir, self.rec.relocate, copied);
            if let Err(e) = self.run("restoring the data directory", &script) {
                notes.push(e);
            }
        }
        let (original, relocate, mode) = (self.rec.original.clone(), self.rec.relocate, self.mode);
        BackgroundWorker::transaction(|| {
            let catalog_now = catalog::load();
            let Some(now) = catalog_now.iter().find(|s| s.dbid == original.dbid) else {
                return;
            };
            catalog::lock_rows(&[original.dbid]);
            if mode == RecoveryMode::Full || relocate {
                // As gprecoverseg: the original row goes back, with a backout row.
                let row = Segment { status: Status::Down, mode: Mode::NotInSync, ..original.clone() };
                catalog::update_rows(&[row], |s| {
                    format!("{BACKOUT}: inserted segment configuration for full recovery or original dbid {}", s.dbid)
                });
            } else {
                let down = Segment { status: Status::Down, mode: Mode::NotInSync, role: Role::Mirror, ..now.clone() };
                if &down != now {
                    catalog::update_rows(&[down], |s| update_history(BACKOUT, s));
                }
            }
            // A pair whose mirror is down is not in sync.
            if let Some(p) = catalog_now
                .iter()
                .find(|s| s.content == original.content && s.dbid != original.dbid && s.mode == Mode::Synchronized)
            {
                let p = Segment { mode: Mode::NotInSync, ..p.clone() };
                catalog::update_rows(&[p], |s| update_history(BACKOUT, s));
            }
        });
        notes.join("; ")
    }
}

impl Job {
    /// A failed switchover leaves exactly one primary, and the catalog says
    /// which: before the promotion the old primary is started again; after
    /// it, the old primary stays down for gp_recover_segment.
    fn back_out_rebalance(&mut self) -> String {
        let old = self.rec.original.clone();
        let candidate = self.source.clone();
        let promoted_meanwhile = !self.promoted
            && candidate
                .as_ref()
                .is_some_and(|c| matches!(block_on(Target::new(c, timeout()).probe()), Ok(p) if !p.in_recovery));
        if !self.promoted && !promoted_meanwhile {
            return match self.run("pg_ctl start", &scripts().start(&old.datadir, true, 120)) {
                Ok(out) if out.contains(host::ALREADY_RUNNING) => String::new(),
                Ok(_) => format!("dbid {} was started again as the primary", old.dbid),
                Err(e) => format!(
                    "dbid {} could not be started again: content {} has no running primary ({e})",
                    old.dbid, old.content
                ),
            };
        }
        let stopped = self.stop_target();
        let new = candidate.map(|c| Segment { role: Role::Primary, status: Status::Up, mode: Mode::NotInSync, ..c });
        BackgroundWorker::transaction(|| {
            let mut rows =
                vec![Segment { role: Role::Mirror, status: Status::Down, mode: Mode::NotInSync, ..old.clone() }];
            rows.extend(new.clone().filter(|_| promoted_meanwhile));
            let now = catalog::lock_rows(&rows.iter().map(|r| r.dbid).collect::<Vec<_>>());
            rows.retain(|r| !now.contains(r));
            catalog::update_rows(&rows, |s| update_history(BACKOUT, s));
        });
        format!(
            "the preferred primary is the primary now; dbid {} was left down: recover it with gp_recover_segment({}){}",
            old.dbid,
            old.dbid,
            stopped.err().map(|e| format!("; {e}")).unwrap_or_default()
        )
    }
}

/// Finishes a job row.
fn record_end(job_id: i64, state: &str, error: Option<&str>) {
    BackgroundWorker::transaction(|| {
        Spi::run_with_args(
            "UPDATE public.gp_recovery_job SET state = $2, error = $3, finished_at = now(), updated_at = now(), \
                    phase = CASE WHEN $2 = 'succeeded' THEN 'done' ELSE phase END \
              WHERE job_id = $1",
            &[job_id.into(), state.into(), error.into()],
        )
        .or_raise();
    });
}

struct Worker {
    jobs: Vec<Job>,
    last_flush: Instant,
    stopping: bool,
}

impl Worker {
    /// Jobs left 'running' by a worker that died (or a coordinator restart)
    /// are ended: backed out before their segment started, otherwise left
    /// up for the fault tolerance service to synchronize.
    fn reconcile(&mut self) {
        let leftovers = load_jobs("state = 'running'");
        for rec in leftovers {
            let id = rec.job_id;
            let phase = rec.phase.clone();
            let message = match Job::new(rec) {
                Ok(mut job) if job.phase < Phase::MarkingUp => {
                    let notes = job.back_out();
                    format!(
                        "interrupted in phase {phase}: the coordinator or the recovery worker restarted; the segment was left down{}{notes}",
                        if notes.is_empty() { "" } else { "; " }
                    )
                }
                Ok(_) => format!(
                    "interrupted in phase {phase}: the coordinator or the recovery worker restarted after the segment was started; it stays up and the fault tolerance service synchronizes it"
                ),
                Err(e) => format!("interrupted: {e}"),
            };
            warning!("gp_recovery: job {id}: {message}");
            record_end(id, "failed", Some(&message));
        }
    }

    /// Claims queued jobs while there is room, in submission order.
    fn claim(&mut self) {
        let room = usize::try_from(gucs::MAX_PARALLEL_JOBS.get()).unwrap_or(16).saturating_sub(self.jobs.len());
        if room == 0 {
            return;
        }
        let claimed: Vec<JobRecord> = BackgroundWorker::transaction(|| {
            let recs = load_jobs_locked(room);
            let mut started = Vec::new();
            for rec in recs {
                let rebalance = rec.recovery_type == "rebalance";
                let phase = Phase::CheckingHost.name(RecoveryMode::Full);
                Spi::run_with_args(
                    "UPDATE public.gp_recovery_job SET state = 'running', phase = $2, fts_hold = $3, \
                            started_at = now(), updated_at = now() WHERE job_id = $1",
                    &[rec.job_id.into(), phase.into(), rebalance.into()],
                )
                .or_raise();
                started.push(JobRecord { phase: phase.into(), ..rec });
            }
            started
        });
        for rec in claimed {
            log!(
                "gp_recovery: job {}: {} recovery of dbid {} (content {}) to {}:{} {}",
                rec.job_id,
                rec.recovery_type,
                rec.dbid,
                rec.content,
                rec.target_hostname,
                rec.target_port,
                rec.target_datadir
            );
            match Job::new(rec) {
                Ok(job) => self.jobs.push(job),
                Err(e) => warning!("gp_recovery: {e}"),
            }
        }
    }

    /// One pass over the running jobs.
    fn tick(&mut self) {
        let cancels = self.cancel_requests();
        let mut i = 0;
        while i < self.jobs.len() {
            let id = self.jobs[i].id();
            let outcome = if cancels.contains(&id) {
                Some(("canceled", format!("canceled in phase {}", self.jobs[i].phase_name())))
            } else {
                loop {
                    let before = self.jobs[i].phase;
                    match self.jobs[i].step() {
                        Step::Stay => break None,
                        Step::Next(p) => {
                            log!(
                                "gp_recovery: job {id} (dbid {}): {} done, now {}",
                                self.jobs[i].dbid(),
                                before.name(self.jobs[i].mode),
                                p.name(self.jobs[i].mode)
                            );
                            self.jobs[i].phase = p;
                        }
                        Step::Succeeded => break Some(("succeeded", String::new())),
                        Step::Fail(e) => break Some(("failed", e)),
                    }
                }
            };
            let Some((state, message)) = outcome else {
                i += 1;
                continue;
            };
            let mut job = self.jobs.remove(i);
            if state == "succeeded" {
                if job.mode == RecoveryMode::Full && !job.rec.relocate {
                    if let Err(e) =
                        job.run("removing the old data directory", &scripts().remove_old(&job.target.datadir))
                    {
                        warning!("gp_recovery: job {id}: {e}");
                    }
                }
                log!("gp_recovery: job {id}: dbid {} recovered and synchronized", job.dbid());
                record_end(id, "succeeded", None);
            } else {
                let notes = job.back_out();
                let error = if notes.is_empty() { message } else { format!("{message}; {notes}") };
                warning!("gp_recovery: job {id} (dbid {}) {state}: {error}", job.dbid());
                record_end(id, state, Some(&error));
            }
        }
    }

    fn cancel_requests(&self) -> Vec<i64> {
        if self.jobs.is_empty() {
            return Vec::new();
        }
        BackgroundWorker::transaction(|| {
            Spi::connect(|client| {
                client
                    .select(
                        "SELECT job_id FROM public.gp_recovery_job WHERE state = 'running' AND cancel_requested",
                        None,
                        &[],
                    )?
                    .map(|r| r.get::<i64>(1).map(|v| v.unwrap_or_default()))
                    .collect::<Result<Vec<_>, pgrx::spi::Error>>()
            })
            .or_raise()
        })
    }

    /// Writes phase and progress of every running job, twice a second.
    fn flush_progress(&mut self) {
        if self.jobs.is_empty() || self.last_flush.elapsed() < Duration::from_millis(500) {
            return;
        }
        self.last_flush = Instant::now();
        let rows: Vec<_> = self
            .jobs
            .iter()
            .map(|j| {
                (
                    j.id(),
                    j.phase_name(),
                    j.progress.map(|p| p.done_bytes),
                    j.progress.and_then(|p| p.total_bytes),
                    j.wal_remaining,
                    j.logfile.as_ref().map(|l| l.to_string_lossy().into_owned()),
                )
            })
            .collect();
        BackgroundWorker::transaction(|| {
            for (id, phase, done, total, wal, logfile) in &rows {
                Spi::run_with_args(
                    "UPDATE public.gp_recovery_job SET phase = $2, bytes_done = $3, bytes_total = $4, \
                            wal_remaining_bytes = $5, logfile = $6, updated_at = now() WHERE job_id = $1",
                    &[
                        (*id).into(),
                        (*phase).into(),
                        (*done).into(),
                        (*total).into(),
                        (*wal).into(),
                        logfile.clone().into(),
                    ],
                )
                .or_raise();
            }
        });
    }

    fn run(&mut self) {
        while !self.stopping {
            if BackgroundWorker::sighup_received() {
                // SAFETY: on the worker's main thread, outside a transaction.
                unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            }
            self.claim();
            self.tick();
            self.flush_progress();
            // Running jobs are polled 20 times a second, so a finished step
            // is followed at once; probes of sources keep their own pace.
            let nap = if self.jobs.is_empty() { 1000 } else { 50 };
            if !BackgroundWorker::wait_latch(Some(Duration::from_millis(nap))) {
                self.stopping = true;
            }
        }
        // Shutting down: running jobs are ended at the next start.
        for job in &mut self.jobs {
            job.kill_tool();
        }
    }
}

/// Queued jobs, locked for this transaction, oldest first.
fn load_jobs_locked(limit: usize) -> Vec<JobRecord> {
    let json = Spi::get_one_with_args::<pgrx::JsonB>(
        "SELECT coalesce(jsonb_agg(to_jsonb(j) ORDER BY j.job_id), '[]') FROM \
           (SELECT * FROM public.gp_recovery_job WHERE state = 'queued' ORDER BY job_id \
             LIMIT $1 FOR UPDATE SKIP LOCKED) j",
        &[i64::try_from(limit).unwrap_or(16).into()],
    )
    .or_raise();
    parse_jobs(json)
}

fn load_jobs(condition: &str) -> Vec<JobRecord> {
    let sql = format!(
        "SELECT coalesce(jsonb_agg(to_jsonb(j) ORDER BY j.job_id), '[]') FROM public.gp_recovery_job j WHERE {condition}"
    );
    parse_jobs(BackgroundWorker::transaction(|| Spi::get_one::<pgrx::JsonB>(&sql).or_raise()))
}

fn parse_jobs(json: Option<pgrx::JsonB>) -> Vec<JobRecord> {
    let value = json.map(|j| j.0).unwrap_or_else(|| serde_json::Value::Array(Vec::new()));
    serde_json::from_value(value).unwrap_or_else(|e| crate::error::internal("unexpected gp_recovery_job row", e))
}

/// The catalog step when a job's host answered: a relocation moves the row to its
/// new place (same dbid) and a full recovery records that it replaces the
/// segment, as gprecoverseg does. The row must still be what was planned.
fn start_in_catalog(rec: &JobRecord) -> Result<(), String> {
    let rows = catalog::lock_rows(&[rec.dbid]);
    let now = rows.first().ok_or_else(|| format!("dbid {} is no longer in gp_segment_configuration", rec.dbid))?;
    let mode = rec.mode().map_err(|e| e.to_string())?;
    if mode == RecoveryMode::Rebalance {
        // Checked in full by the job's first phase.
        return Ok(());
    }
    if now.status != Status::Down {
        return Err(format!("dbid {} is no longer down", rec.dbid));
    }
    if mode == RecoveryMode::Full {
        let target = Segment { status: Status::Down, mode: Mode::NotInSync, ..rec.target() };
        catalog::update_rows(&[target], |s| {
            format!("{RESYNC}: inserted segment configuration for full recovery or original dbid {}", s.dbid)
        });
    }
    Ok(())
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn gp_recovery_jobs_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some(&gucs::database()), None);
    // SAFETY: MyProcPid is set for every backend before this runs.
    JOBS_WORKER_PID.get().store(unsafe { pg_sys::MyProcPid }, Ordering::SeqCst);
    let mut worker = Worker { jobs: Vec::new(), last_flush: Instant::now(), stopping: false };
    while !BackgroundWorker::transaction(catalog::extension_exists) {
        if !BackgroundWorker::wait_latch(Some(Duration::from_secs(1))) {
            worker.stopping = true;
            break;
        }
    }
    if !worker.stopping {
        worker.reconcile();
        log!("gp_recovery recovery worker started");
        worker.run();
    }
    JOBS_WORKER_PID.get().store(0, Ordering::SeqCst);
    // Exit code 1: restarted after its restart time unless shutting down.
    unsafe { pg_sys::proc_exit(1) };
}
