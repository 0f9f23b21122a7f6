//! The recovery job state machine, as one table per kind of job (like the
//! fault tolerance rules in `fts.rs` and pg_auto_failover's `KeeperFSM[]`).
//!
//! Each row is a phase: the one side effect it performs, the phase that
//! follows when it succeeds, how a failure in it (or a crash while it runs)
//! is backed out, and a comment that is both documentation and log text.
//! The worker commits a job's phase *before* the phase's side effect starts,
//! and a catalog change together with the phase that follows it, so after a
//! crash the phase on record names every effect that may have happened, and
//! the backout of that phase (which probes what is really there) applies.

use std::time::{Duration, Instant};

use crate::error::CoreError;
use crate::recovery::RecoveryMode;

named_enum!(
    /// A job's lifecycle state (gp_recovery_job.state).
    JobState, "job state", "must be one of queued, running, succeeded, failed, canceled", {
        Queued => "queued",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Canceled => "canceled",
    }
);

named_enum!(
    /// What kind of job runs: the recovery mode, with a relocation (a full
    /// copy to a new place) apart from a full recovery in place.
    JobKind, "job kind", "must be one of incremental, differential, full, relocation, rebalance", {
        Incremental => "incremental",
        Differential => "differential",
        Full => "full",
        Relocation => "relocation",
        Rebalance => "rebalance",
    }
);

/// The modes an auto job tries, in order.
pub const AUTO_ORDER: [JobKind; 3] = [JobKind::Incremental, JobKind::Differential, JobKind::Full];

impl JobKind {
    /// The kind of a job of `mode`; an auto job starts incremental.
    pub fn of(mode: RecoveryMode, relocate: bool) -> JobKind {
        Self::attempt(mode, relocate, 0)
    }

    /// The kind an auto job runs after `abandoned` attempts; other modes
    /// have one kind.
    pub fn attempt(mode: RecoveryMode, relocate: bool, abandoned: usize) -> JobKind {
        match mode {
            RecoveryMode::Auto if relocate => JobKind::Relocation,
            RecoveryMode::Auto => AUTO_ORDER[abandoned.min(AUTO_ORDER.len() - 1)],
            RecoveryMode::Incremental => JobKind::Incremental,
            RecoveryMode::Differential => JobKind::Differential,
            RecoveryMode::Full if relocate => JobKind::Relocation,
            RecoveryMode::Full => JobKind::Full,
            RecoveryMode::Rebalance => JobKind::Rebalance,
        }
    }

    /// The recovery mode a job of this kind runs (a relocation is a full copy).
    pub fn mode(self) -> RecoveryMode {
        match self {
            JobKind::Incremental => RecoveryMode::Incremental,
            JobKind::Differential => RecoveryMode::Differential,
            JobKind::Full | JobKind::Relocation => RecoveryMode::Full,
            JobKind::Rebalance => RecoveryMode::Rebalance,
        }
    }
}

named_enum!(
    /// A job's phase (gp_recovery_job.phase).
    Phase, "job phase", "not a phase of gp_recovery_phases()", {
        Queued => "queued",
        CheckingHost => "checking host",
        Stopping => "stopping",
        CheckingSource => "checking source",
        CheckingPair => "checking pair",
        Rewinding => "rewinding",
        Copying => "copying",
        Swapping => "swapping",
        SwitchingRoles => "switching roles",
        Promoting => "promoting",
        Configuring => "configuring",
        Starting => "starting",
        Connecting => "connecting",
        MarkingUp => "marking up",
        CatchingUp => "catching up",
        Synchronizing => "synchronizing",
        RemovingOld => "removing old",
        Done => "done",
    }
);

/// How a failure in a phase, or a crash while it ran, is undone. Every
/// backout probes what is really there (which directories exist, what
/// runs, what the catalog says) instead of trusting memory, so it is right
/// whether the phase's effect happened, half happened or never began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backout {
    /// Nothing changed yet: the job just ends.
    Nothing,
    /// Stop the target if it runs; the segment stays down and its catalog row as it was.
    LeaveDown,
    /// Full copies: stop the target, discard the copy, put the old directory back (a relocation
    /// empties its target but keeps the directory), and restore the catalog row with a backout row.
    RestoreCopy,
    /// Rebalance before the catalog swap: start the stopped primary again as the primary.
    RestartOldPrimary,
    /// Rebalance after the catalog swap: the mirror is the primary (the fault tolerance service
    /// promotes it again if the promotion was lost); the old primary is stopped and left down.
    KeepNewPrimary,
    /// Past the point of no return: the segment is up in the catalog; the fault tolerance service
    /// synchronizes it, or marks it down.
    LeaveToFts,
    /// The recovery stands; only its clean-up failed, which is warned about.
    Finish,
}

impl Backout {
    /// False once the job has passed its point of no return.
    pub fn reversible(self) -> bool {
        matches!(self, Backout::Nothing | Backout::LeaveDown | Backout::RestoreCopy | Backout::RestartOldPrimary)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Backout::Nothing => "nothing to undo: the job fails",
            Backout::LeaveDown => "stop the target if it runs; the segment stays down",
            Backout::RestoreCopy => {
                "stop the target, discard the copy, put the old directory back, restore the catalog row"
            }
            Backout::RestartOldPrimary => "start the stopped primary again; the mirror stays a mirror",
            Backout::KeepNewPrimary => {
                "the new primary stays primary; the old primary is stopped and left down for gp_recover_segment"
            }
            Backout::LeaveToFts => "the segment stays up; the fault tolerance service synchronizes it or marks it down",
            Backout::Finish => "the recovery stands; a failed clean-up is only warned about",
        }
    }
}

/// One step of a backout, carried out in order by the jobs worker; each
/// looks at what is there before it acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// Stop the target if it runs (only the pair's own server).
    StopTarget,
    /// Put the old directory back, or empty a relocation's new one (only
    /// what this job's claim covers).
    RestoreDirectory,
    /// The segment's catalog row as before the job, down.
    RestoreCatalog,
    /// A switchover's stopped primary started again as the primary.
    StartOldPrimary,
    /// A switchover whose mirror did not replay in time: the mirror down,
    /// synchronous replication off, so writes go on.
    GiveUpMirror,
    /// After a switchover's catalog swap: the old primary recorded down.
    KeepNewPrimary,
}

