//! Least privilege: the SQL functions are the only way into the job,
//! catalog and history tables; the jobs worker never runs a row it did not
//! get from them; an object a user plants on a search path never runs as a
//! superuser.

use gp_recovery_pg_test::{expect_error, TestCluster};

const INSERT_JOB: &str = "INSERT INTO gp_recovery_job (recovery_type, dbid, content, relocate, source_dbid, \
     source_hostname, source_address, source_port, source_datadir, target_hostname, target_address, target_port, \
     target_datadir, original)";

#[test]
fn only_the_functions_write_the_extensions_tables() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    let (old, _) = tc.fail_over(0);
    let mut c = tc.coordinator();
    c.batch_execute(
        "CREATE ROLE dba LOGIN IN ROLE gp_recovery_admin; CREATE ROLE watcher LOGIN IN ROLE pg_monitor; \
         CREATE ROLE plain LOGIN",
    )
    .unwrap();
    let writes = [
        format!("{INSERT_JOB} SELECT 'incremental', 2, 0, false, 3, 'x', 'x', 1, '/x', 'x', 'x', 1, '/x', '{{}}'"),
        "UPDATE gp_recovery_job SET fts_hold = true".into(),
        "UPDATE gp_recovery_job SET state = 'failed'".into(),
        "DELETE FROM gp_recovery_job".into(),
        "UPDATE gp_segment_configuration SET status = 'u'".into(),
        "INSERT INTO gp_configuration_history (dbid, \"desc\") VALUES (1, 'x')".into(),
    ];
    for role in ["dba", "watcher", "plain"] {
        for sql in &writes {
            let (code, message) = expect_error(&mut c, &format!("SET ROLE {role}; {sql}"));
            c.batch_execute("RESET ROLE").unwrap();
            assert_eq!(code, "42501", "{role}: {sql}: {message}");
        }
    }
    for role in ["watcher", "plain"] {
        let (code, _) = expect_error(&mut c, &format!("SET ROLE {role}; SELECT gp_recover_segment({old})"));
        c.batch_execute("RESET ROLE").unwrap();
        assert_eq!(code, "42501", "{role} may not recover");
    }
    // The admin recovers through the function, which writes as the
    // extension's owner; the row names the session's user.
    c.batch_execute("SET ROLE dba").unwrap();
    let job: i64 = c.query_one(&format!("SELECT gp_recover_segment({old})"), &[]).unwrap().get(0);
    c.batch_execute("RESET ROLE").unwrap();
    let who: String =
        c.query_one("SELECT submitted_by::text FROM gp_recovery_job WHERE job_id = $1", &[&job]).unwrap().get(0);
    assert_eq!(who, "dba");
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
}

#[test]
fn a_job_row_written_by_hand_never_runs() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    let (old, new) = tc.fail_over(0);
    let pwned = tc.dir().join("pwned");
    let mut c = tc.coordinator();
    let before = gp_recovery_pg_test::catalog_snapshot(&mut c).0;
    // Even a superuser's hand-written row is planned again from the catalog
    // before anything runs, and refused for the column that differs.
    let row = format!(
        "{INSERT_JOB} SELECT 'incremental', s.dbid, s.content, false, p.dbid, p.hostname, p.address, p.port, \
         p.datadir, s.hostname, s.address, s.port, $$/var/tmp/x$(touch {})$$, pg_catalog.to_jsonb(s) \
         FROM gp_segment_configuration s, gp_segment_configuration p WHERE s.dbid = {old} AND p.dbid = {new} \
         RETURNING job_id",
        pwned.display()
    );
    let job: i64 = c.query_one(&row, &[]).unwrap().get(0);
    let error = tc.wait_job(job).unwrap_err();
    assert!(error.contains("refused: its target_datadir is /var/tmp/x$(touch"), "{error}");
    assert!(error.contains("nothing was run"), "{error}");
    assert!(!pwned.exists(), "the row's data directory went through a shell");
    assert_eq!(gp_recovery_pg_test::catalog_snapshot(&mut c).0, before);
    // The segment is recovered as usual afterwards.
    let job = tc.submit(&format!("SELECT gp_recover_segment({old})"));
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
}

#[test]
fn an_object_planted_on_the_search_path_never_runs_as_a_superuser() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    let mut c = tc.coordinator();
    c.batch_execute("CREATE ROLE plain LOGIN; GRANT CREATE ON SCHEMA public TO plain; CREATE ROLE dba LOGIN IN ROLE gp_recovery_admin")
        .unwrap();
    // Exact argument types beat pg_catalog's polymorphic functions
    // wherever the schema is on the search path.
    c.batch_execute(
        "SET ROLE plain;
         CREATE FUNCTION public.to_jsonb(gp_segment_configuration) RETURNS jsonb LANGUAGE plpgsql AS $$
         BEGIN EXECUTE 'ALTER ROLE plain SUPERUSER'; RETURN pg_catalog.to_jsonb($1); END $$;
         CREATE FUNCTION public.to_jsonb(gp_recovery_job) RETURNS jsonb LANGUAGE plpgsql AS $$
         BEGIN EXECUTE 'ALTER ROLE plain SUPERUSER'; RETURN pg_catalog.to_jsonb($1); END $$;
         RESET ROLE",
    )
    .unwrap();
    // The functions (as the admin and as a superuser) and both workers
    // read the catalog and the job table.
    let (old, _) = tc.fail_over(0);
    for role in ["dba", "postgres"] {
        let set = if role == "postgres" { "RESET ROLE".to_string() } else { format!("SET ROLE {role}") };
        c.batch_execute(&format!("SET search_path = public, pg_catalog; {set}")).unwrap();
        c.query("SELECT * FROM gp_segment_status", &[]).unwrap();
        c.query("SELECT gp_request_fts_probe_scan()", &[]).unwrap();
        c.batch_execute("RESET ROLE").unwrap();
    }
    c.batch_execute("SET ROLE dba; SET search_path = public, pg_catalog").unwrap();
    let job: i64 = c.query_one(&format!("SELECT gp_recover_segment({old})"), &[]).unwrap().get(0);
    c.batch_execute("RESET ROLE").unwrap();
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
    let superuser: bool = c.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = 'plain'", &[]).unwrap().get(0);
    assert!(!superuser, "a function planted by a plain login ran as a superuser");
    let (code, _) = expect_error(&mut c, "SET ROLE plain; SELECT gp_recover_segment(2)");
    assert_eq!(code, "42501");
}
