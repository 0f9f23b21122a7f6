//! The job engine under crashes and stalls: the jobs worker exits or the
//! coordinator crashes at fault points before and after side effects of
//! every kind of job, while a client commits throughout; a submitter that
//! keeps its transaction open; two relocations onto one place; an
//! interrupted differential copy; a rewound segment whose WAL is gone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gp_recovery_pg_test::{
    assert_acked_present, assert_same_data, expect_error, kill9, pgbench_init, set_setting_on, wait_for, TestCluster,
};
use gpdemo::Instance;

fn set(tc: &TestCluster, setting: &str, value: &str) {
    set_setting_on(&mut tc.coordinator(), setting, value);
}

/// The jobs worker's pid; None while the coordinator does not answer
/// (it restarts after a crash).
fn jobs_worker_pid(tc: &TestCluster) -> Option<i32> {
    tc.cluster
        .coordinator
        .connect()
        .ok()?
        .query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'gp_recovery jobs'", &[])
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

/// (state, error) of a job.
fn job_end(tc: &TestCluster, job: i64) -> (String, String) {
    let row = tc
        .coordinator()
        .query_one("SELECT state, coalesce(error, '') FROM gp_recovery_job WHERE job_id = $1", &[&job])
        .unwrap();
    (row.get(0), row.get(1))
}

fn wait_job_ended(tc: &TestCluster, job: i64) -> (String, String) {
    wait_for(120, "the job to end", || {
        tc.coordinator()
            .query_one("SELECT state NOT IN ('queued', 'running') FROM gp_recovery_job WHERE job_id = $1", &[&job])
            .is_ok_and(|r| r.get(0))
    });
    job_end(tc, job)
}

/// The catalog agrees with what runs: one primary per content, and it is
/// the member that accepts writes (once the fault tolerance service has
/// repeated a lost promotion); up mirrors answer and are in recovery.
fn assert_catalog_matches_reality(tc: &TestCluster, contents: usize) {
    for content in 0..contents {
        let members = [tc.primary(content), tc.mirror(content)];
        wait_for(60, "the catalog's primary to be the one writable member", || {
            let rows = tc
                .coordinator()
                .query(
                    "SELECT port, role::text, status::text FROM gp_segment_configuration WHERE content = $1",
                    &[&(content as i16)],
                )
                .unwrap();
            let primaries: Vec<i32> =
                rows.iter().filter(|r| r.get::<_, String>(1) == "p").map(|r| r.get::<_, i32>(0)).collect();
            let writable: Vec<&Instance> = members.iter().copied().filter(|i| i.writable()).collect();
            let up_mirrors_standby =
                rows.iter().filter(|r| r.get::<_, String>(1) == "m" && r.get::<_, String>(2) == "u").all(|r| {
                    let port = r.get::<_, i32>(0);
                    members.iter().find(|i| i32::from(i.port) == port).is_some_and(|i| i.in_recovery())
                });
            primaries.len() == 1
                && writable.len() == 1
                && i32::from(writable[0].port) == primaries[0]
                && up_mirrors_standby
        });
    }
}

/// A client committing to content 0's acting primary all along; every
/// acknowledged id is kept.
struct Writer<'a> {
    stop: AtomicBool,
    acked: Mutex<Vec<i32>>,
    tc: &'a TestCluster,
}

