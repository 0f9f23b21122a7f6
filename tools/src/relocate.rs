//! `gprecoverseg -p HOST[,HOST]`: the failed segments moved onto spare
//! hosts, written as a recovery configuration (the `-i` format) for
//! `gp_recover_from_config`, which copies each in full.
//!
//! The rule, after Greenplum's: the failed segments' hosts, in sorted
//! order, are paired with the new hosts in the order given (every failed
//! segment of the first failed host goes to the first new host, and so on);
//! each keeps its data directory path, and its port unless a segment on the
//! new host (by host name or address, in the catalog or placed earlier by
//! this run) has it, in which case the next free port above it. A data
//! directory already used on the new host is refused, as Greenplum refuses
//! two segments with one directory on a host.

use std::collections::BTreeSet;

use gp_recovery_core::segment::{Segment, Status};

use crate::ToolError;

/// The hosts of `-p`, in order, each once.
pub fn parse_hosts(arg: &str) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    for h in arg.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        if !hosts.iter().any(|x| x == h) {
            hosts.push(h.to_string());
        }
    }
    hosts
}

/// The configuration text, and the new hosts no failed segment needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relocation {
    pub config: String,
    pub unused_hosts: Vec<String>,
}

/// Where each failed segment goes; see the module's rule.
pub fn relocation(catalog: &[Segment], new_hosts: &[String]) -> Result<Relocation, ToolError> {
    let mut failed: Vec<&Segment> = catalog.iter().filter(|s| s.is_segment() && s.status == Status::Down).collect();
    failed.sort_by(|a, b| (&a.hostname, a.content, a.dbid).cmp(&(&b.hostname, b.content, b.dbid)));
    let failed_hosts: BTreeSet<&str> = failed.iter().map(|s| s.hostname.as_str()).collect();
    if failed_hosts.len() > new_hosts.len() {
        return Err(ToolError::Refused("Not enough new recovery hosts given for recovery.".into()));
    }
    let host_for = |old: &str| failed_hosts.iter().position(|h| *h == old).map(|i| new_hosts[i].as_str());
    // (host, dbid, port, datadir) of every segment on a host, as placed so far.
    let mut placed: Vec<(String, i16, i32, String)> = Vec::new();
    let on = |placed: &[(String, i16, i32, String)], host: &str| -> Vec<(i16, i32, String)> {
        catalog
            .iter()
            .filter(|s| s.hostname == host || s.address == host)
            .map(|s| (s.dbid, s.port, s.datadir.clone()))
            .chain(placed.iter().filter(|p| p.0 == host).map(|p| (p.1, p.2, p.3.clone())))
            .collect()
    };
    let mut lines =
        vec![format!("# gprecoverseg -p {}: every failed segment copied in full onto a new host", new_hosts.join(","))];
    for s in &failed {
        if s.datadir.chars().any(char::is_whitespace) {
            return Err(ToolError::Refused(format!(
                "the data directory '{}' of dbid {} holds white space, which a recovery configuration cannot carry; \
                 relocate it with gp_recover_segment()",
                s.datadir, s.dbid
            )));
        }
        let Some(host) = host_for(&s.hostname) else { continue };
        let there = on(&placed, host);
        let same_dir = there.iter().find(|(_, _, d)| d.trim_end_matches('/') == s.datadir.trim_end_matches('/'));
        match same_dir {
            Some((other, _, _)) if *other == s.dbid => {
                return Err(ToolError::Refused(format!(
                    "dbid {} is on host {host} already, in '{}': recover it in place, without -p",
                    s.dbid, s.datadir
                )))
            }
            Some((other, _, _)) => {
                return Err(ToolError::Refused(format!(
                    "Segment dbid's {other} and {} on host {host} cannot have the same data directory '{}'.",
                    s.dbid, s.datadir
                )))
            }
            None => {}
        }
        let mut port = s.port;
        while there.iter().any(|(_, p, _)| *p == port) {
            port += 1;
        }
        if port > i32::from(u16::MAX) {
            return Err(ToolError::Refused(format!("no free port at or above {} on host {host}", s.port)));
        }
        lines.push(format!("{}|{}|{}|{} {host}|{host}|{port}|{}", s.hostname, s.address, s.port, s.datadir, s.datadir));
        placed.push((host.to_string(), s.dbid, port, s.datadir.clone()));
    }
    Ok(Relocation { config: lines.join("\n") + "\n", unused_hosts: new_hosts[failed_hosts.len()..].to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gp_recovery_core::recovery::parse_config;
    use gp_recovery_core::segment::{Mode, Role};

    fn seg(dbid: i16, content: i16, host: &str, port: i32, dir: &str, status: Status) -> Segment {
        Segment {
            dbid,
            content,
            role: Role::Mirror,
            preferred_role: Role::Mirror,
            mode: Mode::NotInSync,
            status,
            port,
            hostname: host.into(),
            address: format!("{host}-1"),
            datadir: dir.into(),
        }
    }

    fn hosts(h: &[&str]) -> Vec<String> {
        h.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn hosts_are_split_trimmed_and_unique() {
        assert_eq!(parse_hosts("sdw4, sdw5,,sdw4"), hosts(&["sdw4", "sdw5"]));
    }

    #[test]
    fn failed_hosts_pair_with_new_hosts_in_sorted_order() {
        let catalog = vec![
            seg(1, -1, "cdw", 5432, "/data/coordinator", Status::Up),
            seg(5, 1, "sdw2", 7003, "/data/m1", Status::Down),
            seg(4, 0, "sdw1", 7002, "/data/m0", Status::Down),
            seg(6, 2, "sdw1", 7004, "/data/m2", Status::Down),
        ];
        let r = relocation(&catalog, &hosts(&["sdw8", "sdw9", "sdw10"])).unwrap();
        let lines: Vec<&str> = r.config.lines().skip(1).collect();
        assert_eq!(
            lines,
            vec![
                "sdw1|sdw1-1|7002|/data/m0 sdw8|sdw8|7002|/data/m0",
                "sdw1|sdw1-1|7004|/data/m2 sdw8|sdw8|7004|/data/m2",
                "sdw2|sdw2-1|7003|/data/m1 sdw9|sdw9|7003|/data/m1",
            ]
        );
        assert_eq!(r.unused_hosts, hosts(&["sdw10"]));
        let parsed = parse_config(&r.config).unwrap();
        assert_eq!(parsed.len(), 3, "the extension reads what -p writes");
        assert!(parsed.iter().all(|l| l.new.is_some() && l.mode.is_none()), "relocations, always full");
    }

    #[test]
    fn a_port_taken_on_the_new_host_moves_up() {
        let catalog = vec![
            seg(3, 0, "sdw1", 7002, "/data/m0", Status::Down),
            seg(7, 1, "sdw1", 7003, "/data/m1", Status::Down),
            seg(9, 5, "sdw4", 7002, "/data/p5", Status::Up),
        ];
        let r = relocation(&catalog, &hosts(&["sdw4"])).unwrap();
        let lines: Vec<&str> = r.config.lines().skip(1).collect();
        // 7002 is dbid 9's, so dbid 3 takes 7003; that is then dbid 7's port too, so it takes 7004.
        assert_eq!(
            lines,
            vec![
                "sdw1|sdw1-1|7002|/data/m0 sdw4|sdw4|7003|/data/m0",
                "sdw1|sdw1-1|7003|/data/m1 sdw4|sdw4|7004|/data/m1"
            ]
        );
    }

    #[test]
    fn refusals() {
        let catalog =
            vec![seg(3, 0, "sdw1", 7002, "/data/m0", Status::Down), seg(5, 1, "sdw2", 7003, "/data/m1", Status::Down)];
        let e = relocation(&catalog, &hosts(&["sdw9"])).unwrap_err();
        assert_eq!(e.to_string(), "Not enough new recovery hosts given for recovery.");

        let mut busy = catalog.clone();
        busy.push(seg(8, 4, "sdw9", 7100, "/data/m0/", Status::Up));
        let e = relocation(&busy, &hosts(&["sdw9", "sdw10"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Segment dbid's 8 and 3 on host sdw9 cannot have the same data directory '/data/m0'."
        );

        let e = relocation(&catalog, &hosts(&["sdw1-1", "sdw10"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "dbid 3 is on host sdw1-1 already, in '/data/m0': recover it in place, without -p",
            "a host named by its address is the same host"
        );

        let spaced = vec![seg(3, 0, "sdw1", 7002, "/data/my m0", Status::Down)];
        assert!(relocation(&spaced, &hosts(&["sdw9"])).unwrap_err().to_string().contains("white space"));
    }

    #[test]
    fn nothing_down_gives_an_empty_configuration() {
        let catalog = vec![seg(3, 0, "sdw1", 7002, "/data/m0", Status::Up)];
        let r = relocation(&catalog, &hosts(&["sdw9"])).unwrap();
        assert!(parse_config(&r.config).unwrap().is_empty());
        assert_eq!(r.unused_hosts, hosts(&["sdw9"]));
    }
}