impl Backout {
    /// The steps that carry this backout out; `mirror_lagged`: a
    /// switchover's mirror did not replay the stopped primary's final
    /// checkpoint in time.
    pub fn undo(self, mirror_lagged: bool) -> &'static [Undo] {
        match self {
            Backout::Nothing | Backout::LeaveToFts | Backout::Finish => &[],
            Backout::LeaveDown => &[Undo::StopTarget, Undo::RestoreCatalog],
            Backout::RestoreCopy => &[Undo::StopTarget, Undo::RestoreDirectory, Undo::RestoreCatalog],
            Backout::RestartOldPrimary if mirror_lagged => &[Undo::StartOldPrimary, Undo::GiveUpMirror],
            Backout::RestartOldPrimary => &[Undo::StartOldPrimary],
            Backout::KeepNewPrimary => &[Undo::StopTarget, Undo::KeepNewPrimary],
        }
    }
}

/// One step of a phase. A phase runs the steps of its row in order, each
/// until it is done, within one phase on record: a step is a part of the
/// phase's effect, and a crash anywhere in it is backed out as the phase's.
/// The jobs worker has one function for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run a check on the target's host: it answers and has the server programs.
    CheckHost,
    /// Read how much the acting primary's databases hold.
    MeasureSource,
    /// The copy fits on the target's file system.
    CheckSpace,
    /// A relocation's new directory is no other segment's, by identity on every host.
    CheckIdentity,
    /// Nothing accepts connections at a relocation's new host and port.
    CheckPort,
    /// Catalog: the row as a copy replaces it, committed with the next phase.
    StartInCatalog,
    /// Stop the failed segment (rebalance: the acting primary).
    StopSegment,
    /// The catalog's acting primary of the content is still the job's source.
    FindSource,
    /// Probe the source, create its slot (and CHECKPOINT before a rewind).
    PrepareSource,
    /// Onto another host: the source's pg_hba.conf lets that host in.
    AllowNewHost,
    /// Rebalance: the catalog still shows the pair switched, up and synchronized.
    FindPair,
    /// Rebalance: CHECKPOINT on the acting primary, so its shutdown checkpoint is short.
    CheckpointPrimary,
    /// Rebalance: both members probed; the mirror is the pair's and replays promptly.
    LastLook,
    /// Rebalance: stop the old primary that could not follow.
    StopTarget,
    /// Rebalance: CHECKPOINT on the new primary, so its control file shows the new timeline.
    CheckpointSource,
    /// pg_rewind against the acting primary.
    Rewind,
    /// pg_basebackup from the acting primary.
    BaseBackup,
    /// pg_backup_start on the acting primary, in a session kept open.
    StartBackup,
    /// rsync from the acting primary into the target, in place.
    Rsync,
    /// pg_backup_stop, which returns the backup label and tablespace map.
    StopBackup,
    /// Write the backup label and tablespace map into the target.
    InstallLabel,
    /// Move the old directory aside and the complete copy in its place.
    Swap,
    /// Rebalance: pg_controldata of the stopped primary for its final checkpoint.
    ReadCheckpoint,
    /// Rebalance: wait until the mirror replayed it; catalog: the roles swap.
    AwaitReplay,
    /// Rebalance: pg_promote() of the new primary.
    Promote,
    /// Read the target's postgresql.auto.conf.
    ReadAutoConf,
    /// Write standby.signal and the rewritten postgresql.auto.conf.
    Configure,
    /// pg_ctl start of the target.
    Start,
    /// Wait for the acting primary to report the target's stream.
    AwaitStream,
    /// Catalog: the target becomes an up mirror.
    MarkUp,
    /// Wait for the stream to reach 'streaming'.
    AwaitStreaming,
    /// Wait for the fault tolerance service to mark the pair synchronized.
    AwaitSynchronized,
    /// Remove the old directory, or a relocation's mark.
    RemoveOld,
    /// After moving off a host no segment uses any more: its lines leave the source's pg_hba.conf.
    ForgetOldHost,
}

/// The steps a phase takes in every kind of job that has it, unless its row says otherwise.
const fn phase_steps(phase: Phase) -> &'static [Action] {
    use Action::*;
    match phase {
        Phase::CheckingHost => &[CheckHost, StartInCatalog],
        Phase::Stopping => &[StopSegment],
        Phase::CheckingSource => &[FindSource, PrepareSource],
        Phase::CheckingPair => &[FindPair, CheckpointPrimary, LastLook],
        Phase::Rewinding => &[Rewind],
        Phase::Copying => &[BaseBackup],
        Phase::Swapping => &[Swap],
        Phase::SwitchingRoles => &[ReadCheckpoint, AwaitReplay],
        Phase::Promoting => &[Promote],
        Phase::Configuring => &[ReadAutoConf, Configure],
        Phase::Starting => &[Start],
        Phase::Connecting => &[AwaitStream],
        Phase::MarkingUp => &[MarkUp],
        Phase::CatchingUp => &[AwaitStreaming],
        Phase::Synchronizing => &[AwaitSynchronized],
        Phase::RemovingOld => &[RemoveOld],
        Phase::Queued | Phase::Done => &[],
    }
}

/// One row of a job kind's table.
#[derive(Debug, Clone, Copy)]
pub struct Transition {
    pub phase: Phase,
    /// The side effect the phase performs, committed as the job's intent before it starts.
    pub effect: &'static str,
    /// The steps that carry the effect out, in order.
    pub steps: &'static [Action],
    /// The phase after success.
    pub next: Phase,
    /// Another way on, taken when the phase says so (rebalance: rewind an old primary that
    /// cannot follow the new timeline).
    pub alternative: Option<Phase>,
    pub on_failure: Backout,
    pub comment: &'static str,
}

