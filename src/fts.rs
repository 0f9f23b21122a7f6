//! The fault tolerance service: a background worker on the coordinator that
//! probes every primary/mirror pair, decides with the rule table of
//! `gp_recovery_core::fts`, and carries the decision out.
//!
//! Each content is probed by its own task, so a hung segment (a postmaster
//! under SIGSTOP) delays only its own content: a round starts every
//! `gp_recovery.fts_probe_interval` for every content not still busy with an
//! earlier probe. Decisions are written on the worker's main thread in short
//! transactions, never while a probe or a segment operation is waiting.
//!
//! Between rounds the worker holds one idle connection to every acting
//! primary (a watch). A dead primary's backends end it at once, so its
//! content is probed then, with attempts 100 ms apart, instead of at the
//! next round: a killed primary fails over in well under a second. A
//! primary that is slow, hung or cut off keeps its watch open and is failed
//! over by the rounds' timeouts and retries as before.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gp_recovery_core::coordinator;
use gp_recovery_core::fts::{self, Observation, Plan, PrimaryHealth, SegmentOp};
use gp_recovery_core::fts_tracker::{Members, OpResult, ProbeOrder, Probed, RoundDone, Tracker, TrackerSettings};
use gp_recovery_core::identity::Member;
use gp_recovery_core::segment::{Pair, Segment};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic, PgLwLock, PgSqlErrorCode};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinSet;

use crate::segment_client::{block_on, runtime, Target};
use crate::{catalog, gucs, latch};

/// Rounds started and the highest round whose probes have all finished, so
/// gp_request_fts_probe_scan() can wait for a round that began after it.
static ROUNDS_STARTED: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"gp_recovery_fts_rounds_started") };
static ROUNDS_FINISHED: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"gp_recovery_fts_rounds_finished") };
static ROUND_REQUESTED: PgAtomic<AtomicBool> = unsafe { PgAtomic::new(c"gp_recovery_fts_round_requested") };
static WORKER_PID: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"gp_recovery_fts_worker_pid") };
/// For monitoring (gp_fts_stats): how long the last finished round took,
/// and probes that found a member not answering, since the server started.
static LAST_ROUND_MICROS: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"gp_recovery_fts_last_round_micros") };
/// Set once a probe found a coordinator epoch above this coordinator's:
/// another coordinator was activated, and neither worker acts any more.
static SUPERSEDED: PgAtomic<AtomicBool> = unsafe { PgAtomic::new(c"gp_recovery_fts_superseded") };
static PROBE_ERRORS: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"gp_recovery_fts_probe_errors") };

/// The stream to each content's mirror as the last probe of its primary
/// saw it, for monitoring that must never wait on a segment.
#[derive(Clone, Copy, Default)]
struct StreamSeen {
    content: i16,
    mirror: i16,
    /// What the mirror has still to replay; -1 when there is no stream.
    bytes_behind: i64,
    seen_at: pg_sys::TimestampTz,
}

/// Contents the snapshot holds at most.
const MAX_STREAMS: usize = 2048;

#[derive(Clone, Copy)]
struct StreamsSeen {
    len: usize,
    streams: [StreamSeen; MAX_STREAMS],
}

impl Default for StreamsSeen {
    fn default() -> Self {
        StreamsSeen { len: 0, streams: [StreamSeen::default(); MAX_STREAMS] }
    }
}

// SAFETY: plain data, no pointers.
unsafe impl pgrx::PGRXSharedMemory for StreamsSeen {}

static STREAMS: PgLwLock<StreamsSeen> = unsafe { PgLwLock::new(c"gp_recovery_fts_streams") };

/// Records what a probe of a content's primary saw of its mirror's stream.
fn record_stream(content: i16, mirror: i16, bytes_behind: Option<i64>) {
    // SAFETY: reads the clock; no Postgres state.
    let seen_at = unsafe { pg_sys::GetCurrentTimestamp() };
    let seen = StreamSeen { content, mirror, bytes_behind: bytes_behind.unwrap_or(-1), seen_at };
    let mut table = STREAMS.exclusive();
    let len = table.len;
    match table.streams[..len].iter().position(|s| s.content == content) {
        Some(i) => table.streams[i] = seen,
        None if len < MAX_STREAMS => {
            table.streams[len] = seen;
            table.len = len + 1;
        }
        None => {}
    }
}

