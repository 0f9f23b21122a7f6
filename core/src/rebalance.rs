//! gprecoverseg -r: which pairs return to their preferred roles, and the
//! checks each must pass first (Greenplum 7.1's rules).

use crate::fts::parse_lsn;
use crate::probe::ProbeResult;
use crate::segment::{Mode, Pair, Status};

/// Greenplum's default replay lag limit: 10 GB.
pub const DEFAULT_REPLAY_LAG_LIMIT: i64 = 10 * 1024 * 1024 * 1024;

/// The switchover job of a switched pair: the acting primary (the
/// original) hands over to its mirror, the preferred primary.
pub fn job(pair: &Pair) -> crate::recovery::JobSpec {
    crate::recovery::JobSpec {
        mode: crate::recovery::RecoveryMode::Rebalance,
        original: pair.primary.clone(),
        target: pair.primary.clone(),
        source: pair.mirror.clone(),
        relocate: false,
    }
}

pub const NOTHING_TO_REBALANCE: &str = "No segments are running in their non-preferred role and need to be rebalanced.";

/// The words of a refusal for replay lag, which gprecoverseg -r turns into
/// Greenplum's exit code for it.
pub const REPLAY_LAG_REFUSAL: &str = "bytes of WAL are still to be replayed";

/// Why a switched pair cannot be rebalanced now; None when it can.
/// `primary` and `mirror` are live probes of the pair's current members.
pub fn refusal(
    pair: &Pair,
    primary: &ProbeResult,
    mirror: &ProbeResult,
    replay_lag_limit: Option<i64>,
) -> Option<String> {
    let (p, m) = (pair.primary, pair.mirror);
    let why_not = |reason: String| {
        Some(format!(
            "content {}: not rebalancing primary segment dbid {} with its mirror dbid {} because {reason}",
            p.content, p.dbid, m.dbid
        ))
    };
    if p.status != Status::Up || m.status != Status::Up {
        return why_not("one is down in the catalog".into());
    }
    if p.mode != Mode::Synchronized || m.mode != Mode::Synchronized {
        return why_not("the pair is not synchronized".into());
    }
    let p_probe = match primary {
        Err(e) => return why_not(format!("dbid {} is unreachable ({e})", p.dbid)),
        Ok(probe) => probe,
    };
    if let Err(e) = mirror {
        return why_not(format!("dbid {} is unreachable ({e})", m.dbid));
    }
    let Some(stream) = p_probe.mirror_replication().filter(|r| r.is_synchronous_stream()) else {
        return why_not("the mirror is not streaming as the synchronous standby".into());
    };
    let limit = replay_lag_limit?;
    let Some(lag) = replay_lag(stream) else { return why_not("the mirror's replay position is unknown".into()) };
    (lag > limit).then(|| {
        format!(
            "content {}: {lag} {REPLAY_LAG_REFUSAL} on mirror dbid {} (replay_lag_limit is {limit}); \
             let the mirror catch up on replay, then rebalance again, or pass a larger replay_lag_limit (NULL disables the check)",
            p.content, m.dbid
        )
    })
}

/// What the mirror has flushed but not yet replayed, as its primary reports it.
fn replay_lag(stream: &crate::probe::Replication) -> Option<i64> {
    let flush = stream.flush_lsn.as_deref().and_then(parse_lsn)?;
    let replay = stream.replay_lsn.as_deref().and_then(parse_lsn)?;
    Some(i64::try_from(flush.saturating_sub(replay)).unwrap_or(i64::MAX))
}

/// Why a switchover must not stop the acting primary now; None when it
/// may. Checked while the primary still runs, by gp_rebalance(), by
/// self-healing before it queues one, and by the job itself just before
/// its stop: once the primary is stopped, writes wait until the mirror has
/// replayed everything, so a mirror that does not replay promptly would
/// make the switchover an outage. The mirror must be a standby streaming
/// as the synchronous standby, with replay not paused, no
/// recovery_min_apply_delay, and at most `max_replay_lag` bytes still to
/// replay (gp_recovery.switchover_replay_lag).
pub fn live_refusal(pair: &Pair, primary: &ProbeResult, mirror: &ProbeResult, max_replay_lag: i64) -> Option<String> {
    let (p, m) = (pair.primary, pair.mirror);
    let why_not = |reason: String| {
        Some(format!(
            "content {}: not stopping primary dbid {} to switch over to dbid {}: {reason}",
            p.content, p.dbid, m.dbid
        ))
    };
    let p_probe = match primary {
        Err(e) => return why_not(format!("dbid {} is unreachable ({e})", p.dbid)),
        Ok(probe) => probe,
    };
    let m_probe = match mirror {
        Err(e) => return why_not(format!("dbid {} is unreachable ({e})", m.dbid)),
        Ok(probe) => probe,
    };
    if !m_probe.in_recovery {
        return why_not(format!("dbid {} is not in recovery", m.dbid));
    }
    let Some(stream) = p_probe.mirror_replication().filter(|r| r.is_synchronous_stream()) else {
        return why_not(format!("dbid {} is not streaming as the synchronous standby", m.dbid));
    };
    if m_probe.replay_paused {
        return why_not(format!("replay is paused on dbid {} (resume it with pg_wal_replay_resume() there)", m.dbid));
    }
    if m_probe.min_apply_delay_ms > 0 {
        return why_not(format!(
            "dbid {} applies WAL only after recovery_min_apply_delay ({} ms)",
            m.dbid, m_probe.min_apply_delay_ms
        ));
    }
    match replay_lag(stream) {
        None => why_not(format!("dbid {}'s replay position is unknown", m.dbid)),
        Some(lag) if lag > max_replay_lag => why_not(format!(
            "dbid {} has {lag} bytes of WAL still to replay (gp_recovery.switchover_replay_lag is {max_replay_lag})",
            m.dbid
        )),
        Some(_) => None,
    }
}

