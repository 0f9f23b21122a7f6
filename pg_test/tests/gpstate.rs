//! The live gpstate views against a real cluster: healthy, a mirror stopped
//! with `pg_ctl stop -m immediate`, and a segment hung with SIGSTOP.

use std::time::{Duration, Instant};

use gp_recovery_pg_test::TestCluster;
use postgres::Client;

fn report(c: &mut Client) -> Vec<String> {
    c.query("SELECT * FROM gp_state_report()", &[]).unwrap().iter().map(|r| r.get(0)).collect()
}

fn mirror_status(c: &mut Client) -> Vec<(i16, String, Option<String>)> {
    c.query("SELECT content, status, data_status FROM gp_mirror_status ORDER BY content", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[test]
fn healthy_cluster_views() {
    let tc = TestCluster::new(3);
    let mut c = tc.coordinator();

    let rows =
        c.query("SELECT role::text, mode::text, status::text, content FROM gp_segment_configuration", &[]).unwrap();
    assert_eq!(rows.len(), 7);
    for r in &rows {
        assert_eq!(r.get::<_, String>(2), "u");
        if r.get::<_, i16>(3) >= 0 {
            assert_eq!(r.get::<_, String>(1), "s", "pairs are synchronized");
        }
    }

    let status = c
        .query(
            "SELECT dbid, role::text, answering, in_recovery, replication_state, sync_state, \
             replay_lsn IS NOT NULL, bytes_behind FROM gp_segment_status ORDER BY dbid",
            &[],
        )
        .unwrap();
    assert_eq!(status.len(), 7);
    for r in &status {
        assert!(r.get::<_, bool>(2), "dbid {} answers", r.get::<_, i16>(0));
        let is_mirror = r.get::<_, String>(1) == "m";
        assert_eq!(r.get::<_, Option<bool>>(3), Some(is_mirror));
        if is_mirror {
            assert_eq!(r.get::<_, Option<String>>(4).as_deref(), Some("streaming"));
            assert_eq!(r.get::<_, Option<String>>(5).as_deref(), Some("sync"));
            assert!(r.get::<_, bool>(6));
            assert!(r.get::<_, Option<i64>>(7).is_some());
        }
    }

    assert_eq!(
        mirror_status(&mut c),
        (0..3).map(|i| (i, "Passive".to_string(), Some("Synchronized".to_string()))).collect::<Vec<_>>()
    );
    assert_eq!(report(&mut c), vec!["Segment Mirroring Status Report", "All segments are running normally"]);

    // One history row per registration, plus the mode change of each primary.
    let history: Vec<String> = c
        .query("SELECT \"desc\" FROM gp_configuration_history ORDER BY \"time\", dbid", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(history.len(), 10, "{history:#?}");
    assert!(history.contains(&"gp_add_segment: update mode for dbid 2 with contentid 0 to s".to_string()));
}

#[test]
fn stopped_mirror_shows_not_answering_and_catalog_is_untouched() {
    let tc = TestCluster::new(2);
    let mut c = tc.coordinator();
    let mirror = tc.mirror(0);
    mirror.stop("immediate").unwrap();

    let row = c
        .query_one(
            "SELECT answering, probe_error, status::text, replication_state FROM gp_segment_status WHERE port = $1",
            &[&i32::from(mirror.port)],
        )
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    let err: String = row.get(1);
    assert!(err.contains("Connection refused"), "{err}");
    assert_eq!(row.get::<_, String>(2), "u", "only the fault tolerance service changes the catalog");
    assert_eq!(row.get::<_, Option<String>>(3), None, "the primary no longer reports a stream");

    assert_eq!(
        mirror_status(&mut c),
        vec![(0, "Failed".to_string(), None), (1, "Passive".to_string(), Some("Synchronized".to_string())),]
    );
    let lines = report(&mut c);
    let text = lines.join("\n");
    assert!(text.contains("Unsynchronized Segment Pairs"), "{text}");
    assert!(text.contains("Downed Segments (may include segments where status could not be retrieved)"), "{text}");
    assert!(
        lines.iter().any(
            |l| l.contains(&mirror.port.to_string()) && l.contains("Process error -- database process may be down")
        ),
        "{text}"
    );
    assert!(!text.contains("running normally"));
    let all_up: i64 =
        c.query_one("SELECT count(*) FROM gp_segment_configuration WHERE status = 'u'", &[]).unwrap().get(0);
    assert_eq!(all_up, 5);

    // Back up: the report is clean again.
    mirror.start().unwrap();
    gpdemo::wait_for_sync_mirror(tc.primary(0), Duration::from_secs(60)).unwrap();
    assert_eq!(report(&mut c), vec!["Segment Mirroring Status Report", "All segments are running normally"]);
}

#[test]
fn hung_segment_is_bounded_by_the_timeout() {
    let tc = TestCluster::new(2);
    let mut c = tc.coordinator();
    c.batch_execute("SET gp_recovery.segment_connect_timeout = 1").unwrap();
    let mirror = tc.mirror(1);
    let pid = mirror.postmaster_pid().expect("mirror runs");
    // SAFETY: stops and resumes a postmaster this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let started = Instant::now();
    let rows = c.query("SELECT port, answering, probe_error FROM gp_segment_status ORDER BY dbid", &[]).unwrap();
    let elapsed = started.elapsed();
    unsafe { libc::kill(pid, libc::SIGCONT) };

    let hung: Vec<_> = rows.iter().filter(|r| !r.get::<_, bool>(1)).collect();
    assert_eq!(hung.len(), 1);
    assert_eq!(hung[0].get::<_, i32>(0), i32::from(mirror.port));
    assert_eq!(hung[0].get::<_, String>(2), "no answer within 1 s");
    // Probes run at once: all five answered while one hung, in about one timeout.
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
}
