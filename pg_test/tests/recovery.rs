//! gp_recover_segment and friends against real failures and real data:
//! every mode after a failover with writes on the new primary, relocation,
//! a failed incremental recovery, cancel, coordinator restart, pg_cron.

use std::path::PathBuf;

use gp_recovery_pg_test::{
    assert_same_data, catalog_snapshot, copy_percents, expect_error, kill9, pgbench_init, wait_for, TestCluster,
};
use gpdemo::Instance;

/// A one-pair cluster with fast fault tolerance, pgbench data, a failover,
/// and writes on the new primary that the old one never saw.
fn failed_over_cluster(scale: u32) -> (TestCluster, i16, i16) {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    pgbench_init(tc.primary(0), scale);
    let (old, new) = tc.fail_over(0);
    let mut p = tc.mirror(0).connect().unwrap();
    p.batch_execute(
        "UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 10 = 0; \
         INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) SELECT 1, 1, g, g, now() FROM generate_series(1, 5000) g",
    )
    .unwrap();
    (tc, old, new)
}

/// The pair is synchronized: catalog, pg_stat_replication, data.
fn assert_recovered(tc: &TestCluster, recovered: &Instance, mirror_dbid: i16, primary_dbid: i16) {
    assert_eq!(tc.row_state(mirror_dbid), "m u s");
    assert_eq!(tc.row_state(primary_dbid), "p u s");
    let mut p = tc.mirror(0).connect().unwrap();
    let row = p
        .query_one("SELECT state, sync_state FROM pg_stat_replication WHERE application_name = 'gp_walreceiver'", &[])
        .unwrap();
    assert_eq!((row.get::<_, String>(0).as_str(), row.get::<_, String>(1).as_str()), ("streaming", "sync"));
    assert_same_data(tc.mirror(0), recovered);
    // The old primary's slot for its former mirror would keep WAL forever
    // (pg_rewind leaves pg_replslot alone; found by the fault soak).
    let slots: i64 =
        recovered.connect().unwrap().query_one("SELECT count(*) FROM pg_replication_slots", &[]).unwrap().get(0);
    assert_eq!(slots, 0, "the recovered mirror keeps no replication slot");
}

#[test]
fn incremental_recovery_rewinds_the_old_primary() {
    let (tc, old, new) = failed_over_cluster(5);
    let job = tc.submit(&format!("SELECT gp_recover_segment({old})"));
    let watcher = tc.watch_progress(job);
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
    let seen = watcher.join().unwrap();
    assert!(seen.iter().any(|(phase, _)| phase == "rewinding"), "{seen:?}");
    assert_recovered(&tc, tc.primary(0), old, new);
    let history = tc.history();
    assert!(history.iter().any(|h| h
        == &format!("gprecoverseg: segment config for resync: update role, status, and mode for dbid {old} with contentid 0 to m, u, and n")));
    assert!(
        history.contains(&format!("FTS: update role, status, and mode for dbid {old} with contentid 0 to m, u, and s"))
    );
    let mut c = tc.coordinator();
    let row = c
        .query_one(
            "SELECT recovery_type, bytes_done > 0, finished_at IS NOT NULL FROM gp_recovery_job WHERE job_id = $1",
            &[&job],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "incremental");
    assert!(row.get::<_, bool>(1) && row.get::<_, bool>(2));
    let left: i64 = c.query_one("SELECT count(*) FROM gp_recovery_progress", &[]).unwrap().get(0);
    assert_eq!(left, 0, "finished jobs leave the progress view");
}

#[test]
fn full_recovery_copies_with_rising_progress() {
    let (tc, old, new) = failed_over_cluster(5);
    tc.set_rate(16384);
    let job = tc.submit(&format!("SELECT gp_recover_segment({old}, 'full')"));
    let watcher = tc.watch_progress(job);
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
    let percents = copy_percents(&watcher.join().unwrap());
    assert!(percents.len() >= 2 && percents.windows(2).all(|w| w[0] < w[1]), "percent must rise: {percents:?}");
    assert_recovered(&tc, tc.primary(0), old, new);
    assert!(tc.history().contains(&format!(
        "gprecoverseg: segment config for resync: inserted segment configuration for full recovery or original dbid {old}"
    )));
    let datadir = tc.primary(0).datadir.to_string_lossy().into_owned();
    assert!(!PathBuf::from(format!("{datadir}.gp_recovery_old")).exists(), "the old copy is removed after success");
    assert!(!PathBuf::from(format!("{datadir}.gp_recovery_new")).exists());
}

