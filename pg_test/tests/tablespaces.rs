//! A user tablespace with data through every recovery mode. A mirror
//! replays CREATE TABLESPACE with its primary's location, so on one host it
//! would take that directory over: there the tablespace is in place
//! (`allow_in_place_tablespaces`, LOCATION ''), living in pg_tblspc/<oid>
//! inside each data directory (every member needs the setting). On two
//! demo hosts, each has its own view of DIR/tablespaces (gpdemo's hostns),
//! so a tablespace there is outside the data directories, one per host, as
//! on separate machines.

use gp_recovery_pg_test::{assert_same_data, expect_error, pgbench_init, table_checksum, wait_for, TestCluster};
use gpdemo::{hostns, Instance};
use std::path::PathBuf;

/// The tablespace's table holds the same rows on both members, and on the
/// mirror it is stored in the tablespace; returns where its file is (a
/// path through the mirror's data directory).
fn assert_tablespace_data(primary: &Instance, mirror: &Instance, after: &str) -> PathBuf {
    assert_same_data(primary, mirror);
    let sum = |i: &Instance| table_checksum(&mut i.connect().unwrap(), "ts_data");
    let (on_primary, on_mirror) = (sum(primary), sum(mirror));
    assert_eq!(on_primary, on_mirror, "after {after}: ts_data differs between primary and mirror");
    assert!(on_primary.0 >= 100_000, "after {after}: {on_primary:?}");
    let path: String =
        mirror.connect().unwrap().query_one("SELECT pg_relation_filepath('ts_data')", &[]).unwrap().get(0);
    assert!(path.starts_with("pg_tblspc/"), "after {after}: {path}");
    mirror.datadir.join(&path)
}

/// Fails the acting primary over and changes the tablespace's table on the
/// new one; returns (down dbid, the new primary).
fn fail_over_and_write(tc: &TestCluster) -> (i16, &Instance) {
    let acting = tc.writable(0).expect("a writable member");
    let other = if acting == tc.primary(0) { tc.mirror(0) } else { tc.primary(0) };
    let (down, _) = tc.fail_over_from(0, acting, other);
    other
        .connect()
        .unwrap()
        .batch_execute(
            "UPDATE ts_data SET v = v || 'x' WHERE id % 7 = 0; \
             INSERT INTO ts_data SELECT g, 'after failover' FROM generate_series((SELECT max(id) + 1 FROM ts_data), \
                    (SELECT max(id) + 2000 FROM ts_data)) g",
        )
        .unwrap();
    (down, other)
}

/// Fails over and recovers content 0 in each mode in place, then
/// rebalances (three failovers leave the roles switched); `check(acting
/// primary, recovered member, after what)` after each.
fn every_mode_then_rebalance(tc: &TestCluster, check: impl Fn(&Instance, &Instance, &str)) {
    for mode in ["incremental", "differential", "full"] {
        let (down, acting) = fail_over_and_write(tc);
        recover(tc, down, &format!("SELECT gp_recover_segment({down}, '{mode}')"));
        let recovered = if acting == tc.primary(0) { tc.mirror(0) } else { tc.primary(0) };
        check(acting, recovered, mode);
    }
    let jobs: Vec<i64> =
        tc.coordinator().query("SELECT * FROM gp_rebalance()", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(jobs.len(), 1, "the roles are switched");
    assert_eq!(tc.wait_job(jobs[0]).unwrap(), "succeeded");
    let primary_dbid = tc.dbid_of(tc.primary(0));
    wait_for(60, "the rebalanced pair to be synchronized", || tc.row_state(primary_dbid) == "p u s");
    check(tc.primary(0), tc.mirror(0), "rebalance");
}

fn recover(tc: &TestCluster, dbid: i16, sql: &str) {
    let job = tc.submit(sql);
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded", "{sql}");
    wait_for(60, "the pair to be synchronized", || tc.row_state(dbid).ends_with("u s"));
}

#[test]
fn a_tablespace_survives_every_recovery_mode() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    pgbench_init(tc.primary(0), 1);
    // Every member: a standby that finds a directory in pg_tblspc when it
    // becomes consistent PANICs unless in-place tablespaces are allowed.
    for i in [tc.primary(0), tc.mirror(0)] {
        gpdemo::append_server_file(&i.datadir.join("postgresql.conf"), "allow_in_place_tablespaces = on\n").unwrap();
        i.connect().unwrap().batch_execute("SELECT pg_reload_conf()").unwrap();
    }
    let mut p = tc.primary(0).connect().unwrap();
    // One statement at a time: CREATE TABLESPACE refuses a transaction block.
    for sql in [
        "CREATE TABLESPACE ts LOCATION ''",
        "CREATE TABLE ts_data (id int PRIMARY KEY USING INDEX TABLESPACE ts, v text) TABLESPACE ts",
        "INSERT INTO ts_data SELECT g, md5(g::text) FROM generate_series(1, 100000) g",
    ] {
        p.batch_execute(sql).unwrap();
    }
    assert_tablespace_data(tc.primary(0), tc.mirror(0), "creating it");
    every_mode_then_rebalance(&tc, |acting, recovered, after| {
        let file = assert_tablespace_data(acting, recovered, after);
        assert!(file.is_file(), "after {after}: {} is missing", file.display());
    });
    // A relocation: the tablespace travels inside the new data directory.
    let (down, acting) = fail_over_and_write(&tc);
    let port = gpdemo::free_port_range(1).unwrap();
    let datadir = tc.dir().join("relocated");
    recover(
        &tc,
        down,
        &format!(
            "SELECT gp_recover_segment({down}, 'full', new_port => {port}, new_datadir => '{}')",
            datadir.display()
        ),
    );
    let moved = Instance {
        content: 0,
        role: 'm',
        host: gpdemo::ADDRESS.into(),
        port,
        datadir,
        logfile: tc.dir().join("relocated.log"),
        namespace: None,
    };
    assert!(assert_tablespace_data(acting, &moved, "relocation").is_file());
}

