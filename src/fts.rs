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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gp_recovery_core::fts::{self, Observation, Plan, PrimaryHealth, SegmentOp, Settings};
use gp_recovery_core::identity::Member;
use gp_recovery_core::probe::ProbeResult;
use gp_recovery_core::segment::{Pair, Segment};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
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
    pg_shmem_init!(STREAMS);
    BackgroundWorkerBuilder::new("gp_recovery fts")
        .set_type("gp_recovery fts")
        .set_library("gp_recovery")
        .set_function("gp_recovery_fts_main")
        .enable_spi_access()
        // Restarted 5 s after it exits for any reason other than shutdown.
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
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

/// The worker's memory of one content, reset when its primary changes.
#[derive(Default)]
struct Memory {
    primary_dbid: i16,
    mirror_gone_since: Option<Instant>,
    starting_rounds: u32,
    sync_from_lsn: Option<u64>,
    /// The mirror stream's flush progress, to tell a hung mirror.
    flush_watch: fts::FlushWatch,
    /// Segment operations that failed after a catalog write, with the
    /// content's rows as that write left them: retried while the rows stay
    /// so, also across the primary change a failover makes.
    unfinished: Option<(Vec<Segment>, Vec<SegmentOp>)>,
    /// The down member's fencing is in the history since it last stopped
    /// answering as a writable primary.
    fence_recorded: bool,
    /// The mirror's last probe failed (it timed out, or was refused).
    mirror_silent: bool,
}

/// The pause between attempts of a probe started because a primary's watch
/// connection was lost.
const CONFIRM_PAUSE: Duration = Duration::from_millis(100);
/// Attempts after the first of such a probe, at least: a primary restarted
/// by hand is listening again ("starting up") within this window of 0.4 s
/// and is not failed over.
const CONFIRM_MIN_RETRIES: u32 = 4;

/// How much longer than its answering primary a mirror whose last probe
/// failed may take to answer before it counts as not answering this round.
const MIRROR_AFTER_PRIMARY: Duration = Duration::from_millis(100);

/// How soon a content is probed again when its mirror did not answer while
/// its stream had WAL to flush.
const STALL_LOOK: Duration = Duration::from_millis(250);

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

/// What one content's probe task brings back.
struct Probed {
    round: u64,
    primary: Segment,
    mirror: Segment,
    primary_health: PrimaryHealth,
    mirror_probe: ProbeResult,
    /// When the primary's answer came: the stream it reports is as of then.
    answered: Instant,
    /// The pair's database system identifier, as the catalog records it.
    system_identifier: Option<String>,
}

enum Event {
    Probed(Box<Probed>),
    /// The watch on this content's primary (content, dbid) was lost.
    PrimaryLost(i16, i16),
    Wake,
    Reload,
    Stop,
}

struct WorkerSettings {
    interval: Duration,
    timeout: Duration,
    retries: u32,
    /// Between attempts on a primary: about a second, as in Greenplum, but
    /// all retries fit in one probe interval, so a 1 s interval with 2
    /// retries fails a dead primary over within a couple of seconds.
    retry_pause: Duration,
    rules: Settings,
}

fn settings() -> WorkerSettings {
    let secs = |v: i32| Duration::from_secs(u64::try_from(v).unwrap_or(1));
    let retries = u32::try_from(gucs::FTS_PROBE_RETRIES.get()).unwrap_or(0);
    let interval = secs(gucs::FTS_PROBE_INTERVAL.get());
    WorkerSettings {
        interval,
        timeout: secs(gucs::FTS_PROBE_TIMEOUT.get()),
        retries,
        retry_pause: (interval / (retries + 1)).min(Duration::from_secs(1)),
        rules: Settings {
            mirror_down_grace_period: secs(gucs::MIRROR_DOWN_GRACE_PERIOD.get()),
            max_starting_rounds: retries,
        },
    }
}

struct Fts {
    tasks: JoinSet<Probed>,
    /// content → round of its probe in flight
    in_flight: HashMap<i16, u64>,
    /// round → probes of it still in flight
    outstanding: BTreeMap<u64, usize>,
    round: u64,
    round_to_spawn: bool,
    /// round → when it started, for its duration
    round_started: BTreeMap<u64, Instant>,
    next_round: Instant,
    /// content → when to probe it again outside the rounds
    follow_up: HashMap<i16, Instant>,
    memory: HashMap<i16, Memory>,
    double_faults: HashSet<i16>,
    stopping: bool,
    watches: HashMap<i16, Watch>,
    /// (content, dbid) of each watch that was lost.
    lost: (UnboundedSender<Lost>, UnboundedReceiver<Lost>),
    /// Contents whose next probe confirms a lost watch, with fast attempts.
    confirm: HashSet<i16>,
}

