//! What a location or a server *is*, not how it is spelled.
//!
//! Three kinds of proof, each checked where it can be:
//! - at submission, a data directory must be written in its one canonical
//!   form and two host names are compared by what they reach
//!   ([`validate_location`], [`HostNames`]);
//! - at `checking host`, every directory is resolved on its own host and
//!   compared by device and inode, machine by machine ([`HostReport`]), so a
//!   symbolic link, a bind mount or a second name for a host changes nothing;
//! - before a server is stopped or fenced, its database system identifier
//!   and data directory must be the pair's and the row's ([`Member`]).

use std::collections::HashMap;
use std::fmt;

use crate::error::CoreError;
use crate::recovery::ActiveJob;
use crate::segment::Segment;

/// PostgreSQL's MAXPGPATH is 1024 bytes, and it writes files up to about
/// 64 bytes deep inside a data directory (pg_wal/archive_status/...).
pub const MAX_DATADIR_BYTES: usize = 960;
/// Linux's NAME_MAX; a data directory's last component also carries the
/// longest name gp_recovery gives a sibling (`.gp_recovery_old.removing.` and
/// a job id).
pub const NAME_MAX: usize = 255;
pub const SIBLING_ROOM: usize = 48;
/// A DNS name's limit.
pub const MAX_HOST_BYTES: usize = 253;

/// Every name gp_recovery gives the files it keeps beside or inside a data
/// directory contains this; a location containing it in any component
/// could be one of them, and a job's clean-up could delete it.
pub const RESERVED: &str = ".gp_recovery";

/// Checks a data directory given by a DBA: absolute and canonical (no `.`,
/// `..`, empty component or trailing `/`), not `/`, no reserved name, no
/// character pg_ctl's shell would read, and within PostgreSQL's and the
/// file system's length limits.
pub fn validate_location(datadir: &str) -> Result<(), CoreError> {
    let invalid = |expected| CoreError::InvalidValue { what: "data directory", value: shown(datadir), expected };
    if !datadir.starts_with('/') {
        return Err(invalid("must be an absolute path"));
    }
    if datadir == "/" {
        return Err(invalid("must not be the root directory"));
    }
    if datadir.len() > MAX_DATADIR_BYTES {
        return Err(invalid(
            "must be at most 960 bytes long (PostgreSQL's MAXPGPATH is 1024 bytes, less room for its own files)",
        ));
    }
    // pg_ctl starts the postmaster through a shell with the directory inside
    // double quotes, where these would still be interpreted.
    if datadir.chars().any(|c| matches!(c, '"' | '$' | '`' | '\\' | '\n' | '\r')) {
        return Err(invalid("must not contain \", $, `, \\ or a line break (pg_ctl passes it through a shell)"));
    }
    if datadir.ends_with('/') {
        return Err(invalid("must not end in /: write each directory once, in its one canonical form"));
    }
    let components: Vec<&str> = datadir[1..].split('/').collect();
    if components.iter().any(|c| c.is_empty() || *c == "." || *c == "..") {
        return Err(invalid(
            "must be canonical: no empty, . or .. component (another spelling of a directory is refused, not resolved)",
        ));
    }
    if components.iter().any(|c| c.contains(RESERVED)) {
        return Err(invalid(
            "must not contain .gp_recovery in any component: such names are gp_recovery's own (copies, old \
             directories, marks), which its jobs move and delete",
        ));
    }
    if components.iter().any(|c| c.len() > NAME_MAX) {
        return Err(invalid("must have no component longer than 255 bytes (NAME_MAX)"));
    }
    if components.last().is_some_and(|c| c.len() > NAME_MAX - SIBLING_ROOM) {
        return Err(invalid(
            "must have a last component of at most 207 bytes: gp_recovery names its siblings after it, within \
             NAME_MAX (255 bytes)",
        ));
    }
    Ok(())
}

