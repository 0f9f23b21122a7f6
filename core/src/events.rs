//! What gp_recovery tells listeners of the channel `gp_recovery`: every
//! gp_configuration_history row comes with an event named after the
//! decision that wrote it (built where the row is written, src/catalog.rs),
//! and every change of a job's state, phase or cancel request with a `job`
//! event (a trigger on gp_recovery_job, sql/catalog.sql). Both are sent in
//! the transaction of the change, so a change that rolls back sends nothing.

use crate::segment::{update_history, Mode, Segment};

named_enum!(
    /// The `event` of a history row's notification.
    SegmentEvent, "event", "not an event of gp_configuration_history", {
        // The fault tolerance service.
        Failover => "failover",
        MirrorDown => "mirror_down",
        SyncOff => "sync_off",
        SyncOn => "sync_on",
        DoubleFault => "double_fault",
        DoubleFaultEnd => "double_fault_end",
        Fenced => "fenced",
        // gp_activate_standby: the standby became the coordinator.
        StandbyActivated => "standby_activated",
        // gp_add_segment, gp_init_standby and gp_remove_standby, recovery and rebalance jobs.
        SegmentAdded => "segment_added",
        SegmentRemoved => "segment_removed",
        FullRecovery => "full_recovery",
        SegmentUp => "segment_up",
        Backout => "backout",
        Rebalance => "rebalance",
        // Self-healing queued a job; a relocation changed a primary's pg_hba.conf.
        SelfHealing => "self_healing",
        // A DBA's hold on self-healing, its release, and self-healing's
        // damping of a flapping content.
        Held => "held",
        Released => "released",
        Damped => "damped",
        HostAllowed => "host_allowed",
        HostRemoved => "host_removed",
    }
);

impl SegmentEvent {
    /// A pair's mode set on its own (gp_add_segment registering a mirror).
    pub fn of_mode(mode: Mode) -> SegmentEvent {
        match mode {
            Mode::Synchronized => SegmentEvent::SyncOn,
            Mode::NotInSync => SegmentEvent::SyncOff,
        }
    }
}

/// One gp_configuration_history row: the catalog row it is about, as the
/// change leaves it, its text, and the event it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    pub row: Segment,
    pub event: SegmentEvent,
    pub text: String,
}

impl History {
    /// A change of role, status or mode, with the text Greenplum's `program` writes for it.
    pub fn update(program: &str, event: SegmentEvent, row: Segment) -> History {
        History { text: update_history(program, &row), row, event }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{Role, Status};

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut names: Vec<&str> = SegmentEvent::ALL.iter().map(|e| e.as_str()).collect();
        for &e in SegmentEvent::ALL {
            assert_eq!(e.as_str().parse::<SegmentEvent>().unwrap(), e);
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SegmentEvent::ALL.len());
        // A job's events are "job": no history row may send that name.
        assert!(!names.contains(&"job"));
    }

    #[test]
    fn an_update_carries_greenplums_text() {
        let row = Segment {
            dbid: 3,
            content: 1,
            role: Role::Mirror,
            preferred_role: Role::Mirror,
            mode: Mode::NotInSync,
            status: Status::Up,
            port: 7004,
            hostname: "h".into(),
            address: "h".into(),
            datadir: "/d".into(),
        };
        let h = History::update("gprecoverseg: segment config for resync", SegmentEvent::SegmentUp, row.clone());
        assert_eq!(
            h.text,
            "gprecoverseg: segment config for resync: update role, status, and mode for dbid 3 with contentid 1 to m, u, and n"
        );
        assert_eq!((h.row, h.event), (row, SegmentEvent::SegmentUp));
        assert_eq!(SegmentEvent::of_mode(Mode::Synchronized), SegmentEvent::SyncOn);
        assert_eq!(SegmentEvent::of_mode(Mode::NotInSync), SegmentEvent::SyncOff);
    }
}
