//! The segment catalog: gp_add_segment's checks against real instances, the
//! table constraints, history rows, privileges and pg_dump.

use gp_recovery_pg_test::{catalog_snapshot, expect_error, SpareInstance, TestCluster};

fn add_segment_sql(content: i32, role: &str, port: u16, datadir: &str) -> String {
    format!("SELECT gp_add_segment({content}, '{role}', 'localhost', {port}, '{datadir}', '127.0.0.1')")
}

#[test]
fn registration_checks_the_instance_and_changes_nothing_on_error() {
    let tc = TestCluster::new(2);
    let mut c = tc.coordinator();
    let spare = SpareInstance::new(None);
    let standby = SpareInstance::new(Some(tc.primary(0)));
    let spare_dir = spare.instance.datadir.to_str().unwrap().to_string();
    let standby_dir = standby.instance.datadir.to_str().unwrap().to_string();
    let free_port = gpdemo::free_port_range(1).unwrap();

    // Take content 1's mirror out of the catalog, so that registering a mirror
    // for content 1 is a legal request whose claim gets checked.
    let mirror1_dbid: i16 =
        c.query_one("SELECT dbid FROM gp_segment_configuration WHERE content = 1 AND role = 'm'", &[]).unwrap().get(0);
    c.execute("DELETE FROM gp_segment_configuration WHERE dbid = $1", &[&mirror1_dbid]).unwrap();
    let before = catalog_snapshot(&mut c);

    let p0 = tc.primary(0);
    let p0_dir = p0.datadir.to_str().unwrap().to_string();
    let cases: Vec<(String, &str, String)> = vec![
        (
            add_segment_sql(2, "p", free_port, "/tmp/nothing/here"),
            "08001",
            format!("segment localhost:{free_port} does not answer: error connecting to server"),
        ),
        (
            add_segment_sql(2, "p", p0.port, "/tmp/other"),
            "23505",
            format!("port {} on host localhost is already used by dbid 2 (content 0)", p0.port),
        ),
        (
            add_segment_sql(2, "p", free_port, &p0_dir),
            "23505",
            format!("data directory {p0_dir} on host localhost is already used by dbid 2 (content 0)"),
        ),
        (
            add_segment_sql(2, "x", spare.instance.port, &spare_dir),
            "22023",
            "invalid role \"x\": must be 'p' (primary) or 'm' (mirror)".into(),
        ),
        (
            add_segment_sql(0, "p", spare.instance.port, &spare_dir),
            "23505",
            format!("content 0 already has a primary: dbid 2 at localhost:{}", p0.port),
        ),
        (add_segment_sql(0, "m", spare.instance.port, &spare_dir), "23505", "content 0 already has a mirror".into()),
        (
            add_segment_sql(7, "m", spare.instance.port, &spare_dir),
            "55000",
            "content 7 has no primary; register its primary before its mirror".into(),
        ),
        (
            add_segment_sql(2, "p", spare.instance.port, "/tmp/not/its/datadir"),
            "55000",
            format!("localhost:{} runs with data directory {spare_dir}, not /tmp/not/its/datadir", spare.instance.port),
        ),
        (
            add_segment_sql(2, "p", standby.instance.port, &standby_dir),
            "55000",
            format!(
                "localhost:{} is in recovery (a standby), so it cannot be registered as a primary",
                standby.instance.port
            ),
        ),
        (
            add_segment_sql(1, "m", spare.instance.port, &spare_dir),
            "55000",
            format!("localhost:{} is not in recovery, so it cannot be the mirror of content 1", spare.instance.port),
        ),
        (
            // A standby of content 0's primary is no copy of content 1's primary.
            add_segment_sql(1, "m", standby.instance.port, &standby_dir),
            "55000",
            "it is not a copy of that primary".into(),
        ),
        (
            add_segment_sql(2, "p", spare.instance.port, "relative/dir"),
            "22023",
            "invalid data directory \"relative/dir\": must be an absolute path".into(),
        ),
        (add_segment_sql(-3, "p", spare.instance.port, &spare_dir), "22023", "invalid content \"-3\"".into()),
        (add_segment_sql(2, "p", 0, &spare_dir), "22023", "invalid port \"0\": must be between 1 and 65535".into()),
    ];
    for (sql, code, message) in cases {
        let (got_code, got_message) = expect_error(&mut c, &sql);
        assert!(got_message.contains(&message), "{sql}\n  expected: {message}\n  got: {got_message}");
        assert_eq!(got_code, code, "{sql}: {got_message}");
        assert_eq!(catalog_snapshot(&mut c), before, "{sql} changed the catalog");
    }

    // The real mirror of content 1 registers again, in sync, with history rows.
    let m1 = tc.mirror(1);
    let dbid: i16 = c.query_one(&add_segment_sql(1, "m", m1.port, m1.datadir.to_str().unwrap()), &[]).unwrap().get(0);
    assert_eq!(dbid, before.0.len() as i16 + 1);
    let row = c
        .query_one(
            "SELECT role::text, preferred_role::text, mode::text, status::text FROM gp_segment_configuration WHERE dbid = $1",
            &[&dbid],
        )
        .unwrap();
    let got: (String, String, String, String) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(got, ("m".into(), "m".into(), "s".into(), "u".into()));
    let desc: String = c
        .query_one(
            "SELECT \"desc\" FROM gp_configuration_history WHERE dbid = $1 ORDER BY \"time\" DESC LIMIT 1",
            &[&dbid],
        )
        .unwrap()
        .get(0);
    assert_eq!(desc, format!("gp_add_segment: inserted mirror segment configuration for dbid {dbid} with contentid 1"));

    // A primary that is what it claims registers too.
    let dbid: i16 = c.query_one(&add_segment_sql(2, "p", spare.instance.port, &spare_dir), &[]).unwrap().get(0);
    let mode: String =
        c.query_one("SELECT mode::text FROM gp_segment_configuration WHERE dbid = $1", &[&dbid]).unwrap().get(0);
    assert_eq!(mode, "n", "a primary without a mirror is not in sync");
}

