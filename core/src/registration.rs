//! `gp_add_segment`: the rules for registering a running instance in the
//! catalog. Planning checks the request against the catalog; verification
//! checks the claim against what a probe of the instance (and, for a mirror,
//! of its primary) found.

use crate::error::CoreError;
use crate::identity::{path_overlap, shown, validate_location, HostNames, Overlap, MAX_HOST_BYTES};
use crate::probe::InstanceProbe;
use crate::segment::{Mode, Role, Segment, Status, COORDINATOR_CONTENT, COORDINATOR_DBID};

/// The arguments of `gp_add_segment`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRequest {
    pub content: i32,
    pub role: char,
    pub hostname: String,
    pub port: i32,
    pub datadir: String,
    pub address: Option<String>,
}

/// Checks a port number.
pub fn validate_port(port: i32) -> Result<(), CoreError> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(CoreError::InvalidValue { what: "port", value: port.to_string(), expected: "must be between 1 and 65535" })
    }
}

/// Checks a host name or address: not empty, within a DNS name's 253
/// bytes, no white space or control characters, and no leading `-` (ssh
/// would read it as an option).
pub fn validate_host(what: &'static str, host: &str) -> Result<(), CoreError> {
    if host.len() > MAX_HOST_BYTES {
        return Err(CoreError::InvalidValue {
            what,
            value: shown(host),
            expected: "must be at most 253 bytes long (a DNS name's limit)",
        });
    }
    if host.is_empty() || host.starts_with('-') || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(CoreError::InvalidValue {
            what,
            value: host.to_string(),
            expected:
                "must be a host name or address, not starting with '-', without white space or control characters",
        });
    }
    Ok(())
}

/// Finds a segment other than `except_dbid` that already uses the host and
/// port, or whose data directory on that host is, lies inside or holds
/// `datadir`; the error names it. Hosts are compared by `hosts` (a name in
/// another case, an address for a name). Used for registrations and
/// relocation targets.
pub fn check_location_free(
    catalog: &[Segment],
    except_dbid: Option<i16>,
    hostname: &str,
    address: &str,
    port: i32,
    datadir: &str,
    hosts: &dyn HostNames,
) -> Result<(), CoreError> {
    let same_host = |s: &Segment| {
        [s.hostname.as_str(), s.address.as_str()]
            .iter()
            .any(|theirs| [hostname, address].iter().any(|ours| hosts.same_host(theirs, ours)))
    };
    // Whatever name the host is given: the coordinator's own directory must
    // never be copied over, moved aside or removed.
    if let Some(c) = catalog.iter().find(|s| s.is_coordinator() && path_overlap(datadir, &s.datadir).is_some()) {
        return Err(CoreError::InvalidValue {
            what: "data directory",
            value: shown(datadir),
            expected: if path_overlap(datadir, &c.datadir) == Some(Overlap::Same) {
                "it is the coordinator's data directory"
            } else {
                "it is inside, or holds, the coordinator's data directory"
            },
        });
    }
    for s in catalog.iter().filter(|s| Some(s.dbid) != except_dbid && same_host(s)) {
        if s.port == port {
            return Err(CoreError::Duplicate(format!(
                "port {port} on host {hostname} is already used by dbid {} (content {}) at {}",
                s.dbid,
                s.content,
                s.location()
            )));
        }
        match path_overlap(datadir, &s.datadir) {
            Some(Overlap::Same) => {
                return Err(CoreError::Duplicate(format!(
                    "data directory {datadir} on host {hostname} is already used by dbid {} (content {})",
                    s.dbid, s.content
                )))
            }
            Some(o) => {
                return Err(CoreError::InvalidValue {
                    what: "data directory",
                    value: shown(datadir),
                    expected: if o == Overlap::Inside {
                        "it lies inside the data directory of another segment on that host"
                    } else {
                        "it holds the data directory of another segment on that host"
                    },
                })
            }
            None => {}
        }
    }
    Ok(())
}

