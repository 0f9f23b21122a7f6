//! Identity before every stop, move, delete and fence: a relocation aimed at
//! another spelling of a live instance's directory, host or port is refused
//! at submission or fails at `checking host`, and no backout, fence or
//! clean-up ever reaches the coordinator, a live segment or a server that
//! is not the pair's. Every request here comes from `dba`, a LOGIN member
//! of gp_recovery_admin, as a DBA would type it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gp_recovery_pg_test::{
    catalog_snapshot, expect_error, scratch_dir, set_setting_on, wait_for, Instance, SpareInstance, TestCluster,
};
use postgres::Client;

/// What became of a request: refused at submission (its ERROR), or the
/// job's end (its state, or the error it failed with).
#[derive(Debug)]
enum Outcome {
    Refused(String, String),
    Ended(Result<String, String>),
}

impl Outcome {
    fn succeeded(&self) -> bool {
        matches!(self, Outcome::Ended(Ok(s)) if s == "succeeded")
    }
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A relocation of `dbid` submitted by `dba`, followed to its end.
fn relocate(tc: &TestCluster, dba: &mut Client, dbid: i16, host: Option<&str>, port: u16, dir: &str) -> Outcome {
    let host = host.map_or("NULL".to_string(), sql_literal);
    let sql = format!(
        "SELECT gp_recover_segment({dbid}, 'full', new_hostname => {host}, new_port => {port}, new_datadir => {})",
        sql_literal(dir)
    );
    match dba.query_one(&sql, &[]) {
        Ok(row) => Outcome::Ended(tc.wait_job(row.get(0))),
        Err(e) => {
            let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: not a server error: {e}"));
            Outcome::Refused(db.code().code().to_string(), db.message().to_string())
        }
    }
}

/// A live instance whose server and files must come through untouched.
struct Victim {
    what: &'static str,
    instance: Instance,
    pid: i32,
    /// Its data directory's inode, and what the directory holds.
    inode: u64,
    entries: Vec<String>,
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        // Files a running server creates and removes by itself, and the
        // coordinator's directory of job output, made by the first job.
        .filter(|n| !n.starts_with("postmaster.") && n != "pgsql_tmp" && n != "gp_recovery_log")
        .collect();
    names.sort();
    names
}

impl Victim {
    fn new(what: &'static str, instance: &Instance) -> Victim {
        Victim {
            what,
            instance: instance.clone(),
            pid: instance.postmaster_pid().expect("the victim runs"),
            inode: std::fs::metadata(&instance.datadir).unwrap().ino(),
            entries: entries(&instance.datadir),
        }
    }