const fn t(phase: Phase, effect: &'static str, next: Phase, on_failure: Backout, comment: &'static str) -> Transition {
    Transition { phase, effect, steps: phase_steps(phase), next, alternative: None, on_failure, comment }
}

impl Transition {
    /// A row whose phase takes other steps in this kind of job.
    const fn taking(self, steps: &'static [Action]) -> Transition {
        Transition { steps, ..self }
    }
}

/// A copy must fit: the source's size against the target's free space.
const COPY_HOST_STEPS: &[Action] =
    &[Action::CheckHost, Action::MeasureSource, Action::CheckSpace, Action::StartInCatalog];

const CHECK_HOST: &str = "run a check on the target's host (ssh for other hosts)";
const STOP_TARGET: &str = "pg_ctl stop -m fast of the failed segment, if it runs";
const CONFIGURE: &str = "write standby.signal and primary_conninfo to the acting primary into the target";
const START: &str = "pg_ctl start of the target, bounded by gp_recovery.job_start_timeout";
const CONNECT: &str = "wait for the acting primary to report the target's stream (gp_recovery.job_connect_timeout)";
const MARK_UP: &str = "catalog: the target becomes an up mirror, not in sync";
const CATCH_UP: &str = "wait for the stream to reach 'streaming' (gp_recovery.job_catchup_timeout without progress)";
const SYNC: &str = "wait for the fault tolerance service to mark the pair 's' (gp_recovery.job_sync_timeout)";

const C_CHECK_HOST: &str = "a dead host fails the job before the catalog or any directory changes";
const C_CONFIGURE: &str = "files only; the segment stays down";
const C_START: &str = "a segment that does not start is stopped and left down, with the cause from its log";
const C_CONNECT: &str = "a segment that does not stream is stopped and left down, with the cause from its log";
const C_MARK_UP: &str = "point of no return: from here the segment is an up mirror in the catalog";
const C_WAIT_FTS: &str = "the segment stays up; the fault tolerance service marks it down if it stops streaming";

const INCREMENTAL: &[Transition] = &[
    t(Phase::CheckingHost, CHECK_HOST, Phase::Stopping, Backout::Nothing, C_CHECK_HOST),
    t(
        Phase::Stopping,
        STOP_TARGET,
        Phase::CheckingSource,
        Backout::LeaveDown,
        "a stopped segment cannot diverge further",
    ),
    t(
        Phase::CheckingSource,
        "probe the acting primary, create its replication slot, CHECKPOINT",
        Phase::Rewinding,
        Backout::LeaveDown,
        "no acting primary answering: a double fault, nothing is rewound",
    ),
    t(
        Phase::Rewinding,
        "mark the directory incomplete, pg_rewind against the acting primary, remove the mark",
        Phase::Configuring,
        Backout::LeaveDown,
        "an interrupted rewind leaves the directory marked incomplete: only differential or full can recover it",
    ),
    t(Phase::Configuring, CONFIGURE, Phase::Starting, Backout::LeaveDown, C_CONFIGURE),
    t(Phase::Starting, START, Phase::Connecting, Backout::LeaveDown, C_START),
    t(Phase::Connecting, CONNECT, Phase::MarkingUp, Backout::LeaveDown, C_CONNECT),
    t(Phase::MarkingUp, MARK_UP, Phase::CatchingUp, Backout::LeaveDown, C_MARK_UP),
    t(Phase::CatchingUp, CATCH_UP, Phase::Synchronizing, Backout::LeaveToFts, C_WAIT_FTS),
    t(Phase::Synchronizing, SYNC, Phase::Done, Backout::LeaveToFts, C_WAIT_FTS),
];

const DIFFERENTIAL: &[Transition] = &[
    t(Phase::CheckingHost, CHECK_HOST, Phase::Stopping, Backout::Nothing, C_CHECK_HOST).taking(COPY_HOST_STEPS),
    t(Phase::Stopping, STOP_TARGET, Phase::CheckingSource, Backout::LeaveDown, "a stopped segment cannot diverge further"),
    t(
        Phase::CheckingSource,
        "probe the acting primary and create its replication slot",
        Phase::Copying,
        Backout::LeaveDown,
        "no acting primary answering: a double fault, nothing is copied",
    ),
    t(
        Phase::Copying,
        "mark the directory incomplete, pg_backup_start, rsync in place, pg_backup_stop, backup_label, remove the mark",
        Phase::Configuring,
        Backout::LeaveDown,
        "an interrupted copy leaves the directory marked incomplete: never started, only differential or full recover it",
    )
    .taking(&[Action::StartBackup, Action::Rsync, Action::StopBackup, Action::InstallLabel]),
    t(Phase::Configuring, CONFIGURE, Phase::Starting, Backout::LeaveDown, C_CONFIGURE),
    t(Phase::Starting, START, Phase::Connecting, Backout::LeaveDown, C_START),
    t(Phase::Connecting, CONNECT, Phase::MarkingUp, Backout::LeaveDown, C_CONNECT),
    t(Phase::MarkingUp, MARK_UP, Phase::CatchingUp, Backout::LeaveDown, C_MARK_UP),
    t(Phase::CatchingUp, CATCH_UP, Phase::Synchronizing, Backout::LeaveToFts, C_WAIT_FTS),
    t(Phase::Synchronizing, SYNC, Phase::Done, Backout::LeaveToFts, C_WAIT_FTS),
];

