//! The failover baseline: a real pg_auto_failover 2.0 formation (a monitor
//! and two Postgres nodes) on this machine at its fastest settings, failed
//! over the way the failover row fails ours over: SIGKILL of the primary,
//! then the seconds until a commit succeeds on the other node.
//!
//! "The primary" is the node's Postgres and its pg_autoctl together. With
//! its postmaster alone killed, pg_autoctl restarts Postgres in place
//! (9 kills in 10 in a trial run), so there is mostly no failover to time;
//! a killed segment of ours has nothing that restarts it, and neither has
//! a primary whose pg_autoctl is gone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gpdemo::{run, server_user, wait_until, Cluster, Instance, ADDRESS};

use crate::{commits_on, err, signal_all, Res};

/// Debian's pg-auto-failover-cli installs it here, not in the server's
/// bindir; gpdemo::pg_command keeps an absolute path as it is.
const PG_AUTOCTL: &str = "/usr/bin/pg_autoctl";

/// The monitor's failure detection and failover settings, at their fastest
/// (the milliseconds and counts that pg_settings shows for them).
///
/// No keeper-side `timeout.*` is lowered: in 2.0 none of them is on the
/// path from a killed primary to the promotion. prepare_promotion_catchup
/// and postgresql_restart_failure_* are upper bounds that a healthy
/// failover does not reach, network_partition_timeout is the primary's own
/// (it demotes itself when it loses the monitor and the standby), and
/// prepare_promotion_walreceiver is read but not used (a TODO in its source).
pub const MONITOR_SETTINGS: [(&str, i32); 6] = [
    ("health_check_period", 1000),
    ("health_check_timeout", 1000),
    ("health_check_retry_delay", 1000),
    ("health_check_max_retries", 1),
    ("node_considered_unhealthy_timeout", 1000),
    ("primary_demote_timeout", 1000),
];

/// Longest wait for any step: creating a node, a failover, a rejoin.
const DEADLINE: Duration = Duration::from_secs(120);

/// The settings as a results row names them.
pub fn settings_text() -> String {
    let each: Vec<String> = MONITOR_SETTINGS
        .iter()
        .map(|(name, v)| if name.ends_with("retries") { format!("{name} = {v}") } else { format!("{name} = {v} ms") })
        .collect();
    format!("pgautofailover.{{{}}}", each.join(", "))
}

/// A base port with the next two free in 7000-7099: gpdemo's clusters take
/// theirs from 20000 up, so the formation never competes with them.
pub fn free_base_port() -> Res<u16> {
    (7000..=7097)
        .step_by(3)
        .find(|b| (*b..b + 3).all(gpdemo::port_free))
        .ok_or_else(|| "no 3 consecutive free ports in 7000-7099".to_string())
}

/// Builds a formation in `dir` (monitor on `base_port`, nodes on the next
/// two), fails its primary over `runs` times, restarting the killed node's
/// pg_autoctl after each so that it rejoins as secondary, and removes it all
/// again, also on error. Returns the seconds from each SIGKILL to the first
/// commit on the other node.
pub fn failover_times(dir: &Path, runs: usize, base_port: u16) -> Res<Vec<f64>> {
    remove_leftovers(dir)?;
    let mut f = Formation::new(dir, base_port);
    let result = f.start().and_then(|()| (0..runs).map(|i| f.fail_over(i + 1)).collect::<Res<Vec<f64>>>());
    // The logs go with the directory: what they said about a failure goes in the error.
    let result = result.map_err(|e| format!("{e}\n{}", f.log_tails()));
    let torn_down = f.teardown();
    let times = result?;
    torn_down?;
    Ok(times)
}

/// One `pg_autoctl` service: the monitor's or a node's.
struct Keeper {
    name: &'static str,
    datadir: PathBuf,
    child: Child,
}

struct Formation {
    dir: PathBuf,
    monitor_port: u16,
    nodes: [Instance; 2],
    keepers: Vec<Keeper>,
}