/// Checks a registration request against the catalog and returns the row to
/// insert (mode still 'n': [`verify_claim`] decides whether the pair is in sync).
pub fn plan(catalog: &[Segment], req: &SegmentRequest, hosts: &dyn HostNames) -> Result<Segment, CoreError> {
    if req.content == i32::from(COORDINATOR_CONTENT) && req.role == Role::Mirror.letter() {
        return Err(CoreError::InvalidValue {
            what: "role",
            value: req.role.to_string(),
            expected: "the coordinator (content -1) is registered as 'p'; its standby is built with gp_init_standby()",
        });
    }
    new_row(catalog, req, hosts)
}

/// The row `gp_init_standby` registers for the coordinator's standby: a
/// down mirror of content -1 at a location no other instance uses, which
/// a full recovery job then builds and marks up.
pub fn plan_standby(
    catalog: &[Segment],
    hostname: &str,
    port: i32,
    datadir: &str,
    hosts: &dyn HostNames,
) -> Result<Segment, CoreError> {
    if let Some(s) = catalog.iter().find(|s| s.is_standby()) {
        return Err(CoreError::Duplicate(format!(
            "the coordinator already has a standby: dbid {} at {} {}; remove it first with gp_remove_standby()",
            s.dbid,
            s.location(),
            s.datadir
        )));
    }
    if !catalog.iter().any(Segment::is_coordinator) {
        return Err(CoreError::WrongState(
            "the coordinator is not registered in gp_segment_configuration; register it with gp_add_segment first"
                .into(),
        ));
    }
    let req = SegmentRequest {
        content: COORDINATOR_CONTENT.into(),
        role: Role::Mirror.letter(),
        hostname: hostname.to_string(),
        port,
        datadir: datadir.to_string(),
        address: None,
    };
    Ok(Segment { status: Status::Down, ..new_row(catalog, &req, hosts)? })
}

/// The checks every registration shares, and the row they allow.
fn new_row(catalog: &[Segment], req: &SegmentRequest, hosts: &dyn HostNames) -> Result<Segment, CoreError> {
    let role = Role::from_letter(req.role)?;
    let content = i16::try_from(req.content).ok().filter(|c| *c >= COORDINATOR_CONTENT).ok_or_else(|| {
        CoreError::InvalidValue {
            what: "content",
            value: req.content.to_string(),
            expected: "must be -1 (the coordinator) or a segment content id from 0 to 32767",
        }
    })?;
    validate_host("host name", &req.hostname)?;
    let address = req.address.clone().unwrap_or_else(|| req.hostname.clone());
    validate_host("address", &address)?;
    validate_port(req.port)?;
    validate_location(&req.datadir)?;

    if let Some(same) = catalog.iter().find(|s| s.content == content && s.role == role) {
        return Err(CoreError::Duplicate(format!(
            "content {content} already has a {}: dbid {} at {}",
            role.label().to_lowercase(),
            same.dbid,
            same.location()
        )));
    }
    if role == Role::Mirror && !catalog.iter().any(|s| s.content == content && s.role == Role::Primary) {
        return Err(CoreError::WrongState(format!(
            "content {content} has no primary; register its primary before its mirror"
        )));
    }
    check_location_free(catalog, None, &req.hostname, &address, req.port, &req.datadir, hosts)?;

    let dbid = if content == COORDINATOR_CONTENT && role == Role::Primary {
        COORDINATOR_DBID
    } else {
        let max = catalog.iter().map(|s| s.dbid).max().unwrap_or(COORDINATOR_DBID);
        max.max(COORDINATOR_DBID)
            .checked_add(1)
            .ok_or_else(|| CoreError::WrongState("no dbid left: the catalog already uses dbid 32767".into()))?
    };
    Ok(Segment {
        dbid,
        content,
        role,
        preferred_role: role,
        mode: Mode::NotInSync,
        status: Status::Up,
        port: req.port,
        hostname: req.hostname.clone(),
        address,
        datadir: req.datadir.clone(),
    })
}

