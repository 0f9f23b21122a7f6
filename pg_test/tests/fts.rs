//! The fault tolerance service against real failures: SIGKILL, SIGSTOP,
//! `pg_ctl stop -m immediate`, double faults, a crashing backend.

use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use gp_recovery_pg_test::{assert_acked_present, kill9, scratch_dir, wait_for, Instance, Stopped, TestCluster};

/// A client program (pg_receivewal, pg_recvlogical) attached to an instance,
/// ended with SIGTERM when dropped. SIGTERM, not SIGKILL: under root the
/// child is runuser, which passes SIGTERM on to the program.
struct Consumer(Child);

impl Consumer {
    fn start(instance: &Instance, program: &str, app_name: Option<&str>, args: &[&str]) -> Consumer {
        let mut cmd = gpdemo::pg_command(program);
        cmd.args(["-h", &instance.host, "-p", &instance.port.to_string(), "-U", &gpdemo::server_user()])
            // Ends by itself when the server goes away instead of reconnecting.
            .arg("--no-loop")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(name) = app_name {
            cmd.env("PGAPPNAME", name);
        }
        Consumer(cmd.spawn().unwrap_or_else(|e| panic!("could not start {program}: {e}")))
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let pid = i32::try_from(self.0.id()).unwrap_or(0);
        if pid > 0 {
            // SAFETY: signals a child this test started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `sql` on `instance` in a thread; Some(result) if it returned within
/// `limit`. A commit waiting for a synchronous standby is bounded by neither
/// statement_timeout nor the client, hence the thread.
fn run_bounded(instance: &Instance, sql: &str, limit: Duration) -> Option<Result<(), String>> {
    let (tx, rx) = mpsc::channel();
    let (instance, sql) = (instance.clone(), sql.to_string());
    std::thread::spawn(move || {
        let result = instance
            .connect()
            .map_err(|e| e.to_string())
            .and_then(|mut c| c.batch_execute(&sql).map_err(|e| e.to_string()));
        let _ = tx.send(result);
    });
    rx.recv_timeout(limit).ok()
}

/// SIGSTOP of an instance's postmaster and every process under it, so no
/// session on it can do anything; all resumed when dropped.
fn stop_instance(instance: &Instance) -> Vec<Stopped> {
    let postmaster = instance.postmaster_pid().expect("instance runs");
    // The postmaster first, so it forks nothing new; then what it had forked.
    let mut stopped = vec![Stopped::new(postmaster)];
    for pid in gpdemo::process_tree(postmaster).into_iter().skip(1) {
        stopped.push(Stopped::new(pid));
    }
    stopped
}

/// The walsenders a primary reports: (application_name, slot_name).
fn walsenders(instance: &Instance) -> Vec<(String, Option<String>)> {
    instance
        .connect()
        .unwrap()
        .query(
            "SELECT r.application_name, s.slot_name::text FROM pg_stat_replication r \
             LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid ORDER BY r.pid",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[test]
fn killed_primary_fails_over_without_losing_acknowledged_commits() {
    let tc = TestCluster::new(2);
    tc.set_fts(1, 1, 2, 1);
    let (primary, mirror) = (tc.primary(0), tc.mirror(0));
    let (pdbid, mdbid) = (tc.dbid_of(primary), tc.dbid_of(mirror));
    primary.connect().unwrap().batch_execute("CREATE TABLE acked (id int PRIMARY KEY)").unwrap();

    // A client commits in a loop (synchronous_commit on) and remembers every
    // commit the primary acknowledged.
    let acked = Arc::new(Mutex::new(Vec::<i32>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, primary) = (acked.clone(), stop.clone(), primary.clone());
        std::thread::spawn(move || {
            let mut c = primary.connect().unwrap();
            c.batch_execute("SET statement_timeout = '20s'").unwrap();
            let mut id = 0;
            while !stop.load(Ordering::SeqCst) {
                id += 1;
                match c.execute("INSERT INTO acked VALUES ($1)", &[&id]) {
                    Ok(_) => acked.lock().unwrap().push(id),
                    Err(_) => break,
                }
            }
        })
    };
    wait_for(30, "the writer to commit", || acked.lock().unwrap().len() >= 200);
    let killed_at = Instant::now();
    kill9(primary);

    wait_for(30, "the failover", || tc.row_state(mdbid) == "p u n");
    let failover = killed_at.elapsed();
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert_eq!(tc.row_state(pdbid), "m d n");

    // The promoted mirror accepts writes and has every acknowledged row.
    let mut new_primary = mirror.connect().unwrap();
    wait_for(30, "the new primary to accept writes", || {
        new_primary.batch_execute("INSERT INTO acked VALUES (-1)").is_ok()
    });
    let acked = acked.lock().unwrap().clone();
    assert_acked_present(&mut new_primary, &acked, "acknowledged commits lost in the failover");

    // Right after the promotion the FTS turns synchronous replication off
    // there and creates the slot the old primary will stream from.
    wait_for(10, "the slot on the new primary", || {
        let slot: i64 = new_primary
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'internal_wal_replication_slot'",
                &[],
            )
            .unwrap()
            .get(0);
        slot == 1
    });
    let sync_names: String = new_primary.query_one("SHOW synchronous_standby_names", &[]).unwrap().get(0);
    assert_eq!(sync_names, "", "the new primary must not wait for a standby it does not have");

    let history = tc.history();
    for text in [
        format!("FTS: update role, status, and mode for dbid {pdbid} with contentid 0 to m, d, and n"),
        format!("FTS: update role, status, and mode for dbid {mdbid} with contentid 0 to p, u, and n"),
    ] {
        assert!(history.contains(&text), "{text} missing from {history:#?}");
    }
    let mut c = tc.coordinator();
    let status: String = c.query_one("SELECT status FROM gp_mirror_status WHERE dbid = $1", &[&mdbid]).unwrap().get(0);
    assert_eq!(status, "Acting as Primary");
    // The other content was left alone.
    assert_eq!(tc.row_state(tc.dbid_of(tc.primary(1))), "p u s");
    eprintln!("failover took {failover:?} after SIGKILL, {} commits acknowledged", acked.len());
}

#[test]
fn stopped_mirror_is_marked_down_after_grace_and_unblocks_commits() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 1, 2, 3);
    let (primary, mirror) = (tc.primary(0), tc.mirror(0));
    let (pdbid, mdbid) = (tc.dbid_of(primary), tc.dbid_of(mirror));
    primary.connect().unwrap().batch_execute("CREATE TABLE t (x int)").unwrap();

    mirror.stop("immediate").unwrap();
    let stopped_at = Instant::now();
    // This commit waits for the synchronous standby that is gone.
    let committed_at = Arc::new(Mutex::new(None::<Instant>));
    let writer = {
        let (committed_at, primary) = (committed_at.clone(), primary.clone());
        std::thread::spawn(move || {
            let mut c = primary.connect().unwrap();
            c.batch_execute("INSERT INTO t VALUES (1)").unwrap();
            *committed_at.lock().unwrap() = Some(Instant::now());
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    assert!(committed_at.lock().unwrap().is_none(), "the commit should wait for the mirror");
    assert_eq!(tc.row_state(mdbid), "m u s", "not marked down within the grace period");

    wait_for(30, "the mirror to be marked down", || tc.row_state(mdbid) == "m d n");
    let marked_after = stopped_at.elapsed();
    assert!(marked_after >= Duration::from_secs(3), "marked down before the grace period: {marked_after:?}");
    assert_eq!(tc.row_state(pdbid), "p u n");
    writer.join().unwrap();
    assert!(committed_at.lock().unwrap().is_some(), "the waiting commit completed");
    let names: String = primary.connect().unwrap().query_one("SHOW synchronous_standby_names", &[]).unwrap().get(0);
    assert_eq!(names, "");
    let n: i64 = primary.connect().unwrap().query_one("SELECT count(*) FROM t", &[]).unwrap().get(0);
    assert_eq!(n, 1);

    // A down mirror that answers again stays down until it is recovered.
    mirror.start().unwrap();
    let mut c = tc.coordinator();
    for _ in 0..3 {
        c.batch_execute("SELECT gp_request_fts_probe_scan()").unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(tc.row_state(mdbid), "m d n");
    let history = tc.history();
    assert!(history
        .contains(&format!("FTS: update role, status, and mode for dbid {mdbid} with contentid 0 to m, d, and n")));
}

#[test]
fn hung_primary_fails_over_after_retries_while_others_are_probed_on_time() {
    let tc = TestCluster::new(2);
    // Failing over the hung primary takes 3 attempts of 4 s plus 2 pauses.
    tc.set_fts(1, 4, 2, 1);
    let (p0, m0, m1) = (tc.primary(0), tc.mirror(0), tc.mirror(1));
    let (p0_dbid, m0_dbid, m1_dbid) = (tc.dbid_of(p0), tc.dbid_of(m0), tc.dbid_of(m1));

    let hung = Stopped::new(p0.postmaster_pid().unwrap());
    let hung_at = Instant::now();
    m1.stop("immediate").unwrap();

    // Content 1 is decided on time although content 0's probes hang.
    wait_for(30, "content 1's mirror to be marked down", || tc.row_state(m1_dbid) == "m d n");
    let other_after = hung_at.elapsed();
    assert_eq!(tc.row_state(p0_dbid), "p u s", "content 0 must not fail over before its retries end");
    assert!(other_after < Duration::from_secs(10), "content 1 waited for the hung content: {other_after:?}");

    wait_for(60, "the hung primary to fail over", || tc.row_state(m0_dbid) == "p u n");
    let failover_after = hung_at.elapsed();
    assert!(failover_after >= Duration::from_secs(12), "failed over before timeout x retries: {failover_after:?}");
    assert_eq!(tc.row_state(p0_dbid), "m d n");
    drop(hung);
    // The catalog changes first, then the mirror is promoted.
    wait_for(30, "the promoted mirror to accept writes", || {
        m0.connect().is_ok_and(|mut c| c.batch_execute("CREATE TABLE after_failover (x int)").is_ok())
    });
    eprintln!("content 1 decided after {other_after:?}; hung content failed over after {failover_after:?}");
}

#[test]
fn double_fault_is_recorded_without_promotion_and_cleared_when_primary_returns() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 1, 1, 1);
    let (primary, mirror) = (tc.primary(0), tc.mirror(0));
    let (pdbid, mdbid) = (tc.dbid_of(primary), tc.dbid_of(mirror));

    mirror.stop("immediate").unwrap();
    primary.stop("immediate").unwrap();
    wait_for(30, "the double fault", || {
        tc.history().contains(&"FTS: double fault detected for content id 0".to_string())
    });
    let mut c = tc.coordinator();
    for _ in 0..3 {
        c.batch_execute("SELECT gp_request_fts_probe_scan()").unwrap();
    }
    assert_eq!(tc.row_state(pdbid), "p u s", "no promotion, no role change in a double fault");
    let recorded = tc.history().iter().filter(|h| h.contains("double fault detected")).count();
    assert_eq!(recorded, 1, "the double fault is recorded once");

    primary.start().unwrap();
    let cleared = format!("FTS: content id 0 is out of double fault, dbid {pdbid} is up");
    wait_for(30, "the end of the double fault", || tc.history().contains(&cleared));
    // Its mirror is still gone: after the grace period it is marked down.
    wait_for(30, "the mirror to be marked down", || tc.row_state(mdbid) == "m d n");
    assert_eq!(tc.row_state(pdbid), "p u n");
}

#[test]
fn crashing_backend_on_a_primary_is_not_a_failover() {
    let tc = TestCluster::new(1);
    // A grace period long enough for the mirror to reconnect after the restart.
    tc.set_fts(1, 1, 2, 30);
    let (primary, mirror) = (tc.primary(0), tc.mirror(0));
    let (pdbid, mdbid) = (tc.dbid_of(primary), tc.dbid_of(mirror));
    let mut p = primary.connect().unwrap();
    let backend: i32 = p.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    // SIGKILL of a backend makes the postmaster reinitialize: crash recovery.
    unsafe { libc::kill(backend, libc::SIGKILL) };
    let mut c = tc.coordinator();
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        c.batch_execute("SELECT gp_request_fts_probe_scan()").unwrap();
        assert_eq!(tc.row_state(pdbid).split(' ').next(), Some("p"), "no failover during crash recovery");
    }
    assert_eq!(tc.row_state(mdbid).split(' ').next(), Some("m"));
    wait_for(60, "the pair to be synchronized again", || {
        tc.row_state(pdbid) == "p u s" && tc.row_state(mdbid) == "m u s"
    });
}

#[test]
fn probe_scan_request_shares_rounds_and_settings_are_checked() {
    let tc = TestCluster::new(1);
    tc.set_fts(3600, 1, 0, 0);
    let (primary, mirror) = (tc.primary(0), tc.mirror(0));
    let mdbid = tc.dbid_of(mirror);
    primary.connect().unwrap();
    mirror.stop("immediate").unwrap();
    // With an hour between rounds, only a requested round sees the change.
    let started = Instant::now();
    let mut c = tc.coordinator();
    assert!(c.query_one("SELECT gp_request_fts_probe_scan()", &[]).unwrap().get::<_, bool>(0));
    wait_for(10, "the requested round to mark the mirror down", || {
        c.batch_execute("SELECT gp_request_fts_probe_scan()").unwrap();
        tc.row_state(mdbid) == "m d n"
    });
    assert!(started.elapsed() < Duration::from_secs(10));

    // Callers arriving together share rounds and all return.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let coordinator = tc.cluster.coordinator.clone();
            std::thread::spawn(move || {
                let mut c = coordinator.connect().unwrap();
                c.query_one("SELECT gp_request_fts_probe_scan()", &[]).unwrap().get::<_, bool>(0)
            })
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap());
    }

    for (sql, fragment) in [
        ("ALTER SYSTEM SET gp_recovery.fts_probe_interval = 0", "0 s is outside the valid range"),
        ("ALTER SYSTEM SET gp_recovery.fts_probe_retries = 101", "101 is outside the valid range"),
        ("ALTER SYSTEM SET gp_recovery.mirror_down_grace_period = -1", "outside the valid range"),
        ("ALTER SYSTEM SET gp_recovery.fts_probe_timeout = 'soon'", "invalid value"),
        ("SET gp_recovery.fts_probe_interval = 5", "cannot be changed now"),
    ] {
        let (_, message) = gp_recovery_pg_test::expect_error(&mut c, sql);
        assert!(message.contains(fragment), "{sql}: {message}");
    }
}

#[test]
fn worker_is_restarted_after_it_is_terminated() {
    let tc = TestCluster::new(1);
    let mut c = tc.coordinator();
    let pid_of_worker = |c: &mut postgres::Client| -> Option<i32> {
        c.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'gp_recovery fts'", &[])
            .unwrap()
            .map(|r| r.get(0))
    };
    let first = pid_of_worker(&mut c).expect("the worker runs");
    c.execute("SELECT pg_terminate_backend($1)", &[&first]).unwrap();
    wait_for(30, "the worker to come back", || pid_of_worker(&mut c).is_some_and(|p| p != first));
    assert!(c.query_one("SELECT gp_request_fts_probe_scan()", &[]).unwrap().get::<_, bool>(0));
}

#[test]
fn without_preload_the_catalog_works_and_the_probe_request_says_why_not() {
    let spare = gp_recovery_pg_test::SpareInstance::new(None);
    let mut c = spare.instance.connect().unwrap();
    c.batch_execute("CREATE EXTENSION gp_recovery").unwrap();
    let (code, message) = gp_recovery_pg_test::expect_error(&mut c, "SELECT gp_request_fts_probe_scan()");
    assert_eq!(code, "55000");
    assert_eq!(message, "the fault tolerance service is not running: gp_recovery must be in shared_preload_libraries");
    let report: Vec<String> =
        c.query("SELECT * FROM gp_state_report()", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(report, vec!["Segment Mirroring Status Report", "Physical mirroring is not configured"]);
}

#[test]
fn rule_table_is_visible_in_sql() {
    let tc = TestCluster::new(1);
    let rows = tc
        .coordinator()
        .query("SELECT position, rule, action, reason FROM gp_fts_rules() ORDER BY position", &[])
        .unwrap();
    assert!(rows.len() >= 10);
    let first: String = rows[0].get(1);
    let last: String = rows[rows.len() - 1].get(1);
    assert_eq!((first.as_str(), last.as_str()), ("old_coordinator_writable", "healthy_or_catching_up"));
    assert!(rows.iter().any(|r| r.get::<_, String>(2) == "FailOver"));
}

#[test]
fn other_walsenders_are_not_taken_for_a_dead_mirror() {
    let tc = TestCluster::new(1);
    let (primary, mirror) = (tc.primary(0), tc.mirror(0));
    let (pdbid, mdbid) = (tc.dbid_of(primary), tc.dbid_of(mirror));

    // Logical decoding needs wal_level = logical, that is a restart of the
    // primary, during which the FTS is made patient (and a long grace period
    // keeps the mirror up while it reconnects).
    tc.set_fts(5, 2, 5, 60);
    primary.connect().unwrap().batch_execute("ALTER SYSTEM SET wal_level = logical").unwrap();
    primary.stop("fast").unwrap();
    primary.start().unwrap();
    wait_for(60, "the mirror to stream again", || {
        walsenders(primary)
            .iter()
            .any(|(app, slot)| app == "gp_walreceiver" && slot.as_deref() == Some("internal_wal_replication_slot"))
    });
    assert_eq!((tc.row_state(pdbid), tc.row_state(mdbid)), ("p u s".to_string(), "m u s".to_string()));
    primary.connect().unwrap().batch_execute("CREATE TABLE t (x int)").unwrap();

    // A pg_receivewal that even calls itself gp_walreceiver (without the
    // content's slot), and a logical consumer on a slot of its own.
    let recv_dir = scratch_dir("recv");
    let receivewal =
        Consumer::start(primary, "pg_receivewal", Some("gp_walreceiver"), &["-D", recv_dir.to_str().unwrap()]);
    let recvlogical = Consumer::start(
        primary,
        "pg_recvlogical",
        None,
        &["-d", "postgres", "-S", "gpr_test_logical", "--create-slot", "--start", "-f", "/dev/null"],
    );
    wait_for(30, "both consumers to attach", || walsenders(primary).len() == 3);

    tc.set_fts(1, 1, 2, 2);
    let killed_at = Instant::now();
    kill9(mirror);
    let commit = run_bounded(primary, "INSERT INTO t VALUES (1)", Duration::from_secs(30));
    assert_eq!(commit, Some(Ok(())), "the commit must complete once the mirror is marked down");
    eprintln!("the commit completed {:?} after the mirror was killed", killed_at.elapsed());
    wait_for(10, "the mirror to be marked down", || tc.row_state(mdbid) == "m d n");
    assert_eq!(tc.row_state(pdbid), "p u n");
    // The consumers were attached all along: they did not count as the mirror.
    let attached = walsenders(primary);
    assert_eq!(attached.len(), 2, "{attached:?}");
    let names: String = primary.connect().unwrap().query_one("SHOW synchronous_standby_names", &[]).unwrap().get(0);
    assert_eq!(names, "");

    drop(receivewal);
    drop(recvlogical);
    wait_for(10, "the consumers to detach", || walsenders(primary).is_empty());
    primary.connect().unwrap().batch_execute("SELECT pg_drop_replication_slot('gpr_test_logical')").unwrap();
    let _ = std::fs::remove_dir_all(&recv_dir);
}

#[test]
fn primary_refusing_the_probe_is_not_failed_over() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 1, 1, 2);
    let (primary, mirror) = (tc.primary(0), tc.mirror(0));
    let (pdbid, mdbid) = (tc.dbid_of(primary), tc.dbid_of(mirror));
    let hba = primary.datadir.join("pg_hba.conf");
    let original = std::fs::read_to_string(&hba).unwrap();
    let reload = || {
        gpdemo::run(gpdemo::pg_command("pg_ctl").arg("reload").arg("-D").arg(&primary.datadir)).unwrap();
        // The postmaster rereads pg_hba.conf when it handles SIGHUP.
        std::thread::sleep(Duration::from_millis(500));
    };
    // Every TCP session but replication is rejected (the mirror keeps streaming).
    std::fs::write(&hba, format!("host all all 0.0.0.0/0 reject\n{original}")).unwrap();
    reload();
    assert!(primary.connect().is_err(), "pg_hba.conf should reject the probe now");