impl Fts {
    fn new() -> Fts {
        Fts {
            tasks: JoinSet::new(),
            in_flight: HashMap::new(),
            outstanding: BTreeMap::new(),
            round: 0,
            round_to_spawn: false,
            round_started: BTreeMap::new(),
            next_round: Instant::now(),
            follow_up: HashMap::new(),
            memory: HashMap::new(),
            double_faults: HashSet::new(),
            stopping: false,
            watches: HashMap::new(),
            lost: unbounded_channel(),
            confirm: HashSet::new(),
        }
    }

    fn run(&mut self) {
        while !BackgroundWorker::transaction(catalog::extension_exists) {
            if !BackgroundWorker::wait_latch(Some(Duration::from_secs(1))) {
                return;
            }
            self.reload_config_if_asked();
        }
        self.double_faults = BackgroundWorker::transaction(catalog::contents_in_double_fault).into_iter().collect();
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
            if ROUND_REQUESTED.get().swap(false, Ordering::SeqCst) || now >= self.next_round {
                self.round = ROUNDS_STARTED.get().fetch_add(1, Ordering::SeqCst) + 1;
                self.round_started.insert(self.round, now);
                self.round_to_spawn = true;
                self.next_round = now + settings().interval;
            }
            self.spawn_due(now);
            match self.next_event() {
                Event::Probed(p) => self.finish(*p),
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
        self.next_round = self.next_round.min(Instant::now() + settings().interval);
    }

    /// Starts probes for the contents a new round or a follow-up wants.
    fn spawn_due(&mut self, now: Instant) {
        let due_follow_ups = self.waiting_follow_ups().any(|t| t <= now);
        if !self.round_to_spawn && !due_follow_ups {
            return;
        }
        let (catalog, held, identities) = BackgroundWorker::transaction(|| {
            (catalog::load(), catalog::contents_on_fts_hold(), catalog::system_identifiers())
        });
        let s = settings();
        for pair in Pair::all(&catalog) {
            let content = pair.primary.content;
            if held.contains(&content) {
                // A rebalance is switching this pair over; it is not a failure.
                self.follow_up.remove(&content);
                self.confirm.remove(&content);
                self.watches.remove(&content);
                continue;
            }
            if self.round_to_spawn {
                self.keep_watching(pair.primary, s.timeout);
            }
            let wanted = self.round_to_spawn || self.follow_up.get(&content).is_some_and(|t| *t <= now);
            if !wanted || self.in_flight.contains_key(&content) {
                continue;
            }
            self.follow_up.remove(&content);
            let (primary, mirror) = (pair.primary.clone(), pair.mirror.clone());
            let system_identifier = identities.get(&mirror.dbid).or_else(|| identities.get(&primary.dbid)).cloned();
            let (pt, mt) = (Target::new(&primary, s.timeout), Target::new(&mirror, s.timeout));
            // Only a mirror whose last probe failed is given less than its
            // timeout; a busy mirror answering within it never counts as silent.
            let mirror_silent = self.memory.get(&content).is_some_and(|m| m.mirror_silent);
            let (retries, pause) = if self.confirm.remove(&content) {
                (s.retries.max(CONFIRM_MIN_RETRIES), CONFIRM_PAUSE)
            } else {
                (s.retries, s.retry_pause)
            };
            let (round, s_timeout) = (self.round, s.timeout);
            self.in_flight.insert(content, round);
            *self.outstanding.entry(round).or_default() += 1;
            let probe = async move {
                let mut mirror_task = tokio::spawn(async move { mt.probe().await });
                let primary_health = pt.probe_primary(retries, pause).await;
                let answered = Instant::now();
                // A primary that answers tells about its mirror's stream;
                // a mirror that did not answer last time must not hold that
                // back for its whole timeout again. A failed primary's
                // mirror gets all of it: it may be promoted.
                let wait = match primary_health {
                    PrimaryHealth::Alive(_) if mirror_silent => MIRROR_AFTER_PRIMARY,
                    _ => s_timeout,
                };
                let mirror_probe = match tokio::time::timeout(wait, &mut mirror_task).await {
                    Ok(Ok(answer)) => answer,
                    Ok(Err(e)) => Err(format!("the probe ended abnormally: {e}")),
                    Err(_) => {
                        mirror_task.abort();
                        Err(format!("no answer within {} ms of its primary's", wait.as_millis()))
                    }
                };
                Probed { round, primary, mirror, primary_health, mirror_probe, answered, system_identifier }
            };
            self.tasks.spawn_on(probe, runtime().handle());
        }
        if self.round_to_spawn && !self.outstanding.contains_key(&self.round) {
            // Nothing to probe (no pairs, or all still busy): the round is done.
            self.round_done(self.round);
        }
        self.round_to_spawn = false;
        // Follow-ups and watches of contents that no longer exist are dropped.
        let contents: HashSet<i16> = catalog.iter().map(|s| s.content).collect();
        self.follow_up.retain(|c, _| contents.contains(c));
        self.watches.retain(|c, _| contents.contains(c));
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
        self.confirm.insert(content);
        self.follow_up.insert(content, Instant::now());
    }

    /// When the follow-ups of contents not being probed now are due; one of
    /// a content in flight waits until its probe ends.
    fn waiting_follow_ups(&self) -> impl Iterator<Item = Instant> + '_ {
        self.follow_up.iter().filter(|(c, _)| !self.in_flight.contains_key(c)).map(|(_, t)| *t)
    }

