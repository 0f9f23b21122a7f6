//! Segments on other hosts: clusters whose segments live on 127.0.0.2 and
//! 127.0.0.3, each "host" with an OpenSSH server of its own and a key made
//! for the test, so the coordinator reaches their files and processes only
//! through gp_recovery.remote_shell. Every recovery mode, rebalance, a
//! relocation with an awkward directory name, and a whole host going dark.

use gp_recovery_pg_test::{assert_same_data, catalog_snapshot, kill9, pgbench_init, wait_for, TestCluster};
use gpdemo::Instance;

const HOSTS: [&str; 2] = ["127.0.0.2", "127.0.0.3"];

/// Submits SQL returning a job id and waits for the job's end.
fn run_job(tc: &TestCluster, sql: &str) -> Result<String, String> {
    let job = tc.submit(sql);
    tc.wait_job(job)
}

/// The job's error text, for a job that must fail.
fn job_error(tc: &TestCluster, job: i64) -> String {
    let waited = tc.wait_job(job).unwrap_err();
    assert!(waited.starts_with(&format!("recovery job {job} failed: ")), "{waited}");
    tc.coordinator()
        .query_one("SELECT error FROM gp_recovery_job WHERE job_id = $1", &[&job])
        .unwrap()
        .get::<_, Option<String>>(0)
        .unwrap_or_default()
}

/// Both members of a content up and synchronized, with the same data.
fn assert_synchronized(tc: &TestCluster, content: usize, primary: &Instance, mirror: &Instance) {
    let (p, m) = (tc.dbid_of(primary), tc.dbid_of(mirror));
    assert_eq!((tc.row_state(p), tc.row_state(m)), ("p u s".to_string(), "m u s".to_string()), "content {content}");
    assert_same_data(primary, mirror);
}

/// Kills the acting primary of content 0 and waits until the other member
/// accepts writes; returns the (new primary, down one).
fn fail_over_acting(tc: &TestCluster) -> (&Instance, &Instance) {
    let acting = tc.writable(0).expect("content 0 has a primary");
    let other = if acting == tc.primary(0) { tc.mirror(0) } else { tc.primary(0) };
    tc.fail_over_from(0, acting, other);
    other
        .connect()
        .unwrap()
        .batch_execute("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 2000")
        .unwrap();
    (other, acting)
}

#[test]
fn every_mode_and_rebalance_run_through_ssh() {
    let tc = TestCluster::on_hosts(1, &HOSTS);
    tc.set_fts(1, 2, 2, 2);
    assert_eq!((tc.primary(0).hostname(), tc.mirror(0).hostname()), (HOSTS[0], HOSTS[1]));
    pgbench_init(tc.primary(0), 3);

    for mode in ["incremental", "differential", "full"] {
        let (primary, down) = fail_over_acting(&tc);
        let dbid = tc.dbid_of(down);
        assert_eq!(
            run_job(&tc, &format!("SELECT gp_recover_segment({dbid}, '{mode}')")),
            Ok("succeeded".into()),
            "{mode}"
        );
        assert_synchronized(&tc, 0, primary, down);
    }
    // Three failovers: the preferred primary (on 127.0.0.2) is the mirror now.
    assert_eq!(tc.writable(0), Some(tc.mirror(0)));
    let job: i64 = tc.coordinator().query_one("SELECT * FROM gp_rebalance()", &[]).unwrap().get(0);
    assert_eq!(tc.wait_job(job), Ok("succeeded".into()));
    assert_synchronized(&tc, 0, tc.primary(0), tc.mirror(0));

    // Every step for these hosts went through the remote shell.
    let log = std::fs::read_to_string(&tc.cluster.coordinator.logfile).unwrap();
    for tool in ["check", "stop", "pg_rewind", "rsync", "pg_basebackup", "pg_ctl"] {
        assert!(
            log.contains(&format!("running {tool} on host 127.0.0."))
                && log.contains("through gp_recovery.remote_shell"),
            "{tool} ran through ssh"
        );
    }
    assert!(!log
        .lines()
        .any(|l| l.contains("running ") && l.contains("on host 127.0.0.") && !l.contains("remote_shell")));
}

