//! The fault tolerance service's decisions, one content at a time.
//!
//! As in pg_auto_failover's state machine, the decisions are one table:
//! each rule has a name, the reason it exists (which is also the log text
//! when it fires), a predicate over what a probe round saw, and one small
//! named action. The first rule that matches wins. The worker (src/fts.rs)
//! gathers an [`Observation`], calls [`decide`], and carries out the
//! [`Plan`]: segment operations before the catalog write, the catalog rows
//! and history in one transaction, then the operations after it.

use std::time::{Duration, Instant};

use crate::events::{History, SegmentEvent};
use crate::identity::Member;
use crate::probe::{InstanceProbe, ProbeResult};
use crate::segment::{Mode, Role, Segment, Status};

/// What the probes of a content's acting primary found, after retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimaryHealth {
    Alive(InstanceProbe),
    /// Every attempt was answered with "the database system is starting up"
    /// (or in recovery mode): a restart or crash recovery is under way.
    StartingUp(String),
    /// The server answered but turned the probe away (authentication,
    /// pg_hba.conf, no free connection slot, shutting down): it is alive,
    /// so this is never a reason to fail over.
    Refusing(String),
    Unreachable(String),
}

/// True when a connection error says the server is restarting or in crash
/// recovery rather than gone.
pub fn is_starting_up(error: &str) -> bool {
    [
        "the database system is starting up",
        "the database system is in recovery mode",
        "the database system is not yet accepting connections",
    ]
    .iter()
    .any(|m| error.contains(m))
}

/// True when a connection error comes from a live server that refused the
/// connection: by SQLSTATE when the server sent one, else by its text.
pub fn is_refusal(sqlstate: Option<&str>, error: &str) -> bool {
    // invalid_authorization_specification (pg_hba.conf), invalid_password,
    // too_many_connections (also the reserved superuser slots).
    if sqlstate.is_some_and(|c| ["28000", "28P01", "53300"].contains(&c)) {
        return true;
    }
    [
        "password authentication failed",
        "no pg_hba.conf entry",
        "pg_hba.conf rejects connection",
        "too many clients",
        "remaining connection slots are reserved",
        // 57P03 also means starting up, so this one goes by its text.
        "the database system is shutting down",
    ]
    .iter()
    .any(|m| error.contains(m))
}

impl PrimaryHealth {
    /// Classifies the last error of a primary whose every attempt failed,
    /// with the SQLSTATE the server sent, if it sent one.
    pub fn from_failure(error: String, sqlstate: Option<&str>) -> Self {
        if is_starting_up(&error) {
            PrimaryHealth::StartingUp(error)
        } else if is_refusal(sqlstate, &error) {
            PrimaryHealth::Refusing(error)
        } else {
            PrimaryHealth::Unreachable(error)
        }
    }

    fn describe(&self) -> String {
        match self {
            PrimaryHealth::Alive(p) if p.in_recovery => "answers, in recovery".into(),
            PrimaryHealth::Alive(_) => "answers".into(),
            PrimaryHealth::StartingUp(e) => format!("starting up ({e})"),
            PrimaryHealth::Refusing(e) => format!("answers but refuses the probe ({e})"),
            PrimaryHealth::Unreachable(e) => format!("unreachable ({e})"),
        }
    }
}

/// Everything the decision for one content rests on.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The catalog row of the acting primary (role 'p').
    pub primary: Segment,
    /// The catalog row of the mirror (role 'm').
    pub mirror: Segment,
    pub primary_health: PrimaryHealth,
    pub mirror_probe: ProbeResult,
    /// How long the acting primary has reported no stream to its mirror;
    /// None while it reports one.
    pub mirror_gone_for: Option<Duration>,
    /// The last history row about this content is a double fault.
    pub in_double_fault: bool,
    /// Consecutive rounds (this one included) the primary was starting up.
    pub starting_rounds: u32,
    /// The primary's WAL flush position when synchronous replication was
    /// last turned on; the mirror must have flushed it before the pair counts
    /// as synchronized. None when not known (turn it on again to learn it).
    pub sync_from_lsn: Option<u64>,
    /// How long the primary's stream to the mirror has had WAL to flush
    /// without its flush position moving ([`FlushWatch`]); None while it
    /// flushes or has nothing to flush.
    pub mirror_flush_stalled_for: Option<Duration>,
    /// Segment operations of earlier plans, after their catalog write, that
    /// have not succeeded yet; the worker keeps them while the content's rows
    /// stay as that write left them.
    pub unfinished: Vec<SegmentOp>,
    /// The down member was already fenced (and its history row written)
    /// since it last stopped answering as a writable primary.
    pub fence_recorded: bool,
    /// The pair's database system identifier, as the catalog records it:
    /// only a server that has it is promoted, and only one that also runs
    /// in its row's data directory is fenced.
    pub system_identifier: Option<String>,
}

/// Settings the rules read.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub mirror_down_grace_period: Duration,
    /// Rounds a primary may keep answering "starting up" before it counts as failed.
    pub max_starting_rounds: u32,
}

/// Named, small actions; the worker turns each into a [`Plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Nothing, but logged as a WARNING every round: the DBA must look.
    Warn,
    EnableSyncRep,
    MarkSynchronized,
    MarkMirrorDown,
    DisableSyncRep,
    FailOver,
    RepeatPromotion,
    RecordDoubleFault,
    ClearDoubleFault,
    /// Stop a member that is down in the catalog but writable, at once.
    Fence,
    /// Retry the segment operations an earlier plan left unfinished.
    FinishSteps,
}

/// When the content is looked at again after a rule fired without
/// changing anything: at the next round, or when the mirror's grace period
/// ends (so a mirror gone is marked down on time, not a round late).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextLook {
    Round,
    GraceEnd,
}