/// Checks a path's length against a host's own limits (getconf PATH_MAX and
/// NAME_MAX there), as [`validate_location`] does against Linux's.
pub fn check_host_limits(datadir: &str, path_max: usize, name_max: usize) -> Result<(), String> {
    if datadir.len() + SIBLING_ROOM >= path_max {
        return Err(format!(
            "the data directory {} is too long for its host: PATH_MAX there is {path_max} bytes",
            shown(datadir)
        ));
    }
    let last = datadir.rsplit('/').next().unwrap_or_default();
    if datadir.split('/').any(|c| c.len() > name_max) || last.len() + SIBLING_ROOM > name_max {
        return Err(format!(
            "the data directory {} has a component too long for its host: NAME_MAX there is {name_max} bytes \
             (the last component needs {SIBLING_ROOM} more for gp_recovery's siblings)",
            shown(datadir)
        ));
    }
    Ok(())
}

/// A value for an error text: long ones are cut, so an ERROR stays readable.
pub fn shown(value: &str) -> String {
    const SHOWN: usize = 120;
    if value.len() <= SHOWN {
        return value.to_string();
    }
    let mut end = SHOWN;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &value[..end], value.len())
}

/// Whether two host names or addresses reach the same machine.
pub trait HostNames {
    fn same_host(&self, a: &str, b: &str) -> bool;
}

/// By name alone, as the jobs worker compares them (it may not wait on a
/// resolver): the same name in any case, or two names for the
/// coordinator's own machine (localhost, a loopback address, its host
/// name, gp_recovery.local_hosts).
pub struct ByName<'a> {
    pub own_name: &'a str,
    pub local_hosts: &'a str,
}

impl HostNames for ByName<'_> {
    fn same_host(&self, a: &str, b: &str) -> bool {
        let local = |h: &str| crate::host::is_local(h, self.own_name, self.local_hosts);
        a.trim().eq_ignore_ascii_case(b.trim()) || (local(a) && local(b))
    }
}

/// How one directory stands to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    Same,
    /// The first lies inside the second.
    Inside,
    /// The first holds the second.
    Holds,
}

impl Overlap {
    /// "is", "lies inside" or "holds", before "the data directory of ...".
    pub fn verb(self) -> &'static str {
        match self {
            Overlap::Same => "is",
            Overlap::Inside => "lies inside",
            Overlap::Holds => "holds",
        }
    }
}

/// How two canonical paths stand, component by component: `/a/b` holds
/// `/a/b/c`, but `/a/bc` is not inside `/a/b`.
pub fn path_overlap(a: &str, b: &str) -> Option<Overlap> {
    let (a, b) = (a.trim_end_matches('/'), b.trim_end_matches('/'));
    let under = |x: &str, y: &str| x.len() > y.len() && x.starts_with(y) && x.as_bytes()[y.len()] == b'/';
    if a == b {
        Some(Overlap::Same)
    } else if under(a, b) || b.is_empty() {
        Some(Overlap::Inside)
    } else if under(b, a) || a.is_empty() {
        Some(Overlap::Holds)
    } else {
        None
    }
}

/// A file as the kernel knows it: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.dev, self.ino)
    }
}

impl std::str::FromStr for FileId {
    type Err = String;

    fn from_str(s: &str) -> Result<FileId, String> {
        let (dev, ino) = s.split_once(':').ok_or_else(|| format!("not dev:ino: {s:?}"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|_| format!("not dev:ino: {s:?}"));
        Ok(FileId { dev: num(dev)?, ino: num(ino)? })
    }
}

/// A path resolved on its host: the directory itself when it exists, then
/// every existing directory above it up to `/`, after every link was
/// followed (realpath).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathId {
    pub exists: bool,
    pub chain: Vec<FileId>,
}

impl PathId {
    fn itself(&self) -> Option<FileId> {
        self.exists.then(|| self.chain.first().copied()).flatten()
    }

    /// How this path stands to `other` on the same machine.
    pub fn overlap(&self, other: &PathId) -> Option<Overlap> {
        let theirs = other.itself()?;
        match self.itself() {
            Some(mine) if mine == theirs => Some(Overlap::Same),
            _ if self.chain.contains(&theirs) => Some(Overlap::Inside),
            Some(mine) if other.chain.contains(&mine) => Some(Overlap::Holds),
            _ => None,
        }
    }

    fn parse(words: &[&str]) -> Result<PathId, String> {
        let (exists, chain) = words.split_first().ok_or("an empty path line")?;
        Ok(PathId { exists: *exists == "1", chain: chain.iter().map(|w| w.parse()).collect::<Result<_, _>>()? })
    }
}

/// One directory of a host's report, with the tablespace locations its
/// pg_tblspc links reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirReport {
    pub path: PathId,
    pub tablespaces: Vec<PathId>,
}