/// The stream to each mirror as the fault tolerance service last saw it
/// (from shared memory: this connects to no segment).
#[pg_extern]
fn gp_fts_replication() -> TableIterator<
    'static,
    (
        name!(content, i16),
        name!(dbid, i16),
        name!(bytes_behind, Option<i64>),
        name!(observed_at, Option<pgrx::datum::TimestampWithTimeZone>),
    ),
> {
    if !crate::preloaded() {
        return TableIterator::new(Vec::new());
    }
    let table = STREAMS.share();
    let rows: Vec<_> = table.streams[..table.len]
        .iter()
        .map(|s| {
            let behind = (s.bytes_behind >= 0).then_some(s.bytes_behind);
            (s.content, s.mirror, behind, pgrx::datum::TimestampWithTimeZone::try_from(s.seen_at).ok())
        })
        .collect();
    TableIterator::new(rows)
}

/// Shared memory and the worker; only while loading via shared_preload_libraries.
pub fn init() {
    pg_shmem_init!(ROUNDS_STARTED);
    pg_shmem_init!(ROUNDS_FINISHED);
    pg_shmem_init!(ROUND_REQUESTED);
    pg_shmem_init!(WORKER_PID);
    pg_shmem_init!(LAST_ROUND_MICROS);
    pg_shmem_init!(PROBE_ERRORS);
    pg_shmem_init!(SUPERSEDED);
    pg_shmem_init!(STREAMS);
    BackgroundWorkerBuilder::new("gp_recovery fts")
        .set_type("gp_recovery fts")
        .set_library("gp_recovery")
        .set_function("gp_recovery_fts_main")
        .enable_spi_access()
        // Also on a hot standby, where it waits and says so (src/standby.rs).
        .set_start_time(BgWorkerStartTime::ConsistentState)
        // Restarted 5 s after it exits for any reason other than shutdown.
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// Whether the service has seen this coordinator replaced (a higher
/// coordinator epoch), and whether it has finished a round since the
/// server started, so that the jobs worker acts only once it is known not
/// to be.
pub fn superseded() -> bool {
    SUPERSEDED.get().load(Ordering::SeqCst)
}

pub fn a_round_finished() -> bool {
    ROUNDS_FINISHED.get().load(Ordering::SeqCst) > 0
}

/// Asks for a probe round without waiting for it (used by recovery jobs).
pub fn request_round() {
    ROUND_REQUESTED.get().store(true, Ordering::SeqCst);
    latch::wake(WORKER_PID.get().load(Ordering::SeqCst));
}

/// The fault tolerance service's counters since the server started: rounds
/// started and finished, the last finished round's duration, and probes
/// that found a member not answering.
#[pg_extern]
fn gp_fts_stats() -> TableIterator<
    'static,
    (
        name!(rounds_started, i64),
        name!(rounds_finished, i64),
        name!(last_round_seconds, Option<f64>),
        name!(probe_errors, i64),
    ),
> {
    if !crate::preloaded() {
        return TableIterator::new(Vec::new());
    }
    let count = |a: &PgAtomic<AtomicU64>| i64::try_from(a.get().load(Ordering::SeqCst)).unwrap_or(i64::MAX);
    let micros = LAST_ROUND_MICROS.get().load(Ordering::SeqCst);
    let last = (micros > 0).then(|| micros as f64 / 1e6);
    TableIterator::new(vec![(count(&ROUNDS_STARTED), count(&ROUNDS_FINISHED), last, count(&PROBE_ERRORS))])
}

/// Starts a probe round now and returns when a round that began after the
/// call has finished; callers arriving together share one round.
#[pg_extern]
fn gp_request_fts_probe_scan() -> bool {
    if !crate::preloaded() {
        pgrx::ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "the fault tolerance service is not running: gp_recovery must be in shared_preload_libraries"
        );
    }
    let target = ROUNDS_STARTED.get().load(Ordering::SeqCst) + 1;
    ROUND_REQUESTED.get().store(true, Ordering::SeqCst);
    let mut without_worker = Duration::ZERO;
    let mut woken = 0;
    while ROUNDS_FINISHED.get().load(Ordering::SeqCst) < target {
        let pid = WORKER_PID.get().load(Ordering::SeqCst);
        if pid > 0 && woken != pid {
            latch::wake(pid);
            woken = pid;
        }
        if pid == 0 {
            without_worker += Duration::from_millis(50);
            if without_worker > Duration::from_secs(30) {
                pgrx::ereport!(
                    ERROR,
                    PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    "the fault tolerance service is not running: no gp_recovery fts worker for 30 s, see the server log"
                );
            }
        }
        latch::nap(50);
    }
    true
}

