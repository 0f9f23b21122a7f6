//! gpstate: Greenplum 7's sections and wording, read from the extension's
//! views: gp_state_report() and gp_recovery_progress (-e),
//! gp_mirror_status (-m), gp_segment_configuration (-c), gp_segment_status
//! (-s and the default -b).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::ExitCode;

use clap::Parser;
use gp_recovery_core::segment::{Mode, Role, Segment, Status};

use crate::conn::Db;
use crate::layout::{key_values, table, Entry, LONG_RULE, SHORT_RULE};
use crate::log::{Level, Log};
use crate::{catalog, exit, ToolError};

#[derive(Parser, Debug)]
#[command(
    name = "gpstate",
    version,
    about = "Display system state",
    after_help = "Reads the gp_recovery extension's views on the coordinator: gp_state_report() and \
                  gp_recovery_progress (-e), gp_mirror_status (-m), gp_segment_configuration (-c), gp_segment_status \
                  (-s, -b). Exit codes: 0 nothing to report, 1 something needs attention (-e, -m, -s), 2 bad arguments \
                  or an error.",
    disable_help_flag = true
)]
pub struct Args {
    #[command(flatten)]
    pub common: crate::CommonArgs,
    /// Show mirror list from configuration
    #[arg(short = 'm', help_heading = "Output Options")]
    pub mirror_list: bool,
    /// Show cluster configuration
    #[arg(short = 'c', help_heading = "Output Options")]
    pub cluster_config: bool,
    /// Show status
    #[arg(short = 's', help_heading = "Output Options")]
    pub status: bool,
    /// Show status statistics
    #[arg(short = 'b', help_heading = "Output Options")]
    pub statistics: bool,
    /// Show summary of segments needing attention
    #[arg(short = 'e', help_heading = "Output Options")]
    pub attention: bool,
    /// Show standby coordinator details
    #[arg(short = 'f', help_heading = "Output Options")]
    pub standby: bool,

    /// Arguments that are not options, refused as Greenplum refuses them.
    #[arg(hide = true)]
    pub extra: Vec<String>,
}

/// Which report gpstate prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Statistics,
    Attention,
    MirrorList,
    ClusterConfig,
    Status,
    Standby,
}

pub fn view(args: &Args) -> Result<View, ToolError> {
    if !args.extra.is_empty() {
        return Err(ToolError::Usage("too many arguments: only options may be specified".into()));
    }
    let chosen: Vec<View> = [
        (args.mirror_list, View::MirrorList),
        (args.cluster_config, View::ClusterConfig),
        (args.status, View::Status),
        (args.statistics, View::Statistics),
        (args.attention, View::Attention),
        (args.standby, View::Standby),
    ]
    .into_iter()
    .filter_map(|(on, v)| on.then_some(v))
    .collect();
    match chosen.as_slice() {
        [] => Ok(View::Statistics),
        [one] => Ok(*one),
        _ => Err(ToolError::Usage("Too many output options specified".into())),
    }
}

type Lines = Vec<(Level, String)>;

fn info(s: impl Into<String>) -> (Level, String) {
    (Level::Info, s.into())
}

fn warn(s: impl Into<String>) -> (Level, String) {
    (Level::Warning, s.into())
}

fn infos(lines: Vec<String>) -> impl Iterator<Item = (Level, String)> {
    lines.into_iter().map(info)
}

const REPORT_HEADER: &str = "Segment Mirroring Status Report";
const ALL_NORMAL: &str = "All segments are running normally";
const NO_MIRRORING: &str = "Physical mirroring is not configured";

/// A row of gp_recovery_progress, for -e's "Segments in recovery".
#[derive(Debug, Clone, PartialEq)]
pub struct InRecovery {
    pub hostname: String,
    pub port: i32,
    pub recovery_type: String,
    pub phase: String,
    pub bytes_done: Option<i64>,
    pub bytes_total: Option<i64>,
    pub percent: Option<f64>,
}

/// gpstate -e: gp_state_report()'s sections between Greenplum's rules,
/// then the jobs in progress; exit code 1 when anything needs attention.
pub fn attention_lines(report: &[String], recovering: &[InRecovery]) -> (Lines, u8) {
    if report.iter().any(|l| l == NO_MIRRORING) {
        return (vec![info(NO_MIRRORING)], exit::FAILED);
    }
    let mut lines = vec![info(SHORT_RULE), info(REPORT_HEADER)];
    let mut attention = false;
    for line in report.iter().filter(|l| *l != REPORT_HEADER && *l != ALL_NORMAL) {
        if line.is_empty() {
            // The report separates its sections with an empty line.
            lines.push(info(SHORT_RULE));
        } else {
            attention = true;
            lines.push(info(line.clone()));
        }
    }
    if !recovering.is_empty() {
        attention = true;
        let kb = |b: Option<i64>| b.map(|b| (b / 1024).to_string()).unwrap_or_default();
        let rows: Vec<Vec<String>> = recovering
            .iter()
            .map(|r| {
                vec![
                    r.hostname.clone(),
                    r.port.to_string(),
                    r.recovery_type.clone(),
                    r.phase.clone(),
                    kb(r.bytes_done),
                    kb(r.bytes_total),
                    r.percent.map(|p| format!("{p:.0}%")).unwrap_or_default(),
                ]
            })
            .collect();
        lines.push(info(SHORT_RULE));
        lines.push(info("Segments in recovery"));
        lines.extend(infos(table(
            &[
                "Segment",
                "Port",
                "Recovery type",
                "Stage",
                "Completed bytes (kB)",
                "Total bytes (kB)",
                "Percentage completed",
            ],
            &rows,
            &[],
        )));
    }
    if !attention {
        lines.push(info(SHORT_RULE));
        lines.push(info(ALL_NORMAL));
    }
    (lines, if attention { exit::FAILED } else { exit::OK })
}