const FULL: &[Transition] = &[
    t(
        Phase::CheckingHost,
        "run a check on the target's host; catalog: record that a full copy replaces the segment",
        Phase::Stopping,
        Backout::Nothing,
        C_CHECK_HOST,
    )
    .taking(COPY_HOST_STEPS),
    t(Phase::Stopping, STOP_TARGET, Phase::CheckingSource, Backout::RestoreCopy, "the old directory is untouched"),
    t(
        Phase::CheckingSource,
        "probe the acting primary and create its replication slot",
        Phase::Copying,
        Backout::RestoreCopy,
        "no acting primary answering: a double fault, nothing is copied",
    ),
    t(
        Phase::Copying,
        "pg_basebackup into a new directory beside the target",
        Phase::Swapping,
        Backout::RestoreCopy,
        "the old directory is untouched; a partial copy is discarded",
    ),
    t(
        Phase::Swapping,
        "move the old directory aside and the complete copy in its place",
        Phase::Configuring,
        Backout::RestoreCopy,
        "whatever the moves did, backout finds the old directory and puts it back",
    ),
    t(Phase::Configuring, CONFIGURE, Phase::Starting, Backout::RestoreCopy, C_CONFIGURE),
    t(Phase::Starting, START, Phase::Connecting, Backout::RestoreCopy, C_START),
    t(Phase::Connecting, CONNECT, Phase::MarkingUp, Backout::RestoreCopy, C_CONNECT),
    t(Phase::MarkingUp, MARK_UP, Phase::CatchingUp, Backout::RestoreCopy, C_MARK_UP),
    t(Phase::CatchingUp, CATCH_UP, Phase::Synchronizing, Backout::LeaveToFts, C_WAIT_FTS),
    t(Phase::Synchronizing, SYNC, Phase::RemovingOld, Backout::LeaveToFts, C_WAIT_FTS),
    t(
        Phase::RemovingOld,
        "remove the old directory moved aside",
        Phase::Done,
        Backout::Finish,
        "the recovered segment is synchronized; a leftover old directory is only warned about",
    ),
];

const RELOCATION: &[Transition] = &[
    t(
        Phase::CheckingHost,
        "run a check on the new host; catalog: the segment's row moves to its new place (backout row kept)",
        Phase::Stopping,
        Backout::Nothing,
        C_CHECK_HOST,
    )
    .taking(&[
        Action::CheckHost,
        Action::MeasureSource,
        Action::CheckSpace,
        Action::CheckIdentity,
        Action::CheckPort,
        Action::StartInCatalog,
    ]),
    t(
        Phase::Stopping,
        "pg_ctl stop of the failed segment at its old place (skipped when its host is unreachable)",
        Phase::CheckingSource,
        Backout::RestoreCopy,
        "the catalog row goes back to the old place on failure",
    ),
    t(
        Phase::CheckingSource,
        "probe the acting primary and create its replication slot; onto another host, add that host's lines to \
         the primary's pg_hba.conf and reload",
        Phase::Copying,
        Backout::RestoreCopy,
        "no acting primary answering: a double fault, nothing is copied; pg_hba.conf lines added stay (they only \
         let the new host in)",
    )
    .taking(&[Action::FindSource, Action::PrepareSource, Action::AllowNewHost]),
    t(
        Phase::Copying,
        "mark the new directory relocating and incomplete, pg_basebackup into it (an existing empty directory is \
         used as it is)",
        Phase::Configuring,
        Backout::RestoreCopy,
        "a partial or finished copy is emptied out; the directory itself is kept",
    ),
    t(Phase::Configuring, CONFIGURE, Phase::Starting, Backout::RestoreCopy, C_CONFIGURE),
    t(Phase::Starting, START, Phase::Connecting, Backout::RestoreCopy, C_START),
    t(Phase::Connecting, CONNECT, Phase::MarkingUp, Backout::RestoreCopy, C_CONNECT),
    t(Phase::MarkingUp, MARK_UP, Phase::CatchingUp, Backout::RestoreCopy, C_MARK_UP),
    t(Phase::CatchingUp, CATCH_UP, Phase::Synchronizing, Backout::LeaveToFts, C_WAIT_FTS),
    t(Phase::Synchronizing, SYNC, Phase::RemovingOld, Backout::LeaveToFts, C_WAIT_FTS),
    t(
        Phase::RemovingOld,
        "remove the relocating mark: the new directory is the segment's; the old host's lines gp_recovery added to \
         the primary's pg_hba.conf, once no segment is on it",
        Phase::Done,
        Backout::Finish,
        "the relocated segment is synchronized; a leftover mark is only warned about",
    )
    .taking(&[Action::RemoveOld, Action::ForgetOldHost]),
];

const REBALANCE: &[Transition] = &[
    t(
        Phase::CheckingHost,
        "run a check on the preferred primary's host; the fault tolerance service leaves the content alone",
        Phase::CheckingPair,
        Backout::Nothing,
        C_CHECK_HOST,
    )
    .taking(&[Action::CheckHost]),
    t(
        Phase::CheckingPair,
        "the catalog: still switched, up, synchronized; CHECKPOINT on the acting primary, so its shutdown \
         checkpoint has little left to write; then both members probed: the preferred primary must be the \
         pair's, streaming as the synchronous standby, replaying (not paused, no recovery_min_apply_delay) and \
         within gp_recovery.switchover_replay_lag",
        Phase::Stopping,
        Backout::Nothing,
        "a pair that changed since it was queued, or whose mirror would not replay promptly, is left alone: \
         nothing was stopped",
    ),
    t(
        Phase::Stopping,
        "pg_ctl stop -m fast of the acting primary, so its last WAL reaches the mirror",
        Phase::SwitchingRoles,
        Backout::RestartOldPrimary,
        "commits wait for the synchronous standby until the primary stops",
    ),
    t(
        Phase::SwitchingRoles,
        "wait, at most gp_recovery.switchover_timeout, until the preferred primary replayed the stopped \
         primary's final checkpoint, then swap the roles in the catalog (committed with the next phase)",
        Phase::Promoting,
        Backout::RestartOldPrimary,
        "no promotion before the catalog says so: a crash before the swap restarts the old primary; a mirror that \
         did not replay in time is then marked down, synchronous replication off, so writes go on at once",
    ),
    t(
        Phase::Promoting,
        "pg_promote() of the preferred primary, synchronous replication off there, its replication slot",
        Phase::Configuring,
        Backout::KeepNewPrimary,
        "point of no return: the catalog names the new primary; a lost promotion is repeated by the fault \
         tolerance service",
    ),
    t(
        Phase::Configuring,
        "write standby.signal and primary_conninfo to the new primary into the old primary",
        Phase::Starting,
        Backout::KeepNewPrimary,
        "the old primary stays down until it follows the new one",
    ),
    t(Phase::Starting, START, Phase::Connecting, Backout::KeepNewPrimary, "a failed start leaves the old primary down"),
    Transition {
        phase: Phase::Connecting,
        effect: CONNECT,
        steps: phase_steps(Phase::Connecting),
        next: Phase::MarkingUp,
        alternative: Some(Phase::Rewinding),
        on_failure: Backout::KeepNewPrimary,
        comment: "an old primary that cannot follow the new timeline within 30 s is stopped and rewound, once",
    },
    t(
        Phase::Rewinding,
        "stop the old primary, mark it incomplete, pg_rewind against the new primary, remove the mark",
        Phase::Configuring,
        Backout::KeepNewPrimary,
        "a failed rewind leaves the old primary down and marked for differential or full recovery",
    )
    .taking(&[Action::StopTarget, Action::CheckpointSource, Action::Rewind]),
    t(
        Phase::MarkingUp,
        "catalog: the old primary becomes an up mirror; the fault tolerance service watches the pair again",
        Phase::CatchingUp,
        Backout::KeepNewPrimary,
        C_MARK_UP,
    ),
    t(Phase::CatchingUp, CATCH_UP, Phase::Synchronizing, Backout::LeaveToFts, C_WAIT_FTS),
    t(Phase::Synchronizing, SYNC, Phase::Done, Backout::LeaveToFts, C_WAIT_FTS),
];