    let mut c = tc.coordinator();
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        c.batch_execute("SELECT gp_request_fts_probe_scan()").unwrap();
        assert_eq!(tc.row_state(pdbid), "p u s", "a primary that refuses the probe is alive");
        assert_eq!(tc.row_state(mdbid), "m u s");
    }
    let log = std::fs::read_to_string(&tc.cluster.coordinator.logfile).unwrap_or_default();
    assert!(log.contains("rule primary_refuses_probe"), "the refusal is logged");

    std::fs::write(&hba, original).unwrap();
    reload();
    primary
        .connect()
        .unwrap()
        .batch_execute("CREATE TABLE after_refusal (x int); INSERT INTO after_refusal VALUES (1)")
        .unwrap();
    c.batch_execute("SELECT gp_request_fts_probe_scan()").unwrap();
    assert_eq!((tc.row_state(pdbid), tc.row_state(mdbid)), ("p u s".to_string(), "m u s".to_string()));
}

#[test]
fn failed_over_primary_that_resumes_is_fenced_and_loses_no_acknowledged_commit() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 1, 2, 2);
    let (primary, mirror) = (tc.primary(0), tc.mirror(0));
    let (pdbid, mdbid) = (tc.dbid_of(primary), tc.dbid_of(mirror));
    primary.connect().unwrap().batch_execute("CREATE TABLE acked (id int PRIMARY KEY)").unwrap();

    // A session opened before the stop commits in a loop (synchronous_commit
    // on, no statement_timeout: a canceled sync-rep wait would report the
    // commit as done) and remembers what the server acknowledged.
    let acked = Arc::new(Mutex::new(Vec::<i32>::new()));
    let ended = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, ended, primary) = (acked.clone(), ended.clone(), primary.clone());
        std::thread::spawn(move || {
            let mut c = primary.connect().unwrap();
            let mut last_error = None;
            for id in 1.. {
                match c.execute("INSERT INTO acked VALUES ($1)", &[&id]) {
                    Ok(_) => acked.lock().unwrap().push(id),
                    Err(e) => {
                        last_error = Some(e.to_string());
                        break;
                    }
                }
            }
            ended.store(true, Ordering::SeqCst);
            last_error
        })
    };
    wait_for(30, "the writer to commit", || acked.lock().unwrap().len() >= 50);

    let postmaster = primary.postmaster_pid().unwrap();
    let stopped = stop_instance(primary);
    wait_for(60, "the failover", || tc.row_state(mdbid) == "p u n" && tc.row_state(pdbid) == "m d n");
    wait_for(60, "the promoted mirror to accept writes", || {
        mirror.connect().is_ok_and(|mut c| c.batch_execute("INSERT INTO acked VALUES (-1)").is_ok())
    });
    let acked_before_resume = acked.lock().unwrap().len();

    // Resumed: it answers as a writable primary until the FTS stops it.
    let resumed_at = Instant::now();
    drop(stopped);
    wait_for(15, "the old primary to be stopped (fenced)", || !gpdemo::process_alive(postmaster));
    eprintln!("fenced {:?} after it resumed", resumed_at.elapsed());
    wait_for(30, "the writer's session to end", || ended.load(Ordering::SeqCst));
    let last_error = writer.join().unwrap();
    eprintln!("the writer's session ended with: {last_error:?}");

    // Nothing acknowledged is missing on the new primary; nothing was
    // acknowledged after the stop (its commits waited for the lost mirror).
    let acked = acked.lock().unwrap().clone();
    let mut new_primary = mirror.connect().unwrap();
    assert_acked_present(&mut new_primary, &acked, "an acknowledged commit is missing on the new primary");
    assert!(acked.len() <= acked_before_resume + 1, "commits acknowledged by the resumed old primary");

    assert_eq!(tc.row_state(pdbid), "m d n");
    assert_eq!(tc.row_state(mdbid), "p u n");
    let fenced =
        format!("FTS: dbid {pdbid} is down in the catalog but answers as a writable primary: stopping it (fencing)");
    let history = tc.history();
    assert_eq!(history.iter().filter(|h| **h == fenced).count(), 1, "{history:#?}");

    // It is recovered as usual afterwards (pg_rewind over the immediate shutdown).
    let job = tc.submit(&format!("SELECT gp_recover_segment({pdbid})"));
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
    wait_for(60, "the pair to be synchronized", || tc.row_state(pdbid) == "m u s" && tc.row_state(mdbid) == "p u s");
    let n: i64 = primary.connect().unwrap().query_one("SELECT count(*) FROM acked", &[]).unwrap().get(0);
    assert!(n as usize > acked.len(), "the recovered mirror has the new primary's rows");
}

