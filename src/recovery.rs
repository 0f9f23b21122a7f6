//! gprecoverseg as SQL: the functions that validate a recovery, queue it as
//! a job for the "gp_recovery jobs" worker (src/jobs_worker.rs) and
//! return its id at once, and those that wait for and cancel jobs.

use gp_recovery_core::job::{self, JobKind, JobState};
use gp_recovery_core::rebalance;
use gp_recovery_core::recovery::{
    self, at_line, config_line_segment, plan_recovery, ActiveJob, JobSpec, NewLocation, RecoveryMode,
};
use gp_recovery_core::segment::{Pair, Segment, Status};
use gp_recovery_core::CoreError;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::error::{raise, required, OrRaise};
use crate::{catalog, job_table, jobs_worker, latch, segment_client};

pub(crate) fn require_worker() {
    if !crate::preloaded() {
        pgrx::ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "recovery jobs are run by the gp_recovery background worker: gp_recovery must be in shared_preload_libraries"
        );
    }
}

/// Checks that every job's source answers as a primary now (a double fault
/// otherwise) and can serve the job's mode, all sources at once.
fn verify_sources(specs: &[JobSpec]) -> Result<(), CoreError> {
    let sources: Vec<Segment> = specs.iter().map(|s| s.source.clone()).collect();
    let probes = segment_client::probe_all(&sources);
    for spec in specs {
        let probe = probes.get(&spec.source.dbid).cloned().unwrap_or_else(|| Err("not probed".into()));
        recovery::verify_source(&spec.source, &spec.target, spec.mode, spec.relocate, &probe)?;
    }
    Ok(())
}

/// A job planned in this call, for the checks of the ones after it.
fn planned(spec: &JobSpec) -> ActiveJob {
    ActiveJob {
        job_id: 0,
        dbid: spec.target.dbid,
        content: spec.target.content,
        state: "planned".into(),
        target: spec.target.clone(),
    }
}

/// Validates the jobs, checks their sources live, and queues them all (or
/// none) in this transaction; the worker is woken at commit time or sooner.
pub(crate) fn submit(specs: Vec<JobSpec>) -> Vec<i64> {
    verify_sources(&specs).or_raise();
    let ids: Vec<i64> = specs.iter().map(|s| job_table::insert(s, None)).collect();
    for (id, spec) in ids.iter().zip(&specs) {
        notice!(
            "recovery job {id}: {} recovery of dbid {} (content {}) at {}:{} from dbid {} at {}",
            spec.mode,
            spec.target.dbid,
            spec.target.content,
            spec.target.hostname,
            spec.target.port,
            spec.source.dbid,
            spec.source.location()
        );
    }
    jobs_worker::wake_at_commit();
    ids
}

/// The job gp_recover_segment would queue.
pub(crate) fn plan_one(dbid: i32, mode: &str, new: NewLocation) -> JobSpec {
    let mode = mode.parse::<RecoveryMode>().or_raise();
    let catalog = catalog::load();
    let more: Vec<&str> = new.hostname.iter().chain(&new.address).map(String::as_str).collect();
    let hosts = segment_client::resolving_hosts(&catalog, &more);
    plan_recovery(&catalog, &job_table::active(), dbid, mode, &new, &hosts).or_raise()
}

/// The jobs gp_recover_all would queue: one per down segment that can be
/// recovered in `mode`; each other one is skipped with a WARNING.
pub(crate) fn plan_all(mode: &str) -> Vec<JobSpec> {
    let mode = mode.parse::<RecoveryMode>().or_raise();
    let catalog = catalog::load();
    let hosts = segment_client::resolving_hosts(&catalog, &[]);
    let mut active = job_table::active();
    let mut specs = Vec::new();
    for s in catalog.iter().filter(|s| s.is_segment() && s.status == Status::Down) {
        match plan_recovery(&catalog, &active, s.dbid.into(), mode, &NewLocation::default(), &hosts) {
            Ok(spec) => {
                active.push(planned(&spec));
                specs.push(spec);
            }
            Err(e) => warning!("skipping dbid {}: {e}", s.dbid),
        }
    }
    specs
}

/// The jobs gp_recover_from_config would queue, all or none: the first
/// line that cannot be recovered raises its ERROR.
pub(crate) fn plan_config(config: &str) -> Vec<JobSpec> {
    let lines = recovery::parse_config(config).or_raise();
    let catalog = catalog::load();
    let more: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.new.as_ref())
        .flat_map(|n| n.hostname.iter().map(String::as_str).chain([n.address.as_str()]))
        .collect();
    let hosts = segment_client::resolving_hosts(&catalog, &more);
    let mut active = job_table::active();
    let mut specs = Vec::new();
    let mut seen: Vec<(i16, usize)> = Vec::new();
    for line in &lines {
        let segment = config_line_segment(&catalog, line).or_raise();
        if let Some((_, first)) = seen.iter().find(|(d, _)| *d == segment.dbid) {
            raise(CoreError::Config {
                line: line.line,
                message: format!("dbid {} is already recovered by line {first}", segment.dbid),
            });
        }
        seen.push((segment.dbid, line.line));
        let new = line.new.as_ref().map_or_else(NewLocation::default, |n| NewLocation {
            hostname: Some(n.hostname.clone().unwrap_or_else(|| n.address.clone())),
            address: Some(n.address.clone()),
            port: Some(n.port),
            datadir: Some(n.datadir.clone()),
        });
        let mode = line.mode.unwrap_or(if line.new.is_some() { RecoveryMode::Full } else { RecoveryMode::Incremental });
        let spec = plan_recovery(&catalog, &active, segment.dbid.into(), mode, &new, &hosts)
            .map_err(|e| at_line(line.line, e))
            .or_raise();
        active.push(planned(&spec));
        specs.push(spec);
    }
    specs
}

