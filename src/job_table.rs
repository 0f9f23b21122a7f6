//! Every statement on gp_recovery_job: the SQL functions' inserts, reads and
//! cancels, and the jobs worker's claims, phase records (the intent,
//! committed before each side effect), progress, ends and the removal of
//! ended jobs past their retention.

use gp_recovery_core::job::{Failure, JobState, Phase};
use gp_recovery_core::recovery::{ActiveJob, Attempt, JobRecord, JobSpec};
use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

use crate::error::{internal, OrRaise};

/// A worker transaction whose errors (a constraint failing at commit, a
/// lock timeout, a row that changed) come back as an Err instead of ending
/// the worker: the transaction is aborted and the message returned.
pub fn try_transaction<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        BackgroundWorker::transaction(std::panic::AssertUnwindSafe(f))
    }));
    match outcome {
        Ok(result) => result,
        Err(payload) => {
            // SAFETY: on the worker's main thread, inside the failed transaction.
            unsafe { pg_sys::AbortCurrentTransaction() };
            Err(match payload.downcast_ref::<CaughtError>() {
                Some(
                    CaughtError::PostgresError(r)
                    | CaughtError::ErrorReport(r)
                    | CaughtError::RustPanic { ereport: r, .. },
                ) => r.message().to_string(),
                None => payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown error".into()),
            })
        }
    }
}