#[test]
fn hung_mirror_stops_blocking_commits_after_the_grace_period() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 1, 2, 2);
    let (primary, mirror) = (tc.primary(0), tc.mirror(0));
    let (pdbid, mdbid) = (tc.dbid_of(primary), tc.dbid_of(mirror));
    primary.connect().unwrap().batch_execute("CREATE TABLE t (x int)").unwrap();

    // The mirror's processes all hang: its walreceiver keeps the connection
    // (the primary's walsender would only give up after wal_sender_timeout).
    let hung = stop_instance(mirror);
    let started = Instant::now();
    let commit = run_bounded(primary, "INSERT INTO t VALUES (1)", Duration::from_secs(30));
    let took = started.elapsed();
    assert_eq!(commit, Some(Ok(())), "the commit must complete once the hung mirror is marked down");
    assert!(took < Duration::from_secs(2 + 10), "the commit waited {took:?}");
    assert_eq!(tc.row_state(mdbid), "m d n");
    assert_eq!(tc.row_state(pdbid), "p u n");
    assert!(tc.history().iter().any(|h| h.contains(&format!("dbid {mdbid} with contentid 0 to m, d, and n"))));
    eprintln!("the commit waited {took:?} for the hung mirror");

    // Resumed, it stays down (in recovery: not fenced) until it is recovered.
    drop(hung);
    let mut c = tc.coordinator();
    for _ in 0..3 {
        c.batch_execute("SELECT gp_request_fts_probe_scan()").unwrap();
    }
    assert_eq!(tc.row_state(mdbid), "m d n");
    assert!(mirror.postmaster_pid().is_some(), "a mirror in recovery is not fenced");
}

