//! The fault tolerance service's memory and timing, without Postgres.
//!
//! The rules of `fts.rs` decide on one [`Observation`]; this tracker is
//! everything around them: the probe rounds and which of their probes are
//! in flight, each content's memory between rounds ([`Memory`]), when a
//! content is probed again outside the rounds (follow-ups), how a probe is
//! made (retries, their spacing, the lost-watch fast path, how long a silent
//! mirror may hold its primary's answer), and what a plan that was carried
//! out leaves to be done. Every method takes `now`, so the timing rules are
//! tested with a fake clock. The worker (src/fts.rs) only spawns the probes
//! and segment operations it is told to, runs the transactions, and feeds
//! the outcomes back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::fts::{self, Action, FlushWatch, NextLook, Observation, Plan, PrimaryHealth, SegmentOp, Settings};
use crate::probe::ProbeResult;
use crate::segment::{Role, Segment, Status};

/// The pause between attempts of a probe started because a primary's watch
/// connection was lost.
pub const CONFIRM_PAUSE: Duration = Duration::from_millis(100);
/// Attempts after the first of such a probe, at least: a primary restarted
/// by hand is listening again ("starting up") within this window of 0.4 s
/// and is not failed over.
pub const CONFIRM_MIN_RETRIES: u32 = 4;
/// How much longer than its answering primary a mirror whose last probe
/// failed may take to answer before it counts as not answering this round.
pub const MIRROR_AFTER_PRIMARY: Duration = Duration::from_millis(100);
/// How soon a content is probed again when its mirror did not answer while
/// its stream had WAL to flush.
pub const STALL_LOOK: Duration = Duration::from_millis(250);
/// How soon a content is probed again after a plan was carried out: to
/// confirm it, or (after a failed step) to retry.
pub const CONFIRM_LOOK: Duration = Duration::from_millis(50);
pub const RETRY_LOOK: Duration = Duration::from_secs(1);

/// The service's settings, as the tracker and the rules use them.
#[derive(Debug, Clone, Copy)]
pub struct TrackerSettings {
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    /// Between attempts on a primary: about a second, as in Greenplum, but
    /// all retries fit in one probe interval, so a 1 s interval with 2
    /// retries fails a dead primary over within a couple of seconds.
    pub retry_pause: Duration,
    pub rules: Settings,
}

impl TrackerSettings {
    pub fn new(interval: Duration, timeout: Duration, retries: u32, grace: Duration) -> TrackerSettings {
        TrackerSettings {
            interval,
            timeout,
            retries,
            retry_pause: (interval / (retries + 1)).min(Duration::from_secs(1)),
            rules: Settings { mirror_down_grace_period: grace, max_starting_rounds: retries },
        }
    }
}

/// A content's memory between rounds, reset when its primary changes.
#[derive(Debug, Default)]
struct Memory {
    primary_dbid: i16,
    mirror_gone_since: Option<Instant>,
    starting_rounds: u32,
    sync_from_lsn: Option<u64>,
    /// The mirror stream's flush progress, to tell a hung mirror.
    flush_watch: FlushWatch,
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

/// One pair as the catalog has it now, with its system identifier.
#[derive(Debug, Clone)]
pub struct Members {
    pub primary: Segment,
    pub mirror: Segment,
    pub system_identifier: Option<String>,
}

/// A probe to make: of the primary with `retries` further attempts `pause`
/// apart, of the mirror at the same time; once the primary answers, the
/// mirror gets at most `mirror_wait` more (the whole timeout unless its
/// last probe failed).
#[derive(Debug, Clone)]
pub struct ProbeOrder {
    pub round: u64,
    pub members: Members,
    pub retries: u32,
    pub pause: Duration,
    pub mirror_wait: Duration,
}

/// What one content's probe brought back.
#[derive(Debug, Clone)]
pub struct Probed {
    pub round: u64,
    pub members: Members,
    pub primary_health: PrimaryHealth,
    pub mirror_probe: ProbeResult,
    /// When the primary's answer came: the stream it reports is as of then.
    pub answered: Instant,
}

/// A round whose probes all ended, and how long it took (None when its
/// start was forgotten, superseded by a later round).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundDone {
    pub round: u64,
    pub took: Option<Duration>,
}

