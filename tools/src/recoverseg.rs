//! gprecoverseg: Greenplum's flags, plan, prompt, progress and closing
//! messages over gp_recovery_plan, gp_recover_all, gp_recover_from_config,
//! gp_rebalance, gp_recovery_config, gp_recovery_cancel and the job views.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gp_recovery_core::rebalance::{NOTHING_TO_REBALANCE, REPLAY_LAG_REFUSAL};
use gp_recovery_core::recovery::{config_line_segment, parse_config, RecoveryMode};
use gp_recovery_core::segment::{Role, Segment};

use crate::conn::Db;
use crate::jobs::{self, RebalanceNotes};
use crate::layout::{key_values, Entry, RULE};
use crate::log::{Level, Log};
use crate::watch::{self, Progress, Signals};
use crate::{catalog, exit, prompt, relocate, ToolError};

/// Greenplum's default replay lag allowed during a rebalance (gp.ALLOWED_REPLAY_LAG), in GB.
pub const ALLOWED_REPLAY_LAG_GB: f64 = 10.0;

#[derive(Parser, Debug)]
#[command(
    name = "gprecoverseg",
    version,
    about = "Recover a failed segment",
    after_help = "Runs wherever the coordinator can be reached, through the gp_recovery extension's SQL functions \
                  only: the plan from gp_recovery_plan(), the recovery from gp_recover_all() or \
                  gp_recover_from_config(), a rebalance from gp_rebalance(), progress from gp_recovery_progress. \
                  Exit codes: 0 done, 1 a recovery failed or was interrupted, 2 bad arguments or an error, 4 answered no.",
    disable_help_flag = true
)]
pub struct Args {
    #[command(flatten)]
    pub common: crate::CommonArgs,
    /// Show pg_basebackup/pg_rewind progress sequentially instead of inplace
    #[arg(short = 's', help_heading = "Logging Options")]
    pub sequential: bool,
    /// Suppress pg_basebackup/pg_rewind progress output
    #[arg(long = "no-progress", help_heading = "Logging Options")]
    pub no_progress: bool,

    /// Recovery configuration file
    #[arg(short = 'i', value_name = "configFile", help_heading = "Recovery Source Options")]
    pub input: Option<PathBuf>,
    /// Sample configuration file name to output; this file can be passed to a subsequent call using -i option
    #[arg(short = 'o', value_name = "configFile", help_heading = "Recovery Source Options")]
    pub output: Option<PathBuf>,

    /// Spare new hosts to which to recover segments
    #[arg(short = 'p', value_name = "targetHosts", help_heading = "Recovery Destination Options")]
    pub new_hosts: Option<String>,

    /// Force full segment resynchronization
    #[arg(short = 'F', help_heading = "Recovery Options")]
    pub full: bool,
    /// differential segment resynchronization
    #[arg(long, help_heading = "Recovery Options")]
    pub differential: bool,
    /// Max number of hosts to operate on in parallel. Valid values are: 1-64 (the server's
    /// gp_recovery.max_parallel_jobs decides)
    #[arg(
        short = 'B',
        value_name = "parallelDegree",
        allow_negative_numbers = true,
        help_heading = "Recovery Options"
    )]
    pub parallel: Option<i64>,
    /// Max number of segments per host to operate on in parallel. Valid values are: 1-128 (the
    /// server's gp_recovery.max_parallel_jobs_per_host decides)
    #[arg(
        short = 'b',
        value_name = "parallelPerHost",
        allow_negative_numbers = true,
        help_heading = "Recovery Options"
    )]
    pub parallel_per_host: Option<i64>,
    /// Rebalance synchronized segments.
    #[arg(short = 'r', help_heading = "Recovery Options")]
    pub rebalance: bool,
    /// Allowed replay lag on mirror, lag should be provided in GBs
    #[arg(
        long = "replay-lag",
        value_name = "replayLag",
        allow_negative_numbers = true,
        help_heading = "Recovery Options"
    )]
    pub replay_lag: Option<f64>,
    /// Disable replay lag check when rebalancing segments
    #[arg(long = "disable-replay-lag", help_heading = "Recovery Options")]
    pub disable_replay_lag: bool,

    /// Arguments that are not options, refused as Greenplum refuses them.
    #[arg(hide = true)]
    pub extra: Vec<String>,
}

