//! gp_rebalance: switched pairs return to their preferred roles with a short
//! switchover that loses no acknowledged commit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gp_recovery_pg_test::{
    assert_acked_present, connect_collecting_notices, pgbench_init, table_checksum, wait_for, TestCluster,
};

fn all_balanced(tc: &TestCluster) -> bool {
    let n: i64 = tc
        .coordinator()
        .query_one(
            "SELECT count(*) FROM gp_segment_configuration WHERE content >= 0 AND (role <> preferred_role OR mode <> 's' OR status <> 'u')",
            &[],
        )
        .unwrap()
        .get(0);
    n == 0
}

#[test]
fn switched_pairs_return_to_preferred_roles_without_losing_commits() {
    let tc = TestCluster::new(2);
    tc.set_fts(1, 2, 2, 2);
    pgbench_init(tc.primary(0), 1);
    tc.switch_all_roles();
    let writable = tc.writable(0).unwrap().clone();
    writable.connect().unwrap().batch_execute("CREATE TABLE acked (id int PRIMARY KEY)").unwrap();

    // A client commits in a loop on content 0, following whichever member is
    // the primary, and remembers each acknowledged commit and the longest
    // time without one.
    let acked = Arc::new(Mutex::new(Vec::<i32>::new()));
    let longest_gap = Arc::new(Mutex::new(Duration::ZERO));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, gap, stop) = (acked.clone(), longest_gap.clone(), stop.clone());
        let members = [tc.primary(0).clone(), tc.mirror(0).clone()];
        std::thread::spawn(move || {
            let mut id = 0;
            let mut last_ok = Instant::now();
            let mut client: Option<postgres::Client> = None;
            while !stop.load(Ordering::SeqCst) {
                if client.is_none() {
                    client = gpdemo::connect_to_primary(&members);
                    if client.is_none() {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                }
                id += 1;
                let result = client.as_mut().map(|c| c.execute("INSERT INTO acked VALUES ($1)", &[&id]));
                match result {
                    Some(Ok(_)) => {
                        let now = Instant::now();
                        let mut g = gap.lock().unwrap();
                        *g = (*g).max(now - last_ok);
                        last_ok = now;
                        acked.lock().unwrap().push(id);
                    }
                    _ => client = None,
                }
            }
        })
    };
    wait_for(30, "the writer to commit", || acked.lock().unwrap().len() >= 100);

    let (mut c, notices) = connect_collecting_notices(&tc.cluster.coordinator);
    let jobs: Vec<i64> = c.query("SELECT * FROM gp_rebalance()", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(jobs.len(), 2);
    for job in &jobs {
        assert_eq!(tc.wait_job(*job).unwrap(), "succeeded");
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let notices: Vec<String> = notices.try_iter().collect();
    assert!(notices.iter().any(|n| n.contains("rebalance job")), "{notices:?}");

    assert!(all_balanced(&tc), "every segment in its preferred role, up and synchronized");
    for content in 0..2 {
        let mut p = tc.primary(content).connect().unwrap();
        let row = p
            .query_one(
                "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = 'gp_walreceiver'",
                &[],
            )
            .unwrap();
        assert_eq!((row.get::<_, String>(0).as_str(), row.get::<_, String>(1).as_str()), ("streaming", "sync"));
    }
    let acked = acked.lock().unwrap().clone();
    let mut p = tc.primary(0).connect().unwrap();
    assert_acked_present(&mut p, &acked, "acknowledged commits lost in the switchover");
    p.batch_execute("SET synchronous_commit = remote_apply; INSERT INTO acked VALUES (-1)").unwrap();
    let mut m = tc.mirror(0).connect().unwrap();
    assert_eq!(table_checksum(&mut p, "acked"), table_checksum(&mut m, "acked"));
    let report: Vec<String> =
        c.query("SELECT * FROM gp_state_report()", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(report, vec!["Segment Mirroring Status Report", "All segments are running normally"]);
    assert!(tc.history().iter().any(|h| h.starts_with("gp_rebalance: segment config for rebalance")));
    eprintln!(
        "rebalance: {} commits acknowledged, longest gap between commits {:?}",
        acked.len(),
        longest_gap.lock().unwrap()
    );
}

#[test]
fn pair_with_a_down_mirror_is_skipped_while_the_other_is_rebalanced() {
    let tc = TestCluster::new(2);
    tc.set_fts(1, 2, 2, 2);
    tc.switch_all_roles();
    // Content 1's mirror (its original primary) goes down.
    let down = tc.dbid_of(tc.primary(1));
    tc.primary(1).stop("immediate").unwrap();
    wait_for(30, "the mirror to be marked down", || tc.row_state(down) == "m d n");

    let (mut c, notices) = connect_collecting_notices(&tc.cluster.coordinator);
    let jobs: Vec<i64> = c.query("SELECT * FROM gp_rebalance()", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(jobs.len(), 1);
    let notices: Vec<String> = notices.try_iter().collect();
    let acting = tc.dbid_of(tc.mirror(1));
    assert!(
        notices.iter().any(|n| n.starts_with("WARNING")
            && n.contains(&format!("content 1: not rebalancing primary segment dbid {acting} with its mirror dbid {down} because one is down"))),
        "{notices:?}"
    );
    assert_eq!(tc.wait_job(jobs[0]).unwrap(), "succeeded");
    assert_eq!(tc.row_state(tc.dbid_of(tc.primary(0))), "p u s");
    assert_eq!(tc.row_state(tc.dbid_of(tc.mirror(0))), "m u s");
    assert_eq!(tc.row_state(acting), "p u n", "content 1 is left as it was");
}

#[test]
fn balanced_cluster_and_replay_lag_limit() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    let (mut c, notices) = connect_collecting_notices(&tc.cluster.coordinator);
    assert!(c.query("SELECT * FROM gp_rebalance()", &[]).unwrap().is_empty());
    let notices_seen: Vec<String> = notices.try_iter().collect();
    assert!(
        notices_seen.contains(
            &"NOTICE: No segments are running in their non-preferred role and need to be rebalanced.".to_string()
        ),
        "{notices_seen:?}"
    );
    let (code, message) = gp_recovery_pg_test::expect_error(&mut c, "SELECT gp_rebalance(-1)");
    assert_eq!(code, "22023", "{message}");

    tc.switch_all_roles();
    let mut mirror = tc.lag_the_switched_mirror();
    assert!(c.query("SELECT * FROM gp_rebalance(0)", &[]).unwrap().is_empty());
    let seen: Vec<String> = notices.try_iter().collect();
    let warning =
        seen.iter().find(|n| n.contains("bytes of WAL are still to be replayed")).unwrap_or_else(|| panic!("{seen:?}"));
    let bytes: i64 = warning
        .split("content 0: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("{warning}"));
    assert!(bytes > 0, "{warning}");
    assert!(!all_balanced(&tc));

    mirror.batch_execute("SELECT pg_wal_replay_resume()").unwrap();
    let jobs: Vec<i64> = c.query("SELECT * FROM gp_rebalance(NULL)", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(jobs.len(), 1);
    assert_eq!(tc.wait_job(jobs[0]).unwrap(), "succeeded");
    assert!(all_balanced(&tc));
}
