//! Self-healing: with gp_recovery.auto_recover on, a killed segment comes
//! back with no SQL call, a failing one is retried with a doubling wait,
//! and with gp_recovery.auto_rebalance the roles return as well.

use gp_recovery_pg_test::{assert_same_data, kill9, pgbench_init, set_setting_on, wait_for, TestCluster};

const SUBMITTER: &str = "gp_recovery self-healing";

/// (job_id, state, seconds from the previous job's end to this one's submission) of the service's jobs for dbid.
fn service_jobs(tc: &TestCluster, dbid: i16) -> Vec<(i64, String, Option<f64>)> {
    tc.coordinator()
        .query(
            "SELECT job_id, state, extract(epoch FROM submitted_at - lag(finished_at) OVER (ORDER BY job_id))::float8 \
               FROM gp_recovery_job WHERE dbid = $1 AND submitted_by = $2 ORDER BY job_id",
            &[&dbid, &SUBMITTER],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[test]
fn a_killed_primary_is_recovered_and_rebalanced_with_no_sql_call() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    pgbench_init(tc.primary(0), 1);
    let mut c = tc.coordinator();
    set_setting_on(&mut c, "auto_recover_delay", "2");
    set_setting_on(&mut c, "auto_recover", "incremental");
    set_setting_on(&mut c, "auto_rebalance", "on");
    let (primary, mirror) = (tc.dbid_of(tc.primary(0)), tc.dbid_of(tc.mirror(0)));
    kill9(tc.primary(0));
    wait_for(60, "the failover", || tc.row_state(mirror) == "p u n");
    // Recovered as a mirror, then the roles go back: no call from here.
    wait_for(180, "the pair back in its preferred roles and synchronized", || {
        tc.row_state(primary) == "p u s" && tc.row_state(mirror) == "m u s"
    });
    assert_same_data(tc.primary(0), tc.mirror(0));
    let kinds: Vec<String> = c
        .query(
            "SELECT recovery_type || ' ' || state FROM gp_recovery_job WHERE submitted_by = $1 ORDER BY job_id",
            &[&SUBMITTER],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kinds, ["incremental succeeded", "rebalance succeeded"]);
    let history: i64 = c
        .query_one(
            "SELECT count(*) FROM gp_configuration_history WHERE \"desc\" LIKE 'gp_recovery self-healing: queued %'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(history, 2, "a history row per job");
}

#[test]
fn a_failing_recovery_is_retried_with_a_doubling_wait_then_auto_mode_heals_it() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    let mut c = tc.coordinator();
    set_setting_on(&mut c, "auto_recover_delay", "1");
    let mirror = tc.dbid_of(tc.mirror(0));
    kill9(tc.mirror(0));
    wait_for(60, "the mirror to be marked down", || tc.row_state(mirror) == "m d n");
    // Its directory is marked as holding an incomplete copy: incremental
    // recovery refuses it every time.
    let mark = format!("{}.gp_recovery_incomplete", tc.mirror(0).datadir.display());
    std::fs::write(&mark, "").unwrap();
    set_setting_on(&mut c, "auto_recover", "incremental");
    wait_for(60, "three failed jobs of the service's", || service_jobs(&tc, mirror).len() >= 3);
    set_setting_on(&mut c, "auto_recover", "off");
    let jobs = service_jobs(&tc, mirror);
    for (k, (id, state, gap)) in jobs.iter().enumerate().take(3) {
        assert_eq!(state, "failed", "job {id}");
        if let Some(gap) = gap {
            // The wait after k failures is 2^k s; the worker looks once a second.
            let wait = f64::from(1u32 << k);
            assert!(
                *gap >= wait - 0.1,
                "job {id} came {gap:.2} s after the last failure, before its {wait} s wait: {jobs:?}"
            );
        }
    }
    let error: String =
        c.query_one("SELECT error FROM gp_recovery_job WHERE job_id = $1", &[&jobs[0].0]).unwrap().get(0);
    assert!(error.contains("holds an incomplete copy"), "{error}");
    // Auto mode gets past the mark (incremental refuses, differential copies).
    set_setting_on(&mut c, "auto_recover", "auto");
    wait_for(120, "the mirror recovered by the service", || {
        tc.row_state(mirror) == "m u s" && service_jobs(&tc, mirror).pop().is_some_and(|j| j.1 == "succeeded")
    });
    assert!(!std::path::Path::new(&mark).exists(), "the copy cleared the mark");
}
