//! The standby coordinator: built by gp_init_standby while the coordinator
//! commits, watched like a mirror (SIGKILL: marked down, the coordinator's
//! commits go on), recovered like one, idle while in recovery, and removed.

use gp_recovery_pg_test::{
    assert_acked_present, expect_error, kill9, row_state_on, wait_for, Instance, TestCluster, Writer,
};
use postgres::Client;

/// The standby's row state ("m u s"), or "" when there is none.
fn standby_state(c: &mut Client) -> String {
    c.query_opt(
        "SELECT role::text || ' ' || status::text || ' ' || mode::text FROM gp_segment_configuration \
          WHERE content = -1 AND role = 'm'",
        &[],
    )
    .unwrap()
    .map(|r| r.get(0))
    .unwrap_or_default()
}

fn setting(c: &mut Client, name: &str) -> String {
    c.query_one(&format!("SHOW {name}"), &[]).unwrap().get(0)
}

/// Ends when the standby has replayed everything the coordinator has written so far.
fn wait_replayed(coordinator: &mut Client, standby: &Instance) {
    let lsn: String = coordinator.query_one("SELECT pg_current_wal_lsn()::text", &[]).unwrap().get(0);
    let mut s = standby.connect().unwrap();
    wait_for(30, "the standby to replay the coordinator's WAL", || {
        s.query_one("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", &[&lsn]).unwrap().get(0)
    });
}

fn build_standby(tc: &TestCluster) -> (Instance, i16) {
    let port = gpdemo::free_port_range(1).expect("a free port");
    let datadir = tc.dir().join("standby");
    let standby = Instance {
        content: -1,
        role: 'm',
        host: gpdemo::ADDRESS.into(),
        port,
        logfile: tc.dir().join("standby.gp_recovery.log"),
        datadir,
        namespace: None,
    };
    let job = tc.submit(&format!("SELECT gp_init_standby('localhost', {port}, '{}')", standby.datadir.display()));
    tc.wait_job(job).expect("the standby is built");
    let mut c = tc.coordinator();
    wait_for(60, "the standby to be marked synchronized", || standby_state(&mut c) == "m u s");
    let dbid = tc.dbid_of(&standby);
    (standby, dbid)
}

#[test]
fn a_standby_is_built_while_the_coordinator_commits_and_kept_or_dropped_like_a_mirror() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 1, 2);
    let mut c = tc.coordinator();
    c.batch_execute("CREATE TABLE acked (id int PRIMARY KEY)").unwrap();
    let coordinator = tc.cluster.coordinator.clone();
    let writer = Writer::start([coordinator.clone(), coordinator.clone()]);
    let (standby, dbid) = build_standby(&tc);

    // Built under load: the coordinator's commits now wait for it, and every
    // acknowledged one is there.
    assert_eq!(setting(&mut c, "synchronous_standby_names"), "gp_walreceiver");
    let (acked, _) = writer.stop();
    assert!(acked.len() > 10, "the client committed during the build: {}", acked.len());
    wait_replayed(&mut c, &standby);
    let mut s = standby.connect().unwrap();
    assert_acked_present(&mut s, &acked, "a commit acknowledged while the standby was built is missing on it");
    let sysids: Vec<String> = c
        .query("SELECT system_identifier FROM gp_segment_identity WHERE dbid = 1 OR dbid = $1", &[&dbid])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(sysids.len() == 2 && sysids[0] == sysids[1], "the standby is the coordinator's copy: {sysids:?}");
    assert!(tc.history().iter().any(|h| h.starts_with("gpinitstandby: inserted standby coordinator")));

    // On the standby, gp_recovery takes no decision: both workers wait, and say so.
    for worker in ["fault tolerance service", "recovery worker"] {
        let said = format!("gp_recovery {worker}: this instance is in recovery");
        wait_for(10, &said, || std::fs::read_to_string(&standby.logfile).unwrap_or_default().contains(&said));
    }

    // A second standby, or one onto the coordinator's own directory: a clear ERROR, nothing changed.
    let before = gp_recovery_pg_test::catalog_snapshot(&mut c);
    let (_, e) = expect_error(&mut c, "SELECT gp_init_standby('localhost', 7999, '/tmp/elsewhere')");
    assert!(e.contains("already has a standby") && e.contains("gp_remove_standby"), "{e}");
    assert_eq!(gp_recovery_pg_test::catalog_snapshot(&mut c), before);

    // SIGKILL: within the grace period plus a probe it is marked down and the
    // coordinator's commits go on.
    let writer = Writer::start([coordinator.clone(), coordinator.clone()]);
    kill9(&standby);
    wait_for(60, "the standby to be marked down", || standby_state(&mut c) == "m d n");
    assert_eq!(setting(&mut c, "synchronous_standby_names"), "");
    let at_mark = writer.acked().len();
    wait_for(10, "coordinator commits after the standby was marked down", || writer.acked().len() > at_mark + 5);

    // Recovered like a mirror: incremental, then synchronized again with every commit.
    let job = tc.submit(&format!("SELECT gp_recover_segment({dbid}, 'incremental')"));
    tc.wait_job(job).expect("the standby is recovered");
    wait_for(60, "the standby to be synchronized again", || standby_state(&mut c) == "m u s");
    let (acked, _) = writer.stop();
    wait_replayed(&mut c, &standby);
    let mut s = standby.connect().unwrap();
    assert_acked_present(&mut s, &acked, "a commit acknowledged around the standby's death is missing on it");
    drop(s);

    // Removed: stopped, its slot dropped, the coordinator no longer waits for it.
    let removed: bool = c.query_one("SELECT gp_remove_standby()", &[]).unwrap().get(0);
    assert!(removed);
    assert_eq!(standby_state(&mut c), "");
    assert_eq!(setting(&mut c, "synchronous_standby_names"), "");
    assert!(standby.postmaster_pid().is_none(), "the standby was stopped");
    let slots: i64 = c.query_one("SELECT count(*) FROM pg_replication_slots", &[]).unwrap().get(0);
    assert_eq!(slots, 0);
    c.batch_execute("INSERT INTO acked VALUES (-1)").unwrap();
    assert!(tc.history().iter().any(|h| h.starts_with("gpinitstandby: removed standby coordinator")));
    let (_, e) = expect_error(&mut c, "SELECT gp_remove_standby()");
    assert!(e.contains("has no standby"), "{e}");
}