/// "Group" when each host's primaries have their mirrors on one other host,
/// "Spread" when they are spread over several (Greenplum's guess from the
/// preferred roles).
pub fn mirror_type(catalog: &[Segment]) -> &'static str {
    let mut mirror_hosts: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for p in catalog.iter().filter(|s| s.is_segment() && s.preferred_role == Role::Primary) {
        if let Some(m) = catalog.iter().find(|m| m.content == p.content && m.preferred_role == Role::Mirror) {
            mirror_hosts.entry(p.hostname.as_str()).or_default().insert(m.hostname.as_str());
        }
    }
    if mirror_hosts.values().any(|hosts| hosts.len() > 1) {
        "Spread"
    } else {
        "Group"
    }
}

fn mirror_list_heading(catalog: &[Segment]) -> Lines {
    vec![
        info(LONG_RULE),
        info("-Current GPDB mirror list and status"),
        info(format!("-Type = {}", mirror_type(catalog))),
        info(LONG_RULE),
    ]
}

/// A row of gp_mirror_status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorRow {
    pub mirror: String,
    pub datadir: String,
    pub port: i32,
    pub status: String,
    pub data_status: Option<String>,
}

const ACTING_AS_PRIMARY: &str = "Acting as Primary";
const FAILED: &str = "Failed";

