//! gprecoverseg's rules without Postgres: which segment may be recovered
//! how, the `-i`/`-o` configuration format, the argument vectors of the copy
//! tools, their progress lines, and the settings a recovered mirror gets.

use std::fmt;
use std::str::FromStr;

use crate::error::CoreError;
use crate::identity::{path_overlap, validate_location, HostNames};
use crate::registration::{check_location_free, validate_host, validate_port};
use crate::segment::{Role, Segment, Status};

/// How a down segment is brought back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryMode {
    /// pg_rewind against the acting primary (or only a restart when the
    /// segment was a mirror that merely stopped).
    Incremental,
    /// rsync of what differs, inside pg_backup_start/pg_backup_stop.
    Differential,
    /// pg_basebackup of the acting primary.
    Full,
    /// Incremental first, then differential, then full, as long as the
    /// failure is one the next mode can fix (`job::next_attempt`).
    Auto,
    /// gprecoverseg -r: a switchover back to the preferred roles (a job
    /// type of its own, never a mode a DBA passes to gp_recover_segment).
    Rebalance,
}

pub const MODES: &str = "incremental, differential, full, auto";

impl RecoveryMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryMode::Incremental => "incremental",
            RecoveryMode::Differential => "differential",
            RecoveryMode::Full => "full",
            RecoveryMode::Auto => "auto",
            RecoveryMode::Rebalance => "rebalance",
        }
    }

    /// The recovery_type of a job row, rebalance included.
    pub fn from_job_type(s: &str) -> Result<RecoveryMode, CoreError> {
        match s {
            "rebalance" => Ok(RecoveryMode::Rebalance),
            other => other.parse(),
        }
    }

    /// The recovery-type letter of a gprecoverseg -i line.
    fn from_type_letter(s: &str) -> Option<RecoveryMode> {
        match s {
            "I" | "i" => Some(RecoveryMode::Incremental),
            "D" | "d" => Some(RecoveryMode::Differential),
            "F" | "f" => Some(RecoveryMode::Full),
            "A" | "a" => Some(RecoveryMode::Auto),
            _ => None,
        }
    }
}

impl fmt::Display for RecoveryMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RecoveryMode {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, CoreError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "incremental" => Ok(RecoveryMode::Incremental),
            "differential" => Ok(RecoveryMode::Differential),
            "full" => Ok(RecoveryMode::Full),
            "auto" => Ok(RecoveryMode::Auto),
            _ => Err(CoreError::InvalidValue {
                what: "recovery mode",
                value: s.to_string(),
                expected: "must be one of incremental, differential, full, auto",
            }),
        }
    }
}

/// A new place for a segment (relocation). Fields left None keep the
/// segment's current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewLocation {
    pub hostname: Option<String>,
    pub address: Option<String>,
    pub port: Option<i32>,
    pub datadir: Option<String>,
}

impl NewLocation {
    pub fn is_empty(&self) -> bool {
        self.hostname.is_none() && self.address.is_none() && self.port.is_none() && self.datadir.is_none()
    }
}

/// A recovery job not yet finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveJob {
    pub job_id: i64,
    pub dbid: i16,
    pub content: i16,
    pub state: String,
    /// Where the job puts its segment.
    pub target: Segment,
}

/// What a validated request becomes: a job row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    pub mode: RecoveryMode,
    /// The segment as the catalog has it now.
    pub original: Segment,
    /// The segment where it will be: the same as `original` unless relocating.
    pub target: Segment,
    /// The content's acting primary, the source of the copy.
    pub source: Segment,
    pub relocate: bool,
}

/// Checks a recovery request against the catalog and the jobs in flight;
/// `hosts` says which host names reach the same machine.
pub fn plan_recovery(
    catalog: &[Segment],
    active: &[ActiveJob],
    dbid: i32,
    mode: RecoveryMode,
    new: &NewLocation,
    hosts: &dyn HostNames,
) -> Result<JobSpec, CoreError> {
    let failed = i16::try_from(dbid).ok().and_then(|d| catalog.iter().find(|s| s.dbid == d)).ok_or_else(|| {
        CoreError::InvalidValue {
            what: "dbid",
            value: dbid.to_string(),
            expected: "no segment with this dbid in gp_segment_configuration",
        }
    })?;
    if failed.is_coordinator() {
        return Err(CoreError::InvalidValue {
            what: "dbid",
            value: dbid.to_string(),
            expected: "it is the coordinator; only segments can be recovered",
        });
    }
    let relocate = !new.is_empty();
    // A relocation is always a full copy: auto has nothing to try before it.
    let mode = if relocate && mode == RecoveryMode::Auto { RecoveryMode::Full } else { mode };
    if relocate && mode != RecoveryMode::Full {
        return Err(CoreError::InvalidValue {
            what: "recovery mode",
            value: mode.to_string(),
            expected: "a segment moved to a new host, port or data directory is always copied in full: use mode 'full'",
        });
    }
    let mut target = failed.clone();
    if relocate {
        if let Some(h) = &new.hostname {
            validate_host("host name", h)?;
            target.hostname = h.clone();
            target.address = new.address.clone().unwrap_or_else(|| h.clone());
        } else if let Some(a) = &new.address {
            target.address = a.clone();
        }
        validate_host("address", &target.address)?;
        if let Some(p) = new.port {
            validate_port(p)?;
            target.port = p;
        }
        if let Some(d) = &new.datadir {
            validate_location(d)?;
            target.datadir = d.clone();
        }
        if hosts.same_host(&target.hostname, &failed.hostname)
            && (target.port, target.datadir.as_str()) == (failed.port, failed.datadir.as_str())
        {
            return Err(CoreError::InvalidValue {
                what: "new location",
                value: format!("{}:{}:{}", target.hostname, target.port, target.datadir),
                expected: "it is where the segment already is; leave out new_hostname, new_port and new_datadir to recover in place",
            });
        }
        check_location_free(
            catalog,
            Some(failed.dbid),
            &target.hostname,
            &target.address,
            target.port,
            &target.datadir,
            hosts,
        )?;
        if let Some(j) = active.iter().find(|j| {
            j.dbid != failed.dbid
                && (hosts.same_host(&j.target.hostname, &target.hostname)
                    || hosts.same_host(&j.target.address, &target.address))
                && (j.target.port == target.port || path_overlap(&j.target.datadir, &target.datadir).is_some())
        }) {
            return Err(CoreError::Duplicate(format!(
                "{}:{} {} is the target of recovery job {} ({}) for dbid {} at {}",
                target.hostname,
                target.port,
                target.datadir,
                j.job_id,
                j.state,
                j.dbid,
                j.target.location()
            )));
        }
    }
    if failed.status == Status::Up {
        return Err(CoreError::WrongState(format!(
            "segment dbid {} at {} is up; only a down segment (status 'd') can be recovered",
            failed.dbid,
            failed.location()
        )));
    }
    let source = catalog
        .iter()
        .find(|s| s.content == failed.content && s.role == Role::Primary && s.dbid != failed.dbid)
        .ok_or_else(|| {
            CoreError::DoubleFault(format!(
                "double fault: content {} has no acting primary to recover dbid {} from",
                failed.content, failed.dbid
            ))
        })?;
    if source.status == Status::Down {
        return Err(double_fault(source, "is down in the catalog"));
    }
    if let Some(job) = active.iter().find(|j| j.content == failed.content) {
        return Err(CoreError::Duplicate(format!(
            "content {} already has recovery job {} ({}) for dbid {}",
            job.content, job.job_id, job.state, job.dbid
        )));
    }
    Ok(JobSpec { mode, original: failed.clone(), target, source: source.clone(), relocate })
}