#[test]
fn failover_steps_that_failed_are_retried_until_they_succeed() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 1, 2, 2);
    let mirror = tc.mirror(0);
    let slots = |c: &mut postgres::Client, name: &str| -> i64 {
        c.query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", &[&name]).unwrap().get(0)
    };
    // Every slot the mirror may have is taken (a standby can create physical
    // slots; these reserve no WAL), so creating the content's slot there
    // after its promotion fails.
    let mut m = mirror.connect().unwrap();
    let max: i64 = m
        .query_one(
            "SELECT current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)",
            &[],
        )
        .unwrap()
        .get(0);
    m.batch_execute(&format!(
        "SELECT pg_create_physical_replication_slot('filler_' || g) FROM generate_series(1, {max}) g"
    ))
    .unwrap();
    drop(m);

    let (old, new) = tc.fail_over(0);
    let mut p = mirror.connect().unwrap();
    let mut c = tc.coordinator();
    for _ in 0..3 {
        c.batch_execute("SELECT gp_request_fts_probe_scan()").unwrap();
    }
    assert_eq!(slots(&mut p, "internal_wal_replication_slot"), 0, "no free slot: its creation failed");
    // The steps before it did happen.
    let names: String = p.query_one("SHOW synchronous_standby_names", &[]).unwrap().get(0);
    assert_eq!(names, "");

    // Room again: the content's next rounds create it.
    p.batch_execute("SELECT pg_drop_replication_slot('filler_1')").unwrap();
    wait_for(10, "the slot to be created by a retry", || slots(&mut p, "internal_wal_replication_slot") == 1);
    assert_eq!((tc.row_state(old), tc.row_state(new)), ("m d n".to_string(), "p u n".to_string()));
    let log = std::fs::read_to_string(&tc.cluster.coordinator.logfile).unwrap_or_default();
    assert!(log.contains("rule steps_unfinished"), "the retry is logged");

    // The old primary is recovered from the slot as usual.
    p.batch_execute(&format!("SELECT pg_drop_replication_slot('filler_' || g) FROM generate_series(2, {max}) g"))
        .unwrap();
    let job = tc.submit(&format!("SELECT gp_recover_segment({old})"));
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
}

