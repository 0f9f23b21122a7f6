//! gprecoverseg and gpstate as a DBA runs them, against real clusters: the
//! commands are the binaries of the tools crate, run with the libpq
//! environment of the coordinator. Build them first (`cargo build -p
//! gp_recovery_tools`, which scripts/install-extension.sh does); they are
//! looked for beside this test's own binary, so CARGO_TARGET_DIR is
//! followed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use gp_recovery_pg_test::{kill9, wait_for, TestCluster};

fn bin(name: &str) -> PathBuf {
    // This test runs as <target>/debug/deps/tools-<hash>; the commands are in <target>/debug.
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe.parent().and_then(Path::parent).expect("the target directory");
    let bin = dir.join(name);
    assert!(bin.exists(), "build the commands first (cargo build -p gp_recovery_tools): {} is missing", bin.display());
    bin
}

/// A command with the coordinator's libpq environment (none without a cluster).
fn command(tc: Option<&TestCluster>, name: &str, args: &[&str]) -> Command {
    let mut c = Command::new(bin(name));
    c.args(args);
    for v in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGAPPNAME"] {
        c.env_remove(v);
    }
    if let Some(tc) = tc {
        c.env("PGHOST", gpdemo::ADDRESS)
            .env("PGPORT", tc.cluster.coordinator.port.to_string())
            .env("PGUSER", gpdemo::server_user())
            .env("PGDATABASE", "postgres");
    }
    c
}