/// Queues `specs`, or says there is nothing to recover.
fn submit_all(specs: Vec<JobSpec>) -> SetOfIterator<'static, i64> {
    if specs.is_empty() {
        notice!("No segments to recover");
        return SetOfIterator::new(Vec::new());
    }
    SetOfIterator::new(submit(specs))
}

/// Recovers one down segment (gprecoverseg for one segment); returns the job id.
#[pg_extern]
fn gp_recover_segment(
    dbid: Option<i32>,
    mode: default!(Option<&str>, "'incremental'"),
    new_hostname: default!(Option<&str>, "NULL"),
    new_port: default!(Option<i32>, "NULL"),
    new_datadir: default!(Option<&str>, "NULL"),
) -> i64 {
    let f = "gp_recover_segment";
    let (dbid, mode) = (required(f, "dbid", dbid), required(f, "mode", mode));
    require_worker();
    job_table::lock_submissions();
    let new = NewLocation {
        hostname: new_hostname.map(str::to_string),
        address: None,
        port: new_port,
        datadir: new_datadir.map(str::to_string),
    };
    submit(vec![plan_one(dbid, mode, new)])[0]
}

/// Recovers every down segment in place (gprecoverseg with no arguments).
#[pg_extern]
fn gp_recover_all(mode: default!(Option<&str>, "'incremental'")) -> SetOfIterator<'static, i64> {
    let mode = required("gp_recover_all", "mode", mode);
    require_worker();
    job_table::lock_submissions();
    submit_all(plan_all(mode))
}

/// Recovers the segments a gprecoverseg -i configuration lists, all or none.
#[pg_extern]
fn gp_recover_from_config(config: Option<&str>) -> SetOfIterator<'static, i64> {
    let config = required("gp_recover_from_config", "config", config);
    require_worker();
    job_table::lock_submissions();
    submit_all(plan_config(config))
}

/// Returns every switched pair to its preferred roles (gprecoverseg -r):
/// one switchover job per pair that is up, synchronized, and whose mirror's
/// replay lag is within the limit (NULL: no limit); the others are skipped
/// with a WARNING that says why.
#[pg_extern]
fn gp_rebalance(replay_lag_limit: default!(Option<i64>, "10737418240")) -> SetOfIterator<'static, i64> {
    require_worker();
    if let Some(limit) = replay_lag_limit.filter(|l| *l < 0) {
        raise(CoreError::InvalidValue {
            what: "replay_lag_limit",
            value: limit.to_string(),
            expected: "must be 0 or more bytes, or NULL to skip the check",
        });
    }
    job_table::lock_submissions();
    let catalog = catalog::load();
    let pairs: Vec<Pair> = Pair::all(&catalog).into_iter().filter(Pair::switched).collect();
    if pairs.is_empty() {
        notice!("{}", rebalance::NOTHING_TO_REBALANCE);
        return SetOfIterator::new(Vec::new());
    }
    let active = job_table::active();
    let members: Vec<Segment> = pairs.iter().flat_map(|p| [p.primary.clone(), p.mirror.clone()]).collect();
    let probes = segment_client::probe_all(&members);
    let probe = |s: &Segment| probes.get(&s.dbid).cloned().unwrap_or_else(|| Err("not probed".into()));
    let mut ids = Vec::new();
    for pair in &pairs {
        let content = pair.primary.content;
        if let Some(job) = active.iter().find(|j| j.content == content) {
            warning!("content {content}: not rebalancing: job {} ({}) is working on it", job.job_id, job.state);
            continue;
        }
        let (p, m) = (probe(pair.primary), probe(pair.mirror));
        if let Some(reason) = rebalance::refusal(pair, &p, &m, replay_lag_limit)
            .or_else(|| rebalance::live_refusal(pair, &p, &m, crate::gucs::switchover_replay_lag()))
        {
            warning!("{reason}");
            continue;
        }
        let id = job_table::insert(&rebalance::job(pair), None);
        notice!(
            "rebalance job {id}: content {content}: dbid {} returns to primary, dbid {} to mirror",
            pair.mirror.dbid,
            pair.primary.dbid
        );
        ids.push(id);
    }
    if ids.is_empty() {
        notice!("No segments to rebalance");
    } else {
        jobs_worker::wake_at_commit();
    }
    SetOfIterator::new(ids)
}

