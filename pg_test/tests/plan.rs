//! gp_recovery_plan() shows what a recovery would do and changes nothing;
//! the free space check refuses a copy that cannot fit before the catalog
//! or any directory changes.

use gp_recovery_pg_test::{catalog_snapshot, expect_error, kill9, pgbench_init, wait_for, TestCluster};

/// (dbid, recovery_type, source, target, estimated_bytes, free_bytes, warnings) of a plan.
type PlanRow = (i16, String, String, String, Option<i64>, Option<i64>, Vec<String>);

fn plan(tc: &TestCluster, sql: &str) -> Vec<PlanRow> {
    tc.coordinator()
        .query(
            &format!(
                "SELECT dbid, recovery_type, source, target, estimated_bytes, free_bytes, warnings FROM {sql} ORDER BY dbid"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)))
        .collect()
}

#[test]
fn the_plan_matches_what_recover_all_then_does() {
    let tc = TestCluster::new(2);
    tc.set_fts(1, 2, 2, 2);
    let m0 = tc.dbid_of(tc.mirror(0));
    kill9(tc.mirror(0));
    let (p1, _) = tc.fail_over(1);
    wait_for(60, "the mirror of content 0 to be marked down", || tc.row_state(m0) == "m d n");
    let mut c = tc.coordinator();
    let before = catalog_snapshot(&mut c);
    let jobs_before: i64 = c.query_one("SELECT count(*) FROM gp_recovery_job", &[]).unwrap().get(0);

    let planned = plan(&tc, "gp_recovery_plan('incremental')");
    let dbids: Vec<i16> = planned.iter().map(|r| r.0).collect();
    let mut down = vec![m0, p1];
    down.sort();
    assert_eq!(dbids, down);
    for (dbid, kind, _, target, estimated, free, warnings) in &planned {
        assert_eq!(kind, "incremental");
        assert!(target.ends_with(&format!("(dbid {dbid})")), "{target}");
        assert_eq!(*estimated, None, "pg_rewind's bytes are not known before");
        assert!(free.is_some_and(|f| f > 0), "free space read on the host");
        assert!(warnings.is_empty(), "{warnings:?}");
    }
    let auto = plan(&tc, "gp_recovery_plan()");
    assert!(auto.iter().all(|r| r.1 == "auto"), "auto is the plan's default: {auto:?}");
    let full = plan(&tc, &format!("gp_recovery_plan('full', {m0})"));
    assert_eq!(full.len(), 1);
    let size: i64 = tc
        .primary(0)
        .connect()
        .unwrap()
        .query_one("SELECT sum(pg_database_size(oid))::bigint FROM pg_database", &[])
        .unwrap()
        .get(0);
    let estimated = full[0].4.unwrap();
    assert!((estimated - size).abs() < 16 << 20, "a full copy moves the source's databases: {estimated} vs {size}");
    let (code, message) = expect_error(&mut c, &format!("SELECT * FROM gp_recovery_plan('full', {m0}, '{m0}')"));
    assert_eq!(code, "22023", "{message}");
    assert_eq!(catalog_snapshot(&mut c), before, "the plan changed the catalog");
    let jobs_after: i64 = c.query_one("SELECT count(*) FROM gp_recovery_job", &[]).unwrap().get(0);
    assert_eq!(jobs_after, jobs_before, "the plan queued a job");

    // What gp_recover_all then queues is what the plan said.
    // Two statements: the function's rows are not in its own statement's snapshot.
    let jobs: Vec<i64> =
        c.query("SELECT * FROM gp_recover_all('incremental')", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    let queued: Vec<(i16, String, String)> = c
        .query(
            "SELECT dbid, recovery_type, source_hostname || ':' || source_port || ' ' || source_datadir || \
                    ' (dbid ' || source_dbid || ')' FROM gp_recovery_job WHERE job_id = ANY($1) ORDER BY dbid",
            &[&jobs],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let said: Vec<(i16, String, String)> = planned.into_iter().map(|r| (r.0, r.1, r.2)).collect();
    assert_eq!(queued, said);
    for (dbid, _, _) in &queued {
        wait_for(120, "the recovery", || tc.row_state(*dbid).ends_with("u s"));
    }
}

#[test]
fn a_full_copy_into_a_file_system_too_small_fails_before_changing_anything() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    pgbench_init(tc.primary(0), 5);
    let m0 = tc.dbid_of(tc.mirror(0));
    kill9(tc.mirror(0));
    wait_for(60, "the mirror to be marked down", || tc.row_state(m0) == "m d n");
    let small = tc.dir().join("small");
    gpdemo::make_server_dir(&small).unwrap();
    gpdemo::run(
        std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=64m,mode=0777", "tmpfs"]).arg(&small),
    )
    .unwrap();
    let port = gpdemo::free_port_range(1).unwrap();
    let target = small.join("data");
    let config = format!(
        "{}|{}|{} {}|{port}|{}",
        gpdemo::ADDRESS,
        tc.mirror(0).port,
        tc.mirror(0).datadir.display(),
        gpdemo::ADDRESS,
        target.display()
    );
    let mut c = tc.coordinator();
    let planned = plan(&tc, &format!("gp_recovery_plan(config => $${config}$$)"));
    assert_eq!(planned.len(), 1);
    assert_eq!(planned[0].1, "full");
    assert!(planned[0].6.iter().any(|w| w.contains("not enough free space")), "{:?}", planned[0].6);
    let before = catalog_snapshot(&mut c);
    let job = tc.submit(&format!("SELECT * FROM gp_recover_from_config($${config}$$)"));
    let error = tc.wait_job(job).unwrap_err();
    let empty = std::fs::read_dir(&small).map(|d| d.count()).unwrap_or(0) == 0;
    let _ = gpdemo::run(std::process::Command::new("umount").arg("-l").arg(&small));
    assert!(error.contains("not enough free space") && error.contains("(in phase checking host)"), "{error}");
    assert!(error.contains(&format!("the file system of {} has", small.display())), "{error}");
    assert_eq!(catalog_snapshot(&mut c), before, "the catalog and its history are unchanged");
    assert!(empty, "nothing was written to the small file system");
}

#[test]
fn max_parallel_jobs_per_host_holds_jobs_for_a_busy_host() {
    let tc = TestCluster::new(2);
    tc.set_fts(1, 2, 2, 2);
    let mirrors: Vec<i16> = (0..2).map(|c| tc.dbid_of(tc.mirror(c))).collect();
    for c in 0..2 {
        kill9(tc.mirror(c));
    }
    wait_for(60, "both mirrors to be marked down", || mirrors.iter().all(|d| tc.row_state(*d) == "m d n"));
    let mut c = tc.coordinator();
    gp_recovery_pg_test::set_setting_on(&mut c, "max_parallel_jobs_per_host", "1");
    tc.set_rate(4096);
    let jobs: Vec<i64> =
        c.query("SELECT * FROM gp_recover_all('full')", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(jobs.len(), 2);
    let mut most = 0;
    let mut queued_while_running = false;
    wait_for(180, "both jobs to end", || {
        let states: Vec<String> = c
            .query("SELECT state FROM gp_recovery_job WHERE job_id = ANY($1)", &[&jobs])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let running = states.iter().filter(|s| *s == "running").count();
        most = most.max(running);
        queued_while_running |= running == 1 && states.iter().any(|s| s == "queued");
        states.iter().all(|s| s == "succeeded" || s == "failed")
    });
    tc.set_rate(0);
    assert_eq!(most, 1, "one job at a time on the one host");
    assert!(queued_while_running, "the second job waited in the queue");
    for job in jobs {
        assert_eq!(tc.wait_job(job), Ok("succeeded".into()));
    }
}
