//! `gpdemo`: create, inspect and destroy local demo clusters, and the tour.
//! The `./gpdemo` script at the repository root sets the machine up, builds
//! and installs the extension, then runs this.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use gpdemo::{server_user, wait_for_sync_mirror, Cluster, DemoError, Result, ADDRESS};

const USAGE: &str = "\
usage: gpdemo create  [--dir DIR] [--pairs N] [--port BASE] [--hosts H1,H2,...] [--standby]
       gpdemo destroy [--dir DIR]
       gpdemo fail-host HOST [--dir DIR]
       gpdemo restart-host HOST [--dir DIR]
       gpdemo add-host HOST [--dir DIR]
       gpdemo env     [--dir DIR]
       gpdemo tour    [--dir DIR] [--port BASE]

create   a coordinator on BASE with gp_recovery, N primaries on BASE+1..BASE+N,
         and their mirrors on BASE+N+1..BASE+2N (defaults: 3 pairs, port 7000);
         with --hosts (loopback addresses such as 127.0.0.2,127.0.0.3; needs
         root) the segments are spread over those hosts, each with its own
         sshd, and the coordinator reaches them only through ssh; with
         --standby a standby coordinator on BASE+2N+1 (gp_init_standby)
fail-host     kill every segment on HOST and stop its sshd (a dead host)
restart-host  start HOST's sshd again; its segments wait for recovery
add-host      a new empty host (a loopback address), with its sshd, to relocate segments onto
destroy  stop every instance of the cluster and remove its directory
env      print the settings that connect psql to the coordinator
tour     create a demo cluster (own directory, port 7100) and walk through it";

fn default_dir(suffix: &str) -> PathBuf {
    let user = if gpdemo::running_as_root() { String::new() } else { format!("-{}", server_user()) };
    PathBuf::from(format!("/var/tmp/gpdemo{suffix}{user}"))
}

struct Args {
    command: String,
    dir: Option<PathBuf>,
    pairs: u16,
    port: Option<u16>,
    hosts: Vec<String>,
    /// fail-host / restart-host / add-host: the host.
    target: Option<String>,
    standby: bool,
}

fn parse(args: &[String]) -> Result<Args> {
    let usage = |msg: String| DemoError::Usage(format!("{msg}\n{USAGE}"));
    let mut it = args.iter();
    let command = it.next().cloned().ok_or_else(|| usage("no command given".into()))?;
    let mut parsed = Args { command, dir: None, pairs: 3, port: None, hosts: Vec::new(), target: None, standby: false };
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| usage(format!("{flag} needs a value")));
        match flag.as_str() {
            "--dir" => parsed.dir = Some(PathBuf::from(value()?)),
            "--pairs" => {
                let v = value()?;
                parsed.pairs = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| usage(format!("--pairs takes a number from 1 to 64, not {v}")))?;
            }
            "--port" => {
                let v = value()?;
                parsed.port = Some(
                    v.parse()
                        .ok()
                        .filter(|p| *p >= 1024)
                        .ok_or_else(|| usage(format!("--port takes a port number from 1024 to 65535, not {v}")))?,
                );
            }
            "--standby" => parsed.standby = true,
            "--hosts" => {
                parsed.hosts = value()?.split(',').map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).collect()
            }
            host if !host.starts_with('-') && parsed.target.is_none() && parsed.command.ends_with("-host") => {
                parsed.target = Some(host.to_string())
            }
            other => return Err(usage(format!("unknown option {other}"))),
        }
    }
    if parsed.dir.as_deref().is_some_and(|d| !d.is_absolute()) {
        return Err(usage("--dir must be an absolute path".into()));
    }
    Ok(parsed)
}

fn print_connect(cluster: &Cluster) {
    println!("Demo cluster in {} is running:", cluster.dir.display());
    for i in cluster.instances() {
        println!("  {:<12} {:<10} port {:<5} {}", i.name(), i.hostname(), i.port, i.datadir.display());
    }
    println!("\nConnect with:\n  psql -h {ADDRESS} -p {} -U {} postgres", cluster.coordinator.port, server_user());
    println!("or:\n  eval \"$(./gpdemo env --dir {})\" && psql", cluster.dir.display());
}