/// The error for a content whose acting primary cannot serve as a source.
pub fn double_fault(source: &Segment, why: &str) -> CoreError {
    CoreError::DoubleFault(format!(
        "double fault: content {}'s acting primary dbid {} at {} {why}; no recovery is possible until it runs again",
        source.content,
        source.dbid,
        source.location()
    ))
}

/// One segment location of a gprecoverseg configuration line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigLocation {
    pub hostname: Option<String>,
    pub address: String,
    pub port: i32,
    pub datadir: String,
}

/// One line of a gprecoverseg -i file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigLine {
    pub line: usize,
    pub mode: Option<RecoveryMode>,
    pub failed: ConfigLocation,
    pub new: Option<ConfigLocation>,
}

fn line_error(line: usize, msg: impl fmt::Display) -> CoreError {
    CoreError::Config { line, message: msg.to_string() }
}

/// Prefixes an error about one configuration line with its number.
pub fn at_line(line: usize, e: CoreError) -> CoreError {
    match e {
        CoreError::Config { .. } => e,
        other => line_error(line, other),
    }
}

fn parse_location(line: usize, parts: &[&str], group: &str) -> Result<ConfigLocation, CoreError> {
    let (hostname, rest) = match parts.len() {
        3 => (None, parts),
        4 => (Some(parts[0].to_string()), &parts[1..]),
        n => return Err(line_error(line, format!("expected 3 or 4 parts on {group} segment group, obtained {n}"))),
    };
    let port = rest[1]
        .parse::<i32>()
        .ok()
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| line_error(line, format!("invalid port \"{}\" on {group} segment group", rest[1])))?;
    if rest[0].is_empty() || !rest[2].starts_with('/') {
        return Err(line_error(line, format!("{group} segment group needs an address and an absolute data directory")));
    }
    Ok(ConfigLocation { hostname, address: rest[0].to_string(), port, datadir: rest[2].to_string() })
}

/// Parses a gprecoverseg -i file: one failed segment a line as
/// `[type|][hostname|]address|port|datadir [[hostname|]address|port|datadir]`,
/// type I, D or F; `#` comments and blank lines are skipped.
pub fn parse_config(text: &str) -> Result<Vec<ConfigLine>, CoreError> {
    // A Windows editor leaves a byte-order mark, which would stay invisible
    // at the front of the first line's address.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let groups: Vec<&str> = trimmed.split_whitespace().collect();
        if groups.len() > 2 {
            return Err(line_error(line, format!("expected 1 or 2 groups but found {}", groups.len())));
        }
        let mut first: Vec<&str> = groups[0].split('|').collect();
        let mode = match first.first().and_then(|t| RecoveryMode::from_type_letter(t)) {
            Some(m) if first.len() >= 4 => {
                first.remove(0);
                Some(m)
            }
            _ => None,
        };
        let failed = parse_location(line, &first, "failed")?;
        let new = match groups.get(1) {
            Some(g) => {
                let second: Vec<&str> = g.split('|').collect();
                if second.len() != first.len() {
                    return Err(line_error(
                        line,
                        format!(
                            "expected equal parts, either 3 or 4 on both segment groups, obtained {} on group1 and {} on group2",
                            first.len(),
                            second.len()
                        ),
                    ));
                }
                Some(parse_location(line, &second, "new")?)
            }
            None => None,
        };
        if new.is_some() && matches!(mode, Some(RecoveryMode::Incremental | RecoveryMode::Differential)) {
            return Err(line_error(
                line,
                "a segment moved to a new location is always copied in full: use type F, A or none",
            ));
        }
        lines.push(ConfigLine { line, mode, failed, new });
    }
    Ok(lines)
}

/// The catalog row a configuration line names.
pub fn config_line_segment<'a>(catalog: &'a [Segment], l: &ConfigLine) -> Result<&'a Segment, CoreError> {
    let f = &l.failed;
    catalog
        .iter()
        .find(|s| {
            s.address == f.address
                && s.port == f.port
                && s.datadir.trim_end_matches('/') == f.datadir.trim_end_matches('/')
                && f.hostname.as_ref().is_none_or(|h| *h == s.hostname)
        })
        .ok_or_else(|| {
            line_error(
                l.line,
                format!(
                    "a segment to recover was not found in configuration: no segment at address|port|directory '{}|{}|{}'",
                    f.address, f.port, f.datadir
                ),
            )
        })
}