/// Where the segments to recover come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Every down segment, in place.
    Down,
    /// A recovery configuration file (-i).
    File(PathBuf),
    /// The down segments moved onto these hosts (-p).
    NewHosts(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// -o: write a configuration and stop.
    WriteConfig {
        file: PathBuf,
        new_hosts: Option<Vec<String>>,
    },
    /// -r: the limit in GB (for messages) and in bytes; None disables the check.
    Rebalance {
        replay_lag: Option<(f64, i64)>,
    },
    Recover {
        mode: RecoveryMode,
        source: Source,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub action: Action,
    pub prompt: bool,
    pub progress: Progress,
}

/// --replay-lag's GB (2^30 bytes, as Greenplum counts them) in bytes.
pub fn gb_to_bytes(gb: f64) -> Result<i64, ToolError> {
    let bytes = (gb * 1073741824.0).round();
    if !gb.is_finite() || gb < 0.0 || bytes >= i64::MAX as f64 {
        return Err(ToolError::Usage(format!("Invalid --replay-lag value: {gb}; give 0 or more GB")));
    }
    Ok(bytes as i64)
}

/// The flags checked as Greenplum's validateRecoveryParams checks them, in
/// its order and with its messages; the checks marked "ours" are for flags
/// whose meaning differs here.
pub fn validate(args: &Args, stdout_is_terminal: bool) -> Result<Request, ToolError> {
    let usage = |m: &str| Err(ToolError::Usage(m.to_string()));
    if !args.extra.is_empty() {
        return usage("too many arguments: only options may be specified");
    }
    if let Some(b) = args.parallel.filter(|b| !(1..=64).contains(b)) {
        return usage(&format!("Invalid parallelDegree value provided with -B argument: {b}"));
    }
    if let Some(b) = args.parallel_per_host.filter(|b| !(1..=128).contains(b)) {
        return usage(&format!("Invalid parallelPerHost value provided with -b argument: {b}"));
    }
    let where_to = usize::from(args.new_hosts.is_some()) + usize::from(args.rebalance);
    if where_to > 1 {
        return usage("Only one of -p and -r may be specified");
    }
    if where_to > 0 && args.input.is_some() {
        return usage("Only one of -i, -p and -r may be specified");
    }
    if where_to > 0 && args.differential {
        return usage("Only one of -p, -r and --differential may be specified");
    }
    if args.full && args.differential {
        return usage("Only one of -F and --differential may be specified");
    }
    if args.differential && args.output.is_some() {
        return usage("Invalid -o provided with --differential argument");
    }
    if args.input.is_some() && args.output.is_some() {
        return usage("Invalid -i provided with -o argument");
    }
    if args.rebalance && args.output.is_some() {
        return usage("Invalid -r provided with -o argument");
    }
    if args.disable_replay_lag && !args.rebalance {
        return usage("--disable-replay-lag should be used only with -r");
    }
    if args.full && args.rebalance {
        return usage("-F option is not supported with -r option");
    }
    if args.full && args.new_hosts.is_some() {
        return usage("-F option is not supported with -p option");
    }
    // Ours: Greenplum ignores --replay-lag without -r, and lets
    // --disable-replay-lag win over it.
    if args.replay_lag.is_some() && !args.rebalance {
        return usage("--replay-lag should be used only with -r");
    }
    if args.replay_lag.is_some() && args.disable_replay_lag {
        return usage("Only one of --replay-lag and --disable-replay-lag may be specified");
    }
    // Ours: the lines of an -i file carry their own recovery type (I, D, F).
    if args.input.is_some() && (args.full || args.differential) {
        return usage(
            "Only one of -i and -F or --differential may be specified: put the recovery type (I, D or F) at the start \
             of each line of the file instead",
        );
    }
    let new_hosts = match &args.new_hosts {
        Some(h) => {
            let hosts = relocate::parse_hosts(h);
            if hosts.is_empty() {
                return usage("Invalid value for recover hosts: no host given with -p");
            }
            Some(hosts)
        }
        None => None,
    };
    let action = if let Some(file) = &args.output {
        Action::WriteConfig { file: file.clone(), new_hosts }
    } else if args.rebalance {
        let replay_lag = if args.disable_replay_lag {
            None
        } else {
            let gb = args.replay_lag.unwrap_or(ALLOWED_REPLAY_LAG_GB);
            Some((gb, gb_to_bytes(gb)?))
        };
        Action::Rebalance { replay_lag }
    } else {
        let mode = if args.full {
            RecoveryMode::Full
        } else if args.differential {
            RecoveryMode::Differential
        } else {
            RecoveryMode::Incremental
        };
        let source = match (&args.input, new_hosts) {
            (Some(file), _) => Source::File(file.clone()),
            (None, Some(hosts)) => Source::NewHosts(hosts),
            (None, None) => Source::Down,
        };
        Action::Recover { mode, source }
    };
    let progress = if args.no_progress || args.common.quiet {
        Progress::Off
    } else if args.sequential || !stdout_is_terminal {
        Progress::Lines
    } else {
        Progress::Bars
    };
    Ok(Request { action, prompt: !args.common.no_prompt, progress })
}

/// -B and -b do not change one run: the server's settings decide. Says so
/// when a value given differs from the server's.
pub fn parallel_warnings(given: [Option<i64>; 2], server: [Option<String>; 2]) -> Vec<String> {
    const FLAGS: [(&str, &str); 2] =
        [("-B", "gp_recovery.max_parallel_jobs"), ("-b", "gp_recovery.max_parallel_jobs_per_host")];
    given
        .iter()
        .zip(server)
        .zip(FLAGS)
        .filter_map(|((given, server), (flag, setting))| {
            let n = (*given)?;
            let current = server.unwrap_or_else(|| "unknown".into());
            (current != n.to_string()).then(|| {
                format!(
                    "{flag} {n} is not applied to one run: the server's {setting} ({current}) decides; a superuser \
                     changes it with ALTER SYSTEM SET {setting} = {n} and SELECT pg_reload_conf()"
                )
            })
        })
        .collect()
}

/// A segment's place as the plan shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub hostname: String,
    pub address: String,
    pub datadir: String,
    pub port: i32,
}