/// The gprecoverseg -o output: a configuration for the segments now down.
#[pg_extern]
fn gp_recovery_config() -> String {
    recovery::config_for_down_segments(&catalog::load())
}

/// A job's state, phase and error; errors out for a job submitted in this
/// very transaction, which the worker cannot see before it commits.
fn job_state(job_id: i64) -> Option<(JobState, String, Option<String>)> {
    job_table::state_of(job_id).map(|(state, phase, error, mine)| {
        if mine && matches!(state, JobState::Queued | JobState::Running) {
            pgrx::ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("recovery job {job_id} was submitted in this transaction: the worker starts it only after COMMIT; wait for it in a later transaction")
            );
        }
        (state, phase, error)
    })
}

fn no_such_job(job_id: i64) -> ! {
    pgrx::ereport!(ERROR, PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("recovery job {job_id} does not exist"));
}

/// Waits until a job ends and returns its final state; a failed job is an
/// ERROR carrying its error, so scripts and pg_cron see the failure.
#[pg_extern]
fn gp_recovery_wait(job_id: Option<i64>, timeout: default!(Option<pgrx::datum::Interval>, "NULL")) -> String {
    let job_id = required("gp_recovery_wait", "job_id", job_id);
    let limit = timeout.map(|t| {
        let secs = Spi::get_one_with_args::<f64>("SELECT extract(epoch FROM $1)::float8", &[t.into()])
            .or_raise()
            .unwrap_or(0.0);
        std::time::Duration::from_secs_f64(secs.max(0.0))
    });
    let started = std::time::Instant::now();
    loop {
        let Some((state, phase, error)) = job_state(job_id) else { no_such_job(job_id) };
        match state {
            JobState::Succeeded | JobState::Canceled => return state.to_string(),
            JobState::Failed => {
                pgrx::ereport!(
                    ERROR,
                    PgSqlErrorCode::ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
                    format!("recovery job {job_id} failed: {}", error.unwrap_or_default())
                );
            }
            _ => {}
        }
        if limit.is_some_and(|l| started.elapsed() >= l) {
            pgrx::ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
                format!("recovery job {job_id} did not end within the timeout: it is {state} (phase {phase})")
            );
        }
        latch::nap(50);
    }
}

/// Cancels a job: a queued job never starts; a running one has its child
/// processes stopped, the segment left down and the catalog put back.
/// Returns false when the job had already ended.
#[pg_extern]
fn gp_recovery_cancel(job_id: Option<i64>) -> bool {
    let job_id = required("gp_recovery_cancel", "job_id", job_id);
    let canceled = if job_table::cancel_queued(job_id) {
        true
    } else if job_table::request_cancel(job_id) {
        jobs_worker::wake_at_commit();
        true
    } else {
        false
    };
    if canceled {
        hold_after_cancel(job_id);
        return true;
    }
    match job_state(job_id) {
        Some((state, _, _)) => {
            notice!("recovery job {job_id} has already ended: {state}");
            false
        }
        None => no_such_job(job_id),
    }
}

/// A person who cancels a self-healing job means it: its segment is held
/// from self-healing until released (gp_recovery_release).
fn hold_after_cancel(job_id: i64) {
    let Some((dbid, by)) = job_table::dbid_and_submitter(job_id) else { return };
    if by != crate::selfheal::SUBMITTER {
        return;
    }
    if let Some(row) = catalog::load().into_iter().find(|s| s.dbid == dbid) {
        let caller = job_table::caller();
        let reason = format!("{caller} canceled self-healing job {job_id}");
        if crate::selfheal::hold(&row, &reason, &caller) {
            notice!("dbid {dbid} is now held from self-healing; gp_recovery_release({dbid}) ends the hold");
        }
    }
}

/// The job state machine: for each kind of job, its phases in order, the
/// side effect each performs (committed as the job's intent before it
/// starts), the phase after success (and another way on, if any), and how a
/// failure or a crash in it is backed out.
#[pg_extern]
fn gp_recovery_phases() -> TableIterator<
    'static,
    (
        name!(recovery_type, String),
        name!(position, i32),
        name!(phase, String),
        name!(effect, String),
        name!(on_success, String),
        name!(alternative, Option<String>),
        name!(on_failure, String),
        name!(reversible, bool),
        name!(comment, String),
    ),
> {
    let rows: Vec<_> = JobKind::ALL
        .iter()
        .copied()
        .flat_map(|kind| {
            job::table(kind).iter().zip(1..).map(move |(r, position)| {
                (
                    kind.to_string(),
                    position,
                    r.phase.to_string(),
                    r.effect.to_string(),
                    r.next.to_string(),
                    r.alternative.map(|p| p.to_string()),
                    r.on_failure.describe().to_string(),
                    r.on_failure.reversible(),
                    r.comment.to_string(),
                )
            })
        })
        .collect();
    TableIterator::new(rows)
}