/// One row of the decision table.
pub struct Rule {
    pub name: &'static str,
    /// Why the rule exists; logged when it fires.
    pub reason: &'static str,
    pub when: fn(&Observation, &Settings) -> bool,
    pub action: Action,
    pub next_look: NextLook,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

// Predicates, each a plain question about the observation.

fn primary_alive(o: &Observation) -> Option<&InstanceProbe> {
    match &o.primary_health {
        PrimaryHealth::Alive(p) => Some(p),
        _ => None,
    }
}

fn primary_writable(o: &Observation) -> Option<&InstanceProbe> {
    primary_alive(o).filter(|p| !p.in_recovery)
}

fn primary_failed(o: &Observation, s: &Settings) -> bool {
    match o.primary_health {
        PrimaryHealth::Alive(_) | PrimaryHealth::Refusing(_) => false,
        PrimaryHealth::StartingUp(_) => o.starting_rounds > s.max_starting_rounds,
        PrimaryHealth::Unreachable(_) => true,
    }
}

/// The server that answered is one of this pair's members: it has the
/// pair's database system identifier.
fn of_the_pair(o: &Observation, p: &InstanceProbe) -> bool {
    o.system_identifier.as_deref().is_some_and(|s| !s.is_empty() && s == p.system_identifier)
}

/// The server that answered at a row's host and port is that row's member:
/// of the pair, and running in the row's data directory.
pub fn is_member(o: &Observation, p: &InstanceProbe, row: &Segment) -> bool {
    let member =
        Member { system_identifier: o.system_identifier.as_deref().unwrap_or_default(), datadir: &row.datadir };
    member.refusal(&p.system_identifier, &p.data_directory).is_none()
}

/// The catalog's down member (a failed-over primary, a mirror marked down)
/// answers as a writable primary: a second primary sessions could commit on.
/// Only the member itself counts; another server at its host and port (a
/// rebuilt host, a reused port) is not the pair's to stop.
fn down_member_writable(o: &Observation) -> bool {
    o.mirror.status == Status::Down
        && o.mirror_probe.as_ref().is_ok_and(|m| !m.in_recovery && is_member(o, m, &o.mirror))
}

/// Something answers at the down member's host and port that is not proven
/// to be it.
fn down_member_is_another_server(o: &Observation) -> bool {
    o.mirror.status == Status::Down && o.mirror_probe.as_ref().is_ok_and(|m| !is_member(o, m, &o.mirror))
}

fn mirror_can_take_over(o: &Observation) -> bool {
    o.primary.mode == Mode::Synchronized
        && o.mirror.mode == Mode::Synchronized
        && o.mirror.status == Status::Up
        && o.mirror_probe.as_ref().is_ok_and(|m| m.in_recovery && of_the_pair(o, m))
}

/// The stream to the mirror as a writable primary reports it.
pub fn mirror_stream(health: &PrimaryHealth) -> Option<&crate::probe::Replication> {
    match health {
        PrimaryHealth::Alive(p) if !p.in_recovery => p.mirror_replication(),
        _ => None,
    }
}

fn stream(o: &Observation) -> Option<&crate::probe::Replication> {
    mirror_stream(&o.primary_health)
}

fn streaming(o: &Observation) -> bool {
    stream(o).is_some_and(|r| r.state == "streaming")
}

fn sync_rep_on(o: &Observation) -> bool {
    primary_writable(o).is_some_and(|p| !p.synchronous_standby_names.is_empty())
}

fn pair_marked_synchronized(o: &Observation) -> bool {
    o.primary.mode == Mode::Synchronized && o.mirror.mode == Mode::Synchronized
}

fn mirror_flushed_sync_point(o: &Observation) -> bool {
    let flushed = stream(o).and_then(|r| r.flush_lsn.as_deref()).and_then(parse_lsn);
    matches!((flushed, o.sync_from_lsn), (Some(f), Some(from)) if f >= from)
}

/// Follows the flush position the primary reports for its mirror's
/// stream, round after round, to tell a mirror that hangs (a stopped
/// postmaster, a frozen host: the walsender keeps its connection until
/// wal_sender_timeout) from one that is merely slow.
#[derive(Debug, Clone, Default)]
pub struct FlushWatch {
    flushed: Option<u64>,
    /// When the current flush position was first seen with WAL to flush.
    seen_behind: Option<Instant>,
}

impl FlushWatch {
    /// Takes one round's stream (None: no stream) as the primary reported
    /// it at `now`, and returns since when the stream has had WAL to flush
    /// with no flush progress: from the first report of the position it
    /// still stands at, so the stall is never counted longer than seen.
    pub fn observe(&mut self, stream: Option<&crate::probe::Replication>, now: Instant) -> Option<Instant> {
        let Some(r) = stream else {
            *self = FlushWatch::default();
            return None;
        };
        let flushed = r.flush_lsn.as_deref().and_then(parse_lsn);
        let advanced = flushed.is_some() && flushed > self.flushed;
        let behind = r.has_wal_to_flush();
        if flushed.is_some() {
            self.flushed = flushed;
        }
        if !behind {
            self.seen_behind = None;
            return None;
        }
        if advanced {
            self.seen_behind = Some(now);
            return None;
        }
        Some(*self.seen_behind.get_or_insert(now))
    }
}

/// The decision table. Order matters: the first rule whose `when` holds wins.
pub const RULES: &[Rule] = &[
    // The coordinator's own pair: the service watches its standby like a
    // mirror (marked down, synchronous replication off, marked
    // synchronized), but never promotes or stops either member of it.
    Rule {
        name: "old_coordinator_writable",
        reason: "the coordinator this one replaced (gp_activate_standby) answers as a writable primary with a lower coordinator epoch: stopping it at once (immediate shutdown) so no session commits on it",
        when: |o, _| {
            o.primary.is_coordinator()
                && down_member_writable(o)
                && primary_writable(o).zip(o.mirror_probe.as_ref().ok()).is_some_and(|(p, m)| m.coordinator_epoch < p.coordinator_epoch)
        },
        action: Action::Fence,
        next_look: NextLook::Round,
    },
    Rule {
        name: "standby_writable",
        reason: "the coordinator's standby answers as a writable primary (activated, or started without standby.signal): this coordinator neither stops nor marks it over that; the DBA must decide which coordinator is the cluster's",
        when: |o, _| o.primary.is_coordinator() && o.mirror_probe.as_ref().is_ok_and(|m| !m.in_recovery),
        action: Action::Warn,
        next_look: NextLook::Round,
    },
    Rule {
        name: "coordinator_not_answering",
        reason: "the coordinator does not answer its own probe at its catalog host and port: the service never promotes the standby (gp_activate_standby() is the DBA's call); check the coordinator's row and pg_hba.conf",
        when: |o, _| o.primary.is_coordinator() && !matches!(o.primary_health, PrimaryHealth::Alive(_)),
        action: Action::Warn,
        next_look: NextLook::Round,
    },
    Rule {
        name: "down_member_writable",
        reason: "a member that is down in the catalog answers as a writable primary (failed over while hung, then resumed, or started by hand): stopping it at once (immediate shutdown) so no session commits on it",
        when: |o, _| down_member_writable(o),
        action: Action::Fence,
        next_look: NextLook::Round,
    },
    Rule {
        name: "double_fault_cleared",
        reason: "the primary answers again after a double fault: the content is available again",
        when: |o, _| o.in_double_fault && primary_alive(o).is_some(),
        action: Action::ClearDoubleFault,
        next_look: NextLook::Round,
    },
    Rule {
        name: "promotion_unfinished",
        reason: "the acting primary is still in recovery while its peer is down: its promotion did not finish, promoting it again",
        when: |o, _| primary_alive(o).is_some_and(|p| p.in_recovery && of_the_pair(o, p)) && o.mirror.status == Status::Down,
        action: Action::RepeatPromotion,
        next_look: NextLook::Round,
    },
    Rule {
        name: "acting_primary_in_recovery",
        reason: "the acting primary is in recovery while its mirror is up in the catalog: not acting, the DBA must check this pair",
        when: |o, _| primary_alive(o).is_some_and(|p| p.in_recovery),
        action: Action::Warn,
        next_look: NextLook::Round,
    },
    Rule {
        name: "primary_starting_up",
        reason: "the primary is restarting or in crash recovery: no failover while it recovers",
        when: |o, s| matches!(o.primary_health, PrimaryHealth::StartingUp(_)) && !primary_failed(o, s),
        action: Action::Nothing,
        next_look: NextLook::Round,
    },
    Rule {
        name: "primary_refuses_probe",
        reason: "the primary answers but refuses the probe (authentication, pg_hba.conf, connection slots, shutting down): it is alive, no failover; let the coordinator's superuser in",
        when: |o, _| matches!(o.primary_health, PrimaryHealth::Refusing(_)),
        action: Action::Warn,
        next_look: NextLook::Round,
    },
    Rule {
        name: "primary_failed_mirror_in_sync",
        reason: "the primary is unreachable after every retry and its mirror was in sync: promoting the mirror",
        when: |o, s| primary_failed(o, s) && mirror_can_take_over(o),
        action: Action::FailOver,
        next_look: NextLook::Round,
    },
    Rule {
        name: "double_fault",
        reason: "the primary is unreachable and its mirror is not in sync or not up: no promotion, it could lose acknowledged commits",
        when: |o, s| primary_failed(o, s) && !o.in_double_fault,
        action: Action::RecordDoubleFault,
        next_look: NextLook::Round,
    },
    Rule {
        name: "double_fault_persists",
        reason: "the content is still in double fault: waiting for its primary",
        when: |o, s| primary_failed(o, s),
        action: Action::Nothing,
        next_look: NextLook::Round,
    },
    Rule {
        name: "steps_unfinished",
        reason: "segment operations of an earlier decision failed after its catalog change (synchronous replication off, the slot for the old primary): retrying them",
        when: |o, _| primary_writable(o).is_some() && !o.unfinished.is_empty(),
        action: Action::FinishSteps,
        next_look: NextLook::Round,
    },
    Rule {
        name: "mirror_down_sync_rep_on",
        reason: "the mirror is down in the catalog but its primary still waits for a synchronous standby: turning synchronous replication off",
        when: |o, _| o.mirror.status == Status::Down && sync_rep_on(o),
        action: Action::DisableSyncRep,
        next_look: NextLook::Round,
    },
    Rule {
        name: "down_member_is_another_server",
        reason: "a server that is not proven to be the down member (another database system identifier, or another data directory) answers at its host and port: it is left alone, never fenced; the member's recovery in place needs that port",
        when: |o, _| down_member_is_another_server(o),
        action: Action::Warn,
        next_look: NextLook::Round,
    },
    Rule {
        name: "mirror_down",
        reason: "the mirror is down in the catalog: it stays down until a recovery brings it back",
        when: |o, _| o.mirror.status == Status::Down,
        action: Action::Nothing,
        next_look: NextLook::Round,
    },
    Rule {
        name: "mirror_gone_within_grace",
        reason: "the primary reports no stream to its mirror, within the grace period: waiting",
        when: |o, s| stream(o).is_none() && o.mirror_gone_for.is_none_or(|g| g < s.mirror_down_grace_period),
        action: Action::Nothing,
        next_look: NextLook::GraceEnd,
    },
    Rule {
        name: "mirror_gone",
        reason: "the primary has reported no stream to its mirror for longer than the grace period: marking the mirror down and turning synchronous replication off so waiting commits complete",
        when: |o, _| stream(o).is_none(),
        action: Action::MarkMirrorDown,
        next_look: NextLook::Round,
    },
    Rule {
        name: "mirror_stalled",
        reason: "the mirror does not answer and its stream has had WAL to flush without progress for longer than the grace period (a hung mirror): marking the mirror down and turning synchronous replication off so waiting commits complete",
        when: |o, s| {
            stream(o).is_some()
                && o.mirror_probe.is_err()
                && o.mirror_flush_stalled_for.is_some_and(|d| d >= s.mirror_down_grace_period)
        },
        action: Action::MarkMirrorDown,
        next_look: NextLook::Round,
    },
    Rule {
        name: "mirror_caught_up",
        reason: "the mirror streams and has caught up but is not the synchronous standby: turning synchronous replication on",
        when: |o, _| {
            streaming(o)
                && (stream(o).is_some_and(|r| r.sync_state != "sync")
                    || (!pair_marked_synchronized(o) && o.sync_from_lsn.is_none()))
        },
        action: Action::EnableSyncRep,
        next_look: NextLook::Round,
    },
    Rule {
        name: "mirror_synchronized",
        reason: "the mirror is the synchronous standby and has flushed all WAL from before synchronous replication was on: marking the pair synchronized",
        when: |o, _| streaming(o) && !pair_marked_synchronized(o) && mirror_flushed_sync_point(o),
        action: Action::MarkSynchronized,
        next_look: NextLook::Round,
    },
    Rule {
        name: "healthy_or_catching_up",
        reason: "nothing to change",
        when: |_, _| true,
        action: Action::Nothing,
        next_look: NextLook::Round,
    },
];

/// A segment operation carried out over a connection to the segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentOp {
    /// synchronous_standby_names = gp_walreceiver, reload, wait until the
    /// stream is 'sync', and report the WAL flush position then.
    EnableSyncRep(Segment),
    /// synchronous_standby_names = '', reload: waiting commits complete.
    DisableSyncRep(Segment),
    /// pg_promote(), waiting for it to finish.
    Promote(Segment),
    /// The slot the old primary will stream from once recovered.
    CreateSlot(Segment),
    /// Immediate shutdown (SIGQUIT to its postmaster, sent through its own
    /// connection) of a writable member that is down in the catalog. Not a
    /// fast shutdown: its checkpoint would recycle WAL pg_rewind needs.
    Fence(Segment),
}