/// What `Scripts::identify` printed on one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostReport {
    /// machine-id and boot id: device and inode numbers compare only within one.
    pub machine: String,
    pub dirs: Vec<DirReport>,
    /// PATH_MAX and NAME_MAX where the first directory would be.
    pub limits: Option<(usize, usize)>,
}

impl HostReport {
    /// Reads the script's lines: `machine ID`, `dir I E ID...`, `tblspc I E
    /// ID...`, `limits P N`, for directories 0..count.
    pub fn parse(output: &str, count: usize) -> Result<HostReport, String> {
        let mut report = HostReport { dirs: vec![DirReport::default(); count], ..HostReport::default() };
        let mut seen = vec![false; count];
        for line in output.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let index = |w: Option<&&str>| -> Result<usize, String> {
                w.and_then(|w| w.parse::<usize>().ok()).filter(|i| *i < count).ok_or(format!("bad line {line:?}"))
            };
            match words.first().copied() {
                Some("machine") if words.len() == 2 => report.machine = words[1].to_string(),
                Some("dir") => {
                    let i = index(words.get(1))?;
                    report.dirs[i].path = PathId::parse(&words[2..])?;
                    seen[i] = true;
                }
                Some("tblspc") => {
                    let i = index(words.get(1))?;
                    report.dirs[i].tablespaces.push(PathId::parse(&words[2..])?);
                }
                Some("limits") if words.len() == 3 => {
                    let n = |w: &str| w.parse::<usize>().ok();
                    report.limits = n(words[1]).zip(n(words[2]));
                }
                _ => {}
            }
        }
        if report.machine.is_empty() || seen.contains(&false) {
            return Err(format!("an incomplete identity report: {}", crate::host::last_lines(output, 3)));
        }
        Ok(report)
    }
}

/// A directory that must not be touched, as found on its host.
#[derive(Debug, Clone)]
pub struct Protected {
    /// For the error: "the data directory of dbid 2 (content 0) at localhost:7001".
    pub what: String,
    pub machine: String,
    pub path: PathId,
}

/// Protected directories from a host's report, in the order of the
/// directories the script was given: each one's data directory and its
/// tablespace locations.
pub fn protected_from(report: &HostReport, names: &[String]) -> Vec<Protected> {
    let mut out = Vec::new();
    for (dir, what) in report.dirs.iter().zip(names) {
        out.push(Protected {
            what: format!("the data directory of {what}"),
            machine: report.machine.clone(),
            path: dir.path.clone(),
        });
        for ts in &dir.tablespaces {
            out.push(Protected {
                what: format!("a tablespace location of {what}"),
                machine: report.machine.clone(),
                path: ts.clone(),
            });
        }
    }
    out
}

/// Refuses a new data directory that, on its machine, is, lies inside or
/// holds any protected directory.
pub fn check_target(target: &str, machine: &str, path: &PathId, protected: &[Protected]) -> Result<(), String> {
    for p in protected.iter().filter(|p| p.machine == machine) {
        if let Some(o) = path.overlap(&p.path) {
            return Err(format!(
                "the new data directory {} {} {} (compared on its host by device and inode, every link followed); \
                 nothing was changed",
                shown(target),
                o.verb(),
                p.what
            ));
        }
    }
    Ok(())
}

/// One host's part of a relocation's identity check: the directories it
/// is asked about (on the new host, the new directory first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAsk {
    pub hostname: String,
    pub paths: Vec<String>,
    /// Each path's owner, for an error; the new directory's is empty.
    pub names: Vec<String>,
    /// The catalog rows among the paths, with the machine last recorded
    /// for their host: compared by path when the host does not answer.
    pub recorded: Vec<(String, Option<String>)>,
}

