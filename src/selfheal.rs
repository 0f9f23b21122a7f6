//! Self-healing in the jobs worker (gp_recovery.auto_recover and
//! auto_rebalance): once a second it looks at the segments down and the
//! pairs switched, asks the policy (gp_recovery_core::selfheal) about each,
//! and queues what it says in one short transaction, with a history row
//! naming the job. Queued, a job is an ordinary one: the worker claims it,
//! `gp_recovery_progress` shows it, gp_recovery_cancel stops it.
//!
//! It leaves alone what a DBA held (gp_recovery_hold, or a person's cancel
//! of one of its jobs), keeps its backoff per segment (gp_segment_selfheal,
//! which job retention does not touch), does not rebalance a content that
//! keeps failing over (damping), and before it queues a rebalance it probes
//! the pair, without waiting in the loop, with the live checks the job
//! makes before it stops a primary.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use gp_recovery_core::events::{History, SegmentEvent};
use gp_recovery_core::probe::ProbeResult;
use gp_recovery_core::rebalance;
use gp_recovery_core::recovery::{plan_recovery, ActiveJob, JobSpec, NewLocation};
use gp_recovery_core::segment::{Mode, Pair, Segment, Status};
use gp_recovery_core::selfheal::{self, AutoRecover, Damping, Facts, Verdict};
use gp_recovery_core::CoreError;
use pgrx::prelude::*;

use crate::error::{raise, required};
use crate::job_table::{self, try_transaction};
use crate::segment_client::{Target, Task};
use crate::{catalog, gucs};

/// gp_recovery_job.submitted_by of the service's own jobs.
pub const SUBMITTER: &str = "gp_recovery self-healing";

/// How long a live check of a switched pair stands before it is made again.
const LIVE_CHECK_FRESH: Duration = Duration::from_secs(3);

/// What self-healing watches: a down segment, or a switched pair (by the
/// dbid of its acting primary).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Watched {
    Down(i16),
    Switched(i16),
}

/// What the catalog says, read in the round's transaction.
struct Round {
    catalog: Vec<Segment>,
    active: Vec<ActiveJob>,
    failures: HashMap<i16, (u32, f64)>,
    holds: HashMap<i16, String>,
    failovers: HashMap<i16, u32>,
}

pub struct SelfHealing {
    /// When the worker first saw each one in its state: the delay counts
    /// from there (after a restart it starts again, which only waits longer).
    seen: HashMap<Watched, Instant>,
    last_round: Instant,
    /// Probes of switched pairs' members in flight, by acting primary.
    checks: HashMap<i16, Task<(ProbeResult, ProbeResult)>>,
    /// The pairs being checked, as the catalog had them.
    pending_pairs: HashMap<i16, (Segment, Segment)>,
    /// Their outcomes: when, and why a stop would be unsafe (None: safe).
    checked: HashMap<i16, (Instant, Option<String>)>,
    /// Contents whose damping was announced (a history row and an event),
    /// until they are no longer damped.
    damped: HashSet<i16>,
}

impl SelfHealing {
    pub fn new() -> SelfHealing {
        SelfHealing {
            seen: HashMap::new(),
            last_round: Instant::now(),
            checks: HashMap::new(),
            pending_pairs: HashMap::new(),
            checked: HashMap::new(),
            damped: HashSet::new(),
        }
    }

    /// One round, at most once a second; queues jobs and says so.
    pub fn round(&mut self) {
        self.collect_checks();
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
        let damping = Damping {
            max_failovers: u32::try_from(gucs::AUTO_REBALANCE_MAX_FAILOVERS.get()).unwrap_or(0),
            window: gucs::seconds(&gucs::AUTO_REBALANCE_FAILOVER_WINDOW),
        };
        let queued = try_transaction(|| {
            // A submitter holding the lock: next round.
            if !job_table::try_lock_submissions() {
                return Ok(Vec::new());
            }
            let round = Round {
                catalog: catalog::load(),
                active: job_table::active(),
                failures: job_table::selfheal_failures(),
                holds: catalog::holds(),
                failovers: catalog::recent_failovers(damping.window),
            };
            let verdicts = self.verdicts(&round, policy, rebalance_on, delay, damping);
            let mut said = Vec::new();
            for (spec, why) in verdicts {
                let (text, event) = match spec {
                    Ok(spec) => {
                        let id = job_table::insert(&spec, Some(SUBMITTER));
                        let text = format!(
                            "gp_recovery self-healing: queued {} job {id} for dbid {}: {why}",
                            spec.mode, spec.target.dbid
                        );
                        (History { row: spec.original.clone(), event: SegmentEvent::SelfHealing, text }, false)
                    }
                    Err(row) => {
                        let text = format!("gp_recovery self-healing: content {}: {why}", row.content);
                        (History { row, event: SegmentEvent::Damped, text }, true)
                    }
                };
                catalog::history(&text);
                said.push((text.text, event));
            }
            Ok(said)
        });
        match queued {
            Ok(said) => said.iter().for_each(|(t, damped)| if *damped { warning!("{t}") } else { log!("{t}") }),
            Err(e) => warning!("gp_recovery self-healing: could not queue jobs: {e}"),
        }
    }