impl Instance {
    fn of(s: &Segment) -> Instance {
        Instance { hostname: s.hostname.clone(), address: s.address.clone(), datadir: s.datadir.clone(), port: s.port }
    }

    fn entries(&self, kind: &str) -> Vec<Entry> {
        vec![
            Entry::new(format!("{kind} instance host"), &self.hostname),
            Entry::new(format!("{kind} instance address"), &self.address),
            Entry::new(format!("{kind} instance directory"), &self.datadir),
            Entry::new(format!("{kind} instance port"), self.port),
        ]
    }
}

/// A row of gp_recovery_plan() as the function returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedJob {
    pub dbid: i16,
    pub recovery_type: String,
    pub estimated_bytes: Option<i64>,
    pub free_bytes: Option<i64>,
    pub warnings: Vec<String>,
}

/// One recovery of the plan, with its places.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRow {
    pub job: PlannedJob,
    pub failed: Instance,
    pub source: Option<Instance>,
    /// None: in place.
    pub target: Option<Instance>,
}

/// The plan's rows with the failed segment and its source from the
/// catalog, and a relocation's target from the configuration the plan was
/// made of.
pub fn plan_rows(planned: Vec<PlannedJob>, catalog: &[Segment], config: Option<&str>) -> Vec<PlanRow> {
    // The extension has read this configuration already; what it accepted parses.
    let targets: HashMap<i16, Instance> = config
        .and_then(|c| parse_config(c).ok())
        .unwrap_or_default()
        .iter()
        .filter_map(|line| {
            let new = line.new.as_ref()?;
            let failed = config_line_segment(catalog, line).ok()?;
            let hostname = new.hostname.clone().unwrap_or_else(|| new.address.clone());
            Some((
                failed.dbid,
                Instance { hostname, address: new.address.clone(), datadir: new.datadir.clone(), port: new.port },
            ))
        })
        .collect();
    planned
        .into_iter()
        .filter_map(|job| {
            let failed = catalog.iter().find(|s| s.dbid == job.dbid)?;
            let source = catalog
                .iter()
                .find(|s| s.content == failed.content && s.dbid != failed.dbid && s.role == Role::Primary);
            Some(PlanRow {
                failed: Instance::of(failed),
                source: source.map(Instance::of),
                target: targets.get(&job.dbid).cloned(),
                job,
            })
        })
        .collect()
}

/// How the segments to recover were chosen, for the plan's heading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanKind {
    Standard,
    PoolHost(Vec<String>),
    ConfigFile,
}