/// The gprecoverseg -o output for the segments now down.
pub fn config_for_down_segments(catalog: &[Segment]) -> String {
    let mut down: Vec<&Segment> = catalog.iter().filter(|s| s.is_segment() && s.status == Status::Down).collect();
    down.sort_by_key(|s| (s.content, s.dbid));
    let mut out = String::from(
        "# gp_recover_from_config() input: one down segment a line, [I|D|F|]address|port|datadir\n\
         # optionally followed by a new location address|port|datadir (always a full copy)\n",
    );
    for s in down {
        out.push_str(&format!("{}|{}|{}\n", s.address, s.port, s.datadir));
    }
    out
}

/// Bytes copied so far and, when known, in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done_bytes: i64,
    pub total_bytes: Option<i64>,
}

/// The latest progress in the output of pg_basebackup --progress,
/// pg_rewind --progress ("N/M kB (P%)") or rsync --info=progress2
/// ("1,234,567  45%  ..."). Lines end in \n or \r.
fn parse_progress(output: &str) -> Option<Progress> {
    output.split(['\r', '\n']).rev().find_map(|line| parse_kb_line(line).or_else(|| parse_rsync_line(line)))
}

/// A copy tool's progress, read as its output grows: each call takes only
/// what was appended since the last one.
#[derive(Debug, Default)]
pub struct ProgressReader {
    /// The bytes after the last line end, an unfinished line (bytes, so a
    /// character split between two reads is whole again).
    unfinished: Vec<u8>,
    /// The unfinished line grew past MAX_LINE: no progress line, ignored up to its end.
    skipping: bool,
    latest: Option<Progress>,
}

/// Longer lines than this are not progress lines (those are under 200 bytes).
const MAX_LINE: usize = 64 * 1024;

impl ProgressReader {
    /// Reads the bytes appended since the last call; returns the latest progress so far.
    pub fn feed(&mut self, appended: &[u8]) -> Option<Progress> {
        self.unfinished.extend_from_slice(appended);
        if let Some(end) = self.unfinished.iter().rposition(|b| *b == b'\n' || *b == b'\r') {
            let rest = self.unfinished.split_off(end + 1);
            let mut lines = std::mem::replace(&mut self.unfinished, rest);
            if std::mem::take(&mut self.skipping) {
                // The tail of the overlong line, up to its end, is no line of its own.
                let first_end = lines.iter().position(|b| *b == b'\n' || *b == b'\r').unwrap_or(lines.len());
                lines.drain(..first_end);
            }
            if let Some(p) = parse_progress(&String::from_utf8_lossy(&lines)) {
                self.latest = Some(p);
            }
        }
        if self.unfinished.len() > MAX_LINE {
            self.unfinished.clear();
            self.skipping = true;
        }
        // rsync starts each update with \r and ends it only with the next
        // one, so its latest figure is on the unfinished line. A figure
        // there is whole once its marker (" kB (", "%") follows it; the
        // line is read again, complete, with the next call.
        if self.skipping {
            return self.latest;
        }
        parse_progress(&String::from_utf8_lossy(&self.unfinished)).or(self.latest)
    }
}

fn parse_kb_line(line: &str) -> Option<Progress> {
    let before = &line[..line.find(" kB (")?];
    let token = before.split_whitespace().last()?;
    let (done, total) = token.split_once('/')?;
    let kb = |s: &str| s.parse::<i64>().ok().map(|v| v * 1024);
    Some(Progress { done_bytes: kb(done)?, total_bytes: Some(kb(total)?) })
}

fn parse_rsync_line(line: &str) -> Option<Progress> {
    let mut tokens = line.split_whitespace();
    let bytes: i64 = tokens.next()?.replace(',', "").parse().ok()?;
    let percent: i64 = tokens.next()?.strip_suffix('%')?.parse().ok()?;
    let total = (percent > 0).then(|| bytes * 100 / percent);
    Some(Progress { done_bytes: bytes, total_bytes: total })
}

/// A libpq conninfo value, quoted when it needs to be.
pub fn conninfo_value(v: &str) -> String {
    if !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c)) {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// A conninfo string from key/value pairs.
pub fn conninfo(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}={}", conninfo_value(v))).collect::<Vec<_>>().join(" ")
}

/// postgresql.auto.conf with `settings` replacing any earlier lines for the
/// same parameters (the copy brings the source's own settings along).
pub fn rewrite_auto_conf(existing: &str, settings: &[(&str, String)]) -> String {
    let key_of = |line: &str| -> Option<String> {
        let t = line.trim_start();
        if t.starts_with('#') {
            return None;
        }
        let key = t.split(['=', ' ', '\t']).next()?.trim().to_ascii_lowercase();
        (!key.is_empty()).then_some(key)
    };
    let mut out: String = existing
        .lines()
        .filter(|l| key_of(l).is_none_or(|k| !settings.iter().any(|(s, _)| s.eq_ignore_ascii_case(&k))))
        .map(|l| format!("{l}\n"))
        .collect();
    // As ALTER SYSTEM writes them: the configuration file's parser turns
    // '' into ' and \\ into \, so each is doubled once here, and what the
    // server reads is the value itself (a conninfo keeps its own quoting).
    for (k, v) in settings {
        out.push_str(&format!("{k} = '{}'\n", v.replace('\\', "\\\\").replace('\'', "''")));
    }
    out
}