/// What to do now for the pairs of the catalog.
#[derive(Debug, Default)]
pub struct Due {
    pub orders: Vec<ProbeOrder>,
    /// Primaries whose watch connection should be open (a new round).
    pub watch: Vec<Segment>,
    /// Contents a job has on hold: no watch, no probe.
    pub unwatch: Vec<i16>,
    /// The contents that exist: watches of others are dropped.
    pub contents: HashSet<i16>,
    pub round_done: Option<RoundDone>,
}

/// The decision on one probed content.
#[derive(Debug)]
pub struct Decision {
    pub observation: Observation,
    pub plan: Plan,
    pub round_done: Option<RoundDone>,
    /// Members that did not answer in this probe.
    pub probe_errors: u64,
}

/// The result of one segment operation the worker ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    Done,
    /// EnableSyncRep: the primary's flush position when the stream became 'sync'.
    SyncFrom(u64),
    Failed(String),
}

impl OpResult {
    pub fn ok(&self) -> bool {
        !matches!(self, OpResult::Failed(_))
    }
}

/// The service's rounds and every content's memory.
#[derive(Debug)]
pub struct Tracker {
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
    /// Contents whose next probe confirms a lost watch, with fast attempts.
    confirm: HashSet<i16>,
    /// Contents whose plan's segment operations are being carried out: not
    /// probed again until they are done.
    carrying: HashSet<i16>,
}

impl Tracker {
    /// A tracker whose first round is due at once; `double_faults` are the
    /// contents recorded in a double fault.
    pub fn new(now: Instant, double_faults: impl IntoIterator<Item = i16>) -> Tracker {
        Tracker {
            in_flight: HashMap::new(),
            outstanding: BTreeMap::new(),
            round: 0,
            round_to_spawn: false,
            round_started: BTreeMap::new(),
            next_round: now,
            follow_up: HashMap::new(),
            memory: HashMap::new(),
            double_faults: double_faults.into_iter().collect(),
            confirm: HashSet::new(),
            carrying: HashSet::new(),
        }
    }

    /// Whether a round starts now: asked for, or its time has come.
    pub fn round_due(&self, now: Instant, requested: bool) -> bool {
        requested || now >= self.next_round
    }

    /// Starts round number `round` (the worker counts them in shared memory).
    pub fn start_round(&mut self, now: Instant, round: u64, s: &TrackerSettings) {
        self.round = round;
        self.round_started.insert(round, now);
        self.round_to_spawn = true;
        self.next_round = now + s.interval;
    }

    /// New settings: the next round comes no later than one new interval.
    pub fn reload(&mut self, now: Instant, s: &TrackerSettings) {
        self.next_round = self.next_round.min(now + s.interval);
    }