/// A process this test starts, killed when dropped.
struct Load(Child);

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn saturated_primary_is_not_failed_over_and_a_killed_one_is_noticed_at_once() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 1, 2, 2);
    let (primary, mirror) = (tc.primary(0), tc.mirror(0));
    let (pdbid, mdbid) = (tc.dbid_of(primary), tc.dbid_of(mirror));
    gp_recovery_pg_test::pgbench_init(primary, 10);
    // The service holds one idle connection to the primary.
    wait_for(10, "the fault tolerance service's watch on the primary", || {
        let n: i64 = primary
            .connect()
            .unwrap()
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'gp_recovery fts watch'", &[])
            .unwrap()
            .get(0);
        n == 1
    });
    let stats = |tc: &TestCluster| -> (i64, i64) {
        let row = tc.coordinator().query_one("SELECT rounds_finished, probe_errors FROM gp_fts_stats()", &[]).unwrap();
        (row.get(0), row.get(1))
    };
    let (rounds_before, errors_before) = stats(&tc);

    // 60 s of saturation on 2 cores: 16 pgbench clients writing through
    // synchronous replication, a burner per core and a bit more, and a
    // writer of fsynced 256 MB files.
    let scratch = scratch_dir("saturation");
    let mut load = vec![Load(
        gpdemo::pg_command("pgbench")
            .args(["-h", &primary.host, "-p", &primary.port.to_string(), "-U", &gpdemo::server_user()])
            .args(["-c", "16", "-j", "2", "-T", "60", "-n", "postgres"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("pgbench"),
    )];
    let io = format!(
        "end=$((SECONDS+60)); while [ $SECONDS -lt $end ]; do dd if=/dev/zero of={}/io bs=1M count=256 conv=fsync 2>/dev/null; done",
        scratch.display()
    );
    for script in ["while :; do :; done", "while :; do :; done", "while :; do :; done", io.as_str()] {
        load.push(Load(std::process::Command::new("bash").args(["-c", script]).spawn().expect("bash")));
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        assert!(tc.row_state(pdbid).starts_with("p u"), "the saturated primary was failed over");
        std::thread::sleep(Duration::from_secs(2));
    }
    drop(load);
    let _ = std::fs::remove_dir_all(&scratch);
    let (rounds_after, errors) = stats(&tc);
    assert!(tc.row_state(pdbid).starts_with("p u") && tc.row_state(mdbid).starts_with("m "));
    assert!(rounds_after - rounds_before >= 20, "the probe rounds stalled: {rounds_before} → {rounds_after}");
    let history = tc.history();
    assert!(!history.iter().any(|h| h.starts_with("FTS:") && h.contains("to p, u")), "no promotion: {history:#?}");
    eprintln!("saturated 60 s: {} rounds, {} probe errors", rounds_after - rounds_before, errors - errors_before);

    // Killed, it is noticed through the lost connection, not a round later.
    kill9(primary);
    wait_for(30, "the failover", || tc.row_state(mdbid) == "p u n");
    let log = std::fs::read_to_string(&tc.cluster.coordinator.logfile).unwrap();
    assert!(
        log.contains(&format!("FTS: content 0: the connection to primary dbid {pdbid} was lost; probing it now")),
        "the lost watch is not in the coordinator's log"
    );
}