    /// Still the same server, answering, in the same directory with the same files.
    fn assert_intact(&self, case: &str) {
        assert_eq!(self.instance.postmaster_pid(), Some(self.pid), "{case}: the {} was stopped", self.what);
        self.instance
            .connect()
            .and_then(|mut c| c.query_one("SELECT 1", &[]).map_err(|e| gpdemo::DemoError::Usage(e.to_string())))
            .unwrap_or_else(|e| panic!("{case}: the {} does not answer: {e}", self.what));
        let dir = &self.instance.datadir;
        assert_eq!(
            std::fs::metadata(dir).unwrap().ino(),
            self.inode,
            "{case}: the {}'s directory was replaced",
            self.what
        );
        assert_eq!(entries(dir), self.entries, "{case}: the {}'s files changed", self.what);
        for sibling in [".gp_recovery_new", ".gp_recovery_old", ".gp_recovery_incomplete", ".gp_recovery_relocating"] {
            let path = PathBuf::from(format!("{}{sibling}", dir.display()));
            assert!(!path.exists(), "{case}: {} was made beside the {}", path.display(), self.what);
        }
    }
}

/// The spellings a user could give for `path`, each a different string
/// for the same directory, or one inside it, or one holding it, or a
/// reserved name beside it. `links` is a directory for symbolic links.
fn spellings(path: &Path, links: &Path, tag: &str) -> Vec<(String, String)> {
    let p = path.display().to_string();
    let parent = path.parent().unwrap().display().to_string();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let link = links.join(format!("{tag}-link"));
    let parent_link = links.join(format!("{tag}-parent-link"));
    std::os::unix::fs::symlink(path, &link).unwrap();
    std::os::unix::fs::symlink(path.parent().unwrap(), &parent_link).unwrap();
    vec![
        ("a dot segment".into(), format!("{parent}/./{name}")),
        ("a dot-dot segment".into(), format!("{parent}/x/../{name}")),
        ("a doubled slash".into(), format!("{parent}//{name}")),
        ("a trailing slash".into(), format!("{p}/")),
        ("a symbolic link to it".into(), link.display().to_string()),
        ("a path through a link to its parent".into(), format!("{}/{name}", parent_link.display())),
        ("a directory inside it".into(), format!("{p}/inside")),
        ("a directory inside it, through a link".into(), format!("{}/inside", link.display())),
        ("the directory holding it".into(), parent.clone()),
        ("the reserved suffix .gp_recovery_old".into(), format!("{p}.gp_recovery_old")),
        ("the reserved suffix .gp_recovery_new".into(), format!("{p}.gp_recovery_new")),
        ("the reserved suffix .gp_recovery_incomplete".into(), format!("{p}.gp_recovery_incomplete")),
        ("an old directory being removed".into(), format!("{p}.gp_recovery_old.removing.77")),
    ]
}

/// Item 1: the coordinator is never stopped by a relocation aimed at its
/// directory, however spelled, and a restart backs nothing out onto it.
#[test]
fn a_relocation_onto_the_coordinators_directory_never_stops_it() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    let m = tc.mirror_down(0);
    let coordinator = Victim::new("coordinator", &tc.cluster.coordinator);
    let dir = tc.dir().display().to_string();
    let port = gpdemo::free_port_range(1).unwrap();
    let mut dba = tc.admin();
    for spelling in [format!("{dir}/./coordinator"), format!("{dir}//coordinator"), format!("{dir}/x/../coordinator")] {
        let outcome = relocate(&tc, &mut dba, m, None, port, &spelling);
        assert!(!outcome.succeeded(), "{spelling}: {outcome:?}");
        // A backout runs after the job's first failure: give it time to act.
        std::thread::sleep(Duration::from_secs(2));
        coordinator.assert_intact(&spelling);
    }
    // A restart reconciles whatever was left running: nothing touches the coordinator.
    tc.cluster.coordinator.stop("fast").unwrap();
    tc.cluster.coordinator.start().unwrap();
    let pid = tc.cluster.coordinator.postmaster_pid().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(tc.cluster.coordinator.postmaster_pid(), Some(pid), "the coordinator was stopped after its restart");
    let job = tc.submit(&format!("SELECT gp_recover_segment({m})"));
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
}

/// Item 2: the acting primary is never stopped or emptied by a relocation
/// aimed at its directory under another spelling, and a commit made just
/// before stays.
#[test]
fn a_relocation_onto_the_live_primarys_directory_loses_nothing() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    let m = tc.mirror_down(0);
    let links = scratch_dir("links");
    let mut p = tc.primary(0).connect().unwrap();
    p.batch_execute("CREATE TABLE kept (id int); INSERT INTO kept VALUES (1)").unwrap();
    let primary = Victim::new("acting primary", tc.primary(0));
    let dir = tc.primary(0).datadir.clone();
    let link = links.join("primary-link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let spellings = [
        format!("{}/./{}", dir.parent().unwrap().display(), dir.file_name().unwrap().to_string_lossy()),
        link.display().to_string(),
    ];
    let port = gpdemo::free_port_range(1).unwrap();
    let mut dba = tc.admin();
    for spelling in &spellings {
        p.batch_execute("INSERT INTO kept VALUES (2)").unwrap();
        let outcome = relocate(&tc, &mut dba, m, None, port, spelling);
        assert!(!outcome.succeeded(), "{spelling}: {outcome:?}");
        std::thread::sleep(Duration::from_secs(2));
        primary.assert_intact(spelling);
        let rows: i64 = tc.primary(0).connect().unwrap().query_one("SELECT count(*) FROM kept", &[]).unwrap().get(0);
        assert!(rows >= 2, "{spelling}: an acknowledged commit is gone");
    }
    let job = tc.submit(&format!("SELECT gp_recover_segment({m})"));
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
}