/// Files and directories a copy of a data directory leaves out, as
/// pg_basebackup does (and gprecoverseg's differential rsync).
pub const RSYNC_EXCLUDES: &[&str] = &[
    "/pg_wal/*",
    "/postmaster.pid",
    "/postmaster.opts",
    "/pg_replslot/*",
    "/pg_dynshmem/*",
    "/pg_notify/*",
    "/pg_serial/*",
    "/pg_snapshots/*",
    "/pg_stat_tmp/*",
    "/pg_subtrans/*",
    "pgsql_tmp*",
    "/backup_label",
    "/backup_label.old",
    "/tablespace_map",
    "/standby.signal",
    "/recovery.signal",
    "/postgresql.auto.conf.tmp",
    "/current_logfiles*",
    "/log/*",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::Mode;

    fn seg(dbid: i16, content: i16, role: Role, status: Status, port: i32) -> Segment {
        Segment {
            dbid,
            content,
            role,
            preferred_role: role,
            mode: Mode::NotInSync,
            status,
            port,
            hostname: "localhost".into(),
            address: "127.0.0.1".into(),
            datadir: format!("/d/{dbid}"),
        }
    }

    fn catalog() -> Vec<Segment> {
        vec![
            seg(1, -1, Role::Primary, Status::Up, 7000),
            seg(2, 0, Role::Mirror, Status::Down, 7001),
            seg(3, 0, Role::Primary, Status::Up, 7003),
            seg(4, 1, Role::Primary, Status::Up, 7002),
            seg(5, 1, Role::Mirror, Status::Up, 7004),
        ]
    }

    const HOSTS: crate::identity::ByName<'static> = crate::identity::ByName { own_name: "cdw", local_hosts: "" };

    fn plan(dbid: i32, mode: RecoveryMode, new: NewLocation) -> Result<JobSpec, CoreError> {
        plan_recovery(&catalog(), &[], dbid, mode, &new, &HOSTS)
    }

    /// The row gp_recovery_job gets for a planned job.
    fn record(j: &JobSpec, job_id: i64) -> JobRecord {
        JobRecord {
            job_id,
            recovery_type: j.mode.as_str().into(),
            dbid: j.target.dbid,
            content: j.target.content,
            relocate: j.relocate,
            source_dbid: j.source.dbid,
            source_hostname: j.source.hostname.clone(),
            source_address: j.source.address.clone(),
            source_port: j.source.port,
            source_datadir: j.source.datadir.clone(),
            target_hostname: j.target.hostname.clone(),
            target_address: j.target.address.clone(),
            target_port: j.target.port,
            target_datadir: j.target.datadir.clone(),
            original: j.original.clone(),
            state: "running".into(),
            phase: "checking host".into(),
            attempts: Vec::new(),
            system_identifier: Some("7".into()),
        }
    }

    #[test]
    fn a_claimed_row_must_be_what_the_functions_plan() {
        let c = catalog();
        let new = NewLocation { port: Some(7100), datadir: Some("/new/2".into()), ..Default::default() };
        for spec in [
            plan(2, RecoveryMode::Incremental, NewLocation::default()).unwrap(),
            plan(2, RecoveryMode::Full, new).unwrap(),
        ] {
            let rec = record(&spec, 9);
            let me = ActiveJob { job_id: 9, dbid: 2, content: 0, state: "running".into(), target: rec.target() };
            assert!(verify_claimed(&c, &[me], &rec, &HOSTS, Some("7")).is_ok(), "{spec:?}");
        }
        let good = record(&plan(2, RecoveryMode::Incremental, NewLocation::default()).unwrap(), 9);
        let refused = |rec: JobRecord| verify_claimed(&c, &[], &rec, &HOSTS, Some("7")).unwrap_err().to_string();
        let e = refused(JobRecord { system_identifier: None, ..good.clone() });
        assert!(e.contains("its system_identifier is none, but the catalog gives 7"), "{e}");
        let e = refused(JobRecord { target_datadir: "/var/tmp/x$(touch /tmp/pwned)".into(), ..good.clone() });
        assert!(e.contains("target_datadir is /var/tmp/x$(touch /tmp/pwned)") && e.contains("nothing was run"), "{e}");
        let e = refused(JobRecord { source_port: 7000, ..good.clone() });
        assert!(e.contains("source_port is 7000, but the catalog gives 7003"), "{e}");
        let coordinator = JobRecord {
            relocate: true,
            target_hostname: "127.0.0.1".into(),
            target_datadir: "/d/1".into(),
            recovery_type: "full".into(),
            ..good.clone()
        };
        assert!(refused(coordinator).contains("coordinator's data directory"));
        let e = refused(JobRecord { dbid: 5, ..good.clone() });
        assert!(e.contains("is up"), "{e}");
        let e = refused(JobRecord { recovery_type: "rebalance".into(), ..good });
        assert!(e.contains("not a primary running in its mirror's role"), "{e}");
    }

    #[test]
    fn a_copy_of_tablespaces_outside_the_source_needs_another_host() {
        let source = seg(3, 0, Role::Primary, Status::Up, 7003);
        let same_host = seg(4, 0, Role::Mirror, Status::Down, 7004);
        let other_host = Segment { hostname: "sdw2".into(), ..same_host.clone() };
        let far = crate::probe::Tablespace { name: "far".into(), location: "/data/far".into() };
        let probe = Ok(crate::probe::InstanceProbe { outside_tablespaces: vec![far], ..Default::default() });
        for mode in [RecoveryMode::Differential, RecoveryMode::Full] {
            let e = verify_source(&source, &same_host, mode, false, &probe).unwrap_err().to_string();
            assert!(e.contains("far at /data/far") && e.contains("use incremental recovery"), "{e}");
            assert!(verify_source(&source, &other_host, mode, false, &probe).is_ok(), "{mode} on another host");
        }
        let e = verify_source(&source, &other_host, RecoveryMode::Full, true, &probe).unwrap_err().to_string();
        assert!(e.contains("far at /data/far") && e.contains("relocation does not map"), "{e}");
        assert!(verify_source(&source, &same_host, RecoveryMode::Incremental, false, &probe).is_ok());
        assert!(verify_source(&source, &same_host, RecoveryMode::Full, false, &Ok(Default::default())).is_ok());
    }

    #[test]
    fn plans_in_place_and_relocation() {
        let j = plan(2, RecoveryMode::Incremental, NewLocation::default()).unwrap();
        assert_eq!((j.source.dbid, j.relocate, j.target.port), (3, false, 7001));
        let new = NewLocation { port: Some(7100), datadir: Some("/new/2".into()), ..Default::default() };
        let j = plan(2, RecoveryMode::Full, new).unwrap();
        assert!(j.relocate);
        assert_eq!((j.target.dbid, j.target.port, j.target.datadir.as_str()), (2, 7100, "/new/2"));
        assert_eq!(j.original.port, 7001);
    }

    #[test]
    fn refuses_bad_requests_naming_the_problem() {
        let msg = |dbid, mode, new| plan(dbid, mode, new).unwrap_err().to_string();
        use RecoveryMode::*;
        assert!(msg(42, Full, NewLocation::default()).contains("invalid dbid \"42\": no segment with this dbid"));
        assert!(msg(1, Full, NewLocation::default()).contains("it is the coordinator"));
        assert!(msg(5, Full, NewLocation::default()).contains("segment dbid 5 at localhost:7004 is up"));
        let port = |p| NewLocation { port: Some(p), ..Default::default() };
        assert!(msg(2, Incremental, port(7100)).contains("always copied in full: use mode 'full'"));
        assert!(msg(2, Differential, port(7100)).contains("always copied in full"));
        assert!(msg(2, Full, port(7002)).contains("port 7002 on host localhost is already used by dbid 4"));
        assert!(msg(2, Full, port(7001)).contains("it is where the segment already is"));
        let dir = |d: &str| NewLocation { datadir: Some(d.into()), ..Default::default() };
        assert!(msg(2, Full, dir("relative")).contains("must be an absolute path"));
        assert!(msg(2, Full, dir("")).contains("must be an absolute path"));
        assert!(msg(2, Full, dir("/")).contains("must not be the root directory"));
        assert!(
            msg(2, Full, dir("/d/1")).contains("it is the coordinator's data directory"),
            "the coordinator's datadir"
        );
        assert_eq!(
            "x".parse::<RecoveryMode>().unwrap_err().to_string(),
            "invalid recovery mode \"x\": must be one of incremental, differential, full, auto"
        );
        let relocated = plan(2, RecoveryMode::Auto, port(7100)).unwrap();
        assert_eq!((relocated.mode, relocated.relocate), (Full, true), "a relocation in auto mode is a full copy");
        let active =
            [ActiveJob { job_id: 12, dbid: 2, content: 0, state: "running".into(), target: catalog()[1].clone() }];
        let e = plan_recovery(&catalog(), &active, 2, Full, &NewLocation::default(), &HOSTS).unwrap_err();
        assert_eq!(e.to_string(), "content 0 already has recovery job 12 (running) for dbid 2");
        let mut c = catalog();
        c[2].status = Status::Down;
        let e = plan_recovery(&c, &[], 2, Full, &NewLocation::default(), &HOSTS).unwrap_err();
        assert!(e.to_string().starts_with("double fault: content 0's acting primary dbid 3"), "{e}");
    }

    #[test]
    fn a_target_of_another_job_is_refused() {
        let mut c = catalog();
        c[4].status = Status::Down;
        let elsewhere = Segment { port: 7100, datadir: "/new/5".into(), ..c[4].clone() };
        let active = [ActiveJob { job_id: 9, dbid: 5, content: 1, state: "queued".into(), target: elsewhere }];
        let to =
            |port: i32, dir: &str| NewLocation { port: Some(port), datadir: Some(dir.into()), ..Default::default() };
        let e = plan_recovery(&c, &active, 2, RecoveryMode::Full, &to(7100, "/new/2"), &HOSTS).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Duplicate);
        assert!(e.to_string().contains("is the target of recovery job 9 (queued) for dbid 5"), "{e}");
        assert!(
            plan_recovery(&c, &active, 2, RecoveryMode::Full, &to(7101, "/new/5/sub"), &HOSTS).is_err(),
            "inside its directory"
        );
        assert!(plan_recovery(&c, &active, 2, RecoveryMode::Full, &to(7101, "/new/2"), &HOSTS).is_ok());
    }

    #[test]
    fn parses_gprecoverseg_config_lines() {
        let text = "# comment\n\n127.0.0.1|7001|/d/2\n\
                    localhost|127.0.0.1|7001|/d/2 localhost|127.0.0.1|7101|/n/2\n\
                    D|127.0.0.1|7001|/d/2\nf|h|127.0.0.1|7001|/d/2\n";
        let lines = parse_config(text).unwrap();
        assert_eq!(lines.len(), 4);
        assert_eq!((lines[0].line, lines[0].mode, lines[0].failed.port), (3, None, 7001));
        assert_eq!(lines[1].new.as_ref().unwrap().port, 7101);
        assert_eq!(lines[1].failed.hostname.as_deref(), Some("localhost"));
        assert_eq!(lines[2].mode, Some(RecoveryMode::Differential));
        assert_eq!(lines[3].mode, Some(RecoveryMode::Full));
        assert_eq!(lines[3].failed.hostname.as_deref(), Some("h"));
        assert_eq!(config_line_segment(&catalog(), &lines[0]).unwrap().dbid, 2);
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_line() {
        let lines = parse_config("\u{feff}127.0.0.1|7001|/d/2\n").unwrap();
        assert_eq!(lines[0].failed.address, "127.0.0.1");
        assert_eq!(config_line_segment(&catalog(), &lines[0]).unwrap().dbid, 2);
    }

    #[test]
    fn config_errors_name_the_line() {
        let err = |t: &str| parse_config(t).unwrap_err().to_string();
        assert!(err("a|1|/x b|2|/y c|3|/z").contains("line 1: expected 1 or 2 groups but found 3"));
        assert!(err("# c\na|1").contains("line 2: expected 3 or 4 parts on failed segment group, obtained 2"));
        assert!(err("a|x|/d").contains("line 1: invalid port \"x\""));
        assert!(err("a|1|rel").contains("absolute data directory"));
        assert!(err("a|1|/d h|a|2|/e").contains("expected equal parts"));
        assert!(err("I|a|1|/d b|2|/e").contains("always copied in full"));
        let lines = parse_config("10.0.0.9|7001|/nope").unwrap();
        let e = config_line_segment(&catalog(), &lines[0]).unwrap_err().to_string();
        assert!(e.contains("line 1: a segment to recover was not found in configuration"), "{e}");
    }

    #[test]
    fn writes_the_config_of_down_segments() {
        let out = config_for_down_segments(&catalog());
        assert!(out.ends_with("127.0.0.1|7001|/d/2\n"));
        let lines = parse_config(&out).unwrap();
        assert_eq!(lines.len(), 1, "the output is valid input");
    }

    #[test]
    fn reads_progress_of_every_tool() {
        let bb = "waiting for checkpoint\r 1024/4096 kB (25%), 0/1 tablespace (/d/base/1/123)\r\
                  2048/4096 kB (50%), 0/1 tablespace (/d/base/1/124)\n";
        assert_eq!(parse_progress(bb), Some(Progress { done_bytes: 2048 * 1024, total_bytes: Some(4096 * 1024) }));
        let rw = "pg_rewind: reading source file list\n10/100 kB (10%) copied\n";
        assert_eq!(parse_progress(rw), Some(Progress { done_bytes: 10 * 1024, total_bytes: Some(100 * 1024) }));
        let rs = "      1,036,923,510  50%   39.90MB/s    0:00:24 (xfr#1, to-chk=0/1)\r";
        assert_eq!(parse_progress(rs), Some(Progress { done_bytes: 1_036_923_510, total_bytes: Some(2_073_847_020) }));
        assert_eq!(parse_progress("pg_basebackup: starting\n"), None);
    }

    #[test]
    fn progress_is_read_from_appended_output_only() {
        let kb = |done: i64, total: i64| Some(Progress { done_bytes: done * 1024, total_bytes: Some(total * 1024) });
        let mut r = ProgressReader::default();
        assert_eq!(r.feed(b"pg_basebackup: initiating base backup\n"), None);
        assert_eq!(r.feed(b"100/4096 kB (2%), 0/1 tablespace\n"), kb(100, 4096));
        // A line split between reads: its first half holds no figure yet.
        assert_eq!(r.feed(b"2048/40"), kb(100, 4096));
        assert_eq!(r.feed(b"96 kB (50%), 0/1 tablespace\n"), kb(2048, 4096));
        // Nothing appended: the latest stays.
        assert_eq!(r.feed(b""), kb(2048, 4096));
        // Several lines in one read: the last with a figure wins.
        assert_eq!(r.feed(b"3000/4096 kB (73%)\n4096/4096 kB (100%)\nwaiting for WAL\n"), kb(4096, 4096));

        // rsync: each update starts with \r, so the newest is unfinished.
        let mut r = ProgressReader::default();
        assert_eq!(
            r.feed(b"\r      1,000,000  10%   1.00MB/s    0:00:09"),
            Some(Progress { done_bytes: 1_000_000, total_bytes: Some(10_000_000) })
        );
        assert_eq!(
            r.feed(b"\r      5,000,000  5"),
            Some(Progress { done_bytes: 1_000_000, total_bytes: Some(10_000_000) }),
            "the figure is not whole before its %"
        );
        assert_eq!(
            r.feed(b"0%   1.00MB/s    0:00:05"),
            Some(Progress { done_bytes: 5_000_000, total_bytes: Some(10_000_000) })
        );
        // A character split between two reads is whole again.
        let mut r = ProgressReader::default();
        let line = "déjà 10/100 kB (10%)\n".as_bytes();
        assert_eq!(r.feed(&line[..2]), None);
        assert_eq!(r.feed(&line[2..]), kb(10, 100));
    }

    #[test]
    fn an_overlong_line_is_skipped_to_its_end() {
        let mut r = ProgressReader::default();
        assert_eq!(r.feed(b"1/100 kB (1%)\n"), Some(Progress { done_bytes: 1024, total_bytes: Some(102_400) }));
        r.feed(&vec![b'x'; MAX_LINE + 1]);
        assert!(r.unfinished.is_empty(), "the buffer stays bounded");
        // Its end is no line of its own, even when it looks like one.
        assert_eq!(
            r.feed(b" 9/100 kB (9%)\n5/100 kB (5%)"),
            Some(Progress { done_bytes: 5120, total_bytes: Some(102_400) })
        );
        assert_eq!(r.feed(b"\n"), Some(Progress { done_bytes: 5120, total_bytes: Some(102_400) }));
    }

    #[test]
    fn auto_conf_settings_replace_earlier_ones() {
        let existing = "# Do not edit this file manually!\nport = '7004'\nPRIMARY_CONNINFO = 'x'\nwork_mem = '8MB'\n";
        let out = rewrite_auto_conf(
            existing,
            &[("port", "7001".into()), ("primary_conninfo", "host=a application_name='o''k'".into())],
        );
        assert_eq!(
            out,
            "# Do not edit this file manually!\nwork_mem = '8MB'\nport = '7001'\nprimary_conninfo = 'host=a application_name=''o''''k'''\n"
        );
    }

    #[test]
    fn conninfo_quotes_what_needs_it() {
        assert_eq!(conninfo(&[("host", "127.0.0.1"), ("port", "7001")]), "host=127.0.0.1 port=7001");
        assert_eq!(conninfo_value("a b'c"), "'a b\\'c'");
    }

    /// A quoted value as PostgreSQL's configuration file parser reads it
    /// (GUC_scanstr): '' is ', a backslash escapes the next character.
    fn read_conf_value(line: &str) -> String {
        let quoted = line.split_once(" = '").map(|(_, v)| v.trim_end().strip_suffix('\'').unwrap_or(v)).unwrap();
        let (mut out, mut chars) = (String::new(), quoted.chars().peekable());
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.extend(chars.next()),
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    out.push('\'');
                }
                c => out.push(c),
            }
        }
        out
    }

    /// One conninfo value as libpq reads it: inside quotes a backslash
    /// escapes the next character.
    fn read_conninfo_value(v: &str) -> String {
        let Some(inner) = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) else { return v.to_string() };
        let (mut out, mut chars) = (String::new(), inner.chars());
        while let Some(c) = chars.next() {
            out.extend(if c == '\\' { chars.next() } else { Some(c) });
        }
        out
    }

    #[test]
    fn a_conninfo_in_postgresql_auto_conf_is_read_back_as_written() {
        for host in ["plain", "a b", "o'k", "back\\slash", "both\\'\\\\x"] {
            let conninfo = conninfo(&[("host", host)]);
            let file = rewrite_auto_conf("", &[("primary_conninfo", conninfo.clone())]);
            let read = read_conf_value(file.trim_end());
            assert_eq!(read, conninfo, "{file}");
            assert_eq!(read_conninfo_value(read.strip_prefix("host=").unwrap()), host);
        }
    }
}

