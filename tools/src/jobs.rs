//! The jobs a command submitted, as `gp_recovery_job` and
//! `gp_recovery_progress` show them: their progress text and, once they
//! have ended, Greenplum's summary of the run.

use gp_recovery_core::job::{JobState, Phase};

use crate::conn::Db;
use crate::layout::{LONG_STARS, STARS};
use crate::log::{Level, Log};
use crate::{exit, ToolError};

/// One submitted job, read from `gp_recovery_job` joined with `gp_recovery_progress`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub job_id: i64,
    pub dbid: i16,
    pub hostname: String,
    pub port: i32,
    pub datadir: String,
    pub recovery_type: String,
    /// What an auto job runs now (from the progress view, while it runs).
    pub running_mode: Option<String>,
    pub state: String,
    pub phase: String,
    pub bytes_done: Option<i64>,
    pub bytes_total: Option<i64>,
    pub wal_remaining: Option<i64>,
    pub error: Option<String>,
    pub logfile: Option<String>,
}

const JOBS: &str = "SELECT j.job_id, j.dbid, j.target_hostname, j.target_port, j.target_datadir, j.recovery_type, \
                           p.running_mode, j.state, j.phase, j.bytes_done, j.bytes_total, j.wal_remaining_bytes, \
                           j.error, j.logfile \
                      FROM gp_recovery_job j LEFT JOIN gp_recovery_progress p USING (job_id) \
                     WHERE j.job_id = ANY($1) ORDER BY j.job_id";

/// The rows of `ids` now; a job whose row is gone (removed after
/// gp_recovery.job_retention) is missing from the answer.
pub fn fetch(db: &mut Db, log: &Log, ids: &[i64]) -> Result<Vec<JobRow>, ToolError> {
    let ids = ids.to_vec();
    Ok(db
        .query(log, JOBS, &[&ids])?
        .iter()
        .map(|r| JobRow {
            job_id: r.get(0),
            dbid: r.get(1),
            hostname: r.get(2),
            port: r.get(3),
            datadir: r.get(4),
            recovery_type: r.get(5),
            running_mode: r.get(6),
            state: r.get(7),
            phase: r.get(8),
            bytes_done: r.get(9),
            bytes_total: r.get(10),
            wal_remaining: r.get(11),
            error: r.get(12),
            logfile: r.get(13),
        })
        .collect())
}

impl JobRow {
    pub fn state(&self) -> Option<JobState> {
        self.state.parse().ok()
    }

    pub fn ended(&self) -> bool {
        self.state().is_some_and(|s| JobState::ENDED.contains(&s))
    }

    /// `sdw1 (dbid 5)`, as gprecoverseg names a segment in its progress lines.
    pub fn label(&self) -> String {
        format!("{} (dbid {})", self.hostname, self.dbid)
    }

    /// The phase, with what an auto job runs now.
    pub fn stage(&self) -> String {
        match (&self.running_mode, self.recovery_type == "auto") {
            (Some(mode), true) => format!("{} ({mode})", self.phase),
            _ => self.phase.clone(),
        }
    }
}

/// One plain progress line's text for a job (after its label), as
/// pg_basebackup and pg_rewind write theirs: `copying 1164848/1371715 kB (84%)`.
pub fn progress_text(job: &JobRow) -> String {
    match job.state() {
        Some(JobState::Failed) => {
            format!("failed in phase {}: {}", job.phase, job.error.as_deref().unwrap_or("no error recorded"))
        }
        Some(JobState::Succeeded | JobState::Canceled | JobState::Queued) => job.state.clone(),
        _ => {
            let stage = job.stage();
            match (job.bytes_done, job.bytes_total, job.wal_remaining) {
                (_, _, Some(wal)) if job.phase == Phase::CatchingUp.as_str() => {
                    format!("{stage}: {wal} bytes of WAL to replay")
                }
                (Some(done), Some(total), _) if total > 0 => {
                    let pct = 100 * done.min(total) / total;
                    format!("{stage} {}/{} kB ({pct}%)", done / 1024, total / 1024)
                }
                (Some(done), _, _) => format!("{stage} {} kB", done / 1024),
                _ => stage,
            }
        }
    }
}

/// Where in a job a failure happened, in Greenplum's three kinds of
/// failure report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailedIn {
    /// Before anything changed (gpsegsetuprecovery).
    Setup,
    /// The copy or rewind (gpsegrecovery).
    Copy,
    /// Starting the segment, and after.
    Start,
}