fn spi<T>(r: Result<T, pgrx::spi::Error>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

fn parse_jobs(json: Option<pgrx::JsonB>) -> Result<Vec<JobRecord>, String> {
    let value = json.map(|j| j.0).unwrap_or_else(|| serde_json::Value::Array(Vec::new()));
    serde_json::from_value(value).map_err(|e| format!("unexpected gp_recovery_job row: {e}"))
}

/// Claims up to `room` queued jobs, oldest first, at most `per_host`
/// running on one target host (counted by lower-case host name): they
/// become running in their first phase (a rebalance also puts its content
/// on hold for the fault tolerance service).
pub fn claim(room: usize, per_host: i32) -> Result<Vec<JobRecord>, String> {
    try_transaction(|| {
        let json = spi(Spi::get_one_with_args::<pgrx::JsonB>(
            "WITH r AS (SELECT pg_catalog.lower(target_hostname) AS h, count(*) AS n FROM public.gp_recovery_job \
                         WHERE state = 'running' GROUP BY 1), \
                  q AS (SELECT j.job_id, coalesce(r.n, 0) + pg_catalog.row_number() OVER \
                               (PARTITION BY pg_catalog.lower(j.target_hostname) ORDER BY j.job_id) AS slot \
                          FROM public.gp_recovery_job j LEFT JOIN r ON r.h = pg_catalog.lower(j.target_hostname) \
                         WHERE j.state = 'queued'), \
                  c AS (SELECT j.job_id FROM public.gp_recovery_job j JOIN q ON q.job_id = j.job_id \
                         WHERE q.slot <= $4 ORDER BY j.job_id LIMIT $1 FOR UPDATE OF j SKIP LOCKED), \
                  u AS (UPDATE public.gp_recovery_job j SET state = 'running', phase = $2, intent = $3, \
                               fts_hold = (j.recovery_type = 'rebalance'), started_at = now(), updated_at = now() \
                          FROM c WHERE j.job_id = c.job_id RETURNING j.*) \
             SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(u) ORDER BY u.job_id), '[]'::jsonb) FROM u",
            &[
                i64::try_from(room).unwrap_or(16).into(),
                Phase::CheckingHost.as_str().into(),
                "claimed".into(),
                i64::from(per_host).into(),
            ],
        ))?;
        parse_jobs(json)
    })
}

/// Jobs left running by a worker that stopped (or a coordinator restart).
pub fn running() -> Result<Vec<JobRecord>, String> {
    try_transaction(|| {
        parse_jobs(spi(Spi::get_one::<pgrx::JsonB>(
            "SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(j) ORDER BY j.job_id), '[]'::jsonb) \
               FROM public.gp_recovery_job j WHERE state = 'running'",
        ))?)
    })
}

/// Records the phase a job enters and the side effect it is about to
/// perform; must be called inside a transaction (with the catalog change
/// that led there, if any).
pub fn set_phase(job_id: i64, phase: Phase, intent: &str) -> Result<(), String> {
    spi(Spi::run_with_args(
        "UPDATE public.gp_recovery_job SET phase = $2, intent = $3, updated_at = now() WHERE job_id = $1",
        &[job_id.into(), phase.as_str().into(), intent.into()],
    ))
}

/// An auto job abandons its attempt: recorded, and the next attempt starts
/// in `phase` (its intent committed with it).
pub fn add_attempt(job_id: i64, attempt: &Attempt, phase: Phase, intent: &str) -> Result<(), String> {
    let attempt = serde_json::to_value(attempt).map_err(|e| e.to_string())?;
    try_transaction(|| {
        spi(Spi::run_with_args(
            "UPDATE public.gp_recovery_job SET attempts = attempts || pg_catalog.jsonb_build_array($2::jsonb), \
                    phase = $3, intent = $4, bytes_done = NULL, bytes_total = NULL, updated_at = now() \
              WHERE job_id = $1",
            &[job_id.into(), pgrx::JsonB(attempt.clone()).into(), phase.as_str().into(), intent.into()],
        ))
    })
}

/// From here on the fault tolerance service watches the job's content again.
pub fn release_hold(job_id: i64) -> Result<(), String> {
    spi(Spi::run_with_args("UPDATE public.gp_recovery_job SET fts_hold = false WHERE job_id = $1", &[job_id.into()]))
}

/// Progress of a running job.
pub struct ProgressRow {
    pub job_id: i64,
    pub done: Option<i64>,
    pub total: Option<i64>,
    pub wal_remaining: Option<i64>,
    pub logfile: Option<String>,
}

pub fn record_progress(rows: &[ProgressRow]) -> Result<(), String> {
    try_transaction(|| {
        for r in rows {
            spi(Spi::run_with_args(
                "UPDATE public.gp_recovery_job SET bytes_done = $2, bytes_total = $3, wal_remaining_bytes = $4, \
                        logfile = $5, updated_at = now() WHERE job_id = $1 AND state = 'running'",
                &[r.job_id.into(), r.done.into(), r.total.into(), r.wal_remaining.into(), r.logfile.clone().into()],
            ))?;
        }
        Ok(())
    })
}

/// Ends a job; its content leaves the fault tolerance hold.
pub fn record_end(job_id: i64, state: JobState, failure: Option<&Failure>) -> Result<(), String> {
    let error = failure.map(|f| f.message.as_str());
    // Only a failed job has a failure kind; a canceled one keeps its text.
    let kind = failure.filter(|_| state == JobState::Failed).map(|f| f.kind.as_str());
    try_transaction(|| {
        spi(Spi::run_with_args(
            "UPDATE public.gp_recovery_job SET state = $2, error = $3, failure = $4, finished_at = now(), \
                    updated_at = now(), fts_hold = false, intent = NULL, \
                    phase = CASE WHEN $2 = 'succeeded' THEN 'done' ELSE phase END \
              WHERE job_id = $1",
            &[job_id.into(), state.as_str().into(), error.into(), kind.into()],
        ))?;
        // Self-healing's backoff, kept per segment so retention cannot
        // erase it: any success of the segment resets it, each failure or
        // cancel of a self-healing job counts.
        spi(Spi::run_with_args(
            "INSERT INTO public.gp_segment_selfheal AS h (dbid, failures, last_failure_at) \
             SELECT j.dbid, CASE WHEN $2 = 'succeeded' THEN 0 ELSE 1 END, \
                    CASE WHEN $2 = 'succeeded' THEN NULL ELSE pg_catalog.now() END \
               FROM public.gp_recovery_job j \
               JOIN public.gp_segment_configuration c ON c.dbid = j.dbid \
              WHERE j.job_id = $1 AND ($2 = 'succeeded' OR j.submitted_by = $3) \
             ON CONFLICT (dbid) DO UPDATE SET \
                    failures = CASE WHEN EXCLUDED.failures = 0 THEN 0 ELSE h.failures + 1 END, \
                    last_failure_at = coalesce(EXCLUDED.last_failure_at, h.last_failure_at)",
            &[job_id.into(), state.as_str().into(), crate::selfheal::SUBMITTER.into()],
        ))
    })
}

/// Removes ended jobs that finished longer than `age` ago, at most 1000 a
/// call so the transaction stays short; returns their ids.
pub fn remove_ended(age: std::time::Duration) -> Result<Vec<i64>, String> {
    let ended: Vec<String> = JobState::ENDED.iter().map(|s| s.as_str().to_string()).collect();
    try_transaction(|| {
        spi(Spi::connect_mut(|client| {
            client
                .update(
                    "DELETE FROM public.gp_recovery_job WHERE job_id IN ( \
                       SELECT job_id FROM public.gp_recovery_job \
                        WHERE state = ANY($1) \
                          AND finished_at < pg_catalog.now() - pg_catalog.make_interval(secs => $2) \
                        ORDER BY job_id LIMIT 1000 FOR UPDATE SKIP LOCKED) \
                     RETURNING job_id",
                    None,
                    &[ended.into(), age.as_secs_f64().into()],
                )?
                .map(|r| r.get::<i64>(1).map(|v| v.unwrap_or_default()))
                .collect::<Result<Vec<_>, pgrx::spi::Error>>()
        }))
    })
}

/// Running jobs whose cancel was requested.
pub fn cancel_requests() -> Result<Vec<i64>, String> {
    try_transaction(|| {
        spi(Spi::connect(|client| {
            client
                .select(
                    "SELECT job_id FROM public.gp_recovery_job WHERE state = 'running' AND cancel_requested",
                    None,
                    &[],
                )?
                .map(|r| r.get::<i64>(1).map(|v| v.unwrap_or_default()))
                .collect::<Result<Vec<_>, pgrx::spi::Error>>()
        }))
    })
}

/// Queued and running jobs, for the SQL functions' checks.
pub fn active() -> Vec<ActiveJob> {
    let json = Spi::get_one::<pgrx::JsonB>(
        "SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(j) ORDER BY j.job_id), '[]'::jsonb) \
           FROM public.gp_recovery_job j WHERE state IN ('queued', 'running')",
    )
    .or_raise();
    parse_jobs(json)
        .unwrap_or_else(|e| internal("gp_recovery_job", e))
        .into_iter()
        .map(|r| ActiveJob { job_id: r.job_id, dbid: r.dbid, content: r.content, target: r.target(), state: r.state })
        .collect()
}

/// The role that called the function: the session's user or the role it
/// SET ROLE to, not the extension's owner that a SECURITY DEFINER function
/// runs as.
pub fn caller() -> String {
    // SAFETY: plain reads of the backend's user state, on its main thread;
    // the name is copied out of the palloc'd string at once.
    unsafe {
        let name = pg_sys::GetUserNameFromId(pg_sys::GetOuterUserId(), false);
        std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned()
    }
}

/// Queues a validated job, submitted by the calling role or by `by` (the
/// service's own jobs); returns its id.
pub fn insert(spec: &JobSpec, by: Option<&str>) -> i64 {
    let original = serde_json::to_value(&spec.original).unwrap_or_else(|e| internal("job row", e));
    let (s, t) = (&spec.source, &spec.target);
    Spi::get_one_with_args::<i64>(
        "INSERT INTO public.gp_recovery_job (recovery_type, dbid, content, relocate, \
           source_dbid, source_hostname, source_address, source_port, source_datadir, \
           target_hostname, target_address, target_port, target_datadir, original, submitted_by, system_identifier) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                 (SELECT i.system_identifier FROM public.gp_segment_identity i WHERE i.dbid = $2)) RETURNING job_id",
        &[
            spec.mode.as_str().into(),
            t.dbid.into(),
            t.content.into(),
            spec.relocate.into(),
            s.dbid.into(),
            s.hostname.as_str().into(),
            s.address.as_str().into(),
            s.port.into(),
            s.datadir.as_str().into(),
            t.hostname.as_str().into(),
            t.address.as_str().into(),
            t.port.into(),
            t.datadir.as_str().into(),
            pgrx::JsonB(original).into(),
            by.map_or_else(caller, str::to_string).into(),
        ],
    )
    .or_raise()
    .unwrap_or_else(|| internal("job row", "INSERT returned no job_id"))
}

const SUBMISSIONS_KEY: &str = "pg_catalog.hashtext('gp_recovery_job')";

/// Takes the submitters' lock if it is free (see lock_submissions).
pub fn try_lock_submissions() -> bool {
    Spi::get_one::<bool>(&format!("SELECT pg_catalog.pg_try_advisory_xact_lock({SUBMISSIONS_KEY})")).or_raise()
        == Some(true)
}

/// Serializes submitters, so two cannot both plan a job for one content
/// or one target. An advisory lock, not a table lock: the jobs worker never
/// waits for a submitter that keeps its transaction open, and another
/// submitter waits at most 10 s for it, then gets an ERROR naming it.
pub fn lock_submissions() {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if try_lock_submissions() {
            return;
        }
        if std::time::Instant::now() > until {
            let holders = Spi::get_one::<String>(&format!(
                "SELECT pg_catalog.string_agg(pid::text, ', ') FROM pg_catalog.pg_locks \
                  WHERE locktype = 'advisory' AND granted AND pid <> pg_catalog.pg_backend_pid() \
                    AND objid = ({SUBMISSIONS_KEY}::bigint & 4294967295)::text::oid"
            ))
            .or_raise()
            .unwrap_or_else(|| "?".into());
            pgrx::ereport!(
                ERROR,
                pgrx::PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
                format!("another session (pid {holders}) is submitting recovery jobs in a transaction that has not ended; try again once it commits or rolls back")
            );
        }
        crate::latch::nap(100);
    }
}