/// "Latest checkpoint location" from pg_controldata's output.
pub fn controldata_checkpoint(output: &str) -> Option<u64> {
    output.lines().find_map(|l| l.strip_prefix("Latest checkpoint location:")).and_then(|v| parse_lsn(v.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{InstanceProbe, Replication};
    use crate::segment::{Role, Segment};

    fn seg(dbid: i16, role: Role, preferred: Role) -> Segment {
        Segment {
            dbid,
            content: 0,
            role,
            preferred_role: preferred,
            mode: Mode::Synchronized,
            status: Status::Up,
            port: 7000 + dbid as i32,
            hostname: "h".into(),
            address: "a".into(),
            datadir: format!("/d/{dbid}"),
        }
    }

    fn stream(flush: &str, replay: &str) -> ProbeResult {
        Ok(InstanceProbe {
            replication: vec![Replication {
                application_name: "gp_walreceiver".into(),
                slot_name: Some(crate::probe::SLOT_NAME.into()),
                state: "streaming".into(),
                sync_state: "sync".into(),
                flush_lsn: Some(flush.into()),
                replay_lsn: Some(replay.into()),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    #[test]
    fn checks_state_reachability_and_lag() {
        let (p, m) = (seg(5, Role::Primary, Role::Mirror), seg(2, Role::Mirror, Role::Primary));
        let pair = Pair { primary: &p, mirror: &m };
        let ok: ProbeResult = Ok(InstanceProbe::default());
        assert_eq!(refusal(&pair, &stream("0/2000", "0/2000"), &ok, Some(0)), None);
        assert_eq!(refusal(&pair, &stream("0/2000", "0/1000"), &ok, None), None, "NULL disables the lag check");
        let lag = refusal(&pair, &stream("0/2000", "0/1000"), &ok, Some(100)).unwrap();
        assert!(lag.starts_with("content 0: 4096 bytes of WAL are still to be replayed on mirror dbid 2"), "{lag}");
        let down = refusal(&pair, &stream("0/1", "0/1"), &Err("refused".into()), Some(0)).unwrap();
        assert!(down
            .contains("not rebalancing primary segment dbid 5 with its mirror dbid 2 because dbid 2 is unreachable"));
        let mut n = m.clone();
        n.mode = Mode::NotInSync;
        let pair = Pair { primary: &p, mirror: &n };
        assert!(refusal(&pair, &stream("0/1", "0/1"), &ok, None).unwrap().contains("not synchronized"));
    }

    #[test]
    fn a_switchover_stops_the_primary_only_for_a_mirror_that_replays() {
        let (p, m) = (seg(5, Role::Primary, Role::Mirror), seg(2, Role::Mirror, Role::Primary));
        let pair = Pair { primary: &p, mirror: &m };
        let standby = InstanceProbe { in_recovery: true, ..Default::default() };
        let ok: ProbeResult = Ok(standby.clone());
        let limit = 16 << 20;
        assert_eq!(live_refusal(&pair, &stream("0/2000", "0/2000"), &ok, limit), None);
        let refused = |primary: &ProbeResult, mirror: InstanceProbe| {
            live_refusal(&pair, primary, &Ok(mirror), limit).expect("refused")
        };
        let paused = refused(&stream("0/2000", "0/2000"), InstanceProbe { replay_paused: true, ..standby.clone() });
        assert!(
            paused.starts_with("content 0: not stopping primary dbid 5 to switch over to dbid 2: replay is paused"),
            "{paused}"
        );
        let delayed =
            refused(&stream("0/2000", "0/2000"), InstanceProbe { min_apply_delay_ms: 90_000, ..standby.clone() });
        assert!(delayed.contains("recovery_min_apply_delay (90000 ms)"), "{delayed}");
        let behind = refused(&stream("1/0", "0/0"), standby.clone());
        assert!(behind.contains("4294967296 bytes of WAL still to replay"), "{behind}");
        assert!(refused(&Ok(InstanceProbe::default()), standby.clone()).contains("not streaming as the synchronous"));
        assert!(refused(&stream("0/1", "0/1"), InstanceProbe::default()).contains("is not in recovery"));
        let gone = live_refusal(&pair, &Err("timeout".into()), &ok, limit).unwrap();
        assert!(gone.contains("dbid 5 is unreachable (timeout)"), "{gone}");
    }

    #[test]
    fn reads_the_checkpoint_from_pg_controldata() {
        let out = "pg_control version number:            1300\nLatest checkpoint location:           0/3000060\n\
                   Latest checkpoint's REDO location:    0/3000028\n";
        assert_eq!(controldata_checkpoint(out), Some(0x3000060));
    }
}