/// Checks what a live probe of the source found: it must answer and be a
/// primary.
///
/// A source's tablespaces outside its data directory live at the same
/// locations on its mirror's host (a standby replays CREATE TABLESPACE with
/// the primary's location). A differential or full copy copies them into
/// the target's own directories at those locations, which works only on
/// another host: on the source's host they are the source's own
/// directories. A relocation would need the locations mapped onto the new
/// host per segment, which is not built, so it is refused too. Incremental
/// recovery rewinds them in place.
pub fn verify_source(
    source: &Segment,
    target: &Segment,
    mode: RecoveryMode,
    relocate: bool,
    probe: &crate::probe::ProbeResult,
) -> Result<(), CoreError> {
    let p = match probe {
        Err(e) => return Err(double_fault(source, &format!("does not answer ({e})"))),
        Ok(p) if p.in_recovery => return Err(double_fault(source, "is in recovery, not a primary")),
        Ok(p) => p,
    };
    if !matches!(mode, RecoveryMode::Differential | RecoveryMode::Full) || p.outside_tablespaces.is_empty() {
        return Ok(());
    }
    let list = p.outside_tablespaces.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let why = if relocate {
        "a relocation does not map tablespace locations onto a new data directory; recover it in place".to_string()
    } else if source.hostname.eq_ignore_ascii_case(&target.hostname) {
        format!(
            "dbid {} is on the same host ({}), where a {mode} copy would share those directories with its source; \
             use incremental recovery, or in-place tablespaces",
            target.dbid, target.hostname
        )
    } else {
        return Ok(());
    };
    Err(CoreError::WrongState(format!(
        "the acting primary dbid {} has tablespaces outside its data directory ({list}): {why}",
        source.dbid
    )))
}