/// Self-healing's failed jobs per dbid since the segment last recovered,
/// and seconds since the last of them.
pub fn selfheal_failures() -> std::collections::HashMap<i16, (u32, f64)> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT dbid, failures, coalesce(extract(epoch FROM now() - last_failure_at), 0)::float8 \
                   FROM public.gp_segment_selfheal WHERE failures > 0",
                None,
                &[],
            )?
            .map(|r| {
                Ok((
                    r.get::<i16>(1)?.unwrap_or_default(),
                    (
                        u32::try_from(r.get::<i32>(2)?.unwrap_or_default()).unwrap_or(0),
                        r.get::<f64>(3)?.unwrap_or_default(),
                    ),
                ))
            })
            .collect::<Result<_, pgrx::spi::Error>>()
    })
    .or_raise()
}

/// A job's state, phase and error, read with a fresh snapshot (a read-only
/// SPI query would reuse the statement's snapshot, so a waiting loop would
/// never see the worker's commits), and whether this transaction wrote it.
pub fn state_of(job_id: i64) -> Option<(JobState, String, Option<String>, bool)> {
    let row = Spi::connect_mut(|client| {
        let rows = client.update(
            "SELECT state, phase, error, \
                    coalesce(xmin::text::bigint = pg_catalog.txid_current_if_assigned() % 4294967296, false) \
               FROM public.gp_recovery_job WHERE job_id = $1",
            None,
            &[job_id.into()],
        )?;
        match rows.into_iter().next() {
            Some(r) => Ok::<_, pgrx::spi::Error>(Some((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?,
                r.get::<bool>(4)?.unwrap_or(false),
            ))),
            None => Ok(None),
        }
    })
    .or_raise();
    row.map(|(state, phase, error, mine)| {
        (state.parse().unwrap_or_else(|e| internal("gp_recovery_job.state", e)), phase, error, mine)
    })
}

