//! Harness for the integration tests: real PostgreSQL 15 clusters made by
//! the same library as `./gpdemo`, on free ports in a directory of their
//! own, stopped and removed when the test ends, whether it passed or not.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

pub use gpdemo::{Cluster, Instance};
use postgres::Client;

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A fresh directory the server user can write, under /tmp (short, so unix
/// socket paths stay within their limit).
pub fn scratch_dir(tag: &str) -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, Ordering::SeqCst);
    let dir = PathBuf::from(format!("/tmp/gpr-{}-{tag}{n}", std::process::id()));
    let _ = Cluster::destroy(&dir);
    gpdemo::make_server_dir(&dir).expect("scratch directory");
    dir
}

/// A demo cluster that is destroyed when dropped.
pub struct TestCluster {
    pub cluster: Cluster,
}

impl TestCluster {
    pub fn new(pairs: u16) -> TestCluster {
        Self::on_hosts(pairs, &[])
    }

    /// A cluster whose segments are on `hosts` (loopback addresses), each
    /// with an sshd of its own: the coordinator reaches them only by ssh.
    pub fn on_hosts(pairs: u16, hosts: &[&str]) -> TestCluster {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut attempts = 0;
        loop {
            let dir = scratch_dir("cluster");
            std::fs::remove_dir(&dir).expect("empty scratch dir");
            let base = gpdemo::free_port_range(2 * pairs + 1).expect("free ports");
            match Cluster::create_on(&dir, pairs, base, &hosts) {
                Ok(cluster) => return TestCluster { cluster },
                Err(e) => {
                    let _ = Cluster::destroy(&dir);
                    attempts += 1;
                    // A free port can be taken by another process before the
                    // server binds it; only that is worth another range.
                    if !matches!(e, gpdemo::DemoError::PortInUse(_)) || attempts == 5 {
                        panic!("could not create a test cluster: {e}")
                    }
                    eprintln!("{e}; trying other ports");
                }
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.cluster.dir
    }

    /// A connection to the coordinator, where the extension lives.
    pub fn coordinator(&self) -> Client {
        self.cluster.coordinator.connect().expect("coordinator connection")
    }

    pub fn primary(&self, content: usize) -> &Instance {
        &self.cluster.primaries[content]
    }

    pub fn mirror(&self, content: usize) -> &Instance {
        &self.cluster.mirrors[content]
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Err(e) = Cluster::destroy(&self.cluster.dir) {
            eprintln!("could not destroy {}: {e}", self.cluster.dir.display());
        }
    }
}

/// A single running instance outside any cluster (initdb + start), removed
/// on drop; `standby_of` makes it a streaming standby of that instance.
pub struct SpareInstance {
    pub instance: Instance,
    dir: PathBuf,
}

impl SpareInstance {
    pub fn new(standby_of: Option<&Instance>) -> SpareInstance {
        Self::on_port(standby_of, gpdemo::free_port_range(1).expect("free port"))
    }

    /// As new, listening on `port` of 127.0.0.1.
    pub fn on_port(standby_of: Option<&Instance>, port: u16) -> SpareInstance {
        let dir = scratch_dir("spare");
        let instance = Instance {
            content: 99,
            role: 'p',
            host: gpdemo::ADDRESS.into(),
            port,
            datadir: dir.join("data"),
            logfile: dir.join("postgres.log"),
            namespace: None,
        };
        let spare = SpareInstance { instance, dir };
        let i = &spare.instance;
        match standby_of {
            None => {
                gpdemo::run(gpdemo::pg_command("initdb").args(["--auth=trust", "--no-sync", "-D"]).arg(&i.datadir))
                    .expect("initdb");
                gpdemo::append_server_file(
                    &i.datadir.join("postgresql.conf"),
                    &format!(
                        "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n",
                        spare.dir.display()
                    ),
                )
                .expect("conf");
            }
            Some(primary) => {
                gpdemo::run(
                    gpdemo::pg_command("pg_basebackup")
                        .args(["-h", "127.0.0.1", "-p", &primary.port.to_string(), "-U", &gpdemo::server_user()])
                        .arg("-D")
                        .arg(&i.datadir)
                        .args(["-X", "stream", "-c", "fast", "--no-sync"]),
                )
                .expect("pg_basebackup");
                gpdemo::append_server_file(
                    &i.datadir.join("postgresql.auto.conf"),
                    &format!(
                        "port = {port}\nunix_socket_directories = '{}'\nprimary_conninfo = 'host=127.0.0.1 port={} user={} application_name=spare'\n",
                        spare.dir.display(),
                        primary.port,
                        gpdemo::server_user()
                    ),
                )
                .expect("conf");
                gpdemo::append_server_file(&i.datadir.join("standby.signal"), "").expect("standby.signal");
            }
        }
        i.start().expect("start spare instance");
        spare
    }
}

impl Drop for SpareInstance {
    fn drop(&mut self) {
        let _ = Cluster::destroy(&self.dir);
    }
}

/// The whole catalog and history as text, to prove a failed call changed nothing.
pub fn catalog_snapshot(client: &mut Client) -> (Vec<String>, i64) {
    let rows = client
        .query("SELECT c::text FROM gp_segment_configuration c ORDER BY dbid", &[])
        .expect("catalog")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let history: i64 = client.query_one("SELECT count(*) FROM gp_configuration_history", &[]).expect("history").get(0);
    (rows, history)
}

/// role, status, mode of a dbid in the catalog of the coordinator `client`
/// is connected to (after an activation, not the cluster's first one).
pub fn row_state_on(client: &mut Client, dbid: i16) -> String {
    client
        .query_one(
            "SELECT role::text || ' ' || status::text || ' ' || mode::text FROM gp_segment_configuration WHERE dbid = $1",
            &[&dbid],
        )
        .unwrap()
        .get(0)
}

/// Runs a statement that must fail; returns (SQLSTATE, message).
pub fn expect_error(client: &mut Client, sql: &str) -> (String, String) {
    match client.batch_execute(sql) {
        Ok(()) => panic!("expected an ERROR from: {sql}"),
        Err(e) => {
            let db = e.as_db_error().unwrap_or_else(|| panic!("not a server error: {e}"));
            (db.code().code().to_string(), db.message().to_string())
        }
    }
}

/// Row count and an md5 of every row of a table, ordered by its first column.
pub fn table_checksum(client: &mut Client, table: &str) -> (i64, String) {
    let row = client
        .query_one(
            &format!("SELECT count(*), coalesce(md5(string_agg(t::text, ',' ORDER BY t)), '') FROM {table} t"),
            &[],
        )
        .expect("checksum");
    (row.get(0), row.get(1))
}

impl TestCluster {
    /// A connection to the coordinator as `dba`, a LOGIN member of
    /// gp_recovery_admin (not a superuser), created on first use.
    pub fn admin(&self) -> Client {
        self.coordinator()
            .batch_execute(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'dba') THEN \
                 CREATE ROLE dba LOGIN IN ROLE gp_recovery_admin; END IF; END $$",
            )
            .expect("role dba");
        let c = &self.cluster.coordinator;
        let conninfo = format!("host={} port={} user=dba dbname=postgres connect_timeout=10", c.host, c.port);
        Client::connect(&conninfo, postgres::NoTls).expect("connection as dba")
    }

    /// Stops a content's mirror (immediate) and waits until the fault
    /// tolerance service marks it down; returns its dbid.
    pub fn mirror_down(&self, content: usize) -> i16 {
        let dbid = self.dbid_of(self.mirror(content));
        self.mirror(content).stop("immediate").expect("stop the mirror");
        wait_for(60, "the mirror to be marked down", || self.row_state(dbid) == "m d n");
        dbid
    }

    /// Sets the fault tolerance service's settings (seconds) and reloads.
    pub fn set_fts(&self, interval: u32, timeout: u32, retries: u32, grace: u32) {
        let mut c = self.coordinator();
        for (name, value) in [
            ("fts_probe_interval", interval),
            ("fts_probe_timeout", timeout),
            ("fts_probe_retries", retries),
            ("mirror_down_grace_period", grace),
        ] {
            c.batch_execute(&format!("ALTER SYSTEM SET gp_recovery.{name} = {value}")).unwrap();
        }
        c.batch_execute("SELECT pg_reload_conf()").unwrap();
        // The worker has read the new settings once a round it started has finished.
        std::thread::sleep(std::time::Duration::from_millis(300));
        c.batch_execute("SELECT gp_request_fts_probe_scan()").unwrap();
    }

    /// role, status, mode of a dbid, e.g. "p u s".
    pub fn row_state(&self, dbid: i16) -> String {
        row_state_on(&mut self.coordinator(), dbid)
    }

    /// The dbid of an instance, from the catalog.
    pub fn dbid_of(&self, instance: &Instance) -> i16 {
        self.coordinator()
            .query_one("SELECT dbid FROM gp_segment_configuration WHERE port = $1", &[&i32::from(instance.port)])
            .unwrap()
            .get(0)
    }

    /// The history texts, oldest first.
    pub fn history(&self) -> Vec<String> {
        self.coordinator()
            .query("SELECT \"desc\" FROM gp_configuration_history ORDER BY \"time\", dbid", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
}

/// Resumes a process stopped with SIGSTOP when dropped, so a failing test
/// never leaves a frozen postmaster behind.
pub struct Stopped(pub i32);

impl Stopped {
    pub fn new(pid: i32) -> Stopped {
        // SAFETY: stops a postmaster this test started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: resumes the process stopped in new().
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// A client committing one row at a time into the table `acked` (which
/// must exist) on whichever of `members` is the primary, remembering every
/// acknowledged id and the longest time without a commit.
pub struct Writer {
    acked: std::sync::Arc<std::sync::Mutex<Vec<i32>>>,
    longest_gap: std::sync::Arc<std::sync::Mutex<std::time::Duration>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(members: [Instance; 2]) -> Writer {
        use std::sync::atomic::Ordering;
        use std::time::{Duration, Instant};
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<i32>::new()));
        let longest_gap = std::sync::Arc::new(std::sync::Mutex::new(Duration::ZERO));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (a, g, halt) = (acked.clone(), longest_gap.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let (mut id, mut last_ok) = (0, Instant::now());
            let mut client: Option<Client> = None;
            while !halt.load(Ordering::SeqCst) {
                if client.is_none() {
                    client = gpdemo::connect_to_primary(&members);
                    if client.is_none() {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                }
                id += 1;
                match client.as_mut().map(|c| c.execute("INSERT INTO acked VALUES ($1)", &[&id])) {
                    Some(Ok(_)) => {
                        let now = Instant::now();
                        let mut gap = g.lock().unwrap();
                        *gap = (*gap).max(now - last_ok);
                        last_ok = now;
                        a.lock().unwrap().push(id);
                    }
                    _ => client = None,
                }
            }
        });
        Writer { acked, longest_gap, stop, thread: Some(thread) }
    }

    /// The ids acknowledged so far.
    pub fn acked(&self) -> Vec<i32> {
        self.acked.lock().unwrap().clone()
    }

    /// Stops it; the ids acknowledged and the longest time without a commit.
    pub fn stop(mut self) -> (Vec<i32>, std::time::Duration) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (self.acked(), *self.longest_gap.lock().unwrap())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Panics, saying `what` was lost, unless every id in `acked` is in the
/// table `acked` on the server `client` is connected to.
pub fn assert_acked_present(client: &mut Client, acked: &[i32], what: &str) {
    let present: i64 = client.query_one("SELECT count(*) FROM acked WHERE id = ANY($1)", &[&acked]).unwrap().get(0);
    assert_eq!(present as usize, acked.len(), "{what}");
}

/// Waits up to `secs` seconds for `f`, panicking with `what` otherwise.
pub fn wait_for(secs: u64, what: &str, f: impl FnMut() -> bool) {
    gpdemo::wait_until(std::time::Duration::from_secs(secs), what, f).unwrap_or_else(|e| panic!("{e}"));
}

/// SIGKILL of an instance's postmaster.
pub fn kill9(instance: &Instance) {
    let pid = instance.postmaster_pid().expect("instance runs");
    // SAFETY: kills a postmaster this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// pgbench tables of the given scale (about 15 MB a scale unit).
pub fn pgbench_init(instance: &Instance, scale: u32) {
    gpdemo::run(
        std::process::Command::new(gpdemo::pg_bindir().join("pgbench"))
            .args(["-h", &instance.host, "-p", &instance.port.to_string(), "-U", &gpdemo::server_user()])
            .args(["-i", "-q", "-s", &scale.to_string(), "postgres"]),
    )
    .expect("pgbench -i");
}

pub const PGBENCH_TABLES: [&str; 4] = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"];

/// Proves a mirror holds what its primary holds: a commit with
/// synchronous_commit = remote_apply returns only once the mirror has
/// replayed it, then every pgbench table's row count and checksum must
/// be equal on both.
pub fn assert_same_data(primary: &Instance, mirror: &Instance) {
    let mut p = primary.connect().unwrap();
    p.batch_execute(
        "SET synchronous_commit = remote_apply; CREATE TABLE IF NOT EXISTS sync_marker (x int); \
         INSERT INTO sync_marker VALUES (1)",
    )
    .unwrap();
    let mut m = mirror.connect().unwrap();
    let in_recovery: bool = m.query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get(0);
    assert!(in_recovery, "the mirror is a hot standby");
    for table in PGBENCH_TABLES.iter().chain(&["sync_marker"]) {
        let (on_primary, on_mirror) = (table_checksum(&mut p, table), table_checksum(&mut m, table));
        assert_eq!(on_primary, on_mirror, "{table} differs between primary and mirror");
    }
}

impl TestCluster {
    /// Kills the primary of a content and waits for the fault tolerance
    /// service to promote its mirror; returns (old primary, new primary) dbids.
    pub fn fail_over(&self, content: usize) -> (i16, i16) {
        self.fail_over_from(content, self.primary(content), self.mirror(content))
    }

    /// Kills `acting`, the primary of a content now, and waits until the
    /// fault tolerance service has promoted `other`; returns their dbids.
    pub fn fail_over_from(&self, content: usize, acting: &Instance, other: &Instance) -> (i16, i16) {
        let (old, new) = (self.dbid_of(acting), self.dbid_of(other));
        kill9(acting);
        wait_for(60, "the failover", || self.row_state(new) == "p u n" && self.row_state(old) == "m d n");
        // The catalog changes first, then the mirror is promoted.
        wait_for(60, "the promoted mirror to accept writes", || self.writable(content) == Some(other));
        (old, new)
    }

    /// Submits SQL returning a job id.
    pub fn submit(&self, sql: &str) -> i64 {
        self.coordinator().query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
    }

    /// gp_recovery_wait's answer, or the ERROR it raised.
    pub fn wait_job(&self, job: i64) -> Result<String, String> {
        let mut c = self.coordinator();
        c.query_one("SELECT gp_recovery_wait($1, '300s')", &[&job])
            .map(|r| r.get(0))
            .map_err(|e| e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string()))
    }

    /// Watches gp_recovery_progress while `job` runs; returns the
    /// (phase, percent) rows seen, in order.
    pub fn watch_progress(&self, job: i64) -> std::thread::JoinHandle<Vec<(String, Option<f64>)>> {
        let coordinator = self.cluster.coordinator.clone();
        std::thread::spawn(move || {
            let mut c = coordinator.connect().unwrap();
            let mut seen = Vec::new();
            let until = std::time::Instant::now() + std::time::Duration::from_secs(300);
            while std::time::Instant::now() < until {
                let row = c
                    .query_opt("SELECT phase, percent::float8 FROM gp_recovery_progress WHERE job_id = $1", &[&job])
                    .unwrap();
                match row {
                    Some(r) => seen.push((r.get(0), r.get(1))),
                    None if !seen.is_empty() => break,
                    None => {}
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            seen
        })
    }
}

/// The percents seen during the copy phase, without repeats.
pub fn copy_percents(seen: &[(String, Option<f64>)]) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::new();
    for (phase, pct) in seen {
        if let (true, Some(p)) = (phase == "copying" || phase == "rewinding", pct) {
            if out.last() != Some(p) {
                out.push(*p);
            }
        }
    }
    out
}

/// A coordinator connection that collects NOTICEs and WARNINGs.
pub fn connect_collecting_notices(instance: &Instance) -> (Client, std::sync::mpsc::Receiver<String>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut config: postgres::Config = instance.conninfo().parse().expect("conninfo");
    config.notice_callback(move |n| {
        let _ = tx.send(format!("{}: {}", n.severity(), n.message()));
    });
    (config.connect(postgres::NoTls).expect("coordinator connection"), rx)
}

impl TestCluster {
    /// Fails over every content and recovers the old primaries
    /// (incremental): every pair synchronized, roles switched.
    pub fn switch_all_roles(&self) {
        let contents = self.cluster.primaries.len();
        for content in 0..contents {
            self.fail_over(content);
        }
        let mut c = self.coordinator();
        let jobs: Vec<i64> = c.query("SELECT * FROM gp_recover_all()", &[]).unwrap().iter().map(|r| r.get(0)).collect();
        assert_eq!(jobs.len(), contents);
        for job in jobs {
            assert_eq!(self.wait_job(job).unwrap(), "succeeded");
        }
    }

    /// The instance that is writable now of a content's two members.
    pub fn writable(&self, content: usize) -> Option<&Instance> {
        [self.primary(content), self.mirror(content)].into_iter().find(|i| i.writable())
    }
}

/// Sets gp_recovery.max_rate (kB/s, 0 for none) and gives the worker time
/// to read it.
pub fn set_rate_on(c: &mut Client, kb_per_s: u32) {
    set_setting_on(c, "max_rate", &kb_per_s.to_string());
}

/// Sets a gp_recovery setting with ALTER SYSTEM, reloads, and gives the
/// workers time to read it.
pub fn set_setting_on(c: &mut Client, setting: &str, value: &str) {
    c.batch_execute(&format!("ALTER SYSTEM SET gp_recovery.{setting} = '{value}'")).unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
}

impl TestCluster {
    pub fn set_rate(&self, kb_per_s: u32) {
        set_rate_on(&mut self.coordinator(), kb_per_s);
    }

    /// Fails content 0 over, changes rows on the new primary, and cancels a
    /// slowed differential recovery of the old one once rsync copies: its
    /// directory is left marked incomplete. Returns its dbid.
    pub fn interrupted_differential(&self) -> i16 {
        let (down, _) = self.fail_over(0);
        self.mirror(0)
            .connect()
            .unwrap()
            .batch_execute("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 3 = 0")
            .unwrap();
        self.set_rate(1024);
        let job = self.submit(&format!("SELECT gp_recover_segment({down}, 'differential')"));
        let mut c = self.coordinator();
        wait_for(60, "rsync to copy", || {
            c.query_opt(
                "SELECT 1 FROM gp_recovery_job WHERE job_id = $1 AND phase = 'copying' AND bytes_done > 0",
                &[&job],
            )
            .unwrap()
            .is_some()
        });
        assert!(c.query_one("SELECT gp_recovery_cancel($1)", &[&job]).unwrap().get::<_, bool>(0));
        assert_eq!(self.wait_job(job).unwrap(), "canceled");
        self.set_rate(0);
        down
    }

    /// With the roles of content 0 switched: the preferred primary (now the
    /// mirror) stops replaying while WAL keeps arriving, so it lags. Returns
    /// a connection to it, to resume replay with.
    pub fn lag_the_switched_mirror(&self) -> Client {
        let mut mirror = self.primary(0).connect().unwrap();
        mirror.batch_execute("SELECT pg_wal_replay_pause()").unwrap();
        self.mirror(0)
            .connect()
            .unwrap()
            .batch_execute("CREATE TABLE lag AS SELECT g FROM generate_series(1, 10000) g")
            .unwrap();
        mirror
    }

    /// Fails content 0 over, then makes the WAL a rewind of the old primary
    /// would need unavailable: the new primary's slot (the fault tolerance
    /// service creates it right after the promotion) is dropped once no
    /// session holds it, and its WAL switched and checkpointed away.
    /// Returns the old primary's dbid.
    pub fn fail_over_and_recycle_wal(&self) -> i16 {
        let (down, _) = self.fail_over(0);
        let mut p = self.mirror(0).connect().unwrap();
        // The creating session holds the slot until it has saved it.
        wait_for(30, "the new primary's slot, not in use", || {
            p.query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'internal_wal_replication_slot' \
                 AND NOT active",
                &[],
            )
            .is_ok_and(|r| r.get::<_, i64>(0) == 1)
        });
        p.batch_execute("SELECT pg_drop_replication_slot('internal_wal_replication_slot')").unwrap();
        for _ in 0..6 {
            p.batch_execute("UPDATE pgbench_accounts SET abalance = abalance + 1; SELECT pg_switch_wal(); CHECKPOINT")
                .unwrap();
        }
        down
    }

    /// Starts a full recovery limited to 2 MB/s and waits until it copies.
    pub fn start_slow_full_recovery(&self, dbid: i16) -> i64 {
        self.set_rate(2048);
        let job = self.submit(&format!("SELECT gp_recover_segment({dbid}, 'full')"));
        let mut c = self.coordinator();
        wait_for(60, "the copy to make progress", || {
            c.query_opt("SELECT 1 FROM gp_recovery_progress WHERE job_id = $1 AND bytes_done > 0", &[&job])
                .unwrap()
                .is_some()
        });
        job
    }
}