/// Greenplum's warnings under the mirror list: mirrors acting as primaries
/// (switched pairs), failed, and acting as primaries unsynchronized.
pub fn mirror_warnings(mirrors: &[MirrorRow]) -> Vec<String> {
    let acting = || mirrors.iter().filter(|m| m.status == ACTING_AS_PRIMARY);
    let unsynchronized = acting().filter(|m| m.data_status.as_deref() != Some(Mode::Synchronized.label())).count();
    [
        (acting().count(), "segment(s) configured as mirror(s) are acting as primaries"),
        (mirrors.iter().filter(|m| m.status == FAILED).count(), "segment(s) configured as mirror(s) have failed"),
        (unsynchronized, "mirror segment(s) acting as primaries are not synchronized"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect()
}

/// Whether gpstate -m exits 1: exactly when it warns about a pair (a
/// mirror failed, acting as primary, or acting unsynchronized). A cluster
/// without mirrors is not one: "Mirror not used" is a fact, not a fault.
pub fn mirrors_need_attention(mirrors: &[MirrorRow]) -> bool {
    !mirror_warnings(mirrors).is_empty()
}

/// gpstate -m; exit code 1 when it warns (see [`mirrors_need_attention`]).
pub fn mirror_list_lines(catalog: &[Segment], mirrors: &[MirrorRow]) -> (Lines, u8) {
    if mirrors.is_empty() {
        return (vec![warn(LONG_RULE), warn("Mirror not used"), warn(LONG_RULE)], exit::OK);
    }
    let failed: Vec<bool> = mirrors.iter().map(|m| m.status == FAILED).collect();
    let rows: Vec<Vec<String>> = mirrors
        .iter()
        .map(|m| {
            vec![
                m.mirror.clone(),
                m.datadir.clone(),
                m.port.to_string(),
                m.status.clone(),
                m.data_status.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut lines = mirror_list_heading(catalog);
    lines.extend(infos(table(&["Mirror", "Datadir", "Port", "Status", "Data Status"], &rows, &failed)));
    lines.push(info(LONG_RULE));
    lines.extend(mirror_warnings(mirrors).into_iter().map(warn));
    (lines, if mirrors_need_attention(mirrors) { exit::FAILED } else { exit::OK })
}

fn place(s: &Segment) -> [String; 3] {
    [s.address.clone(), s.datadir.clone(), s.port.to_string()]
}

/// gpstate -c: each configured pair, which member is active and whether
/// the other is available, from the catalog.
pub fn cluster_config_lines(catalog: &[Segment]) -> Lines {
    let primaries: Vec<&Segment> =
        catalog.iter().filter(|s| s.is_segment() && s.preferred_role == Role::Primary).collect();
    if !catalog::has_mirrors(catalog) {
        let rows: Vec<Vec<String>> = primaries.iter().map(|p| place(p).to_vec()).collect();
        let mut lines = vec![info(LONG_RULE), info("-Primary list [Mirror not used]"), info(LONG_RULE)];
        lines.extend(infos(table(&["Primary", "Datadir", "Port"], &rows, &[])));
        lines.push(info(LONG_RULE));
        return lines;
    }
    let mut rows = Vec::new();
    let mut warned = Vec::new();
    let (mut switched, mut unsynchronized) = (0, 0);
    for p in primaries {
        let Some(m) = catalog.iter().find(|m| m.content == p.content && m.preferred_role == Role::Mirror) else {
            continue;
        };
        let (acting_primary, acting_mirror, status) = if p.role == Role::Mirror {
            switched += 1;
            (m, p, "Mirror Active, Primary")
        } else {
            (p, m, "Primary Active, Mirror")
        };
        let available = if acting_mirror.status == Status::Up { "Available" } else { "Failed" };
        let synchronized = acting_primary.mode == Mode::Synchronized;
        if !synchronized {
            unsynchronized += 1;
        }
        let mut row = vec![format!("{status} {available}"), acting_primary.mode.label().to_string()];
        row.extend(place(p));
        row.extend(place(m));
        rows.push(row);
        warned.push(!synchronized);
    }
    let mut lines = mirror_list_heading(catalog);
    lines.extend(infos(table(
        &["Status", "Data State", "Primary", "Datadir", "Port", "Mirror", "Datadir", "Port"],
        &rows,
        &warned,
    )));
    lines.push(info(LONG_RULE));
    if switched > 0 {
        lines.push(warn(format!("{switched} segment(s) configured as mirror(s) are acting as primaries")));
    }
    if unsynchronized > 0 {
        lines.push(warn(format!("{unsynchronized} primary segment(s) are not synchronized")));
    }
    lines
}

/// What gp_segment_status says about a segment now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Live {
    pub answering: bool,
    pub probe_error: Option<String>,
    pub replication_state: Option<String>,
    pub sync_state: Option<String>,
    pub sent_lsn: Option<String>,
    pub flush_lsn: Option<String>,
    pub replay_lsn: Option<String>,
    pub wal_sync_remaining: Option<i64>,
    pub flush_left: Option<i64>,
    pub replay_left: Option<i64>,
}

/// The coordinator's part of gpstate -s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coordinator {
    pub hostname: String,
    pub datadir: String,
    pub port: i32,
    pub postgres_version: String,
    pub extension_version: String,
}

/// Up, down in the catalog, or up there but not answering now.
fn instance_state(s: &Segment, live: Option<&Live>) -> (String, bool) {
    match (s.status, live) {
        (Status::Down, _) => ("Down in configuration".into(), true),
        (Status::Up, Some(l)) if l.answering => ("Up".into(), false),
        (Status::Up, l) => match l.and_then(|l| l.probe_error.as_deref()) {
            Some(e) => (format!("Process error -- database process may be down ({e})"), true),
            None => ("Process error -- database process may be down".into(), true),
        },
    }
}

fn segment_entries(s: &Segment, catalog: &[Segment], live: &HashMap<i16, Live>) -> Vec<Entry> {
    let sub = |k: &str| format!("   {k}");
    let mut e = vec![
        Entry::rule(),
        Entry::heading("Segment Info"),
        Entry::new(sub("Hostname"), &s.hostname),
        Entry::new(sub("Address"), &s.address),
        Entry::new(sub("Datadir"), &s.datadir),
        Entry::new(sub("Port"), s.port),
        Entry::heading("Mirroring Info"),
        Entry::new(sub("Current role"), s.role.label()),
        Entry::new(sub("Preferred role"), s.preferred_role.label()),
    ];
    let own = live.get(&s.dbid);
    // A primary's replication is its mirror's stream, as the primary reports it.
    let mirror = catalog.iter().find(|m| m.content == s.content && m.dbid != s.dbid && m.role == Role::Mirror);
    let stream = if s.role == Role::Primary { mirror.and_then(|m| live.get(&m.dbid)) } else { own };
    match s.role {
        Role::Primary => e.push(Entry::new(sub("Mirror status"), s.mode.label())),
        Role::Mirror if s.status == Status::Up => {
            let state = own.and_then(|l| l.replication_state.as_deref()).map(capitalized);
            let unknown = state.is_none();
            e.push(Entry::new(sub("Mirror status"), state.unwrap_or_else(|| "Unknown".into())).warn_if(unknown));
        }
        Role::Mirror => {}
    }
    if let Some(l) = stream.filter(|l| l.sent_lsn.is_some()) {
        e.push(Entry::heading("Replication Info"));
        let lsn = |v: &Option<String>| v.clone().unwrap_or_else(|| "Unknown".into());
        let bytes = |v: Option<i64>| v.map_or("Unknown".to_string(), |b| b.to_string());
        e.push(Entry::new(sub("WAL Sent Location"), lsn(&l.sent_lsn)));
        e.push(Entry::new(sub("WAL Flush Location"), lsn(&l.flush_lsn)));
        e.push(Entry::new(sub("WAL Replay Location"), lsn(&l.replay_lsn)));
        if s.role == Role::Primary {
            e.push(Entry::new(sub("Bytes remaining to send to mirror"), bytes(l.wal_sync_remaining)));
        } else {
            e.push(Entry::new(sub("Bytes received but remain to flush"), bytes(l.flush_left)));
            e.push(Entry::new(sub("Bytes received but remain to replay"), bytes(l.replay_left)));
        }
    }
    let (state, trouble) = instance_state(s, own);
    e.push(Entry::heading("Status"));
    e.push(Entry::new(sub("Configuration reports status as"), s.status.label()));
    let label = if s.role == Role::Primary { "Database status" } else { "Segment status" };
    e.push(Entry::new(sub(label), state).warn_if(trouble));
    e
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

/// gpstate -s: the coordinator, then every segment in detail; exit code 1
/// when anything was warned about.
pub fn status_lines(coordinator: &Coordinator, catalog: &[Segment], live: &HashMap<i16, Live>) -> (Lines, u8) {
    let mut lines = vec![info(SHORT_RULE), info("-Coordinator Configuration & Status"), info(SHORT_RULE)];
    lines.extend(infos(key_values(&[
        Entry::new("Coordinator host", &coordinator.hostname),
        Entry::new("Coordinator data directory", &coordinator.datadir),
        Entry::new("Coordinator port", coordinator.port),
        Entry::new("Coordinator current role", "dispatch"),
        Entry::new("gp_recovery version", &coordinator.extension_version),
        Entry::new("Postgres version", &coordinator.postgres_version),
        Entry::new(
            "Coordinator standby",
            catalog.iter().find(|s| s.is_standby()).map_or("No coordinator standby configured", |s| &s.hostname),
        ),
    ])));
    lines.push(info(SHORT_RULE));
    lines.push(info("Segment Instance Status Report"));
    let entries: Vec<Entry> =
        catalog.iter().filter(|s| s.is_segment()).flat_map(|s| segment_entries(s, catalog, live)).collect();
    let warned = entries.iter().any(|e| e.warn);
    lines.extend(infos(key_values(&entries)));
    if warned {
        let stars = "*****************************************************";
        lines.extend([
            warn(stars),
            warn("Warnings have been generated during status processing"),
            warn("Check log file or review screen output"),
            warn(stars),
        ]);
    }
    (lines, if warned { exit::FAILED } else { exit::OK })
}

/// gpstate -b (the default): counts per configured role. The postmaster
/// counts are whether each segment answers now; pid and lock files, which
/// only a shell on the segment hosts could see, are not counted.
/// gpstate -f: the standby coordinator and its stream as the coordinator
/// reports it; exit 1 when it needs attention (down, or not streaming).
pub fn standby_lines(standby: Option<&Segment>, live: Option<&Live>) -> (Lines, u8) {
    let Some(s) = standby else {
        return (vec![info("Standby coordinator instance not configured")], exit::OK);
    };
    let streaming = live.and_then(|l| l.replication_state.as_deref()) == Some("streaming");
    let status = match (s.status, live.is_some_and(|l| l.answering)) {
        (Status::Up, true) if streaming => "Standby host passive",
        (_, true) => "Standby process running but not streaming",
        (_, false) => "Standby process not running",
    };
    let unknown = || "Unknown".to_string();
    let field = |v: Option<&Option<String>>| v.cloned().flatten().unwrap_or_else(unknown);
    let mut lines: Lines = vec![info("Standby coordinator details"), info("-----------------------")];
    let passive = status == "Standby host passive";
    lines.extend(infos(key_values(&[
        Entry::new("Standby address", &s.address),
        Entry::new("Standby data directory", &s.datadir),
        Entry::new("Standby port", s.port),
        Entry::new("Standby status", status).warn_if(!passive),
    ])));
    lines.push(info(LONG_RULE));
    lines.push(info("--pg_stat_replication"));
    lines.push(info(LONG_RULE));
    if live.and_then(|l| l.replication_state.as_ref()).is_none() {
        lines.push(warn("No entries found."));
    } else {
        lines.push(info(format!("-WAL Sender State: {}", field(live.map(|l| &l.replication_state)))));
        lines.push(info(format!("-Sync state: {}", field(live.map(|l| &l.sync_state)))));
        lines.push(info(format!("-Sent Location: {}", field(live.map(|l| &l.sent_lsn)))));
        lines.push(info(format!("-Flush Location: {}", field(live.map(|l| &l.flush_lsn)))));
        lines.push(info(format!("-Replay Location: {}", field(live.map(|l| &l.replay_lsn)))));
    }
    lines.push(info(LONG_RULE));
    (lines, if passive { exit::OK } else { exit::FAILED })
}

pub fn statistics_lines(catalog: &[Segment], live: &HashMap<i16, Live>) -> Lines {
    let segments: Vec<&Segment> = catalog.iter().filter(|s| s.is_segment()).collect();
    let mut e = vec![
        Entry::rule(),
        Entry::new("Coordinator instance", "Active"),
        Entry::new("Coordinator standby", "No coordinator standby configured"),
        Entry::new("Total segment instance count from metadata", segments.len()),
        Entry::rule(),
    ];
    for role in [Role::Primary, Role::Mirror] {
        let which = role.label();
        let lower = which.to_lowercase();
        e.push(Entry::heading(format!("{which} Segment Status")));
        e.push(Entry::rule());
        let segs: Vec<&&Segment> = segments.iter().filter(|s| s.preferred_role == role).collect();
        if role == Role::Mirror && segs.is_empty() {
            e.push(Entry::heading("Mirrors not configured on this array"));
            e.push(Entry::rule());
            continue;
        }
        let down = segs.iter().filter(|s| s.status == Status::Down).count();
        let answering = segs.iter().filter(|s| live.get(&s.dbid).is_some_and(|l| l.answering)).count();
        let missing = segs.len() - answering;
        e.push(Entry::new(format!("Total {lower} segments"), segs.len()));
        e.push(Entry::new(format!("Total {lower} segment valid (at coordinator)"), segs.len() - down));
        e.push(Entry::new(format!("Total {lower} segment failures (at coordinator)"), down).warn_if(down > 0));
        e.push(Entry::new("Total number postmaster processes missing", missing).warn_if(missing > 0));
        e.push(Entry::new("Total number postmaster processes found", answering));
        if role == Role::Mirror {
            let acting = segs.iter().filter(|s| s.role == Role::Primary).count();
            e.push(Entry::new("Total number mirror segments acting as primary segments", acting).warn_if(acting > 0));
            e.push(Entry::new("Total number mirror segments acting as mirror segments", segs.len() - acting));
        }
        e.push(Entry::rule());
    }
    let mut lines = vec![info("Greenplum instance status summary")];
    lines.extend(infos(key_values(&e)));
    lines
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    args.common.main("gpstate", |log| run(&args, log))
}

fn run(args: &Args, log: &Log) -> Result<u8, ToolError> {
    let view = view(args)?;
    let mut db = Db::connect_as(args.common.conninfo.as_deref(), "gpstate")?;
    let catalog = catalog::load(&mut db, log)?;
    let (lines, code) = match view {
        View::ClusterConfig => (cluster_config_lines(&catalog), exit::OK),
        View::MirrorList => {
            log.info("Gathering data from segments...");
            let mirrors = db
                .query(
                    log,
                    "SELECT mirror, datadir, port, status, data_status FROM gp_mirror_status ORDER BY content, dbid",
                    &[],
                )?
                .iter()
                .map(|r| MirrorRow {
                    mirror: r.get(0),
                    datadir: r.get(1),
                    port: r.get(2),
                    status: r.get(3),
                    data_status: r.get(4),
                })
                .collect::<Vec<_>>();
            mirror_list_lines(&catalog, &mirrors)
        }
        View::Attention => {
            log.info("Gathering data from segments...");
            let report: Vec<String> =
                db.query(log, "SELECT * FROM gp_state_report()", &[])?.iter().map(|r| r.get(0)).collect();
            let recovering: Vec<InRecovery> = db
                .query(
                    log,
                    "SELECT hostname, port, coalesce(running_mode, recovery_type), phase, bytes_done, bytes_total, \
                            percent::float8 \
                       FROM gp_recovery_progress ORDER BY job_id",
                    &[],
                )?
                .iter()
                .map(|r| InRecovery {
                    hostname: r.get(0),
                    port: r.get(1),
                    recovery_type: r.get(2),
                    phase: r.get(3),
                    bytes_done: r.get(4),
                    bytes_total: r.get(5),
                    percent: r.get(6),
                })
                .collect();
            attention_lines(&report, &recovering)
        }
        View::Status => {
            log.info("Gathering data from segments...");
            let live = live(&mut db, log)?;
            let row = db.query(
                log,
                "SELECT current_setting('server_version'), \
                        coalesce((SELECT extversion FROM pg_extension WHERE extname = 'gp_recovery'), 'not installed')",
                &[],
            )?;
            let (postgres_version, extension_version) =
                row.first().map(|r| (r.get(0), r.get(1))).unwrap_or_else(|| ("Unknown".into(), "Unknown".into()));
            let c = catalog.iter().find(|s| s.is_coordinator());
            let coordinator = Coordinator {
                hostname: c.map_or_else(|| "Unknown".into(), |c| c.hostname.clone()),
                datadir: c.map_or_else(|| "Unknown".into(), |c| c.datadir.clone()),
                port: c.map_or(0, |c| c.port),
                postgres_version,
                extension_version,
            };
            status_lines(&coordinator, &catalog, &live)
        }
        View::Standby => {
            log.info("Gathering data from segments...");
            let live = live(&mut db, log)?;
            let standby = catalog.iter().find(|s| s.is_standby());
            standby_lines(standby, standby.and_then(|s| live.get(&s.dbid)))
        }
        View::Statistics => {
            log.info("Gathering data from segments...");
            let live = live(&mut db, log)?;
            (statistics_lines(&catalog, &live), exit::OK)
        }
    };
    db.relay_notices(log);
    log.lines(&lines);
    Ok(code)
}

/// gp_segment_status by dbid.
fn live(db: &mut Db, log: &Log) -> Result<HashMap<i16, Live>, ToolError> {
    Ok(db
        .query(
            log,
            "SELECT dbid, answering, probe_error, replication_state, sent_lsn::text, flush_lsn::text, \
                    replay_lsn::text, wal_sync_remaining_bytes, \
                    pg_wal_lsn_diff(sent_lsn, flush_lsn)::bigint, pg_wal_lsn_diff(flush_lsn, replay_lsn)::bigint, \
                    sync_state \
               FROM gp_segment_status",
            &[],
        )?
        .iter()
        .map(|r| {
            (
                r.get(0),
                Live {
                    answering: r.get(1),
                    probe_error: r.get(2),
                    replication_state: r.get(3),
                    sent_lsn: r.get(4),
                    flush_lsn: r.get(5),
                    replay_lsn: r.get(6),
                    wal_sync_remaining: r.get(7),
                    flush_left: r.get(8),
                    replay_left: r.get(9),
                    sync_state: r.get(10),
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("gpstate").chain(list.iter().copied())).expect("flags parse")
    }

    #[test]
    fn standby_details_say_whether_it_streams() {
        let (lines, code) = standby_lines(None, None);
        assert_eq!((lines[0].1.as_str(), code), ("Standby coordinator instance not configured", exit::OK));
        let standby = Segment {
            dbid: 9,
            content: -1,
            role: Role::Mirror,
            preferred_role: Role::Mirror,
            mode: Mode::Synchronized,
            status: Status::Up,
            port: 6432,
            hostname: "smdw".into(),
            address: "smdw".into(),
            datadir: "/data/standby".into(),
        };
        let streaming = Live {
            answering: true,
            replication_state: Some("streaming".into()),
            sync_state: Some("sync".into()),
            sent_lsn: Some("0/3000060".into()),
            ..Live::default()
        };
        let (lines, code) = standby_lines(Some(&standby), Some(&streaming));
        let text: Vec<&str> = lines.iter().map(|l| l.1.as_str()).collect();
        assert_eq!(code, exit::OK);
        assert!(text.iter().any(|l| l.contains("Standby status") && l.ends_with("= Standby host passive")), "{text:?}");
        assert!(text.contains(&"-WAL Sender State: streaming") && text.contains(&"-Sync state: sync"), "{text:?}");
        let down = Segment { status: Status::Down, mode: Mode::NotInSync, ..standby };
        let dead = Live { answering: false, probe_error: Some("connection refused".into()), ..Live::default() };
        let (lines, code) = standby_lines(Some(&down), Some(&dead));
        assert_eq!(code, exit::FAILED);
        assert!(lines.iter().any(|l| l.1.contains("= Standby process not running")));
        assert!(lines.iter().any(|l| l.0 == Level::Warning && l.1 == "No entries found."));
    }

    #[test]
    fn one_output_option_at_a_time() {
        assert_eq!(view(&args(&[])).unwrap(), View::Statistics);
        assert_eq!(view(&args(&["-e"])).unwrap(), View::Attention);
        assert_eq!(view(&args(&["-m", "-q"])).unwrap(), View::MirrorList);
        assert_eq!(view(&args(&["-c"])).unwrap(), View::ClusterConfig);
        assert_eq!(view(&args(&["-s"])).unwrap(), View::Status);
        assert_eq!(view(&args(&["-b"])).unwrap(), View::Statistics);
        assert_eq!(view(&args(&["-e", "-m"])).unwrap_err().to_string(), "Too many output options specified");
        assert_eq!(view(&args(&["x"])).unwrap_err().to_string(), "too many arguments: only options may be specified");
    }

    fn texts(lines: &[(Level, String)]) -> Vec<String> {
        lines.iter().map(|(l, s)| format!("{}:{s}", l.name())).collect()
    }

    /// The lines with runs of spaces made one, for checks of content rather than alignment.
    fn squashed(lines: &[(Level, String)]) -> Vec<String> {
        texts(lines).iter().map(|l| l.split(' ').filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")).collect()
    }

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn a_healthy_report() {
        let (lines, code) = attention_lines(&strings(&[REPORT_HEADER, ALL_NORMAL]), &[]);
        assert_eq!(code, exit::OK);
        assert_eq!(
            texts(&lines),
            vec![
                "INFO:----------------------------------------------------",
                "INFO:Segment Mirroring Status Report",
                "INFO:----------------------------------------------------",
                "INFO:All segments are running normally",
            ]
        );
    }

    #[test]
    fn sections_and_segments_in_recovery() {
        let report = strings(&[
            REPORT_HEADER,
            "",
            "Downed Segments (may include segments where status could not be retrieved)",
            "   Segment     Port   Config status   Status",
            "   localhost   7004   Down            Down in configuration",
        ]);
        let recovering = vec![InRecovery {
            hostname: "localhost".into(),
            port: 7004,
            recovery_type: "full".into(),
            phase: "copying".into(),
            bytes_done: Some(2048 * 1024),
            bytes_total: Some(4096 * 1024),
            percent: Some(50.0),
        }];
        let (lines, code) = attention_lines(&report, &recovering);
        assert_eq!(code, exit::FAILED);
        let t = texts(&lines);
        assert_eq!(t[2], "INFO:----------------------------------------------------");
        assert_eq!(t[3], "INFO:Downed Segments (may include segments where status could not be retrieved)");
        let at = t.iter().position(|l| l == "INFO:Segments in recovery").expect("the section");
        assert_eq!(
            t[at + 1],
            "INFO:   Segment     Port   Recovery type   Stage     Completed bytes (kB)   Total bytes (kB)   Percentage completed"
        );
        assert_eq!(
            t[at + 2],
            "INFO:   localhost   7004   full            copying   2048                   4096               50%"
        );
        assert!(!t.iter().any(|l| l.contains(ALL_NORMAL)));
        let (_, code) = attention_lines(&strings(&[REPORT_HEADER, ALL_NORMAL]), &recovering);
        assert_eq!(code, exit::FAILED, "a recovery in progress needs attention on its own");
        let (lines, code) = attention_lines(&strings(&[REPORT_HEADER, NO_MIRRORING]), &[]);
        assert_eq!((texts(&lines), code), (vec![format!("INFO:{NO_MIRRORING}")], exit::FAILED));
    }

    fn seg(dbid: i16, content: i16, role: Role, preferred: Role, host: &str, port: i32) -> Segment {
        Segment {
            dbid,
            content,
            role,
            preferred_role: preferred,
            mode: Mode::Synchronized,
            status: Status::Up,
            port,
            hostname: host.into(),
            address: host.into(),
            datadir: format!("/d/{dbid}"),
        }
    }

    fn cluster() -> Vec<Segment> {
        vec![
            seg(1, -1, Role::Primary, Role::Primary, "cdw", 7000),
            seg(2, 0, Role::Primary, Role::Primary, "sdw1", 7001),
            seg(3, 1, Role::Primary, Role::Primary, "sdw1", 7002),
            seg(4, 0, Role::Mirror, Role::Mirror, "sdw2", 7003),
            seg(5, 1, Role::Mirror, Role::Mirror, "sdw2", 7004),
        ]
    }

    #[test]
    fn group_or_spread_mirroring() {
        let mut c = cluster();
        assert_eq!(mirror_type(&c), "Group");
        c[4].hostname = "sdw3".into();
        assert_eq!(mirror_type(&c), "Spread");
    }

    #[test]
    fn the_mirror_list() {
        let mirrors = vec![
            MirrorRow {
                mirror: "sdw2".into(),
                datadir: "/d/4".into(),
                port: 7003,
                status: "Passive".into(),
                data_status: Some("Synchronized".into()),
            },
            MirrorRow {
                mirror: "sdw2".into(),
                datadir: "/d/5".into(),
                port: 7004,
                status: "Failed".into(),
                data_status: None,
            },
        ];
        let (lines, code) = mirror_list_lines(&cluster(), &mirrors);
        assert_eq!(code, exit::FAILED);
        assert_eq!(
            texts(&lines),
            vec![
                "INFO:-------------------------------------------------------------",
                "INFO:-Current GPDB mirror list and status",
                "INFO:-Type = Group",
                "INFO:-------------------------------------------------------------",
                "INFO:   Mirror   Datadir   Port   Status    Data Status",
                "INFO:   sdw2     /d/4      7003   Passive   Synchronized",
                "INFO:   sdw2     /d/5      7004   Failed   <<<<<<<<",
                "INFO:-------------------------------------------------------------",
                "WARNING:1 segment(s) configured as mirror(s) have failed",
            ]
        );
        let (lines, code) = mirror_list_lines(&cluster(), &[]);
        assert_eq!((texts(&lines)[1].as_str(), code), ("WARNING:Mirror not used", exit::OK));
    }

    fn mirror(port: i32, status: &str, data_status: Option<&str>) -> MirrorRow {
        MirrorRow {
            mirror: "sdw2".into(),
            datadir: format!("/d/{port}"),
            port,
            status: status.into(),
            data_status: data_status.map(str::to_string),
        }
    }

    #[test]
    fn the_mirror_list_exits_1_exactly_when_it_warns() {
        let passive = mirror(7003, "Passive", Some("Synchronized"));
        let catching_up = mirror(7004, "Passive", Some("Not In Sync"));
        let acting = mirror(7003, "Acting as Primary", Some("Synchronized"));
        let acting_alone = mirror(7004, "Acting as Primary", Some("Not In Sync"));
        let failed = mirror(7004, "Failed", None);
        let cases: Vec<(Vec<MirrorRow>, Vec<&str>)> = vec![
            (vec![passive.clone()], vec![]),
            // Greenplum warns about a passive mirror's sync only through -e's Unsynchronized Segment Pairs.
            (vec![passive.clone(), catching_up], vec![]),
            (
                vec![acting.clone(), passive.clone()],
                vec!["1 segment(s) configured as mirror(s) are acting as primaries"],
            ),
            (
                vec![acting, acting_alone.clone()],
                vec![
                    "2 segment(s) configured as mirror(s) are acting as primaries",
                    "1 mirror segment(s) acting as primaries are not synchronized",
                ],
            ),
            (vec![passive, failed.clone()], vec!["1 segment(s) configured as mirror(s) have failed"]),
            (
                vec![acting_alone, failed],
                vec![
                    "1 segment(s) configured as mirror(s) are acting as primaries",
                    "1 segment(s) configured as mirror(s) have failed",
                    "1 mirror segment(s) acting as primaries are not synchronized",
                ],
            ),
        ];
        for (mirrors, warnings) in cases {
            assert_eq!(mirror_warnings(&mirrors), warnings, "{mirrors:?}");
            assert_eq!(mirrors_need_attention(&mirrors), !warnings.is_empty(), "{mirrors:?}");
            let (lines, code) = mirror_list_lines(&cluster(), &mirrors);
            let warned: Vec<&str> =
                lines.iter().filter(|(l, _)| *l == Level::Warning).map(|(_, s)| s.as_str()).collect();
            assert_eq!(warned, warnings, "{mirrors:?}");
            assert_eq!(code, if warnings.is_empty() { exit::OK } else { exit::FAILED }, "{mirrors:?}");
        }
        assert!(!mirrors_need_attention(&[]), "no mirrors: Mirror not used, exit 0");
    }

    #[test]
    fn the_cluster_configuration() {
        let mut c = cluster();
        // Content 0 failed over: its configured primary is a down mirror now.
        c[1].role = Role::Mirror;
        c[1].status = Status::Down;
        c[1].mode = Mode::NotInSync;
        c[3].role = Role::Primary;
        c[3].mode = Mode::NotInSync;
        let t = texts(&cluster_config_lines(&c));
        assert_eq!(
            t[4],
            "INFO:   Status                             Data State     Primary   Datadir   Port   Mirror   Datadir   Port"
        );
        assert_eq!(
            t[5],
            "INFO:   Mirror Active, Primary Failed      Not In Sync    sdw1      /d/2      7001   sdw2     /d/4      7003   <<<<<<<<"
        );
        assert_eq!(
            t[6],
            "INFO:   Primary Active, Mirror Available   Synchronized   sdw1      /d/3      7002   sdw2     /d/5      7004"
        );
        assert!(t.contains(&"WARNING:1 segment(s) configured as mirror(s) are acting as primaries".to_string()));
        assert!(t.contains(&"WARNING:1 primary segment(s) are not synchronized".to_string()));
    }

    fn live_all() -> HashMap<i16, Live> {
        let mut live: HashMap<i16, Live> = (1..=5).map(|d| (d, Live { answering: true, ..Live::default() })).collect();
        for d in [4, 5] {
            let l = live.get_mut(&d).unwrap();
            l.replication_state = Some("streaming".into());
            l.sent_lsn = Some("0/3000148".into());
            l.flush_lsn = Some("0/3000148".into());
            l.replay_lsn = Some("0/3000100".into());
            l.wal_sync_remaining = Some(0);
            l.flush_left = Some(0);
            l.replay_left = Some(72);
        }
        live
    }

    fn coordinator() -> Coordinator {
        Coordinator {
            hostname: "cdw".into(),
            datadir: "/d/1".into(),
            port: 7000,
            postgres_version: "15.8".into(),
            extension_version: "0.1.0".into(),
        }
    }

    #[test]
    fn status_in_detail() {
        let (lines, code) = status_lines(&coordinator(), &cluster(), &live_all());
        assert_eq!(code, exit::OK);
        let t = squashed(&lines);
        assert!(!t.iter().any(|l| l.starts_with("WARNING:") || l.contains("<<<<<<<<")), "exit 0, no warning: {t:#?}");
        for expected in [
            "INFO:-Coordinator Configuration & Status",
            "INFO:Segment Instance Status Report",
            "Segment Info",
            "Mirror status = Synchronized",
            "Mirror status = Streaming",
            "Bytes remaining to send to mirror = 0",
            "Bytes received but remain to replay = 72",
            "Configuration reports status as = Up",
            "Database status = Up",
            "Segment status = Up",
        ] {
            assert!(t.iter().any(|l| l.contains(expected)), "{expected} missing from {t:#?}");
        }
        let mut c = cluster();
        c[4].status = Status::Down;
        let mut live = live_all();
        live.insert(3, Live { answering: false, probe_error: Some("timeout".into()), ..Live::default() });
        let (lines, code) = status_lines(&coordinator(), &c, &live);
        assert_eq!(code, exit::FAILED);
        let t = squashed(&lines);
        assert!(t.iter().any(|l| l.contains("= Down in configuration <<<<<<<<")), "{t:#?}");
        assert!(t.iter().any(|l| l.contains("= Process error -- database process may be down (timeout)")), "{t:#?}");
        assert!(t.contains(&"WARNING:Warnings have been generated during status processing".to_string()));
    }

    #[test]
    fn statistics() {
        let mut c = cluster();
        c[4].status = Status::Down;
        let mut live = live_all();
        live.get_mut(&5).unwrap().answering = false;
        let t = squashed(&statistics_lines(&c, &live));
        for expected in [
            "INFO:Greenplum instance status summary",
            "Total segment instance count from metadata = 4",
            "Total primary segments = 2",
            "Total mirror segment failures (at coordinator) = 1 <<<<<<<<",
            "Total number postmaster processes missing = 1 <<<<<<<<",
            "Total number mirror segments acting as mirror segments = 2",
        ] {
            assert!(t.iter().any(|l| l.contains(expected)), "{expected} missing from {t:#?}");
        }
    }
}