impl Formation {
    fn new(dir: &Path, base_port: u16) -> Formation {
        let node = |i: u16| Instance {
            content: 0,
            role: if i == 1 { 'p' } else { 'm' },
            host: ADDRESS.into(),
            port: base_port + i,
            datadir: dir.join(format!("node{i}")),
            logfile: dir.join(format!("node{i}.log")),
            namespace: None,
        };
        Formation { dir: dir.to_path_buf(), monitor_port: base_port, nodes: [node(1), node(2)], keepers: Vec::new() }
    }

    /// A pg_autoctl command as the server user.
    fn autoctl(&self, args: &[&str]) -> Command {
        autoctl(&self.dir, args)
    }

    fn monitor(&self) -> Res<postgres::Client> {
        let conninfo = format!(
            "host={ADDRESS} port={} user={} dbname=pg_auto_failover connect_timeout=10",
            self.monitor_port,
            server_user()
        );
        postgres::Client::connect(&conninfo, postgres::NoTls).map_err(|e| gpdemo::sql_message(&e))
    }

    /// Starts `pg_autoctl create ... --run` in the background.
    fn create(&mut self, name: &'static str, args: &[&str]) -> Res<()> {
        let pgdata = self.dir.join(name).to_string_lossy().into_owned();
        let pgctl = gpdemo::pg_bindir().join("pg_ctl").to_string_lossy().into_owned();
        let mut cmd = self.autoctl(&["create"]);
        cmd.args(args)
            .args(["--pgdata", &pgdata, "--pgctl", &pgctl, "--hostname", ADDRESS, "--auth", "trust", "--no-ssl"])
            .arg("--run");
        self.spawn(name, cmd)
    }