fn failed_in(phase: &str) -> FailedIn {
    match phase.parse::<Phase>() {
        Ok(Phase::Queued | Phase::CheckingHost | Phase::Stopping | Phase::CheckingSource | Phase::CheckingPair) => {
            FailedIn::Setup
        }
        Ok(Phase::Rewinding | Phase::Copying | Phase::Swapping) => FailedIn::Copy,
        _ => FailedIn::Start,
    }
}

/// The end of a run: lines to log and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub lines: Vec<(Level, String)>,
    pub exit: u8,
}

/// The job's error ("canceled in phase copying" for a canceled one).
fn error_of(job: &JobRow) -> String {
    job.error.clone().unwrap_or_else(|| {
        if job.state() == Some(JobState::Canceled) { "canceled" } else { "no error recorded" }.into()
    })
}

/// Greenplum's closing lines for a recovery, from how its jobs ended.
/// `interrupted`: the user had the jobs canceled.
pub fn recovery_summary(jobs: &[JobRow], interrupted: bool) -> Outcome {
    let failed: Vec<&JobRow> = jobs.iter().filter(|j| j.state() != Some(JobState::Succeeded)).collect();
    let mut lines = Vec::new();
    let info = |lines: &mut Vec<(Level, String)>, s: &str| lines.push((Level::Info, s.to_string()));
    let error = |lines: &mut Vec<(Level, String)>, s: String| lines.push((Level::Error, s));
    if failed.is_empty() {
        if interrupted {
            info(&mut lines, "Not able to terminate the recovery process since it has been completed successfully.");
        }
        info(&mut lines, STARS);
        info(&mut lines, "Segments successfully recovered.");
        info(&mut lines, STARS);
        info(&mut lines, "Recovered mirror segments need to sync WAL with primary segments.");
        info(&mut lines, "Use 'gpstate -e' to check progress of WAL sync remaining bytes");
        return Outcome { lines, exit: exit::OK };
    }
    let of = |kind: FailedIn| failed.iter().filter(|j| failed_in(&j.phase) == kind).copied().collect::<Vec<_>>();
    let setup = of(FailedIn::Setup);
    if !setup.is_empty() {
        error(&mut lines, "Failed to setup recovery for the following segments".into());
        for j in setup {
            error(&mut lines, format!(" hostname: {}; port: {}; error: {}", j.hostname, j.port, error_of(j)));
        }
    }
    let copy = of(FailedIn::Copy);
    if !copy.is_empty() {
        let kind = |t: &str| copy.iter().any(|j| j.running_mode.as_deref().unwrap_or(&j.recovery_type) == t);
        error(
            &mut lines,
            if kind("incremental") {
                "Failed to recover the following segments. You must run either gprecoverseg --differential or \
                 gprecoverseg -F for all incremental failures"
            } else if kind("differential") {
                "Failed to recover the following segments. You must run either gprecoverseg --differential or \
                 gprecoverseg -F for all differential failures"
            } else {
                "Failed to recover the following segments"
            }
            .into(),
        );
        for j in copy {
            error(
                &mut lines,
                format!(
                    " hostname: {}; port: {}; logfile: {}; recoverytype: {}",
                    j.hostname,
                    j.port,
                    j.logfile.as_deref().unwrap_or("none"),
                    j.recovery_type
                ),
            );
            error(&mut lines, format!("   {}", error_of(j)));
        }
    }
    let start = of(FailedIn::Start);
    if !start.is_empty() {
        error(
            &mut lines,
            "Failed to start the following segments. Please check the latest logs located in segment's data directory"
                .into(),
        );
        for j in start {
            error(&mut lines, format!(" hostname: {}; port: {}; datadir: {}", j.hostname, j.port, j.datadir));
            error(&mut lines, format!("   {}", error_of(j)));
        }
    }
    if interrupted {
        error(&mut lines, "gprecoverseg process was interrupted by the user.".into());
    }
    error(&mut lines, "gprecoverseg failed. Please check the output for more details.".into());
    Outcome { lines, exit: exit::FAILED }
}

/// What `gp_rebalance` said when it queued its jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebalanceNotes {
    /// Contents it skipped, with why (its WARNINGs).
    pub skipped: Vec<String>,
    /// Some content was skipped for its mirror's replay lag.
    pub replay_lag: bool,
}