    /// When the follow-ups of contents not being probed now are due; one of
    /// a content in flight (or carrying out a plan) waits until that ends.
    fn waiting_follow_ups(&self) -> impl Iterator<Item = Instant> + '_ {
        self.follow_up
            .iter()
            .filter(|(c, _)| !self.in_flight.contains_key(c) && !self.carrying.contains(c))
            .map(|(_, t)| *t)
    }

    /// Whether the worker must read the catalog and call [`Tracker::due`]:
    /// a round to spawn, or a follow-up due.
    pub fn wants_probes(&self, now: Instant) -> bool {
        self.round_to_spawn || self.waiting_follow_ups().any(|t| t <= now)
    }

    /// When the worker's loop must wake at the latest.
    pub fn wake_at(&self) -> Instant {
        self.waiting_follow_ups().chain([self.next_round]).min().unwrap_or(self.next_round)
    }

    /// The probes a new round or a follow-up wants now, for the pairs of the
    /// catalog; `held`: contents a job has taken out of the service's hands.
    pub fn due(&mut self, now: Instant, pairs: Vec<Members>, held: &HashSet<i16>, s: &TrackerSettings) -> Due {
        let mut due = Due::default();
        for members in pairs {
            let content = members.primary.content;
            due.contents.insert(content);
            if held.contains(&content) {
                // A rebalance is switching this pair over; it is not a failure.
                self.follow_up.remove(&content);
                self.confirm.remove(&content);
                due.unwatch.push(content);
                continue;
            }
            if self.round_to_spawn {
                due.watch.push(members.primary.clone());
            }
            let wanted = self.round_to_spawn || self.follow_up.get(&content).is_some_and(|t| *t <= now);
            if !wanted || self.in_flight.contains_key(&content) || self.carrying.contains(&content) {
                continue;
            }
            self.follow_up.remove(&content);
            // Only a mirror whose last probe failed is given less than its
            // timeout; a busy mirror answering within it never counts as silent.
            let silent = self.memory.get(&content).is_some_and(|m| m.mirror_silent);
            let (retries, pause) = if self.confirm.remove(&content) {
                (s.retries.max(CONFIRM_MIN_RETRIES), CONFIRM_PAUSE)
            } else {
                (s.retries, s.retry_pause)
            };
            self.in_flight.insert(content, self.round);
            *self.outstanding.entry(self.round).or_default() += 1;
            due.orders.push(ProbeOrder {
                round: self.round,
                members,
                retries,
                pause,
                mirror_wait: if silent { MIRROR_AFTER_PRIMARY } else { s.timeout },
            });
        }
        if self.round_to_spawn && !self.outstanding.contains_key(&self.round) {
            // Nothing to probe (no pairs, or all still busy): the round is done.
            due.round_done = Some(self.round_done(now, self.round));
        }
        self.round_to_spawn = false;
        // Follow-ups of contents that no longer exist are dropped.
        self.follow_up.retain(|c, _| due.contents.contains(c));
        due
    }

    /// The watch on a content's primary was lost: it is probed now, with
    /// fast attempts. The worker calls this only for the primary it watches.
    pub fn primary_lost(&mut self, now: Instant, content: i16) {
        self.confirm.insert(content);
        self.follow_up.insert(content, now);
    }

    fn round_done(&mut self, now: Instant, round: u64) -> RoundDone {
        let took = self.round_started.remove(&round).map(|started| now.saturating_duration_since(started));
        // Rounds that never finish (their probes superseded) are forgotten.
        self.round_started.retain(|r, _| *r > round);
        RoundDone { round, took }
    }

    /// Takes one content's probe: updates its memory, decides with the
    /// rules, and schedules the next look. When the plan changes anything,
    /// the content is carrying it out until [`Tracker::carried_out`] (or
    /// [`Tracker::carry_failed`]) is called.
    pub fn probed(&mut self, now: Instant, p: Probed, s: &TrackerSettings) -> Decision {
        let content = p.members.primary.content;
        self.in_flight.remove(&content);
        let mut round_done = None;
        if let Some(left) = self.outstanding.get_mut(&p.round) {
            *left -= 1;
            if *left == 0 {
                self.outstanding.remove(&p.round);
                round_done = Some(self.round_done(now, p.round));
            }
        }
        let mirror_failed = p.mirror_probe.is_err();
        let primary_failed = !matches!(p.primary_health, PrimaryHealth::Alive(_));
        let probe_errors = u64::from(mirror_failed) + u64::from(primary_failed);
        let Members { primary, mirror, system_identifier } = p.members;
        let memory = self.memory.entry(content).or_default();
        let mut rows = vec![primary.clone(), mirror.clone()];
        rows.sort_by_key(|s| s.dbid);
        // A recovery, a rebalance or a DBA changed the rows: decided afresh.
        let unfinished = memory.unfinished.take().filter(|(after, _)| *after == rows);
        if memory.primary_dbid != primary.dbid {
            *memory = Memory { primary_dbid: primary.dbid, ..Memory::default() };
        }
        memory.unfinished = unfinished;
        memory.mirror_silent = mirror_failed;
        let stream = fts::mirror_stream(&p.primary_health);
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
        let down_member_writable =
            mirror.status == Status::Down && p.mirror_probe.as_ref().is_ok_and(|m| !m.in_recovery);
        if !down_member_writable {
            memory.fence_recorded = false;
        }
        memory.starting_rounds = match p.primary_health {
            PrimaryHealth::StartingUp(_) => memory.starting_rounds + 1,
            _ => 0,
        };
        let mirror_gone_since = memory.mirror_gone_since;
        let observation = Observation {
            primary,
            mirror,
            primary_health: p.primary_health,
            mirror_probe: p.mirror_probe,
            mirror_gone_for: mirror_gone_since.map(|t| now - t),
            in_double_fault: self.double_faults.contains(&content),
            starting_rounds: memory.starting_rounds,
            sync_from_lsn: memory.sync_from_lsn,
            mirror_flush_stalled_for: flush_stalled_since.map(|t| now - t),
            unfinished: memory.unfinished.as_ref().map(|(_, ops)| ops.clone()).unwrap_or_default(),
            fence_recorded: memory.fence_recorded,
            system_identifier,
        };
        let plan = fts::decide(&observation, &s.rules);
        let grace = s.rules.mirror_down_grace_period;
        if plan.rule.next_look == NextLook::GraceEnd {
            if let Some(since) = mirror_gone_since {
                self.follow_up.insert(content, since + grace);
            }
        }
        // A mirror that does not answer while its stream has WAL to flush
        // may hang: looked at again soon, to see since when its flush
        // position stands still, and when its grace period ends.
        let behind = stream_behind && observation.mirror_probe.is_err();
        if behind && !plan.changes_anything() {
            let at = flush_stalled_since.map_or(now + STALL_LOOK, |since| since + grace);
            self.follow_up.insert(content, at);
        }
        if plan.changes_anything() {
            self.carrying.insert(content);
        }
        Decision { observation, plan, round_done, probe_errors }
    }

    /// The plan's catalog change (and its history) was committed.
    pub fn catalog_written(&mut self, content: i16, action: Action) {
        match action {
            Action::RecordDoubleFault => {
                self.double_faults.insert(content);
            }
            Action::ClearDoubleFault => {
                self.double_faults.remove(&content);
            }
            Action::Fence => {
                if let Some(m) = self.memory.get_mut(&content) {
                    m.fence_recorded = true;
                }
            }
            _ => {}
        }
    }

    /// An operation before the catalog failed, or the catalog changed while
    /// the content was probed: nothing was written, the content is looked
    /// at again after a pause.
    pub fn carry_failed(&mut self, now: Instant, content: i16, before: &[OpResult]) {
        self.note_sync_from(content, before);
        self.carrying.remove(&content);
        self.follow_up.insert(content, now + RETRY_LOOK);
    }

    fn note_sync_from(&mut self, content: i16, results: &[OpResult]) {
        for r in results {
            if let (OpResult::SyncFrom(lsn), Some(m)) = (r, self.memory.get_mut(&content)) {
                m.sync_from_lsn = Some(*lsn);
            }
        }
    }

    /// The plan was carried out: `before` are the results of its operations
    /// before the catalog (all succeeded), `after` those after it, in order,
    /// up to the first that failed. A failed operation and what depends on
    /// it are kept for retry while the content's rows stay as the plan left
    /// them; after a failover the memory starts afresh for the promoted
    /// mirror, but keeps them.
    pub fn carried_out(&mut self, now: Instant, o: &Observation, plan: &Plan, before: &[OpResult], after: &[OpResult]) {
        let content = o.primary.content;
        self.note_sync_from(content, before);
        self.note_sync_from(content, after);
        let rows_after = plan.rows_after(o);
        let mut left: Vec<SegmentOp> = self
            .memory
            .get_mut(&content)
            .and_then(|m| m.unfinished.take())
            .filter(|(rows, _)| *rows == rows_after)
            .map(|(_, ops)| ops)
            .unwrap_or_default();
        let mut done = true;
        for (i, op) in plan.after_catalog.iter().enumerate() {
            if after.get(i).is_some_and(OpResult::ok) {
                left.retain(|l| !l.same_step(op));
                continue;
            }
            for op in plan.after_catalog[i..].iter().filter(|op| op.retried()) {
                if !left.iter().any(|l| l.same_step(op)) {
                    left.push(op.clone());
                }
            }
            done = false;
            break;
        }
        let new_primary = rows_after.iter().find(|s| s.role == Role::Primary).map(|s| s.dbid);
        if let Some(m) = self.memory.get_mut(&content) {
            if let Some(dbid) = new_primary.filter(|d| *d != m.primary_dbid) {
                *m = Memory { primary_dbid: dbid, ..Memory::default() };
            }
            m.unfinished = (!left.is_empty()).then_some((rows_after, left));
        }
        self.carrying.remove(&content);
        self.follow_up.insert(content, now + if done { CONFIRM_LOOK } else { RETRY_LOOK });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{InstanceProbe, Replication};
    use crate::segment::Mode;

    fn seg(dbid: i16, content: i16, role: Role, status: Status) -> Segment {
        Segment {
            dbid,
            content,
            role,
            preferred_role: role,
            mode: Mode::Synchronized,
            status,
            port: 7000 + i32::from(dbid),
            hostname: "localhost".into(),
            address: "127.0.0.1".into(),
            datadir: format!("/d/{dbid}"),
        }
    }

    fn pair(content: i16) -> Members {
        Members {
            primary: seg(2 + 2 * content, content, Role::Primary, Status::Up),
            mirror: seg(3 + 2 * content, content, Role::Mirror, Status::Up),
            system_identifier: Some("42".into()),
        }
    }

    fn member(in_recovery: bool, datadir: &str) -> InstanceProbe {
        InstanceProbe {
            in_recovery,
            system_identifier: "42".into(),
            data_directory: datadir.into(),
            ..Default::default()
        }
    }

    /// A primary streaming to its mirror, flushed up to `flush`, with `unflushed` bytes to go.
    fn streaming(flush: &str, unflushed: i64) -> PrimaryHealth {
        PrimaryHealth::Alive(InstanceProbe {
            synchronous_standby_names: "gp_walreceiver".into(),
            replication: vec![Replication {
                application_name: "gp_walreceiver".into(),
                slot_name: Some(crate::probe::SLOT_NAME.into()),
                state: "streaming".into(),
                sync_state: "sync".into(),
                flush_lsn: Some(flush.into()),
                unflushed_bytes: Some(unflushed),
                ..Default::default()
            }],
            ..member(false, "/d/2")
        })
    }

    fn settings() -> TrackerSettings {
        TrackerSettings::new(Duration::from_secs(1), Duration::from_secs(2), 2, Duration::from_secs(5))
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// A tracker with round 1 started and its probe orders given out.
    fn started(t0: Instant, contents: &[i16]) -> (Tracker, Due) {
        let s = settings();
        let mut t = Tracker::new(t0, []);
        assert!(t.round_due(t0, false), "the first round is due at once");
        t.start_round(t0, 1, &s);
        let due = t.due(t0, contents.iter().map(|c| pair(*c)).collect(), &HashSet::new(), &s);
        (t, due)
    }

    fn probed(order: &ProbeOrder, health: PrimaryHealth, mirror: ProbeResult, answered: Instant) -> Probed {
        Probed {
            round: order.round,
            members: order.members.clone(),
            primary_health: health,
            mirror_probe: mirror,
            answered,
        }
    }

    #[test]
    fn retries_fit_in_one_interval_about_a_second_apart() {
        let s = TrackerSettings::new(Duration::from_secs(1), Duration::from_secs(1), 2, Duration::from_secs(5));
        assert_eq!(s.retry_pause, Duration::from_secs(1) / 3);
        let s = TrackerSettings::new(Duration::from_secs(60), Duration::from_secs(20), 5, Duration::from_secs(30));
        assert_eq!(s.retry_pause, Duration::from_secs(1), "Greenplum's defaults: a second apart");
        let (_, due) = started(Instant::now(), &[0]);
        assert_eq!((due.orders[0].retries, due.orders[0].pause), (2, Duration::from_secs(1) / 3));
        assert_eq!(due.watch.len(), 1, "a round opens the primary's watch");
    }

    #[test]
    fn rounds_come_every_interval_and_end_when_their_probes_do() {
        let t0 = Instant::now();
        let s = settings();
        let (mut t, due) = started(t0, &[0, 1]);
        assert_eq!(due.orders.len(), 2);
        assert_eq!(t.wake_at(), at(t0, 1000));
        assert!(!t.round_due(at(t0, 999), false) && t.round_due(at(t0, 1000), false) && t.round_due(at(t0, 1), true));
        let healthy = streaming("0/3000000", 0);
        let d = t.probed(at(t0, 10), probed(&due.orders[0], healthy.clone(), Ok(member(true, "/d/3")), at(t0, 10)), &s);
        assert_eq!((d.round_done, d.plan.rule.name), (None, "healthy_or_catching_up"));
        let d = t.probed(at(t0, 20), probed(&due.orders[1], healthy, Ok(member(true, "/d/5")), at(t0, 20)), &s);
        assert_eq!(d.round_done.map(|r| r.round), Some(1), "the round ends with its last probe");
        // A content still in flight is not probed again by the next round.
        t.start_round(at(t0, 1000), 2, &s);
        let due2 = t.due(at(t0, 1000), vec![pair(0), pair(1)], &HashSet::new(), &s);
        assert_eq!(due2.orders.len(), 2);
        t.start_round(at(t0, 2000), 3, &s);
        let due3 = t.due(at(t0, 2000), vec![pair(0), pair(1)], &HashSet::new(), &s);
        assert!(due3.orders.is_empty() && due3.round_done.is_some(), "nothing to probe: round 3 is done at once");
    }

    #[test]
    fn a_lost_watch_is_confirmed_at_once_with_fast_attempts() {
        let t0 = Instant::now();
        let s = settings();
        let (mut t, due) = started(t0, &[0]);
        let healthy = streaming("0/3000000", 0);
        t.probed(at(t0, 5), probed(&due.orders[0], healthy, Ok(member(true, "/d/3")), at(t0, 5)), &s);
        t.primary_lost(at(t0, 300), 0);
        assert_eq!(t.wake_at(), at(t0, 300), "the loop wakes for it now");
        assert!(t.wants_probes(at(t0, 300)));
        let due = t.due(at(t0, 300), vec![pair(0)], &HashSet::new(), &s);
        assert_eq!((due.orders[0].retries, due.orders[0].pause), (CONFIRM_MIN_RETRIES, CONFIRM_PAUSE));
        assert!(due.watch.is_empty(), "not a new round");
        // The next probe is an ordinary one again.
        t.probed(
            at(t0, 800),
            probed(&due.orders[0], PrimaryHealth::StartingUp("starting".into()), Ok(member(true, "/d/3")), at(t0, 800)),
            &s,
        );
        t.start_round(at(t0, 1000), 2, &s);
        let due = t.due(at(t0, 1000), vec![pair(0)], &HashSet::new(), &s);
        assert_eq!((due.orders[0].retries, due.orders[0].pause), (2, s.retry_pause));
    }

    /// 3149348: a follow-up of a content whose probe is in flight must not
    /// wake the loop (a wake-up time in the past, every time, starved the
    /// probes and hid SIGTERM); the probe's end brings the next look.
    #[test]
    fn a_follow_up_of_a_content_in_flight_does_not_wake_the_loop() {
        let t0 = Instant::now();
        let s = settings();
        let (mut t, due) = started(t0, &[0]);
        t.primary_lost(at(t0, 100), 0);
        assert_eq!(t.wake_at(), at(t0, 1000), "its probe is in flight: the next round decides the wake-up");
        assert!(!t.wants_probes(at(t0, 500)));
        t.probed(
            at(t0, 600),
            probed(&due.orders[0], streaming("0/3000000", 0), Ok(member(true, "/d/3")), at(t0, 600)),
            &s,
        );
        assert_eq!(t.wake_at(), at(t0, 100), "once it ended, the follow-up is due");
    }

    /// 76912ea: only a mirror whose last probe failed is cut short to
    /// 100 ms after its primary's answer; a busy mirror that answered within
    /// its timeout keeps all of it.
    #[test]
    fn only_a_mirror_whose_last_probe_failed_gets_100_ms() {
        let t0 = Instant::now();
        let s = settings();
        let (mut t, due) = started(t0, &[0]);
        assert_eq!(due.orders[0].mirror_wait, s.timeout, "nothing known yet");
        t.probed(
            at(t0, 1900),
            probed(&due.orders[0], streaming("0/3000000", 0), Ok(member(true, "/d/3")), at(t0, 10)),
            &s,
        );
        t.start_round(at(t0, 2000), 2, &s);
        let due = t.due(at(t0, 2000), vec![pair(0)], &HashSet::new(), &s);
        assert_eq!(due.orders[0].mirror_wait, s.timeout, "a slow mirror that answered is not silent");
        t.probed(
            at(t0, 2100),
            probed(&due.orders[0], streaming("0/3000000", 0), Err("no answer".into()), at(t0, 2000)),
            &s,
        );
        t.start_round(at(t0, 3000), 3, &s);
        let due = t.due(at(t0, 3000), vec![pair(0)], &HashSet::new(), &s);
        assert_eq!(due.orders[0].mirror_wait, MIRROR_AFTER_PRIMARY);
    }

    #[test]
    fn a_mirror_gone_is_looked_at_again_when_its_grace_ends() {
        let t0 = Instant::now();
        let s = settings();
        let (mut t, due) = started(t0, &[0]);
        let no_stream = PrimaryHealth::Alive(InstanceProbe {
            synchronous_standby_names: "gp_walreceiver".into(),
            ..member(false, "/d/2")
        });
        let d = t.probed(at(t0, 10), probed(&due.orders[0], no_stream.clone(), Err("refused".into()), at(t0, 10)), &s);
        assert_eq!(d.plan.rule.name, "mirror_gone_within_grace");
        assert_eq!(t.wake_at(), at(t0, 1000), "the next round comes first");
        // Grace 5 s, counted from the first sighting at 10 ms.
        for round in 2..=5 {
            let now = at(t0, 1000 * (round - 1));
            t.start_round(now, round, &s);
            let due = t.due(now, vec![pair(0)], &HashSet::new(), &s);
            let d = t.probed(now, probed(&due.orders[0], no_stream.clone(), Err("refused".into()), now), &s);
            assert_eq!(d.plan.rule.name, "mirror_gone_within_grace");
        }
        assert!(t.follow_up.get(&0) == Some(&at(t0, 5010)), "{:?}", t.follow_up);
        let due = t.due(at(t0, 5010), vec![pair(0)], &HashSet::new(), &s);
        assert_eq!(due.orders.len(), 1, "probed at the grace's end, between rounds");
        let d = t.probed(at(t0, 5020), probed(&due.orders[0], no_stream, Err("refused".into()), at(t0, 5020)), &s);
        assert_eq!(d.plan.rule.name, "mirror_gone");
        assert!(d.plan.changes_anything());
    }

    #[test]
    fn a_silent_mirror_with_wal_to_flush_is_watched_until_its_stall_passes_the_grace() {
        let t0 = Instant::now();
        let s = settings();
        let (mut t, due) = started(t0, &[0]);
        let stuck = streaming("0/3000000", 8192);
        let d = t.probed(at(t0, 10), probed(&due.orders[0], stuck.clone(), Err("no answer".into()), at(t0, 10)), &s);
        assert!(!d.plan.changes_anything());
        assert_eq!(t.wake_at(), at(t0, 10) + STALL_LOOK, "looked at again soon");
        let due = t.due(at(t0, 260), vec![pair(0)], &HashSet::new(), &s);
        let d = t.probed(at(t0, 400), probed(&due.orders[0], stuck.clone(), Err("no answer".into()), at(t0, 300)), &s);
        assert_eq!(d.observation.mirror_flush_stalled_for, Some(Duration::from_millis(390)), "from its first report");
        assert_eq!(t.follow_up.get(&0), Some(&at(t0, 10 + 5000)), "then at the grace period's end");
        let due = t.due(at(t0, 5010), vec![pair(0)], &HashSet::new(), &s);
        let d = t.probed(at(t0, 5020), probed(&due.orders[0], stuck, Err("no answer".into()), at(t0, 5015)), &s);
        assert_eq!(d.plan.rule.name, "mirror_stalled");
        // A mirror that answers, or whose flush position moves, is not hung.
        let (mut t, due) = started(t0, &[0]);
        t.probed(
            at(t0, 10),
            probed(&due.orders[0], streaming("0/3000000", 8192), Ok(member(true, "/d/3")), at(t0, 10)),
            &s,
        );
        assert_eq!(t.wake_at(), at(t0, 1000));
    }

    #[test]
    fn a_carried_out_plan_is_confirmed_soon_and_a_failed_step_retried() {
        let t0 = Instant::now();
        let s = settings();
        let (mut t, due) = started(t0, &[0]);
        let d = t.probed(
            at(t0, 10),
            probed(&due.orders[0], PrimaryHealth::Unreachable("refused".into()), Ok(member(true, "/d/3")), at(t0, 10)),
            &s,
        );
        assert_eq!(d.plan.rule.name, "primary_failed_mirror_in_sync");
        // While it is carried out the content is not probed, whatever is due.
        t.primary_lost(at(t0, 20), 0);
        t.start_round(at(t0, 1000), 2, &s);
        assert!(t.due(at(t0, 1000), vec![pair(0)], &HashSet::new(), &s).orders.is_empty());
        assert_eq!(t.wake_at(), at(t0, 2000));
        // The promotion succeeded, the slot failed: kept for retry, next look in 1 s.
        let after = [OpResult::Done, OpResult::Done, OpResult::Failed("timeout".into())];
        t.carried_out(at(t0, 1100), &d.observation, &d.plan, &[], &after);
        assert_eq!(t.follow_up.get(&0), Some(&(at(t0, 1100) + RETRY_LOOK)));
        let promoted = t.memory.get(&0).unwrap();
        assert_eq!(promoted.primary_dbid, 3, "memory starts afresh for the promoted mirror");
        let left = &promoted.unfinished.as_ref().unwrap().1;
        assert_eq!(left, &vec![SegmentOp::CreateSlot(d.observation.mirror.clone())]);
        // A plan whose steps all succeed is confirmed in 50 ms.
        let (mut t, due) = started(t0, &[0]);
        let d = t.probed(
            at(t0, 10),
            probed(&due.orders[0], PrimaryHealth::Unreachable("refused".into()), Ok(member(true, "/d/3")), at(t0, 10)),
            &s,
        );
        t.carried_out(at(t0, 30), &d.observation, &d.plan, &[], &[OpResult::Done, OpResult::Done, OpResult::Done]);
        assert_eq!(t.wake_at(), at(t0, 30) + CONFIRM_LOOK);
        assert!(t.memory.get(&0).unwrap().unfinished.is_none());
    }

    #[test]
    fn synchronous_replication_on_is_remembered_and_a_double_fault_recorded() {
        let t0 = Instant::now();
        let s = settings();
        let (mut t, due) = started(t0, &[0]);
        let async_stream = match streaming("0/3000000", 0) {
            PrimaryHealth::Alive(mut p) => {
                p.replication[0].sync_state = "async".into();
                PrimaryHealth::Alive(p)
            }
            other => other,
        };
        let d = t.probed(at(t0, 10), probed(&due.orders[0], async_stream, Ok(member(true, "/d/3")), at(t0, 10)), &s);
        assert_eq!(d.plan.rule.action, Action::EnableSyncRep);
        t.carried_out(at(t0, 20), &d.observation, &d.plan, &[OpResult::SyncFrom(0x2000)], &[]);
        assert_eq!(t.memory.get(&0).unwrap().sync_from_lsn, Some(0x2000));
        // A double fault, once recorded, is remembered for the next rounds.
        let lone = || {
            let mut lone = pair(0);
            lone.mirror.status = Status::Down;
            lone.mirror.mode = Mode::NotInSync;
            lone
        };
        let due = t.due(at(t0, 70), vec![lone()], &HashSet::new(), &s);
        let d = t.probed(
            at(t0, 80),
            probed(&due.orders[0], PrimaryHealth::Unreachable("x".into()), Err("x".into()), at(t0, 80)),
            &s,
        );
        assert_eq!(d.plan.rule.action, Action::RecordDoubleFault);
        t.catalog_written(0, Action::RecordDoubleFault);
        t.carried_out(at(t0, 90), &d.observation, &d.plan, &[], &[]);
        let due = t.due(at(t0, 140), vec![lone()], &HashSet::new(), &s);
        let d = t.probed(
            at(t0, 150),
            probed(&due.orders[0], PrimaryHealth::Unreachable("x".into()), Err("x".into()), at(t0, 150)),
            &s,
        );
        assert_eq!(d.plan.rule.name, "double_fault_persists");
    }

    #[test]
    fn a_held_content_is_neither_watched_nor_probed() {
        let t0 = Instant::now();
        let s = settings();
        let mut t = Tracker::new(t0, []);
        t.start_round(t0, 1, &s);
        t.primary_lost(t0, 0);
        let due = t.due(t0, vec![pair(0), pair(1)], &HashSet::from([0]), &s);
        assert_eq!(due.unwatch, vec![0]);
        assert_eq!(due.orders.iter().map(|o| o.members.primary.content).collect::<Vec<_>>(), vec![1]);
        assert!(!t.follow_up.contains_key(&0) && !t.confirm.contains(&0), "its follow-up and confirmation go");
        // A content that left the catalog leaves no follow-up behind.
        t.primary_lost(at(t0, 10), 1);
        t.due(at(t0, 20), vec![pair(0)], &HashSet::new(), &s);
        assert!(!t.follow_up.contains_key(&1));
    }
}