/// The table of a job kind, in the order the phases normally run.
pub fn table(kind: JobKind) -> &'static [Transition] {
    match kind {
        JobKind::Incremental => INCREMENTAL,
        JobKind::Differential => DIFFERENTIAL,
        JobKind::Full => FULL,
        JobKind::Relocation => RELOCATION,
        JobKind::Rebalance => REBALANCE,
    }
}

/// The row of a phase; None for `queued`, `done` and phases the kind does not have.
pub fn row(kind: JobKind, phase: Phase) -> Option<&'static Transition> {
    table(kind).iter().find(|r| r.phase == phase)
}

/// The phase a claimed job starts in.
pub const FIRST: Phase = Phase::CheckingHost;

/// The steps of `phase` in a job of `kind`, in order; none for a phase the kind does not have.
pub fn steps(kind: JobKind, phase: Phase) -> &'static [Action] {
    row(kind, phase).map_or(&[], |r| r.steps)
}

/// How a job interrupted in `phase` (failed, canceled, or found running
/// after a restart) is backed out.
pub fn backout(kind: JobKind, phase: Phase) -> Backout {
    match phase {
        Phase::Queued => Backout::Nothing,
        Phase::Done => Backout::Finish,
        p => row(kind, p).map_or(Backout::LeaveDown, |r| r.on_failure),
    }
}

named_enum!(
    /// Why a job's step failed: what auto mode decides on, and what the
    /// job row (`gp_recovery_job.failure`) and its event carry. Texts are
    /// for people; this is for code.
    FailureKind, "failure", "not a failure kind of gp_recovery_job", {
        /// The remote shell could not reach the host.
        HostUnreachable => "host_unreachable",
        /// A file system is full, or the free space check refused the copy.
        NoSpace => "no_space",
        /// The content's acting primary is down or not a primary.
        DoubleFault => "double_fault",
        /// The acting primary did not answer a call or a copy tool's connection.
        SourceUnreachable => "source_unreachable",
        /// The server programs are missing on the host.
        ProgramsMissing => "programs_missing",
        /// A copy tool printed no progress for gp_recovery.copy_stall_timeout.
        CopyStalled => "copy_stalled",
        /// A step would not act on what it could not prove to be the job's own.
        Refused => "refused",
        /// The coordinator or the jobs worker restarted while the job ran.
        Interrupted => "interrupted",
        /// Anything else, such as the target directory's own state (WAL a
        /// rewind needs is gone, no common history, an incomplete copy, a
        /// directory that cannot start): another mode may do better.
        Other => "other",
    }
);

impl FailureKind {
    /// Whether another recovery mode may succeed where this failed: not when
    /// the host, the disk, the source or the programs are to blame, which
    /// are the same for every mode.
    pub fn another_mode_may_help(self) -> bool {
        matches!(self, FailureKind::Other)
    }

    /// The kind a copy or start tool's own output points to (PostgreSQL's
    /// and rsync's texts, not ours).
    pub fn of_tool_output(output: &str) -> FailureKind {
        if output.contains("No space left on device") {
            FailureKind::NoSpace
        } else if output.contains("could not connect to") {
            FailureKind::SourceUnreachable
        } else {
            FailureKind::Other
        }
    }
}

/// A step's failure: its kind and the text for the DBA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure { kind, message: message.into() }
    }

    pub fn other(message: impl Into<String>) -> Failure {
        Failure::new(FailureKind::Other, message)
    }
}

/// An auto job that failed in `phase` of `kind` with a failure of
/// `failure`: the kind its next attempt runs, when one may work. Only the
/// phases that work on the target's data (rewinding, copying, swapping,
/// configuring, starting, connecting) count, and only before the point of
/// no return: what fails there may be the directory's fault (WAL the rewind
/// needs is gone, no common history, an interrupted copy's mark, a
/// directory that cannot start), which a copy replaces; a dead host, a full
/// disk or a source down are the same for every mode.
pub fn next_attempt(kind: JobKind, phase: Phase, failure: FailureKind) -> Option<JobKind> {
    let position = AUTO_ORDER.iter().position(|k| *k == kind)?;
    let next = AUTO_ORDER.get(position + 1).copied()?;
    let works_on_data = matches!(
        phase,
        Phase::Rewinding | Phase::Copying | Phase::Swapping | Phase::Configuring | Phase::Starting | Phase::Connecting
    );
    let reversible = row(kind, phase).is_some_and(|r| r.on_failure.reversible());
    (works_on_data && reversible && failure.another_mode_may_help()).then_some(next)
}