/// What a relocation's new directory is checked against, host by host:
/// every segment's data directory (the coordinator's included) and other
/// jobs' targets. `recorded`: the machine each dbid's host was last found
/// to be.
pub fn identity_asks(
    target: &Segment,
    job_id: i64,
    catalog: &[Segment],
    active: &[ActiveJob],
    recorded: &HashMap<i16, String>,
) -> Vec<HostAsk> {
    let mut asks = vec![HostAsk {
        hostname: target.hostname.clone(),
        paths: vec![target.datadir.clone()],
        names: vec![String::new()],
        recorded: Vec::new(),
    }];
    let mut add = |hostname: &str, path: &str, name: String, machine: Option<Option<String>>| {
        let i = match asks.iter().position(|c| c.hostname.eq_ignore_ascii_case(hostname)) {
            Some(i) => i,
            None => {
                asks.push(HostAsk {
                    hostname: hostname.to_string(),
                    paths: Vec::new(),
                    names: Vec::new(),
                    recorded: Vec::new(),
                });
                asks.len() - 1
            }
        };
        asks[i].paths.push(path.to_string());
        if let Some(m) = machine {
            asks[i].recorded.push((path.to_string(), m));
        }
        asks[i].names.push(name);
    };
    for seg in catalog {
        let what = if seg.is_coordinator() {
            ", the coordinator"
        } else if seg.is_standby() {
            ", the coordinator's standby"
        } else {
            ""
        };
        let name = format!("dbid {} (content {}{what}) at {}", seg.dbid, seg.content, seg.location());
        add(&seg.hostname, &seg.datadir, name, Some(recorded.get(&seg.dbid).cloned()));
    }
    for j in active.iter().filter(|j| j.job_id != job_id) {
        let name = format!("the target of recovery job {} for dbid {}", j.job_id, j.dbid);
        add(&j.target.hostname, &j.target.datadir, name, None);
    }
    asks
}

/// A relocation's identity check that passed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Judged {
    /// The machine each host that answered turned out to be.
    pub machines: Vec<(String, String)>,
    /// Hosts that did not answer (compared by path only), with why.
    pub unanswered: Vec<(String, String)>,
}

/// Decides on the hosts' reports (`reports[i]` answers `asks[i]`): on one
/// machine, the new directory must not be, lie inside or hold any asked
/// directory or its tablespace locations, by device and inode; and it must
/// fit the new host's PATH_MAX and NAME_MAX. A host that does not answer is
/// compared by path, if it was last found to be the new host's machine.
pub fn judge(target: &str, asks: &[HostAsk], reports: &[Result<String, String>]) -> Result<Judged, String> {
    let (Some(first), Some(first_report)) = (asks.first(), reports.first()) else {
        return Err("no identity check ran".into());
    };
    let report = first_report
        .clone()
        .and_then(|out| HostReport::parse(&out, first.paths.len()))
        .map_err(|e| format!("could not resolve the new data directory on host {}: {e}", first.hostname))?;
    if let Some((path_max, name_max)) = report.limits {
        check_host_limits(target, path_max, name_max)?;
    }
    let machine = report.machine.clone();
    let target_path = report.dirs[0].path.clone();
    let beside = HostReport { dirs: report.dirs[1..].to_vec(), ..report.clone() };
    let mut protected = protected_from(&beside, &first.names[1..]);
    let mut judged = Judged { machines: vec![(first.hostname.clone(), machine.clone())], ..Judged::default() };
    for (ask, result) in asks.iter().zip(reports).skip(1) {
        match result.clone().and_then(|out| HostReport::parse(&out, ask.paths.len())) {
            Ok(r) => {
                judged.machines.push((ask.hostname.clone(), r.machine.clone()));
                protected.extend(protected_from(&r, &ask.names));
            }
            Err(e) => {
                for ((path, m), name) in ask.recorded.iter().zip(&ask.names) {
                    if m.as_deref() == Some(machine.as_str()) {
                        if let Some(o) = path_overlap(target, path) {
                            return Err(format!(
                                "the new data directory {target} {} the data directory of {name} (host {} does \
                                 not answer, and was last found to be the new host's machine); nothing was changed",
                                o.verb(),
                                ask.hostname
                            ));
                        }
                    }
                }
                judged.unanswered.push((ask.hostname.clone(), e));
            }
        }
    }
    check_target(target, &machine, &target_path, &protected)?;
    Ok(judged)
}

/// This machine's host name.
pub fn own_host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// This machine and boot, named as the scripts' `machine` names them.
pub fn local_machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let machine = read("/etc/machine-id").unwrap_or_else(own_host_name);
    format!("{machine}/{}", read("/proc/sys/kernel/random/boot_id").unwrap_or_default())
}