fn heading(kind: &PlanKind) -> Vec<(Level, String)> {
    let info = |s: String| (Level::Info, s);
    let mut lines = vec![info("Greenplum instance recovery parameters".into()), info(RULE.into())];
    match kind {
        PlanKind::Standard => lines.push(info("Recovery type              = Standard".into())),
        PlanKind::ConfigFile => lines.push(info("Recovery from configuration -i option supplied".into())),
        PlanKind::PoolHost(hosts) => {
            lines.push(info("Recovery type              = Pool Host".into()));
            lines.extend(hosts.iter().map(|h| info(format!("Pool host for recovery     = {h}"))));
        }
    }
    lines
}

/// "Incremental", "Full", ...: Greenplum's synchronization mode names.
fn sync_mode(recovery_type: &str) -> String {
    let mut c = recovery_type.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

/// The plan as gprecoverseg shows it before its question: one block per
/// segment with its synchronization mode, failed instance, source and
/// target, then the plan's warnings.
pub fn plan_lines(kind: &PlanKind, rows: &[PlanRow]) -> Vec<(Level, String)> {
    let info = |s: &str| (Level::Info, s.to_string());
    let mut lines = heading(kind);
    for (i, row) in rows.iter().enumerate() {
        lines.push(info(RULE));
        lines.push(info(&format!("Recovery {} of {}", i + 1, rows.len())));
        lines.push(info(RULE));
        let mut entries = vec![Entry::new("Synchronization mode", sync_mode(&row.job.recovery_type))];
        entries.extend(row.failed.entries("Failed"));
        match &row.source {
            Some(s) => entries.extend(s.entries("Recovery Source")),
            None => entries.push(Entry::new("Recovery Source", "none: the content has no primary up").warn_if(true)),
        }
        match &row.target {
            Some(t) => entries.extend(t.entries("Recovery Target")),
            None => entries.push(Entry::new("Recovery Target", "in-place")),
        }
        if let Some(b) = row.job.estimated_bytes {
            entries.push(Entry::new("Estimated bytes to copy", crate::layout::human_bytes(b)));
        }
        if let Some(b) = row.job.free_bytes {
            entries.push(Entry::new("Free space on the target", crate::layout::human_bytes(b)));
        }
        lines.extend(key_values(&entries).into_iter().map(|l| (Level::Info, l)));
    }
    lines.push(info(RULE));
    for row in rows {
        if let (Some(s), Some(t)) = (&row.source, &row.target) {
            if s.hostname == t.hostname {
                lines.push((
                    Level::Warning,
                    format!(
                        "Segment is being recovered to the same host as its primary: primary {}:{}    failover target: {}:{}",
                        s.address, s.datadir, t.address, t.datadir
                    ),
                ));
            }
        }
        lines.extend(row.job.warnings.iter().map(|w| (Level::Warning, format!("dbid {}: {w}", row.job.dbid))));
    }
    lines
}

/// The segments -r would move back to their preferred role, as Greenplum
/// lists them before asking.
pub fn rebalance_lines(catalog: &[Segment]) -> Vec<(Level, String)> {
    let unbalanced: Vec<&Segment> = catalog.iter().filter(|s| s.is_segment() && s.role != s.preferred_role).collect();
    let info = |s: &str| (Level::Info, s.to_string());
    let mut lines = vec![
        info("Greenplum instance recovery parameters"),
        info(RULE),
        info("Recovery type              = Rebalance"),
    ];
    for (i, s) in unbalanced.iter().enumerate() {
        lines.push(info(RULE));
        lines.push(info(&format!("Unbalanced segment {} of {}", i + 1, unbalanced.len())));
        lines.push(info(RULE));
        let mut entries = Instance::of(s).entries("Unbalanced");
        entries.push(Entry::new("Balanced role", s.preferred_role.label()));
        entries.push(Entry::new("Current role", s.role.label()));
        lines.extend(key_values(&entries).into_iter().map(|l| (Level::Info, l)));
    }
    lines.push(info(RULE));
    lines
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    args.common.main("gprecoverseg", |log| run(&args, log))
}

fn run(args: &Args, log: &Log) -> Result<u8, ToolError> {
    let request = validate(args, std::io::stdout().is_terminal())?;
    let mut db = Db::connect_as(args.common.conninfo.as_deref(), "gprecoverseg")?;
    let catalog = catalog::load(&mut db, log)?;
    if !catalog::has_mirrors(&catalog) {
        return Err(ToolError::Refused(
            "GPDB Mirroring replication is not configured for this Greenplum Database instance.".into(),
        ));
    }
    if args.parallel.is_some() || args.parallel_per_host.is_some() {
        let row = db.query(
            log,
            "SELECT current_setting('gp_recovery.max_parallel_jobs', true), \
                    current_setting('gp_recovery.max_parallel_jobs_per_host', true)",
            &[],
        )?;
        let server = row.first().map_or([None, None], |r| [r.get(0), r.get(1)]);
        for w in parallel_warnings([args.parallel, args.parallel_per_host], server) {
            log.warn(&w);
        }
    }
    match &request.action {
        Action::WriteConfig { file, new_hosts } => write_config(&mut db, log, &catalog, file, new_hosts.as_deref()),
        Action::Rebalance { replay_lag } => rebalance(&mut db, log, &catalog, &request, *replay_lag),
        Action::Recover { mode, source } => recover(&mut db, log, &catalog, &request, *mode, source),
    }
}

/// The -p configuration, with a warning for the hosts it did not need.
fn relocation_config(log: &Log, catalog: &[Segment], hosts: &[String]) -> Result<String, ToolError> {
    let r = relocate::relocation(catalog, hosts)?;
    if !r.unused_hosts.is_empty() {
        log.warn("The following recovery hosts were not needed:");
        for h in &r.unused_hosts {
            log.warn(&format!("\t{h}"));
        }
    }
    Ok(r.config)
}

fn write_config(
    db: &mut Db,
    log: &Log,
    catalog: &[Segment],
    file: &std::path::Path,
    new_hosts: Option<&[String]>,
) -> Result<u8, ToolError> {
    let text = match new_hosts {
        Some(hosts) => relocation_config(log, catalog, hosts)?,
        None => {
            let rows = db.query(log, "SELECT gp_recovery_config()", &[])?;
            rows.first().map(|r| r.get::<_, String>(0)).unwrap_or_default()
        }
    };
    std::fs::write(file, text).map_err(|source| ToolError::File {
        what: "could not write",
        path: file.display().to_string(),
        source,
    })?;
    log.info(&format!("Configuration file output to {} successfully.", file.display()));
    Ok(exit::OK)
}

fn plan(
    db: &mut Db,
    log: &Log,
    catalog: &[Segment],
    mode: RecoveryMode,
    config: Option<&str>,
) -> Result<Vec<PlanRow>, ToolError> {
    let mode = mode.as_str();
    let planned = db
        .query(
            log,
            "SELECT dbid, recovery_type, estimated_bytes, free_bytes, warnings \
               FROM gp_recovery_plan(mode => $1::text, config => $2::text) ORDER BY content, dbid",
            &[&mode, &config],
        )?
        .iter()
        .map(|r| PlannedJob {
            dbid: r.get(0),
            recovery_type: r.get(1),
            estimated_bytes: r.get(2),
            free_bytes: r.get(3),
            warnings: r.get(4),
        })
        .collect();
    Ok(plan_rows(planned, catalog, config))
}

fn recover(
    db: &mut Db,
    log: &Log,
    catalog: &[Segment],
    request: &Request,
    mode: RecoveryMode,
    source: &Source,
) -> Result<u8, ToolError> {
    let (kind, config) = match source {
        Source::Down => (PlanKind::Standard, None),
        Source::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ToolError::File {
                what: "could not read",
                path: path.display().to_string(),
                source,
            })?;
            (PlanKind::ConfigFile, Some(text))
        }
        Source::NewHosts(hosts) => (PlanKind::PoolHost(hosts.clone()), Some(relocation_config(log, catalog, hosts)?)),
    };
    let rows = plan(db, log, catalog, mode, config.as_deref())?;
    // The plan's NOTICE "No segments to recover" is said below, once.
    db.take_notices();
    if rows.is_empty() {
        log.info("No segments to recover");
        return Ok(exit::OK);
    }
    log.lines(&plan_lines(&kind, &rows));
    if request.prompt && !prompt::ask(None, "Continue with segment recovery procedure", false)? {
        log.info("User abort requested, Exiting...");
        return Ok(exit::ABORTED);
    }
    log.info(&format!("{} segment(s) to recover", rows.len()));
    // As gprecoverseg, from here on Ctrl-C asks before it stops the recovery.
    let signals = Signals::install()?;
    let ids: Vec<i64> = match &config {
        None => db.query(log, "SELECT * FROM gp_recover_all($1::text)", &[&mode.as_str()])?,
        Some(text) => db.query(log, "SELECT * FROM gp_recover_from_config($1::text)", &[text])?,
    }
    .iter()
    .map(|r| r.get(0))
    .collect();
    db.relay_notices(log);
    if ids.is_empty() {
        log.info("No segments to recover");
        return Ok(exit::OK);
    }
    log.info("Initiating segment recovery. Upon completion, will start the successfully recovered segments");
    let watched = watch::watch(db, log, &ids, request.progress, &signals)?;
    let outcome = jobs::recovery_summary(&watched.jobs, watched.interrupted);
    log.lines(&outcome.lines);
    Ok(outcome.exit)
}