#[test]
fn differential_recovery_copies_what_differs() {
    let (tc, old, new) = failed_over_cluster(5);
    // Every page of the accounts table changes on the new primary.
    tc.mirror(0).connect().unwrap().batch_execute("UPDATE pgbench_accounts SET filler = 'changed'").unwrap();
    tc.set_rate(16384);
    let job = tc.submit(&format!("SELECT gp_recover_segment({old}, 'differential')"));
    let watcher = tc.watch_progress(job);
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
    let seen = watcher.join().unwrap();
    let percents = copy_percents(&seen);
    assert!(percents.len() >= 2 && percents.windows(2).all(|w| w[0] < w[1]), "percent must rise: {seen:?}");
    assert_recovered(&tc, tc.primary(0), old, new);
    let backup_label = tc.primary(0).datadir.join("backup_label.old");
    assert!(backup_label.exists(), "recovery started from the backup label pg_backup_stop returned");
}

#[test]
fn relocation_keeps_the_dbid_and_leaves_the_old_directory() {
    let (tc, old, new) = failed_over_cluster(3);
    let port = gpdemo::free_port_range(1).unwrap();
    // Outside the cluster's directory; a space, a quote and a semicolon:
    // arguments, never shell text; %f and %%: literal in restore_command.
    let elsewhere = gp_recovery_pg_test::scratch_dir("moved");
    let datadir = elsewhere.join("moved %f%% dir 'x';touch pwned");
    let sql = format!(
        "SELECT gp_recover_segment({old}, 'full', new_port => {port}, new_datadir => $${}$$)",
        datadir.display()
    );
    tc.set_rate(16384);
    let job = tc.submit(&sql);
    let watcher = tc.watch_progress(job);
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
    let percents = copy_percents(&watcher.join().unwrap());
    assert!(percents.len() >= 2 && percents.windows(2).all(|w| w[0] < w[1]), "percent must rise: {percents:?}");
    let mut c = tc.coordinator();
    let row = c.query_one("SELECT port, datadir FROM gp_segment_configuration WHERE dbid = $1", &[&old]).unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, String>(1)), (i32::from(port), datadir.display().to_string()));
    assert!(tc.primary(0).datadir.join("PG_VERSION").exists(), "the old data directory is left alone");
    assert!(!PathBuf::from("/pwned").exists() && !elsewhere.join("pwned").exists(), "nothing ran through a shell");
    let moved = Instance {
        content: 0,
        role: 'm',
        host: gpdemo::ADDRESS.into(),
        port,
        datadir: datadir.clone(),
        logfile: tc.dir().join("moved.log"),
        namespace: None,
    };
    assert_recovered(&tc, &moved, old, new);
    // The moved segment is rewound where it is (pg_rewind reads its WAL
    // through a restore_command naming its directory): it becomes the
    // primary, then fails over back and is recovered incrementally.
    kill9(tc.mirror(0));
    wait_for(60, "the relocated segment to be promoted", || tc.row_state(old) == "p u n" && moved.writable());
    let job = tc.submit(&format!("SELECT gp_recover_segment({new})"));
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
    wait_for(60, "the pair to be synchronized", || tc.row_state(new) == "m u s");
    tc.fail_over_from(0, &moved, tc.mirror(0));
    tc.mirror(0)
        .connect()
        .unwrap()
        .batch_execute("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid < 500")
        .unwrap();
    let job = tc.submit(&format!("SELECT gp_recover_segment({old})"));
    let watcher = tc.watch_progress(job);
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
    assert!(watcher.join().unwrap().iter().any(|(phase, _)| phase == "rewinding"));
    wait_for(60, "the pair to be synchronized", || tc.row_state(old) == "m u s");
    assert_same_data(tc.mirror(0), &moved);
    // gpdemo destroy stops a segment the catalog names outside the cluster.
    let pid = moved.postmaster_pid().expect("the relocated segment runs");
    gpdemo::Cluster::destroy(tc.dir()).unwrap();
    wait_for(30, "the relocated segment to stop", || !gpdemo::process_alive(pid));
    let _ = std::fs::remove_dir_all(&elsewhere);
}

