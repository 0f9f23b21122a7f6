//! Settings of gp_recovery. The fault tolerance settings are read by the
//! worker and reloadable (pg_reload_conf()); Greenplum's ranges start at
//! 10 s, ours at 1 s so tests and demos can run fast.

use std::ffi::CString;

use gp_recovery_core::selfheal::AutoRecover;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};

/// How long a view or registration waits for one segment to answer.
pub static SEGMENT_CONNECT_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(5);
pub static FTS_PROBE_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(60);
pub static FTS_PROBE_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(20);
pub static FTS_PROBE_RETRIES: GucSetting<i32> = GucSetting::<i32>::new(5);
pub static MIRROR_DOWN_GRACE_PERIOD: GucSetting<i32> = GucSetting::<i32>::new(30);
pub static MAX_PARALLEL_JOBS: GucSetting<i32> = GucSetting::<i32>::new(16);
pub static MAX_RATE: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static REMOTE_SHELL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(gp_recovery_core::host::DEFAULT_REMOTE_SHELL));
pub static LOCAL_HOSTS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static JOB_CALL_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(60);
pub static JOB_START_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(120);
pub static JOB_CONNECT_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(120);
pub static JOB_CATCHUP_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(600);
pub static JOB_SYNC_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(120);
pub static COPY_STALL_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(300);
/// kB: 16 MB.
pub static SWITCHOVER_REPLAY_LAG: GucSetting<i32> = GucSetting::<i32>::new(16 * 1024);
pub static SWITCHOVER_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(5);
pub static AUTO_REBALANCE_MAX_FAILOVERS: GucSetting<i32> = GucSetting::<i32>::new(3);
/// One hour, in seconds.
pub static AUTO_REBALANCE_FAILOVER_WINDOW: GucSetting<i32> = GucSetting::<i32>::new(3600);
pub static HISTORY_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static MAX_PARALLEL_JOBS_PER_HOST: GucSetting<i32> = GucSetting::<i32>::new(64);
pub static AUTO_RECOVER: GucSetting<AutoRecoverSetting> =
    GucSetting::<AutoRecoverSetting>::new(AutoRecoverSetting::Off);
pub static AUTO_RECOVER_DELAY: GucSetting<i32> = GucSetting::<i32>::new(60);
pub static AUTO_REBALANCE: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static HBA_HOSTNAMES: GucSetting<bool> = GucSetting::<bool>::new(false);
/// 30 days, in seconds.
pub static JOB_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(30 * 86400);
pub static FAULT_POINT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// Only declared, so that ALTER DATABASE may set it where the prefix is
/// reserved; its value is read from pg_db_role_setting (crate::coordinator).
pub static COORDINATOR_EPOCH: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));

/// gp_recovery.auto_recover's values.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum AutoRecoverSetting {
    Off,
    Incremental,
    Auto,
}

pub fn auto_recover() -> AutoRecover {
    match AUTO_RECOVER.get() {
        AutoRecoverSetting::Off => AutoRecover::Off,
        AutoRecoverSetting::Incremental => AutoRecover::Incremental,
        AutoRecoverSetting::Auto => AutoRecover::Auto,
    }
}

/// The database holding the catalog, where the worker connects.
pub fn database() -> String {
    DATABASE.get().map(|d| d.to_string_lossy().into_owned()).unwrap_or_else(|| "postgres".into())
}

