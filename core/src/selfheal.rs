//! The self-healing policy: when the service itself queues a recovery job
//! for a down segment (gp_recovery.auto_recover) or a rebalance for a
//! switched pair (gp_recovery.auto_rebalance). pg_auto_failover rejoins a
//! failed node on its own; Greenplum leaves it to the DBA, and so does the
//! default here (off).
//!
//! As in the fault tolerance rules, the decision is one ordered table: the
//! first rule that holds gives the verdict, and its text is both the
//! documentation and the reason shown.

use std::time::Duration;

use crate::recovery::RecoveryMode;

/// gp_recovery.auto_recover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoRecover {
    Off,
    Incremental,
    Auto,
}

impl AutoRecover {
    fn mode(self) -> Option<RecoveryMode> {
        match self {
            AutoRecover::Off => None,
            AutoRecover::Incremental => Some(RecoveryMode::Incremental),
            AutoRecover::Auto => Some(RecoveryMode::Auto),
        }
    }
}

/// What the service knows of a down segment, or of a switched pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// How long it has been seen in this state (down; or switched, up and
    /// synchronized) by the running worker.
    pub seen_for: Duration,
    /// The content's acting primary is up (no double fault).
    pub source_up: bool,
    /// Some segment on the target's host is up: the host answers.
    pub host_answers: bool,
    pub has_active_job: bool,
    /// Jobs the service queued for it that failed or were canceled since
    /// its last successful job.
    pub failures: u32,
    /// Since the last of those ended.
    pub since_last_failure: Option<Duration>,
    /// Held from self-healing (gp_segment_hold), and why.
    pub held: Option<String>,
    /// A switched pair: its failovers within the damping window.
    pub recent_failovers: u32,
    /// A switched pair: why stopping its acting primary now would be an
    /// outage (rebalance::live_refusal), if it would.
    pub unsafe_to_stop: Option<String>,
}

/// Damping of a flapping content (gp_recovery.auto_rebalance_max_failovers
/// within gp_recovery.auto_rebalance_failover_window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damping {
    pub max_failovers: u32,
    pub window: Duration,
}

/// The verdict for one segment or pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Queue a job of this mode; the text goes into its history row.
    Submit(RecoveryMode, String),
    /// Not now, and why.
    Wait(String),
    /// Not automatically at all: the content keeps failing over, and each
    /// rebalance would put its primary back on the member that fails.
    Damped(String),
}

/// The wait after `failures` failed jobs: the delay doubled per failure,
/// at most 64 times the delay.
pub fn backoff(delay: Duration, failures: u32) -> Duration {
    delay.saturating_mul(1 << failures.min(6))
}

/// Whether to queue a recovery of a down segment now.
pub fn recover_verdict(policy: AutoRecover, delay: Duration, f: &Facts) -> Verdict {
    let Some(mode) = policy.mode() else { return Verdict::Wait("gp_recovery.auto_recover is off".into()) };
    common(delay, f, "down", mode)
}

/// Whether to queue a rebalance of a switched, synchronized pair now.
pub fn rebalance_verdict(on: bool, delay: Duration, damping: Damping, f: &Facts) -> Verdict {
    if !on {
        return Verdict::Wait("gp_recovery.auto_rebalance is off".into());
    }
    if f.recent_failovers >= damping.max_failovers {
        return Verdict::Damped(format!(
            "it failed over {} times within {} s (gp_recovery.auto_rebalance_max_failovers is {}): not rebalancing \
             it automatically; gp_rebalance() still does",
            f.recent_failovers,
            damping.window.as_secs(),
            damping.max_failovers
        ));
    }
    if let Some(why) = &f.unsafe_to_stop {
        return Verdict::Wait(why.clone());
    }
    common(delay, f, "switched and synchronized", RecoveryMode::Rebalance)
}