/// Checks a job row the worker claimed against the plan the SQL functions
/// make from the catalog now, so that a row written by hand (only a
/// superuser can) never runs: the first column that differs is named.
///
/// `system_identifier` is the pair's, as the catalog records it.
pub fn verify_claimed(
    catalog: &[Segment],
    active: &[ActiveJob],
    rec: &JobRecord,
    hosts: &dyn HostNames,
    system_identifier: Option<&str>,
) -> Result<(), CoreError> {
    let mode = rec.mode()?;
    let others: Vec<ActiveJob> = active.iter().filter(|j| j.job_id != rec.job_id).cloned().collect();
    let plan = if mode == RecoveryMode::Rebalance {
        let acting = catalog.iter().find(|s| s.dbid == rec.dbid && s.is_segment()).ok_or_else(|| {
            CoreError::WrongState(format!("dbid {} is not a segment in gp_segment_configuration", rec.dbid))
        })?;
        let preferred = catalog
            .iter()
            .find(|s| s.content == acting.content && s.dbid != acting.dbid)
            .filter(|m| acting.role == Role::Primary && acting.preferred_role == Role::Mirror && m.role == Role::Mirror)
            .ok_or_else(|| {
                CoreError::WrongState(format!("dbid {} is not a primary running in its mirror's role", rec.dbid))
            })?;
        JobSpec { mode, original: acting.clone(), target: acting.clone(), source: preferred.clone(), relocate: false }
    } else {
        let new = if rec.relocate {
            NewLocation {
                hostname: Some(rec.target_hostname.clone()),
                address: Some(rec.target_address.clone()),
                port: Some(rec.target_port),
                datadir: Some(rec.target_datadir.clone()),
            }
        } else {
            NewLocation::default()
        };
        plan_recovery(catalog, &others, rec.dbid.into(), mode, &new, hosts)?
    };
    let (s, t) = (&plan.source, &plan.target);
    let sysid = |v: Option<&str>| v.unwrap_or("none").to_string();
    let columns: [(&str, String, String); 13] = [
        ("content", plan.original.content.to_string(), rec.content.to_string()),
        ("relocate", plan.relocate.to_string(), rec.relocate.to_string()),
        ("original", format!("{:?}", plan.original), format!("{:?}", rec.original)),
        ("source_dbid", s.dbid.to_string(), rec.source_dbid.to_string()),
        ("source_hostname", s.hostname.clone(), rec.source_hostname.clone()),
        ("source_address", s.address.clone(), rec.source_address.clone()),
        ("source_port", s.port.to_string(), rec.source_port.to_string()),
        ("source_datadir", s.datadir.clone(), rec.source_datadir.clone()),
        ("target_hostname", t.hostname.clone(), rec.target_hostname.clone()),
        ("target_address", t.address.clone(), rec.target_address.clone()),
        ("target_port", t.port.to_string(), rec.target_port.to_string()),
        ("target_datadir", t.datadir.clone(), rec.target_datadir.clone()),
        ("system_identifier", sysid(system_identifier), sysid(rec.system_identifier.as_deref())),
    ];
    match columns.into_iter().find(|(_, planned, got)| planned != got) {
        None => Ok(()),
        Some((column, planned, got)) => Err(CoreError::WrongState(format!(
            "its {column} is {got}, but the catalog gives {planned}: the row was not written by the gp_recovery \
             functions, or the catalog changed since it was queued; nothing was run"
        ))),
    }
}

