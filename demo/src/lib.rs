//! Local demo clusters for gp_recovery, as Greenplum's gpdemo makes them: a
//! coordinator with the extension, and N primaries each with a mirror made
//! by pg_basebackup, streaming through a physical replication slot as the
//! primary's synchronous standby.
//!
//! The `gpdemo` command and the integration tests (pg_test/) both drive
//! clusters through this library, so what the tests prove is what the demo
//! runs. When run as root, every Postgres program runs as the OS user
//! `postgres` (Postgres refuses root); otherwise as the calling user.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

pub use gp_recovery_core::probe::{MIRROR_APPLICATION_NAME, SLOT_NAME};

pub mod hostns;
pub mod monitoring;
pub mod sshd;

/// Listen address of the coordinator, and of every segment of a one-host
/// cluster, as registered in the catalog.
pub const ADDRESS: &str = "127.0.0.1";
/// Host name registered for the segments of a one-host cluster.
pub const HOSTNAME: &str = "localhost";

#[derive(Debug, Error)]
pub enum DemoError {
    #[error("{0}")]
    Usage(String),
    /// Another process holds the port: a caller may pick other ports.
    #[error("port {0} is already in use; choose another base port with --port")]
    PortInUse(u16),
    #[error("{command} failed ({status}): {stderr}")]
    Command { command: String, status: String, stderr: String },
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("{context}: {message}")]
    Sql { context: String, message: String },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

pub type Result<T> = std::result::Result<T, DemoError>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let context = context.into();
    move |source| DemoError::Io { context, source }
}

/// Describes a client error; a server ERROR is shown with its message.
pub fn sql_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => gp_recovery_core::error::error_chain(e),
    }
}

fn sql_err(context: impl Into<String>) -> impl FnOnce(postgres::Error) -> DemoError {
    let context = context.into();
    move |e| DemoError::Sql { context, message: sql_message(&e) }
}

/// True when this process runs as root, so servers must run as `postgres`.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The OS user the servers run as; it is also their bootstrap superuser.
pub fn server_user() -> String {
    if running_as_root() {
        return "postgres".into();
    }
    gp_recovery_core::probe::os_user_name().or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "postgres".into())
}