/// The fault tolerance service's rule table, in the order rules are tried.
#[pg_extern]
fn gp_fts_rules(
) -> TableIterator<'static, (name!(position, i32), name!(rule, String), name!(action, String), name!(reason, String))> {
    TableIterator::new(
        fts::RULES
            .iter()
            .zip(1..)
            .map(|(r, i)| (i, r.name.to_string(), format!("{:?}", r.action), r.reason.to_string())),
    )
}

/// A lost watch: (content, dbid).
type Lost = (i16, i16);

/// The long-lived connection to a content's acting primary; ended when dropped.
struct Watch {
    dbid: i16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Which of a plan's segment operations a task ran.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    BeforeCatalog,
    AfterCatalog,
}

/// What a task of the worker's runtime brings back.
enum Done {
    Probed(Box<Probed>),
    /// A plan's operations of one stage, in order, up to the first that
    /// failed, each with what it did for the log.
    Ops {
        content: i16,
        stage: Stage,
        results: Vec<(String, OpResult)>,
    },
}

/// A plan being carried out: its operations run as tasks, its catalog
/// write on the main thread between them.
struct Carry {
    observation: Observation,
    plan: Plan,
    before: Vec<OpResult>,
}

enum Event {
    Done(Done),
    /// The watch on this content's primary (content, dbid) was lost.
    PrimaryLost(i16, i16),
    Wake,
    Reload,
    Stop,
}

fn settings() -> TrackerSettings {
    let secs = |v: i32| Duration::from_secs(u64::try_from(v).unwrap_or(1));
    TrackerSettings::new(
        secs(gucs::FTS_PROBE_INTERVAL.get()),
        secs(gucs::FTS_PROBE_TIMEOUT.get()),
        u32::try_from(gucs::FTS_PROBE_RETRIES.get()).unwrap_or(0),
        secs(gucs::MIRROR_DOWN_GRACE_PERIOD.get()),
    )
}

struct Fts {
    tracker: Tracker,
    tasks: JoinSet<Done>,
    carrying: HashMap<i16, Carry>,
    stopping: bool,
    watches: HashMap<i16, Watch>,
    /// (content, dbid) of each watch that was lost.
    lost: (UnboundedSender<Lost>, UnboundedReceiver<Lost>),
    /// This coordinator's epoch (crate::standby::record_activation).
    epoch: i64,
}

impl Fts {
    fn new() -> Fts {
        Fts {
            tracker: Tracker::new(Instant::now(), []),
            tasks: JoinSet::new(),
            carrying: HashMap::new(),
            stopping: false,
            watches: HashMap::new(),
            lost: unbounded_channel(),
            epoch: 0,
        }
    }