/// A recovery job as the worker reads it from gp_recovery_job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobRecord {
    pub job_id: i64,
    pub recovery_type: String,
    pub dbid: i16,
    pub content: i16,
    pub relocate: bool,
    pub source_dbid: i16,
    pub source_hostname: String,
    pub source_address: String,
    pub source_port: i32,
    pub source_datadir: String,
    pub target_hostname: String,
    pub target_address: String,
    pub target_port: i32,
    pub target_datadir: String,
    pub original: Segment,
    pub state: String,
    pub phase: String,
    /// An auto job's abandoned attempts, oldest first.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// The pair's database system identifier, from the catalog at
    /// submission: what a server must have to be stopped as this pair's.
    #[serde(default)]
    pub system_identifier: Option<String>,
}

/// One abandoned attempt of an auto job (gp_recovery_job.attempts).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attempt {
    pub mode: String,
    pub phase: String,
    pub reason: String,
    /// What its copy tool had moved, when it reported it.
    pub bytes: Option<i64>,
    /// Its failure's kind (job::FailureKind).
    #[serde(default)]
    pub failure: Option<String>,
}

impl JobRecord {
    pub fn mode(&self) -> Result<RecoveryMode, CoreError> {
        RecoveryMode::from_job_type(&self.recovery_type)
    }