impl SegmentOp {
    /// Kept for a retry when it fails after the catalog write. A fence is
    /// not: the rule decides it afresh from every round's probe.
    pub fn retried(&self) -> bool {
        !matches!(self, SegmentOp::Fence(_))
    }

    /// The same step on the same segment, whatever its row looked like
    /// when the step was planned (a promoted mirror's row changes role).
    pub fn same_step(&self, other: &SegmentOp) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other) && self.segment().dbid == other.segment().dbid
    }

    pub fn segment(&self) -> &Segment {
        match self {
            SegmentOp::EnableSyncRep(s)
            | SegmentOp::DisableSyncRep(s)
            | SegmentOp::Promote(s)
            | SegmentOp::CreateSlot(s)
            | SegmentOp::Fence(s) => s,
        }
    }
}

/// What to do for one content.
#[derive(Debug, Clone)]
pub struct Plan {
    pub rule: &'static Rule,
    pub before_catalog: Vec<SegmentOp>,
    /// Rows whose role, status or mode change, each with its history row and event.
    pub catalog: Vec<History>,
    /// Further history rows about rows that stay as they are, e.g. double faults.
    pub history: Vec<History>,
    pub after_catalog: Vec<SegmentOp>,
    /// Log at WARNING rather than LOG.
    pub warning: bool,
}

