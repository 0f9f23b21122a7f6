//! Which instance is the coordinator: gp_activate_standby's refusals, the
//! catalog change an activated standby records, and the coordinator epoch
//! that keeps an old coordinator from acting again.
//!
//! The epoch only grows. Every instance keeps the highest it has seen as a
//! setting of the database `postgres` (`ALTER DATABASE postgres SET
//! gp_recovery.coordinator_epoch = N`, [`EPOCH_SQL`] reads it back); an
//! activated standby raises it on itself and on every segment. A
//! coordinator whose epoch is lower than any instance's it probes was
//! replaced and takes no decision.

use crate::error::CoreError;
use crate::events::{History, SegmentEvent};
use crate::probe::ProbeResult;
use crate::segment::{Mode, Role, Segment, Status};

/// The setting that holds an instance's epoch.
pub const EPOCH_SETTING: &str = "gp_recovery.coordinator_epoch";

/// The epoch an instance keeps, as a number (0 when none was ever set).
pub const EPOCH_SQL: &str = "SELECT coalesce(max(split_part(c, '=', 2)::bigint), 0) \
     FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c \
     WHERE s.setrole = 0 AND s.setdatabase = (SELECT oid FROM pg_catalog.pg_database WHERE datname = 'postgres') \
       AND c ~ '^gp_recovery\\.coordinator_epoch=[0-9]{1,18}$'";

/// The statement that raises an instance's epoch to `epoch`.
pub fn raise_epoch_sql(epoch: i64) -> String {
    format!("ALTER DATABASE postgres SET {EPOCH_SETTING} = {epoch}")
}

/// This instance as the catalog must name it: its port and data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Own {
    pub port: i32,
    pub datadir: String,
}

impl Own {
    /// The catalog row is this instance.
    pub fn is(&self, s: &Segment) -> bool {
        s.port == self.port && s.datadir == self.datadir
    }
}

/// What gp_activate_standby may go on with, and the WARNING to give when
/// it was forced past a coordinator that still answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    pub standby: Segment,
    pub warning: Option<String>,
}

/// The checks of gp_activate_standby(), run on the standby before it
/// promotes: it must be in recovery and be the catalog's standby, and the
/// old coordinator must not answer as this cluster's writable coordinator
/// (its database system, running in its catalog directory) unless `force`.
pub fn check_activation(
    catalog: &[Segment],
    own: &Own,
    in_recovery: bool,
    system_identifier: &str,
    old: Option<&ProbeResult>,
    force: bool,
) -> Result<Activation, CoreError> {
    if !in_recovery {
        return Err(CoreError::WrongState(
            "this instance is not in recovery: it is a coordinator already, not a standby to activate".into(),
        ));
    }
    let standby = catalog.iter().find(|s| s.is_standby() && own.is(s)).cloned().ok_or_else(|| {
        CoreError::WrongState(format!(
            "this instance (port {}, data directory {}) is not the standby coordinator in gp_segment_configuration",
            own.port, own.datadir
        ))
    })?;
    let coordinator = catalog.iter().find(|s| s.is_coordinator());
    let live = coordinator.zip(old).and_then(|(c, probe)| {
        let p = probe.as_ref().ok()?;
        let ours = !p.in_recovery && p.system_identifier == system_identifier && p.data_directory == c.datadir;
        ours.then(|| {
            format!(
                "the coordinator dbid {} at {} still answers as this cluster's writable coordinator",
                c.dbid,
                c.location()
            )
        })
    });
    match live {
        Some(why) if !force => Err(CoreError::WrongState(format!(
            "{why}: stop it first, or call gp_activate_standby(force => true) to activate anyway (it will be fenced)"
        ))),
        Some(why) => Ok(Activation { standby, warning: Some(format!("{why}; activating anyway (forced)")) }),
        None => Ok(Activation { standby, warning: None }),
    }
}

/// The catalog change an activated standby records when its service
/// starts: when this instance is the catalog's standby, it becomes the
/// coordinator (primary, up, not in sync: it has no standby of its own) and
/// the old coordinator its down mirror. None when this instance is the
/// catalog's coordinator already (or not in the catalog at all).
pub fn activation_changes(catalog: &[Segment], own: &Own) -> Option<Vec<History>> {
    let standby = catalog.iter().find(|s| s.is_standby() && own.is(s))?;
    let mut changes = vec![History::update(
        "gpactivatestandby",
        SegmentEvent::StandbyActivated,
        Segment {
            role: Role::Primary,
            preferred_role: Role::Primary,
            status: Status::Up,
            mode: Mode::NotInSync,
            ..standby.clone()
        },
    )];
    if let Some(old) = catalog.iter().find(|s| s.is_coordinator()) {
        changes.push(History::update(
            "gpactivatestandby",
            SegmentEvent::StandbyActivated,
            Segment {
                role: Role::Mirror,
                preferred_role: Role::Mirror,
                status: Status::Down,
                mode: Mode::NotInSync,
                ..old.clone()
            },
        ));
    }
    Some(changes)
}