#[test]
fn constraints_reject_impossible_rows() {
    let tc = TestCluster::new(1);
    let mut c = tc.coordinator();
    let before = catalog_snapshot(&mut c);
    let insert = |vals: &str| {
        format!(
        "INSERT INTO gp_segment_configuration (dbid, content, role, preferred_role, mode, status, port, hostname, address, datadir) VALUES ({vals})"
    )
    };
    for (vals, fragment) in [
        ("9, 5, 'x', 'p', 's', 'u', 9001, 'h', 'h', '/d9'", "gp_segment_configuration_role_check"),
        ("9, 5, 'p', 'q', 's', 'u', 9001, 'h', 'h', '/d9'", "gp_segment_configuration_preferred_role_check"),
        ("9, 5, 'p', 'p', 'z', 'u', 9001, 'h', 'h', '/d9'", "gp_segment_configuration_mode_check"),
        ("9, 5, 'p', 'p', 's', 'k', 9001, 'h', 'h', '/d9'", "gp_segment_configuration_status_check"),
        ("9, 5, 'p', 'p', 's', 'u', 9001, 'h', 'h', 'rel'", "gp_segment_configuration_datadir_check"),
        ("9, 0, 'p', 'm', 's', 'u', 9001, 'h', 'h', '/d9'", "gp_segment_configuration_content_role_key"),
        ("9, 5, 'p', 'p', 's', 'u', 9001, 'h', 'h', '/d9'", ""),
    ] {
        let sql = insert(vals);
        if fragment.is_empty() {
            // A valid row is accepted; roll it back to keep the catalog as it was.
            c.batch_execute(&format!("BEGIN; {sql}; ROLLBACK")).unwrap();
            continue;
        }
        let (_, message) = expect_error(&mut c, &sql);
        assert!(message.contains(fragment), "{sql}: {message}");
    }
    let (rows, _) = catalog_snapshot(&mut c);
    let primary = tc.primary(0);
    for (vals, fragment) in [
        (
            format!("9, 5, 'p', 'p', 's', 'u', {}, 'localhost', 'x', '/d9'", primary.port),
            "gp_segment_configuration_hostname_port_key",
        ),
        (
            format!("9, 5, 'p', 'p', 's', 'u', 9001, 'localhost', 'x', '{}'", primary.datadir.display()),
            "gp_segment_configuration_hostname_datadir_key",
        ),
        ("1, -1, 'p', 'p', 's', 'u', 9001, 'h', 'h', '/d9'".to_string(), "gp_segment_configuration_pkey"),
        // A second coordinator; a standby is content -1's mirror.
        ("9, -1, 'p', 'p', 's', 'u', 9001, 'h', 'h', '/d9'".to_string(), "gp_segment_configuration_content_role_key"),
    ] {
        let (code, message) = expect_error(&mut c, &insert(&vals));
        assert!(message.contains(fragment), "{vals}: {message}");
        assert!(code == "23505" || code == "23514", "{vals}: {code}");
    }
    assert_eq!(catalog_snapshot(&mut c), before);
    assert_eq!(rows.len(), 3);
}

