//! Self-healing: with gp_recovery.auto_recover on, a killed segment comes
//! back with no SQL call, a failing one is retried with a doubling wait,
//! and with gp_recovery.auto_rebalance the roles return as well.

use std::time::{Duration, Instant};

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

/// The history texts of self-healing's queued jobs and damping.
fn healing_history(tc: &TestCluster) -> Vec<String> {
    tc.history().into_iter().filter(|h| h.starts_with("gp_recovery self-healing")).collect()
}

/// Issue item 2: a person's cancel of a self-healing job holds the segment,
/// as gp_recovery_hold does for a mirror stopped on purpose; the service
/// leaves held segments alone until gp_recovery_release.
#[test]
fn a_persons_cancel_and_a_hold_keep_self_healing_away() {
    let tc = TestCluster::new(2);
    tc.set_fts(1, 2, 2, 2);
    pgbench_init(tc.primary(0), 5);
    let mut c = tc.coordinator();
    set_setting_on(&mut c, "auto_recover_delay", "1");
    set_setting_on(&mut c, "max_rate", "1024");
    // Marked incomplete, the mirror needs a (slowed) copy: its job runs long.
    let m0 = tc.dbid_of(tc.mirror(0));
    tc.mirror(0).stop("immediate").unwrap();
    std::fs::write(format!("{}.gp_recovery_incomplete", tc.mirror(0).datadir.display()), "").unwrap();
    wait_for(60, "the mirror to be marked down", || tc.row_state(m0) == "m d n");
    set_setting_on(&mut c, "auto_recover", "auto");
    wait_for(60, "self-healing's job for the mirror", || {
        service_jobs(&tc, m0).last().is_some_and(|j| j.1 == "running")
    });
    let job = service_jobs(&tc, m0).last().unwrap().0;
    let mut dba = tc.admin();
    assert!(dba.query_one("SELECT gp_recovery_cancel($1)", &[&job]).unwrap().get::<_, bool>(0));
    assert_eq!(tc.wait_job(job).unwrap(), "canceled");
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(service_jobs(&tc, m0).len(), 1, "the canceled segment was recovered again");
    // Stopped on purpose: held before self-healing's delay is up.
    tc.mirror(1).stop("immediate").unwrap();
    let m1 = tc.dbid_of(tc.mirror(1));
    assert!(dba
        .query_one("SELECT gp_recovery_hold($1, 'disk replacement')", &[&i32::from(m1)])
        .unwrap()
        .get::<_, bool>(0));
    wait_for(60, "the mirror to be marked down", || tc.row_state(m1) == "m d n");
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(service_jobs(&tc, m0).len(), 1, "the canceled segment was recovered later");
    assert!(service_jobs(&tc, m1).is_empty(), "the held segment was recovered");
    let holds: Vec<String> = c
        .query("SELECT dbid::text || ' ' || held_by || ': ' || reason FROM gp_segment_hold ORDER BY dbid", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        holds,
        [format!("{m0} dba: dba canceled self-healing job {job}"), format!("{m1} dba: disk replacement")]
    );
    let report: Vec<String> =
        c.query("SELECT * FROM gp_state_report()", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert!(report.iter().any(|l| l == "Segments Held from Self-Healing"), "{report:?}");
    let held_metric: f64 =
        c.query_one("SELECT value FROM gp_recovery_metrics WHERE metric = 'segments_held'", &[]).unwrap().get(0);
    assert_eq!(held_metric, 2.0);
    assert!(tc
        .history()
        .iter()
        .any(|h| h == &format!("gp_recovery: dbid {m1} held from self-healing by dba: disk replacement")));
    // Released, they are healed again.
    set_setting_on(&mut c, "max_rate", "0");
    for m in [m0, m1] {
        assert!(dba.query_one("SELECT gp_recovery_release($1)", &[&i32::from(m)]).unwrap().get::<_, bool>(0));
    }
    wait_for(180, "both mirrors healed", || tc.row_state(m0) == "m u s" && tc.row_state(m1) == "m u s");
    assert!(c.query("SELECT 1 FROM gp_segment_hold", &[]).unwrap().is_empty());
    let (code, message) = gp_recovery_pg_test::expect_error(&mut dba, "SELECT gp_recovery_hold(1)");
    assert_eq!(code, "22023", "{message}");
    let (code, _) = gp_recovery_pg_test::expect_error(&mut dba, "SELECT gp_recovery_hold(NULL)");
    assert_eq!(code, "22004");
}

/// Issue item 3: a primary that keeps failing is failed over and recovered
/// each time, but once its content failed over
/// gp_recovery.auto_rebalance_max_failovers times in the window, it is no
/// longer rebalanced back onto the member that keeps dying; gp_rebalance()
/// by hand still works.
#[test]
fn a_flapping_primary_is_no_longer_rebalanced_automatically() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    let mut c = tc.coordinator();
    set_setting_on(&mut c, "auto_recover_delay", "1");
    set_setting_on(&mut c, "auto_rebalance_max_failovers", "2");
    set_setting_on(&mut c, "auto_recover", "incremental");
    set_setting_on(&mut c, "auto_rebalance", "on");
    let (primary, mirror) = (tc.dbid_of(tc.primary(0)), tc.dbid_of(tc.mirror(0)));
    let balanced = || tc.row_state(primary) == "p u s" && tc.row_state(mirror) == "m u s";
    // First failover: recovered and rebalanced.
    kill9(tc.primary(0));
    wait_for(60, "the failover", || tc.row_state(mirror) == "p u n");
    wait_for(180, "healed and rebalanced", balanced);
    // Second: recovered, but not rebalanced any more.
    kill9(tc.primary(0));
    wait_for(60, "the second failover", || tc.row_state(mirror) == "p u n");
    wait_for(180, "the old primary recovered as a mirror", || {
        tc.row_state(primary) == "m u s" && tc.row_state(mirror) == "p u s"
    });
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(tc.row_state(mirror), "p u s", "rebalanced onto the member that keeps failing");
    let history = healing_history(&tc);
    assert!(history.iter().any(|h| h.contains("content 0: it failed over 2 times within 3600 s")), "{history:#?}");
    assert_eq!(history.iter().filter(|h| h.contains("queued rebalance")).count(), 1, "{history:#?}");
    let failovers: i64 = c.query_one("SELECT count(*) FROM gp_recovery_failover", &[]).unwrap().get(0);
    assert_eq!(failovers, 2);
    let jobs: Vec<i64> = c.query("SELECT * FROM gp_rebalance()", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(tc.wait_job(jobs[0]).unwrap(), "succeeded");
    wait_for(60, "rebalanced by hand", balanced);
}

/// Issue item 4: the backoff is the segment's own and outlives
/// gp_recovery.job_retention, which removes the failed jobs it counts.
#[test]
fn the_backoff_survives_job_retention() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    let mut c = tc.coordinator();
    set_setting_on(&mut c, "auto_recover_delay", "1");
    set_setting_on(&mut c, "job_retention", "1");
    let mirror = tc.dbid_of(tc.mirror(0));
    kill9(tc.mirror(0));
    wait_for(60, "the mirror to be marked down", || tc.row_state(mirror) == "m d n");
    // Incremental recovery refuses a directory marked incomplete, every time.
    std::fs::write(format!("{}.gp_recovery_incomplete", tc.mirror(0).datadir.display()), "").unwrap();
    set_setting_on(&mut c, "auto_recover", "incremental");
    // Failures 1..6 wait 1, 2, 4, 8, 16, 32 s; the retention sweep runs at
    // the worker's start and a minute later, removing the failed jobs.
    let started = Instant::now();
    wait_for(120, "five failed jobs", || {
        c.query_one("SELECT failures FROM gp_segment_selfheal WHERE dbid = $1", &[&mirror])
            .map(|r| r.get::<_, i32>(0) >= 5)
            .unwrap_or(false)
    });
    std::thread::sleep(Duration::from_secs(76).saturating_sub(started.elapsed()));
    set_setting_on(&mut c, "auto_recover", "off");
    let queued: Vec<f64> = c
        .query(
            "SELECT extract(epoch FROM \"time\")::float8 FROM gp_configuration_history \
              WHERE \"desc\" LIKE 'gp_recovery self-healing: queued incremental job %' ORDER BY \"time\"",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let gaps: Vec<f64> = queued.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(queued.len() >= 6, "{queued:?}");
    // Each wait at least as long as the one before: no restart at 1 s.
    assert!(gaps.windows(2).all(|g| g[1] + 0.5 >= g[0]), "the backoff started over: gaps {gaps:?}");
    let kept: i64 = c.query_one("SELECT count(*) FROM gp_recovery_job", &[]).unwrap().get(0);
    assert!(kept < queued.len() as i64, "retention removed no job ({kept} of {})", queued.len());
}