fn rebalance(
    db: &mut Db,
    log: &Log,
    catalog: &[Segment],
    request: &Request,
    replay_lag: Option<(f64, i64)>,
) -> Result<u8, ToolError> {
    if catalog.iter().all(|s| s.role == s.preferred_role) {
        log.info(NOTHING_TO_REBALANCE);
        return Ok(exit::OK);
    }
    log.lines(&rebalance_lines(catalog));
    match replay_lag {
        Some((gb, _)) => log.info(&format!("Allowed replay lag during rebalance is {gb} GB")),
        None => log.info("The replay lag check is disabled"),
    }
    if request.prompt {
        log.warn("This operation will cancel queries that are currently executing.");
        log.warn("Connections to the database however will not be interrupted.");
        if !prompt::ask(None, "Continue with segment rebalance procedure", false)? {
            log.info("User abort requested, Exiting...");
            return Ok(exit::ABORTED);
        }
    }
    let signals = Signals::install()?;
    let limit = replay_lag.map(|(_, bytes)| bytes);
    let ids: Vec<i64> =
        db.query(log, "SELECT * FROM gp_rebalance($1::bigint)", &[&limit])?.iter().map(|r| r.get(0)).collect();
    let skipped: Vec<String> =
        db.relay_notices(log).into_iter().filter(|n| n.severity == "WARNING").map(|n| n.message).collect();
    let notes = RebalanceNotes { replay_lag: skipped.iter().any(|w| w.contains(REPLAY_LAG_REFUSAL)), skipped };
    let watched = watch::watch(db, log, &ids, request.progress, &signals)?;
    let outcome = jobs::rebalance_summary(&watched.jobs, watched.interrupted, &notes);
    log.lines(&outcome.lines);
    Ok(outcome.exit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gp_recovery_core::segment::{Mode, Status};

    fn args(list: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("gprecoverseg").chain(list.iter().copied())).expect("flags parse")
    }

    fn refused(list: &[&str]) -> String {
        match validate(&args(list), true) {
            Err(ToolError::Usage(m)) => m,
            other => panic!("{list:?}: expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn bad_combinations_get_greenplum_s_messages() {
        let cases: &[(&[&str], &str)] = &[
            (&["x"], "too many arguments: only options may be specified"),
            (&["-B", "0"], "Invalid parallelDegree value provided with -B argument: 0"),
            (&["-B", "65"], "Invalid parallelDegree value provided with -B argument: 65"),
            (&["-b", "-1"], "Invalid parallelPerHost value provided with -b argument: -1"),
            (&["-b", "129"], "Invalid parallelPerHost value provided with -b argument: 129"),
            (&["-p", "sdw9", "-r"], "Only one of -p and -r may be specified"),
            (&["-i", "f", "-r"], "Only one of -i, -p and -r may be specified"),
            (&["-i", "f", "-p", "sdw9"], "Only one of -i, -p and -r may be specified"),
            (&["-r", "--differential"], "Only one of -p, -r and --differential may be specified"),
            (&["-p", "sdw9", "--differential"], "Only one of -p, -r and --differential may be specified"),
            (&["-F", "--differential"], "Only one of -F and --differential may be specified"),
            (&["-o", "f", "--differential"], "Invalid -o provided with --differential argument"),
            (&["-i", "f", "-o", "g"], "Invalid -i provided with -o argument"),
            (&["-r", "-o", "f"], "Invalid -r provided with -o argument"),
            (&["--disable-replay-lag"], "--disable-replay-lag should be used only with -r"),
            (&["-F", "-r"], "-F option is not supported with -r option"),
            (&["-F", "-p", "sdw9"], "-F option is not supported with -p option"),
            (&["--replay-lag", "1"], "--replay-lag should be used only with -r"),
            (
                &["-r", "--replay-lag", "1", "--disable-replay-lag"],
                "Only one of --replay-lag and --disable-replay-lag may be specified",
            ),
            (&["-r", "--replay-lag", "-1"], "Invalid --replay-lag value: -1; give 0 or more GB"),
            (&["-p", ","], "Invalid value for recover hosts: no host given with -p"),
        ];
        for (flags, message) in cases {
            assert_eq!(refused(flags), *message, "{flags:?}");
        }
        assert!(refused(&["-i", "f", "-F"]).starts_with("Only one of -i and -F or --differential may be specified"));
    }

    #[test]
    fn what_the_flags_ask_for() {
        let r = validate(&args(&[]), true).unwrap();
        assert_eq!(r.action, Action::Recover { mode: RecoveryMode::Incremental, source: Source::Down });
        assert!(r.prompt);
        assert_eq!(r.progress, Progress::Bars);
        let r = validate(&args(&["-a", "-F"]), false).unwrap();
        assert_eq!(r.action, Action::Recover { mode: RecoveryMode::Full, source: Source::Down });
        assert!(!r.prompt);
        assert_eq!(r.progress, Progress::Lines, "plain lines when stdout is not a terminal");
        let r = validate(&args(&["--differential", "-s"]), true).unwrap();
        assert_eq!(r.action, Action::Recover { mode: RecoveryMode::Differential, source: Source::Down });
        assert_eq!(r.progress, Progress::Lines, "-s: lines on a terminal too");
        assert_eq!(validate(&args(&["--no-progress"]), true).unwrap().progress, Progress::Off);
        assert_eq!(validate(&args(&["-q"]), true).unwrap().progress, Progress::Off);
        let r = validate(&args(&["-i", "recover.conf"]), true).unwrap();
        assert_eq!(
            r.action,
            Action::Recover { mode: RecoveryMode::Incremental, source: Source::File("recover.conf".into()) }
        );
        let r = validate(&args(&["-p", "sdw8,sdw9"]), true).unwrap();
        assert_eq!(
            r.action,
            Action::Recover {
                mode: RecoveryMode::Incremental,
                source: Source::NewHosts(vec!["sdw8".into(), "sdw9".into()])
            }
        );
        let r = validate(&args(&["-o", "out.conf", "-p", "sdw9"]), true).unwrap();
        assert_eq!(r.action, Action::WriteConfig { file: "out.conf".into(), new_hosts: Some(vec!["sdw9".into()]) });
        let r = validate(&args(&["-r"]), true).unwrap();
        assert_eq!(r.action, Action::Rebalance { replay_lag: Some((10.0, 10737418240)) }, "Greenplum's 10 GB");
        let r = validate(&args(&["-r", "--replay-lag", "0.5"]), true).unwrap();
        assert_eq!(r.action, Action::Rebalance { replay_lag: Some((0.5, 536870912)) });
        let r = validate(&args(&["-ra", "--disable-replay-lag"]), true).unwrap();
        assert_eq!(r.action, Action::Rebalance { replay_lag: None });
        assert!(validate(&args(&["-B", "64", "-b", "1"]), true).is_ok());
    }

    #[test]
    fn gigabytes_are_binary() {
        assert_eq!(gb_to_bytes(0.0).unwrap(), 0);
        assert_eq!(gb_to_bytes(1.0).unwrap(), 1 << 30);
        assert_eq!(gb_to_bytes(10.0).unwrap(), 10737418240);
        assert!(gb_to_bytes(f64::NAN).is_err());
        assert!(gb_to_bytes(-0.5).is_err());
        assert!(gb_to_bytes(1e12).is_err(), "beyond a bigint");
    }

    #[test]
    fn parallelism_flags_defer_to_the_server() {
        let w = parallel_warnings([Some(8), None], [Some("16".into()), Some("64".into())]);
        assert_eq!(
            w,
            vec![
                "-B 8 is not applied to one run: the server's gp_recovery.max_parallel_jobs (16) decides; a \
                  superuser changes it with ALTER SYSTEM SET gp_recovery.max_parallel_jobs = 8 and SELECT \
                  pg_reload_conf()"
            ]
        );
        assert!(parallel_warnings([Some(16), Some(64)], [Some("16".into()), Some("64".into())]).is_empty());
        assert!(parallel_warnings([None, Some(4)], [None, None])[0].contains("max_parallel_jobs_per_host (unknown)"));
    }

    fn seg(dbid: i16, content: i16, role: Role, preferred: Role, status: Status, host: &str, port: i32) -> Segment {
        Segment {
            dbid,
            content,
            role,
            preferred_role: preferred,
            mode: Mode::NotInSync,
            status,
            port,
            hostname: host.into(),
            address: format!("{host}-1"),
            datadir: format!("/data/{dbid}"),
        }
    }

    fn catalog() -> Vec<Segment> {
        vec![
            seg(1, -1, Role::Primary, Role::Primary, Status::Up, "cdw", 5432),
            seg(2, 0, Role::Mirror, Role::Primary, Status::Down, "sdw1", 7001),
            seg(3, 0, Role::Primary, Role::Mirror, Status::Up, "sdw2", 7002),
        ]
    }

    fn planned(dbid: i16, kind: &str) -> PlannedJob {
        PlannedJob { dbid, recovery_type: kind.into(), estimated_bytes: None, free_bytes: None, warnings: vec![] }
    }

    fn texts(lines: &[(Level, String)]) -> Vec<String> {
        lines.iter().map(|(l, s)| format!("{}:{s}", l.name())).collect()
    }

    #[test]
    fn the_plan_in_greenplum_s_layout() {
        let rows = plan_rows(vec![planned(2, "incremental")], &catalog(), None);
        assert_eq!(
            texts(&plan_lines(&PlanKind::Standard, &rows)),
            vec![
                "INFO:Greenplum instance recovery parameters",
                "INFO:---------------------------------------------------------",
                "INFO:Recovery type              = Standard",
                "INFO:---------------------------------------------------------",
                "INFO:Recovery 1 of 1",
                "INFO:---------------------------------------------------------",
                "INFO:   Synchronization mode                 = Incremental",
                "INFO:   Failed instance host                 = sdw1",
                "INFO:   Failed instance address              = sdw1-1",
                "INFO:   Failed instance directory            = /data/2",
                "INFO:   Failed instance port                 = 7001",
                "INFO:   Recovery Source instance host        = sdw2",
                "INFO:   Recovery Source instance address     = sdw2-1",
                "INFO:   Recovery Source instance directory   = /data/3",
                "INFO:   Recovery Source instance port        = 7002",
                "INFO:   Recovery Target                      = in-place",
                "INFO:---------------------------------------------------------",
            ]
        );
    }

    #[test]
    fn a_relocation_shows_its_target_sizes_and_warnings() {
        let mut job = planned(2, "full");
        job.estimated_bytes = Some(116 << 20);
        job.free_bytes = Some(50 << 30);
        job.warnings = vec!["host sdw2 is unreachable".into()];
        let config = "sdw1|sdw1-1|7001|/data/2 sdw2|sdw2|7100|/data/new2\n";
        let rows = plan_rows(vec![job], &catalog(), Some(config));
        let t = texts(&plan_lines(&PlanKind::PoolHost(vec!["sdw2".into()]), &rows));
        assert_eq!(t[2], "INFO:Recovery type              = Pool Host");
        assert_eq!(t[3], "INFO:Pool host for recovery     = sdw2");
        for line in [
            "INFO:   Synchronization mode                 = Full",
            "INFO:   Recovery Target instance host        = sdw2",
            "INFO:   Recovery Target instance address     = sdw2",
            "INFO:   Recovery Target instance directory   = /data/new2",
            "INFO:   Recovery Target instance port        = 7100",
            "INFO:   Estimated bytes to copy              = 116.0 MB",
            "INFO:   Free space on the target             = 50.0 GB",
            "WARNING:Segment is being recovered to the same host as its primary: primary sdw2-1:/data/3    failover \
             target: sdw2:/data/new2",
            "WARNING:dbid 2: host sdw2 is unreachable",
        ] {
            assert!(t.contains(&line.to_string()), "{line} missing from {t:#?}");
        }
        let from_file = texts(&plan_lines(&PlanKind::ConfigFile, &rows));
        assert_eq!(from_file[2], "INFO:Recovery from configuration -i option supplied");
    }

    #[test]
    fn the_rebalance_plan_lists_switched_segments() {
        let mut c = catalog();
        c[1].status = Status::Up;
        let t = texts(&rebalance_lines(&c));
        assert_eq!(t[2], "INFO:Recovery type              = Rebalance");
        assert_eq!(t[4], "INFO:Unbalanced segment 1 of 2");
        assert!(t.contains(&"INFO:   Balanced role                   = Primary".to_string()), "{t:#?}");
        assert!(t.contains(&"INFO:   Current role                    = Mirror".to_string()), "{t:#?}");
        assert_eq!(t.iter().filter(|l| l.starts_with("INFO:Unbalanced segment")).count(), 2);
    }
}