/// The one advice for a segment whose directory cannot be rewound or
/// started as it is.
pub fn copy_advice(dbid: i16) -> String {
    format!("run gp_recover_segment({dbid}, 'differential') or gp_recover_segment({dbid}, 'full')")
}

/// Server log texts after which a starting segment can never become a
/// consistent standby: the start step ends on them at once instead of
/// waiting out gp_recovery.job_start_timeout, and diagnose_server_log
/// explains each.
pub const HOPELESS_START: [&str; 7] = [
    "has already been removed",
    "could not locate a valid checkpoint record",
    "invalid checkpoint record",
    "database system identifier differs",
    "is not a child of this server's history",
    "not in this server's history",
    "No space left on device",
];

/// The cause of a segment's failure to start or to stream, from its
/// server log, with the advice when another mode would help, and its kind.
pub fn diagnose_server_log(log: &str, dbid: i16) -> Option<(FailureKind, String)> {
    let advice = copy_advice(dbid);
    for line in log.lines().rev() {
        if line.contains(HOPELESS_START[0]) {
            let segment =
                line.split("requested WAL segment ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("?");
            return Some((
                FailureKind::Other,
                format!(
                    "the acting primary no longer has WAL segment {segment} that the recovered segment needs; {advice}"
                ),
            ));
        }
        if line.contains("could not locate a valid checkpoint record") || line.contains("invalid checkpoint record") {
            return Some((
                FailureKind::Other,
                format!("the data directory has no valid checkpoint record (an incomplete copy); {advice}"),
            ));
        }
        if line.contains("database system identifier differs") {
            return Some((
                FailureKind::Other,
                format!("the segment is not a copy of its acting primary (system identifier differs); {advice}"),
            ));
        }
        if line.contains("is not a child of this server's history") || line.contains("not in this server's history") {
            return Some((
                FailureKind::Other,
                format!("the segment's timeline history diverged from the acting primary's; {advice}"),
            ));
        }
        if line.contains("No space left on device") {
            return Some((
                FailureKind::NoSpace,
                "the target's file system is full (No space left on device)".to_string(),
            ));
        }
    }
    None
}

/// A superuser's fault point (gp_recovery.fault_point): the jobs worker
/// exits (or, with `crash`, kills itself so the coordinator restarts) when
/// a job of `kind` reaches `phase`, `before` its side effect starts (its
/// intent committed) or `after` it ended (its outcome not yet committed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultPoint {
    /// None: any kind.
    pub kind: Option<JobKind>,
    pub phase: Phase,
    pub after: bool,
    pub crash: bool,
}

impl FaultPoint {
    pub fn parse(s: &str) -> Result<Option<FaultPoint>, CoreError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        let invalid = || CoreError::InvalidValue {
            what: "gp_recovery.fault_point",
            value: s.to_string(),
            expected: "must be KIND:PHASE:before|after[:crash], KIND one of incremental, differential, full, \
                       relocation, rebalance or *",
        };
        let parts: Vec<&str> = s.split(':').map(str::trim).collect();
        if !(3..=4).contains(&parts.len()) || (parts.len() == 4 && parts[3] != "crash") {
            return Err(invalid());
        }
        let kind = match parts[0] {
            "*" => None,
            k => Some(k.parse::<JobKind>().map_err(|_| invalid())?),
        };
        let phase: Phase = parts[1].parse().map_err(|_| invalid())?;
        let after = match parts[2] {
            "before" => false,
            "after" => true,
            _ => return Err(invalid()),
        };
        Ok(Some(FaultPoint { kind, phase, after, crash: parts.len() == 4 }))
    }

    pub fn matches(&self, kind: JobKind, phase: Phase, after: bool) -> bool {
        self.kind.is_none_or(|k| k == kind) && self.phase == phase && self.after == after
    }
}

impl JobState {
    /// The states of a job that has ended: its row is a record, removed
    /// once older than gp_recovery.job_retention.
    pub const ENDED: [JobState; 3] = [JobState::Succeeded, JobState::Failed, JobState::Canceled];
}

/// gp_recovery.job_retention (seconds) as the age past which an ended job
/// is removed; None (a setting of 0) keeps every job.
pub fn retention(seconds: i32) -> Option<Duration> {
    u64::try_from(seconds).ok().filter(|s| *s > 0).map(Duration::from_secs)
}

/// How often at most the jobs worker removes jobs past their retention.
pub const RETENTION_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Whether the jobs worker removes old jobs now: at its start, then once a
/// RETENTION_SWEEP_EVERY.
pub fn retention_sweep_due(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|l| now.saturating_duration_since(l) >= RETENTION_SWEEP_EVERY)
}

/// The file under the coordinator's gp_recovery_log/ that holds the output
/// of one step (`tool`) of a job.
pub fn log_file_name(tool: &str, job_id: i64, dbid: i16) -> String {
    format!("{tool}.job{job_id}.dbid{dbid}.out")
}