#[test]
fn a_standby_is_never_built_over_a_live_instance() {
    let tc = TestCluster::new(1);
    let mut c = tc.coordinator();
    let before = gp_recovery_pg_test::catalog_snapshot(&mut c);
    let coordinator = &tc.cluster.coordinator;
    let primary = tc.primary(0);
    // The coordinator's directory through a symlink, a primary's port, a primary's directory.
    let link = tc.dir().join("link-to-coordinator");
    std::os::unix::fs::symlink(&coordinator.datadir, &link).unwrap();
    for (host, port, dir, fragment) in [
        ("localhost", 7999, coordinator.datadir.display().to_string(), "coordinator's data directory"),
        ("localhost", i32::from(primary.port), "/tmp/gpr-standby-x".to_string(), "already used by dbid"),
        ("LOCALHOST", 7999, primary.datadir.display().to_string(), "already used by dbid"),
        ("localhost", 0, "/tmp/gpr-standby-x".to_string(), "port"),
        ("-oProxyCommand=x", 7999, "/tmp/gpr-standby-x".to_string(), "host name"),
    ] {
        let (_, e) = expect_error(&mut c, &format!("SELECT gp_init_standby('{host}', {port}, '{dir}')"));
        assert!(e.contains(fragment), "{host} {port} {dir}: {e}");
    }
    assert_eq!(gp_recovery_pg_test::catalog_snapshot(&mut c), before, "a refused request changes nothing");
    // The symlink passes the catalog's checks (another spelling); the job's
    // identity checks refuse it on the host, before anything is touched.
    let job = tc.submit(&format!("SELECT gp_init_standby('localhost', 7999, '{}')", link.display()));
    let e = tc.wait_job(job).expect_err("a standby over the coordinator's directory");
    assert!(e.contains("coordinator"), "{e}");
    assert!(coordinator.writable(), "the coordinator still runs");
    assert!(coordinator.datadir.join("base").is_dir() && !coordinator.datadir.join("standby.signal").exists());
    assert_eq!(standby_state(&mut c), "m d n", "the standby stays registered, down, for the DBA to retry or remove");
    // Its removal stops nothing there: the coordinator is not the standby.
    assert!(c.query_one("SELECT gp_remove_standby()", &[]).unwrap().get::<_, bool>(0));
    assert!(coordinator.writable(), "the coordinator still runs");
    assert_eq!(gp_recovery_pg_test::catalog_snapshot(&mut c).0, before.0);
}

fn epoch(instance: &Instance) -> i64 {
    let sql =
        "SELECT coalesce(max(split_part(c, '=', 2)::bigint), 0) FROM pg_db_role_setting s, unnest(s.setconfig) c \
               WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = 'postgres') \
                 AND c LIKE 'gp_recovery.coordinator_epoch=%'";
    instance.connect().unwrap().query_one(sql, &[]).unwrap().get(0)
}

