//! Self-healing in the jobs worker (gp_recovery.auto_recover and
//! auto_rebalance): once a second it looks at the segments down and the
//! pairs switched, asks the policy (gp_recovery_core::selfheal) about each,
//! and queues what it says in one short transaction, with a history row
//! naming the job. Queued, a job is an ordinary one: the worker claims it,
//! `gp_recovery_progress` shows it, gp_recovery_cancel stops it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gp_recovery_core::events::{History, SegmentEvent};
use gp_recovery_core::rebalance;
use gp_recovery_core::recovery::{plan_recovery, JobSpec, NewLocation};
use gp_recovery_core::segment::{Mode, Pair, Segment, Status};
use gp_recovery_core::selfheal::{self, AutoRecover, Facts, Verdict};
use pgrx::prelude::*;

use crate::job_table::{self, try_transaction};
use crate::{catalog, gucs};

/// gp_recovery_job.submitted_by of the service's own jobs.
pub const SUBMITTER: &str = "gp_recovery self-healing";

/// What self-healing watches: a down segment, or a switched pair (by the
/// dbid of its acting primary).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Watched {
    Down(i16),
    Switched(i16),
}

pub struct SelfHealing {
    /// When the worker first saw each one in its state: the delay counts
    /// from there (after a restart it starts again, which only waits longer).
    seen: HashMap<Watched, Instant>,
    last_round: Instant,
}

impl SelfHealing {
    pub fn new() -> SelfHealing {
        SelfHealing { seen: HashMap::new(), last_round: Instant::now() }
    }

    /// One round, at most once a second; queues jobs and says so.
    pub fn round(&mut self) {
        if self.last_round.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_round = Instant::now();
        let (policy, rebalance_on) = (gucs::auto_recover(), gucs::AUTO_REBALANCE.get());
        if policy == AutoRecover::Off && !rebalance_on {
            self.seen.clear();
            return;
        }
        let delay = Duration::from_secs(u64::try_from(gucs::AUTO_RECOVER_DELAY.get()).unwrap_or(60));
        let queued = try_transaction(|| {
            // A submitter holding the lock: next round.
            if !job_table::try_lock_submissions() {
                return Ok(Vec::new());
            }
            let catalog = catalog::load();
            let active = job_table::active();
            let failures = job_table::failures_since_success(SUBMITTER);
            let verdicts = self.verdicts(&catalog, &active, &failures, policy, rebalance_on, delay);
            let mut queued = Vec::new();
            for (spec, why) in verdicts {
                let id = job_table::insert(&spec, Some(SUBMITTER));
                let text = format!(
                    "gp_recovery self-healing: queued {} job {id} for dbid {}: {why}",
                    spec.mode, spec.target.dbid
                );
                catalog::history(&History {
                    row: spec.original.clone(),
                    event: SegmentEvent::SelfHealing,
                    text: text.clone(),
                });
                queued.push(text);
            }
            Ok(queued)
        });
        match queued {
            Ok(q) => q.iter().for_each(|t| log!("{t}")),
            Err(e) => warning!("gp_recovery self-healing: could not queue jobs: {e}"),
        }
    }

    /// The jobs the policy queues now, each with its reason.
    fn verdicts(
        &mut self,
        catalog: &[Segment],
        active: &[gp_recovery_core::recovery::ActiveJob],
        failures: &HashMap<i16, (u32, f64)>,
        policy: AutoRecover,
        rebalance_on: bool,
        delay: Duration,
    ) -> Vec<(JobSpec, String)> {
        let now = Instant::now();
        let host_answers = |s: &Segment| {
            catalog
                .iter()
                .any(|o| !o.is_coordinator() && o.status == Status::Up && o.hostname.eq_ignore_ascii_case(&s.hostname))
        };
        let source_up =
            |s: &Segment| catalog.iter().any(|o| o.content == s.content && o.dbid != s.dbid && o.status == Status::Up);
        let mut watched: Vec<(Watched, &Segment)> = catalog
            .iter()
            .filter(|s| !s.is_coordinator() && s.status == Status::Down)
            .map(|s| (Watched::Down(s.dbid), s))
            .collect();
        watched.extend(
            Pair::all(catalog)
                .into_iter()
                .filter(|p| {
                    p.switched()
                        && [p.primary, p.mirror].iter().all(|s| s.status == Status::Up && s.mode == Mode::Synchronized)
                })
                .map(|p| (Watched::Switched(p.primary.dbid), p.primary)),
        );
        self.seen.retain(|w, _| watched.iter().any(|(x, _)| x == w));
        let mut out = Vec::new();
        for (w, s) in watched {
            let first = *self.seen.entry(w).or_insert(now);
            let (failed, ago) = failures.get(&s.dbid).copied().unwrap_or((0, 0.0));
            let facts = Facts {
                seen_for: now - first,
                source_up: source_up(s),
                host_answers: host_answers(s),
                has_active_job: active.iter().any(|j| j.content == s.content),
                failures: failed,
                since_last_failure: (failed > 0).then(|| Duration::from_secs_f64(ago.max(0.0))),
            };
            let verdict = match w {
                Watched::Down(_) => selfheal::recover_verdict(policy, delay, &facts),
                Watched::Switched(_) => selfheal::rebalance_verdict(rebalance_on, delay, &facts),
            };
            let Verdict::Submit(mode, why) = verdict else { continue };
            let spec = match w {
                Watched::Down(dbid) => {
                    let local_hosts = crate::gucs::local_hosts();
                    let hosts = crate::segment_host::hosts_by_name(&local_hosts);
                    plan_recovery(catalog, active, dbid.into(), mode, &NewLocation::default(), &hosts)
                }
                Watched::Switched(dbid) => Pair::all(catalog)
                    .into_iter()
                    .find(|p| p.primary.dbid == dbid)
                    .map(|p| rebalance::job(&p))
                    .ok_or_else(|| gp_recovery_core::CoreError::WrongState(format!("dbid {dbid}'s pair is gone"))),
            };
            match spec {
                Ok(spec) => out.push((spec, why)),
                Err(e) => debug1!("gp_recovery self-healing: not queuing a job for dbid {}: {e}", s.dbid),
            }
        }
        out
    }
}