fn common(delay: Duration, f: &Facts, state: &str, mode: RecoveryMode) -> Verdict {
    let wait = backoff(delay, f.failures);
    let rules: [(bool, String); 6] = [
        (
            f.held.is_some(),
            format!("held ({}): gp_recovery_release() lets self-healing act again", f.held.as_deref().unwrap_or("")),
        ),
        (f.has_active_job, "a job works on it".into()),
        (!f.source_up, "double fault: its content's acting primary is not up".into()),
        (!f.host_answers, "no segment on its host is up: the host may be down".into()),
        (f.seen_for < delay, format!("{state} for {} s of the {} s delay", f.seen_for.as_secs(), delay.as_secs())),
        (
            f.failures > 0 && f.since_last_failure.is_some_and(|s| s < wait),
            format!("{} of its jobs failed: the next waits {} s after the last", f.failures, wait.as_secs()),
        ),
    ];
    match rules.into_iter().find(|(holds, _)| *holds) {
        Some((_, why)) => Verdict::Wait(why),
        None if f.failures > 0 => Verdict::Submit(
            mode,
            format!("{state} for {} s; try {} after {} failed", f.seen_for.as_secs(), f.failures + 1, f.failures),
        ),
        None => Verdict::Submit(mode, format!("{state} for {} s", f.seen_for.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down(secs: u64) -> Facts {
        Facts {
            seen_for: Duration::from_secs(secs),
            source_up: true,
            host_answers: true,
            has_active_job: false,
            failures: 0,
            since_last_failure: None,
            held: None,
            recent_failovers: 0,
            unsafe_to_stop: None,
        }
    }

    const DAMPING: Damping = Damping { max_failovers: 3, window: Duration::from_secs(3600) };

    #[test]
    fn a_segment_down_past_the_delay_is_recovered_in_the_policy_s_mode() {
        let delay = Duration::from_secs(60);
        assert_eq!(
            recover_verdict(AutoRecover::Off, delay, &down(600)),
            Verdict::Wait("gp_recovery.auto_recover is off".into())
        );
        assert!(
            matches!(recover_verdict(AutoRecover::Auto, delay, &down(10)), Verdict::Wait(w) if w.contains("10 s of the 60 s delay"))
        );
        assert_eq!(
            recover_verdict(AutoRecover::Incremental, delay, &down(61)),
            Verdict::Submit(RecoveryMode::Incremental, "down for 61 s".into())
        );
        assert!(matches!(recover_verdict(AutoRecover::Auto, delay, &down(61)), Verdict::Submit(RecoveryMode::Auto, _)));
    }

    #[test]
    fn double_faults_dead_hosts_and_busy_segments_wait() {
        let delay = Duration::from_secs(1);
        for (f, why) in [
            (Facts { source_up: false, ..down(600) }, "double fault"),
            (Facts { host_answers: false, ..down(600) }, "host may be down"),
            (Facts { has_active_job: true, ..down(600) }, "a job works on it"),
        ] {
            assert!(
                matches!(recover_verdict(AutoRecover::Auto, delay, &f), Verdict::Wait(w) if w.contains(why)),
                "{why}"
            );
        }
    }

    #[test]
    fn failures_back_off_exponentially() {
        let delay = Duration::from_secs(10);
        assert_eq!(backoff(delay, 0), delay);
        assert_eq!(backoff(delay, 3), Duration::from_secs(80));
        assert_eq!(backoff(delay, 20), Duration::from_secs(640), "capped");
        let failed = |n, ago| Facts { failures: n, since_last_failure: Some(Duration::from_secs(ago)), ..down(600) };
        assert!(
            matches!(recover_verdict(AutoRecover::Auto, delay, &failed(2, 30)), Verdict::Wait(w) if w.contains("waits 40 s"))
        );
        assert_eq!(
            recover_verdict(AutoRecover::Auto, delay, &failed(2, 41)),
            Verdict::Submit(RecoveryMode::Auto, "down for 600 s; try 3 after 2 failed".into())
        );
    }

    #[test]
    fn rebalance_follows_its_own_switch() {
        let delay = Duration::from_secs(5);
        assert!(matches!(rebalance_verdict(false, delay, DAMPING, &down(60)), Verdict::Wait(_)));
        assert_eq!(
            rebalance_verdict(true, delay, DAMPING, &down(6)),
            Verdict::Submit(RecoveryMode::Rebalance, "switched and synchronized for 6 s".into())
        );
    }

    #[test]
    fn a_held_segment_is_left_alone() {
        let held = Facts { held: Some("maintenance by dba".into()), ..down(600) };
        let delay = Duration::from_secs(1);
        for verdict in
            [recover_verdict(AutoRecover::Auto, delay, &held), rebalance_verdict(true, delay, DAMPING, &held)]
        {
            assert!(matches!(&verdict, Verdict::Wait(w) if w.contains("held (maintenance by dba)")), "{verdict:?}");
        }
    }

    #[test]
    fn a_flapping_content_is_not_rebalanced_and_an_unsafe_stop_waits() {
        let delay = Duration::from_secs(1);
        let flapping = Facts { recent_failovers: 3, ..down(600) };
        let verdict = rebalance_verdict(true, delay, DAMPING, &flapping);
        assert!(
            matches!(&verdict, Verdict::Damped(w) if w.contains("failed over 3 times within 3600 s")),
            "{verdict:?}"
        );
        assert!(matches!(
            rebalance_verdict(true, delay, DAMPING, &Facts { recent_failovers: 2, ..down(600) }),
            Verdict::Submit(..)
        ));
        // Recovering a down member of a flapping content still goes on.
        assert!(matches!(recover_verdict(AutoRecover::Auto, delay, &flapping), Verdict::Submit(..)));
        let paused = Facts { unsafe_to_stop: Some("replay is paused on dbid 2".into()), ..down(600) };
        let verdict = rebalance_verdict(true, delay, DAMPING, &paused);
        assert_eq!(verdict, Verdict::Wait("replay is paused on dbid 2".into()));
        let never = Damping { max_failovers: 0, ..DAMPING };
        assert!(matches!(rebalance_verdict(true, delay, never, &down(600)), Verdict::Damped(_)));
    }
}