    fn run(&mut self) {
        while !BackgroundWorker::transaction(catalog::extension_exists) {
            if !BackgroundWorker::wait_latch(Some(Duration::from_secs(1))) {
                return;
            }
            self.reload_config_if_asked();
        }
        self.epoch = crate::standby::record_activation();
        let double_faults = BackgroundWorker::transaction(catalog::contents_in_double_fault);
        self.tracker = Tracker::new(Instant::now(), double_faults);
        let s = settings();
        log!(
            "gp_recovery fault tolerance service started: probe interval {} s, timeout {} s, retries {}, mirror down grace period {} s",
            s.interval.as_secs(),
            s.timeout.as_secs(),
            s.retries,
            s.rules.mirror_down_grace_period.as_secs()
        );
        while !self.stopping {
            self.reload_config_if_asked();
            let now = Instant::now();
            let s = settings();
            if self.tracker.round_due(now, ROUND_REQUESTED.get().swap(false, Ordering::SeqCst)) {
                let round = ROUNDS_STARTED.get().fetch_add(1, Ordering::SeqCst) + 1;
                self.tracker.start_round(now, round, &s);
            }
            if self.tracker.wants_probes(now) {
                self.spawn_due(now, &s);
            }
            match self.next_event() {
                Event::Done(Done::Probed(p)) => self.probed(*p),
                Event::Done(Done::Ops { content, stage, results }) => self.ops_done(content, stage, results),
                Event::PrimaryLost(content, dbid) => self.primary_lost(content, dbid),
                Event::Wake => {}
                Event::Reload => self.reload_config(),
                Event::Stop => self.stopping = true,
            }
        }
    }

    fn reload_config_if_asked(&mut self) {
        if BackgroundWorker::sighup_received() {
            self.reload_config();
        }
    }

    fn reload_config(&mut self) {
        // SAFETY: called on the worker's main thread outside a transaction.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        self.tracker.reload(Instant::now(), &settings());
    }

    /// Starts the probes a new round or a follow-up wants, and keeps the
    /// watches as the tracker says.
    fn spawn_due(&mut self, now: Instant, s: &TrackerSettings) {
        let (catalog, held, identities) = BackgroundWorker::transaction(|| {
            (catalog::load(), catalog::contents_on_fts_hold(), catalog::system_identifiers())
        });
        let pairs: Vec<Members> = Pair::watched(&catalog)
            .into_iter()
            .map(|p| Members {
                primary: p.primary.clone(),
                mirror: p.mirror.clone(),
                system_identifier: identities.get(&p.mirror.dbid).or_else(|| identities.get(&p.primary.dbid)).cloned(),
            })
            .collect();
        let held: HashSet<i16> = held.into_iter().collect();
        let due = self.tracker.due(now, pairs, &held, s);
        for content in &due.unwatch {
            self.watches.remove(content);
        }
        for primary in &due.watch {
            self.keep_watching(primary, s.timeout);
        }
        for order in due.orders {
            self.tasks.spawn_on(probe(order, s.timeout), runtime().handle());
        }
        if let Some(r) = due.round_done {
            round_done(r);
        }
        self.watches.retain(|c, _| due.contents.contains(c));
    }

    /// Opens a watch on the content's acting primary unless one is open:
    /// once a round, so a primary that is down costs one attempt a round.
    fn keep_watching(&mut self, primary: &Segment, timeout: Duration) {
        let content = primary.content;
        if self.watches.get(&content).is_some_and(|w| w.dbid == primary.dbid && !w.task.is_finished()) {
            return;
        }
        let (target, dbid, lost) = (Target::new(primary, timeout), primary.dbid, self.lost.0.clone());
        let task = runtime().spawn(async move {
            if target.watch().await {
                let _ = lost.send((content, dbid));
            }
        });
        self.watches.insert(content, Watch { dbid, task });
    }

    /// A watch was lost: its primary is probed now, with fast attempts,
    /// if it is still the content's acting primary.
    fn primary_lost(&mut self, content: i16, dbid: i16) {
        if self.watches.get(&content).is_none_or(|w| w.dbid != dbid) {
            return;
        }
        log!("FTS: content {content}: the connection to primary dbid {dbid} was lost; probing it now");
        self.tracker.primary_lost(Instant::now(), content);
    }