fn text(setting: &GucSetting<Option<CString>>) -> String {
    setting.get().map(|v| v.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The command (and options) that reaches a segment's host.
pub fn remote_shell() -> String {
    text(&REMOTE_SHELL)
}

/// Extra names of the coordinator's own host, comma-separated.
/// gp_recovery.fault_point, as the jobs worker reads it.
pub fn fault_point() -> String {
    text(&FAULT_POINT)
}

/// A job setting in seconds, as a Duration.
pub fn seconds(setting: &GucSetting<i32>) -> std::time::Duration {
    std::time::Duration::from_secs(u64::try_from(setting.get()).unwrap_or(1).max(1))
}

/// gp_recovery.switchover_replay_lag in bytes.
pub fn switchover_replay_lag() -> i64 {
    i64::from(SWITCHOVER_REPLAY_LAG.get()).saturating_mul(1024)
}

pub fn local_hosts() -> String {
    text(&LOCAL_HOSTS)
}

pub fn define() {
    GucRegistry::define_int_guc(
        c"gp_recovery.segment_connect_timeout",
        c"Seconds to wait for a segment to answer a status probe.",
        c"Bounds each connection made by gp_segment_status, gp_mirror_status, gp_state_report() and gp_add_segment(); segments are probed at the same time, so one hung segment never delays the others.",
        &SEGMENT_CONNECT_TIMEOUT,
        1,
        3600,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"gp_recovery.fts_probe_interval",
        c"Seconds between the fault tolerance service's probe rounds.",
        c"gp_request_fts_probe_scan() starts a round at once.",
        &FTS_PROBE_INTERVAL,
        1,
        3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"gp_recovery.fts_probe_timeout",
        c"Seconds one probe of a segment may take, from connecting to its answer.",
        c"",
        &FTS_PROBE_TIMEOUT,
        1,
        3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"gp_recovery.fts_probe_retries",
        c"Probe attempts, about a second apart, before a primary is declared failed.",
        c"A primary is failed over after 1 + this many failed attempts in one round. When the service's idle connection to a primary is lost, the primary is probed at once with at least 5 attempts 100 ms apart.",
        &FTS_PROBE_RETRIES,
        0,
        100,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"gp_recovery.mirror_down_grace_period",
        c"Seconds a primary may report no stream to its mirror before the mirror is marked down.",
        c"Until then commits on the primary wait for the mirror (synchronous replication stays on).",
        &MIRROR_DOWN_GRACE_PERIOD,
        0,
        3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"gp_recovery.max_parallel_jobs",
        c"Recovery jobs run at the same time (gprecoverseg -B).",
        c"Further jobs wait in the queue; each segment starts as soon as its own copy ends.",
        &MAX_PARALLEL_JOBS,
        1,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"gp_recovery.max_parallel_jobs_per_host",
        c"Recovery jobs run at the same time on one target host (gprecoverseg -b).",
        c"Counted by the target's host name, next to gp_recovery.max_parallel_jobs; further jobs for that host wait in the queue.",
        &MAX_PARALLEL_JOBS_PER_HOST,
        1,
        128,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"gp_recovery.auto_recover",
        c"Self-healing: off, incremental or auto.",
        c"A segment down for gp_recovery.auto_recover_delay (its content's primary up, some segment on its host up) gets a recovery job of this mode from the service itself, with a history row; after a failed one the wait doubles. off (the default) leaves recovery to the DBA, as Greenplum does.",
        &AUTO_RECOVER,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"gp_recovery.auto_recover_delay",
        c"Seconds a segment stays down (or a pair switched) before self-healing acts.",
        c"Counted from when the jobs worker first saw it; after each failed job of the service's the wait doubles, up to 64 times this.",
        &AUTO_RECOVER_DELAY,
        1,
        86400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_bool_guc(
        c"gp_recovery.auto_rebalance",
        c"Self-healing: return switched pairs to their preferred roles once synchronized.",
        c"A pair switched, up and synchronized for gp_recovery.auto_recover_delay gets a rebalance job (gprecoverseg -r) from the service itself.",
        &AUTO_REBALANCE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"gp_recovery.hba_hostnames",
        c"A relocation lets its new host into the acting primary's pg_hba.conf by host name, not address.",
        c"As gprecoverseg --hba-hostnames; the name must then resolve both ways on the primary's host.",
        &HBA_HOSTNAMES,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"gp_recovery.max_rate",
        c"Transfer limit of a full or differential copy, in kB/s per segment; 0 for none.",
        c"Passed to pg_basebackup --max-rate and rsync --bwlimit, like gprecoverseg --max-rate. pg_rewind has no limit.",
        &MAX_RATE,
        0,
        1048576,
        GucContext::Sighup,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_string_guc(
        c"gp_recovery.remote_shell",
        c"Command that runs a recovery step on another segment host, followed by the host name and the step.",
        c"Used for every segment whose host name is not the coordinator's own (see gp_recovery.local_hosts), and by differential recovery's rsync between hosts. It must log in without a password, as the server's OS user.",
        &REMOTE_SHELL,
        GucContext::Sighup,
        // It may carry key paths and options: superusers only, to read too.
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"gp_recovery.local_hosts",
        c"Comma-separated host names that are the coordinator's own machine.",
        c"Steps for segments on these hosts (and on localhost, 127.0.0.1, ::1 and the machine's host name) run directly instead of through gp_recovery.remote_shell.",
        &LOCAL_HOSTS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    for (name, short, long, setting, max) in [
        (
            c"gp_recovery.job_call_timeout",
            c"Seconds one call of a recovery job to a segment may take (probe, CHECKPOINT, slot, promote).",
            c"A job's own patience, apart from the fault tolerance service's probe timeout: a CHECKPOINT after a bulk load can take long.",
            &JOB_CALL_TIMEOUT,
            3600,
        ),
        (
            c"gp_recovery.job_start_timeout",
            c"Seconds a recovered segment may take to start (phase starting).",
            c"Past it the job fails with the cause read from the segment's log, and the segment is stopped and left down.",
            &JOB_START_TIMEOUT,
            86400,
        ),
        (
            c"gp_recovery.job_connect_timeout",
            c"Seconds a started segment may take until its primary reports its stream (phase connecting).",
            c"Past it the job fails with the cause read from the segment's log, and the segment is stopped and left down.",
            &JOB_CONNECT_TIMEOUT,
            86400,
        ),
        (
            c"gp_recovery.job_catchup_timeout",
            c"Seconds a catching-up mirror may go without progress (phase catching up).",
            c"The bound is on time without progress, so a long catch-up that moves is never cut short.",
            &JOB_CATCHUP_TIMEOUT,
            86400,
        ),
        (
            c"gp_recovery.job_sync_timeout",
            c"Seconds the fault tolerance service may take to mark a caught-up pair synchronized (phase synchronizing).",
            c"Past it the job fails; the segment stays up and the fault tolerance service goes on watching it.",
            &JOB_SYNC_TIMEOUT,
            86400,
        ),
        (
            c"gp_recovery.switchover_timeout",
            c"Seconds a switchover's stopped primary waits for its mirror to replay its final checkpoint.",
            c"Writes to the content wait meanwhile; past it the old primary is started again as the primary and the job fails.",
            &SWITCHOVER_TIMEOUT,
            3600,
        ),
        (
            c"gp_recovery.auto_rebalance_failover_window",
            c"Seconds over which self-healing counts a content's failovers before it rebalances it.",
            c"See gp_recovery.auto_rebalance_max_failovers.",
            &AUTO_REBALANCE_FAILOVER_WINDOW,
            86400 * 30,
        ),
        (
            c"gp_recovery.copy_stall_timeout",
            c"Seconds pg_rewind, pg_basebackup or rsync may go without printing progress before its job fails.",
            c"A source that hangs mid-copy would hold its content forever; past this bound the copy is stopped, the job fails naming the stall, and the segment stays down and recoverable.",
            &COPY_STALL_TIMEOUT,
            86400,
        ),
    ] {
        GucRegistry::define_int_guc(name, short, long, setting, 1, max, GucContext::Sighup, GucFlags::UNIT_S);
    }
    GucRegistry::define_int_guc(
        c"gp_recovery.switchover_replay_lag",
        c"WAL a mirror may still have to replay, in kB, for a switchover to stop its primary.",
        c"Checked live right before the stop (with replay not paused and no recovery_min_apply_delay), by gp_rebalance(), self-healing and the job: after the stop, writes wait until the mirror has replayed it all.",
        &SWITCHOVER_REPLAY_LAG,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"gp_recovery.auto_rebalance_max_failovers",
        c"Failovers of a content within gp_recovery.auto_rebalance_failover_window after which self-healing no longer rebalances it.",
        c"Damping for a flapping primary: each rebalance would put the primary back on the member that keeps failing. gp_rebalance() by hand still works. 0 never rebalances automatically.",
        &AUTO_REBALANCE_MAX_FAILOVERS,
        0,
        1000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"gp_recovery.history_retention",
        c"How long rows of gp_configuration_history are kept; 0 (the default, as in Greenplum) keeps them forever.",
        c"The jobs worker removes older rows once a minute.",
        &HISTORY_RETENTION,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"gp_recovery.job_retention",
        c"How long ended recovery jobs are kept in gp_recovery_job, with their log files; 0 keeps them forever.",
        c"The jobs worker removes succeeded, failed and canceled jobs that finished longer ago than this, and their files in gp_recovery_log/, once a minute.",
        &JOB_RETENTION,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_string_guc(
        c"gp_recovery.fault_point",
        c"For tests: the jobs worker exits at this point of a job (KIND:PHASE:before|after[:crash]).",
        c"before: the phase's intent is committed, its side effect not started; after: the effect ended, its outcome not committed. With :crash the worker kills itself and the coordinator restarts. Empty (the default) for none.",
        &FAULT_POINT,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // A postmaster-level setting can only be defined while preloading;
    // loaded later (CREATE EXTENSION without the preload) it would be FATAL.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        define_database();
    }
    GucRegistry::define_int_guc(
        c"gp_recovery.coordinator_epoch",
        c"The highest coordinator epoch this instance has seen; set by gp_recovery, never by hand.",
        c"Kept as a setting of the database postgres on every instance (ALTER DATABASE postgres SET); a standby coordinator raises it everywhere when it is activated, and a coordinator that finds a higher one takes no decision.",
        &COORDINATOR_EPOCH,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::DISALLOW_IN_FILE,
    );
    // Typos such as gp_recovery.fts_probe_intervall are rejected instead of
    // silently creating a placeholder.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"gp_recovery".as_ptr()) };
}

fn define_database() {
    GucRegistry::define_string_guc(
        c"gp_recovery.database",
        c"Database in which the gp_recovery extension (and so the segment catalog) lives.",
        c"The fault tolerance service connects to it.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}