#[test]
fn incremental_without_wal_fails_with_advice_then_full_succeeds() {
    let (tc, old, new) = failed_over_cluster(3);
    // The old primary loses the WAL pg_rewind needs to find where it diverged.
    let wal = tc.primary(0).datadir.join("pg_wal");
    for e in std::fs::read_dir(&wal).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("0000") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let before = catalog_snapshot(&mut tc.coordinator()).0;
    let job = tc.submit(&format!("SELECT gp_recover_segment({old}, 'incremental')"));
    let err = tc.wait_job(job).unwrap_err();
    assert!(err.contains(&format!("recovery job {job} failed: pg_rewind failed")), "{err}");
    assert!(
        err.contains(&format!("run gp_recover_segment({old}, 'differential') or gp_recover_segment({old}, 'full')")),
        "{err}"
    );
    assert_eq!(catalog_snapshot(&mut tc.coordinator()).0, before, "a failed incremental recovery leaves the catalog");
    let job = tc.submit(&format!("SELECT gp_recover_segment({old}, 'full')"));
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
    assert_recovered(&tc, tc.primary(0), old, new);
}

#[test]
fn cancel_mid_copy_restores_everything_and_a_later_recovery_works() {
    let (tc, old, new) = failed_over_cluster(5);
    let before = catalog_snapshot(&mut tc.coordinator()).0;
    let old_version = std::fs::read_to_string(tc.primary(0).datadir.join("PG_VERSION")).unwrap();
    let job = tc.start_slow_full_recovery(old);
    let mut c = tc.coordinator();
    assert!(c.query_one("SELECT gp_recovery_cancel($1)", &[&job]).unwrap().get::<_, bool>(0));
    assert_eq!(tc.wait_job(job).unwrap(), "canceled");
    assert_eq!(catalog_snapshot(&mut c).0, before, "the catalog is as before the job");
    let datadir = tc.primary(0).datadir.to_string_lossy().into_owned();
    assert_eq!(std::fs::read_to_string(format!("{datadir}/PG_VERSION")).unwrap(), old_version);
    assert!(!PathBuf::from(format!("{datadir}.gp_recovery_new")).exists(), "the partial copy is removed");
    let copying =
        std::process::Command::new("pgrep").args(["-f", &format!("{datadir}.gp_recovery_new")]).output().unwrap();
    assert!(!copying.status.success(), "pg_basebackup still runs after the cancel");
    assert!(!c.query_one("SELECT gp_recovery_cancel($1)", &[&job]).unwrap().get::<_, bool>(0), "already ended");
    let history = tc.history();
    assert!(history.iter().any(|h| h.starts_with("gprecoverseg: segment config for backout")), "{history:#?}");

    tc.set_rate(0);
    let job = tc.submit(&format!("SELECT gp_recover_segment({old}, 'full')"));
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
    assert_recovered(&tc, tc.primary(0), old, new);
}

#[test]
fn coordinator_restart_mid_copy_leaves_no_job_running() {
    let (tc, old, new) = failed_over_cluster(5);
    let before = catalog_snapshot(&mut tc.coordinator()).0;
    let job = tc.start_slow_full_recovery(old);
    tc.cluster.coordinator.stop("fast").unwrap();
    tc.cluster.coordinator.start().unwrap();
    let mut c = tc.coordinator();
    wait_for(60, "the job to be ended", || {
        c.query_one("SELECT state FROM gp_recovery_job WHERE job_id = $1", &[&job]).unwrap().get::<_, String>(0)
            == "failed"
    });
    let error: String = c.query_one("SELECT error FROM gp_recovery_job WHERE job_id = $1", &[&job]).unwrap().get(0);
    assert!(error.contains("interrupted in phase copying"), "{error}");
    let running: i64 = c.query_one("SELECT count(*) FROM gp_recovery_job WHERE state = 'running'", &[]).unwrap().get(0);
    assert_eq!(running, 0);
    assert_eq!(catalog_snapshot(&mut c).0, before);
    tc.set_rate(0);
    let job = tc.submit(&format!("SELECT gp_recover_segment({old}, 'full')"));
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
    assert_recovered(&tc, tc.primary(0), old, new);
}