    /// Waits for a finished probe, the next round or follow-up, a round
    /// request, SIGTERM or postmaster death.
    fn next_event(&mut self) -> Event {
        let wake_at = self.waiting_follow_ups().chain([self.next_round]).min().unwrap_or(self.next_round);
        let tasks = &mut self.tasks;
        let lost = &mut self.lost.1;
        block_on(async move {
            // The runtime runs its tasks (the probes) only while this
            // future waits: it yields once, so that something already due
            // can never starve the probes in flight.
            tokio::task::yield_now().await;
            let deadline = tokio::time::Instant::from_std(wake_at);
            let probed = async {
                loop {
                    match tasks.join_next().await {
                        Some(Ok(p)) => return p,
                        // A task only fails by panicking, which a probe never does;
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
                p = probed => Event::Probed(Box::new(p)),
                Some((content, dbid)) = lost.recv() => Event::PrimaryLost(content, dbid),
                e = flags => e,
                _ = tokio::time::sleep_until(deadline) => Event::Wake,
            }
        })
    }

    /// A round whose probes all ended: waiters see it, monitoring its duration.
    fn round_done(&mut self, round: u64) {
        ROUNDS_FINISHED.get().fetch_max(round, Ordering::SeqCst);
        if let Some(started) = self.round_started.remove(&round) {
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            LAST_ROUND_MICROS.get().store(micros.max(1), Ordering::SeqCst);
        }
        // Rounds that never finish (their probes superseded) are forgotten.
        self.round_started.retain(|r, _| *r > round);
    }

    /// Decides for one probed content and carries the plan out.
    fn finish(&mut self, p: Probed) {
        let content = p.primary.content;
        self.in_flight.remove(&content);
        if let Some(left) = self.outstanding.get_mut(&p.round) {
            *left -= 1;
            if *left == 0 {
                self.outstanding.remove(&p.round);
                self.round_done(p.round);
            }
        }
        let mirror_failed = p.mirror_probe.is_err();
        let primary_failed = !matches!(p.primary_health, fts::PrimaryHealth::Alive(_));
        let failed = u64::from(mirror_failed) + u64::from(primary_failed);
        if failed > 0 {
            PROBE_ERRORS.get().fetch_add(failed, Ordering::SeqCst);
        }
        let s = settings();
        let now = Instant::now();
        let memory = self.memory.entry(content).or_default();
        let mut rows = vec![p.primary.clone(), p.mirror.clone()];
        rows.sort_by_key(|s| s.dbid);
        // A recovery, a rebalance or a DBA changed the rows: decided afresh.
        let unfinished = memory.unfinished.take().filter(|(after, _)| *after == rows);
        if memory.primary_dbid != p.primary.dbid {
            *memory = Memory { primary_dbid: p.primary.dbid, ..Memory::default() };
        }
        memory.unfinished = unfinished;
        memory.mirror_silent = mirror_failed;
        let stream = fts::mirror_stream(&p.primary_health);
        if matches!(p.primary_health, PrimaryHealth::Alive(_)) {
            record_stream(content, p.mirror.dbid, stream.and_then(|r| r.bytes_behind));
        }
        let stream_seen = stream.is_some();
        let stream_behind = stream.is_some_and(|r| r.has_wal_to_flush());
        // Only a primary that answered says anything about the stream.
        let flush_stalled_since = match &p.primary_health {
            PrimaryHealth::Alive(_) => memory.flush_watch.observe(stream, p.answered),
            _ => None,
        };
        match &p.primary_health {
            PrimaryHealth::Alive(_) if stream_seen => memory.mirror_gone_since = None,
            PrimaryHealth::Alive(_) => {
                memory.mirror_gone_since.get_or_insert(now);
                memory.sync_from_lsn = None;
            }
            _ => {}
        }
        let down_member_writable = p.mirror.status == gp_recovery_core::segment::Status::Down
            && p.mirror_probe.as_ref().is_ok_and(|m| !m.in_recovery);
        if !down_member_writable {
            memory.fence_recorded = false;
        }
        memory.starting_rounds = match p.primary_health {
            PrimaryHealth::StartingUp(_) => memory.starting_rounds + 1,
            _ => 0,
        };
        let mirror_gone_since = memory.mirror_gone_since;
        let observation = Observation {
            primary: p.primary,
            mirror: p.mirror,
            primary_health: p.primary_health,
            mirror_probe: p.mirror_probe,
            mirror_gone_for: mirror_gone_since.map(|t| now - t),
            in_double_fault: self.double_faults.contains(&content),
            starting_rounds: memory.starting_rounds,
            sync_from_lsn: memory.sync_from_lsn,
            mirror_flush_stalled_for: flush_stalled_since.map(|t| now - t),
            unfinished: memory.unfinished.as_ref().map(|(_, ops)| ops.clone()).unwrap_or_default(),
            fence_recorded: memory.fence_recorded,
            system_identifier: p.system_identifier,
        };
        let plan = fts::decide(&observation, &s.rules);
        if plan.warning {
            pgrx::warning!("{}", plan.log_line(&observation));
        } else if plan.changes_anything() {
            log!("{}", plan.log_line(&observation));
        } else {
            pgrx::debug1!("{}", plan.log_line(&observation));
        }
        if plan.rule.next_look == fts::NextLook::GraceEnd {
            if let Some(since) = mirror_gone_since {
                self.follow_up.insert(content, since + s.rules.mirror_down_grace_period);
            }
        }
        // A mirror that does not answer while its stream has WAL to flush
        // may hang: looked at again soon, to see since when its flush
        // position stands still, and when its grace period ends.
        let behind = stream_behind && observation.mirror_probe.is_err();
        if behind && !plan.changes_anything() {
            let at = flush_stalled_since.map_or(now + STALL_LOOK, |since| since + s.rules.mirror_down_grace_period);
            self.follow_up.insert(content, at);
        }
        if plan.changes_anything() {
            let done = self.carry_out(&observation, &plan, s.timeout);
            // Look again soon: to confirm, or to retry what failed.
            self.follow_up.insert(content, now + if done { Duration::from_millis(50) } else { Duration::from_secs(1) });
        }
    }

    /// Segment operations before the catalog, the catalog, history and
    /// events in one transaction, then the operations after it. Returns
    /// false when a step failed; the next probe of the content decides again.
    fn carry_out(&mut self, o: &Observation, plan: &Plan, timeout: Duration) -> bool {
        let content = o.primary.content;
        let sysid = o.system_identifier.as_deref();
        for op in &plan.before_catalog {
            if !self.segment_op(content, op, timeout, sysid) {
                return false;
            }
        }
        if !plan.catalog.is_empty() || !plan.history.is_empty() {
            let (expected, dbids) = (vec![o.primary.clone(), o.mirror.clone()], [o.primary.dbid, o.mirror.dbid]);
            let mut sorted = expected.clone();
            sorted.sort_by_key(|s| s.dbid);
            let written = BackgroundWorker::transaction(|| {
                // Decided on what the probe round saw: if a recovery or a DBA
                // changed these rows meanwhile, decide again instead.
                if catalog::lock_rows(&dbids) != sorted {
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
                return false;
            }
            match plan.rule.action {
                fts::Action::RecordDoubleFault => {
                    self.double_faults.insert(content);
                }
                fts::Action::ClearDoubleFault => {
                    self.double_faults.remove(&content);
                }
                fts::Action::Fence => {
                    if let Some(m) = self.memory.get_mut(&content) {
                        m.fence_recorded = true;
                    }
                }
                _ => {}
            }
        }
        let rows_after = plan.rows_after(o);
        let mut left: Vec<SegmentOp> = self
            .memory
            .get_mut(&content)
            .and_then(|m| m.unfinished.take())
            .filter(|(after, _)| *after == rows_after)
            .map(|(_, ops)| ops)
            .unwrap_or_default();
        let mut done = true;
        for (i, op) in plan.after_catalog.iter().enumerate() {
            if self.segment_op(content, op, timeout, sysid) {
                left.retain(|l| !l.same_step(op));
                continue;
            }
            // It and what depends on it are retried on the content's next
            // rounds until they succeed.
            for op in plan.after_catalog[i..].iter().filter(|op| op.retried()) {
                if !left.iter().any(|l| l.same_step(op)) {
                    left.push(op.clone());
                }
            }
            done = false;
            break;
        }
        let new_primary =
            rows_after.iter().find(|s| s.role == gp_recovery_core::segment::Role::Primary).map(|s| s.dbid);
        if let Some(m) = self.memory.get_mut(&content) {
            // After a failover the promoted mirror is the primary the next
            // rounds find: memory starts afresh for it, but its unfinished
            // steps must outlive the change.
            if let Some(dbid) = new_primary.filter(|d| *d != m.primary_dbid) {
                *m = Memory { primary_dbid: dbid, ..Memory::default() };
            }
            m.unfinished = (!left.is_empty()).then_some((rows_after, left));
        }
        done
    }

    /// One segment operation; a promotion or a fence only of the pair's own
    /// server (`system_identifier`, and for a fence the row's directory).
    fn segment_op(&mut self, content: i16, op: &SegmentOp, timeout: Duration, system_identifier: Option<&str>) -> bool {
        let (what, result) = match op {
            SegmentOp::EnableSyncRep(s) => {
                let result = block_on(Target::new(s, timeout).enable_sync_rep());
                if let Ok(lsn) = result {
                    if let Some(m) = self.memory.get_mut(&content) {
                        m.sync_from_lsn = Some(lsn);
                    }
                }
                (format!("turn synchronous replication on at dbid {}", s.dbid), result.map(|_| ()))
            }
            SegmentOp::DisableSyncRep(s) => (
                format!("turn synchronous replication off at dbid {}", s.dbid),
                block_on(Target::new(s, timeout).disable_sync_rep()),
            ),
            SegmentOp::Promote(s) => (
                format!("promote dbid {} at {}", s.dbid, s.location()),
                block_on(Target::new(s, timeout).promote(system_identifier)),
            ),
            SegmentOp::CreateSlot(s) => (
                format!("create the replication slot on dbid {}", s.dbid),
                block_on(Target::new(s, timeout).create_slot()),
            ),
            SegmentOp::Fence(s) => {
                let member = Member { system_identifier: system_identifier.unwrap_or_default(), datadir: &s.datadir };
                (
                    format!("stop dbid {} at {} (immediate shutdown, fencing)", s.dbid, s.location()),
                    block_on(Target::new(s, timeout).fence(&member)),
                )
            }
        };
        match result {
            Ok(()) => {
                log!("FTS: content {content}: did {what}");
                true
            }
            Err(e) => {
                pgrx::warning!("FTS: content {content}: could not {what}: {e}; will retry");
                false
            }
        }
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn gp_recovery_fts_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = gucs::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    // SAFETY: MyProcPid is set for every backend before this runs.
    WORKER_PID.get().store(unsafe { pg_sys::MyProcPid }, Ordering::SeqCst);
    BackgroundWorker::transaction(catalog::set_worker_search_path);
    Fts::new().run();
    WORKER_PID.get().store(0, Ordering::SeqCst);
    log!("gp_recovery fault tolerance service stopped");
    // Exit code 1: the postmaster starts the worker again after its restart
    // time unless the server is shutting down.
    unsafe { pg_sys::proc_exit(1) };
}