/// Item 3: no target inside another live segment's directory, and none
/// named like what a job's clean-up deletes.
#[test]
fn a_relocation_inside_or_beside_a_live_segment_is_refused() {
    let tc = TestCluster::new(2);
    tc.set_fts(1, 2, 2, 2);
    let m1 = tc.mirror_down(1);
    let mirror0 = Victim::new("synchronized mirror", tc.mirror(0));
    let primary0 = Victim::new("primary", tc.primary(0));
    let port = gpdemo::free_port_range(1).unwrap();
    let mut dba = tc.admin();
    let m0 = tc.mirror(0).datadir.display().to_string();
    let p0 = tc.primary(0).datadir.display().to_string();
    let targets = [
        format!("{m0}/nested"),
        format!("{m0}/base/nested"),
        format!("{p0}.gp_recovery_old"),
        format!("{p0}.gp_recovery_new"),
        format!("{p0}.gp_recovery_incomplete"),
        format!("{p0}.gp_recovery_relocating"),
        format!("{p0}.gp_recovery_old.removing.123"),
        format!("{m0}.gp_recovery_tblspc"),
    ];
    for target in &targets {
        let before = catalog_snapshot(&mut tc.coordinator());
        let outcome = relocate(&tc, &mut dba, m1, None, port, target);
        match &outcome {
            Outcome::Refused(code, message) => {
                assert_eq!(code, "22023", "{target}: {message}");
                assert_eq!(catalog_snapshot(&mut tc.coordinator()), before, "{target}: the catalog changed");
            }
            Outcome::Ended(r) => panic!("{target}: accepted as a relocation target: {r:?}"),
        }
        mirror0.assert_intact(target);
        primary0.assert_intact(target);
    }
    assert_eq!(tc.row_state(tc.dbid_of(tc.mirror(0))), "m u s");
}

/// Item 4: another spelling of the coordinator's host is the same host, and
/// a fence stops only the pair's own server: an unrelated PostgreSQL on a
/// down member's old host and port is left alone.
#[test]
fn a_fence_stops_only_the_pairs_own_server() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    let coordinator = Victim::new("coordinator", &tc.cluster.coordinator);
    let m = tc.mirror_down(0);
    let mut dba = tc.admin();
    let target = scratch_dir("target").join("gpseg0");
    let coordinator_port = tc.cluster.coordinator.port;
    for host in ["LOCALHOST", "127.0.0.1", "Localhost"] {
        let outcome = relocate(&tc, &mut dba, m, Some(host), coordinator_port, &target.display().to_string());
        assert!(!outcome.succeeded(), "{host}: {outcome:?}");
        std::thread::sleep(Duration::from_secs(3));
        coordinator.assert_intact(host);
    }
    let job = tc.submit(&format!("SELECT gp_recover_segment({m})"));
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
    wait_for(60, "the pair to be synchronized", || tc.row_state(m) == "m u s");

    // The primary fails over; a rebuilt host's PostgreSQL then listens on
    // its old port. It is not the pair's: never stopped.
    let (old, _) = tc.fail_over(0);
    let port = tc.primary(0).port;
    wait_for(30, "the old primary's port to be free", || gpdemo::port_free(port));
    let stranger = SpareInstance::on_port(None, port);
    let pid = stranger.instance.postmaster_pid().unwrap();
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        stranger.instance.postmaster_pid(),
        Some(pid),
        "an unrelated server on the down member's port was stopped"
    );
    assert!(stranger.instance.writable());
    assert_eq!(tc.row_state(old), "m d n");
    drop(stranger);
    let job = tc.submit(&format!("SELECT gp_recover_segment({old})"));
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
}