/// Runs a command with `input` on its stdin; returns its exit code and
/// everything it printed.
fn run(tc: Option<&TestCluster>, name: &str, args: &[&str], input: &str) -> (i32, String) {
    let mut child = command(tc, name, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    // A command that ends before reading its input closes the pipe: not this test's failure.
    let _ = child.stdin.take().expect("stdin").write_all(input.as_bytes());
    let out = child.wait_with_output().expect("wait");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// The text with runs of spaces made one, to check content, not alignment.
fn squash(text: &str) -> String {
    text.lines()
        .map(|l| l.split(' ').filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_says(out: &str, lines: &[&str]) {
    let squashed = squash(out);
    for line in lines {
        assert!(squashed.contains(line), "missing: {line}\n--- output ---\n{out}");
    }
}

fn job_count(tc: &TestCluster) -> i64 {
    tc.coordinator().query_one("SELECT count(*) FROM gp_recovery_job", &[]).unwrap().get(0)
}

/// (recovery_type, state) of the latest job for a dbid.
fn last_job(tc: &TestCluster, dbid: i16) -> (String, String) {
    let r = tc
        .coordinator()
        .query_one(
            "SELECT recovery_type, state FROM gp_recovery_job WHERE dbid = $1 ORDER BY job_id DESC LIMIT 1",
            &[&dbid],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

fn kill_mirror(tc: &TestCluster, content: usize) -> i16 {
    let dbid = tc.dbid_of(tc.mirror(content));
    kill9(tc.mirror(content));
    wait_for(60, "the mirror to be marked down", || tc.row_state(dbid) == "m d n");
    dbid
}

#[test]
fn the_plan_a_no_then_a_recovery_with_a_and_gpstate_on_a_healthy_cluster() {
    let tc = TestCluster::new(2);
    tc.set_fts(1, 2, 2, 2);
    let m0 = kill_mirror(&tc, 0);
    let jobs_before = job_count(&tc);

    let (code, out) = run(Some(&tc), "gprecoverseg", &[], "n\n");
    assert_eq!(code, 4, "answering no is Greenplum's user abort: {out}");
    assert_says(
        &out,
        &[
            "gprecoverseg:",
            "-[INFO]:-Starting gprecoverseg with args:",
            "Greenplum instance recovery parameters",
            "Recovery type = Standard",
            "Recovery 1 of 1",
            "Synchronization mode = Incremental",
            &format!("Failed instance port = {}", tc.mirror(0).port),
            &format!("Failed instance directory = {}", tc.mirror(0).datadir.display()),
            &format!("Recovery Source instance port = {}", tc.primary(0).port),
            "Recovery Target = in-place",
            "Continue with segment recovery procedure Yy|Nn (default=N):",
            "User abort requested, Exiting...",
        ],
    );
    assert_eq!(job_count(&tc), jobs_before, "no yes, no job");

    let (code, out) = run(Some(&tc), "gprecoverseg", &["-a"], "");
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("Continue with segment recovery procedure"), "-a does not ask: {out}");
    assert_says(
        &out,
        &[
            "Recovery 1 of 1",
            "1 segment(s) to recover",
            &format!("(dbid {m0}): "),
            "Segments successfully recovered.",
            "Use 'gpstate -e' to check progress of WAL sync remaining bytes",
        ],
    );
    assert_eq!(last_job(&tc, m0), ("incremental".to_string(), "succeeded".to_string()));
    assert_eq!(tc.row_state(m0), "m u s");

    let (code, out) = run(Some(&tc), "gprecoverseg", &["-a"], "");
    assert_eq!(code, 0, "{out}");
    assert_says(&out, &["No segments to recover"]);

    wait_for(30, "gpstate -e to find nothing to report", || run(Some(&tc), "gpstate", &["-e"], "").0 == 0);
    let (code, out) = run(Some(&tc), "gpstate", &["-e"], "");
    assert_eq!(code, 0, "{out}");
    assert_says(&out, &["Segment Mirroring Status Report", "All segments are running normally"]);
    let (code, out) = run(Some(&tc), "gpstate", &["-m"], "");
    assert_eq!(code, 0, "{out}");
    assert_says(&out, &["-Current GPDB mirror list and status", "-Type = Group", "Passive Synchronized"]);
    let (code, out) = run(Some(&tc), "gpstate", &["-c"], "");
    assert_eq!(code, 0, "{out}");
    assert_says(&out, &["Primary Active, Mirror Available Synchronized"]);
    let (code, out) = run(Some(&tc), "gpstate", &["-s"], "");
    assert_eq!(code, 0, "{out}");
    assert_says(
        &out,
        &[
            "-Coordinator Configuration & Status",
            &format!("Coordinator port = {}", tc.cluster.coordinator.port),
            "Segment Instance Status Report",
            "Mirror status = Synchronized",
            "Mirror status = Streaming",
            "Database status = Up",
            "Segment status = Up",
        ],
    );
    let (code, out) = run(Some(&tc), "gpstate", &[], "");
    assert_eq!(code, 0, "{out}");
    assert_says(
        &out,
        &[
            "Greenplum instance status summary",
            "Total segment instance count from metadata = 4",
            "Total primary segment failures (at coordinator) = 0",
            "Total number postmaster processes found = 2",
        ],
    );
    let (code, out) = run(Some(&tc), "gpstate", &["-e", "-q"], "");
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("[INFO]"), "-q keeps status messages off the screen: {out}");
}

#[test]
fn full_and_differential_recovery() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    let m0 = kill_mirror(&tc, 0);
    let (code, out) = run(Some(&tc), "gprecoverseg", &["-a", "-F"], "");
    assert_eq!(code, 0, "{out}");
    assert_says(&out, &["Synchronization mode = Full", "Segments successfully recovered."]);
    assert_eq!(last_job(&tc, m0), ("full".to_string(), "succeeded".to_string()));
    assert_eq!(tc.row_state(m0), "m u s");

    kill_mirror(&tc, 0);
    let (code, out) = run(Some(&tc), "gprecoverseg", &["-a", "--differential", "-s"], "");
    assert_eq!(code, 0, "{out}");
    assert_says(&out, &["Synchronization mode = Differential", "Segments successfully recovered."]);
    assert_eq!(last_job(&tc, m0), ("differential".to_string(), "succeeded".to_string()));
    assert_eq!(tc.row_state(m0), "m u s");
}

/// `address|port|datadir` of a dbid, as -o writes it.
fn config_place(tc: &TestCluster, dbid: i16) -> (String, String) {
    let r = tc
        .coordinator()
        .query_one(
            "SELECT address || '|' || port || '|' || datadir, hostname FROM gp_segment_configuration WHERE dbid = $1",
            &[&dbid],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

#[test]
fn output_and_input_files_and_new_hosts() {
    let tc = TestCluster::new(2);
    tc.set_fts(1, 2, 2, 2);
    let m0 = kill_mirror(&tc, 0);
    let m1 = kill_mirror(&tc, 1);
    let (place0, host0) = config_place(&tc, m0);
    let (place1, _) = config_place(&tc, m1);

    let file = tc.dir().join("recover.conf");
    let file_s = file.to_str().unwrap();
    let (code, out) = run(Some(&tc), "gprecoverseg", &["-o", file_s], "");
    assert_eq!(code, 0, "{out}");
    assert_says(&out, &[&format!("Configuration file output to {file_s} successfully.")]);
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines, vec![place0.as_str(), place1.as_str()]);

    // -p: the same places on a new host, written as a relocation.
    let moved = tc.dir().join("relocate.conf");
    let (code, out) = run(Some(&tc), "gprecoverseg", &["-o", moved.to_str().unwrap(), "-p", "sdw9,sdw10"], "");
    assert_eq!(code, 0, "{out}");
    assert_says(&out, &["The following recovery hosts were not needed:", "sdw10"]);
    let relocation = std::fs::read_to_string(&moved).unwrap();
    for (dbid, place) in [(m0, &place0), (m1, &place1)] {
        // The same port and directory: nothing is on sdw9 yet.
        let port_and_dir = place.split_once('|').map(|(_, rest)| rest).unwrap();
        let line = format!("{host0}|{place} sdw9|sdw9|{port_and_dir}");
        assert!(relocation.lines().any(|l| l == line), "dbid {dbid}: {line} not in\n{relocation}");
    }
    // Its plan, answered no: nothing runs on the host that does not exist.
    let jobs_before = job_count(&tc);
    let (code, out) = run(Some(&tc), "gprecoverseg", &["-p", "sdw9"], "n\n");
    assert_eq!(code, 4, "{out}");
    assert_says(
        &out,
        &[
            "Recovery type = Pool Host",
            "Pool host for recovery = sdw9",
            "Recovery 2 of 2",
            "Synchronization mode = Full",
            "Recovery Target instance host = sdw9",
            &format!("Recovery Target instance directory = {}", tc.mirror(0).datadir.display()),
        ],
    );
    assert_eq!(job_count(&tc), jobs_before);

    // -i: the file back, content 1's line made a full recovery.
    let edited: String =
        text.lines().map(|l| if l == place1 { format!("F|{l}\n") } else { format!("{l}\n") }).collect();
    std::fs::write(&file, edited).unwrap();
    let (code, out) = run(Some(&tc), "gprecoverseg", &["-a", "-i", file_s], "");
    assert_eq!(code, 0, "{out}");
    assert_says(
        &out,
        &[
            "Recovery from configuration -i option supplied",
            "Synchronization mode = Incremental",
            "Synchronization mode = Full",
            "2 segment(s) to recover",
            "Segments successfully recovered.",
        ],
    );
    assert_eq!(last_job(&tc, m0), ("incremental".to_string(), "succeeded".to_string()));
    assert_eq!(last_job(&tc, m1), ("full".to_string(), "succeeded".to_string()));
    assert_eq!(tc.row_state(m0), "m u s");
    assert_eq!(tc.row_state(m1), "m u s");
}

#[test]
fn rebalance_with_and_without_the_replay_lag_guard() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    let (code, out) = run(Some(&tc), "gprecoverseg", &["-r", "-a"], "");
    assert_eq!(code, 0, "{out}");
    assert_says(&out, &["No segments are running in their non-preferred role and need to be rebalanced."]);

    tc.switch_all_roles();
    let (p0, m0) = (tc.dbid_of(tc.primary(0)), tc.dbid_of(tc.mirror(0)));
    // Switched pairs need attention: gpstate -m warns and says so by its exit
    // code. The password of a -d connection string is never printed.
    let conninfo = format!(
        "host={} port={} user={} password=s3cr3t-pw dbname=postgres",
        gpdemo::ADDRESS,
        tc.cluster.coordinator.port,
        gpdemo::server_user()
    );
    let (code, out) = run(None, "gpstate", &["-m", "-d", &conninfo], "");
    assert_eq!(code, 1, "{out}");
    assert_says(&out, &["Acting as Primary"]);
    assert!(!out.contains("s3cr3t") && out.contains("password=********"), "{out}");
    let mut mirror = tc.lag_the_switched_mirror();

    let (code, out) = run(Some(&tc), "gprecoverseg", &["-r", "-a", "--replay-lag", "0"], "");
    assert_eq!(code, 2, "Greenplum's exit code when the replay lag stops a rebalance: {out}");
    assert_says(
        &out,
        &[
            "Recovery type = Rebalance",
            "Unbalanced segment 1 of 2",
            "Unbalanced segment 2 of 2",
            "Balanced role = Primary",
            "Current role = Mirror",
            "Allowed replay lag during rebalance is 0 GB",
            "bytes of WAL are still to be replayed",
            "--disable-replay-lag to disable the check",
        ],
    );
    assert_eq!(tc.row_state(m0), "p u s", "still switched");

    // A switchover waits for the mirror to replay, so it replays again; the
    // check is off, whatever the lag.
    mirror.batch_execute("SELECT pg_wal_replay_resume()").unwrap();
    let (code, out) = run(Some(&tc), "gprecoverseg", &["-r", "-a", "--disable-replay-lag"], "");
    assert_eq!(code, 0, "{out}");
    assert_says(&out, &["The replay lag check is disabled", "The rebalance operation has completed successfully."]);
    let rebalance: String = tc
        .coordinator()
        .query_one(
            "SELECT state FROM gp_recovery_job WHERE recovery_type = 'rebalance' ORDER BY job_id DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rebalance, "succeeded");
    assert_eq!(tc.row_state(p0), "p u s");
    assert_eq!(tc.row_state(m0), "m u s");
}

#[test]
fn bad_flag_combinations_exit_2_with_greenplum_s_messages() {
    let cases: &[(&[&str], &str)] = &[
        (&["-F", "--differential"], "Only one of -F and --differential may be specified"),
        (&["-p", "sdw9", "-r"], "Only one of -p and -r may be specified"),
        (&["-i", "f", "-r"], "Only one of -i, -p and -r may be specified"),
        (&["-r", "--differential"], "Only one of -p, -r and --differential may be specified"),
        (&["-o", "f", "--differential"], "Invalid -o provided with --differential argument"),
        (&["-i", "f", "-o", "g"], "Invalid -i provided with -o argument"),
        (&["-r", "-o", "f"], "Invalid -r provided with -o argument"),
        (&["--disable-replay-lag"], "--disable-replay-lag should be used only with -r"),
        (&["-F", "-r"], "-F option is not supported with -r option"),
        (&["-F", "-p", "sdw9"], "-F option is not supported with -p option"),
        (&["-B", "0"], "Invalid parallelDegree value provided with -B argument: 0"),
        (&["-b", "129"], "Invalid parallelPerHost value provided with -b argument: 129"),
        (&["extra"], "too many arguments: only options may be specified"),
    ];
    for (args, message) in cases {
        let (code, out) = run(None, "gprecoverseg", args, "");
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(out.contains(&format!("-[ERROR]:-gprecoverseg: error: {message}")), "{args:?}: {out}");
    }
    let (code, out) = run(None, "gprecoverseg", &["--no-such-flag"], "");
    assert_eq!(code, 2, "{out}");
    for conninfo in ["host=x password='s3cr3t-pw", "postgresql://u:s3cr3t-pw@/db?port=x", "password=s3cr3t-pw hots=x"] {
        let (code, out) = run(None, "gprecoverseg", &["-a", "-d", conninfo], "");
        assert_eq!(code, 2, "{conninfo}: {out}");
        assert!(!out.contains("s3cr3t"), "{conninfo}: the password was printed: {out}");
    }
    let (code, out) = run(None, "gpstate", &["-e", "-m"], "");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("gpstate: error: Too many output options specified"), "{out}");
    let (code, out) = run(None, "gprecoverseg", &["--help"], "");
    assert_eq!(code, 0, "{out}");
    for option in [
        "Force full segment resynchronization",
        "Spare new hosts to which to recover segments",
        "Rebalance synchronized segments",
    ] {
        assert!(out.contains(option), "{option}: {out}");
    }
}

#[test]
fn ctrl_c_cancels_a_slowed_copy_and_gpstate_shows_it_in_recovery() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    let m0 = kill_mirror(&tc, 0);
    tc.set_rate(1024);
    let child = command(Some(&tc), "gprecoverseg", &["-a", "-F"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gprecoverseg");
    let pid = i32::try_from(child.id()).expect("pid");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let mut c = tc.coordinator();
    wait_for(90, "the copy to make progress", || {
        c.query_opt(
            "SELECT 1 FROM gp_recovery_progress WHERE dbid = $1 AND phase = 'copying' AND bytes_done > 0",
            &[&m0],
        )
        .unwrap()
        .is_some()
    });

    let (code, out) = run(Some(&tc), "gpstate", &["-e"], "");
    assert_eq!(code, 1, "{out}");
    assert_says(
        &out,
        &["Segments in recovery", "Completed bytes (kB)", &format!("{} full copying", tc.mirror(0).port)],
    );
    assert!(!out.contains("All segments are running normally"), "{out}");
    let (code, out) = run(Some(&tc), "gpstate", &["-m"], "");
    assert_eq!(code, 1, "{out}");
    assert_says(&out, &["Failed <<<<<<<<", "1 segment(s) configured as mirror(s) have failed"]);

    // SAFETY: interrupts the gprecoverseg this test started.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let out = match rx.recv_timeout(Duration::from_secs(180)) {
        Ok(out) => out.expect("gprecoverseg's output"),
        Err(_) => {
            // SAFETY: ends the gprecoverseg this test started, which did not stop.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("gprecoverseg did not end after SIGINT");
        }
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_says(
        &text,
        &[
            &format!("(dbid {m0}): copying"),
            "Recieved SIGINT signal, terminating gprecoverseg",
            "Canceling recovery job",
            "Failed to recover the following segments",
            "canceled",
            "gprecoverseg process was interrupted by the user.",
            "gprecoverseg failed. Please check the output for more details.",
        ],
    );
    assert_eq!(last_job(&tc, m0), ("full".to_string(), "canceled".to_string()));
    assert_eq!(tc.row_state(m0), "m d n", "the segment left down");

    tc.set_rate(0);
    let (code, out) = run(Some(&tc), "gprecoverseg", &["-a", "-F"], "");
    assert_eq!(code, 0, "recovered after the cancel: {out}");
    assert_eq!(tc.row_state(m0), "m u s");
}

/// `-p HOST`: the failed segments move onto a new host, keeping their data
/// directory path and port (Greenplum's rule). On the demo's one file
/// system, the dead host's disk is gone first (its directory removed), so
/// the path is free for the new host.
#[test]
fn a_dead_host_s_segment_moves_onto_a_new_host_with_p() {
    const HOSTS: [&str; 2] = ["127.0.0.2", "127.0.0.3"];
    const NEW: &str = "127.0.0.4";
    let tc = TestCluster::on_hosts(1, &HOSTS);
    tc.set_fts(1, 2, 2, 2);
    gp_recovery_pg_test::pgbench_init(tc.primary(0), 1);
    let m0 = tc.dbid_of(tc.mirror(0));
    gpdemo::sshd::fail_host(tc.dir(), HOSTS[1]).unwrap();
    wait_for(60, "the mirror on the dead host to be marked down", || tc.row_state(m0) == "m d n");
    std::fs::remove_dir_all(&tc.mirror(0).datadir).unwrap();
    gpdemo::sshd::add_host(tc.dir(), NEW).unwrap();
    let (code, out) = run(Some(&tc), "gprecoverseg", &["-a", "-s", "-p", NEW], "");
    assert_eq!(code, 0, "{out}");
    let row: String = tc
        .coordinator()
        .query_one(
            "SELECT hostname || ' ' || port || ' ' || datadir FROM gp_segment_configuration WHERE dbid = $1",
            &[&m0],
        )
        .unwrap()
        .get(0);
    assert_eq!(row, format!("{NEW} {} {}", tc.mirror(0).port, tc.mirror(0).datadir.display()), "{out}");
    assert_eq!(last_job(&tc, m0), ("full".to_string(), "succeeded".to_string()));
    wait_for(60, "the moved mirror to be synchronized", || tc.row_state(m0) == "m u s");
    let moved = gpdemo::Instance {
        host: NEW.into(),
        namespace: Some(gpdemo::hostns::ns_file(tc.dir(), NEW)),
        ..tc.mirror(0).clone()
    };
    gp_recovery_pg_test::assert_same_data(tc.primary(0), &moved);
}

#[test]
fn gpinitstandby_builds_and_removes_the_standby_and_gpstate_f_shows_it() {
    let tc = TestCluster::new(1);
    let port = gpdemo::free_port_range(1).expect("a free port").to_string();
    let dir = tc.dir().join("standby").display().to_string();
    let (code, out) = run(Some(&tc), "gpstate", &["-f"], "");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Standby coordinator instance not configured"), "{out}");
    // No at the prompt: nothing is built.
    let (code, out) = run(Some(&tc), "gpinitstandby", &["-s", "localhost", "-P", &port, "-S", &dir], "n\n");
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("Greenplum standby coordinator port") && !Path::new(&dir).exists(), "{out}");
    let (code, out) = run(Some(&tc), "gpinitstandby", &["-s", "localhost", "-P", &port, "-S", &dir, "-a"], "");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Successfully created standby coordinator on localhost"), "{out}");
    let mut c = tc.coordinator();
    wait_for(60, "the standby to be synchronized", || {
        c.query_one("SELECT mode::text FROM gp_segment_configuration WHERE content = -1 AND role = 'm'", &[])
            .map(|r| r.get::<_, String>(0) == "s")
            .unwrap_or(false)
    });
    let (code, out) = run(Some(&tc), "gpstate", &["-f"], "");
    assert_eq!(code, 0, "{out}");
    let text = squash(&out);
    assert!(text.contains("Standby status = Standby host passive"), "{out}");
    assert!(text.contains("-WAL Sender State: streaming") && text.contains("-Sync state: sync"), "{out}");
    let (code, out) = run(Some(&tc), "gpinitstandby", &["-s", "localhost", "-P", "7999", "-S", "/tmp/x", "-a"], "");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("already configured"), "{out}");
    let (code, out) = run(Some(&tc), "gpinitstandby", &["-r", "-a"], "");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Successfully removed standby coordinator"), "{out}");
    let (code, out) = run(Some(&tc), "gpstate", &["-f"], "");
    assert!(code == 0 && out.contains("Standby coordinator instance not configured"), "{out}");

    // Built again, then activated with gpactivatestandby run against the standby.
    let (code, out) = run(Some(&tc), "gpinitstandby", &["-s", "localhost", "-P", &port, "-S", &dir, "-a"], "");
    assert_eq!(code, 0, "{out}");
    let on_standby = |args: &[&str]| {
        let mut c = command(Some(&tc), "gpactivatestandby", args);
        c.env("PGPORT", &port).stdin(Stdio::null());
        let out = c.output().expect("gpactivatestandby");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    };
    let (code, out) = on_standby(&["-a"]);
    assert_eq!(code, 2, "refused while the coordinator answers: {out}");
    assert!(out.contains("still answers as this cluster's writable coordinator"), "{out}");
    kill9(&tc.cluster.coordinator);
    let (code, out) = on_standby(&["-a"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("The activation of the standby coordinator (dbid"), "{out}");
}