#[test]
fn a_dead_host_fails_its_jobs_cleanly_while_a_relocation_away_from_it_succeeds() {
    let tc = TestCluster::on_hosts(2, &HOSTS);
    tc.set_fts(1, 2, 2, 2);
    for content in 0..2 {
        pgbench_init(tc.primary(content), 1);
    }
    // 127.0.0.3 holds content 1's primary and content 0's mirror.
    let (mirror0, primary1) = (tc.mirror(0), tc.primary(1));
    assert_eq!((mirror0.hostname(), primary1.hostname()), (HOSTS[1], HOSTS[1]));
    let (m0, p1, m1) = (tc.dbid_of(mirror0), tc.dbid_of(primary1), tc.dbid_of(tc.mirror(1)));
    gpdemo::sshd::fail_host(tc.dir(), HOSTS[1]).unwrap();
    wait_for(60, "the failover of content 1 and the mirror of content 0 marked down", || {
        tc.row_state(m1) == "p u n" && tc.row_state(p1) == "m d n" && tc.row_state(m0) == "m d n"
    });
    wait_for(60, "content 1's new primary to accept writes", || tc.writable(1) == Some(tc.mirror(1)));

    // In place, both jobs need the dead host: both fail, nothing changes;
    // in auto mode, no other mode is tried (none would help).
    let mut c = tc.coordinator();
    let before = catalog_snapshot(&mut c);
    let jobs: Vec<i64> =
        c.query("SELECT * FROM gp_recover_all('auto')", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(jobs.len(), 2);
    for job in jobs {
        let error = job_error(&tc, job);
        assert!(error.starts_with("host 127.0.0.3 is unreachable: ssh: connect to host 127.0.0.3"), "{error}");
        let attempts: String =
            c.query_one("SELECT attempts::text FROM gp_recovery_job WHERE job_id = $1", &[&job]).unwrap().get(0);
        assert_eq!(attempts, "[]", "job {job} tried another mode");
        let failure: String =
            c.query_one("SELECT failure FROM gp_recovery_job WHERE job_id = $1", &[&job]).unwrap().get(0);
        assert_eq!(failure, "host_unreachable", "the kind auto mode decided on");
    }
    assert_eq!(catalog_snapshot(&mut c), before, "the catalog and its history are unchanged");

    // Content 0's mirror moves to the live host, into a directory whose
    // name has a space, a quote and a semicolon, while content 1's primary
    // fails again: each job goes its own way.
    let port = gpdemo::free_port_range(1).unwrap();
    let datadir = tc.dir().join(HOSTS[0]).join("moved dir 'x';touch pwned");
    let relocate = tc.submit(&format!(
        "SELECT gp_recover_segment({m0}, 'full', new_hostname => '{}', new_port => {port}, new_datadir => $${}$$)",
        HOSTS[0],
        datadir.display()
    ));
    let row_p1 = |c: &mut postgres::Client| -> String {
        c.query_one("SELECT c::text FROM gp_segment_configuration c WHERE dbid = $1", &[&p1]).unwrap().get(0)
    };
    let p1_before = row_p1(&mut c);
    let in_place = tc.submit(&format!("SELECT gp_recover_segment({p1})"));
    assert!(job_error(&tc, in_place).starts_with("host 127.0.0.3 is unreachable"));
    assert_eq!(tc.wait_job(relocate), Ok("succeeded".into()));
    assert_eq!(row_p1(&mut c), p1_before);
    let moved = Instance {
        content: 0,
        role: 'm',
        host: HOSTS[0].into(),
        port,
        datadir: datadir.clone(),
        logfile: tc.dir().join("moved.log"),
        namespace: Some(gpdemo::hostns::ns_file(tc.dir(), HOSTS[0])),
    };
    assert_synchronized(&tc, 0, tc.primary(0), &moved);
    assert!(!tc.dir().join("pwned").exists() && !std::path::Path::new("/pwned").exists(), "no shell ran the name");

    // The host comes back: its segment is rewound over ssh.
    gpdemo::sshd::restart_host(tc.dir(), HOSTS[1]).unwrap();
    assert_eq!(run_job(&tc, &format!("SELECT gp_recover_segment({p1})")), Ok("succeeded".into()));
    assert_synchronized(&tc, 1, tc.mirror(1), primary1);
}

#[test]
fn cancel_ends_the_copy_on_the_remote_host_and_restores_everything() {
    let tc = TestCluster::on_hosts(1, &HOSTS);
    tc.set_fts(1, 2, 2, 2);
    pgbench_init(tc.primary(0), 5);
    let (primary, down) = fail_over_acting(&tc);
    let dbid = tc.dbid_of(down);
    let mut c = tc.coordinator();
    let before = catalog_snapshot(&mut c).0;
    let datadir = down.datadir.to_string_lossy().into_owned();
    let version = std::fs::read_to_string(down.datadir.join("PG_VERSION")).unwrap();
    let job = tc.start_slow_full_recovery(dbid);
    // The copy runs on 127.0.0.2, under that host's sshd.
    let copying = || {
        std::process::Command::new("pgrep")
            .args(["-f", &format!("pg_basebackup -D {datadir}.gp_recovery_new")])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(copying(), "pg_basebackup runs for the remote target");
    assert!(c.query_one("SELECT gp_recovery_cancel($1)", &[&job]).unwrap().get::<_, bool>(0));
    assert_eq!(tc.wait_job(job).unwrap(), "canceled");
    assert!(!copying(), "the remote pg_basebackup ended with the job");
    assert_eq!(catalog_snapshot(&mut c).0, before, "the catalog is as before the job");
    assert_eq!(std::fs::read_to_string(down.datadir.join("PG_VERSION")).unwrap(), version);
    assert!(!std::path::Path::new(&format!("{datadir}.gp_recovery_new")).exists(), "the partial copy is removed");

    tc.set_rate(0);
    assert_eq!(run_job(&tc, &format!("SELECT gp_recover_segment({dbid})")), Ok("succeeded".into()));
    assert_synchronized(&tc, 0, primary, down);
}

/// A relocation onto a host the acting primary's pg_hba.conf does not
/// know: the job adds the new host's lines (a history row says so), and
/// once a later relocation leaves that host empty, removes them.
#[test]
fn a_relocation_onto_a_new_host_lets_it_into_the_primary_s_pg_hba_conf() {
    const NEW: &str = "127.0.0.4";
    let tc = TestCluster::on_hosts(1, &HOSTS);
    tc.set_fts(1, 2, 2, 2);
    pgbench_init(tc.primary(0), 1);
    // The primary lets in the cluster's own hosts, one by one, and no other.
    let hba = tc.primary(0).datadir.join("pg_hba.conf");
    let own: String = [gpdemo::ADDRESS, HOSTS[0], HOSTS[1]]
        .iter()
        .map(|h| format!("host all all {h}/32 trust\nhost replication all {h}/32 trust\n"))
        .collect();
    let text = std::fs::read_to_string(&hba).unwrap().replace(gpdemo::DEMO_HBA, &own);
    std::fs::write(&hba, text).unwrap();
    let mut p = tc.primary(0).connect().unwrap();
    p.batch_execute("SELECT pg_reload_conf()").unwrap();
    gpdemo::sshd::add_host(tc.dir(), NEW).unwrap();
    let (p0, m0) = (tc.dbid_of(tc.primary(0)), tc.dbid_of(tc.mirror(0)));
    let relocate = |to_host: &str, to: &Instance| {
        kill9(to);
        wait_for(60, "the mirror to be marked down", || tc.row_state(m0) == "m d n");
        let port = gpdemo::free_port_range(1).unwrap();
        let datadir = tc.dir().join(to_host).join("moved").join(format!("gpseg0-{port}"));
        let job = tc.submit(&format!(
            "SELECT gp_recover_segment({m0}, 'full', new_hostname => '{to_host}', new_port => {port}, new_datadir => '{}')",
            datadir.display()
        ));
        assert_eq!(tc.wait_job(job), Ok("succeeded".into()), "relocation onto {to_host}");
        let moved = Instance {
            content: 0,
            role: 'm',
            host: to_host.into(),
            port,
            datadir,
            logfile: tc.dir().join(format!("moved-{port}.log")),
            namespace: Some(gpdemo::hostns::ns_file(tc.dir(), to_host)),
        };
        wait_for(60, "the relocated mirror to be synchronized", || tc.row_state(m0) == "m u s");
        assert_same_data(tc.primary(0), &moved);
        moved
    };
    let history = |like: &str| -> i64 {
        tc.coordinator()
            .query_one(
                "SELECT count(*) FROM gp_configuration_history WHERE dbid = $1 AND \"desc\" LIKE $2",
                &[&p0, &like],
            )
            .unwrap()
            .get(0)
    };
    let line = |host: &str| {
        format!("host replication {} {host}/32 trust # gp_recovery: for host {host}", gpdemo::server_user())
    };
    let on_new = relocate(NEW, tc.mirror(0));
    assert!(std::fs::read_to_string(&hba).unwrap().contains(&line(NEW)), "the new host's lines are in");
    assert_eq!(history(&format!("%pg_hba.conf of dbid {p0} lets host {NEW} ({NEW}/32) connect and replicate%")), 1);
    // Back to a host of the cluster: the new host has no segment left.
    relocate(HOSTS[1], &on_new);
    let text = std::fs::read_to_string(&hba).unwrap();
    assert!(!text.contains(&format!("for host {NEW}")), "{text}");
    assert!(text.contains(&line(HOSTS[1])), "{text}");
    assert_eq!(history(&format!("%pg_hba.conf of dbid {p0} no longer lets host {NEW} in%")), 1);
}