/// Checks what the instance's database system identifier says it is: the
/// coordinator's row must be this very coordinator, and a segment must not
/// be a copy of the coordinator (no step may ever take one for the other).
pub fn verify_system_identifier(row: &Segment, system_identifier: &str, coordinators: &str) -> Result<(), CoreError> {
    let here = row.location();
    if row.is_coordinator() && system_identifier != coordinators {
        return Err(CoreError::WrongState(format!(
            "{here} has database system identifier {system_identifier}, but this coordinator has {coordinators}: \
             register the coordinator from itself"
        )));
    }
    if row.is_segment() && system_identifier == coordinators {
        return Err(CoreError::WrongState(format!(
            "{here} has the coordinator's database system identifier {system_identifier}: it is a copy of the \
             coordinator, and a segment must be a database system of its own"
        )));
    }
    Ok(())
}

/// The content's registered primary, which a mirror must stream from.
pub fn primary_of(catalog: &[Segment], content: i16) -> Option<&Segment> {
    catalog.iter().find(|s| s.content == content && s.role == Role::Primary)
}

/// Checks that the instance is what the request claims. `primary` is the
/// content's primary with its probe result, needed when registering a mirror.
/// Returns the mode the pair gets: 's' when the mirror already streams as the
/// primary's synchronous standby.
pub fn verify_claim(
    row: &Segment,
    probe: &Result<InstanceProbe, String>,
    primary: Option<(&Segment, &Result<InstanceProbe, String>)>,
) -> Result<Mode, CoreError> {
    let here = row.location();
    let probe = probe.as_ref().map_err(|reason| CoreError::Unreachable {
        host: row.hostname.clone(),
        port: row.port,
        reason: reason.clone(),
    })?;
    if probe.data_directory.trim_end_matches('/') != row.datadir.trim_end_matches('/') {
        return Err(CoreError::WrongState(format!(
            "{here} runs with data directory {}, not {}",
            probe.data_directory, row.datadir
        )));
    }
    match row.role {
        Role::Primary if probe.in_recovery => Err(CoreError::WrongState(format!(
            "{here} is in recovery (a standby), so it cannot be registered as a primary"
        ))),
        Role::Primary => Ok(Mode::NotInSync),
        Role::Mirror => {
            let (primary, primary_probe) = primary.ok_or_else(|| {
                CoreError::WrongState(format!(
                    "content {} has no primary; register its primary before its mirror",
                    row.content
                ))
            })?;
            let there = primary.location();
            if !probe.in_recovery {
                return Err(CoreError::WrongState(format!(
                    "{here} is not in recovery, so it cannot be the mirror of content {}",
                    row.content
                )));
            }
            let primary_probe = primary_probe.as_ref().map_err(|reason| {
                CoreError::WrongState(format!(
                    "cannot check the mirror: content {}'s primary {there} does not answer: {reason}",
                    row.content
                ))
            })?;
            if primary_probe.system_identifier != probe.system_identifier {
                return Err(CoreError::WrongState(format!(
                    "{here} has database system identifier {} but content {}'s primary {there} has {}: it is not a copy of that primary",
                    probe.system_identifier, row.content, primary_probe.system_identifier
                )));
            }
            let receiver = probe.wal_receiver.as_ref().filter(|w| w.status == "streaming");
            let Some(receiver) = receiver else {
                return Err(CoreError::WrongState(format!(
                    "{here} is in recovery but not streaming (WAL receiver: {})",
                    probe.wal_receiver.as_ref().map_or("none", |w| w.status.as_str())
                )));
            };
            if receiver.sender_port != Some(primary.port) {
                return Err(CoreError::WrongState(format!(
                    "{here} is streaming from {}:{}, not from content {}'s primary {there}",
                    receiver.sender_host.as_deref().unwrap_or("?"),
                    receiver.sender_port.map_or("?".to_string(), |p| p.to_string()),
                    row.content
                )));
            }
            let synced = primary_probe.mirror_replication().is_some_and(|r| r.is_synchronous_stream());
            Ok(if synced { Mode::Synchronized } else { Mode::NotInSync })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{Replication, WalReceiver};

    fn seg(dbid: i16, content: i16, role: Role, port: i32, datadir: &str) -> Segment {
        Segment {
            dbid,
            content,
            role,
            preferred_role: role,
            mode: Mode::Synchronized,
            status: Status::Up,
            port,
            hostname: "localhost".into(),
            address: "127.0.0.1".into(),
            datadir: datadir.into(),
        }
    }

    const HOSTS: crate::identity::ByName<'static> = crate::identity::ByName { own_name: "cdw", local_hosts: "" };

    fn catalog() -> Vec<Segment> {
        vec![seg(1, -1, Role::Primary, 7000, "/d/coordinator"), seg(2, 0, Role::Primary, 7001, "/d/primary/gpseg0")]
    }

    #[test]
    fn a_standby_is_a_down_mirror_of_content_minus_one_at_a_free_location() {
        let row = plan_standby(&catalog(), "smdw", 7100, "/d/standby", &HOSTS).unwrap();
        assert_eq!((row.dbid, row.content, row.role, row.status), (3, -1, Role::Mirror, Status::Down));
        assert!(row.is_standby() && !row.is_coordinator() && !row.is_segment());
        // The coordinator's own directory and port, under any spelling of its host.
        let e = plan_standby(&catalog(), "CDW", 7100, "/d/coordinator", &HOSTS).unwrap_err().to_string();
        assert!(e.contains("coordinator's data directory"), "{e}");
        let e = plan_standby(&catalog(), "localhost", 7001, "/d/s", &HOSTS).unwrap_err().to_string();
        assert!(e.contains("already used by dbid 2"), "{e}");
        let mut with = catalog();
        with.push(row);
        let e = plan_standby(&with, "other", 7200, "/d/s2", &HOSTS).unwrap_err().to_string();
        assert!(e.contains("already has a standby: dbid 3") && e.contains("gp_remove_standby"), "{e}");
        let e = plan_standby(&catalog()[1..], "smdw", 7100, "/d/standby", &HOSTS).unwrap_err().to_string();
        assert!(e.contains("coordinator is not registered"), "{e}");
        // gp_add_segment never registers one.
        let req = SegmentRequest {
            content: -1,
            role: 'm',
            hostname: "smdw".into(),
            port: 7100,
            datadir: "/d/standby".into(),
            address: None,
        };
        assert!(plan(&catalog(), &req, &HOSTS).unwrap_err().to_string().contains("gp_init_standby"));
    }

    #[test]
    fn hosts_that_a_shell_or_ssh_would_misread_are_refused() {
        for bad in ["", "-oProxyCommand=touch${IFS}x", "a b", "a\tb", "a\u{7}b", "x\n"] {
            assert!(validate_host("host name", bad).is_err(), "{bad:?}");
        }
        let e = validate_host("host name", &"h".repeat(254)).unwrap_err().to_string();
        assert!(e.contains("at most 253 bytes") && e.len() < 300, "{e}");
        assert!(validate_host("host name", &"h".repeat(253)).is_ok());
        for good in ["sdw1", "10.0.0.5", "::1", "host-1.example.com"] {
            assert!(validate_host("host name", good).is_ok(), "{good}");
        }
    }

    #[test]
    fn the_coordinators_directory_is_refused_under_any_host_name() {
        let c = catalog();
        for dir in ["/d/coordinator", "/d/coordinator/", "/d/coordinator/base/x", "/d"] {
            let e = check_location_free(&c, Some(2), "otherhost", "10.1.1.1", 9000, dir, &HOSTS).unwrap_err();
            assert!(e.to_string().contains("coordinator's data directory"), "{dir}: {e}");
        }
        assert!(check_location_free(&c, Some(2), "otherhost", "10.1.1.1", 9000, "/d/coordinator2", &HOSTS).is_ok());
    }

    #[test]
    fn another_segments_directory_or_port_is_refused_under_any_name_of_its_host() {
        let c = catalog();
        let free = |host: &str, port, dir| check_location_free(&c, None, host, host, port, dir, &HOSTS);
        for host in ["localhost", "LOCALHOST", "127.0.0.1", "CDW"] {
            assert!(free(host, 7001, "/x").unwrap_err().to_string().contains("already used by dbid 2"), "{host}");
            let e = free(host, 7009, "/d/primary/gpseg0/nested").unwrap_err().to_string();
            assert!(e.contains("lies inside the data directory of another segment"), "{host}: {e}");
            let e = free(host, 7009, "/d/primary").unwrap_err().to_string();
            assert!(e.contains("holds the data directory of another segment"), "{host}: {e}");
        }
        assert!(free("sdw1", 7001, "/d/primary/gpseg0").is_ok(), "another host");
    }

    fn req(content: i32, role: char, port: i32, datadir: &str) -> SegmentRequest {
        SegmentRequest {
            content,
            role,
            hostname: "localhost".into(),
            port,
            datadir: datadir.into(),
            address: Some("127.0.0.1".into()),
        }
    }

    #[test]
    fn plans_next_dbid_and_coordinator_dbid_1() {
        let row = plan(&catalog(), &req(0, 'm', 7002, "/d/mirror/gpseg0"), &HOSTS).unwrap();
        assert_eq!((row.dbid, row.role, row.mode), (3, Role::Mirror, Mode::NotInSync));
        let row = plan(&[], &req(-1, 'p', 7000, "/c"), &HOSTS).unwrap();
        assert_eq!(row.dbid, 1);
        let row = plan(&[], &req(0, 'p', 7001, "/p"), &HOSTS).unwrap();
        assert_eq!(row.dbid, 2, "segments never take the coordinator's dbid");
    }

    #[test]
    fn rejects_bad_input_with_named_problem() {
        let c = catalog();
        let msg = |r| plan(&c, &r, &HOSTS).unwrap_err().to_string();
        assert!(msg(req(0, 'x', 7009, "/x")).contains("invalid role \"x\""));
        assert!(msg(req(-2, 'p', 7009, "/x")).contains("invalid content \"-2\""));
        assert!(msg(req(0, 'm', 0, "/x")).contains("invalid port \"0\""));
        assert!(msg(req(0, 'm', 7009, "rel/dir")).contains("must be an absolute path"));
        assert!(msg(req(0, 'm', 7009, "/")).contains("must not be the root directory"));
        assert!(msg(req(0, 'm', 7009, "/a/$(reboot)")).contains("must not contain"));
        assert!(msg(req(0, 'm', 7009, "/a/\"q")).contains("must not contain"));
        assert_eq!(
            msg(req(0, 'm', 7001, "/x")),
            "port 7001 on host localhost is already used by dbid 2 (content 0) at localhost:7001"
        );
        assert_eq!(
            msg(req(1, 'p', 7009, "/d/primary/gpseg0")),
            "data directory /d/primary/gpseg0 on host localhost is already used by dbid 2 (content 0)"
        );
        assert!(msg(req(1, 'p', 7009, "/d/primary/gpseg0/")).contains("must not end in /"));
        assert_eq!(msg(req(0, 'p', 7009, "/x")), "content 0 already has a primary: dbid 2 at localhost:7001");
        assert!(msg(req(5, 'm', 7009, "/x")).contains("content 5 has no primary"));
        assert!(msg(req(-1, 'm', 7009, "/x")).contains("built with gp_init_standby()"));
        let e = plan(&c, &req(0, 'p', 7009, "/x"), &HOSTS).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Duplicate);
    }

    fn probe(in_recovery: bool, datadir: &str, sysid: &str) -> Result<InstanceProbe, String> {
        Ok(InstanceProbe {
            in_recovery,
            data_directory: datadir.into(),
            system_identifier: sysid.into(),
            ..Default::default()
        })
    }

    #[test]
    fn verifies_primary_claims() {
        let row = seg(3, 1, Role::Primary, 7003, "/p1");
        assert_eq!(verify_claim(&row, &probe(false, "/p1", "1"), None).unwrap(), Mode::NotInSync);
        let e = verify_claim(&row, &probe(true, "/p1", "1"), None).unwrap_err();
        assert!(e.to_string().contains("is in recovery (a standby)"));
        let e = verify_claim(&row, &probe(false, "/other", "1"), None).unwrap_err();
        assert_eq!(e.to_string(), "localhost:7003 runs with data directory /other, not /p1");
        let e = verify_claim(&row, &Err("connection refused".into()), None).unwrap_err();
        assert_eq!(e.to_string(), "segment localhost:7003 does not answer: connection refused");
        assert_eq!(e.kind(), crate::ErrorKind::Unreachable);
    }

    #[test]
    fn the_coordinator_and_its_segments_are_told_apart_by_system_identifier() {
        let c = seg(1, -1, Role::Primary, 7000, "/c");
        assert!(verify_system_identifier(&c, "10", "10").is_ok());
        assert!(verify_system_identifier(&c, "11", "10").unwrap_err().to_string().contains("register the coordinator"));
        let p = seg(2, 0, Role::Primary, 7001, "/p");
        assert!(verify_system_identifier(&p, "11", "10").is_ok());
        assert!(verify_system_identifier(&p, "10", "10")
            .unwrap_err()
            .to_string()
            .contains("a copy of the coordinator"));
    }

    #[test]
    fn verifies_mirror_claims() {
        let primary = seg(2, 0, Role::Primary, 7001, "/p0");
        let row = seg(3, 0, Role::Mirror, 7002, "/m0");
        let streaming = |port| WalReceiver {
            status: "streaming".into(),
            sender_host: Some("127.0.0.1".into()),
            sender_port: Some(port),
        };
        let mut mirror = probe(true, "/m0", "42").unwrap();
        mirror.wal_receiver = Some(streaming(7001));
        let mut prim = probe(false, "/p0", "42").unwrap();
        prim.replication = vec![Replication {
            application_name: "gp_walreceiver".into(),
            slot_name: Some(crate::probe::SLOT_NAME.into()),
            state: "streaming".into(),
            sync_state: "sync".into(),
            ..Default::default()
        }];
        let p = Ok(prim.clone());
        assert_eq!(verify_claim(&row, &Ok(mirror.clone()), Some((&primary, &p))).unwrap(), Mode::Synchronized);

        prim.replication[0].sync_state = "async".into();
        let async_p = Ok(prim);
        assert_eq!(verify_claim(&row, &Ok(mirror.clone()), Some((&primary, &async_p))).unwrap(), Mode::NotInSync);

        let err = |m: InstanceProbe| verify_claim(&row, &Ok(m), Some((&primary, &p))).unwrap_err().to_string();
        let mut m = mirror.clone();
        m.in_recovery = false;
        assert!(err(m).contains("is not in recovery, so it cannot be the mirror of content 0"));
        let mut m = mirror.clone();
        m.system_identifier = "7".into();
        assert!(err(m).contains("it is not a copy of that primary"));
        let mut m = mirror.clone();
        m.wal_receiver = None;
        assert!(err(m).contains("not streaming (WAL receiver: none)"));
        let mut m = mirror.clone();
        m.wal_receiver = Some(streaming(7005));
        assert!(err(m).contains("is streaming from 127.0.0.1:7005, not from content 0's primary localhost:7001"));
        let down: Result<InstanceProbe, String> = Err("timeout".into());
        let e = verify_claim(&row, &Ok(mirror), Some((&primary, &down))).unwrap_err();
        assert!(e.to_string().contains("primary localhost:7001 does not answer: timeout"));
    }
}