    /// The kind of job that runs now: an auto job's current attempt.
    pub fn kind(&self) -> Result<crate::job::JobKind, CoreError> {
        Ok(crate::job::JobKind::attempt(self.mode()?, self.relocate, self.attempts.len()))
    }

    /// The source as it was when the job was submitted (for a rebalance,
    /// the mirror to be promoted).
    pub fn source(&self) -> Segment {
        Segment {
            dbid: self.source_dbid,
            hostname: self.source_hostname.clone(),
            address: self.source_address.clone(),
            port: self.source_port,
            datadir: self.source_datadir.clone(),
            role: self.original.preferred_role,
            preferred_role: self.original.role,
            ..self.original.clone()
        }
    }

    /// The segment where the job puts it.
    pub fn target(&self) -> Segment {
        Segment {
            hostname: self.target_hostname.clone(),
            address: self.target_address.clone(),
            port: self.target_port,
            datadir: self.target_datadir.clone(),
            ..self.original.clone()
        }
    }
}

/// The free space on the file system a copy fills, as `Scripts::space`
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Space {
    pub avail_bytes: i64,
    /// What the target directory holds now.
    pub used_bytes: i64,
    /// The directory holds an incomplete copy (an interrupted rewind or copy).
    pub marked: bool,
    pub path: String,
}

impl Space {
    pub fn parse(output: &str) -> Option<Space> {
        let line = output.lines().rev().find_map(|l| l.strip_prefix("space "))?;
        let mut words = line.splitn(4, ' ');
        let kb = |w: Option<&str>| w?.trim().parse::<i64>().ok().map(|k| k.saturating_mul(1024));
        Some(Space {
            avail_bytes: kb(words.next())?,
            used_bytes: kb(words.next())?,
            marked: words.next()? == "1",
            path: words.next()?.to_string(),
        })
    }
}

/// Room kept free beyond a copy's estimate: a tenth of it, and at least
/// 64 MB for the WAL written while it runs.
pub fn space_margin(estimate: i64) -> i64 {
    (estimate / 10).max(64 << 20)
}

/// The bytes a copy of `kind` adds to the target's file system when its
/// source's databases hold `source_bytes`: all of them for a full copy (in
/// place it is made beside the old directory, which stays until the end),
/// what the directory lacks for a differential copy (rewritten in place).
pub fn copy_estimate(kind: crate::job::JobKind, source_bytes: i64, target_used_bytes: i64) -> i64 {
    use crate::job::JobKind;
    match kind {
        JobKind::Full | JobKind::Relocation => source_bytes,
        JobKind::Differential => (source_bytes - target_used_bytes).max(0),
        JobKind::Incremental | JobKind::Rebalance => 0,
    }
}

fn megabytes(bytes: i64) -> String {
    format!("{} MB", (bytes + (1 << 20) - 1) >> 20)
}

/// Refuses a copy the target's file system cannot hold, with the numbers.
pub fn check_space(
    kind: crate::job::JobKind,
    dbid: i16,
    host: &str,
    source_bytes: i64,
    space: &Space,
) -> Result<(), String> {
    let estimate = copy_estimate(kind, source_bytes, space.used_bytes);
    let needed = estimate + space_margin(estimate);
    if estimate == 0 || space.avail_bytes >= needed {
        return Ok(());
    }
    Err(format!(
        "not enough free space for the {kind} copy of dbid {dbid} on host {host}: the file system of {} has {} free; \
         the copy needs about {} ({} of the source's databases{}, and a margin of {})",
        space.path,
        megabytes(space.avail_bytes),
        megabytes(needed),
        megabytes(estimate),
        if kind == crate::job::JobKind::Differential {
            format!(" beyond the {} the directory holds", megabytes(space.used_bytes))
        } else {
            String::new()
        },
        megabytes(space_margin(estimate)),
    ))
}

#[cfg(test)]
mod space_tests {
    use super::*;
    use crate::job::JobKind;

    #[test]
    fn a_copy_needs_its_estimate_and_a_margin() {
        let space = Space::parse("noise\nspace 32768 1024 0 /data/small disk\n").unwrap();
        assert_eq!(
            space,
            Space { avail_bytes: 32 << 20, used_bytes: 1 << 20, marked: false, path: "/data/small disk".into() }
        );
        let e = check_space(JobKind::Full, 3, "sdw1", 40 << 20, &space).unwrap_err();
        assert!(e.contains("/data/small disk has 32 MB free") && e.contains("needs about 104 MB"), "{e}");
        assert!(
            check_space(JobKind::Full, 3, "sdw1", 40 << 20, &Space { avail_bytes: 200 << 20, ..space.clone() }).is_ok()
        );
        // A differential copy rewrites what is there: only the difference counts.
        let full_dir = Space { avail_bytes: 70 << 20, used_bytes: 1 << 30, marked: true, path: "/d".into() };
        assert!(check_space(JobKind::Differential, 3, "sdw1", (1 << 30) + (4 << 20), &full_dir).is_ok());
        let e = check_space(JobKind::Differential, 3, "sdw1", 2 << 30, &full_dir).unwrap_err();
        assert!(e.contains("beyond the 1024 MB the directory holds"), "{e}");
        assert!(check_space(JobKind::Incremental, 3, "sdw1", 2 << 30, &full_dir).is_ok());
        assert_eq!(Space::parse("df: nothing"), None);
    }
}