/// Runs SQL through psql, so the tour shows exactly what a DBA would see,
/// ERRORs included; returns whether psql succeeded.
fn psql_shown(cluster: &Cluster, sql: &str) -> Result<bool> {
    println!("postgres=# {sql}");
    let mut cmd = Command::new(gpdemo::pg_bindir().join("psql"));
    cmd.args(["-X", "-h", ADDRESS, "-p", &cluster.coordinator.port.to_string(), "-U", &server_user()]).args([
        "-d",
        "postgres",
        "-P",
        "pager=off",
        "-c",
        sql,
    ]);
    let out = cmd.output().map_err(|e| DemoError::Usage(format!("could not run psql: {e}")))?;
    println!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok(out.status.success())
}

/// The rows of a query as psql prints them unaligned, '|' between columns.
fn psql_rows(cluster: &Cluster, sql: &str) -> Result<String> {
    let out = gpdemo::run(
        Command::new(gpdemo::pg_bindir().join("psql"))
            .args(["-X", "-A", "-t", "-h", ADDRESS, "-p", &cluster.coordinator.port.to_string(), "-U", &server_user()])
            .args(["-d", "postgres", "-c", sql]),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The single value a query returns.
fn first_value(cluster: &Cluster, sql: &str) -> Result<String> {
    Ok(psql_rows(cluster, sql)?.lines().next().unwrap_or_default().to_string())
}

/// Runs SQL that must succeed.
fn psql(cluster: &Cluster, sql: &str) -> Result<()> {
    if psql_shown(cluster, sql)? {
        Ok(())
    } else {
        Err(DemoError::Usage(format!("the tour's statement failed: {sql}")))
    }
}

/// pgbench's tables on an instance, at a scale (about 15 MB a unit).
fn pgbench_init(instance: &gpdemo::Instance, scale: u32) -> Result<()> {
    let (port, scale) = (instance.port.to_string(), scale.to_string());
    gpdemo::run(Command::new(gpdemo::pg_bindir().join("pgbench")).args([
        "-h",
        ADDRESS,
        "-p",
        &port,
        "-U",
        &server_user(),
        "-i",
        "-q",
        "-s",
        &scale,
        "postgres",
    ]))?;
    Ok(())
}

/// kill -9 of an instance's postmaster; returns its pid.
fn kill9(instance: &gpdemo::Instance, what: &str) -> Result<i32> {
    let pid = instance.postmaster_pid().ok_or_else(|| DemoError::Usage(format!("{what} is not running")))?;
    // SAFETY: kills a postmaster this demo started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    Ok(pid)
}

fn step(title: &str) {
    println!("\n==> {title}\n");
}

fn tour(dir: &Path, port: u16) -> Result<()> {
    step("Creating a demo cluster: a coordinator and 3 primary/mirror pairs");
    Cluster::destroy(dir)?;
    let cluster = Cluster::create(dir, 3, port)?;
    print_connect(&cluster);

    step("The segment catalog, as in Greenplum (role/preferred_role p|m, mode s|n, status u|d)");
    psql(&cluster, "SELECT * FROM gp_segment_configuration ORDER BY dbid;")?;

    step("Live status: every segment is probed now, mirrors as their primary reports them");
    let status_sql = "SELECT dbid, content, role, port, answering, in_recovery, replication_state, \
                      sync_state, replay_lsn, bytes_behind FROM gp_segment_status;";
    psql(&cluster, status_sql)?;

    step("gpstate -m: the mirrors");
    psql(&cluster, "SELECT * FROM gp_mirror_status;")?;

    step("gpstate -e: the status report");
    psql(&cluster, "SELECT * FROM gp_state_report();")?;

    let mirror = &cluster.mirrors[0];
    step(&format!("Stopping the mirror of content 0 (port {}) with pg_ctl stop -m immediate", mirror.port));
    mirror.stop("immediate")?;
    psql(&cluster, status_sql)?;
    psql(&cluster, "SELECT * FROM gp_state_report();")?;
    println!(
        "The catalog still says 'u': the fault tolerance service marks a mirror down only after\n\
         gp_recovery.mirror_down_grace_period (5 s in this demo); the live views show the truth at once."
    );

    step("Starting the mirror again within the grace period: it catches up through its replication slot");
    mirror.start()?;
    wait_for_sync_mirror(&cluster.primaries[0], Duration::from_secs(60))?;
    psql(&cluster, "SELECT * FROM gp_state_report();")?;

    let victim = &cluster.primaries[1];
    step("Some data on content 1: pgbench -i -s 5 (about 80 MB)");
    pgbench_init(victim, 5)?;
    step(&format!(
        "A real failure: kill -9 of the primary of content 1 (port {}). The fault tolerance\n\
         service (probe interval 2 s, timeout 2 s, 2 retries in this demo) promotes its mirror",
        victim.port
    ));
    kill9(victim, "the primary of content 1")?;
    let killed = Instant::now();
    let new_primary = &cluster.mirrors[1];
    gpdemo::wait_until(Duration::from_secs(60), "the failover", || new_primary.writable())?;
    println!(
        "The mirror on port {} accepts writes {:.1} s after the kill.\n",
        new_primary.port,
        killed.elapsed().as_secs_f64()
    );
    println!("What the fault tolerance service logged:");
    let log = std::fs::read_to_string(&cluster.coordinator.logfile).unwrap_or_default();
    for line in log.lines().filter(|l| l.contains("FTS: content 1")) {
        println!("  {line}");
    }
    println!();
    psql(&cluster, "SELECT * FROM gp_segment_configuration WHERE content = 1;")?;
    psql(&cluster, "SELECT * FROM gp_mirror_status;")?;
    psql(&cluster, "SELECT * FROM gp_state_report();")?;

    step("What a recovery would do, before doing it: gp_recovery_plan() (a dry run; nothing changes)");
    psql(
        &cluster,
        "SELECT dbid, recovery_type, reason, target, pg_size_pretty(estimated_bytes) AS moves, \
         pg_size_pretty(free_bytes) AS free, warnings FROM gp_recovery_plan('full');",
    )?;
    step(
        "Recovering the failed segment: a full copy (pg_basebackup) from the new primary, run by a\n\
          background worker; the function returns the job id at once",
    );
    let old = 3; // dbid of content 1's original primary in a demo cluster
    println!("(The copy is limited to 40 MB/s here, like gprecoverseg --max-rate, so progress can be watched.)\n");
    psql(&cluster, "ALTER SYSTEM SET gp_recovery.max_rate = '40MB';")?;
    psql(&cluster, "SELECT pg_reload_conf();")?;
    std::thread::sleep(Duration::from_millis(1500));
    let job = first_value(&cluster, &format!("SELECT gp_recover_segment({old}, 'full')"))?;
    println!("postgres=# SELECT gp_recover_segment({old}, 'full');\n job {job}\n");
    println!("Progress, as gp_recovery_progress shows it while the job runs:");
    let progress_sql = format!(
        "SELECT job_id, dbid, recovery_type, phase, bytes_done, bytes_total, percent, wal_remaining_bytes \
         FROM gp_recovery_progress WHERE job_id = {job}"
    );
    let mut last = String::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(300) {
        let rows = psql_rows(&cluster, &progress_sql)?;
        if rows.is_empty() {
            break;
        }
        if rows != last {
            println!("  {rows}");
            last = rows;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!();
    psql(&cluster, &format!("SELECT gp_recovery_wait({job});"))?;
    psql(&cluster, "ALTER SYSTEM RESET gp_recovery.max_rate;")?;
    psql(&cluster, "SELECT pg_reload_conf();")?;
    psql(
        &cluster,
        "SELECT job_id, recovery_type, dbid, state, started_at, finished_at - started_at AS took FROM gp_recovery_job;",
    )?;
    psql(&cluster, "SELECT * FROM gp_segment_configuration WHERE content = 1;")?;
    psql(&cluster, "SELECT * FROM gp_state_report();")?;
    println!("Both members of content 1 are up and synchronized again, with their roles switched.");

    step(
        "Rebalancing: gp_rebalance() switches every such pair back to its preferred roles\n\
          (gprecoverseg -r): a clean stop of the acting primary, its mirror promoted once it has\n\
          replayed the final checkpoint, the old primary restarted as its standby",
    );
    let job = first_value(&cluster, "SELECT * FROM gp_rebalance()")?;
    println!("postgres=# SELECT * FROM gp_rebalance();\n job {job}\n");
    psql(&cluster, &format!("SELECT gp_recovery_wait({job});"))?;
    psql(&cluster, "SELECT * FROM gp_segment_configuration ORDER BY dbid;")?;
    psql(&cluster, "SELECT * FROM gp_mirror_status;")?;
    psql(&cluster, "SELECT * FROM gp_state_report();")?;

    dba_tools_tour(&cluster)?;

    step("The fault tolerance service decides with one table of rules; each reason is also its log text");
    psql(&cluster, "SELECT * FROM gp_fts_rules();")?;

    step("Every catalog change left a history row");
    psql(&cluster, "SELECT * FROM gp_configuration_history ORDER BY \"time\", dbid;")?;

    step("Bad input is refused with an ERROR that names the problem, and nothing changes; another spelling of a live instance's directory or host is not another place");
    let coordinator_alias = format!("{}/./coordinator", dir.display());
    for sql in [
        "SELECT gp_add_segment(0, 'p', 'localhost', 7199, '/var/tmp/nowhere');".to_string(),
        "SELECT gp_add_segment(5, 'x', 'localhost', 7199, '/var/tmp/nowhere');".to_string(),
        format!("SELECT gp_recover_segment(2, 'full', new_port => 7199, new_datadir => '{coordinator_alias}');"),
        format!("SELECT gp_recover_segment(2, 'full', new_hostname => 'LOCALHOST', new_port => {port});"),
        "SELECT gp_recover_segment(NULL);".to_string(),
    ] {
        if psql_shown(&cluster, &sql)? {
            return Err(DemoError::Usage(format!("expected an ERROR from: {sql}")));
        }
    }

    step("Done: every segment in its preferred role, up and synchronized");
    psql(&cluster, "SELECT * FROM gp_state_report();")?;
    let standby_dir = dir.with_file_name(format!("{}-standby", dir.file_name().unwrap_or_default().to_string_lossy()));
    standby_tour(&standby_dir, port + 80)?;
    if gpdemo::running_as_root() {
        let other = dir.with_file_name(format!("{}-hosts", dir.file_name().unwrap_or_default().to_string_lossy()));
        hosts_tour(&other, port + 50)?;
    } else {
        println!("\n(Run the tour as root to see segments on other hosts, reached through ssh.)");
    }
    print_connect(&cluster);
    println!("\nRemove it with:\n  ./gpdemo destroy --dir {}", cluster.dir.display());
    Ok(())
}

/// Runs one of the DBA commands (gprecoverseg, gpstate) against the
/// cluster, showing what it prints; they only call the extension's SQL.
/// gpstate exits 1 while something needs attention, as Greenplum's does:
/// only `must_succeed` fails the tour.
fn dba_command(cluster: &Cluster, program: &str, args: &[&str], must_succeed: bool) -> Result<()> {
    println!("$ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .env("PGHOST", ADDRESS)
        .env("PGPORT", cluster.coordinator.port.to_string())
        .env("PGUSER", server_user())
        .env("PGDATABASE", "postgres")
        .status()
        .map_err(|e| {
            DemoError::Usage(format!("could not run {program} (scripts/install-extension.sh installs it): {e}"))
        })?;
    println!();
    if status.success() || !must_succeed {
        Ok(())
    } else {
        Err(DemoError::Usage(format!("{program} {} failed ({status})", args.join(" "))))
    }
}

/// A Greenplum DBA's habits: gprecoverseg -a and gpstate -e on a killed
/// mirror, then one scrape of the Prometheus exporter.
fn dba_tools_tour(cluster: &Cluster) -> Result<()> {
    step(
        "The same from a Greenplum DBA's hands: the mirror of content 2 killed, then gprecoverseg -a\n\
          (progress bars on a terminal, lines otherwise) and gpstate -e; both only call the SQL API",
    );
    let mirror = &cluster.mirrors[2];
    kill9(mirror, "the mirror of content 2")?;
    let down = "SELECT count(*) FROM gp_segment_configuration WHERE content = 2 AND status = 'd'";
    gpdemo::wait_until(Duration::from_secs(60), "the mirror to be marked down", || {
        first_value(cluster, down).is_ok_and(|v| v == "1")
    })?;
    dba_command(cluster, "gpstate", &["-e"], false)?;
    dba_command(cluster, "gprecoverseg", &["-a"], true)?;
    dba_command(cluster, "gpstate", &["-e"], true)?;
    step("Metrics for Prometheus: prometheus-postgres-exporter with monitoring/queries.yaml, scraped once");
    let exporter = gpdemo::monitoring::Exporter::start(cluster, gpdemo::free_port_range(1)?)?;
    let mut lines = Vec::new();
    gpdemo::wait_until(Duration::from_secs(30), "the exporter's first scrape", || {
        lines = exporter.scrape().unwrap_or_default();
        !lines.is_empty()
    })?;
    println!("$ curl -s http://127.0.0.1:{}/metrics | grep ^gp_recovery_", exporter.port);
    for l in &lines {
        println!("{l}");
    }
    Ok(())
}

/// A part of the tour: a standby coordinator built, the coordinator killed
/// during a recovery, the standby activated, the job reconciled and a
/// failover by the new coordinator.
fn standby_tour(dir: &Path, port: u16) -> Result<()> {
    step("No single point of failure: a cluster with a standby coordinator (gpinitstandby as gp_init_standby())");
    Cluster::destroy(dir)?;
    let cluster = Cluster::create(dir, 1, port)?;
    let standby_port = port + 3;
    let standby_datadir = cluster.init_standby(standby_port)?;
    psql(
        &cluster,
        "SELECT dbid, content, role, mode, status, port, datadir FROM gp_segment_configuration ORDER BY dbid;",
    )?;
    psql(&cluster, "SHOW synchronous_standby_names;")?;
    dba_command(&cluster, "gpstate", &["-f"], true)?;

    step("A recovery is running (a full copy of the mirror, slowed to 5 MB/s) when the coordinator is killed with kill -9");
    let primary = &cluster.primaries[0];
    pgbench_init(primary, 2)?;
    let mirror = first_value(&cluster, "SELECT dbid FROM gp_segment_configuration WHERE content = 0 AND role = 'm'")?;
    kill9(&cluster.mirrors[0], "the mirror")?;
    gpdemo::wait_until(Duration::from_secs(60), "the mirror to be marked down", || {
        first_value(&cluster, &format!("SELECT status FROM gp_segment_configuration WHERE dbid = {mirror}"))
            .is_ok_and(|s| s == "d")
    })?;
    psql(&cluster, "ALTER SYSTEM SET gp_recovery.max_rate = '5MB';")?;
    psql(&cluster, "SELECT pg_reload_conf();")?;
    std::thread::sleep(Duration::from_millis(1500));
    let job = first_value(&cluster, &format!("SELECT gp_recover_segment({mirror}, 'full')"))?;
    println!("postgres=# SELECT gp_recover_segment({mirror}, 'full');\n job {job}\n");
    let copying = format!("SELECT phase FROM gp_recovery_job WHERE job_id = {job}");
    gpdemo::wait_until(Duration::from_secs(60), "the copy to start", || {
        first_value(&cluster, &copying).is_ok_and(|p| p == "copying")
    })?;
    psql(
        &cluster,
        &format!("SELECT job_id, dbid, phase, bytes_done, bytes_total FROM gp_recovery_progress WHERE job_id = {job};"),
    )?;
    let pid = kill9(&cluster.coordinator, "the coordinator")?;
    println!("kill -9 {pid}: the coordinator is gone.\n");

    step("gpactivatestandby as gp_activate_standby(), on the standby: it proves the old coordinator no longer answers, promotes, and its fault tolerance service records the change and raises the coordinator epoch");
    let mut new = cluster.clone();
    new.coordinator = gpdemo::Instance {
        content: -1,
        role: 'm',
        host: ADDRESS.into(),
        port: standby_port,
        datadir: standby_datadir.clone(),
        logfile: standby_datadir.with_extension("gp_recovery.log"),
        namespace: None,
    };
    psql(&new, "SELECT gp_activate_standby();")?;
    gpdemo::wait_until(Duration::from_secs(60), "the activation to be recorded", || {
        first_value(&new, &format!("SELECT role FROM gp_segment_configuration WHERE port = {standby_port}"))
            .is_ok_and(|r| r == "p")
    })?;
    psql(
        &new,
        "SELECT dbid, content, role, preferred_role, mode, status, port FROM gp_segment_configuration ORDER BY dbid;",
    )?;
    println!("The job the old coordinator left is reconciled by the new one's jobs worker, by probing what is there:");
    gpdemo::wait_until(Duration::from_secs(120), "the job to end", || {
        first_value(&new, &format!("SELECT state FROM gp_recovery_job WHERE job_id = {job}"))
            .is_ok_and(|s| s != "running" && s != "queued")
    })?;
    psql(&new, &format!("SELECT job_id, state, phase, error FROM gp_recovery_job WHERE job_id = {job};"))?;
    psql(&new, "ALTER SYSTEM RESET gp_recovery.max_rate;")?;
    psql(&new, "SELECT pg_reload_conf();")?;
    let again = first_value(&new, &format!("SELECT gp_recover_segment({mirror}, 'full')"))?;
    println!("postgres=# SELECT gp_recover_segment({mirror}, 'full');\n job {again}\n");
    psql(&new, &format!("SELECT gp_recovery_wait({again});"))?;
    gpdemo::wait_until(Duration::from_secs(60), "the pair to be synchronized", || {
        first_value(&new, &format!("SELECT mode FROM gp_segment_configuration WHERE dbid = {mirror}"))
            .is_ok_and(|m| m == "s")
    })?;

    step("The new coordinator's fault tolerance service at work: kill -9 of the primary, its mirror promoted");
    kill9(primary, "the primary")?;
    let killed = Instant::now();
    gpdemo::wait_until(Duration::from_secs(60), "the failover", || cluster.mirrors[0].writable())?;
    println!("The mirror accepts writes {:.1} s after the kill.\n", killed.elapsed().as_secs_f64());
    psql(
        &new,
        "SELECT dbid, content, role, preferred_role, mode, status, port FROM gp_segment_configuration ORDER BY dbid;",
    )?;
    psql(&new, "SELECT \"time\", dbid, \"desc\" FROM gp_configuration_history WHERE \"desc\" LIKE 'gpactivatestandby%' OR \"desc\" LIKE 'FTS%' ORDER BY \"time\";")?;
    Cluster::destroy(dir)?;
    println!("(The standby cluster is removed again.)");
    Ok(())
}

/// The second part of the tour: segments on two other "hosts", each with an
/// sshd of its own, one of which dies.
fn hosts_tour(dir: &Path, port: u16) -> Result<()> {
    const HOSTS: [&str; 2] = ["127.0.0.2", "127.0.0.3"];
    step("Segments on other hosts: a second cluster whose segments are on 127.0.0.2 and 127.0.0.3, each with its own sshd; the coordinator reaches their files and processes only through ssh");
    Cluster::destroy(dir)?;
    let hosts: Vec<String> = HOSTS.iter().map(|h| h.to_string()).collect();
    let cluster = Cluster::create_on(dir, 1, port, &hosts)?;
    psql(&cluster, "SHOW gp_recovery.remote_shell;")?;
    psql(&cluster, "SELECT dbid, content, role, mode, status, hostname, port, datadir FROM gp_segment_configuration ORDER BY dbid;")?;

    step("Host 127.0.0.3 dies: the mirror on it is killed and its sshd stopped (./gpdemo fail-host 127.0.0.3)");
    gpdemo::sshd::fail_host(dir, HOSTS[1])?;
    let mirror = first_value(&cluster, "SELECT dbid FROM gp_segment_configuration WHERE role = 'm'")?;
    println!("The fault tolerance service marks the mirror down after its grace period...");
    gpdemo::wait_until(Duration::from_secs(60), "the mirror on 127.0.0.3 to be marked down", || {
        first_value(&cluster, &format!("SELECT status FROM gp_segment_configuration WHERE dbid = {mirror}"))
            .is_ok_and(|s| s == "d")
    })?;
    psql(&cluster, "SELECT * FROM gp_state_report();")?;

    step("Recovering it in place needs the dead host: the job fails with the reason, and the catalog is unchanged");
    let job = first_value(&cluster, &format!("SELECT gp_recover_segment({mirror})"))?;
    psql_shown(&cluster, &format!("SELECT gp_recovery_wait({job});"))?;

    step("Moving it onto the live host instead: a full copy into a new directory on 127.0.0.2, through ssh");
    let new_dir = dir.join(HOSTS[0]).join("mirror").join("gpseg0-moved");
    let new_port = port + 10;
    let job = first_value(
        &cluster,
        &format!(
            "SELECT gp_recover_segment({mirror}, 'full', new_hostname => '{}', new_port => {new_port}, new_datadir => '{}')",
            HOSTS[0],
            new_dir.display()
        ),
    )?;
    psql(&cluster, &format!("SELECT gp_recovery_wait({job});"))?;
    psql(&cluster, "SELECT dbid, content, role, mode, status, hostname, port, datadir FROM gp_segment_configuration ORDER BY dbid;")?;
    psql(&cluster, "SELECT * FROM gp_state_report();")?;
    Cluster::destroy(dir)?;
    println!("(The second cluster is removed again, sshds included.)");
    Ok(())
}

fn main_result(argv: &[String]) -> Result<()> {
    let args = parse(argv)?;
    match args.command.as_str() {
        "create" => {
            let dir = args.dir.unwrap_or_else(|| default_dir(""));
            let base = args.port.unwrap_or(7000);
            let cluster = Cluster::create_on(&dir, args.pairs, base, &args.hosts)?;
            if args.standby {
                let port = base + 2 * args.pairs + 1;
                let standby = cluster.init_standby(port)?;
                println!("  {:<12} {:<10} port {:<5} {}", "standby", gpdemo::HOSTNAME, port, standby.display());
            }
            print_connect(&cluster);
            Ok(())
        }
        "fail-host" | "restart-host" | "add-host" => {
            let dir = args.dir.unwrap_or_else(|| default_dir(""));
            let host =
                args.target.ok_or_else(|| DemoError::Usage(format!("{} needs a HOST\n{USAGE}", args.command)))?;
            if args.command == "fail-host" {
                for d in gpdemo::sshd::fail_host(&dir, &host)? {
                    println!("killed the segment in {}", d.display());
                }
                println!("stopped the sshd of {host}: the host is unreachable");
            } else if args.command == "add-host" {
                gpdemo::sshd::add_host(&dir, &host)?;
                println!(
                    "{host} is a new segment host; move a down segment onto it with \
                     SELECT gp_recover_segment(DBID, 'full', new_hostname => '{host}', new_port => PORT, new_datadir => DIR);"
                );
            } else {
                gpdemo::sshd::restart_host(&dir, &host)?;
                println!("{host} answers ssh again; recover its segments with SELECT * FROM gp_recover_all();");
            }
            Ok(())
        }
        "destroy" => {
            let dir = args.dir.unwrap_or_else(|| default_dir(""));
            Cluster::destroy(&dir)?;
            println!("Removed the demo cluster in {}", dir.display());
            Ok(())
        }
        "env" => {
            print!("{}", Cluster::read_env(&args.dir.unwrap_or_else(|| default_dir("")))?);
            Ok(())
        }
        "tour" => tour(&args.dir.unwrap_or_else(|| default_dir("-tour")), args.port.unwrap_or(7100)),
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(DemoError::Usage(format!("unknown command {other}\n{USAGE}"))),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match main_result(&argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpdemo: {e}");
            ExitCode::FAILURE
        }
    }
}