/// Item 5: a NULL or an overlong argument is a clear ERROR naming it, with
/// no Rust backtrace, and nothing changes.
#[test]
fn bad_input_is_a_clear_error_and_changes_nothing() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    let m = tc.mirror_down(0);
    let mut dba = tc.admin();
    let before = catalog_snapshot(&mut tc.coordinator());
    let long_dir = format!("/tmp/{}", "d".repeat(5000));
    let long_component = format!("/tmp/{}/x", "c".repeat(300));
    let long_host = "h".repeat(254);
    let cases: Vec<(String, &str, &str)> = vec![
        ("SELECT gp_recover_segment(NULL)".into(), "22004", "dbid"),
        (format!("SELECT gp_recover_segment({m}, NULL)"), "22004", "mode"),
        ("SELECT gp_recover_all(NULL)".into(), "22004", "mode"),
        ("SELECT gp_recover_from_config(NULL)".into(), "22004", "config"),
        ("SELECT gp_recovery_wait(NULL)".into(), "22004", "job_id"),
        ("SELECT gp_recovery_cancel(NULL)".into(), "22004", "job_id"),
        ("SELECT * FROM gp_recovery_plan(NULL)".into(), "22004", "mode"),
        (format!("SELECT gp_recover_segment({m}, 'full', new_datadir => '{long_dir}')"), "22023", "bytes"),
        (format!("SELECT gp_recover_segment({m}, 'full', new_datadir => '{long_component}')"), "22023", "bytes"),
        (format!("SELECT gp_recover_segment({m}, 'full', new_hostname => '{long_host}')"), "22023", "253"),
        ("SELECT gp_init_standby(NULL, 7999, '/tmp/s')".into(), "22004", "hostname"),
        ("SELECT gp_init_standby('localhost', NULL, '/tmp/s')".into(), "22004", "port"),
        ("SELECT gp_init_standby('localhost', 7999, NULL)".into(), "22004", "datadir"),
        (format!("SELECT gp_init_standby('localhost', 7999, '{long_dir}')"), "22023", "bytes"),
        (format!("SELECT gp_init_standby('{long_host}', 7999, '/tmp/s')"), "22023", "253"),
        ("SELECT gp_activate_standby(NULL)".into(), "22004", "force"),
    ];
    for (sql, code, names) in cases {
        match dba.batch_execute(&sql) {
            Ok(()) => panic!("{sql}: no ERROR"),
            Err(e) => {
                let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
                assert_eq!(db.code().code(), code, "{sql}: {}", db.message());
                assert!(db.message().contains(names), "{sql}: {}", db.message());
                let detail = db.detail().unwrap_or_default();
                assert!(!detail.contains("backtrace") && !detail.contains(".rs:"), "{sql}: a backtrace: {detail}");
            }
        }
        assert_eq!(catalog_snapshot(&mut tc.coordinator()), before, "{sql} changed the catalog");
    }
    let jobs: i64 = tc.coordinator().query_one("SELECT count(*) FROM gp_recovery_job", &[]).unwrap().get(0);
    assert_eq!(jobs, 0, "a refused request left a job");
    // A superuser's registration with a NULL is refused the same way.
    let (code, message) = expect_error(&mut tc.coordinator(), "SELECT gp_add_segment(0, 'm', NULL, 1, '/x')");
    assert_eq!(code, "22004", "{message}");
    assert!(message.contains("hostname"), "{message}");
}

/// Item 6: a copy that stops making progress ends its job within
/// gp_recovery.copy_stall_timeout, naming the stall; the segment stays down
/// and is recovered afterwards.
#[test]
fn a_stalled_copy_ends_its_job() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    gp_recovery_pg_test::pgbench_init(tc.primary(0), 5);
    let m = tc.mirror_down(0);
    let mut c = tc.coordinator();
    set_setting_on(&mut c, "copy_stall_timeout", "3s");
    let job = tc.start_slow_full_recovery(m);
    // Freeze the source's side of the copy: the base backup's walsenders.
    let mut p = tc.primary(0).connect().unwrap();
    let senders: Vec<i32> = p
        .query(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walsender' AND application_name <> 'gp_walreceiver'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!senders.is_empty(), "no walsender serves the copy");
    let frozen: Vec<gp_recovery_pg_test::Stopped> =
        senders.iter().map(|pid| gp_recovery_pg_test::Stopped::new(*pid)).collect();
    let started = std::time::Instant::now();
    let error = tc.wait_job(job).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(60), "the stall took {:?} to end the job", started.elapsed());
    assert!(error.contains("no progress") && error.contains("gp_recovery.copy_stall_timeout"), "{error}");
    drop(frozen);
    assert_eq!(tc.row_state(m), "m d n");
    tc.set_rate(0);
    let job = tc.submit(&format!("SELECT gp_recover_segment({m}, 'full')"));
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
}