    /// Waits for a finished task, the next round or follow-up, a round
    /// request, SIGTERM or postmaster death.
    fn next_event(&mut self) -> Event {
        let wake_at = self.tracker.wake_at();
        let tasks = &mut self.tasks;
        let lost = &mut self.lost.1;
        block_on(async move {
            // The runtime runs its tasks (probes, segment operations) only
            // while this future waits: it yields once, so that something
            // already due can never starve the tasks in flight.
            tokio::task::yield_now().await;
            let deadline = tokio::time::Instant::from_std(wake_at);
            let done = async {
                loop {
                    match tasks.join_next().await {
                        Some(Ok(d)) => return d,
                        // A task only fails by panicking, which none does;
                        // its content is probed again next round.
                        Some(Err(_)) => {}
                        None => std::future::pending::<()>().await,
                    }
                }
            };
            let flags = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    // SAFETY: reads the postmaster's pid, set before fork.
                    let orphaned = unsafe { libc::getppid() != pg_sys::PostmasterPid };
                    if BackgroundWorker::sigterm_received() || orphaned {
                        return Event::Stop;
                    }
                    // New settings apply at once, not after the next round.
                    if BackgroundWorker::sighup_received() {
                        return Event::Reload;
                    }
                    if ROUND_REQUESTED.get().load(Ordering::SeqCst) {
                        return Event::Wake;
                    }
                }
            };
            tokio::select! {
                d = done => Event::Done(d),
                Some((content, dbid)) = lost.recv() => Event::PrimaryLost(content, dbid),
                e = flags => e,
                _ = tokio::time::sleep_until(deadline) => Event::Wake,
            }
        })
    }

    /// Decides for one probed content and starts carrying the plan out.
    fn probed(&mut self, p: Probed) {
        let content = p.members.primary.content;
        if let PrimaryHealth::Alive(_) = &p.primary_health {
            let stream = fts::mirror_stream(&p.primary_health);
            record_stream(content, p.members.mirror.dbid, stream.and_then(|r| r.bytes_behind));
        }
        self.mind_epochs(&p);
        let d = self.tracker.probed(Instant::now(), p, &settings());
        if d.probe_errors > 0 {
            PROBE_ERRORS.get().fetch_add(d.probe_errors, Ordering::SeqCst);
        }
        if let Some(r) = d.round_done {
            round_done(r);
        }
        if superseded() {
            return;
        }
        let (o, plan) = (d.observation, d.plan);
        if plan.warning {
            pgrx::warning!("{}", plan.log_line(&o));
        } else if plan.changes_anything() {
            log!("{}", plan.log_line(&o));
        } else {
            pgrx::debug1!("{}", plan.log_line(&o));
        }
        if plan.changes_anything() {
            let ops = plan.before_catalog.clone();
            self.carrying.insert(content, Carry { observation: o, plan, before: Vec::new() });
            if ops.is_empty() {
                self.write_catalog(content);
            } else {
                self.spawn_ops(content, Stage::BeforeCatalog, ops);
            }
        }
    }

    /// A probe that found a higher coordinator epoch ends this service's
    /// decisions; a writable primary with a lower one gets this
    /// coordinator's (it keeps the highest it has seen).
    fn mind_epochs(&mut self, p: &Probed) {
        let primary = match &p.primary_health {
            PrimaryHealth::Alive(probe) => Some((p.members.primary.dbid, probe)),
            _ => None,
        };
        let mirror = p.mirror_probe.as_ref().ok().map(|probe| (p.members.mirror.dbid, probe));
        let seen = primary.iter().chain(mirror.iter()).map(|(dbid, probe)| (*dbid, probe.coordinator_epoch));
        if let Some((dbid, epoch)) = coordinator::superseded_by(self.epoch, seen) {
            if !SUPERSEDED.get().swap(true, Ordering::SeqCst) {
                pgrx::warning!(
                    "gp_recovery: dbid {dbid} has seen coordinator epoch {epoch}, above this coordinator's {}: another \
                     coordinator was activated (gp_activate_standby); this one promotes, marks and recovers nothing from now on",
                    self.epoch
                );
            }
            return;
        }
        if let Some((dbid, probe)) =
            primary.filter(|(_, probe)| !probe.in_recovery && probe.coordinator_epoch < self.epoch)
        {
            log!(
                "gp_recovery: raising the coordinator epoch of dbid {dbid} from {} to {}",
                probe.coordinator_epoch,
                self.epoch
            );
            let (t, epoch) = (Target::new(&p.members.primary, settings().timeout), self.epoch);
            // Checked again by the next probe: a failure needs no answer here.
            runtime().spawn(async move { t.raise_epoch(epoch).await });
        }
    }

    fn spawn_ops(&mut self, content: i16, stage: Stage, ops: Vec<SegmentOp>) {
        let Some(carry) = self.carrying.get(&content) else { return };
        let sysid = carry.observation.system_identifier.clone();
        let timeout = settings().timeout;
        self.tasks.spawn_on(
            async move { Done::Ops { content, stage, results: run_ops(ops, timeout, sysid).await } },
            runtime().handle(),
        );
    }

    /// A stage of a plan's operations ended.
    fn ops_done(&mut self, content: i16, stage: Stage, results: Vec<(String, OpResult)>) {
        for (what, result) in &results {
            match result {
                OpResult::Failed(e) => pgrx::warning!("FTS: content {content}: could not {what}: {e}; will retry"),
                _ => log!("FTS: content {content}: did {what}"),
            }
        }
        let results: Vec<OpResult> = results.into_iter().map(|(_, r)| r).collect();
        let now = Instant::now();
        match stage {
            Stage::BeforeCatalog if !results.iter().all(OpResult::ok) => {
                self.carrying.remove(&content);
                self.tracker.carry_failed(now, content, &results);
            }
            Stage::BeforeCatalog => {
                if let Some(carry) = self.carrying.get_mut(&content) {
                    carry.before = results;
                }
                self.write_catalog(content);
            }
            Stage::AfterCatalog => {
                if let Some(carry) = self.carrying.remove(&content) {
                    self.tracker.carried_out(now, &carry.observation, &carry.plan, &carry.before, &results);
                }
            }
        }
    }

    /// The plan's catalog rows, history and events in one transaction, then
    /// its operations after the catalog.
    fn write_catalog(&mut self, content: i16) {
        let Some(carry) = self.carrying.get(&content) else { return };
        let (o, plan) = (&carry.observation, &carry.plan);
        if !plan.catalog.is_empty() || !plan.history.is_empty() {
            let dbids = [o.primary.dbid, o.mirror.dbid];
            let mut expected = vec![o.primary.clone(), o.mirror.clone()];
            expected.sort_by_key(|s| s.dbid);
            let written = BackgroundWorker::transaction(|| {
                // Decided on what the probe round saw: if a recovery or a DBA
                // changed these rows meanwhile, decide again instead.
                if catalog::lock_rows(&dbids) != expected {
                    return false;
                }
                catalog::update_rows(&plan.catalog);
                plan.history.iter().for_each(catalog::history);
                match plan.rule.action {
                    fts::Action::FailOver => catalog::record_failover(content, o.mirror.dbid),
                    fts::Action::RecordDoubleFault => catalog::set_double_fault(content, true),
                    fts::Action::ClearDoubleFault => catalog::set_double_fault(content, false),
                    _ => {}
                }
                true
            });
            if !written {
                log!("FTS: content {content}: the catalog changed while it was probed; deciding again");
                let before = carry.before.clone();
                self.carrying.remove(&content);
                self.tracker.carry_failed(Instant::now(), content, &before);
                return;
            }
            self.tracker.catalog_written(content, plan.rule.action);
        }
        let after = plan.after_catalog.clone();
        if after.is_empty() {
            self.ops_done(content, Stage::AfterCatalog, Vec::new());
        } else {
            self.spawn_ops(content, Stage::AfterCatalog, after);
        }
    }
}

