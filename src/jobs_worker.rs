//! The recovery jobs worker: a background worker on the coordinator that
//! runs queued gp_recovery_job rows, several at once up to
//! gp_recovery.max_parallel_jobs, each through the phases of its table
//! (gp_recovery_core::job, `SELECT * FROM gp_recovery_phases()`).
//!
//! The loop only polls: each job's phase starts or polls a supervised
//! script or a task (`job_steps`), and the loop commits what they decided
//! in short transactions with a lock timeout. Before a phase's side effect
//! starts, the phase is committed as the job's intent; a catalog change is
//! committed together with the phase that follows it. A job found running
//! at start (the worker or the coordinator restarted) is backed out as its
//! recorded phase says, by probing what is really there.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use gp_recovery_core::job::{self, Failure, FailureKind, FaultPoint, JobState, Phase};
use gp_recovery_core::recovery::{self, Attempt};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};

use crate::job_steps::{Ended, Job, Step};
use crate::job_table::{self, try_transaction, ProgressRow};
use crate::selfheal::SelfHealing;
use crate::{catalog, gucs, latch, segment_host, supervise};

static JOBS_WORKER_PID: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"gp_recovery_jobs_worker_pid") };

/// Shared memory and the worker; only while loading via shared_preload_libraries.
pub fn init() {
    pg_shmem_init!(JOBS_WORKER_PID);
    BackgroundWorkerBuilder::new("gp_recovery jobs")
        .set_type("gp_recovery jobs")
        .set_library("gp_recovery")
        .set_function("gp_recovery_jobs_main")
        .enable_spi_access()
        // Also on a hot standby, where it waits and says so (src/standby.rs).
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// Tells the worker there is something to do.
pub fn wake() {
    if crate::preloaded() {
        latch::wake(JOBS_WORKER_PID.get().load(Ordering::SeqCst));
    }
}

/// Wakes the worker when this transaction commits, when the rows it wrote
/// become visible to the worker: a wake before that finds nothing to claim
/// and leaves the job queued until the idle worker's next look.
pub fn wake_at_commit() {
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, wake);
}

struct Worker {
    jobs: Vec<Job>,
    healing: SelfHealing,
    /// Ends whose write failed, retried every tick.
    unrecorded: Vec<(i64, JobState, Option<Failure>)>,
    last_flush: Instant,
    /// When ended jobs past gp_recovery.job_retention were last looked for.
    last_retention_sweep: Option<Instant>,
    stopping: bool,
    fault: Option<FaultPoint>,
}

impl Worker {
    fn read_settings(&mut self) {
        self.fault = match FaultPoint::parse(&gucs::fault_point()) {
            Ok(f) => f,
            Err(e) => {
                warning!("gp_recovery: {e}");
                None
            }
        };
    }