/// The epoch an activated standby takes: above its own and every one it saw.
pub fn next_epoch(own: i64, seen: impl IntoIterator<Item = i64>) -> i64 {
    seen.into_iter().fold(own, i64::max).saturating_add(1)
}

/// The first instance whose epoch is above `own`: this coordinator was
/// replaced and must take no decision.
pub fn superseded_by(own: i64, seen: impl IntoIterator<Item = (i16, i64)>) -> Option<(i16, i64)> {
    seen.into_iter().filter(|(_, e)| *e > own).max_by_key(|(_, e)| *e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::InstanceProbe;

    fn row(dbid: i16, role: Role, port: i32, datadir: &str) -> Segment {
        Segment {
            dbid,
            content: -1,
            role,
            preferred_role: role,
            mode: Mode::Synchronized,
            status: Status::Up,
            port,
            hostname: "cdw".into(),
            address: "cdw".into(),
            datadir: datadir.into(),
        }
    }

    fn catalog() -> Vec<Segment> {
        vec![row(1, Role::Primary, 7000, "/d/c"), row(4, Role::Mirror, 7100, "/d/s")]
    }

    const STANDBY: fn() -> Own = || Own { port: 7100, datadir: "/d/s".into() };

    fn answering(in_recovery: bool, sysid: &str, dir: &str) -> ProbeResult {
        Ok(InstanceProbe {
            in_recovery,
            system_identifier: sysid.into(),
            data_directory: dir.into(),
            ..Default::default()
        })
    }

    #[test]
    fn a_standby_activates_only_when_the_old_coordinator_no_longer_answers_as_ours_or_when_forced() {
        let dead: ProbeResult = Err("connection refused".into());
        let a = check_activation(&catalog(), &STANDBY(), true, "42", Some(&dead), false).unwrap();
        assert_eq!((a.standby.dbid, a.warning), (4, None));
        let alive = answering(false, "42", "/d/c");
        let e = check_activation(&catalog(), &STANDBY(), true, "42", Some(&alive), false).unwrap_err().to_string();
        assert!(e.contains("dbid 1 at cdw:7000 still answers") && e.contains("force => true"), "{e}");
        let a = check_activation(&catalog(), &STANDBY(), true, "42", Some(&alive), true).unwrap();
        assert!(a.warning.unwrap().contains("activating anyway"));
        // Something else at its port (another system, or a standby of it) is not the coordinator.
        for other in [answering(false, "99", "/d/c"), answering(true, "42", "/d/c"), answering(false, "42", "/x")] {
            assert_eq!(
                check_activation(&catalog(), &STANDBY(), true, "42", Some(&other), false).unwrap().warning,
                None
            );
        }
        // Not in recovery (a second activation), or not the catalog's standby.
        let e = check_activation(&catalog(), &STANDBY(), false, "42", Some(&dead), false).unwrap_err().to_string();
        assert!(e.contains("not in recovery"), "{e}");
        let elsewhere = Own { port: 7100, datadir: "/d/other".into() };
        let e = check_activation(&catalog(), &elsewhere, true, "42", Some(&dead), true).unwrap_err().to_string();
        assert!(e.contains("is not the standby coordinator"), "{e}");
    }

    #[test]
    fn an_activated_standby_becomes_the_coordinator_and_the_old_one_its_down_mirror() {
        let changes = activation_changes(&catalog(), &STANDBY()).unwrap();
        let rows: Vec<(i16, Role, Role, Status, Mode)> =
            changes.iter().map(|h| (h.row.dbid, h.row.role, h.row.preferred_role, h.row.status, h.row.mode)).collect();
        assert_eq!(
            rows,
            vec![
                (4, Role::Primary, Role::Primary, Status::Up, Mode::NotInSync),
                (1, Role::Mirror, Role::Mirror, Status::Down, Mode::NotInSync)
            ]
        );
        assert!(changes[0].text.starts_with("gpactivatestandby: update role, status, and mode for dbid 4"));
        // Recorded once: after the change this instance is the coordinator.
        let after: Vec<Segment> = changes.iter().map(|h| h.row.clone()).collect();
        assert_eq!(activation_changes(&after, &STANDBY()), None);
        assert_eq!(activation_changes(&catalog(), &Own { port: 7000, datadir: "/d/c".into() }), None);
    }

    #[test]
    fn epochs_only_grow_and_a_higher_one_anywhere_supersedes() {
        assert_eq!(next_epoch(0, []), 1);
        assert_eq!(next_epoch(2, [1, 5, 3]), 6);
        assert_eq!(superseded_by(3, [(2, 3), (3, 1)]), None);
        assert_eq!(superseded_by(3, [(2, 4), (3, 6), (5, 5)]), Some((3, 6)));
    }
}