    /// Runs a pg_autoctl service in the background, appending to NAME.log.
    fn spawn(&mut self, name: &'static str, mut cmd: Command) -> Res<()> {
        let log_path = self.dir.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("could not open {}: {e}", log_path.display()))?;
        cmd.stdin(Stdio::null()).stdout(log.try_clone().map_err(err)?).stderr(log);
        let child = cmd.spawn().map_err(|e| format!("could not run {PG_AUTOCTL}: {e}"))?;
        self.keepers.push(Keeper { name, datadir: self.dir.join(name), child });
        Ok(())
    }

    /// Polls `done` until it holds, failing at the deadline or as soon as a
    /// pg_autoctl service has exited (it would not come back).
    fn wait(&self, what: &str, mut done: impl FnMut(&Self) -> bool) -> Res<()> {
        let mut exited = None;
        let waited = wait_until(DEADLINE, what, || {
            exited = self.keepers.iter().find(|k| !gpdemo::process_alive(k.child.id() as i32)).map(|k| k.name);
            exited.is_some() || done(self)
        });
        if let Some(name) = exited {
            return Err(format!("pg_autoctl of {name} exited while waiting for {what}"));
        }
        waited.map_err(|e| format!("{e}; the monitor shows {}", self.describe()))
    }

    /// (port, reported state, goal state) of each node as the monitor has them.
    fn states(&self) -> Res<Vec<(i32, String, String)>> {
        let rows = self
            .monitor()?
            .query(
                "SELECT nodeport, reportedstate::text, goalstate::text FROM pgautofailover.node ORDER BY nodeid",
                &[],
            )
            .map_err(|e| gpdemo::sql_message(&e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    fn describe(&self) -> String {
        match self.states() {
            Ok(s) => s.iter().map(|(port, r, g)| format!("port {port} {r} (goal {g})")).collect::<Vec<_>>().join(", "),
            Err(e) => format!("nothing (the monitor does not answer: {e})"),
        }
    }

    /// The node that is primary and the one that is secondary, once the
    /// monitor has both reached their goal.
    fn pair(&self) -> Option<(Instance, Instance)> {
        let states = self.states().ok()?;
        let node = |state: &str| {
            let port = states.iter().find(|(_, r, g)| r == state && g == state)?.0;
            self.nodes.iter().find(|n| i32::from(n.port) == port).cloned()
        };
        (states.len() == 2).then_some(())?;
        Some((node("primary")?, node("secondary")?))
    }

    fn start(&mut self) -> Res<()> {
        for d in ["", "config", "share", "run"] {
            // pg_autoctl keeps its configuration, state and pid files in the
            // XDG directories: these, so that nothing is left outside `dir`
            // (the runtime directory must exist, or it falls back to /tmp).
            gpdemo::make_server_dir(&self.dir.join(d)).map_err(err)?;
        }
        eprintln!("== pg_auto_failover: monitor on port {}", self.monitor_port);
        let port = self.monitor_port.to_string();
        self.create("monitor", &["monitor", "--pgport", &port])?;
        self.wait("the monitor", |f| f.states().is_ok())?;
        let mut c = self.monitor()?;
        for (name, value) in MONITOR_SETTINGS {
            c.batch_execute(&format!("ALTER SYSTEM SET pgautofailover.{name} = {value}")).map_err(err)?;
        }
        c.batch_execute("SELECT pg_reload_conf()").map_err(err)?;
        // The reload is asynchronous: a new session sees it once it is done.
        self.wait("the monitor's settings to apply", |f| {
            f.monitor().is_ok_and(|mut c| {
                MONITOR_SETTINGS.iter().all(|(name, value)| {
                    c.query_one("SELECT setting FROM pg_settings WHERE name = $1", &[&format!("pgautofailover.{name}")])
                        .is_ok_and(|r| r.get::<_, String>(0) == value.to_string())
                })
            })
        })?;
        let uri = format!("postgres://autoctl_node@{ADDRESS}:{}/pg_auto_failover?sslmode=disable", self.monitor_port);
        for (i, name) in ["node1", "node2"].into_iter().enumerate() {
            eprintln!("== pg_auto_failover: {name} on port {}", self.nodes[i].port);
            let port = self.nodes[i].port.to_string();
            self.create(
                name,
                &["postgres", "--name", name, "--pgport", &port, "--listen", ADDRESS, "--monitor", &uri],
            )?;
            // One at a time: the first is the primary that the second copies.
            let want = if i == 0 { "single" } else { "secondary" };
            self.wait(&format!("{name} to reach {want}"), |f| {
                f.states()
                    .is_ok_and(|s| s.iter().any(|(p, r, g)| *p == i32::from(f.nodes[i].port) && r == want && g == want))
            })?;
        }
        self.wait("one primary and one secondary", |f| f.pair().is_some())?;
        // Right after it starts, the monitor fails nothing over for
        // startup_grace_period (10 s): a running formation is past that.
        self.wait("the monitor's startup grace period to pass", |f| {
            f.monitor().is_ok_and(|mut c| {
                c.query_one(
                    "SELECT extract(epoch FROM now() - pg_postmaster_start_time()) * 1000 > setting::float8 \
                     FROM pg_settings WHERE name = 'pgautofailover.startup_grace_period'",
                    &[],
                )
                .is_ok_and(|r| r.get::<_, bool>(0))
            })
        })?;
        let (primary, _) = self.pair().ok_or("the formation lost its primary")?;
        primary.connect().map_err(err)?.batch_execute("CREATE TABLE bench_probe (x int)").map_err(err)?;
        Ok(())
    }

    /// SIGKILL of the primary (its pg_autoctl and every process under it,
    /// the postmaster among them); the seconds until a commit succeeds on
    /// the other node, polled every 10 ms as for our row. Then restarts the
    /// killed node's pg_autoctl and waits for it to be back as secondary.
    fn fail_over(&mut self, run: usize) -> Res<f64> {
        let (primary, other) = self.pair().ok_or_else(|| format!("no primary and secondary: {}", self.describe()))?;
        let i =
            self.keepers.iter().position(|k| k.datadir == primary.datadir).ok_or("the primary has no pg_autoctl")?;
        let mut keeper = self.keepers.remove(i);
        let mut pids = gpdemo::process_tree(keeper.child.id() as i32);
        pids.extend(primary.postmaster_pid().filter(|p| !pids.contains(p)));
        signal_all(&pids, libc::SIGKILL);
        let killed = Instant::now();
        let _ = keeper.child.wait();
        let took = loop {
            if killed.elapsed() > DEADLINE {
                return Err(format!(
                    "run {run}: no commit on port {} within {} s of the SIGKILL of port {}; the monitor shows {}",
                    other.port,
                    DEADLINE.as_secs(),
                    primary.port,
                    self.describe()
                ));
            }
            if commits_on(&other) {
                break killed.elapsed().as_secs_f64();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        eprintln!("== pg_auto_failover: run {run}: port {} → port {} in {took:.2} s", primary.port, other.port);
        // Its pg_autoctl starts Postgres, rewinds it and follows the new primary.
        let mut cmd = self.autoctl(&["run", "--pgdata"]);
        cmd.arg(&keeper.datadir);
        self.spawn(keeper.name, cmd)?;
        self.wait(&format!("port {} to rejoin as secondary", primary.port), |f| {
            f.pair().is_some_and(|(_, secondary)| secondary.port == primary.port)
        })?;
        Ok(took)
    }

    /// The last lines of each service's log.
    fn log_tails(&self) -> String {
        self.keepers
            .iter()
            .map(|k| {
                let log = std::fs::read_to_string(self.dir.join(format!("{}.log", k.name))).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                format!("--- {}.log:\n{}", k.name, lines[lines.len().saturating_sub(8)..].join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops every service (nodes first), then whatever Postgres is left,
    /// and removes the directory. Safe to call twice.
    fn teardown(&mut self) -> Res<()> {
        while let Some(mut k) = self.keepers.pop() {
            stop_service(&self.dir, &k.datadir);
            let stopped = wait_until(Duration::from_secs(30), "pg_autoctl to stop", || {
                k.child.try_wait().is_ok_and(|s| s.is_some())
            });
            if stopped.is_err() {
                signal_all(&gpdemo::process_tree(k.child.id() as i32), libc::SIGKILL);
                let _ = k.child.wait();
            }
        }
        Cluster::destroy(&self.dir).map_err(err)
    }
}

impl Drop for Formation {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

/// pg_autoctl with its files under `dir` (see Formation::start), as the server user.
fn autoctl(dir: &Path, args: &[&str]) -> Command {
    let mut c = gpdemo::pg_command(PG_AUTOCTL);
    c.args(args)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_DATA_HOME", dir.join("share"))
        .env("XDG_RUNTIME_DIR", dir.join("run"));
    c
}

/// Asks the pg_autoctl service of `datadir` to stop, Postgres with it
/// (immediate: nothing here needs a shutdown checkpoint).
fn stop_service(dir: &Path, datadir: &Path) {
    let _ = run(autoctl(dir, &["stop", "--immediate", "--pgdata"]).arg(datadir));
}

/// The pid of the pg_autoctl service of `datadir`, from its pid file, if it runs.
fn service_pid(dir: &Path, datadir: &Path) -> Option<i32> {
    let rel = datadir.strip_prefix("/").ok()?;
    let text = std::fs::read_to_string(dir.join("run/pg_autoctl").join(rel).join("pg_autoctl.pid")).ok()?;
    let pid = text.lines().next()?.trim().parse().ok()?;
    gpdemo::process_alive(pid).then_some(pid)
}

/// A formation that a killed run left in `dir`: its services keep
/// restarting Postgres, so they are stopped before the directory goes.
/// Call it before choosing ports: what it stops frees theirs.
pub fn remove_leftovers(dir: &Path) -> Res<()> {
    if !dir.exists() {
        return Ok(());
    }
    for name in ["node2", "node1", "monitor"] {
        let datadir = dir.join(name);
        let Some(pid) = service_pid(dir, &datadir) else { continue };
        stop_service(dir, &datadir);
        if wait_until(Duration::from_secs(30), "a left over pg_autoctl to stop", || !gpdemo::process_alive(pid))
            .is_err()
        {
            signal_all(&gpdemo::process_tree(pid), libc::SIGKILL);
        }
    }
    Cluster::destroy(dir).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_text_names_each_setting_with_its_unit() {
        let t = settings_text();
        assert!(t.starts_with("pgautofailover.{health_check_period = 1000 ms, "), "{t}");
        assert!(t.contains("health_check_max_retries = 1, "), "{t}");
        assert!(t.ends_with("primary_demote_timeout = 1000 ms}"), "{t}");
    }
}