    /// A superuser's fault point: exit here, or crash the coordinator.
    fn fault(&self, job: &Job, after: bool) {
        let Some(f) = self.fault.filter(|f| f.matches(job.kind, job.phase, after)) else { return };
        warning!(
            "gp_recovery: job {}: fault point {} {} {} reached: the jobs worker {}",
            job.id(),
            job.kind,
            job.phase,
            if after { "after" } else { "before" },
            if f.crash { "crashes" } else { "exits" }
        );
        if f.crash {
            // SAFETY: ends this process; the postmaster restarts the coordinator.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        // SAFETY: ends this worker; restarted after its restart time unless shutting down.
        unsafe { pg_sys::proc_exit(1) };
    }

    /// Jobs left running by a worker that stopped (or a coordinator
    /// restart) are backed out as their recorded phase says.
    fn reconcile(&mut self) {
        let leftovers = match job_table::running() {
            Ok(l) => l,
            Err(e) => {
                warning!("gp_recovery: could not read the running jobs: {e}");
                return;
            }
        };
        for rec in leftovers {
            let (id, phase) = (rec.job_id, rec.phase.clone());
            match Job::new(rec) {
                Ok(mut job) => {
                    let message = format!(
                        "interrupted in phase {phase}: the coordinator or the recovery worker restarted; {}",
                        job::backout(job.kind, job.phase).describe()
                    );
                    warning!("gp_recovery: job {id}: {message}");
                    job.begin_ending(JobState::Failed, Failure::new(FailureKind::Interrupted, message));
                    self.jobs.push(job);
                }
                Err(e) => self.end(
                    id,
                    JobState::Failed,
                    Some(Failure::new(FailureKind::Interrupted, format!("interrupted, and its row is unusable: {e}"))),
                ),
            }
        }
    }

    /// Claims queued jobs while there is room, in submission order.
    fn claim(&mut self) {
        let room = usize::try_from(gucs::MAX_PARALLEL_JOBS.get()).unwrap_or(16).saturating_sub(self.jobs.len());
        if room == 0 {
            return;
        }
        let claimed = match job_table::claim(room, gucs::MAX_PARALLEL_JOBS_PER_HOST.get()) {
            Ok(c) => c,
            Err(e) => {
                warning!("gp_recovery: could not claim queued jobs: {e}");
                return;
            }
        };
        // Every claimed row is planned again from the catalog with the SQL
        // functions' checks: a row they did not write never runs.
        let now = match try_transaction(|| Ok((catalog::load(), job_table::active(), catalog::system_identifiers()))) {
            Ok(n) => n,
            Err(e) => {
                for rec in claimed {
                    self.end(
                        rec.job_id,
                        JobState::Failed,
                        Some(Failure::other(format!("could not check it against the catalog: {e}"))),
                    );
                }
                return;
            }
        };
        let local_hosts = gucs::local_hosts();
        for rec in claimed {
            let hosts = segment_host::hosts_by_name(&local_hosts);
            let system_identifier = now.2.get(&rec.dbid).map(String::as_str);
            if let Err(e) = recovery::verify_claimed(&now.0, &now.1, &rec, &hosts, system_identifier) {
                warning!("gp_recovery: job {} refused: {e}", rec.job_id);
                self.end(
                    rec.job_id,
                    JobState::Failed,
                    Some(Failure::new(FailureKind::Refused, format!("refused: {e}"))),
                );
                continue;
            }
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
            let id = rec.job_id;
            match Job::new(rec) {
                Ok(job) => {
                    self.fault(&job, false);
                    self.jobs.push(job);
                }
                Err(e) => self.end(id, JobState::Failed, Some(Failure::other(e))),
            }
        }
    }

    fn end(&mut self, id: i64, state: JobState, failure: Option<Failure>) {
        if let Err(e) = job_table::record_end(id, state, failure.as_ref()) {
            warning!("gp_recovery: job {id}: could not record that it {state}: {e}; retrying");
            self.unrecorded.push((id, state, failure));
        }
    }

    /// Runs one job as far as it goes now; true when it has ended.
    fn advance(&mut self, i: usize) -> bool {
        if self.jobs[i].ending.is_some() {
            let (state, error) = match self.jobs[i].step_ending() {
                None => return false,
                Some(Ended::Over(state, error)) => (state, error),
                Some(Ended::Retry(attempt)) => return self.retry(i, attempt),
            };
            let job = &self.jobs[i];
            match &error {
                Some(e) => warning!("gp_recovery: job {} (dbid {}) {state}: {}", job.id(), job.dbid(), e.message),
                None => log!("gp_recovery: job {}: dbid {} recovered and synchronized", job.id(), job.dbid()),
            }
            let id = job.id();
            self.end(id, state, error);
            return true;
        }
        loop {
            let step = self.jobs[i].step();
            let job = &mut self.jobs[i];
            match step {
                Step::Stay => return false,
                Step::Fail(e) => {
                    self.fault(&self.jobs[i], true);
                    let job = &mut self.jobs[i];
                    let failure = Failure::new(e.kind, format!("{} (in phase {})", e.message, job.phase));
                    match job.next_attempt(e.kind) {
                        Some(_) => job.begin_retry(failure),
                        None => job.begin_ending(JobState::Failed, failure),
                    }
                    return false;
                }
                Step::Next { alternative, change } => {
                    let row = job::row(job.kind, job.phase);
                    let next = match row {
                        Some(r) if alternative => r.alternative.unwrap_or(r.next),
                        Some(r) => r.next,
                        None => Phase::Done,
                    };
                    self.fault(&self.jobs[i], true);
                    let job = &mut self.jobs[i];
                    if next == Phase::Done {
                        // The last phase's catalog change (a history row)
                        // commits on its own; the job's end follows.
                        if let Some(Err(e)) = change.map(try_transaction) {
                            warning!("gp_recovery: job {}: could not record its last change: {e}", job.id());
                        }
                        job.enter(Phase::Done);
                        job.begin_ending(JobState::Succeeded, Failure::other(""));
                        return false;
                    }
                    let intent = job::row(job.kind, next).map_or("", |r| r.effect);
                    let id = job.id();
                    let committed = try_transaction(|| {
                        if let Some(change) = change {
                            change()?;
                        }
                        job_table::set_phase(id, next, intent)
                    });
                    if let Err(e) = committed {
                        job.begin_ending(JobState::Failed, Failure::other(format!("{e} (in phase {})", job.phase)));
                        return false;
                    }
                    log!("gp_recovery: job {id} (dbid {}): {} done, now {next}", job.dbid(), job.phase);
                    job.enter(next);
                    self.fault(&self.jobs[i], false);
                }
            }
        }
    }

    /// An auto job's attempt was backed out: the attempt is recorded and
    /// the next mode starts from the first phase, in the same transaction;
    /// true when the job ended instead.
    fn retry(&mut self, i: usize, attempt: Attempt) -> bool {
        let mut rec = self.jobs[i].rec.clone();
        let id = rec.job_id;
        rec.attempts.push(attempt.clone());
        rec.phase = job::FIRST.as_str().into();
        let next = match rec.kind() {
            Ok(k) => k,
            Err(e) => {
                self.end(id, JobState::Failed, Some(Failure::other(format!("{}; {e}", attempt.reason))));
                return true;
            }
        };
        let intent = job::row(next, job::FIRST).map_or("", |r| r.effect);
        if let Err(e) = job_table::add_attempt(id, &attempt, job::FIRST, intent) {
            let message = format!("{}; could not record it to try {next}: {e}", attempt.reason);
            self.end(id, JobState::Failed, Some(Failure::other(message)));
            return true;
        }
        match Job::new(rec) {
            Ok(job) => {
                warning!(
                    "gp_recovery: job {id} (dbid {}): {} recovery abandoned in phase {}: {}; trying {next} recovery",
                    job.dbid(),
                    attempt.mode,
                    attempt.phase,
                    attempt.reason
                );
                self.jobs[i] = job;
                self.fault(&self.jobs[i], false);
                false
            }
            Err(e) => {
                self.end(id, JobState::Failed, Some(Failure::other(e)));
                true
            }
        }
    }

    /// One pass over the running jobs.
    fn tick(&mut self) {
        self.unrecorded.retain(|(id, state, failure)| job_table::record_end(*id, *state, failure.as_ref()).is_err());
        if !self.jobs.is_empty() {
            match job_table::cancel_requests() {
                Ok(cancels) => {
                    for job in self.jobs.iter_mut().filter(|j| j.ending.is_none() && cancels.contains(&j.id())) {
                        let message = format!("canceled in phase {}", job.phase);
                        job.begin_ending(JobState::Canceled, Failure::other(message));
                    }
                }
                Err(e) => warning!("gp_recovery: could not read cancel requests: {e}"),
            }
        }
        let mut i = 0;
        while i < self.jobs.len() {
            if self.advance(i) {
                self.jobs.remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Writes the progress of every running job, twice a second.
    fn flush_progress(&mut self) {
        if self.jobs.is_empty() || self.last_flush.elapsed() < Duration::from_millis(500) {
            return;
        }
        self.last_flush = Instant::now();
        let rows: Vec<ProgressRow> = self
            .jobs
            .iter()
            .map(|j| ProgressRow {
                job_id: j.id(),
                done: j.progress.map(|p| p.done_bytes),
                total: j.progress.and_then(|p| p.total_bytes),
                wal_remaining: j.wal_remaining,
                logfile: j.logfile.as_ref().map(|l| l.to_string_lossy().into_owned()),
            })
            .collect();
        if let Err(e) = job_table::record_progress(&rows) {
            warning!("gp_recovery: could not record progress: {e}");
        }
    }

    /// Removes ended jobs older than gp_recovery.job_retention, and their
    /// log files, at most once a minute.
    fn remove_old_jobs(&mut self) {
        let now = Instant::now();
        if !job::retention_sweep_due(self.last_retention_sweep, now) {
            return;
        }
        self.last_retention_sweep = Some(now);
        let history_age = job::retention(gucs::HISTORY_RETENTION.get());
        match try_transaction(|| Ok(catalog::remove_old_history(history_age))) {
            Ok(0) => {}
            Ok(n) => log!(
                "gp_recovery: removed {n} gp_configuration_history row(s) older than gp_recovery.history_retention"
            ),
            Err(e) => warning!("gp_recovery: could not remove old history: {e}"),
        }
        let Some(age) = job::retention(gucs::JOB_RETENTION.get()) else { return };
        match job_table::remove_ended(age) {
            Ok(ids) if ids.is_empty() => {}
            Ok(ids) => {
                let files = supervise::remove_job_logs(&ids.iter().copied().collect());
                log!(
                    "gp_recovery: removed {} ended job(s) older than gp_recovery.job_retention ({} s) and {files} of their log files",
                    ids.len(),
                    age.as_secs()
                );
            }
            Err(e) => warning!("gp_recovery: could not remove old jobs: {e}"),
        }
    }

    fn run(&mut self) {
        while !self.stopping {
            if crate::fts::superseded() {
                warning!("gp_recovery recovery worker: another coordinator was activated (a higher coordinator epoch); no job takes a step here any more");
                for job in &mut self.jobs {
                    job.abandon();
                }
                // Restarting would only say it again: wait for the shutdown.
                while BackgroundWorker::wait_latch(Some(Duration::from_secs(1))) {}
                break;
            }
            if BackgroundWorker::sighup_received() {
                // SAFETY: on the worker's main thread, outside a transaction.
                unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
                self.read_settings();
            }
            self.healing.round();
            self.claim();
            self.tick();
            supervise::reap();
            self.flush_progress();
            self.remove_old_jobs();
            // A step that ends (SIGCHLD) or a call that returns sets the
            // latch, so it is followed at once; else running jobs are
            // polled 20 times a second. Probes of sources keep their own pace.
            let nap = if self.jobs.is_empty() && !supervise::reaping() { 1000 } else { 50 };
            if !BackgroundWorker::wait_latch(Some(Duration::from_millis(nap))) {
                self.stopping = true;
            }
        }
        // Shutting down: running jobs are backed out at the next start.
        for job in &mut self.jobs {
            job.abandon();
        }
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn gp_recovery_jobs_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some(&gucs::database()), None);
    // Nothing below may run on a standby: SPI writes need a transaction id.
    if !crate::standby::wait_while_in_recovery("recovery worker") {
        // SAFETY: ends this worker; restarted after its restart time unless shutting down.
        unsafe { pg_sys::proc_exit(1) };
    }
    crate::latch::wake_on_child_exit();
    // SAFETY: MyProcPid is set for every backend before this runs.
    JOBS_WORKER_PID.get().store(unsafe { pg_sys::MyProcPid }, Ordering::SeqCst);
    let mut worker = Worker {
        jobs: Vec::new(),
        healing: SelfHealing::new(),
        unrecorded: Vec::new(),
        last_flush: Instant::now(),
        last_retention_sweep: None,
        stopping: false,
        fault: None,
    };
    worker.read_settings();
    // No statement of the worker waits long for a lock: a submitter holding
    // its transaction open, or a DBA's lock, fails one write, not the loop.
    if let Err(e) = try_transaction(|| {
        catalog::set_worker_session();
        Spi::run("SET lock_timeout = '2s'").map_err(|e| e.to_string())?;
        Spi::run("SET statement_timeout = '30s'").map_err(|e| e.to_string())
    }) {
        warning!("gp_recovery: could not set the worker's search path and timeouts: {e}");
    }
    while !BackgroundWorker::transaction(catalog::extension_exists) {
        if !BackgroundWorker::wait_latch(Some(Duration::from_secs(1))) {
            worker.stopping = true;
            break;
        }
    }
    // A coordinator that was replaced must not back out or resume a job:
    // the fault tolerance service's first round tells.
    while !worker.stopping && !crate::fts::a_round_finished() && !crate::fts::superseded() {
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(100))) {
            worker.stopping = true;
        }
    }
    if !worker.stopping {
        // A replaced coordinator reconciles nothing; run() says why and waits.
        if !crate::fts::superseded() {
            worker.reconcile();
            log!("gp_recovery recovery worker started");
        }
        worker.run();
    }
    JOBS_WORKER_PID.get().store(0, Ordering::SeqCst);
    // Exit code 1: restarted after its restart time unless shutting down.
    unsafe { pg_sys::proc_exit(1) };
}
