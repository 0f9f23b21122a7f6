//! What one connection to a segment saw. The SQL layer fills these in (one
//! short-timeout connection per segment, all at once); everything that is
//! decided from them lives in this crate.

use serde::{Deserialize, Serialize};

/// The application_name mirrors stream with, as in Greenplum. Primaries list
/// it in `synchronous_standby_names`.
pub const MIRROR_APPLICATION_NAME: &str = "gp_walreceiver";

/// The replication slot a mirror streams from, named as in Greenplum.
pub const SLOT_NAME: &str = "internal_wal_replication_slot";

/// The name of the OS user this process runs as (effective uid).
pub fn os_user_name() -> Option<String> {
    // SAFETY: getpwuid returns a pointer into static storage or NULL; the
    // name is copied out at once, before any other call could reuse it.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() {
            return None;
        }
        Some(std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned())
    }
}

/// A row of the primary's `pg_stat_replication`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replication {
    pub application_name: String,
    /// The physical slot the walsender streams from (pg_replication_slots
    /// joined on active_pid); None without one.
    pub slot_name: Option<String>,
    /// startup | catchup | streaming | backup | stopping
    pub state: String,
    /// async | potential | sync | quorum
    pub sync_state: String,
    pub sent_lsn: Option<String>,
    pub flush_lsn: Option<String>,
    pub replay_lsn: Option<String>,
    /// pg_current_wal_flush_lsn() - sent_lsn on the primary: gpstate's
    /// "WAL sync remaining bytes".
    pub wal_sync_remaining_bytes: Option<i64>,
    /// pg_current_wal_flush_lsn() - replay_lsn on the primary.
    pub bytes_behind: Option<i64>,
    /// pg_current_wal_flush_lsn() - flush_lsn on the primary: WAL the
    /// standby has yet to flush, what a synchronous commit waits for.
    pub unflushed_bytes: Option<i64>,
}

impl Replication {
    /// Streaming and acknowledged as the synchronous standby.
    pub fn is_synchronous_stream(&self) -> bool {
        self.state == "streaming" && self.sync_state == "sync"
    }

    /// The standby has WAL yet to flush.
    pub fn has_wal_to_flush(&self) -> bool {
        self.unflushed_bytes.is_some_and(|b| b > 0)
    }
}

/// `pg_stat_wal_receiver` of a standby.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalReceiver {
    pub status: String,
    pub sender_host: Option<String>,
    pub sender_port: Option<i32>,
}

/// The facts one probe of an answering instance gathered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceProbe {
    pub in_recovery: bool,
    pub data_directory: String,
    pub system_identifier: String,
    /// The primary's current setting; empty when synchronous replication is off.
    pub synchronous_standby_names: String,
    pub wal_receiver: Option<WalReceiver>,
    /// Empty on a standby: only a primary has walsenders to report.
    pub replication: Vec<Replication>,
    /// Tablespaces outside the data directory.
    #[serde(default)]
    pub outside_tablespaces: Vec<Tablespace>,
    /// Its pg_hba.conf.
    #[serde(default)]
    pub hba_file: String,
    /// A standby whose replay is paused (pg_get_wal_replay_pause_state()
    /// is not 'not paused'): it receives WAL but applies none.
    #[serde(default)]
    pub replay_paused: bool,
    /// A standby's recovery_min_apply_delay, in milliseconds.
    #[serde(default)]
    pub min_apply_delay_ms: i64,
    /// The highest coordinator epoch it has seen (crate::coordinator).
    #[serde(default)]
    pub coordinator_epoch: i64,
}

/// A tablespace with an absolute location (not in place).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    pub name: String,
    pub location: String,
}

impl std::fmt::Display for Tablespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}", self.name, self.location)
    }
}

impl InstanceProbe {
    /// The walsender that serves this primary's mirror: named
    /// `gp_walreceiver` and streaming from the content's slot. Nothing else
    /// counts: a pg_receivewal, a logical consumer or a base backup attached
    /// to the primary taken for the mirror would keep a dead mirror 'up'
    /// and commits waiting for it forever.
    pub fn mirror_replication(&self) -> Option<&Replication> {
        self.replication.iter().find(|r| {
            r.application_name == MIRROR_APPLICATION_NAME
                && r.slot_name.as_deref() == Some(SLOT_NAME)
                && r.state != "backup"
        })
    }
}

/// The result of probing one segment: what it reported, or why it did not answer.
pub type ProbeResult = Result<InstanceProbe, String>;

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(app: &str, slot: Option<&str>, state: &str) -> Replication {
        Replication {
            application_name: app.into(),
            slot_name: slot.map(Into::into),
            state: state.into(),
            sync_state: "async".into(),
            ..Default::default()
        }
    }

    #[test]
    fn knows_who_runs_it() {
        assert!(os_user_name().is_some_and(|n| !n.is_empty()));
    }

    #[test]
    fn only_the_mirror_on_its_slot_is_the_mirror() {
        let mirror = rep(MIRROR_APPLICATION_NAME, Some(SLOT_NAME), "catchup");
        let others = [
            rep("pg_basebackup", None, "backup"),
            rep("walreceiver", None, "streaming"),
            rep("pg_receivewal", Some("archive"), "streaming"),
            rep("sub", Some("sub"), "streaming"),
            // The right name is not enough: a pg_receivewal can claim it too.
            rep(MIRROR_APPLICATION_NAME, None, "streaming"),
            rep(MIRROR_APPLICATION_NAME, Some("other_slot"), "streaming"),
        ];
        let p = InstanceProbe { replication: others.to_vec(), ..Default::default() };
        assert_eq!(p.mirror_replication(), None);

        let mut with_mirror = others.to_vec();
        with_mirror.insert(3, mirror.clone());
        let p = InstanceProbe { replication: with_mirror, ..Default::default() };
        assert_eq!(p.mirror_replication(), Some(&mirror));
    }
}