/// The alias matrix: for each victim (the coordinator, a live primary, a
/// live mirror, a tablespace location) and each way to name it, the
/// relocation is refused at submission or fails at `checking host`, and
/// afterwards every victim still answers with its files intact.
#[test]
fn no_spelling_of_a_live_instance_is_a_relocation_target() {
    let tc = TestCluster::new(2);
    tc.set_fts(1, 2, 2, 2);
    let links = scratch_dir("links");
    // A tablespace outside the coordinator's data directory.
    let location = tc.dir().join("tsparent").join("ts_coordinator");
    gpdemo::make_server_dir(&location).unwrap();
    let mut c = tc.coordinator();
    c.batch_execute(&format!("CREATE TABLESPACE ts_coordinator LOCATION '{}'", location.display())).unwrap();
    c.batch_execute("CREATE TABLE in_ts (x int) TABLESPACE ts_coordinator; INSERT INTO in_ts VALUES (1)").unwrap();
    let ts_entries = entries(&location);
    let m1 = tc.mirror_down(1);
    let victims = [
        Victim::new("coordinator", &tc.cluster.coordinator),
        Victim::new("primary", tc.primary(0)),
        Victim::new("mirror", tc.mirror(0)),
    ];
    let row_before: String =
        c.query_one("SELECT c::text FROM gp_segment_configuration c WHERE dbid = $1", &[&m1]).unwrap().get(0);
    let mut cases: Vec<(String, Option<String>, u16, String)> = Vec::new();
    let free_port = gpdemo::free_port_range(1).unwrap();
    for (tag, path) in
        victims.iter().map(|v| (v.what, v.instance.datadir.clone())).chain([("tablespace", location.clone())])
    {
        for (how, dir) in spellings(&path, &links, tag) {
            cases.push((format!("{tag}: {how}: {dir}"), None, free_port, dir));
        }
    }
    let fresh = scratch_dir("fresh").join("gpseg1");
    let fresh = fresh.display().to_string();
    let own_name = String::from_utf8(std::process::Command::new("hostname").output().unwrap().stdout).unwrap();
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let taken = listener.local_addr().unwrap().port();
    for (how, host, port) in [
        ("another case of the host name", "LOCALHOST", tc.primary(0).port),
        ("an address instead of the name", "127.0.0.1", tc.cluster.coordinator.port),
        ("the machine's own host name", own_name.trim(), tc.mirror(0).port),
        ("a port something listens on", "localhost", taken),
    ] {
        cases.push((format!("host: {how}: {host}:{port}"), Some(host.to_string()), port, fresh.clone()));
    }
    let mut dba = tc.admin();
    for (case, host, port, dir) in &cases {
        let outcome = relocate(&tc, &mut dba, m1, host.as_deref(), *port, dir);
        eprintln!("{case}: {outcome:?}");
        assert!(!outcome.succeeded(), "{case}: accepted");
        for v in &victims {
            v.assert_intact(case);
        }
        assert_eq!(entries(&location), ts_entries, "{case}: the tablespace's files changed");
        let in_ts: i64 = tc.coordinator().query_one("SELECT count(*) FROM in_ts", &[]).unwrap().get(0);
        assert_eq!(in_ts, 1, "{case}");
        let row: String = tc
            .coordinator()
            .query_one("SELECT c::text FROM gp_segment_configuration c WHERE dbid = $1", &[&m1])
            .unwrap()
            .get(0);
        assert_eq!(row, row_before, "{case}: the segment's row did not go back");
    }
    drop(listener);
    // The segment is then recovered in place as usual.
    let job = tc.submit(&format!("SELECT gp_recover_segment({m1})"));
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
}