/// Cancels a queued job at once; returns whether it was queued.
pub fn cancel_queued(job_id: i64) -> bool {
    updated(
        "UPDATE public.gp_recovery_job SET state = 'canceled', finished_at = now(), updated_at = now(), \
                error = 'canceled by ' || $2 || ' before it started' \
          WHERE job_id = $1 AND state = 'queued'",
        &[job_id.into(), caller().into()],
    )
}

/// A job's dbid and submitter.
pub fn dbid_and_submitter(job_id: i64) -> Option<(i16, String)> {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT dbid, submitted_by::text FROM public.gp_recovery_job WHERE job_id = $1",
            None,
            &[job_id.into()],
        )?;
        rows.into_iter()
            .next()
            .map(|r| {
                Ok::<_, pgrx::spi::Error>((
                    r.get::<i16>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?.unwrap_or_default(),
                ))
            })
            .transpose()
    })
    .or_raise()
}

/// Asks the worker to cancel a running job; returns whether it runs.
pub fn request_cancel(job_id: i64) -> bool {
    updated(
        "UPDATE public.gp_recovery_job SET cancel_requested = true WHERE job_id = $1 AND state = 'running'",
        &[job_id.into()],
    )
}

fn updated(sql: &str, args: &[pgrx::datum::DatumWithOid]) -> bool {
    Spi::connect_mut(|client| client.update(sql, None, args).map(|t| t.len())).or_raise() > 0
}