/// Stops the writer when the test body ends, also by a panic, so the
/// scope that runs it never waits forever.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Writer<'_> {
    fn run(&self) {
        let mut next = 0;
        while !self.stop.load(Ordering::SeqCst) {
            let Some(mut c) = gpdemo::connect_to_primary(&[self.tc.primary(0).clone(), self.tc.mirror(0).clone()])
            else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let _ = c.batch_execute("SET statement_timeout = '20s'");
            while !self.stop.load(Ordering::SeqCst) {
                next += 1;
                if c.execute("INSERT INTO acked VALUES ($1)", &[&next]).is_err() {
                    break;
                }
                self.acked.lock().unwrap().push(next);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Every acknowledged id is on content 0's acting primary.
    fn check(&self) {
        let acked = self.acked.lock().unwrap().clone();
        let mut c = gpdemo::connect_to_primary(&[self.tc.primary(0).clone(), self.tc.mirror(0).clone()]).unwrap();
        assert_acked_present(&mut c, &acked, "acknowledged commits lost");
        assert!(acked.len() > 50, "the writer committed throughout: {}", acked.len());
    }
}

/// The down dbid of content 0 after failing over its acting primary.
fn fail_over_acting(tc: &TestCluster) -> i16 {
    let (p, m) = (tc.primary(0), tc.mirror(0));
    let acting_is_p = tc.writable(0) == Some(p);
    let (acting, other) = if acting_is_p { (p, m) } else { (m, p) };
    tc.fail_over_from(0, acting, other).0
}

fn recover_until_synchronized(tc: &TestCluster, dbid: i16, mode: &str) {
    let job = tc.submit(&format!("SELECT gp_recover_segment({dbid}, '{mode}')"));
    if let Err(e) = tc.wait_job(job) {
        assert!(e.contains("gp_recover_segment"), "a failed retry gives its advice: {e}");
        let job = tc.submit(&format!("SELECT gp_recover_segment({dbid}, 'full')"));
        assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
    }
}

/// Runs `submit` with the jobs worker set to die at `point`; returns the
/// job, ended by the restarted worker's reconcile.
fn crash_at(tc: &TestCluster, point: &str, submit: &str) -> i64 {
    let before = jobs_worker_pid(tc);
    set(tc, "fault_point", point);
    let job = tc.submit(submit);
    // After a crash the coordinator restarts; either way a new worker runs.
    wait_for(90, &format!("the jobs worker to die at {point} and start again"), || {
        let now = jobs_worker_pid(tc);
        now.is_some() && now != before
    });
    set(tc, "fault_point", "");
    let (state, error) = wait_job_ended(tc, job);
    let phase = point.split(':').nth(1).unwrap();
    assert_eq!(state, "failed", "{point}: {error}");
    assert!(error.contains(&format!("interrupted in phase {phase}")), "{point}: {error}");
    job
}

fn cluster_with_writer_table(pairs: u16) -> TestCluster {
    let tc = TestCluster::new(pairs);
    tc.set_fts(1, 2, 2, 2);
    pgbench_init(tc.primary(0), 1);
    tc.primary(0).connect().unwrap().batch_execute("CREATE TABLE acked (id int PRIMARY KEY)").unwrap();
    tc
}

#[test]
fn crash_matrix_of_recoveries() {
    let tc = cluster_with_writer_table(1);
    let writer = Writer { stop: AtomicBool::new(false), acked: Mutex::new(Vec::new()), tc: &tc };
    std::thread::scope(|s| {
        s.spawn(|| writer.run());
        let _stop = StopOnDrop(&writer.stop);
        for (kind, point) in [
            ("incremental", "incremental:rewinding:before:crash"),
            ("incremental", "incremental:rewinding:after"),
            ("incremental", "incremental:starting:after"),
            ("incremental", "incremental:marking up:before"),
            ("differential", "differential:copying:after:crash"),
            ("full", "full:copying:after"),
            ("full", "full:swapping:before:crash"),
            ("full", "full:swapping:after"),
            ("full", "full:catching up:before"),
        ] {
            let down = fail_over_acting(&tc);
            crash_at(&tc, point, &format!("SELECT gp_recover_segment({down}, '{kind}')"));
            assert_catalog_matches_reality(&tc, 1);
            let state = tc.row_state(down);
            if state != "m u s" {
                assert!(state.ends_with("d n") || state == "m u n", "{point}: dbid {down} is {state}");
                if state.ends_with("d n") {
                    recover_until_synchronized(&tc, down, kind);
                }
            }
            wait_for(60, "the pair to be synchronized", || tc.row_state(down) == "m u s");
            let leftovers = std::fs::read_dir(tc.dir())
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().contains(".gp_recovery_new"))
                .count();
            assert_eq!(leftovers, 0, "{point}: no copy left beside a data directory");
        }
        writer.stop.store(true, Ordering::SeqCst);
    });
    writer.check();
    let acting = tc.writable(0).unwrap();
    let other = if acting == tc.primary(0) { tc.mirror(0) } else { tc.primary(0) };
    assert_same_data(acting, other);
}

/// Switches content 0's roles (the preferred primary a synchronized mirror,
/// streaming as the synchronous standby), healing first whatever is down:
/// a backout that restarted the old primary can get its mirror marked down
/// a few seconds later (its walreceiver retries every 5 s, past the 2 s
/// grace period), so a pair is healed again until it stays healthy.
fn switch_roles_of_a_healthy_pair(tc: &TestCluster, preferred_primary: i16, other: i16) {
    for _ in 0..5 {
        for dbid in [preferred_primary, other] {
            if tc.row_state(dbid).contains(" d ") {
                recover_until_synchronized(tc, dbid, "incremental");
            }
        }
        if tc.row_state(preferred_primary).starts_with('p') {
            let down = fail_over_acting(tc);
            recover_until_synchronized(tc, down, "incremental");
        }
        let healthy = gpdemo::wait_until(Duration::from_secs(30), "a switched, synchronized pair", || {
            tc.row_state(preferred_primary) == "m u s"
                && tc.row_state(other) == "p u s"
                && tc.writable(0).and_then(|p| p.connect().ok()).is_some_and(|mut c| {
                    c.query_one(
                        "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'gp_walreceiver' \
                          AND state = 'streaming' AND sync_state = 'sync'",
                        &[],
                    )
                    .is_ok_and(|r| r.get::<_, i64>(0) == 1)
                })
        });
        if healthy.is_ok() {
            return;
        }
    }
    panic!("content 0 never became a switched, synchronized pair");
}

#[test]
fn crash_matrix_of_rebalance_and_relocation() {
    let tc = cluster_with_writer_table(1);
    let writer = Writer { stop: AtomicBool::new(false), acked: Mutex::new(Vec::new()), tc: &tc };
    let preferred_primary = tc.dbid_of(tc.primary(0));
    std::thread::scope(|s| {
        s.spawn(|| writer.run());
        let _stop = StopOnDrop(&writer.stop);
        for point in [
            "rebalance:stopping:after",
            "rebalance:switching roles:after",
            "rebalance:promoting:before:crash",
            "rebalance:promoting:after",
            "rebalance:connecting:before",
        ] {
            let mirror = tc.dbid_of(tc.mirror(0));
            switch_roles_of_a_healthy_pair(&tc, preferred_primary, mirror);
            crash_at(&tc, point, "SELECT * FROM gp_rebalance()");
            assert_catalog_matches_reality(&tc, 1);
            for dbid in [preferred_primary, mirror] {
                if tc.row_state(dbid).contains(" d ") {
                    recover_until_synchronized(&tc, dbid, "incremental");
                }
            }
            wait_for(60, "the pair to be synchronized", || {
                tc.row_state(preferred_primary).ends_with("u s") && tc.row_state(mirror).ends_with("u s")
            });
            // A demoted primary left down by the backout keeps its slot
            // ("no rewind required" touches nothing); as a mirror it must not
            // (found by the fault soak).
            for member in [tc.primary(0), tc.mirror(0)].into_iter().filter(|i| i.in_recovery()) {
                let slots: i64 = member
                    .connect()
                    .unwrap()
                    .query_one("SELECT count(*) FROM pg_replication_slots", &[])
                    .unwrap()
                    .get(0);
                assert_eq!(slots, 0, "{point}: the mirror {} keeps a replication slot", member.name());
            }
        }
        // A relocation interrupted after its copy: the row goes back, the
        // new directory is emptied but kept.
        let down = fail_over_acting(&tc);
        let target = tc.dir().join("moved");
        std::fs::create_dir_all(&target).unwrap();
        let owner = gpdemo::server_user();
        assert!(std::process::Command::new("chown").arg(&owner).arg(&target).status().unwrap().success());
        let sql = format!(
            "SELECT gp_recover_segment({down}, 'full', new_port => 24999, new_datadir => '{}')",
            target.display()
        );
        crash_at(&tc, "relocation:copying:after", &sql);
        assert_catalog_matches_reality(&tc, 1);
        let port: i32 = tc
            .coordinator()
            .query_one("SELECT port FROM gp_segment_configuration WHERE dbid = $1", &[&down])
            .unwrap()
            .get(0);
        assert_ne!(port, 24999, "the catalog row went back to the old place");
        assert!(target.is_dir() && std::fs::read_dir(&target).unwrap().next().is_none(), "emptied, kept");
        recover_until_synchronized(&tc, down, "incremental");
        writer.stop.store(true, Ordering::SeqCst);
    });
    writer.check();
}

#[test]
fn a_submitter_holding_its_transaction_open_blocks_no_other_job() {
    let tc = TestCluster::new(2);
    tc.set_fts(1, 2, 2, 2);
    pgbench_init(tc.primary(0), 5);
    let (down0, _) = tc.fail_over(0);
    let (down1, _) = tc.fail_over(1);
    let job = tc.start_slow_full_recovery(down0);
    let mut holder = tc.coordinator();
    let mut tx = holder.transaction().unwrap();
    let held: i64 = tx.query_one(&format!("SELECT gp_recover_segment({down1})"), &[]).unwrap().get(0);
    tx.batch_execute("SELECT pg_sleep(0.5)").unwrap();
    // The running job still reports progress and takes a cancel.
    let mut c = tc.coordinator();
    let before: i64 = c.query_one("SELECT bytes_done FROM gp_recovery_job WHERE job_id = $1", &[&job]).unwrap().get(0);
    wait_for(30, "the copy to go on", || {
        c.query_one("SELECT bytes_done FROM gp_recovery_job WHERE job_id = $1", &[&job]).unwrap().get::<_, i64>(0)
            > before
    });
    let asked = Instant::now();
    assert!(c.query_one("SELECT gp_recovery_cancel($1)", &[&job]).unwrap().get::<_, bool>(0));
    assert_eq!(tc.wait_job(job).unwrap(), "canceled");
    assert!(asked.elapsed() < Duration::from_secs(10), "cancel took {:?}", asked.elapsed());
    // Another submitter gets an ERROR naming the open transaction, not a hang.
    let (code, message) = expect_error(&mut c, &format!("SELECT gp_recover_segment({down0})"));
    assert_eq!(code, "55P03", "{message}");
    assert!(message.contains("is submitting recovery jobs in a transaction that has not ended"), "{message}");
    tx.commit().unwrap();
    tc.set_rate(0);
    assert_eq!(tc.wait_job(held).unwrap(), "succeeded");
    let job = tc.submit(&format!("SELECT gp_recover_segment({down0})"));
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
    let rows: i64 =
        c.query_one("SELECT count(*) FROM gp_recovery_phases() WHERE recovery_type = 'rebalance'", &[]).unwrap().get(0);
    assert!(rows >= 10);
    let reversible: bool = c
        .query_one(
            "SELECT reversible FROM gp_recovery_phases() WHERE recovery_type = 'rebalance' AND phase = 'promoting'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!reversible, "the promotion is past the point of no return");
}

#[test]
fn two_relocations_onto_one_place_are_refused() {
    let tc = TestCluster::new(2);
    tc.set_fts(1, 2, 2, 2);
    pgbench_init(tc.primary(0), 5);
    pgbench_init(tc.primary(1), 1);
    let (a, _) = tc.fail_over(0);
    let (b, _) = tc.fail_over(1);
    tc.set_rate(2048);
    let new_dir = tc.dir().join("relocated");
    let job = tc.submit(&format!(
        "SELECT gp_recover_segment({a}, 'full', new_port => 24998, new_datadir => '{}')",
        new_dir.display()
    ));
    let mut c = tc.coordinator();
    let (_, message) = expect_error(
        &mut c,
        &format!("SELECT gp_recover_segment({b}, 'full', new_port => 24998, new_datadir => '/var/tmp/elsewhere')"),
    );
    assert!(message.contains(&format!("is the target of recovery job {job}")), "{message}");
    let (_, message) = expect_error(
        &mut c,
        &format!(
            "SELECT gp_recover_segment({b}, 'full', new_port => 24997, new_datadir => '{}/inside')",
            new_dir.display()
        ),
    );
    assert!(message.contains(&format!("is the target of recovery job {job}")), "{message}");
    tc.set_rate(0);
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
}

#[test]
fn an_interrupted_differential_copy_is_never_started() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    pgbench_init(tc.primary(0), 10);
    let down = tc.interrupted_differential();
    let datadir = tc.primary(0).datadir.to_string_lossy().into_owned();
    let copying = std::process::Command::new("pgrep").args(["-f", &format!("rsync .*{datadir}")]).output().unwrap();
    assert!(!copying.status.success(), "rsync still runs after the cancel");
    assert!(std::path::Path::new(&format!("{datadir}.gp_recovery_incomplete")).exists(), "the copy is marked");
    let job = tc.submit(&format!("SELECT gp_recover_segment({down})"));
    let error = tc.wait_job(job).unwrap_err();
    assert!(error.contains("holds an incomplete copy"), "{error}");
    assert!(
        error.contains(&format!("gp_recover_segment({down}, 'differential') or gp_recover_segment({down}, 'full')")),
        "{error}"
    );
    assert!(tc.primary(0).postmaster_pid().is_none(), "the half-copied directory was not started");
    assert_eq!(tc.row_state(down), "m d n");
    let job = tc.submit(&format!("SELECT gp_recover_segment({down}, 'differential')"));
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
    wait_for(60, "the pair to be synchronized", || tc.row_state(down) == "m u s");
    assert_same_data(tc.mirror(0), tc.primary(0));
}

#[test]
fn a_rewound_segment_whose_wal_is_gone_fails_in_bounded_time() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    // The default start and connect bounds (120 s): the start step must see
    // on its own that the standby can never become consistent.
    pgbench_init(tc.primary(0), 1);
    let down = tc.fail_over_and_recycle_wal();
    let started = Instant::now();
    let job = tc.submit(&format!("SELECT gp_recover_segment({down})"));
    let error = tc.wait_job(job).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "ended at the first hopeless log line: {:?}",
        started.elapsed()
    );
    assert!(error.contains("WAL segment") || error.contains("checkpoint record"), "{error}");
    assert!(error.contains(&format!("gp_recover_segment({down}, 'full')")), "{error}");
    assert_eq!(tc.row_state(down), "m d n");
    assert!(tc.primary(0).postmaster_pid().is_none(), "left down");
    kill9_if_running(tc.primary(0));
    let job = tc.submit(&format!("SELECT gp_recover_segment({down}, 'full')"));
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
}