/// A round whose probes all ended: waiters see it, monitoring its duration.
fn round_done(r: RoundDone) {
    ROUNDS_FINISHED.get().fetch_max(r.round, Ordering::SeqCst);
    if let Some(took) = r.took {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        LAST_ROUND_MICROS.get().store(micros.max(1), Ordering::SeqCst);
    }
}

/// One content's probe, as the tracker ordered it.
async fn probe(order: ProbeOrder, timeout: Duration) -> Done {
    let (pt, mt) = (Target::new(&order.members.primary, timeout), Target::new(&order.members.mirror, timeout));
    let mut mirror_task = tokio::spawn(async move { mt.probe().await });
    let primary_health = pt.probe_primary(order.retries, order.pause).await;
    let answered = Instant::now();
    // A primary that answers tells about its mirror's stream; a mirror that
    // did not answer last time must not hold that back for its whole
    // timeout again. A failed primary's mirror gets all of it: it may be
    // promoted.
    let wait = match primary_health {
        PrimaryHealth::Alive(_) => order.mirror_wait,
        _ => timeout,
    };
    let mirror_probe = match tokio::time::timeout(wait, &mut mirror_task).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => Err(format!("the probe ended abnormally: {e}")),
        Err(_) => {
            mirror_task.abort();
            Err(format!("no answer within {} ms of its primary's", wait.as_millis()))
        }
    };
    Done::Probed(Box::new(Probed {
        round: order.round,
        members: order.members,
        primary_health,
        mirror_probe,
        answered,
    }))
}