/// The job whose step wrote the file named `name` (see [`log_file_name`]);
/// None for any other name.
pub fn log_file_job(name: &str) -> Option<i64> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (rest, dbid) = name.strip_suffix(".out")?.rsplit_once(".dbid")?;
    let (tool, job) = rest.rsplit_once(".job")?;
    if tool.is_empty() || !digits(dbid) || !digits(job) {
        return None;
    }
    job.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_tries_incremental_then_differential_then_full() {
        use crate::recovery::RecoveryMode::Auto;
        let kinds: Vec<JobKind> = (0..4).map(|n| JobKind::attempt(Auto, false, n)).collect();
        assert_eq!(kinds, [JobKind::Incremental, JobKind::Differential, JobKind::Full, JobKind::Full]);
        assert_eq!(JobKind::attempt(Auto, true, 0), JobKind::Relocation);
        use FailureKind::*;
        assert_eq!(next_attempt(JobKind::Incremental, Phase::Starting, Other), Some(JobKind::Differential));
        assert_eq!(next_attempt(JobKind::Incremental, Phase::Rewinding, Other), Some(JobKind::Differential));
        assert_eq!(next_attempt(JobKind::Differential, Phase::Copying, Other), Some(JobKind::Full));
        assert_eq!(next_attempt(JobKind::Full, Phase::Copying, Other), None, "full is the last");
        assert_eq!(next_attempt(JobKind::Relocation, Phase::Copying, Other), None);
        for stop in [HostUnreachable, NoSpace, DoubleFault, SourceUnreachable, ProgramsMissing, CopyStalled, Refused] {
            assert_eq!(next_attempt(JobKind::Incremental, Phase::Rewinding, stop), None, "{stop}");
        }
        assert_eq!(next_attempt(JobKind::Incremental, Phase::CheckingSource, Other), None, "not the data's fault");
        assert_eq!(next_attempt(JobKind::Incremental, Phase::CatchingUp, Other), None, "past the point of no return");
    }

    #[test]
    fn every_reversible_backout_leaves_no_target_running_and_the_catalog_right() {
        use Backout::*;
        for b in [Nothing, LeaveDown, RestoreCopy, RestartOldPrimary, KeepNewPrimary, LeaveToFts, Finish] {
            let steps = b.undo(false);
            if matches!(b, LeaveDown | RestoreCopy) {
                assert_eq!(steps.first(), Some(&Undo::StopTarget), "{b:?}: stop before touching files or rows");
                assert_eq!(steps.last(), Some(&Undo::RestoreCatalog), "{b:?}: the row last");
            }
            if !b.reversible() && b != KeepNewPrimary {
                assert!(steps.is_empty(), "{b:?} is past the point of no return");
            }
        }
        assert_eq!(RestartOldPrimary.undo(true), [Undo::StartOldPrimary, Undo::GiveUpMirror]);
        assert_eq!(RestoreCopy.undo(true), RestoreCopy.undo(false), "only a switchover's mirror can lag");
    }

    #[test]
    fn a_tools_own_words_name_the_kind() {
        assert_eq!(
            FailureKind::of_tool_output("pg_basebackup: error: could not write: No space left on device"),
            FailureKind::NoSpace
        );
        assert_eq!(
            FailureKind::of_tool_output("pg_rewind: error: could not connect to server: Connection refused"),
            FailureKind::SourceUnreachable
        );
        assert_eq!(FailureKind::of_tool_output("pg_rewind: error: could not find common ancestor"), FailureKind::Other);
        for k in FailureKind::ALL {
            assert_eq!(k.as_str().parse::<FailureKind>().unwrap(), *k);
        }
    }

    fn reachable(kind: JobKind) -> Vec<Phase> {
        let mut seen = vec![FIRST];
        let mut i = 0;
        while i < seen.len() {
            if let Some(r) = row(kind, seen[i]) {
                for p in std::iter::once(r.next).chain(r.alternative) {
                    if !seen.contains(&p) {
                        seen.push(p);
                    }
                }
            }
            i += 1;
        }
        seen
    }

    #[test]
    fn every_phase_is_reachable_and_the_job_can_end() {
        for &kind in JobKind::ALL {
            let seen = reachable(kind);
            for r in table(kind) {
                assert!(seen.contains(&r.phase), "{kind}: {} is unreachable", r.phase);
            }
            assert!(seen.contains(&Phase::Done), "{kind} never ends");
            assert_eq!(table(kind)[0].phase, FIRST);
        }
    }

    #[test]
    fn each_phase_has_one_row_with_a_next_that_exists() {
        for &kind in JobKind::ALL {
            for r in table(kind) {
                assert_eq!(table(kind).iter().filter(|x| x.phase == r.phase).count(), 1, "{kind}: {}", r.phase);
                for p in std::iter::once(r.next).chain(r.alternative) {
                    assert!(
                        p == Phase::Done || row(kind, p).is_some(),
                        "{kind}: {} leads to {p}, not in the table",
                        r.phase
                    );
                }
                assert!(!r.effect.is_empty() && !r.comment.is_empty());
            }
        }
    }

    #[test]
    fn every_phase_takes_steps_and_each_step_belongs_to_one_phase() {
        let mut phase_of: Vec<(Action, Phase)> = Vec::new();
        for &kind in JobKind::ALL {
            for r in table(kind) {
                assert!(!r.steps.is_empty(), "{kind}: {} takes no step", r.phase);
                for (i, a) in r.steps.iter().enumerate() {
                    assert!(!r.steps[..i].contains(a), "{kind}: {} takes {a:?} twice", r.phase);
                    match phase_of.iter().find(|(b, _)| b == a) {
                        Some((_, p)) => assert_eq!(*p, r.phase, "{a:?} is a step of {p} and of {}", r.phase),
                        None => phase_of.push((*a, r.phase)),
                    }
                }
            }
        }
        assert!(steps(JobKind::Incremental, Phase::Copying).is_empty(), "a phase the kind lacks");
    }

    #[test]
    fn a_job_proves_its_target_fits_and_is_its_own_before_the_catalog_changes() {
        use Action::*;
        for &kind in JobKind::ALL {
            let host = steps(kind, Phase::CheckingHost);
            assert_eq!(host.first(), Some(&CheckHost), "{kind}");
            let copies = matches!(kind, JobKind::Differential | JobKind::Full | JobKind::Relocation);
            let relocates = kind == JobKind::Relocation;
            let position = |a: Action| host.iter().position(|b| *b == a);
            assert_eq!(position(CheckSpace).is_some(), copies, "{kind}");
            assert_eq!(position(CheckIdentity).is_some(), relocates, "{kind}");
            assert_eq!(position(CheckPort).is_some(), relocates, "{kind}");
            // Rebalance changes the catalog only once the pair is checked.
            match position(StartInCatalog) {
                Some(p) => assert_eq!(p, host.len() - 1, "{kind}: the catalog changes last"),
                None => assert_eq!(kind, JobKind::Rebalance),
            }
            if copies {
                assert!(position(MeasureSource) < position(CheckSpace), "{kind}: measured before compared");
            }
        }
        let source = steps(JobKind::Relocation, Phase::CheckingSource);
        assert_eq!(source.last(), Some(&AllowNewHost), "the new host is let in once the source is proven");
        let rewind = steps(JobKind::Rebalance, Phase::Rewinding);
        assert_eq!(rewind.first(), Some(&StopTarget), "an old primary is stopped before it is rewound");
        assert_eq!(steps(JobKind::Incremental, Phase::Rewinding), &[Rewind]);
    }

    #[test]
    fn backout_never_crosses_the_point_of_no_return_backwards() {
        for &kind in JobKind::ALL {
            for r in table(kind) {
                for p in std::iter::once(r.next).chain(r.alternative) {
                    if !r.on_failure.reversible() {
                        assert!(
                            !backout(kind, p).reversible(),
                            "{kind}: {} is past the point of no return but {p} backs out as {:?}",
                            r.phase,
                            backout(kind, p)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn only_the_first_phase_and_rebalance_pair_check_have_nothing_to_undo() {
        for &kind in JobKind::ALL {
            for r in table(kind) {
                if r.on_failure == Backout::Nothing {
                    assert!(matches!(r.phase, Phase::CheckingHost | Phase::CheckingPair), "{kind}: {}", r.phase);
                }
            }
        }
        assert_eq!(backout(JobKind::Full, Phase::Swapping), Backout::RestoreCopy);
        assert_eq!(backout(JobKind::Rebalance, Phase::SwitchingRoles), Backout::RestartOldPrimary);
        assert_eq!(backout(JobKind::Rebalance, Phase::Promoting), Backout::KeepNewPrimary);
        assert_eq!(backout(JobKind::Incremental, Phase::CatchingUp), Backout::LeaveToFts);
    }

    #[test]
    fn names_round_trip() {
        for &p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>().unwrap(), p);
        }
        for &s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
        }
        assert!("copy".parse::<Phase>().is_err());
    }

    #[test]
    fn server_log_causes() {
        let log = "LOG:  started streaming WAL from primary at 0/3000000 on timeline 2\n\
                   FATAL:  could not receive data from WAL stream: ERROR:  requested WAL segment 000000020000000000000003 has already been removed\n";
        let (kind, d) = diagnose_server_log(log, 2).unwrap();
        assert_eq!(kind, FailureKind::Other, "another mode may help");
        assert!(d.starts_with("the acting primary no longer has WAL segment 000000020000000000000003"), "{d}");
        assert!(d.ends_with("run gp_recover_segment(2, 'differential') or gp_recover_segment(2, 'full')"));
        assert!(diagnose_server_log("PANIC:  could not locate a valid checkpoint record", 3)
            .unwrap()
            .1
            .contains("no valid checkpoint"));
        assert_eq!(
            diagnose_server_log("FATAL:  could not write: No space left on device", 3).unwrap().0,
            FailureKind::NoSpace
        );
        assert_eq!(diagnose_server_log("LOG:  database system is ready", 2), None);
        // Every text the start step gives up on is explained.
        for p in HOPELESS_START {
            assert!(diagnose_server_log(&format!("FATAL:  x {p} y"), 2).is_some(), "{p}");
        }
    }

    #[test]
    fn only_ended_jobs_past_a_nonzero_retention_are_removed() {
        assert!(!JobState::ENDED.contains(&JobState::Queued) && !JobState::ENDED.contains(&JobState::Running));
        assert_eq!(JobState::ENDED.len() + 2, JobState::ALL.len());
        assert_eq!(retention(0), None, "0 keeps every job");
        assert_eq!(retention(-1), None);
        assert_eq!(retention(2), Some(Duration::from_secs(2)));
        assert_eq!(retention(30 * 86400), Some(Duration::from_secs(2_592_000)));
    }

    #[test]
    fn old_jobs_are_looked_for_at_start_then_once_a_minute() {
        let t0 = Instant::now();
        assert!(retention_sweep_due(None, t0));
        assert!(!retention_sweep_due(Some(t0), t0 + Duration::from_secs(59)));
        assert!(retention_sweep_due(Some(t0), t0 + Duration::from_secs(60)));
        // A clock that seems to go back is no reason to sweep.
        assert!(!retention_sweep_due(Some(t0 + Duration::from_secs(5)), t0));
    }

    #[test]
    fn log_files_name_their_job() {
        let name = log_file_name("pg_basebackup", 42, 3);
        assert_eq!(name, "pg_basebackup.job42.dbid3.out");
        assert_eq!(log_file_job(&name), Some(42));
        assert_eq!(log_file_job(&log_file_name("server_log", 7, 12)), Some(7));
        for other in [
            "pg_basebackup.job42.dbid3.out.bak",
            "pg_basebackup.job42.dbid3",
            ".job42.dbid3.out",
            "x.job.dbid3.out",
            "x.job42.dbid.out",
            "x.job4a.dbid3.out",
            "x.job-4.dbid3.out",
            "x.job42.dbid3x.out",
            "notes.txt",
            "..",
        ] {
            assert_eq!(log_file_job(other), None, "{other}");
        }
    }

    #[test]
    fn fault_points_parse() {
        assert_eq!(FaultPoint::parse("").unwrap(), None);
        let f = FaultPoint::parse("rebalance:switching roles:after:crash").unwrap().unwrap();
        assert_eq!(
            f,
            FaultPoint { kind: Some(JobKind::Rebalance), phase: Phase::SwitchingRoles, after: true, crash: true }
        );
        assert!(f.matches(JobKind::Rebalance, Phase::SwitchingRoles, true));
        assert!(!f.matches(JobKind::Full, Phase::SwitchingRoles, true));
        let any = FaultPoint::parse("*:copying:before").unwrap().unwrap();
        assert!(any.matches(JobKind::Full, Phase::Copying, false) && !any.crash);
        for bad in
            ["full:copying", "full:copy:before", "full:copying:during", "nope:copying:before", "full:copying:after:x"]
        {
            assert!(FaultPoint::parse(bad).is_err(), "{bad}");
        }
    }
}
