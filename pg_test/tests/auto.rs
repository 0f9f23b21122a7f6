//! Automatic mode: one job tries incremental, then differential, then full,
//! while the failure is the directory's (WAL the rewind needs is gone, an
//! interrupted copy's mark, files that cannot be replaced in place), each
//! abandoned attempt recorded in gp_recovery_job.attempts.

use gp_recovery_pg_test::{assert_same_data, pgbench_init, wait_for, TestCluster};

/// (mode, reason) of each abandoned attempt of a job.
fn attempts(tc: &TestCluster, job: i64) -> Vec<(String, String)> {
    tc.coordinator()
        .query(
            "SELECT a->>'mode', a->>'reason' FROM gp_recovery_job, jsonb_array_elements(attempts) a WHERE job_id = $1",
            &[&job],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[test]
fn auto_goes_on_to_differential_when_the_wal_a_rewind_needs_is_gone() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    pgbench_init(tc.primary(0), 1);
    let down = tc.fail_over_and_recycle_wal();
    let job = tc.submit(&format!("SELECT gp_recover_segment({down}, 'auto')"));
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
    let tried = attempts(&tc, job);
    assert_eq!(tried.len(), 1, "{tried:?}");
    assert_eq!(tried[0].0, "incremental");
    assert!(tried[0].1.contains("WAL segment") || tried[0].1.contains("checkpoint record"), "{tried:?}");
    wait_for(60, "the pair to be synchronized", || tc.row_state(down) == "m u s");
    assert_same_data(tc.mirror(0), tc.primary(0));
}

#[test]
fn auto_goes_past_an_interrupted_differential_and_on_to_full() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    pgbench_init(tc.primary(0), 10);
    // A differential copy, interrupted: the directory is marked incomplete.
    let down = tc.interrupted_differential();
    // And a directory in it that root left behind, which the server user
    // cannot empty (rsync would make a directory of its own writable): only
    // a copy made beside the old directory gets past it.
    let datadir = tc.primary(0).datadir.clone();
    let stuck = datadir.join("stray");
    std::fs::create_dir(&stuck).unwrap();
    std::fs::write(stuck.join("file"), "x").unwrap();

    let job = tc.submit(&format!("SELECT gp_recover_segment({down}, 'auto')"));
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
    let tried = attempts(&tc, job);
    let modes: Vec<&str> = tried.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(modes, ["incremental", "differential"], "{tried:?}");
    assert!(tried[0].1.contains("holds an incomplete copy"), "{tried:?}");
    assert!(tried[1].1.contains("rsync failed") && tried[1].1.contains("(in phase copying)"), "{tried:?}");
    assert!(!datadir.join("stray").exists(), "the full copy replaced the directory");
    wait_for(60, "the pair to be synchronized", || tc.row_state(down) == "m u s");
    assert_same_data(tc.mirror(0), tc.primary(0));
}