#[test]
fn recover_all_and_from_config_recover_several_segments_in_parallel() {
    let tc = TestCluster::new(2);
    tc.set_fts(1, 2, 2, 2);
    pgbench_init(tc.primary(0), 1);
    let mut c = tc.coordinator();
    let notices = c.query("SELECT * FROM gp_recover_all()", &[]).unwrap();
    assert!(notices.is_empty(), "nothing down: no jobs");

    // Content 0 fails over; content 1 loses its mirror.
    let (old0, _) = tc.fail_over(0);
    let m1 = tc.dbid_of(tc.mirror(1));
    tc.mirror(1).stop("immediate").unwrap();
    wait_for(30, "content 1's mirror to be marked down", || tc.row_state(m1) == "m d n");

    let config: String = c.query_one("SELECT gp_recovery_config()", &[]).unwrap().get(0);
    let lines: Vec<&str> = config.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 2, "{config}");
    // Recovery types per line, as gprecoverseg -i in Greenplum 7.1.
    let input = format!("F|{}\nI|{}\n", lines[0], lines[1]);
    let jobs: Vec<i64> =
        c.query("SELECT * FROM gp_recover_from_config($1)", &[&input]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(jobs.len(), 2);
    let types: Vec<String> = c
        .query("SELECT recovery_type FROM gp_recovery_job WHERE job_id = ANY($1) ORDER BY job_id", &[&jobs])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(types, vec!["full", "incremental"]);
    for job in &jobs {
        assert_eq!(tc.wait_job(*job).unwrap(), "succeeded");
    }
    assert_eq!(tc.row_state(old0), "m u s");
    assert_eq!(tc.row_state(m1), "m u s");
    assert_same_data(tc.mirror(0), tc.primary(0));
    let rows = c.query("SELECT * FROM gp_recover_all()", &[]).unwrap();
    assert!(rows.is_empty());
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let tc = TestCluster::new(2);
    tc.set_fts(1, 2, 2, 2);
    let (old, new) = tc.fail_over(0);
    let mut c = tc.coordinator();
    c.batch_execute("CREATE ROLE dba LOGIN; CREATE ROLE ops LOGIN; GRANT gp_recovery_admin TO dba").unwrap();
    let before = catalog_snapshot(&mut c);
    let jobs_before: i64 = c.query_one("SELECT count(*) FROM gp_recovery_job", &[]).unwrap().get(0);
    let up = tc.dbid_of(tc.primary(1));
    let coordinator_dir = tc.cluster.coordinator.datadir.display().to_string();
    let used_port = tc.primary(1).port;
    let cases: Vec<(String, &str, String)> = vec![
        ("SELECT gp_recover_segment(42)".into(), "22023", "invalid dbid \"42\": no segment with this dbid".into()),
        ("SELECT gp_recover_segment(1)".into(), "22023", "it is the coordinator".into()),
        (
            format!("SELECT gp_recover_segment({old}, 'quick')"),
            "22023",
            "invalid recovery mode \"quick\": must be one of incremental, differential, full, auto".into(),
        ),
        (
            format!("SELECT gp_recover_segment({up})"),
            "55000",
            format!("segment dbid {up} at localhost:{} is up", used_port),
        ),
        (
            format!("SELECT gp_recover_segment({old}, new_port => 9999)"),
            "22023",
            "always copied in full: use mode 'full'".into(),
        ),
        (
            format!("SELECT gp_recover_segment({old}, 'differential', new_datadir => '/tmp/elsewhere')"),
            "22023",
            "always copied in full".into(),
        ),
        (
            format!("SELECT gp_recover_segment({old}, 'full', new_port => {used_port})"),
            "23505",
            format!("port {used_port} on host localhost is already used by dbid {up}"),
        ),
        (
            format!("SELECT gp_recover_segment({old}, 'full', new_datadir => 'relative/dir')"),
            "22023",
            "must be an absolute path".into(),
        ),
        (
            format!("SELECT gp_recover_segment({old}, 'full', new_datadir => '')"),
            "22023",
            "must be an absolute path".into(),
        ),
        (
            format!("SELECT gp_recover_segment({old}, 'full', new_datadir => '/')"),
            "22023",
            "must not be the root directory".into(),
        ),
        (
            format!("SELECT gp_recover_segment({old}, 'full', new_datadir => '{coordinator_dir}')"),
            "22023",
            "it is the coordinator's data directory".into(),
        ),
        (
            // Under another name for the coordinator's host.
            format!(
                "SELECT gp_recover_segment({old}, 'full', new_hostname => '127.0.0.1', new_datadir => '{coordinator_dir}')"
            ),
            "22023",
            "it is the coordinator's data directory".into(),
        ),
        (
            format!("SELECT gp_recover_segment({old}, 'full', new_datadir => '{coordinator_dir}/base/x')"),
            "22023",
            "inside, or holds, the coordinator's data directory".into(),
        ),
        (
            // No white space, yet ssh would take it for an option.
            format!("SELECT gp_recover_segment({old}, 'full', new_hostname => '-oProxyCommand=touch${{IFS}}x')"),
            "22023",
            "not starting with '-'".into(),
        ),
        (
            "SELECT gp_recover_from_config(E'# ok\\n127.0.0.1|nope|/x')".into(),
            "22023",
            "recovery configuration line 2: invalid port \"nope\"".into(),
        ),
        (
            "SELECT gp_recover_from_config('127.0.0.1|7|/x|y|z|w')".into(),
            "22023",
            "recovery configuration line 1: expected 3 or 4 parts".into(),
        ),
        (
            "SET ROLE ops; SELECT gp_recover_segment(2)".into(),
            "42501",
            "permission denied for function gp_recover_segment".into(),
        ),
    ];
    for (sql, code, message) in cases {
        let (got_code, got) = expect_error(&mut c, &sql);
        c.batch_execute("RESET ROLE").unwrap();
        assert!(got.contains(&message), "{sql}\n  expected: {message}\n  got: {got}");
        assert_eq!(got_code, code, "{sql}: {got}");
        assert_eq!(catalog_snapshot(&mut c), before, "{sql} changed the catalog");
        let jobs: i64 = c.query_one("SELECT count(*) FROM gp_recovery_job", &[]).unwrap().get(0);
        assert_eq!(jobs, jobs_before, "{sql} left a job");
    }

    // Waiting in the transaction that submitted the job would wait forever.
    let (code, message) = expect_error(&mut c, &format!("SELECT gp_recovery_wait(j) FROM gp_recover_segment({old}) j"));
    assert_eq!(code, "55000");
    assert!(message.contains("was submitted in this transaction"), "{message}");
    let jobs: i64 = c.query_one("SELECT count(*) FROM gp_recovery_job", &[]).unwrap().get(0);
    assert_eq!(jobs, jobs_before, "the failed statement's job is rolled back");

    // A member of gp_recovery_admin may recover; a second job for the content names the first.
    gp_recovery_pg_test::set_rate_on(&mut c, 1024);
    c.batch_execute("SET ROLE dba").unwrap();
    let job: i64 = c.query_one(&format!("SELECT gp_recover_segment({old}, 'full')"), &[]).unwrap().get(0);
    let (code, message) = expect_error(&mut c, &format!("SELECT gp_recover_segment({old}, 'full')"));
    assert_eq!(code, "23505");
    assert!(message.contains(&format!("content 0 already has recovery job {job}")), "{message}");
    c.batch_execute("RESET ROLE").unwrap();
    let who: String =
        c.query_one("SELECT submitted_by::text FROM gp_recovery_job WHERE job_id = $1", &[&job]).unwrap().get(0);
    assert_eq!(who, "dba");
    assert!(c.query_one("SELECT gp_recovery_cancel($1)", &[&job]).unwrap().get::<_, bool>(0));
    assert_eq!(tc.wait_job(job).unwrap(), "canceled");
    let (code, _) = expect_error(&mut c, "SELECT gp_recovery_wait(987654)");
    assert_eq!(code, "42704");

    // A double fault: the acting primary of content 0 is gone too.
    kill9(tc.mirror(0));
    let (code, message) = expect_error(&mut c, &format!("SELECT gp_recover_segment({old}, 'full')"));
    assert_eq!(code, "55000");
    assert!(message.starts_with(&format!("double fault: content 0's acting primary dbid {new}")), "{message}");
}