fn kill9_if_running(i: &Instance) {
    if i.postmaster_pid().is_some() {
        kill9(i);
    }
}

#[test]
fn a_source_slower_than_the_probe_timeout_does_not_fail_a_job() {
    let tc = TestCluster::new(1);
    // Failover probes give up after 1 s; a job's own calls have their own
    // patience (gp_recovery.job_call_timeout).
    tc.set_fts(1, 1, 2, 2);
    pgbench_init(tc.primary(0), 1);
    let (down, _) = tc.fail_over(0);
    let source = tc.mirror(0).postmaster_pid().unwrap();
    // Submission probes the source itself; the pause begins once the job is
    // queued, before the worker reaches any call to the source.
    let job = tc.submit(&format!("SELECT gp_recover_segment({down})"));
    let paused = gp_recovery_pg_test::Stopped::new(source);
    std::thread::sleep(Duration::from_secs(3));
    let phase: String =
        tc.coordinator().query_one("SELECT phase FROM gp_recovery_job WHERE job_id = $1", &[&job]).unwrap().get(0);
    drop(paused);
    assert!(["checking source", "rewinding"].contains(&phase.as_str()), "the job waits on its source: {phase}");
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
    wait_for(60, "the pair to be synchronized", || tc.row_state(down) == "m u s");
}