    /// Takes the outcomes of the live checks that finished.
    fn collect_checks(&mut self) {
        let mut done = Vec::new();
        for (dbid, task) in self.checks.iter_mut() {
            if let Some(result) = task.poll() {
                done.push((*dbid, result));
            }
        }
        for (dbid, result) in done {
            self.checks.remove(&dbid);
            let refusal = match result {
                Ok((primary, mirror)) => self.pair_of(dbid).and_then(|(p, m)| {
                    let pair = Pair { primary: &p, mirror: &m };
                    rebalance::live_refusal(&pair, &primary, &mirror, gucs::switchover_replay_lag())
                }),
                Err(e) => Some(e),
            };
            if let Some(why) = &refusal {
                let before = self.checked.get(&dbid).and_then(|(_, r)| r.clone());
                if before.as_ref() != Some(why) {
                    log!("gp_recovery self-healing: not rebalancing: {why}");
                }
            }
            self.checked.insert(dbid, (Instant::now(), refusal));
        }
    }

    /// The rows of a pair by its acting primary, as the last round saw them.
    fn pair_of(&self, dbid: i16) -> Option<(Segment, Segment)> {
        self.pending_pairs.get(&dbid).cloned()
    }

    /// The jobs the policy queues now, each with its reason; an Err is a
    /// damping to announce (the content's acting primary's row).
    fn verdicts(
        &mut self,
        round: &Round,
        policy: AutoRecover,
        rebalance_on: bool,
        delay: Duration,
        damping: Damping,
    ) -> Vec<(Result<JobSpec, Segment>, String)> {
        let catalog = &round.catalog;
        let now = Instant::now();
        let host_answers = |s: &Segment| {
            catalog
                .iter()
                .any(|o| o.is_segment() && o.status == Status::Up && o.hostname.eq_ignore_ascii_case(&s.hostname))
        };
        let source_up =
            |s: &Segment| catalog.iter().any(|o| o.content == s.content && o.dbid != s.dbid && o.status == Status::Up);
        let mut watched: Vec<(Watched, &Segment, Option<&Segment>)> = catalog
            .iter()
            .filter(|s| s.is_segment() && s.status == Status::Down)
            .map(|s| (Watched::Down(s.dbid), s, None))
            .collect();
        watched.extend(
            Pair::all(catalog)
                .into_iter()
                .filter(|p| {
                    p.switched()
                        && [p.primary, p.mirror].iter().all(|s| s.status == Status::Up && s.mode == Mode::Synchronized)
                })
                .map(|p| (Watched::Switched(p.primary.dbid), p.primary, Some(p.mirror))),
        );
        self.seen.retain(|w, _| watched.iter().any(|(x, _, _)| x == w));
        let switched: HashSet<i16> =
            watched.iter().filter(|(w, _, _)| matches!(w, Watched::Switched(_))).map(|(_, s, _)| s.dbid).collect();
        self.checked.retain(|d, _| switched.contains(d));
        self.pending_pairs.retain(|d, _| switched.contains(d));
        let mut out = Vec::new();
        let mut damped_now = HashSet::new();
        for (w, s, peer) in watched {
            let first = *self.seen.entry(w).or_insert(now);
            let (failed, ago) = round.failures.get(&s.dbid).copied().unwrap_or((0, 0.0));
            let held = [Some(s), peer]
                .into_iter()
                .flatten()
                .find_map(|m| round.holds.get(&m.dbid).map(|r| format!("dbid {}: {r}", m.dbid)));
            let mut facts = Facts {
                seen_for: now - first,
                source_up: source_up(s),
                host_answers: host_answers(s),
                has_active_job: round.active.iter().any(|j| j.content == s.content),
                failures: failed,
                since_last_failure: (failed > 0).then(|| Duration::from_secs_f64(ago.max(0.0))),
                held,
                recent_failovers: round.failovers.get(&s.content).copied().unwrap_or(0),
                unsafe_to_stop: None,
            };
            let verdict = match w {
                Watched::Down(_) => selfheal::recover_verdict(policy, delay, &facts),
                Watched::Switched(dbid) => {
                    let verdict = selfheal::rebalance_verdict(rebalance_on, delay, damping, &facts);
                    if !matches!(verdict, Verdict::Submit(..)) {
                        verdict
                    } else {
                        // Queued only on a fresh live check that found the stop safe.
                        match self.checked.get(&dbid).filter(|(at, _)| at.elapsed() < LIVE_CHECK_FRESH) {
                            Some((_, refusal)) => {
                                facts.unsafe_to_stop = refusal.clone();
                                self.checked.remove(&dbid);
                                selfheal::rebalance_verdict(rebalance_on, delay, damping, &facts)
                            }
                            None => {
                                if let Some(m) = peer {
                                    self.start_check(s, m);
                                }
                                Verdict::Wait("its members are being checked".into())
                            }
                        }
                    }
                }
            };
            match verdict {
                Verdict::Submit(mode, why) => {
                    let spec = match w {
                        Watched::Down(dbid) => {
                            let local_hosts = crate::gucs::local_hosts();
                            let hosts = crate::segment_host::hosts_by_name(&local_hosts);
                            plan_recovery(catalog, &round.active, dbid.into(), mode, &NewLocation::default(), &hosts)
                        }
                        Watched::Switched(dbid) => Pair::all(catalog)
                            .into_iter()
                            .find(|p| p.primary.dbid == dbid)
                            .map(|p| rebalance::job(&p))
                            .ok_or_else(|| CoreError::WrongState(format!("dbid {dbid}'s pair is gone"))),
                    };
                    match spec {
                        Ok(spec) => out.push((Ok(spec), why)),
                        Err(e) => debug1!("gp_recovery self-healing: not queuing a job for dbid {}: {e}", s.dbid),
                    }
                }
                Verdict::Damped(why) => {
                    damped_now.insert(s.content);
                    if !self.damped.contains(&s.content) {
                        out.push((Err(s.clone()), why));
                    }
                }
                Verdict::Wait(_) => {}
            }
        }
        self.damped = damped_now;
        out
    }