/// Two hosts, a tablespace at the same location on each (each host's own
/// directory): incremental, differential and full recovery in place and a
/// rebalance leave its data valid, each member's in its own host's
/// directory, nothing of a copy left beside it; a relocation is refused
/// before anything changes.
#[test]
fn a_tablespace_outside_the_data_directory_survives_every_mode_across_hosts() {
    const HOSTS: [&str; 2] = ["127.0.0.2", "127.0.0.3"];
    let tc = TestCluster::on_hosts(1, &HOSTS);
    tc.set_fts(1, 2, 2, 2);
    pgbench_init(tc.primary(0), 1);
    for host in HOSTS {
        gpdemo::make_server_dir(&hostns::host_tablespaces_dir(tc.dir(), host).join("far")).unwrap();
    }
    let location = hostns::tablespaces_dir(tc.dir()).join("far");
    let mut p = tc.primary(0).connect().unwrap();
    for sql in [
        format!("CREATE TABLESPACE far LOCATION '{}'", location.display()),
        "CREATE TABLE ts_data (id int PRIMARY KEY USING INDEX TABLESPACE far, v text) TABLESPACE far".into(),
        "INSERT INTO ts_data SELECT g, md5(g::text) FROM generate_series(1, 100000) g".into(),
    ] {
        p.batch_execute(&sql).unwrap();
    }
    // The file as `member`'s host sees it: the link in pg_tblspc names the
    // common location, which is that host's own directory.
    let on_own_host = |member: &Instance, file: PathBuf| -> PathBuf {
        let rel = file.strip_prefix(member.datadir.join("pg_tblspc")).unwrap();
        let mut parts = rel.components();
        let oid = parts.next().unwrap();
        let link = std::fs::read_link(member.datadir.join("pg_tblspc").join(oid)).unwrap();
        assert_eq!(link, location, "{}'s tablespace link", member.name());
        hostns::host_tablespaces_dir(tc.dir(), &member.host).join("far").join(parts.as_path())
    };
    let check = |acting: &Instance, other: &Instance, after: &str| {
        let on_mirror = on_own_host(other, assert_tablespace_data(acting, other, after));
        let path: String =
            acting.connect().unwrap().query_one("SELECT pg_relation_filepath('ts_data')", &[]).unwrap().get(0);
        let on_primary = on_own_host(acting, acting.datadir.join(path));
        for file in [on_mirror, on_primary] {
            assert!(file.is_file(), "after {after}: {} is missing", file.display());
        }
        for host in HOSTS {
            let dir = hostns::host_tablespaces_dir(tc.dir(), host).join("far");
            let names = || -> Vec<String> {
                std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect()
            };
            // An old directory is deleted in the background once the job ends.
            let only_own = |n: &[String]| n.len() == 1 && n[0].starts_with("PG_15_");
            let what = format!("after {after}: only {host}'s PG_15_* directory in {}", dir.display());
            wait_for(30, &what, || only_own(&names()));
        }
    };
    wait_for(60, "the mirror to replay the table", || {
        tc.mirror(0)
            .connect()
            .ok()
            .and_then(|mut c| c.query_one("SELECT count(*) FROM ts_data", &[]).ok())
            .is_some_and(|r| r.get::<_, i64>(0) == 100_000)
    });
    check(tc.primary(0), tc.mirror(0), "creating it");
    every_mode_then_rebalance(&tc, check);
    let mut c = tc.coordinator();
    // A relocation cannot map the location: refused, nothing changed.
    let (down, _) = fail_over_and_write(&tc);
    let before = gp_recovery_pg_test::catalog_snapshot(&mut c);
    let (code, message) = expect_error(
        &mut c,
        &format!("SELECT gp_recover_segment({down}, 'full', new_datadir => '{}')", tc.dir().join("moved").display()),
    );
    assert_eq!(code, "55000", "{message}");
    assert!(message.contains(&format!("far at {}", location.display())), "{message}");
    assert!(message.contains("relocation does not map"), "{message}");
    assert_eq!(gp_recovery_pg_test::catalog_snapshot(&mut c), before);
}

#[test]
fn a_copy_of_a_source_with_a_tablespace_outside_its_directory_is_refused() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    // The mirror is down before the tablespace exists: on one host its
    // replay would take over the primary's directory.
    gp_recovery_pg_test::kill9(tc.mirror(0));
    let down = tc.dbid_of(tc.mirror(0));
    wait_for(60, "the mirror to be marked down", || tc.row_state(down) == "m d n");
    let location = tc.dir().join("outside");
    gpdemo::make_server_dir(&location).unwrap();
    tc.primary(0)
        .connect()
        .unwrap()
        .batch_execute(&format!("CREATE TABLESPACE far LOCATION '{}'", location.display()))
        .unwrap();
    let mut c = tc.coordinator();
    let before = gp_recovery_pg_test::catalog_snapshot(&mut c);
    for mode in ["differential", "full"] {
        let (code, message) =
            gp_recovery_pg_test::expect_error(&mut c, &format!("SELECT gp_recover_segment({down}, '{mode}')"));
        assert_eq!(code, "55000", "{message}");
        assert!(message.contains(&format!("far at {}", location.display())), "{message}");
        assert!(message.contains("use incremental recovery"), "{message}");
        assert_eq!(gp_recovery_pg_test::catalog_snapshot(&mut c), before, "{mode} changed the catalog");
    }
}
