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
    let flush = stream.flush_lsn.as_deref().and_then(parse_lsn);
    let replay = stream.replay_lsn.as_deref().and_then(parse_lsn);
    let lag = match (flush, replay) {
        (Some(f), Some(r)) => i64::try_from(f.saturating_sub(r)).unwrap_or(i64::MAX),
        _ => return why_not("the mirror's replay position is unknown".into()),
    };
    (lag > limit).then(|| {
        format!(
            "content {}: {lag} {REPLAY_LAG_REFUSAL} on mirror dbid {} (replay_lag_limit is {limit}); \
             let the mirror catch up on replay, then rebalance again, or pass a larger replay_lag_limit (NULL disables the check)",
            p.content, m.dbid
        )
    })
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
    fn reads_the_checkpoint_from_pg_controldata() {
        let out = "pg_control version number:            1300\nLatest checkpoint location:           0/3000060\n\
                   Latest checkpoint's REDO location:    0/3000028\n";
        assert_eq!(controldata_checkpoint(out), Some(0x3000060));
    }
}