/// The closing lines of `gprecoverseg -r`.
pub fn rebalance_summary(jobs: &[JobRow], interrupted: bool, notes: &RebalanceNotes) -> Outcome {
    let failed: Vec<&JobRow> = jobs.iter().filter(|j| j.state() != Some(JobState::Succeeded)).collect();
    let mut lines: Vec<(Level, String)> = Vec::new();
    if !failed.is_empty() {
        lines.push((Level::Error, "Failed to rebalance the following segments".into()));
        for j in &failed {
            lines.push((Level::Error, format!(" hostname: {}; port: {}; error: {}", j.hostname, j.port, error_of(j))));
        }
        if interrupted {
            lines.push((Level::Error, "gprecoverseg process was interrupted by the user.".into()));
        }
        lines.push((
            Level::Error,
            "Please check the output above, correct the problem, and run gprecoverseg -r again.".into(),
        ));
        return Outcome { lines, exit: exit::FAILED };
    }
    if interrupted {
        lines.push((
            Level::Info,
            "Not able to terminate the recovery process since it has been completed successfully.".into(),
        ));
    }
    // Refused for replay lag with nothing else to do, the run was Greenplum's abort, not a completion.
    if !(jobs.is_empty() && notes.replay_lag) {
        lines.push((Level::Info, LONG_STARS.into()));
        if notes.skipped.is_empty() {
            lines.push((Level::Info, "The rebalance operation has completed successfully.".into()));
        } else {
            lines.push((
                Level::Info,
                "The rebalance operation has completed with WARNINGS. Please review the output above.".into(),
            ));
        }
        lines.push((Level::Info, LONG_STARS.into()));
    }
    if notes.replay_lag {
        // Greenplum ends a rebalance refused for replay lag with exit code 2.
        lines.push((
            Level::Error,
            "Use --replay-lag to configure the allowed replay lag limit or --disable-replay-lag to disable the check \
             completely if you wish to continue with rebalance anyway"
                .into(),
        ));
        return Outcome { lines, exit: exit::ERROR };
    }
    Outcome { lines, exit: exit::OK }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: i64, kind: &str, state: &str, phase: &str) -> JobRow {
        JobRow {
            job_id: id,
            dbid: id as i16 + 1,
            hostname: "sdw1".into(),
            port: 7000 + id as i32,
            datadir: format!("/data/m{id}"),
            recovery_type: kind.into(),
            running_mode: None,
            state: state.into(),
            phase: phase.into(),
            bytes_done: None,
            bytes_total: None,
            wal_remaining: None,
            error: None,
            logfile: Some(format!("/coord/gp_recovery_log/job{id}.log")),
        }
    }

    fn texts(o: &Outcome) -> Vec<String> {
        o.lines.iter().map(|(l, s)| format!("{}:{s}", l.name())).collect()
    }

    #[test]
    fn progress_lines() {
        let mut j = job(1, "full", "running", "copying");
        j.bytes_done = Some(1164848 * 1024);
        j.bytes_total = Some(1371715 * 1024);
        assert_eq!(progress_text(&j), "copying 1164848/1371715 kB (84%)");
        assert_eq!(j.label(), "sdw1 (dbid 2)");
        j.bytes_total = None;
        assert_eq!(progress_text(&j), "copying 1164848 kB");
        j.phase = "catching up".into();
        j.wal_remaining = Some(4096);
        assert_eq!(progress_text(&j), "catching up: 4096 bytes of WAL to replay");
        let mut auto = job(2, "auto", "running", "copying");
        auto.running_mode = Some("differential".into());
        assert_eq!(progress_text(&auto), "copying (differential)");
        assert_eq!(progress_text(&job(3, "full", "queued", "queued")), "queued");
        let mut failed = job(4, "incremental", "failed", "rewinding");
        failed.error = Some("could not find previous WAL record".into());
        assert_eq!(progress_text(&failed), "failed in phase rewinding: could not find previous WAL record");
        assert!(failed.ended() && !job(5, "full", "running", "copying").ended());
    }

    #[test]
    fn every_job_succeeded() {
        let o = recovery_summary(&[job(1, "incremental", "succeeded", "done")], false);
        assert_eq!(o.exit, exit::OK);
        let t = texts(&o);
        assert!(t.contains(&"INFO:Segments successfully recovered.".to_string()), "{t:?}");
        assert!(t.contains(&"INFO:Use 'gpstate -e' to check progress of WAL sync remaining bytes".to_string()));
        let late = recovery_summary(&[job(1, "incremental", "succeeded", "done")], true);
        assert_eq!(late.exit, exit::OK, "an interruption after the end changes nothing");
        assert_eq!(
            late.lines[0].1,
            "Not able to terminate the recovery process since it has been completed successfully."
        );
    }

    #[test]
    fn failures_are_reported_by_where_they_happened() {
        let mut setup = job(1, "full", "failed", "checking host");
        setup.error = Some("host sdw2 is unreachable".into());
        let mut rewind = job(2, "incremental", "failed", "rewinding");
        rewind.error = Some("pg_rewind failed".into());
        let mut start = job(3, "full", "failed", "starting");
        start.error = Some("pg_ctl start failed".into());
        let ok = job(4, "incremental", "succeeded", "done");
        let o = recovery_summary(&[setup, rewind, start, ok], false);
        assert_eq!(o.exit, exit::FAILED);
        assert_eq!(
            texts(&o),
            vec![
                "ERROR:Failed to setup recovery for the following segments",
                "ERROR: hostname: sdw1; port: 7001; error: host sdw2 is unreachable",
                "ERROR:Failed to recover the following segments. You must run either gprecoverseg --differential or \
                 gprecoverseg -F for all incremental failures",
                "ERROR: hostname: sdw1; port: 7002; logfile: /coord/gp_recovery_log/job2.log; recoverytype: incremental",
                "ERROR:   pg_rewind failed",
                "ERROR:Failed to start the following segments. Please check the latest logs located in segment's data \
                 directory",
                "ERROR: hostname: sdw1; port: 7003; datadir: /data/m3",
                "ERROR:   pg_ctl start failed",
                "ERROR:gprecoverseg failed. Please check the output for more details.",
            ]
        );
    }

    #[test]
    fn a_differential_or_full_copy_failure_says_so() {
        let o = recovery_summary(&[job(1, "differential", "failed", "copying")], false);
        assert!(o.lines[0].1.ends_with("for all differential failures"), "{:?}", o.lines);
        let o = recovery_summary(&[job(1, "full", "failed", "copying")], false);
        assert_eq!(o.lines[0].1, "Failed to recover the following segments");
    }

    #[test]
    fn an_interrupted_recovery_fails() {
        let mut canceled = job(1, "full", "canceled", "copying");
        canceled.error = Some("canceled in phase copying".into());
        let o = recovery_summary(&[canceled, job(2, "full", "canceled", "queued")], true);
        assert_eq!(o.exit, exit::FAILED);
        let t = texts(&o);
        assert!(t.contains(&"ERROR:   canceled in phase copying".to_string()), "{t:?}");
        assert!(t.contains(&"ERROR: hostname: sdw1; port: 7002; error: canceled".to_string()), "{t:?}");
        assert!(t.contains(&"ERROR:gprecoverseg process was interrupted by the user.".to_string()), "{t:?}");
    }

    #[test]
    fn rebalance_endings() {
        let done = [job(1, "rebalance", "succeeded", "done")];
        let o = rebalance_summary(&done, false, &RebalanceNotes::default());
        assert_eq!(o.exit, exit::OK);
        assert!(texts(&o).contains(&"INFO:The rebalance operation has completed successfully.".to_string()));

        let skipped = RebalanceNotes { skipped: vec!["content 1: not rebalancing ...".into()], replay_lag: false };
        let o = rebalance_summary(&done, false, &skipped);
        assert_eq!(o.exit, exit::OK);
        assert!(texts(&o).contains(
            &"INFO:The rebalance operation has completed with WARNINGS. Please review the output above.".into()
        ));

        let lag = RebalanceNotes { skipped: vec!["content 0: 123 bytes of WAL ...".into()], replay_lag: true };
        let o = rebalance_summary(&[], false, &lag);
        assert_eq!(o.exit, exit::ERROR, "Greenplum's exit code for the replay lag guard");
        assert_eq!(o.lines.len(), 1, "no completion to speak of: {:?}", o.lines);
        assert!(o.lines[0].1.contains("--disable-replay-lag"));
        let o = rebalance_summary(&done, false, &lag);
        assert_eq!(o.exit, exit::ERROR, "another pair rebalanced does not make the refusal a success");
        assert!(texts(&o).contains(
            &"INFO:The rebalance operation has completed with WARNINGS. Please review the output above.".into()
        ));

        let mut failed = job(1, "rebalance", "failed", "promoting");
        failed.error = Some("promotion timed out".into());
        let o = rebalance_summary(&[failed], false, &RebalanceNotes::default());
        assert_eq!(o.exit, exit::FAILED);
        assert_eq!(o.lines[1].1, " hostname: sdw1; port: 7001; error: promotion timed out");
    }
}