/// An existing directory on this machine as the scripts' `chain` names it:
/// itself after every link is followed, then each directory above it.
pub fn local_path_id(path: &std::path::Path) -> std::io::Result<PathId> {
    use std::os::unix::fs::MetadataExt;
    let real = std::fs::canonicalize(path)?;
    let chain = real
        .ancestors()
        .map(|p| std::fs::metadata(p).map(|m| FileId { dev: m.dev(), ino: m.ino() }))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(PathId { exists: true, chain })
}

/// What a running server must be before it is stopped or fenced: a member
/// of the pair (its database system identifier) running in the row's
/// directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member<'a> {
    pub system_identifier: &'a str,
    pub datadir: &'a str,
}

impl Member<'_> {
    /// Why the server that answered is not this member, if it is not.
    pub fn refusal(&self, system_identifier: &str, data_directory: &str) -> Option<String> {
        if self.system_identifier.is_empty() {
            return Some("no system identifier is recorded for the pair, so nothing can prove it is its member".into());
        }
        if system_identifier != self.system_identifier {
            return Some(format!(
                "it has database system identifier {system_identifier}, not the pair's {}",
                self.system_identifier
            ));
        }
        if data_directory.trim_end_matches('/') != self.datadir.trim_end_matches('/') {
            return Some(format!("it runs in data directory {data_directory}, not the catalog's {}", self.datadir));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{Mode, Role, Status};

    #[test]
    fn only_one_spelling_of_a_directory_is_accepted() {
        for good in ["/data/gpseg0", "/a", "/var/lib/postgresql/15/main", "/d/it's here;x"] {
            assert!(validate_location(good).is_ok(), "{good}");
        }
        let cases = [
            ("rel/dir", "absolute"),
            ("", "absolute"),
            ("/", "root directory"),
            ("/data/gpseg0/", "must not end in /"),
            ("/data//gpseg0", "canonical"),
            ("/data/./gpseg0", "canonical"),
            ("/data/x/../gpseg0", "canonical"),
            ("/data/gpseg0/.", "canonical"),
            ("/data/gpseg0.gp_recovery_old", ".gp_recovery"),
            ("/data/gpseg0.gp_recovery_old.removing.7", ".gp_recovery"),
            ("/data/gpseg0.gp_recovery_new/inner", ".gp_recovery"),
            ("/data/ts/.gp_recovery_old", ".gp_recovery"),
            ("/a/$(reboot)", "must not contain"),
        ];
        for (bad, why) in cases {
            let e = validate_location(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn lengths_are_bounded_and_shown_short() {
        let long = format!("/tmp/{}", "d".repeat(5000));
        let e = validate_location(&long).unwrap_err().to_string();
        assert!(e.contains("at most 960 bytes") && e.contains("(5005 bytes)") && e.len() < 400, "{e}");
        let component = format!("/tmp/{}/x", "c".repeat(256));
        assert!(validate_location(&component).unwrap_err().to_string().contains("longer than 255 bytes"));
        let last = format!("/tmp/{}", "c".repeat(208));
        assert!(validate_location(&last).unwrap_err().to_string().contains("207 bytes"));
        assert!(validate_location(&format!("/tmp/{}", "c".repeat(207))).is_ok());
        assert!(check_host_limits("/a/b", 4096, 255).is_ok());
        assert!(check_host_limits("/a/b", 40, 255).unwrap_err().contains("PATH_MAX there is 40"));
        assert!(check_host_limits(&format!("/a/{}", "x".repeat(20)), 4096, 60).unwrap_err().contains("NAME_MAX"));
        assert_eq!(shown("é".repeat(100).as_str()), format!("{}... (200 bytes)", "é".repeat(60)));
    }

    #[test]
    fn hosts_are_compared_by_what_they_reach() {
        let names = ByName { own_name: "cdw", local_hosts: "cdw.example" };
        assert!(names.same_host("LOCALHOST", "localhost"));
        assert!(names.same_host("localhost", "127.0.0.1"));
        assert!(names.same_host("CDW", "::1"));
        assert!(names.same_host("cdw.example", "localhost"));
        assert!(names.same_host("SDW1", "sdw1"));
        assert!(!names.same_host("sdw1", "sdw2"));
        assert!(!names.same_host("127.0.0.2", "127.0.0.1"), "demo hosts are machines of their own");
    }

    #[test]
    fn paths_overlap_component_by_component() {
        assert_eq!(path_overlap("/a/b", "/a/b"), Some(Overlap::Same));
        assert_eq!(path_overlap("/a/b/c", "/a/b"), Some(Overlap::Inside));
        assert_eq!(path_overlap("/a", "/a/b"), Some(Overlap::Holds));
        assert_eq!(path_overlap("/a/bc", "/a/b"), None);
        assert_eq!(path_overlap("/a/b/", "/a/b"), Some(Overlap::Same));
    }

    fn id(dev: u64, ino: u64) -> FileId {
        FileId { dev, ino }
    }

    #[test]
    fn directories_overlap_by_device_and_inode() {
        // /c (5:30) under / (5:2); a link /l → /c resolves to the same chain.
        let coordinator = PathId { exists: true, chain: vec![id(5, 30), id(5, 2)] };
        let through_link = coordinator.clone();
        assert_eq!(through_link.overlap(&coordinator), Some(Overlap::Same));
        let inside_missing = PathId { exists: false, chain: vec![id(5, 30), id(5, 2)] };
        assert_eq!(inside_missing.overlap(&coordinator), Some(Overlap::Inside));
        let root = PathId { exists: true, chain: vec![id(5, 2)] };
        assert_eq!(root.overlap(&coordinator), Some(Overlap::Holds));
        let elsewhere = PathId { exists: false, chain: vec![id(5, 40), id(5, 2)] };
        assert_eq!(elsewhere.overlap(&coordinator), None);
        let gone = PathId { exists: false, chain: vec![id(5, 2)] };
        assert_eq!(root.overlap(&gone), None, "a victim that does not exist there is not in the way");
        let protected =
            [Protected { what: "the data directory of dbid 1".into(), machine: "m/b".into(), path: coordinator }];
        let e = check_target("/l", "m/b", &through_link, &protected).unwrap_err();
        assert!(e.contains("/l is the data directory of dbid 1"), "{e}");
        assert!(check_target("/l", "other/b", &through_link, &protected).is_ok(), "another machine's inode");
    }

    #[test]
    fn a_hosts_report_is_read_whole_or_not_at_all() {
        let out = "noise\nmachine abc/def\ndir 0 1 5:30 5:2\ntblspc 0 1 6:7 6:2\ndir 1 0 5:2\nlimits 4096 255\n";
        let r = HostReport::parse(out, 2).unwrap();
        assert_eq!(r.machine, "abc/def");
        assert_eq!(r.dirs[0].tablespaces, vec![PathId { exists: true, chain: vec![id(6, 7), id(6, 2)] }]);
        assert_eq!(r.dirs[1].path, PathId { exists: false, chain: vec![id(5, 2)] });
        assert_eq!(r.limits, Some((4096, 255)));
        let names = ["dbid 1".to_string(), "dbid 2".to_string()];
        assert_eq!(protected_from(&r, &names).len(), 3);
        assert!(HostReport::parse("machine a\ndir 0 1 5:30\n", 2).is_err(), "a directory was not reported");
        assert!(HostReport::parse("dir 0 1 5:30\n", 1).is_err(), "no machine");
        assert!(HostReport::parse("machine a\ndir 0 1 x\n", 1).is_err());
        assert!(HostReport::parse("machine a\ndir 7 1 5:1\n", 1).is_err());
    }

    fn segment(dbid: i16, hostname: &str, datadir: &str) -> Segment {
        Segment {
            dbid,
            content: dbid - 2,
            hostname: hostname.into(),
            address: hostname.into(),
            datadir: datadir.into(),
            role: Role::Primary,
            preferred_role: Role::Primary,
            mode: Mode::Synchronized,
            status: Status::Up,
            port: 7000 + i32::from(dbid),
        }
    }

    #[test]
    fn a_relocation_asks_every_host_about_every_directory_but_its_own_job() {
        let catalog =
            [segment(1, "cdw", "/data/coordinator"), segment(2, "sdw1", "/data/p0"), segment(3, "SDW2", "/data/m0")];
        let active = [
            ActiveJob {
                job_id: 9,
                dbid: 3,
                content: 1,
                state: "running".into(),
                target: segment(3, "sdw2", "/new/m0"),
            },
            ActiveJob { job_id: 4, dbid: 5, content: 3, state: "queued".into(), target: segment(5, "sdw1", "/new/x") },
        ];
        let recorded = HashMap::from([(2, "m-sdw1".to_string())]);
        let asks = identity_asks(&segment(3, "sdw2", "/new/m0"), 9, &catalog, &active, &recorded);
        let hosts: Vec<&str> = asks.iter().map(|a| a.hostname.as_str()).collect();
        assert_eq!(hosts, ["sdw2", "cdw", "sdw1"], "one ask per host, the new host first, names compared without case");
        assert_eq!(asks[0].paths, ["/new/m0", "/data/m0"], "the new directory first");
        assert!(asks[1].names[0].contains("the coordinator"), "{:?}", asks[1].names);
        assert_eq!(asks[2].paths, ["/data/p0", "/new/x"], "another job's target, not this job's");
        assert_eq!(asks[2].recorded, [("/data/p0".to_string(), Some("m-sdw1".to_string()))]);
    }

    #[test]
    fn a_relocation_into_a_directory_another_host_name_reaches_is_refused() {
        let catalog = [segment(1, "cdw", "/data/coordinator"), segment(2, "sdw1", "/data/p0")];
        let recorded = HashMap::from([(1, "m1".to_string()), (2, "m2".to_string())]);
        let target = segment(3, "alias", "/srv/x");
        let asks = identity_asks(&target, 9, &catalog, &[], &recorded);
        let limits = "limits 4096 255\n";
        // "alias" is cdw's machine; /srv/x is a link into the coordinator's directory.
        let inside = Ok(format!("machine m1\ndir 0 0 8:1 8:2\n{limits}"));
        let coordinator = Ok("machine m1\ndir 0 1 8:1 8:2\n".to_string());
        let primary = Ok("machine m2\ndir 0 1 8:1 8:2\n".to_string());
        let e = judge("/srv/x", &asks, &[inside, coordinator.clone(), primary.clone()]).unwrap_err();
        assert!(e.contains("the coordinator") && e.contains("lies inside"), "{e}");
        // The same inode numbers on another machine are another directory.
        let elsewhere = Ok(format!("machine m3\ndir 0 0 8:1 8:2\n{limits}"));
        let judged = judge("/srv/x", &asks, &[elsewhere, coordinator, primary]).unwrap();
        assert_eq!(judged.machines.len(), 3);
        // A host that does not answer is compared by path, on its last known machine.
        let dead = Err("unreachable".to_string());
        let asks = identity_asks(&segment(3, "alias", "/data/p0/sub"), 9, &catalog, &[], &recorded);
        let on_m2 = Ok(format!("machine m2\ndir 0 0 9:1\n{limits}"));
        let e =
            judge("/data/p0/sub", &asks, &[on_m2, Ok("machine m1\ndir 0 1 8:1\n".into()), dead.clone()]).unwrap_err();
        assert!(e.contains("does not answer"), "{e}");
        let on_m3 = Ok(format!("machine m3\ndir 0 0 9:1\n{limits}"));
        let judged = judge("/data/p0/sub", &asks, &[on_m3, Ok("machine m1\ndir 0 1 8:1\n".into()), dead]).unwrap();
        assert_eq!(judged.unanswered, [("sdw1".to_string(), "unreachable".to_string())]);
        // The new host must answer, and its limits hold.
        assert!(judge("/srv/x", &asks, &[Err("down".into())]).unwrap_err().contains("could not resolve"));
        let tight = Ok("machine m3\ndir 0 0 9:1\nlimits 20 255\n".to_string());
        assert!(judge("/srv/x", &asks[..1], &[tight]).unwrap_err().contains("PATH_MAX"));
    }

    #[test]
    fn only_the_pairs_member_in_its_directory_is_the_member() {
        let m = Member { system_identifier: "71", datadir: "/d/m0" };
        assert_eq!(m.refusal("71", "/d/m0"), None);
        assert!(m.refusal("72", "/d/m0").unwrap().contains("not the pair's 71"));
        assert!(m.refusal("71", "/d/primary/gpseg0").unwrap().contains("not the catalog's /d/m0"));
        let unknown = Member { system_identifier: "", datadir: "/d/m0" };
        assert!(unknown.refusal("71", "/d/m0").unwrap().contains("no system identifier is recorded"));
    }
}