/// A plan's segment operations, one after the other, up to the first that
/// fails; a promotion or a fence only of the pair's own server
/// (`system_identifier`, and for a fence the row's directory).
async fn run_ops(ops: Vec<SegmentOp>, timeout: Duration, system_identifier: Option<String>) -> Vec<(String, OpResult)> {
    let sysid = system_identifier.as_deref();
    let mut results = Vec::new();
    for op in &ops {
        let s = op.segment();
        let t = Target::new(s, timeout);
        let done = |r: Result<(), String>| r.map_or_else(OpResult::Failed, |()| OpResult::Done);
        let (what, result) = match op {
            SegmentOp::EnableSyncRep(_) => (
                format!("turn synchronous replication on at dbid {}", s.dbid),
                t.enable_sync_rep().await.map_or_else(OpResult::Failed, OpResult::SyncFrom),
            ),
            SegmentOp::DisableSyncRep(_) => {
                (format!("turn synchronous replication off at dbid {}", s.dbid), done(t.disable_sync_rep().await))
            }
            SegmentOp::Promote(_) => {
                (format!("promote dbid {} at {}", s.dbid, s.location()), done(t.promote(sysid).await))
            }
            SegmentOp::CreateSlot(_) => {
                (format!("create the replication slot on dbid {}", s.dbid), done(t.create_slot().await))
            }
            SegmentOp::Fence(_) => {
                let member = Member { system_identifier: sysid.unwrap_or_default(), datadir: &s.datadir };
                (
                    format!("stop dbid {} at {} (immediate shutdown, fencing)", s.dbid, s.location()),
                    done(t.fence(&member).await),
                )
            }
        };
        let failed = !result.ok();
        results.push((what, result));
        if failed {
            break;
        }
    }
    results
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn gp_recovery_fts_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = gucs::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    // Nothing below may run on a standby: SPI writes need a transaction id.
    if !crate::standby::wait_while_in_recovery("fault tolerance service") {
        // SAFETY: ends this worker; restarted after its restart time unless shutting down.
        unsafe { pg_sys::proc_exit(1) };
    }
    // SAFETY: MyProcPid is set for every backend before this runs.
    WORKER_PID.get().store(unsafe { pg_sys::MyProcPid }, Ordering::SeqCst);
    BackgroundWorker::transaction(catalog::set_worker_session);
    Fts::new().run();
    WORKER_PID.get().store(0, Ordering::SeqCst);
    log!("gp_recovery fault tolerance service stopped");
    // Exit code 1: the postmaster starts the worker again after its restart
    // time unless the server is shutting down.
    unsafe { pg_sys::proc_exit(1) };
}