impl Plan {
    /// The content's two rows once the catalog write is done, by dbid: what
    /// the next rounds must find for unfinished operations to still apply.
    pub fn rows_after(&self, o: &Observation) -> Vec<Segment> {
        let mut rows: Vec<Segment> = [&o.primary, &o.mirror]
            .into_iter()
            .map(|row| self.catalog.iter().map(|c| &c.row).find(|c| c.dbid == row.dbid).unwrap_or(row).clone())
            .collect();
        rows.sort_by_key(|s| s.dbid);
        rows
    }

    pub fn changes_anything(&self) -> bool {
        !(self.before_catalog.is_empty()
            && self.catalog.is_empty()
            && self.history.is_empty()
            && self.after_catalog.is_empty())
    }

    /// One log line: the content, what was seen, the rule and why.
    pub fn log_line(&self, o: &Observation) -> String {
        let mirror = match &o.mirror_probe {
            Ok(m) if m.in_recovery => "answers, in recovery".to_string(),
            Ok(_) => "answers, not in recovery".to_string(),
            Err(e) => format!("unreachable ({e})"),
        };
        let stream = stream(o).map_or("none".to_string(), |r| format!("{} {}", r.state, r.sync_state));
        format!(
            "FTS: content {}: primary dbid {} at {} {}; mirror dbid {} at {} {}; stream {}; rule {}: {}",
            o.primary.content,
            o.primary.dbid,
            o.primary.location(),
            o.primary_health.describe(),
            o.mirror.dbid,
            o.mirror.location(),
            mirror,
            stream,
            self.rule.name,
            self.rule.reason
        )
    }
}

/// Who the history texts name, as Greenplum's FTS writes them.
const PROGRAM: &str = "FTS";

fn with(s: &Segment, role: Role, status: Status, mode: Mode) -> Segment {
    Segment { role, status, mode, ..s.clone() }
}

/// Rows that differ from the catalog, so unchanged rows get no history.
fn changed(rows: Vec<(Segment, &Segment, SegmentEvent)>) -> Vec<History> {
    rows.into_iter().filter(|(new, old, _)| new != *old).map(|(new, _, e)| History::update(PROGRAM, e, new)).collect()
}

/// Decides what to do for one content.
pub fn decide(o: &Observation, s: &Settings) -> Plan {
    let rule = RULES.iter().find(|r| (r.when)(o, s)).unwrap_or(&RULES[RULES.len() - 1]);
    let (p, m) = (&o.primary, &o.mirror);
    let mut plan =
        Plan { rule, before_catalog: vec![], catalog: vec![], history: vec![], after_catalog: vec![], warning: false };
    match rule.action {
        Action::Nothing => {}
        Action::Warn => plan.warning = true,
        Action::EnableSyncRep => plan.before_catalog.push(SegmentOp::EnableSyncRep(p.clone())),
        Action::MarkSynchronized => {
            plan.catalog = changed(vec![
                (with(p, Role::Primary, Status::Up, Mode::Synchronized), p, SegmentEvent::SyncOn),
                (with(m, Role::Mirror, Status::Up, Mode::Synchronized), m, SegmentEvent::SyncOn),
            ])
        }
        Action::MarkMirrorDown => {
            // The primary's row changes only when the pair was in sync.
            plan.catalog = changed(vec![
                (with(p, Role::Primary, Status::Up, Mode::NotInSync), p, SegmentEvent::SyncOff),
                (with(m, Role::Mirror, Status::Down, Mode::NotInSync), m, SegmentEvent::MirrorDown),
            ]);
            plan.after_catalog.push(SegmentOp::DisableSyncRep(p.clone()));
        }
        Action::DisableSyncRep => plan.after_catalog.push(SegmentOp::DisableSyncRep(p.clone())),
        Action::FailOver => {
            // The catalog first, as Greenplum does: if the promotion is lost,
            // the next round finds the new primary in recovery and promotes again.
            plan.catalog = [
                with(p, Role::Mirror, Status::Down, Mode::NotInSync),
                with(m, Role::Primary, Status::Up, Mode::NotInSync),
            ]
            .into_iter()
            .map(|row| History::update(PROGRAM, SegmentEvent::Failover, row))
            .collect();
            plan.after_catalog = vec![
                SegmentOp::Promote(m.clone()),
                SegmentOp::DisableSyncRep(m.clone()),
                SegmentOp::CreateSlot(m.clone()),
            ];
        }
        Action::RepeatPromotion => {
            plan.after_catalog = vec![
                SegmentOp::Promote(p.clone()),
                SegmentOp::DisableSyncRep(p.clone()),
                SegmentOp::CreateSlot(p.clone()),
            ];
        }
        Action::RecordDoubleFault => {
            plan.history.push(History {
                row: p.clone(),
                event: SegmentEvent::DoubleFault,
                text: format!("{PROGRAM}: double fault detected for content id {}", p.content),
            });
            plan.warning = true;
        }
        Action::ClearDoubleFault => plan.history.push(History {
            row: p.clone(),
            event: SegmentEvent::DoubleFaultEnd,
            text: format!("{PROGRAM}: content id {} is out of double fault, dbid {} is up", p.content, p.dbid),
        }),
        Action::Fence => {
            // Once per episode in the history; the shutdown every round it answers.
            if !o.fence_recorded {
                plan.history.push(History {
                    row: m.clone(),
                    event: SegmentEvent::Fenced,
                    text: format!(
                        "{PROGRAM}: dbid {} is down in the catalog but answers as a writable primary: stopping it (fencing)",
                        m.dbid
                    ),
                });
            }
            plan.after_catalog.push(SegmentOp::Fence(m.clone()));
            plan.warning = true;
        }
        Action::FinishSteps => plan.after_catalog = o.unfinished.clone(),
    }
    plan
}

