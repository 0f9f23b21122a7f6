//! gp_recovery.job_retention: the jobs worker removes ended jobs older than
//! the retention, with their output files in the coordinator's
//! gp_recovery_log/, and keeps younger jobs and every other file there.

use std::path::Path;

use gp_recovery_pg_test::{kill9, set_setting_on, wait_for, TestCluster};

/// The names of the files in `dir` that hold output of `job`'s steps.
fn files_of(dir: &Path, job: i64) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(&format!(".job{job}.dbid")) && n.ends_with(".out"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn ended_jobs_past_the_retention_are_removed_with_their_log_files() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    let (old, _) = tc.fail_over(0);
    let logs = tc.cluster.coordinator.datadir.join("gp_recovery_log");
    let mut c = tc.coordinator();

    // A job that ran: its steps left their output in gp_recovery_log/.
    let ran = tc.submit(&format!("SELECT gp_recover_segment({old})"));
    assert_eq!(tc.wait_job(ran).unwrap(), "succeeded");
    let ran_files = files_of(&logs, ran);
    assert!(!ran_files.is_empty(), "job {ran} left no output in {}", logs.display());
    let logfile: String = c.query_one("SELECT logfile FROM gp_recovery_job WHERE job_id = $1", &[&ran]).unwrap().get(0);
    assert!(Path::new(&logfile).starts_with(&logs), "{logfile}");

    // A younger job: the recovered mirror dies again, and its recovery is
    // canceled before it starts.
    kill9(tc.primary(0));
    wait_for(60, "the mirror marked down", || tc.row_state(old) == "m d n");
    let mut tx = c.transaction().unwrap();
    let young: i64 = tx.query_one(&format!("SELECT gp_recover_segment({old})"), &[]).unwrap().get(0);
    assert!(tx.query_one("SELECT gp_recovery_cancel($1)", &[&young]).unwrap().get::<_, bool>(0));
    tx.commit().unwrap();

    // Files the worker must leave alone: not a step's output, another
    // job's, and one only named like a step's output of the job.
    let others = [
        "notes.txt".to_string(),
        format!("pg_rewind.job{}.dbid{old}.out", ran + 1000),
        format!("{}.bak", ran_files[0]),
    ];
    for name in &others {
        std::fs::write(logs.join(name), "kept").unwrap();
    }

    // The job that ran ended an hour ago, as far as the worker can tell.
    c.execute("UPDATE gp_recovery_job SET finished_at = finished_at - interval '1 hour' WHERE job_id = $1", &[&ran])
        .unwrap();
    set_setting_on(&mut c, "job_retention", "10min");
    let exists = |c: &mut postgres::Client, job: i64| -> bool {
        c.query_opt("SELECT 1 FROM gp_recovery_job WHERE job_id = $1", &[&job]).unwrap().is_some()
    };
    // The worker looks once a minute.
    wait_for(90, "the old job removed", || !exists(&mut c, ran));
    assert_eq!(files_of(&logs, ran), Vec::<String>::new(), "the removed job's files are gone");
    assert!(exists(&mut c, young), "a job younger than the retention stays");
    for name in &others {
        assert!(logs.join(name).exists(), "{name} was removed");
    }
    let log = std::fs::read_to_string(&tc.cluster.coordinator.logfile).unwrap_or_default();
    assert!(
        log.contains(&format!("gp_recovery: removed 1 ended job(s) older than gp_recovery.job_retention (600 s) and {} of their log files", ran_files.len())),
        "the coordinator's log says what was removed"
    );

    // A retention of 2 s: the canceled job goes too.
    set_setting_on(&mut c, "job_retention", "2s");
    wait_for(90, "the canceled job removed", || !exists(&mut c, young));
}