fn log_says(instance: &Instance, text: &str) -> bool {
    std::fs::read_to_string(&instance.logfile).unwrap_or_default().contains(text)
}

#[test]
fn an_activated_standby_takes_over_and_the_old_coordinator_never_acts_again() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 1, 2);
    let mut c = tc.coordinator();
    c.batch_execute("CREATE TABLE acked (id int PRIMARY KEY)").unwrap();
    let (standby, standby_dbid) = build_standby(&tc);
    let (primary, mirror) = (tc.dbid_of(tc.primary(0)), tc.dbid_of(tc.mirror(0)));
    let mut s = standby.connect().unwrap();

    // While the coordinator answers as this cluster's: refused, nothing changed.
    let (_, e) = expect_error(&mut s, "SELECT gp_activate_standby()");
    assert!(e.contains("dbid 1") && e.contains("still answers as this cluster's writable coordinator"), "{e}");
    assert!(standby.in_recovery());
    let (_, e) = expect_error(&mut c, "SELECT gp_activate_standby()");
    assert!(e.contains("not in recovery"), "on the coordinator itself: {e}");

    // The coordinator SIGKILLed while a client commits to it; then activated.
    let coordinator = tc.cluster.coordinator.clone();
    let writer = Writer::start([coordinator.clone(), coordinator.clone()]);
    wait_for(10, "commits to the coordinator", || writer.acked().len() > 20);
    kill9(&coordinator);
    let (acked, _) = writer.stop();
    drop(c);
    let said: String = s.query_one("SELECT gp_activate_standby()", &[]).unwrap().get(0);
    assert!(said.contains(&format!("standby dbid {standby_dbid} promoted")), "{said}");
    let mut n = standby.connect().unwrap();
    wait_for(30, "the activation to be recorded", || row_state_on(&mut n, standby_dbid) == "p u n");
    assert_eq!(row_state_on(&mut n, 1), "m d n", "the old coordinator is the new one's down mirror");
    let preferred: Vec<String> = n
        .query("SELECT preferred_role::text FROM gp_segment_configuration WHERE content = -1 ORDER BY dbid", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(preferred, ["m", "p"], "preferred roles follow: there is no way back but another activation");
    assert_acked_present(&mut n, &acked, "a commit the old coordinator acknowledged is missing after activation");
    assert_eq!(epoch(&standby), 1);
    wait_for(10, "the primary to keep the new epoch", || epoch(tc.primary(0)) == 1);
    let (_, e) = expect_error(&mut n, "SELECT gp_activate_standby()");
    assert!(e.contains("not in recovery"), "a second activation: {e}");

    // A primary killed now is failed over by the new coordinator.
    kill9(tc.primary(0));
    wait_for(60, "the new coordinator's failover", || row_state_on(&mut n, mirror) == "p u n");
    wait_for(30, "the promoted mirror to keep the new epoch", || epoch(tc.mirror(0)) == 1);

    // The old coordinator started again, with the new one's service held still:
    // it finds a higher epoch, and promotes, marks and recovers nothing.
    let fts: i32 =
        n.query_one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'gp_recovery fts'", &[]).unwrap().get(0);
    let held = gp_recovery_pg_test::Stopped::new(fts);
    // Its orphaned backends and workers must first notice their postmaster is gone.
    wait_for(60, "the old coordinator to start again", || coordinator.start().is_ok());
    for worker in [
        "this one promotes, marks and recovers nothing",
        "gp_recovery recovery worker: another coordinator was activated",
    ] {
        wait_for(30, worker, || log_says(&coordinator, worker));
    }
    let mut old = coordinator.connect().unwrap();
    assert_eq!(row_state_on(&mut old, primary), "p u s", "the old coordinator did not fail the dead primary over");
    assert_eq!(row_state_on(&mut old, standby_dbid), "m u s");
    drop(old);
    // Released, the new coordinator fences it: the old coordinator's database system, in its directory.
    drop(held);
    wait_for(30, "the old coordinator to be fenced", || coordinator.postmaster_pid().is_none());
    assert!(standby.writable(), "the new coordinator runs");
    let history: Vec<String> = n
        .query("SELECT \"desc\" FROM gp_configuration_history ORDER BY time", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        history.iter().any(|h| h.starts_with("gpactivatestandby: update role, status, and mode for dbid")),
        "{history:?}"
    );
}