    /// Probes a switched pair's members on the jobs runtime; the loop
    /// takes the outcome in a later round.
    fn start_check(&mut self, primary: &Segment, mirror: &Segment) {
        if self.checks.contains_key(&primary.dbid) {
            return;
        }
        let timeout = gucs::seconds(&gucs::JOB_CALL_TIMEOUT);
        let (pt, mt) = (Target::new(primary, timeout), Target::new(mirror, timeout));
        self.pending_pairs.insert(primary.dbid, (primary.clone(), mirror.clone()));
        self.checks.insert(primary.dbid, Task::spawn(async move { (pt.probe().await, mt.probe().await) }));
    }
}

/// What a hold's history row says, and its event.
fn hold_history(row: &Segment, event: SegmentEvent, text: String) {
    catalog::history(&History { row: row.clone(), event, text });
}

/// A segment's catalog row for a hold or release, or an ERROR naming why not.
fn hold_row(function: &str, dbid: Option<i32>) -> Segment {
    let dbid = required(function, "dbid", dbid);
    let catalog = catalog::load();
    match i16::try_from(dbid).ok().and_then(|d| catalog.into_iter().find(|s| s.dbid == d)) {
        Some(s) if !s.is_segment() => raise(CoreError::InvalidValue {
            what: "dbid",
            value: dbid.to_string(),
            expected: "it is the coordinator or its standby; self-healing never acts on them",
        }),
        Some(s) => s,
        None => raise(CoreError::InvalidValue {
            what: "dbid",
            value: dbid.to_string(),
            expected: "no segment with this dbid in gp_segment_configuration",
        }),
    }
}

/// Holds a segment from self-healing with a reason; true when it was not
/// held before. Recorded in the history (event `held`).
pub fn hold(row: &Segment, reason: &str, by: &str) -> bool {
    let inserted = catalog::add_hold(row.dbid, reason, by);
    if inserted {
        hold_history(
            row,
            SegmentEvent::Held,
            format!("gp_recovery: dbid {} held from self-healing by {by}: {reason}", row.dbid),
        );
    }
    inserted
}

/// Self-healing leaves the segment (and its pair) alone until released:
/// for maintenance, or a mirror stopped on purpose.
#[pg_extern]
fn gp_recovery_hold(dbid: Option<i32>, reason: default!(Option<&str>, "NULL")) -> bool {
    job_table::lock_submissions();
    let row = hold_row("gp_recovery_hold", dbid);
    let reason = reason.filter(|r| !r.trim().is_empty()).unwrap_or("no reason given");
    let held = hold(&row, reason, &job_table::caller());
    if !held {
        notice!("dbid {} is already held from self-healing", row.dbid);
    }
    held
}

/// Ends a hold; true when the segment was held.
#[pg_extern]
fn gp_recovery_release(dbid: Option<i32>) -> bool {
    job_table::lock_submissions();
    let row = hold_row("gp_recovery_release", dbid);
    let released = catalog::remove_hold(row.dbid);
    if released {
        hold_history(
            &row,
            SegmentEvent::Released,
            format!("gp_recovery: dbid {} released to self-healing by {}", row.dbid, job_table::caller()),
        );
    } else {
        notice!("dbid {} was not held", row.dbid);
    }
    released
}
