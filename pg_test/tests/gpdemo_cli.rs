//! `gpdemo create` / `env` / `destroy` through the real command, as a DBA runs it.

use std::path::PathBuf;
use std::process::Command;

use gp_recovery_pg_test::{scratch_dir, table_checksum};
use gpdemo::{Cluster, MIRROR_APPLICATION_NAME};

fn gpdemo_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/gpdemo");
    assert!(bin.exists(), "build the gpdemo command first (cargo build -p gpdemo)");
    bin
}

fn gpdemo(args: &[&str]) -> (bool, String) {
    let out = Command::new(gpdemo_bin()).args(args).output().expect("run gpdemo");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn create_three_pairs_env_and_destroy() {
    let dir = scratch_dir("cli");
    std::fs::remove_dir(&dir).unwrap();
    let dir_s = dir.to_str().unwrap().to_string();
    let base = gpdemo::free_port_range(7).unwrap();
    let (ok, out) = gpdemo(&["create", "--dir", &dir_s, "--pairs", "3", "--port", &base.to_string()]);
    // Destroy even when an assertion below fails.
    struct Guard(PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = Cluster::destroy(&self.0);
        }
    }
    let _guard = Guard(dir.clone());
    assert!(ok, "gpdemo create failed: {out}");
    assert!(out.contains(&format!("psql -h 127.0.0.1 -p {base}")), "{out}");

    // 7 running instances on the documented ports.
    let cluster = Cluster::layout(&dir, 3, base);
    let ports: Vec<u16> = cluster.instances().map(|i| i.port).collect();
    assert_eq!(ports, (base..base + 7).collect::<Vec<_>>());
    for i in cluster.instances() {
        assert!(i.postmaster_pid().is_some(), "{} is not running", i.name());
    }

    // On each primary, its mirror streams as the synchronous standby through the slot.
    for p in &cluster.primaries {
        let mut c = p.connect().unwrap();
        let row = c
            .query_one(
                "SELECT r.state, r.sync_state, s.active FROM pg_stat_replication r \
                 JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE r.application_name = $1",
                &[&MIRROR_APPLICATION_NAME],
            )
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "streaming");
        assert_eq!(row.get::<_, String>(1), "sync");
        assert!(row.get::<_, bool>(2));
        let hints: String = c.query_one("SHOW wal_log_hints", &[]).unwrap().get(0);
        assert_eq!(hints, "on");
    }

    // Data written on a primary is on its mirror: same row count and checksum.
    let mut p = cluster.primaries[1].connect().unwrap();
    p.batch_execute(
        "SET synchronous_commit = remote_apply; CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v \
         FROM generate_series(1, 5000) g",
    )
    .unwrap();
    let mut m = cluster.mirrors[1].connect().unwrap();
    assert_eq!(table_checksum(&mut p, "t"), table_checksum(&mut m, "t"));
    assert_eq!(table_checksum(&mut m, "t").0, 5000);

    // env prints settings that reach the coordinator.
    let (ok, env) = gpdemo(&["env", "--dir", &dir_s]);
    assert!(ok, "{env}");
    assert!(env.contains(&format!("export PGPORT={base}")), "{env}");
    assert!(env.contains("export PGHOST=127.0.0.1"), "{env}");

    // A second create in the same directory is refused, and changes nothing.
    let (ok, out) = gpdemo(&["create", "--dir", &dir_s, "--port", &(base + 100).to_string()]);
    assert!(!ok);
    assert!(out.contains("a demo cluster already exists"), "{out}");

    let pids: Vec<i32> = cluster.instances().filter_map(|i| i.postmaster_pid()).collect();
    assert_eq!(pids.len(), 7);
    // A postmaster that came up after destroy's stop pass (a recovery step's
    // pg_ctl start in flight) has no postmaster.pid to be found by yet.
    let late = &cluster.primaries[2];
    std::fs::rename(late.datadir.join("postmaster.pid"), dir.join("late.pid")).unwrap();
    let (ok, out) = gpdemo(&["destroy", "--dir", &dir_s]);
    assert!(ok, "{out}");
    assert!(!dir.exists());
    // pg_ctl returns once postmaster.pid is gone; the process exits right after.
    gpdemo::wait_until(std::time::Duration::from_secs(10), "the postmasters to exit", || {
        !pids.iter().any(|p| gpdemo::process_alive(*p))
    })
    .expect("every postmaster exits after destroy, the late one too");
    assert!(gpdemo::port_free(late.port), "port {} is still held after destroy", late.port);
}

#[test]
fn create_refuses_bad_arguments() {
    for (args, expected) in [
        (vec!["create", "--pairs", "0"], "--pairs takes a number from 1 to 64"),
        (vec!["create", "--port", "80"], "--port takes a port number from 1024"),
        (vec!["create", "--dir", "relative/dir"], "--dir must be an absolute path"),
        (vec!["create", "--bogus"], "unknown option --bogus"),
        (vec!["frobnicate"], "unknown command frobnicate"),
        (vec!["create", "--hosts", "10.0.0.5"], "--hosts takes loopback addresses other than 127.0.0.1"),
        (vec!["fail-host"], "fail-host needs a HOST"),
        (vec!["fail-host", "127.0.0.2", "--dir", "/nonexistent/gpdemo"], "/nonexistent/gpdemo has no segment hosts"),
    ] {
        let (ok, out) = gpdemo(&args);
        assert!(!ok, "{args:?} should fail");
        assert!(out.contains(expected), "{args:?}: {out}");
    }
}

#[test]
fn create_refuses_a_busy_port() {
    let dir = scratch_dir("busy");
    std::fs::remove_dir(&dir).unwrap();
    let base = gpdemo::free_port_range(3).unwrap();
    let _listener = std::net::TcpListener::bind(("127.0.0.1", base + 2)).unwrap();
    let (ok, out) = gpdemo(&["create", "--dir", dir.to_str().unwrap(), "--pairs", "1", "--port", &base.to_string()]);
    assert!(!ok);
    assert!(out.contains(&format!("port {} is already in use", base + 2)), "{out}");
    assert!(!dir.join("coordinator").exists(), "nothing is created when a port is busy");
    let _ = Cluster::destroy(&dir);
}

#[test]
fn a_port_taken_after_the_check_is_reported_as_busy() {
    let tc = gp_recovery_pg_test::TestCluster::new(1);
    let mirror = tc.mirror(0);
    mirror.stop("fast").unwrap();
    // Another process binds the port between the check and the start.
    let listener = std::net::TcpListener::bind((gpdemo::ADDRESS, mirror.port)).unwrap();
    match mirror.start() {
        Err(gpdemo::DemoError::PortInUse(port)) => assert_eq!(port, mirror.port),
        other => panic!("expected port {} in use, got {other:?}", mirror.port),
    }
    drop(listener);
    // An earlier bind failure in the log does not mislabel a later failure.
    gpdemo::append_server_file(&mirror.datadir.join("postgresql.auto.conf"), "shared_buffers = 'nonsense'\n").unwrap();
    match mirror.start() {
        Err(gpdemo::DemoError::Command { .. }) => {}
        other => panic!("expected pg_ctl to fail on the bad setting, got {other:?}"),
    }
}