/// Parses an LSN such as "16/B374D848".
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Replication;

    fn seg(dbid: i16, role: Role, mode: Mode, status: Status) -> Segment {
        Segment {
            dbid,
            content: 0,
            role,
            preferred_role: role,
            mode,
            status,
            port: 7000 + dbid as i32,
            hostname: "localhost".into(),
            address: "127.0.0.1".into(),
            datadir: format!("/d/{dbid}"),
        }
    }

    fn primary_probe(stream: Option<(&str, &str, &str)>, sync_names: &str) -> InstanceProbe {
        InstanceProbe {
            system_identifier: "42".into(),
            data_directory: "/d/2".into(),
            synchronous_standby_names: sync_names.into(),
            replication: stream
                .map(|(state, sync, flush)| Replication {
                    application_name: "gp_walreceiver".into(),
                    slot_name: Some(crate::probe::SLOT_NAME.into()),
                    state: state.into(),
                    sync_state: sync.into(),
                    flush_lsn: Some(flush.into()),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    /// A server of the pair (system identifier 42) running in `datadir`.
    fn member(in_recovery: bool, datadir: &str) -> InstanceProbe {
        InstanceProbe {
            in_recovery,
            system_identifier: "42".into(),
            data_directory: datadir.into(),
            ..Default::default()
        }
    }

    fn mirror_probe() -> ProbeResult {
        Ok(InstanceProbe {
            in_recovery: true,
            system_identifier: "42".into(),
            data_directory: "/d/5".into(),
            ..Default::default()
        })
    }

    /// A synchronized, healthy pair.
    fn healthy() -> Observation {
        Observation {
            primary: seg(2, Role::Primary, Mode::Synchronized, Status::Up),
            mirror: seg(5, Role::Mirror, Mode::Synchronized, Status::Up),
            primary_health: PrimaryHealth::Alive(primary_probe(
                Some(("streaming", "sync", "0/3000000")),
                "gp_walreceiver",
            )),
            mirror_probe: mirror_probe(),
            mirror_gone_for: None,
            in_double_fault: false,
            starting_rounds: 0,
            sync_from_lsn: None,
            mirror_flush_stalled_for: None,
            unfinished: vec![],
            fence_recorded: false,
            system_identifier: Some("42".into()),
        }
    }

    const SETTINGS: Settings = Settings { mirror_down_grace_period: Duration::from_secs(30), max_starting_rounds: 5 };

    fn rule(o: &Observation) -> &'static str {
        decide(o, &SETTINGS).rule.name
    }

    /// A plan's history rows as (dbid, event, text).
    fn notes(history: &[History]) -> Vec<(i16, &'static str, String)> {
        history.iter().map(|h| (h.row.dbid, h.event.as_str(), h.text.clone())).collect()
    }

    #[test]
    fn healthy_pair_changes_nothing() {
        let plan = decide(&healthy(), &SETTINGS);
        assert_eq!(plan.rule.name, "healthy_or_catching_up");
        assert!(!plan.changes_anything());
    }

    #[test]
    fn lost_mirror_waits_for_the_grace_period_then_goes_down() {
        let mut o = healthy();
        o.primary_health = PrimaryHealth::Alive(primary_probe(None, "gp_walreceiver"));
        o.mirror_probe = Err("connection refused".into());
        o.mirror_gone_for = Some(Duration::from_secs(10));
        assert_eq!(rule(&o), "mirror_gone_within_grace");
        o.mirror_gone_for = Some(Duration::from_secs(30));
        let plan = decide(&o, &SETTINGS);
        assert_eq!(plan.rule.name, "mirror_gone");
        assert_eq!(
            notes(&plan.catalog),
            vec![
                (2, "sync_off", "FTS: update role, status, and mode for dbid 2 with contentid 0 to p, u, and n".into()),
                (
                    5,
                    "mirror_down",
                    "FTS: update role, status, and mode for dbid 5 with contentid 0 to m, d, and n".into()
                ),
            ]
        );
        // The catalog says 'n' before synchronous replication is turned off.
        assert!(plan.before_catalog.is_empty());
        assert_eq!(plan.after_catalog, vec![SegmentOp::DisableSyncRep(o.primary.clone())]);
        // A pair that was not in sync: only the mirror's row changes.
        o.primary.mode = Mode::NotInSync;
        o.mirror.mode = Mode::NotInSync;
        let plan = decide(&o, &SETTINGS);
        assert_eq!(notes(&plan.catalog).iter().map(|n| (n.0, n.1)).collect::<Vec<_>>(), vec![(5, "mirror_down")]);
    }

    #[test]
    fn the_coordinators_standby_is_marked_down_like_a_mirror_but_never_promoted_or_stopped() {
        let coordinator_pair = || {
            let mut o = healthy();
            o.primary.content = -1;
            o.mirror.content = -1;
            o
        };
        // Gone past the grace period: down, and the coordinator's commits stop waiting for it.
        let mut o = coordinator_pair();
        o.primary_health = PrimaryHealth::Alive(primary_probe(None, "gp_walreceiver"));
        o.mirror_probe = Err("connection refused".into());
        o.mirror_gone_for = Some(Duration::from_secs(30));
        let plan = decide(&o, &SETTINGS);
        assert_eq!(plan.rule.action, Action::MarkMirrorDown);
        assert_eq!(plan.after_catalog, vec![SegmentOp::DisableSyncRep(o.primary.clone())]);
        // The coordinator not answering its own probe: no promotion of the standby.
        let mut o = coordinator_pair();
        o.primary_health = PrimaryHealth::Unreachable("timeout".into());
        let plan = decide(&o, &SETTINGS);
        assert_eq!(plan.rule.action, Action::Warn);
        assert!(!plan.changes_anything());
        // A standby down in the catalog that answers writable (activated elsewhere): not fenced.
        let mut o = coordinator_pair();
        o.mirror.status = Status::Down;
        o.mirror_probe = Ok(member(false, "/d/5"));
        let plan = decide(&o, &SETTINGS);
        assert_eq!(plan.rule.action, Action::Warn);
        assert!(!plan.changes_anything());
        // The coordinator this one replaced, with a lower epoch: fenced.
        if let PrimaryHealth::Alive(p) = &mut o.primary_health {
            p.coordinator_epoch = 2;
        }
        assert_eq!(decide(&o, &SETTINGS).rule.action, Action::Fence);
        o.mirror_probe = Ok(InstanceProbe { coordinator_epoch: 2, ..member(false, "/d/5") });
        assert_eq!(decide(&o, &SETTINGS).rule.action, Action::Warn, "an equal epoch is not an older coordinator");
        // The same for a segment's pair is fenced.
        let mut o = healthy();
        o.mirror.status = Status::Down;
        o.mirror_probe = Ok(member(false, "/d/5"));
        assert_eq!(decide(&o, &SETTINGS).rule.action, Action::Fence);
    }

    #[test]
    fn other_walsenders_are_not_the_mirror() {
        let mut o = healthy();
        let foreign = |app: &str, slot: Option<&str>| Replication {
            application_name: app.into(),
            slot_name: slot.map(Into::into),
            state: "streaming".into(),
            sync_state: "async".into(),
            ..Default::default()
        };
        o.primary_health = PrimaryHealth::Alive(InstanceProbe {
            synchronous_standby_names: "gp_walreceiver".into(),
            replication: vec![
                foreign("pg_receivewal", Some("archive")),
                foreign("sub", Some("sub")),
                foreign("gp_walreceiver", None),
            ],
            ..Default::default()
        });
        o.mirror_probe = Err("connection refused".into());
        o.mirror_gone_for = Some(Duration::from_secs(31));
        assert_eq!(rule(&o), "mirror_gone");
    }

    #[test]
    fn down_mirror_stays_down_but_never_blocks_commits() {
        let mut o = healthy();
        o.mirror.status = Status::Down;
        o.mirror.mode = Mode::NotInSync;
        o.primary.mode = Mode::NotInSync;
        // It answers and even streams again: still down until recovered.
        assert_eq!(rule(&o), "mirror_down_sync_rep_on");
        o.primary_health = PrimaryHealth::Alive(primary_probe(Some(("streaming", "async", "0/1")), ""));
        let plan = decide(&o, &SETTINGS);
        assert_eq!(plan.rule.name, "mirror_down");
        assert!(!plan.changes_anything());
    }

    #[test]
    fn failover_only_from_an_in_sync_mirror() {
        let mut o = healthy();
        o.primary_health = PrimaryHealth::Unreachable("connection refused".into());
        let plan = decide(&o, &SETTINGS);
        assert_eq!(plan.rule.name, "primary_failed_mirror_in_sync");
        assert_eq!(
            notes(&plan.catalog),
            vec![
                (2, "failover", "FTS: update role, status, and mode for dbid 2 with contentid 0 to m, d, and n".into()),
                (5, "failover", "FTS: update role, status, and mode for dbid 5 with contentid 0 to p, u, and n".into()),
            ]
        );
        assert_eq!(
            plan.after_catalog,
            vec![
                SegmentOp::Promote(o.mirror.clone()),
                SegmentOp::DisableSyncRep(o.mirror.clone()),
                SegmentOp::CreateSlot(o.mirror.clone()),
            ]
        );
        assert_eq!(plan.catalog[0].row.preferred_role, Role::Primary, "preferred roles never change");

        // Not in sync, down, or unreachable: a double fault, recorded once.
        for spoil in [
            |o: &mut Observation| o.mirror.mode = Mode::NotInSync,
            |o: &mut Observation| o.mirror.status = Status::Down,
            |o: &mut Observation| o.mirror_probe = Err("timeout".into()),
            |o: &mut Observation| o.primary.mode = Mode::NotInSync,
        ] {
            let mut o = o.clone();
            spoil(&mut o);
            let plan = decide(&o, &SETTINGS);
            assert_eq!(plan.rule.name, "double_fault");
            assert!(plan.catalog.is_empty() && plan.after_catalog.is_empty());
            assert_eq!(
                notes(&plan.history),
                vec![(2, "double_fault", "FTS: double fault detected for content id 0".into())]
            );
            assert!(plan.warning);
            o.in_double_fault = true;
            assert_eq!(rule(&o), "double_fault_persists");
            o.primary_health = PrimaryHealth::Alive(primary_probe(None, ""));
            let plan = decide(&o, &SETTINGS);
            assert_eq!(plan.rule.name, "double_fault_cleared");
            assert_eq!(
                notes(&plan.history),
                vec![(2, "double_fault_end", "FTS: content id 0 is out of double fault, dbid 2 is up".into())]
            );
        }
    }

    #[test]
    fn starting_up_primary_is_given_time() {
        let mut o = healthy();
        o.primary_health =
            PrimaryHealth::from_failure("FATAL: the database system is starting up".into(), Some("57P03"));
        o.starting_rounds = 1;
        assert_eq!(rule(&o), "primary_starting_up");
        o.starting_rounds = 6;
        assert_eq!(rule(&o), "primary_failed_mirror_in_sync");
        assert!(matches!(
            PrimaryHealth::from_failure("error connecting to server: Connection refused".into(), None),
            PrimaryHealth::Unreachable(_)
        ));
    }

    #[test]
    fn primary_refusing_the_probe_is_alive_and_never_failed_over() {
        let refusals = [
            ("FATAL: password authentication failed for user \"gpadmin\"", Some("28P01")),
            ("FATAL: no pg_hba.conf entry for host \"127.0.0.1\", user \"gpadmin\"", Some("28000")),
            ("FATAL: pg_hba.conf rejects connection for host \"127.0.0.1\"", Some("28000")),
            ("FATAL: sorry, too many clients already", Some("53300")),
            ("FATAL: remaining connection slots are reserved for non-replication superuser connections", Some("53300")),
            ("FATAL: the database system is shutting down", Some("57P03")),
            // Without a SQLSTATE (a proxy, an old server), the text decides.
            ("FATAL: sorry, too many clients already", None),
            ("FATAL: password authentication failed for user \"gpadmin\"", None),
            // A SQLSTATE alone is enough, whatever the text's language.
            ("FATAL: Passwort-Authentifizierung fehlgeschlagen", Some("28P01")),
        ];
        for (text, code) in refusals {
            let health = PrimaryHealth::from_failure(text.into(), code);
            assert!(matches!(health, PrimaryHealth::Refusing(_)), "{text}: {health:?}");
            let mut o = healthy();
            o.primary_health = health;
            for _ in 0..2 {
                let plan = decide(&o, &SETTINGS);
                assert_eq!(plan.rule.name, "primary_refuses_probe", "{text}");
                assert!(plan.warning && !plan.changes_anything());
                // Also with a mirror that could take over, or in a double fault.
                o.in_double_fault = true;
            }
        }
        for (text, code) in [
            ("error connecting to server: Connection refused (os error 111)", None),
            ("no answer within 1 s", None),
            ("FATAL: the database system is starting up", Some("57P03")),
            ("FATAL: terminating connection due to administrator command", Some("57P01")),
        ] {
            let health = PrimaryHealth::from_failure(text.into(), code);
            assert!(!matches!(health, PrimaryHealth::Refusing(_)), "{text}: {health:?}");
        }
    }

    #[test]
    fn returning_mirror_is_synchronized_in_two_steps() {
        let mut o = healthy();
        o.primary.mode = Mode::NotInSync;
        o.mirror.mode = Mode::NotInSync;
        o.primary_health = PrimaryHealth::Alive(primary_probe(Some(("catchup", "async", "0/1")), ""));
        assert_eq!(rule(&o), "healthy_or_catching_up");

        o.primary_health = PrimaryHealth::Alive(primary_probe(Some(("streaming", "async", "0/2000")), ""));
        let plan = decide(&o, &SETTINGS);
        assert_eq!(plan.rule.name, "mirror_caught_up");
        assert_eq!(plan.before_catalog, vec![SegmentOp::EnableSyncRep(o.primary.clone())]);

        // Sync, but the flush point from when sync rep came on is unknown: learn it.
        o.primary_health = PrimaryHealth::Alive(primary_probe(Some(("streaming", "sync", "0/2000")), "gp_walreceiver"));
        assert_eq!(rule(&o), "mirror_caught_up");
        o.sync_from_lsn = Some(0x3000);
        assert_eq!(rule(&o), "healthy_or_catching_up", "not flushed up to the sync point yet");
        o.sync_from_lsn = Some(0x2000);
        let plan = decide(&o, &SETTINGS);
        assert_eq!(plan.rule.name, "mirror_synchronized");
        assert_eq!(plan.catalog.len(), 2);
        assert!(plan.catalog.iter().all(|c| c.row.mode == Mode::Synchronized && c.event == SegmentEvent::SyncOn));
    }

    #[test]
    fn unfinished_promotion_is_repeated() {
        let mut o = healthy();
        o.mirror.status = Status::Down;
        o.primary_health = PrimaryHealth::Alive(member(true, "/d/2"));
        let plan = decide(&o, &SETTINGS);
        assert_eq!(plan.rule.name, "promotion_unfinished");
        assert_eq!(plan.after_catalog[0], SegmentOp::Promote(o.primary.clone()));
        // A standby of another database system at its host and port is never promoted.
        o.primary_health =
            PrimaryHealth::Alive(InstanceProbe { system_identifier: "99".into(), ..member(true, "/d/2") });
        assert_eq!(rule(&o), "acting_primary_in_recovery");
        o.primary_health = PrimaryHealth::Alive(member(true, "/d/2"));
        o.mirror.status = Status::Up;
        let plan = decide(&o, &SETTINGS);
        assert_eq!(plan.rule.name, "acting_primary_in_recovery");
        assert!(plan.warning && !plan.changes_anything());
    }

    #[test]
    fn writable_down_member_is_fenced_before_anything_else() {
        // After a failover: the old primary is the catalog's down mirror.
        let mut o = healthy();
        o.primary = seg(5, Role::Primary, Mode::NotInSync, Status::Up);
        o.mirror = seg(2, Role::Mirror, Mode::NotInSync, Status::Down);
        o.primary_health = PrimaryHealth::Alive(primary_probe(None, "gp_walreceiver"));
        o.mirror_probe = Ok(member(false, "/d/2"));
        let plan = decide(&o, &SETTINGS);
        assert_eq!(plan.rule.name, "down_member_writable");
        assert!(plan.warning && plan.catalog.is_empty() && plan.before_catalog.is_empty());
        assert_eq!(plan.after_catalog, vec![SegmentOp::Fence(o.mirror.clone())]);
        assert_eq!(
            notes(&plan.history),
            vec![(
                2,
                "fenced",
                "FTS: dbid 2 is down in the catalog but answers as a writable primary: stopping it (fencing)".into()
            )]
        );
        // The next rounds stop it again, without another history row; its
        // synchronous replication is never touched (only the fence).
        o.fence_recorded = true;
        let plan = decide(&o, &SETTINGS);
        assert_eq!(plan.rule.name, "down_member_writable");
        assert!(plan.history.is_empty());
        assert_eq!(plan.after_catalog, vec![SegmentOp::Fence(o.mirror.clone())]);
        // Whatever the acting primary's state: even a dead one is not failed over to it.
        o.primary_health = PrimaryHealth::Unreachable("connection refused".into());
        assert_eq!(rule(&o), "down_member_writable");

        // In recovery (a standby being recovered) or unreachable: no fence.
        o.primary_health = PrimaryHealth::Alive(primary_probe(None, ""));
        o.mirror_probe = Ok(member(true, "/d/2"));
        assert_eq!(rule(&o), "mirror_down");
        o.mirror_probe = Err("no answer within 1 s".into());
        assert_eq!(rule(&o), "mirror_down");
        // An up mirror that is writable is the DBA's to look at, not fenced.
        o.mirror.status = Status::Up;
        o.mirror_probe = Ok(member(false, "/d/2"));
        assert_ne!(rule(&o), "down_member_writable");
    }

    #[test]
    fn a_server_that_is_not_the_down_member_is_never_fenced() {
        let mut o = healthy();
        o.primary = seg(5, Role::Primary, Mode::NotInSync, Status::Up);
        o.mirror = seg(2, Role::Mirror, Mode::NotInSync, Status::Down);
        o.primary_health = PrimaryHealth::Alive(primary_probe(None, ""));
        let strangers = [
            // A rebuilt host's own PostgreSQL on the old port.
            InstanceProbe { system_identifier: "99".into(), ..member(false, "/var/lib/postgresql/15/main") },
            // The coordinator, named with another spelling of its host.
            InstanceProbe { system_identifier: "1".into(), ..member(false, "/d/1") },
            // A copy of the pair, but in another directory (a restored backup).
            member(false, "/backup/restored"),
        ];
        for stranger in strangers {
            o.mirror_probe = Ok(stranger.clone());
            let plan = decide(&o, &SETTINGS);
            assert_eq!(plan.rule.name, "down_member_is_another_server", "{stranger:?}");
            assert!(plan.warning && !plan.changes_anything(), "{stranger:?}");
        }
        // Without a recorded system identifier nothing can be proven: no fence.
        o.system_identifier = None;
        o.mirror_probe = Ok(member(false, "/d/2"));
        assert_eq!(rule(&o), "down_member_is_another_server");
    }

    #[test]
    fn only_a_standby_of_the_pair_takes_over() {
        let mut o = healthy();
        o.primary_health = PrimaryHealth::Unreachable("connection refused".into());
        assert_eq!(rule(&o), "primary_failed_mirror_in_sync");
        o.mirror_probe = Ok(InstanceProbe { system_identifier: "99".into(), ..member(true, "/d/5") });
        assert_eq!(rule(&o), "double_fault", "another database system's standby is not promoted");
        o.mirror_probe = mirror_probe();
        o.system_identifier = None;
        assert_eq!(rule(&o), "double_fault");
    }

    /// No rule but the fence ever acts on the down member: synchronous
    /// replication is only changed on the acting primary or the promoted mirror.
    #[test]
    fn sync_rep_is_only_changed_on_the_acting_primary() {
        let mut o = healthy();
        o.mirror.status = Status::Down;
        for health in [
            PrimaryHealth::Alive(primary_probe(None, "gp_walreceiver")),
            PrimaryHealth::Alive(primary_probe(Some(("streaming", "async", "0/1")), "")),
        ] {
            o.primary_health = health;
            let plan = decide(&o, &SETTINGS);
            for op in plan.before_catalog.iter().chain(&plan.after_catalog) {
                if let SegmentOp::EnableSyncRep(s) | SegmentOp::DisableSyncRep(s) = op {
                    assert_eq!(s.dbid, o.primary.dbid, "{}", plan.rule.name);
                }
            }
        }
    }

    #[test]
    fn hung_mirror_is_marked_down_after_the_grace_period() {
        let mut o = healthy();
        o.mirror_probe = Err("no answer within 1 s".into());
        o.mirror_flush_stalled_for = Some(Duration::from_secs(29));
        assert_eq!(rule(&o), "healthy_or_catching_up");
        o.mirror_flush_stalled_for = Some(Duration::from_secs(30));
        let plan = decide(&o, &SETTINGS);
        assert_eq!(plan.rule.name, "mirror_stalled");
        assert_eq!(plan.catalog.iter().map(|c| c.row.status).collect::<Vec<_>>(), vec![Status::Up, Status::Down]);
        assert!(plan.catalog.iter().all(|c| c.row.mode == Mode::NotInSync));
        assert_eq!(plan.after_catalog, vec![SegmentOp::DisableSyncRep(o.primary.clone())]);
        // A mirror that still answers is slow, not hung.
        o.mirror_probe = mirror_probe();
        assert_eq!(rule(&o), "healthy_or_catching_up");
    }

    #[test]
    fn flush_watch_times_only_a_stream_that_is_behind_and_stuck() {
        let stream = |flush: &str, unflushed: i64| Replication {
            flush_lsn: Some(flush.into()),
            unflushed_bytes: Some(unflushed),
            ..Default::default()
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = FlushWatch::default();
        assert_eq!(w.observe(Some(&stream("0/100", 0)), at(0)), None, "nothing to flush");
        assert_eq!(w.observe(Some(&stream("0/100", 0)), at(1)), None);
        assert_eq!(w.observe(Some(&stream("0/100", 8)), at(2)), Some(at(2)), "behind, no progress");
        assert_eq!(w.observe(Some(&stream("0/100", 16)), at(3)), Some(at(2)), "still stuck since then");
        assert_eq!(w.observe(Some(&stream("0/108", 8)), at(4)), None, "it flushed: slow, not stuck");
        assert_eq!(w.observe(Some(&stream("0/108", 8)), at(5)), Some(at(4)), "standing at 0/108 since it was seen");
        assert_eq!(w.observe(Some(&stream("0/110", 0)), at(6)), None, "caught up");
        assert_eq!(w.observe(Some(&stream("0/110", 8)), at(7)), Some(at(7)));
        assert_eq!(w.observe(None, at(8)), None, "no stream: the grace period of mirror_gone applies");
        // A new stream starts fresh, whatever the old one had flushed.
        assert_eq!(w.observe(Some(&stream("0/50", 8)), at(9)), None, "first sight of a stream counts as progress");
        assert_eq!(w.observe(Some(&stream("0/50", 8)), at(10)), Some(at(9)));
    }

    #[test]
    fn steps_left_unfinished_after_a_failover_are_retried() {
        let o = {
            let mut o = healthy();
            o.primary_health = PrimaryHealth::Unreachable("connection refused".into());
            o
        };
        let failover = decide(&o, &SETTINGS);
        assert_eq!(failover.rule.name, "primary_failed_mirror_in_sync");
        // The rows the next rounds must find: the roles switched.
        let after = failover.rows_after(&o);
        assert_eq!(
            after.iter().map(|s| (s.dbid, s.role, s.status)).collect::<Vec<_>>(),
            vec![(2, Role::Mirror, Status::Down), (5, Role::Primary, Status::Up)]
        );
        assert!(failover.after_catalog.iter().all(SegmentOp::retried));
        // A repeated promotion plans the same steps on the promoted row.
        let promoted = &after[1];
        assert!(SegmentOp::CreateSlot(o.mirror.clone()).same_step(&SegmentOp::CreateSlot(promoted.clone())));
        assert!(!SegmentOp::CreateSlot(o.mirror.clone()).same_step(&SegmentOp::Promote(promoted.clone())));
        assert!(!SegmentOp::CreateSlot(o.mirror.clone()).same_step(&SegmentOp::CreateSlot(o.primary.clone())));

        // Next round: the promoted mirror is the acting primary; the slot is missing.
        let mut next = healthy();
        next.primary = after[1].clone();
        next.mirror = after[0].clone();
        next.primary_health = PrimaryHealth::Alive(primary_probe(None, ""));
        next.mirror_probe = Err("connection refused".into());
        next.unfinished = vec![SegmentOp::CreateSlot(next.primary.clone())];
        let plan = decide(&next, &SETTINGS);
        assert_eq!(plan.rule.name, "steps_unfinished");
        assert_eq!(plan.after_catalog, next.unfinished);
        assert!(plan.catalog.is_empty() && plan.history.is_empty());
        // Not while the new primary is unreachable or still in recovery.
        next.primary_health = PrimaryHealth::Alive(member(true, "/d/5"));
        assert_eq!(rule(&next), "promotion_unfinished");
        next.primary_health = PrimaryHealth::Unreachable("connection refused".into());
        assert_ne!(rule(&next), "steps_unfinished");
        // A writable down member is fenced first, and a fence is never kept for a retry.
        next.primary_health = PrimaryHealth::Alive(primary_probe(None, ""));
        next.mirror_probe = Ok(member(false, "/d/2"));
        let fence = decide(&next, &SETTINGS);
        assert_eq!(fence.rule.name, "down_member_writable");
        assert!(!fence.after_catalog.iter().any(SegmentOp::retried));
    }

    #[test]
    fn rule_names_are_unique_and_the_last_catches_all() {
        let mut names: Vec<&str> = RULES.iter().map(|r| r.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), RULES.len());
        // The last rule is the catch-all.
        assert!((RULES[RULES.len() - 1].when)(&healthy(), &SETTINGS));
    }

    #[test]
    fn lsn_parsing() {
        assert_eq!(parse_lsn("0/3000000"), Some(0x3000000));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(parse_lsn("junk"), None);
    }

    #[test]
    fn log_line_says_what_was_seen_and_why() {
        let o = healthy();
        let line = decide(&o, &SETTINGS).log_line(&o);
        assert_eq!(
            line,
            "FTS: content 0: primary dbid 2 at localhost:7002 answers; mirror dbid 5 at localhost:7005 \
             answers, in recovery; stream streaming sync; rule healthy_or_catching_up: nothing to change"
        );
    }
}