#[test]
fn pg_cron_recovers_a_downed_mirror() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    tc.coordinator().batch_execute("ALTER SYSTEM SET shared_preload_libraries = gp_recovery, pg_cron").unwrap();
    // pg_cron's own settings exist only once it is loaded.
    gpdemo::append_server_file(
        &tc.cluster.coordinator.datadir.join("postgresql.conf"),
        "cron.database_name = 'postgres'\ncron.host = '127.0.0.1'\n",
    )
    .unwrap();
    tc.cluster.coordinator.stop("fast").unwrap();
    tc.cluster.coordinator.start().unwrap();
    let mut c = tc.coordinator();
    c.batch_execute("CREATE EXTENSION pg_cron").unwrap();
    c.execute("SELECT cron.schedule('gp_recover_all', '* * * * *', 'SELECT gp_recover_all()')", &[]).unwrap();
    let mirror = tc.dbid_of(tc.mirror(0));
    tc.mirror(0).stop("immediate").unwrap();
    wait_for(30, "the mirror to be marked down", || tc.row_state(mirror) == "m d n");
    // pg_cron runs at the start of each minute.
    wait_for(150, "pg_cron's gp_recover_all() to recover the mirror", || tc.row_state(mirror) == "m u s");
    let runs: i64 = c
        .query_one(
            "SELECT count(*) FROM cron.job_run_details WHERE command LIKE '%gp_recover_all%' AND status = 'succeeded'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(runs >= 1);
    wait_for(10, "the cron-submitted job to record its success", || {
        let done: i64 =
            c.query_one("SELECT count(*) FROM gp_recovery_job WHERE state = 'succeeded'", &[]).unwrap().get(0);
        done == 1
    });
}