/// Directory of the PostgreSQL 15 server programs.
pub fn pg_bindir() -> PathBuf {
    std::env::var_os("PG_BINDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// A command for a Postgres server program, run as the server user.
pub fn pg_command(program: &str) -> Command {
    let path = pg_bindir().join(program);
    let mut cmd = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    };
    // The caller's working directory may be unreadable for `postgres` (/root).
    cmd.current_dir("/");
    cmd.env("LC_ALL", "C");
    cmd
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command and fails with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().map_err(io_err(format!("could not run {}", describe(cmd))))?;
    if !out.status.success() {
        return Err(DemoError::Command {
            command: describe(cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// Runs several commands at once and waits for all of them.
fn run_all(mut cmds: Vec<Command>) -> Result<()> {
    let children = cmds
        .iter_mut()
        .map(|c| {
            c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
            c.spawn().map(|child| (describe(c), child)).map_err(io_err(format!("could not run {}", describe(c))))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut first_error = None;
    for (command, child) in children {
        let out = child.wait_with_output().map_err(io_err(format!("waiting for {command}")))?;
        if !out.status.success() && first_error.is_none() {
            first_error = Some(DemoError::Command {
                command,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Creates a directory (and parents) owned by the server user.
pub fn make_server_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(io_err(format!("could not create {}", dir.display())))?;
    if running_as_root() {
        run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir))?;
    }
    Ok(())
}

/// Appends lines to a file owned by the server user, keeping its owner.
pub fn append_server_file(path: &Path, text: &str) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_err(format!("could not open {}", path.display())))?;
    f.write_all(text.as_bytes()).map_err(io_err(format!("could not write {}", path.display())))?;
    if running_as_root() {
        run(Command::new("chown").arg("postgres:postgres").arg(path))?;
    }
    Ok(())
}

/// True when nothing listens on 127.0.0.1:port.
pub fn port_free(port: u16) -> bool {
    TcpListener::bind((ADDRESS, port)).is_ok()
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A base port with `count` consecutive free ports, not handed out before by
/// this process (tests create clusters in parallel).
pub fn free_port_range(count: u16) -> Result<u16> {
    // Below the kernel's ephemeral ports (32768..), which outgoing
    // connections (ssh, libpq) could take between this check and the start.
    let seed = 20000 + (std::process::id() % 100) as u16 * 100;
    let _ = NEXT_PORT.compare_exchange(0, seed, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..200 {
        let base = NEXT_PORT.fetch_add(count, Ordering::SeqCst);
        if base + count > 32000 {
            NEXT_PORT.store(20000, Ordering::SeqCst);
            continue;
        }
        if (base..base + count).all(port_free) {
            return Ok(base);
        }
    }
    Err(DemoError::Usage(format!("found no {count} consecutive free ports")))
}

/// True when the process exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The pid of the postmaster running in a data directory, if one runs.
pub fn postmaster_pid(datadir: &Path) -> Option<i32> {
    let text = fs::read_to_string(datadir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    process_alive(pid).then_some(pid)
}

/// One Postgres instance of a demo cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// -1 for the coordinator.
    pub content: i32,
    /// 'p' or 'm'
    pub role: char,
    /// The address it listens on: its "host".
    pub host: String,
    pub port: u16,
    pub datadir: PathBuf,
    pub logfile: PathBuf,
    /// The mount namespace of its host (see [`hostns`]), on a cluster with
    /// segment hosts.
    pub namespace: Option<PathBuf>,
}

impl Instance {
    pub fn name(&self) -> String {
        match (self.content, self.role) {
            (-1, _) => "coordinator".into(),
            (c, 'p') => format!("primary{c}"),
            (c, _) => format!("mirror{c}"),
        }
    }

    pub fn conninfo(&self) -> String {
        format!("host={} port={} user={} dbname=postgres connect_timeout=10", self.host, self.port, server_user())
    }

    /// A client connection as the server's superuser.
    pub fn connect(&self) -> Result<postgres::Client> {
        postgres::Client::connect(&self.conninfo(), postgres::NoTls).map_err(sql_err(format!(
            "could not connect to {} on port {}",
            self.name(),
            self.port
        )))
    }

    /// Some(answer of pg_is_in_recovery()), None when it does not answer.
    fn recovery_state(&self) -> Option<bool> {
        self.connect().ok()?.query_one("SELECT pg_is_in_recovery()", &[]).ok().map(|r| r.get(0))
    }

    /// Answers and is a standby.
    pub fn in_recovery(&self) -> bool {
        self.recovery_state() == Some(true)
    }

    /// Answers and accepts writes.
    pub fn writable(&self) -> bool {
        self.recovery_state() == Some(false)
    }

    pub fn start(&self) -> Result<()> {
        // The log outlives restarts: only what this start writes explains it.
        let logged_before = fs::metadata(&self.logfile).map(|m| m.len()).unwrap_or(0);
        let mut start = pg_command("pg_ctl");
        start.args(["-w", "-t", "120", "-D"]).arg(&self.datadir).arg("-l").arg(&self.logfile).arg("start");
        if let Some(ns) = &self.namespace {
            start = hostns::enter(&start, ns);
        }
        run(&mut start).map_err(|e| {
            // The port was free when chosen; another process may bind it first.
            let log = fs::read(&self.logfile).unwrap_or_default();
            let log = String::from_utf8_lossy(log.get(logged_before as usize..).unwrap_or_default());
            if log.contains("could not bind") && log.contains("Address already in use") {
                DemoError::PortInUse(self.port)
            } else {
                e
            }
        })?;
        Ok(())
    }

    /// pg_ctl stop with a mode: smart, fast or immediate.
    pub fn stop(&self, mode: &str) -> Result<()> {
        run(pg_command("pg_ctl").args(["-w", "-t", "120", "-m", mode, "-D"]).arg(&self.datadir).arg("stop"))?;
        Ok(())
    }

    /// The host name registered in the catalog: a one-host cluster's
    /// segments are on localhost.
    pub fn hostname(&self) -> &str {
        if self.host == ADDRESS {
            HOSTNAME
        } else {
            &self.host
        }
    }

    /// The postmaster's pid, from postmaster.pid, if the instance runs.
    pub fn postmaster_pid(&self) -> Option<i32> {
        postmaster_pid(&self.datadir)
    }
}

/// Layout of a demo cluster: ports BASE (coordinator), BASE+1..BASE+N
/// (primaries), BASE+N+1..BASE+2N (mirrors). With several hosts, primary N
/// is on host N mod H and its mirror on the next host (Greenplum's "group"
/// mirroring: all mirrors of one host's primaries are on one other host).
#[derive(Debug, Clone)]
pub struct Cluster {
    pub dir: PathBuf,
    /// Segment hosts other than the coordinator's, each with its own sshd.
    pub hosts: Vec<String>,
    pub coordinator: Instance,
    pub primaries: Vec<Instance>,
    pub mirrors: Vec<Instance>,
}

/// The coordinator's address and every segment host.
fn listen_addresses(hosts: &[String]) -> String {
    std::iter::once(ADDRESS.to_string()).chain(hosts.iter().cloned()).collect::<Vec<_>>().join(",")
}

/// After a host was added: every instance of the cluster in `dir` listens
/// on all its hosts from its next start, and a copy made from now on at
/// once (postgresql.conf travels with it).
pub fn listen_on_hosts(dir: &Path, hosts: &[String]) -> Result<()> {
    let line = format!("listen_addresses = '{}'\n", listen_addresses(hosts));
    let elsewhere = Cluster::relocated_elsewhere(dir);
    for datadir in find_datadirs(dir).iter().chain(&elsewhere) {
        append_server_file(&datadir.join("postgresql.conf"), &line)?;
    }
    Ok(())
}

/// The pg_hba.conf lines of every demo instance.
pub const DEMO_HBA: &str = "host all all 127.0.0.0/8 trust\nhost replication all 127.0.0.0/8 trust\n";

/// The fault tolerance service's settings of a demo cluster: fast enough to
/// watch a failover happen (Greenplum's defaults are 60 s, 20 s, 5, 30 s).
pub const DEMO_FTS_SETTINGS: &str = "gp_recovery.fts_probe_interval = 2s\n\
     gp_recovery.fts_probe_timeout = 2s\ngp_recovery.fts_probe_retries = 2\n\
     gp_recovery.mirror_down_grace_period = 5s\n";

/// Settings every instance gets. No wal_keep_size: the incremental
/// recovery keeps the WAL pg_rewind needs on the target by itself, and kept
/// WAL on the source would be copied by every pg_rewind.
/// Every instance listens on all the cluster's loopback "hosts": a copy of a
/// data directory (recovery onto another host) must work there unchanged.
/// Not '*': a wildcard socket shares its port with another program's on
/// 127.0.0.1, which would then get the demo's connections.
fn common_conf(port: u16, listen: &str, socket_dir: &Path) -> String {
    format!(
        "\n# gpdemo\nport = {port}\nlisten_addresses = '{listen}'\nunix_socket_directories = '{}'\n\
         wal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\n\
         wal_log_hints = on\nhot_standby = on\nshared_buffers = 32MB\nmax_connections = 50\n\
         log_line_prefix = '%m [%p] '\n",
        socket_dir.display()
    )
}

impl Cluster {
    /// The layout of a cluster in `dir`, whether or not it exists yet.
    pub fn layout(dir: &Path, pairs: u16, base_port: u16) -> Cluster {
        Self::layout_on(dir, pairs, base_port, &[])
    }

    /// The layout with segments spread over `hosts` (none: all on
    /// 127.0.0.1); each host's data directories are under DIR/HOST/.
    pub fn layout_on(dir: &Path, pairs: u16, base_port: u16, hosts: &[String]) -> Cluster {
        let logs = dir.join("logs");
        let instance = |content: i32, role: char, port: u16, host: &str| {
            let side = if role == 'p' { "primary" } else { "mirror" };
            let datadir = match (content, hosts.is_empty()) {
                (-1, _) => dir.join("coordinator"),
                (c, true) => dir.join(side).join(format!("gpseg{c}")),
                (c, false) => dir.join(host).join(side).join(format!("gpseg{c}")),
            };
            let namespace = (content != -1 && !hosts.is_empty()).then(|| hostns::ns_file(dir, host));
            let mut i =
                Instance { content, role, host: host.to_string(), port, datadir, logfile: PathBuf::new(), namespace };
            i.logfile = logs.join(format!("{}.log", i.name()));
            i
        };
        let host_of = |c: u16, shift: usize| {
            if hosts.is_empty() {
                ADDRESS.to_string()
            } else {
                hosts[(usize::from(c) + shift) % hosts.len()].clone()
            }
        };
        let mirror_shift = usize::from(hosts.len() > 1);
        Cluster {
            dir: dir.to_path_buf(),
            hosts: hosts.to_vec(),
            coordinator: instance(-1, 'p', base_port, ADDRESS),
            primaries: (0..pairs).map(|c| instance(c.into(), 'p', base_port + 1 + c, &host_of(c, 0))).collect(),
            mirrors: (0..pairs)
                .map(|c| instance(c.into(), 'm', base_port + 1 + pairs + c, &host_of(c, mirror_shift)))
                .collect(),
        }
    }

    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        std::iter::once(&self.coordinator).chain(&self.primaries).chain(&self.mirrors)
    }

    fn env_file(dir: &Path) -> PathBuf {
        dir.join("gpdemo.env")
    }

    /// Creates and starts the cluster, creates the extension and registers
    /// every instance with gp_add_segment.
    pub fn create(dir: &Path, pairs: u16, base_port: u16) -> Result<Cluster> {
        Self::create_on(dir, pairs, base_port, &[])
    }

    /// As create, with the segments on `hosts`: loopback addresses other
    /// than 127.0.0.1, each with an sshd through which the coordinator's
    /// gp_recovery.remote_shell reaches it.
    pub fn create_on(dir: &Path, pairs: u16, base_port: u16, hosts: &[String]) -> Result<Cluster> {
        if let Some(bad) = hosts.iter().find(|h| !h.starts_with("127.") || h.as_str() == ADDRESS) {
            return Err(DemoError::Usage(format!(
                "--hosts takes loopback addresses other than {ADDRESS} (such as 127.0.0.2), not {bad}"
            )));
        }
        if pairs == 0 {
            return Err(DemoError::Usage("--pairs must be at least 1".into()));
        }
        if u32::from(base_port) + 2 * u32::from(pairs) > 65535 {
            return Err(DemoError::Usage(format!("ports {base_port}.. do not fit below 65536")));
        }
        if Self::env_file(dir).exists() || dir.join("coordinator").exists() {
            return Err(DemoError::Usage(format!(
                "a demo cluster already exists in {}; run ./gpdemo destroy --dir {} first",
                dir.display(),
                dir.display()
            )));
        }
        let cluster = Self::layout_on(dir, pairs, base_port, hosts);
        if let Some(busy) = cluster.instances().find(|i| !port_free(i.port)) {
            return Err(DemoError::PortInUse(busy.port));
        }
        make_server_dir(&dir.join("logs"))?;
        for i in cluster.primaries.iter().chain(&cluster.mirrors) {
            make_server_dir(i.datadir.parent().unwrap_or(dir))?;
        }
        make_server_dir(dir)?;
        let ssh = if hosts.is_empty() {
            None
        } else {
            hostns::create(dir, hosts)?;
            let ssh = sshd::SshHosts::new(dir, free_port_range(1)?);
            ssh.create(hosts)?;
            Some(ssh)
        };

        let writable: Vec<&Instance> = std::iter::once(&cluster.coordinator).chain(&cluster.primaries).collect();
        run_all(
            writable
                .iter()
                .map(|i| {
                    let mut c = pg_command("initdb");
                    c.args(["--auth=trust", "--no-sync", "--no-instructions", "-E", "UTF8", "-D"]).arg(&i.datadir);
                    c
                })
                .collect(),
        )?;
        for i in &writable {
            let mut conf = common_conf(i.port, &listen_addresses(&cluster.hosts), dir);
            if i.content == -1 {
                conf.push_str("shared_preload_libraries = 'gp_recovery'\n");
                conf.push_str(DEMO_FTS_SETTINGS);
                if let Some(ssh) = &ssh {
                    conf.push_str(&format!("gp_recovery.remote_shell = '{}'\n", ssh.remote_shell()));
                }
            }
            append_server_file(&i.datadir.join("postgresql.conf"), &conf)?;
            // Every loopback "host" may connect and replicate; nothing else.
            append_server_file(&i.datadir.join("pg_hba.conf"), DEMO_HBA)?;
            i.start()?;
        }
        run_all(cluster.primaries.iter().zip(&cluster.mirrors).map(|(p, m)| base_backup(p, m)).collect())?;
        for (p, m) in cluster.primaries.iter().zip(&cluster.mirrors) {
            configure_mirror(p, m)?;
            m.start()?;
            let mut client = p.connect()?;
            // Two statements: ALTER SYSTEM refuses to run in a transaction block.
            client
                .batch_execute(&format!("ALTER SYSTEM SET synchronous_standby_names = '{MIRROR_APPLICATION_NAME}'"))
                .and_then(|_| client.batch_execute("SELECT pg_reload_conf()"))
                .map_err(sql_err("could not turn on synchronous replication"))?;
        }
        for p in &cluster.primaries {
            wait_for_sync_mirror(p, Duration::from_secs(120))?;
        }
        cluster.register()?;
        cluster.write_env()?;
        Ok(cluster)
    }

    /// CREATE EXTENSION and gp_add_segment for every instance.
    fn register(&self) -> Result<()> {
        let mut c = self.coordinator.connect()?;
        c.batch_execute("CREATE EXTENSION IF NOT EXISTS gp_recovery")
            .map_err(sql_err("could not create the extension gp_recovery"))?;
        for i in self.instances() {
            let datadir = i.datadir.to_string_lossy().into_owned();
            let role = i.role.to_string();
            c.execute(
                "SELECT gp_add_segment($1, $2::text::\"char\", $3, $4, $5, $6)",
                &[&i.content, &role, &i.hostname(), &i32::from(i.port), &datadir, &i.host],
            )
            .map_err(sql_err(format!("could not register {}", i.name())))?;
        }
        Ok(())
    }

    /// Builds a standby coordinator in `standby/` of the cluster's directory,
    /// on `port` of the coordinator's host, and waits until the job ends;
    /// returns its data directory.
    pub fn init_standby(&self, port: u16) -> Result<PathBuf> {
        let datadir = self.dir.join("standby");
        let mut c = self.coordinator.connect()?;
        let path = datadir.to_string_lossy().into_owned();
        let job: i64 = c
            .query_one("SELECT gp_init_standby($1, $2, $3)", &[&HOSTNAME, &i32::from(port), &path])
            .map_err(sql_err("could not queue the standby's build"))?
            .get(0);
        c.query_one("SELECT gp_recovery_wait($1, '600s')", &[&job])
            .map_err(sql_err(format!("the standby's build (job {job}) failed")))?;
        Ok(datadir)
    }

    /// The libpq environment that reaches the coordinator.
    pub fn env_lines(&self) -> String {
        format!(
            "export PGHOST={ADDRESS}\nexport PGPORT={}\nexport PGUSER={}\nexport PGDATABASE=postgres\n",
            self.coordinator.port,
            server_user()
        )
    }

    fn write_env(&self) -> Result<()> {
        let path = Self::env_file(&self.dir);
        fs::write(&path, self.env_lines()).map_err(io_err(format!("could not write {}", path.display())))
    }

    /// The saved connection settings of the cluster in `dir`.
    pub fn read_env(dir: &Path) -> Result<String> {
        let path = Self::env_file(dir);
        fs::read_to_string(&path).map_err(io_err(format!(
            "no demo cluster in {} (could not read {})",
            dir.display(),
            path.display()
        )))
    }

    /// Stops every instance found under `dir` and removes the directory.
    pub fn destroy(dir: &Path) -> Result<()> {
        if !dir.exists() {
            return Ok(());
        }
        // Segments relocated outside the cluster's directory are stopped
        // too (their files stay: they are not under `dir`).
        let elsewhere = Self::relocated_elsewhere(dir);
        sshd::SshHosts::stop_all(dir);
        for datadir in find_datadirs(dir).iter().chain(&elsewhere) {
            if datadir.join("postmaster.pid").exists() {
                // immediate: nothing of a demo needs a clean shutdown checkpoint.
                let _ = run(pg_command("pg_ctl")
                    .args(["-w", "-t", "60", "-m", "immediate", "-D"])
                    .arg(datadir)
                    .arg("stop"));
            }
        }
        for d in std::iter::once(dir).chain(elsewhere.iter().map(PathBuf::as_path)) {
            end_processes_under(d);
        }
        hostns::unmount_under(dir);
        fs::remove_dir_all(dir).map_err(io_err(format!("could not remove {}", dir.display())))
    }

    /// The data directories outside `dir` that the running coordinator's
    /// catalog names; none when it does not answer.
    fn relocated_elsewhere(dir: &Path) -> Vec<PathBuf> {
        let port = Self::read_env(dir)
            .ok()
            .and_then(|env| env.lines().find_map(|l| l.strip_prefix("export PGPORT=")?.trim().parse::<u16>().ok()));
        let Some(mut c) = port.and_then(|p| Self::layout(dir, 0, p).coordinator.connect().ok()) else {
            return Vec::new();
        };
        c.query("SELECT datadir FROM gp_segment_configuration", &[])
            .map(|rows| {
                rows.iter().map(|r| PathBuf::from(r.get::<_, String>(0))).filter(|d| !d.starts_with(dir)).collect()
            })
            .unwrap_or_default()
    }
}

/// A process and all its descendants, parents first.
pub fn process_tree(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let tasks = fs::read_dir(format!("/proc/{}/task", all[i])).into_iter().flatten().flatten();
        for task in tasks {
            let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            all.extend(children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
        }
        i += 1;
    }
    all
}

/// The tools a recovery step runs on a cluster's files.
const STEP_TOOLS: [&str; 5] = ["postgres", "pg_ctl", "pg_basebackup", "pg_rewind", "rsync"];

/// Ends what a stopped cluster can leave behind: a step the coordinator's
/// worker had started runs on without it, and a `pg_ctl start` in flight
/// brings up a postmaster after the stop pass, which would keep its port
/// with its directory gone. Postmasters get an immediate shutdown (SIGQUIT),
/// the other tools SIGKILL.
fn end_processes_under(dir: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let exact = dir.as_os_str().as_bytes();
    let mut needle = exact.to_vec();
    needle.push(b'/');
    // An argument that is the directory, or a path below it.
    let names_dir = |cmdline: &[u8]| {
        cmdline.split(|b| *b == 0).any(|arg| arg == exact || arg.windows(needle.len()).any(|w| w == needle.as_slice()))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<(i32, bool)> = fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(|pid| {
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
                let comm = comm.trim();
                let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                (STEP_TOOLS.contains(&comm) && names_dir(&cmdline)).then_some((pid, comm == "postgres"))
            })
            .collect();
        if found.is_empty() || Instant::now() > deadline {
            return;
        }
        for (pid, postmaster) in found {
            // SAFETY: a process of this cluster's tools, found just above.
            unsafe { libc::kill(pid, if postmaster { libc::SIGQUIT } else { libc::SIGKILL }) };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every data directory (a directory holding PG_VERSION) up to three levels below `dir`.
pub fn find_datadirs(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: u8, out: &mut Vec<PathBuf>) {
        if dir.join("PG_VERSION").is_file() && dir.join("global").is_dir() {
            out.push(dir.to_path_buf());
            return;
        }
        if depth == 0 {
            return;
        }
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path(), depth - 1, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, 3, &mut out);
    out.sort();
    out
}

/// pg_basebackup of a primary into the mirror's directory, creating the slot.
fn base_backup(primary: &Instance, mirror: &Instance) -> Command {
    let mut c = pg_command("pg_basebackup");
    c.args(["-h", &primary.host, "-p", &primary.port.to_string(), "-U", &server_user()])
        .arg("-D")
        .arg(&mirror.datadir)
        .args(["-X", "stream", "-c", "fast", "--no-sync", "-C", "-S", SLOT_NAME]);
    c
}

/// Makes a copy of a primary a mirror streaming from it.
pub fn configure_mirror(primary: &Instance, mirror: &Instance) -> Result<()> {
    append_server_file(
        &mirror.datadir.join("postgresql.auto.conf"),
        &format!(
            "port = {}\nprimary_conninfo = 'host={} port={} user={} application_name={MIRROR_APPLICATION_NAME}'\n\
             primary_slot_name = '{SLOT_NAME}'\n",
            mirror.port,
            primary.host,
            primary.port,
            server_user()
        ),
    )?;
    append_server_file(&mirror.datadir.join("standby.signal"), "")
}

/// A connection to whichever of `members` accepts writes now, if any.
pub fn connect_to_primary(members: &[Instance]) -> Option<postgres::Client> {
    members.iter().find_map(|m| {
        let mut c = m.connect().ok()?;
        let primary: bool = c.query_one("SELECT NOT pg_is_in_recovery()", &[]).ok()?.get(0);
        primary.then_some(c)
    })
}

/// Polls `f` every 200 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(DemoError::Timeout(timeout, what.to_string()))
}

/// Waits until the primary reports its mirror streaming as the synchronous standby.
pub fn wait_for_sync_mirror(primary: &Instance, timeout: Duration) -> Result<()> {
    let mut client = primary.connect()?;
    wait_until(timeout, &format!("the mirror of {} to stream synchronously", primary.name()), || {
        client
            .query_opt(
                "SELECT 1 FROM pg_stat_replication WHERE application_name = $1 \
                 AND state = 'streaming' AND sync_state = 'sync'",
                &[&MIRROR_APPLICATION_NAME],
            )
            .map(|r| r.is_some())
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_follows_gpdemo_ports_and_directories() {
        let c = Cluster::layout(Path::new("/var/tmp/demo"), 3, 7000);
        let ports: Vec<u16> = c.instances().map(|i| i.port).collect();
        assert_eq!(ports, vec![7000, 7001, 7002, 7003, 7004, 7005, 7006]);
        assert_eq!(c.primaries[2].datadir, Path::new("/var/tmp/demo/primary/gpseg2"));
        assert_eq!(c.mirrors[0].datadir, Path::new("/var/tmp/demo/mirror/gpseg0"));
        assert_eq!(c.mirrors[0].logfile, Path::new("/var/tmp/demo/logs/mirror0.log"));
        assert_eq!((c.mirrors[1].content, c.mirrors[1].role), (1, 'm'));
        assert_eq!(c.coordinator.name(), "coordinator");
    }

    #[test]
    fn finds_data_directories_below_a_cluster() {
        let root = std::env::temp_dir().join(format!("gpdemo-find-{}", std::process::id()));
        for d in ["coordinator", "primary/gpseg0", "mirror/gpseg0", "logs"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for d in ["coordinator", "primary/gpseg0", "mirror/gpseg0"] {
            fs::write(root.join(d).join("PG_VERSION"), "15\n").unwrap();
            fs::create_dir_all(root.join(d).join("global")).unwrap();
        }
        let found = find_datadirs(&root);
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(found, vec![root.join("coordinator"), root.join("mirror/gpseg0"), root.join("primary/gpseg0")]);
    }

    #[test]
    fn process_alive_sees_itself_and_not_a_missing_pid() {
        assert!(process_alive(std::process::id() as i32));
        assert!(!process_alive(i32::MAX));
    }
}