#[test]
fn only_superusers_register_and_pg_dump_keeps_the_rows() {
    let tc = TestCluster::new(1);
    let mut c = tc.coordinator();
    c.batch_execute("CREATE ROLE monitor LOGIN IN ROLE pg_monitor; CREATE ROLE nobody LOGIN").unwrap();
    let before = catalog_snapshot(&mut c);
    let (code, message) =
        expect_error(&mut c, "SET ROLE monitor; SELECT gp_add_segment(1, 'p', 'localhost', 9999, '/tmp/x')");
    c.batch_execute("RESET ROLE").unwrap();
    assert_eq!(code, "42501", "{message}");
    assert!(message.contains("permission denied for function gp_add_segment"), "{message}");
    assert_eq!(catalog_snapshot(&mut c), before);

    // Monitoring roles may read the live views, which probe every segment;
    // a plain login reads the catalog only.
    c.batch_execute("SET ROLE monitor").unwrap();
    let n: i64 = c.query_one("SELECT count(*) FROM gp_segment_status WHERE answering", &[]).unwrap().get(0);
    c.batch_execute("RESET ROLE").unwrap();
    assert_eq!(n, 3);
    for sql in ["SELECT count(*) FROM gp_segment_status", "SELECT gp_request_fts_probe_scan()"] {
        let (code, message) = expect_error(&mut c, &format!("SET ROLE nobody; {sql}"));
        c.batch_execute("RESET ROLE").unwrap();
        assert_eq!(code, "42501", "{sql}: {message}");
    }
    c.batch_execute("SET ROLE nobody").unwrap();
    let rows: i64 = c.query_one("SELECT count(*) FROM gp_segment_configuration", &[]).unwrap().get(0);
    let (_, message) = expect_error(&mut c, "SHOW gp_recovery.remote_shell");
    c.batch_execute("RESET ROLE").unwrap();
    assert_eq!(rows, 3);
    assert!(message.contains("must be superuser"), "{message}");

    let out = gpdemo::run(
        std::process::Command::new(gpdemo::pg_bindir().join("pg_dump"))
            .args(["-h", "127.0.0.1", "-p", &tc.cluster.coordinator.port.to_string()])
            .args(["-U", &gpdemo::server_user(), "postgres"]),
    )
    .unwrap();
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(dump.contains("COPY public.gp_segment_configuration"), "catalog rows missing from pg_dump");
    assert!(dump.contains("COPY public.gp_configuration_history"), "history rows missing from pg_dump");
    assert!(dump.contains(&tc.primary(0).datadir.display().to_string()));
}

#[test]
fn gucs_are_checked() {
    let tc = TestCluster::new(1);
    let mut c = tc.coordinator();
    let (code, message) = expect_error(&mut c, "SET gp_recovery.segment_connect_timeout = 0");
    assert_eq!(code, "22023");
    assert!(message.contains("0 s is outside the valid range"), "{message}");
    let (_, message) = expect_error(&mut c, "SET gp_recovery.segment_conect_timeout = 1");
    assert!(message.contains("invalid configuration parameter name"), "{message}");
    c.batch_execute("SET gp_recovery.segment_connect_timeout = '2s'").unwrap();
}
