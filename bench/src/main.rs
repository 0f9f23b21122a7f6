//! gp_bench: failover, recovery and rebalance measured side by side with the
//! tools a DBA would use instead, on local demo clusters, in one run on the
//! same machine. Writes bench/results.md. Run through ./bench/run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gpdemo::{run, server_user, wait_until, Cluster, Instance};

mod chaos;
mod pgaf;

type Res<T> = Result<T, String>;

/// The fast fault tolerance settings the failover target is stated for.
const FAST: (u32, u32, u32, u32) = (1, 1, 2, 2);

/// Sends `sig` to each of `pids`, processes of the benchmark's own clusters.
fn signal_all(pids: &[i32], sig: i32) {
    for pid in pids {
        // SAFETY: kill has no memory effects; callers pass their clusters' processes.
        unsafe { libc::kill(*pid, sig) };
    }
}

/// True when a commit succeeds on `instance`: the failover rows' (ours and
/// pg_auto_failover's) measure of a new primary at work.
fn commits_on(instance: &Instance) -> bool {
    instance.connect().ok().and_then(|mut c| c.batch_execute("INSERT INTO bench_probe VALUES (1)").ok()).is_some()
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A client committing in a loop on whichever of two members is the
/// primary, measuring the longest time without a commit.
struct GapWriter {
    stop: Arc<AtomicBool>,
    gap: Arc<Mutex<f64>>,
    thread: std::thread::JoinHandle<()>,
}

impl GapWriter {
    fn start(members: [Instance; 2]) -> GapWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let gap = Arc::new(Mutex::new(0f64));
        let (halt, longest) = (stop.clone(), gap.clone());
        let thread = std::thread::spawn(move || {
            let mut last = Instant::now();
            let mut client: Option<postgres::Client> = None;
            while !halt.load(Ordering::SeqCst) {
                if client.is_none() {
                    client = gpdemo::connect_to_primary(&members);
                }
                match client.as_mut().map(|c| c.batch_execute("INSERT INTO bench_probe VALUES (2)")) {
                    Some(Ok(())) => {
                        let mut g = longest.lock().unwrap_or_else(|e| e.into_inner());
                        *g = g.max(last.elapsed().as_secs_f64());
                        last = Instant::now();
                    }
                    _ => {
                        client = None;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            // A commit still waiting when stopped counts up to now.
            let mut g = longest.lock().unwrap_or_else(|e| e.into_inner());
            *g = g.max(last.elapsed().as_secs_f64());
        });
        GapWriter { stop, gap, thread }
    }

    /// Stops it: the longest time without a commit, in seconds.
    fn stop(self) -> f64 {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
        *self.gap.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One line of the results table.
struct Row {
    what: String,
    ours: String,
    baseline: String,
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn secs(v: f64) -> String {
    format!("{v:.2} s")
}

fn mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1_048_576.0)
}

struct Bench {
    cluster: Cluster,
    runs: usize,
    scale: u32,
}

impl Bench {
    fn coord(&self) -> Res<postgres::Client> {
        self.cluster.coordinator.connect().map_err(err)
    }

    fn exec(&self, sql: &str) -> Res<()> {
        self.coord()?.batch_execute(sql).map_err(|e| format!("{sql}: {}", gpdemo::sql_message(&e)))
    }

    fn value<T: for<'a> postgres::types::FromSql<'a>>(&self, sql: &str) -> Res<T> {
        self.coord()?
            .query_one(sql, &[])
            .map_err(|e| format!("{sql}: {}", gpdemo::sql_message(&e)))?
            .try_get(0)
            .map_err(err)
    }

    /// Probe interval, timeout, retries and mirror grace period (seconds).
    fn fts(&self, settings: (u32, u32, u32, u32)) -> Res<()> {
        let names = ["fts_probe_interval", "fts_probe_timeout", "fts_probe_retries", "mirror_down_grace_period"];
        for (name, value) in names.iter().zip([settings.0, settings.1, settings.2, settings.3]) {
            self.exec(&format!("ALTER SYSTEM SET gp_recovery.{name} = {value}"))?;
        }
        self.exec("SELECT pg_reload_conf()")?;
        // A round that starts after the reload runs with the new settings.
        std::thread::sleep(Duration::from_millis(300));
        self.exec("SELECT gp_request_fts_probe_scan()")?;
        Ok(())
    }

    fn row_state(&self, dbid: i16) -> Res<String> {
        self.value(&format!(
            "SELECT role::text || status::text || mode::text FROM gp_segment_configuration WHERE dbid = {dbid}"
        ))
    }

    /// (primary, mirror) instances and dbids of content 0 as the catalog has them now.
    fn members(&self) -> Res<((Instance, i16), (Instance, i16))> {
        let (p, m) = (&self.cluster.primaries[0], &self.cluster.mirrors[0]);
        let dbid_p: i16 = self.value(&format!("SELECT dbid FROM gp_segment_configuration WHERE port = {}", p.port))?;
        let dbid_m: i16 = self.value(&format!("SELECT dbid FROM gp_segment_configuration WHERE port = {}", m.port))?;
        let p_is_primary = self.row_state(dbid_p)?.starts_with('p');
        Ok(if p_is_primary {
            ((p.clone(), dbid_p), (m.clone(), dbid_m))
        } else {
            ((m.clone(), dbid_m), (p.clone(), dbid_p))
        })
    }

    fn wait_job(&self, job: i64) -> Res<()> {
        let state: String = self.value(&format!("SELECT gp_recovery_wait({job})"))?;
        if state == "succeeded" {
            Ok(())
        } else {
            Err(format!("job {job} {state}"))
        }
    }

    fn submit(&self, sql: &str) -> Res<i64> {
        self.value(sql)
    }

    /// SIGKILL of the acting primary of content 0; returns the seconds until
    /// a commit succeeds on the promoted mirror, and the down dbid.
    fn kill_and_time_failover(&self) -> Res<(f64, i16)> {
        let ((primary, pdbid), (mirror, _)) = self.members()?;
        let pid = primary.postmaster_pid().ok_or("the primary does not run")?;
        signal_all(&[pid], libc::SIGKILL);
        let killed = Instant::now();
        loop {
            if killed.elapsed() > Duration::from_secs(300) {
                return Err("no failover within 300 s".into());
            }
            if commits_on(&mirror) {
                let took = killed.elapsed().as_secs_f64();
                // This machine's PID 1 reaps orphans only every second or
                // two, and pg_ctl takes a killed postmaster's zombie for a
                // running server; a host's init (systemd) reaps at once, so
                // the recoveries timed next start after the reaping.
                wait_until(Duration::from_secs(30), "the killed postmaster to be reaped", || {
                    !Path::new(&format!("/proc/{pid}")).exists()
                })
                .map_err(err)?;
                return Ok((took, pdbid));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Recovers what is down (incremental) and rebalances while a client
    /// commits in a loop; returns the longest time without a commit.
    fn restore(&self) -> Res<f64> {
        // A promoted mirror accepts commits only after the catalog says so,
        // so whatever is down is already marked down here.
        for job in self.coord()?.query("SELECT * FROM gp_recover_all()", &[]).map_err(err)? {
            self.wait_job(job.get(0))?;
        }
        let writer = self.gap_writer();
        std::thread::sleep(Duration::from_millis(500));
        let result = (|| -> Res<()> {
            for job in self.coord()?.query("SELECT * FROM gp_rebalance()", &[]).map_err(err)? {
                self.wait_job(job.get(0))?;
            }
            Ok(())
        })();
        std::thread::sleep(Duration::from_millis(500));
        let g = writer.stop();
        result?;
        Ok(g)
    }

    /// A client committing in a loop on content 0's primary, whichever member it is.
    fn gap_writer(&self) -> GapWriter {
        GapWriter::start([self.cluster.primaries[0].clone(), self.cluster.mirrors[0].clone()])
    }

    /// Phase durations of a job from the coordinator's log ("X done, now Y").
    fn phase_seconds(&self, job: i64) -> HashMap<String, f64> {
        let log = std::fs::read_to_string(&self.cluster.coordinator.logfile).unwrap_or_default();
        let stamp = |line: &str| -> Option<f64> {
            let t = line.get(11..23)?;
            let mut parts = t.split(':');
            let h: f64 = parts.next()?.parse().ok()?;
            let m: f64 = parts.next()?.parse().ok()?;
            let s: f64 = parts.next()?.parse().ok()?;
            Some(h * 3600.0 + m * 60.0 + s)
        };
        let mut out = HashMap::new();
        let mut last: Option<f64> = None;
        let claim = format!("gp_recovery: job {job}: ");
        let step = format!("gp_recovery: job {job} (dbid ");
        for line in log.lines() {
            if line.contains(&claim) && last.is_none() {
                last = stamp(line);
            } else if let (true, Some((rest, _))) = (line.contains(&step), line.split_once(" done, now ")) {
                let phase = rest.rsplit("): ").next().unwrap_or_default().to_string();
                if let (Some(t), Some(prev)) = (stamp(line), last) {
                    *out.entry(phase).or_insert(0.0) += (t - prev).rem_euclid(86400.0);
                    last = Some(t);
                }
            }
        }
        out
    }

    /// A timed gp_recover_segment: (end-to-end seconds, copy seconds, bytes copied).
    fn timed_recovery(&self, dbid: i16, mode: &str) -> Res<(f64, f64, f64)> {
        let started = Instant::now();
        let job = self.submit(&format!("SELECT gp_recover_segment({dbid}, '{mode}')"))?;
        self.wait_job(job)?;
        let total = started.elapsed().as_secs_f64();
        let phases = self.phase_seconds(job);
        let mut shown: Vec<_> = phases.iter().map(|(p, t)| format!("{p} {t:.2}")).collect();
        shown.sort();
        eprintln!("   {mode} recovery took {total:.2} s: {}", shown.join(", "));
        let copy = phases.get("copying").or_else(|| phases.get("rewinding")).copied().unwrap_or(0.0);
        let bytes: Option<i64> = self.value(&format!("SELECT bytes_done FROM gp_recovery_job WHERE job_id = {job}"))?;
        // rsync's own count of what it sent, where the job ran rsync.
        let logfile: Option<String> =
            self.value(&format!("SELECT logfile FROM gp_recovery_job WHERE job_id = {job}"))?;
        let sent = logfile.and_then(|f| std::fs::read_to_string(f).ok()).and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Total bytes sent: "))
                .and_then(|v| v.replace(',', "").trim().parse::<f64>().ok())
        });
        Ok((total, copy, sent.unwrap_or(bytes.unwrap_or(0) as f64)))
    }

    fn pg(&self, program: &str) -> Command {
        gpdemo::pg_command(program)
    }

    /// A bare pg_basebackup of `source` into a scratch directory.
    fn bare_basebackup(&self, source: &Instance) -> Res<f64> {
        let scratch = self.cluster.dir.join("scratch-basebackup");
        let _ = std::fs::remove_dir_all(&scratch);
        let started = Instant::now();
        run(self
            .pg("pg_basebackup")
            .args(["-h", "127.0.0.1", "-p", &source.port.to_string(), "-U", &server_user()])
            .arg("-D")
            .arg(&scratch)
            .args(["-X", "stream", "-c", "fast"]))
        .map_err(err)?;
        let t = started.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(&scratch);
        Ok(t)
    }

    /// Updates a share of pgbench_accounts on the acting primary: contiguous
    /// (an aid range) or spread over every page.
    fn update(&self, primary: &Instance, percent: u32, spread: bool) -> Res<()> {
        let rows = i64::from(self.scale) * 100_000;
        let sql = if spread {
            format!("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % {} = 0", 100 / percent)
        } else {
            format!(
                "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= {}",
                rows * i64::from(percent) / 100
            )
        };
        primary.connect().map_err(err)?.batch_execute(&sql).map_err(err)
    }

    /// A plain rsync of the source's data directory over a copy of the
    /// failed segment's: (seconds, bytes sent).
    fn plain_rsync(&self, source: &Instance, failed: &Path) -> Res<(f64, f64)> {
        let scratch = self.cluster.dir.join("scratch-rsync");
        let _ = std::fs::remove_dir_all(&scratch);
        run(Command::new("cp").arg("-a").arg(failed).arg(&scratch)).map_err(err)?;
        let started = Instant::now();
        let out = run(Command::new("rsync")
            .args([
                "-a",
                "--checksum",
                "--no-whole-file",
                "--stats",
                "--exclude=/postmaster.pid",
                "--exclude=/pg_wal/*",
            ])
            .arg(format!("{}/", source.datadir.display()))
            .arg(format!("{}/", scratch.display())))
        .map_err(err)?;
        let t = started.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(&scratch);
        let stats = String::from_utf8_lossy(&out.stdout);
        let sent = stats
            .lines()
            .find_map(|l| l.strip_prefix("Total bytes sent: "))
            .map(|v| v.replace(',', "").trim().parse::<f64>().unwrap_or(0.0))
            .unwrap_or(0.0);
        Ok((t, sent))
    }
}

fn ratio_row(what: &str, ours: f64, base: f64, target: f64, fmt: fn(f64) -> String, base_name: &str) -> Row {
    let ratio = ours / base;
    Row {
        what: what.into(),
        ours: fmt(ours),
        baseline: format!("{} ({base_name})", fmt(base)),
        ratio: Some(ratio),
        target: format!("≤ {target}"),
        met: Some(ratio <= target),
    }
}

impl Bench {
    /// A 1-pair cluster in `dir` with pgbench data of `scale` on its primary.
    fn create(dir: &Path, scale: u32, runs: usize) -> Res<Bench> {
        let _ = Cluster::destroy(dir);
        eprintln!("== creating a 1-pair cluster with pgbench scale {scale}");
        let base = gpdemo::free_port_range(3).map_err(err)?;
        let cluster = Cluster::create(dir, 1, base).map_err(err)?;
        let b = Bench { cluster, runs, scale };
        run(b
            .pg("pgbench")
            .args(["-h", "127.0.0.1", "-p", &b.cluster.primaries[0].port.to_string(), "-U", &server_user()])
            .args(["-i", "-q", "-s", &scale.to_string(), "postgres"]))
        .map_err(err)?;
        let mut c = b.cluster.primaries[0].connect().map_err(err)?;
        c.batch_execute("CREATE TABLE bench_probe (x int)").map_err(err)?;
        let size: i64 = c.query_one("SELECT pg_database_size('postgres')", &[]).map_err(err)?.get(0);
        eprintln!("   data: {}", mb(size as f64));
        Ok(b)
    }

    /// Failover at fast settings and at Greenplum's defaults, each against
    /// pg_auto_failover measured now on this machine; the rebalance after
    /// each failover adds its longest commit gap to `gaps`.
    fn failover_rows(&self, gaps: &mut Vec<f64>) -> Res<Vec<Row>> {
        eprintln!("== pg_auto_failover baseline");
        // A baseline that could not run is reported as such in its rows.
        let pgaf_dir = self.cluster.dir.with_file_name("pgaf-bench");
        let pgaf = pgaf::free_base_port().and_then(|port| pgaf::failover_times(&pgaf_dir, self.runs, port)).map(median);
        if let Err(e) = &pgaf {
            eprintln!("gp_bench: pg_auto_failover could not run: {e}");
        }
        let mut rows = Vec::new();
        for (label, settings, target) in [
            ("probe 1 s / timeout 1 s / 2 retries", FAST, Some(1.0)),
            ("Greenplum defaults 60 s / 20 s / 5", (60, 20, 5, 30), None),
        ] {
            self.fts(settings)?;
            let mut times = Vec::new();
            for i in 0..self.runs {
                eprintln!("== failover ({label}) run {}", i + 1);
                let (t, _) = self.kill_and_time_failover()?;
                times.push(t);
                self.fts(FAST)?;
                gaps.push(self.restore()?);
                self.fts(settings)?;
            }
            let (m, worst) = (median(times.clone()), times.iter().copied().fold(0.0, f64::max));
            rows.push(Row {
                what: format!(
                    "Failover: SIGKILL of a primary → first commit on the promoted mirror ({label}; worst {})",
                    secs(worst)
                ),
                ours: secs(m),
                baseline: match &pgaf {
                    Ok(p) => format!(
                        "{} (pg_auto_failover 2.0, same machine, its fastest settings: {}; SIGKILL of the \
                         primary's Postgres and pg_autoctl, since a lone postmaster kill is restarted in place)",
                        secs(*p),
                        pgaf::settings_text()
                    ),
                    Err(e) => format!("pg_auto_failover could not run: {}", e.replace('|', "/")),
                },
                ratio: pgaf.as_ref().ok().map(|p| m / p),
                target: target.map_or("—".into(), |t| format!("≤ {t} s")),
                met: target.map(|t| m <= t),
            });
        }
        self.fts(FAST)?;
        Ok(rows)
    }
}

impl Bench {
    /// Full, incremental and differential recovery, each against its
    /// baseline; the rebalance after each adds its longest commit gap to `gaps`.
    fn recovery_rows(&self, gaps: &mut Vec<f64>) -> Res<Vec<Row>> {
        let mut rows = Vec::new();
        // 2. Full recovery against a bare pg_basebackup of the same source.
        let (mut full_total, mut full_copy, mut bare, mut full_bytes) = (Vec::new(), Vec::new(), Vec::new(), 0.0);
        for i in 0..self.runs {
            eprintln!("== full recovery run {}", i + 1);
            let (_, down) = self.kill_and_time_failover()?;
            let ((source, _), _) = self.members()?;
            bare.push(self.bare_basebackup(&source)?);
            let (total, copy, bytes) = self.timed_recovery(down, "full")?;
            full_total.push(total);
            full_copy.push(copy);
            full_bytes = bytes;
            gaps.push(self.restore()?);
        }
        let (ft, fc, bb) = (median(full_total.clone()), median(full_copy), median(bare));
        rows.push(ratio_row(
            "Full recovery: copy phase vs bare pg_basebackup -X stream -c fast",
            fc,
            bb,
            1.05,
            secs,
            "pg_basebackup",
        ));
        rows.push(Row {
            what: "Machine: this disk's speed, a bare pg_basebackup -X stream -c fast of the primary".into(),
            ours: format!("{:.0} MB/s", full_bytes / bb / 1_048_576.0),
            baseline: format!("{} in {}", mb(full_bytes), secs(bb)),
            ratio: None,
            target: "—".into(),
            met: None,
        });
        rows.push(Row {
            what: "Full recovery: everything but the copy (stop, configure, start, catch up, mark synchronized)".into(),
            ours: secs(ft - fc),
            baseline: format!("end to end {}", secs(ft)),
            ratio: None,
            target: "≤ 1.5 s".into(),
            met: Some(ft - fc <= 1.5),
        });

        // 3. Incremental after a contiguous 1% update, against full.
        let (mut inc, mut inc_bytes) = (Vec::new(), Vec::new());
        for i in 0..self.runs {
            eprintln!("== incremental recovery run {}", i + 1);
            let (_, down) = self.kill_and_time_failover()?;
            let ((primary, _), _) = self.members()?;
            self.update(&primary, 1, false)?;
            let (total, _, bytes) = self.timed_recovery(down, "incremental")?;
            inc.push(total);
            inc_bytes.push(bytes);
            gaps.push(self.restore()?);
        }
        let mut row = ratio_row(
            "Incremental recovery after a contiguous 1% update vs full recovery",
            median(inc),
            ft,
            0.2,
            secs,
            "full",
        );
        row.baseline =
            format!("{}; pg_rewind copied {} (full {})", row.baseline, mb(median(inc_bytes)), mb(full_bytes));
        rows.push(row);

        // 4. Differential after 5% (contiguous, then spread) against full and plain rsync.
        for (label, spread) in [("contiguous", false), ("spread over every page", true)] {
            let (mut dt, mut db, mut rt, mut rb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for i in 0..self.runs {
                eprintln!("== differential recovery ({label}) run {}", i + 1);
                let (_, down) = self.kill_and_time_failover()?;
                let ((primary, _), (failed, _)) = self.members()?;
                self.update(&primary, 5, spread)?;
                let (t, bytes) = self.plain_rsync(&primary, &failed.datadir)?;
                rt.push(t);
                rb.push(bytes);
                let (total, _, bytes) = self.timed_recovery(down, "differential")?;
                dt.push(total);
                db.push(bytes);
                gaps.push(self.restore()?);
            }
            let (dt, db, rt, rb) = (median(dt), median(db), median(rt), median(rb));
            let target_bytes = if spread { None } else { Some(0.1) };
            rows.push(Row {
                what: format!("Differential after a 5% update ({label}): bytes sent vs full"),
                ours: mb(db),
                baseline: format!("{} (full)", mb(full_bytes)),
                ratio: Some(db / full_bytes),
                target: target_bytes.map_or("— (every page changed)".into(), |t| format!("≤ {t}")),
                met: target_bytes.map(|t| db / full_bytes <= t),
            });
            let target_time = if spread { None } else { Some(0.5) };
            rows.push(Row {
                what: format!("Differential after a 5% update ({label}): time vs full"),
                ours: secs(dt),
                baseline: format!("{} (full)", secs(ft)),
                ratio: Some(dt / ft),
                target: target_time.map_or("—".into(), |t| format!("≤ {t}")),
                met: target_time.map(|t| dt / ft <= t),
            });
            rows.push(Row {
                what: format!(
                    "Differential after a 5% update ({label}): time vs plain rsync -a --checksum --no-whole-file"
                ),
                ours: secs(dt),
                baseline: format!("{} / {} sent (rsync)", secs(rt), mb(rb)),
                ratio: Some(dt / rt),
                target: "—".into(),
                met: None,
            });
        }
        Ok(rows)
    }
}

/// The failover rows alone, on a small cluster of their own.
fn failover(dir: &Path, scale: u32, _probe_pairs: u16) -> Res<Vec<Row>> {
    let b = Bench::create(dir, scale, 3)?;
    let rows = b.failover_rows(&mut Vec::new())?;
    Cluster::destroy(dir).map_err(err)?;
    Ok(rows)
}

/// Full and incremental recovery (after a contiguous 1% update) at pgbench
/// scales 10, 70 and 300, one run each: full grows with the data, and
/// incremental should grow only with what changed.
fn curve(dir: &Path, _scale: u32, _probe_pairs: u16) -> Res<Vec<Row>> {
    let mut rows = Vec::new();
    for scale in [10, 70, 300] {
        let b = Bench::create(dir, scale, 1)?;
        b.fts(FAST)?;
        let (_, down) = b.kill_and_time_failover()?;
        let (full, _, full_bytes) = b.timed_recovery(down, "full")?;
        b.restore()?;
        let (_, down) = b.kill_and_time_failover()?;
        let ((primary, _), _) = b.members()?;
        b.update(&primary, 1, false)?;
        let (inc, _, inc_bytes) = b.timed_recovery(down, "incremental")?;
        rows.push(Row {
            what: format!(
                "Scale curve: pgbench scale {scale}, incremental after a contiguous 1% update vs full (one run)"
            ),
            ours: format!("{} / {}", secs(inc), mb(inc_bytes)),
            baseline: format!("{} / {} (full)", secs(full), mb(full_bytes)),
            ratio: Some(inc / full),
            target: "—".into(),
            met: None,
        });
        Cluster::destroy(dir).map_err(err)?;
    }
    Ok(rows)
}

/// The coordinator SIGKILLed, then gp_activate_standby() on its standby:
/// the time from the call until the new coordinator's fault tolerance
/// service has made its first decision (the activation recorded in its
/// catalog), and until it has failed over a primary killed with the
/// coordinator. A fresh cluster and standby each run.
fn activation(dir: &Path, scale: u32, _probe_pairs: u16) -> Res<Vec<Row>> {
    const RUNS: usize = 3;
    eprintln!("== activation of the standby coordinator");
    let (mut recorded, mut failed_over) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let base = gpdemo::free_port_range(4).map_err(err)?;
        let cluster = Cluster::create(dir, 1, base).map_err(err)?;
        let b = Bench { cluster, runs: RUNS, scale };
        b.fts(FAST)?;
        let standby_dir = b.cluster.init_standby(base + 3).map_err(err)?;
        let standby = gpdemo::Instance {
            content: -1,
            role: 'm',
            host: gpdemo::ADDRESS.into(),
            port: base + 3,
            datadir: standby_dir.clone(),
            logfile: standby_dir.with_extension("log"),
            namespace: None,
        };
        wait_until(Duration::from_secs(60), "the standby to be synchronized", || {
            b.value::<String>("SELECT mode::text FROM gp_segment_configuration WHERE content = -1 AND role = 'm'")
                .is_ok_and(|m| m == "s")
        })
        .map_err(err)?;
        let ((primary, _), (mirror, mirror_dbid)) = b.members()?;
        primary.connect().map_err(err)?.batch_execute("CREATE TABLE bench_probe (x int)").map_err(err)?;
        let mut s = standby.connect().map_err(err)?;
        let pids: Vec<i32> = [&b.cluster.coordinator, &primary].iter().filter_map(|i| i.postmaster_pid()).collect();
        signal_all(&pids, libc::SIGKILL);
        let started = Instant::now();
        s.batch_execute("SELECT gp_activate_standby()").map_err(err)?;
        let mut n = standby.connect().map_err(err)?;
        let state = |n: &mut postgres::Client, sql: &str| -> String {
            n.query_one(sql, &[]).map(|r| r.get::<_, String>(0)).unwrap_or_default()
        };
        let own = "SELECT role::text FROM gp_segment_configuration WHERE content = -1 AND port = current_setting('port')::int";
        wait_until(Duration::from_secs(60), "the activation to be recorded", || state(&mut n, own) == "p")
            .map_err(err)?;
        recorded.push(started.elapsed().as_secs_f64());
        let promoted = format!("SELECT role::text FROM gp_segment_configuration WHERE dbid = {mirror_dbid}");
        wait_until(Duration::from_secs(60), "the new coordinator's failover", || {
            state(&mut n, &promoted) == "p" && commits_on(&mirror)
        })
        .map_err(err)?;
        failed_over.push(started.elapsed().as_secs_f64());
        drop((s, n));
        Cluster::destroy(dir).map_err(err)?;
    }
    let worst = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (first, takeover) = (worst(&recorded), worst(&failed_over));
    let (recorded, failed_over) = (median(recorded), median(failed_over));
    Ok(vec![
        Row {
            what: format!(
                "Activation: coordinator SIGKILLed → first decision of the new coordinator (the activation in its catalog), from the gp_activate_standby() call (probe 1 s; median of {RUNS}, worst {:.2} s)",
                first
            ),
            ours: secs(recorded),
            baseline: "Greenplum: no fencing of an old coordinator but its postmaster.pid; pg_auto_failover: the monitor has no standby (its issue #1040)".into(),
            ratio: None,
            target: "—".into(),
            met: None,
        },
        Row {
            what: format!(
                "Activation: coordinator and a primary SIGKILLed together → first commit on the mirror the new coordinator promoted, from the gp_activate_standby() call (median of {RUNS}, worst {:.2} s)",
                takeover
            ),
            ours: secs(failed_over),
            baseline: "—".into(),
            ratio: None,
            target: "≤ 5 s".into(),
            met: Some(failed_over <= 5.0),
        },
    ])
}

/// The recovery rows alone (--only recovery), at the scale asked for.
fn recovery(dir: &Path, scale: u32, _probe_pairs: u16) -> Res<Vec<Row>> {
    // One run each: a quick look at the phases; ./bench/run takes medians.
    let b = Bench::create(dir, scale, 1)?;
    b.fts(FAST)?;
    let rows = b.recovery_rows(&mut Vec::new())?;
    Cluster::destroy(dir).map_err(err)?;
    Ok(rows)
}

fn run_bench(dir: &Path, scale: u32, runs: usize, probe_pairs: u16) -> Res<Vec<Row>> {
    let b = Bench::create(dir, scale, runs)?;
    // 1. Failover, fast settings and defaults; 6. rebalance window after each.
    let mut gaps = Vec::new();
    let mut rows = b.failover_rows(&mut gaps)?;

    rows.extend(b.recovery_rows(&mut gaps)?);

    // 6. Rebalance window, over every rebalance above.
    let worst = gaps.iter().copied().fold(0.0, f64::max);
    rows.push(Row {
        what: format!(
            "Rebalance: longest gap between commits of a client writing in a loop (median of {})",
            gaps.len()
        ),
        ours: secs(median(gaps.clone())),
        baseline: format!("worst {}", secs(worst)),
        ratio: None,
        target: "median ≤ 0.5 s, worst ≤ 1 s".into(),
        met: Some(median(gaps.clone()) <= 0.5 && worst <= 1.0),
    });
    Cluster::destroy(dir).map_err(err)?;

    // 5. Parallel recovery of 8 segments, and 7. probe cost, on clusters of
    // their own; a failure is reported in the table, its cluster kept.
    for (name, section) in [
        ("parallel recovery of 8 segments", parallel as fn(&Path, u32, u16) -> Res<Vec<Row>>),
        ("probe cost", probe_cost),
        ("scale curve", curve),
        ("jobs latency", job_latency),
        ("hung mirror", hung_mirror),
        ("switchover guard", switchover_guard),
        ("activation of the standby", activation),
    ] {
        let section_dir = dir.with_file_name(format!("gp-bench-{}", name.split(' ').next().unwrap_or("x")));
        let _ = Cluster::destroy(&section_dir);
        match section(&section_dir, scale, probe_pairs) {
            Ok(r) => rows.extend(r),
            Err(e) => {
                eprintln!("gp_bench: {name} failed: {e}; its cluster is left in {}", section_dir.display());
                rows.push(Row {
                    what: format!("{name}: FAILED"),
                    ours: e.replace('|', "/"),
                    baseline: format!("cluster left in {}", section_dir.display()),
                    ratio: None,
                    target: "—".into(),
                    met: None,
                });
            }
        }
    }
    Ok(rows)
}

fn parallel(dir: &Path, scale: u32, _probe_pairs: u16) -> Res<Vec<Row>> {
    let mut rows = Vec::new();
    eprintln!("== 8 pairs: parallel against one-by-one full recovery");
    let base = gpdemo::free_port_range(17).map_err(err)?;
    let cluster = Cluster::create(dir, 8, base).map_err(err)?;
    let b = Bench { cluster, runs: 1, scale };
    let per = (scale / 8).max(1);
    for p in &b.cluster.primaries {
        run(b.pg("pgbench").args(["-h", "127.0.0.1", "-p", &p.port.to_string(), "-U", &server_user()]).args([
            "-i",
            "-q",
            "-s",
            &per.to_string(),
            "postgres",
        ]))
        .map_err(err)?;
    }
    b.fts(FAST)?;
    let down_all = |b: &Bench| -> Res<()> {
        for m in &b.cluster.mirrors {
            m.stop("immediate").map_err(err)?;
        }
        wait_until(Duration::from_secs(60), "8 mirrors to be marked down", || {
            b.value::<i64>("SELECT count(*) FROM gp_segment_configuration WHERE status = 'd'").unwrap_or(0) == 8
        })
        .map_err(err)
    };
    down_all(&b)?;
    let started = Instant::now();
    for job in b.coord()?.query("SELECT * FROM gp_recover_all('full')", &[]).map_err(err)? {
        b.wait_job(job.get(0))?;
    }
    let parallel = started.elapsed().as_secs_f64();
    down_all(&b)?;
    let dbids: Vec<i16> = b
        .coord()?
        .query("SELECT dbid FROM gp_segment_configuration WHERE status = 'd' ORDER BY dbid", &[])
        .map_err(err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut serial = 0.0;
    for d in dbids {
        serial += b.timed_recovery(d, "full")?.0;
    }
    rows.push(Row {
        what: format!("Parallel: 8 down segments (pgbench scale {per} each) with gp_recover_all('full') vs one by one"),
        ours: secs(parallel),
        baseline: format!("{} (sum one by one)", secs(serial)),
        ratio: Some(parallel / serial),
        target: "—".into(),
        met: None,
    });
    Cluster::destroy(dir).map_err(err)?;
    Ok(rows)
}

fn probe_cost(dir: &Path, scale: u32, probe_pairs: u16) -> Res<Vec<Row>> {
    // Two sizes, to see how a round's cost grows per pair.
    let small = (probe_pairs / 8).max(1);
    let (small_ms, _) = probe_round(dir, scale, small)?;
    let (ms, status) = probe_round(dir, scale, probe_pairs)?;
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).unwrap_or_default()
    };
    let kb = |name: &str| field(name).trim_end_matches(" kB").trim().parse::<f64>().unwrap_or(f64::NAN);
    let per_pair = (ms - small_ms) / f64::from(probe_pairs - small).max(1.0);
    Ok(vec![
        Row {
            what: format!(
                "Probe cost: one gp_request_fts_probe_scan() round over {probe_pairs} pairs ({} segments, \
                 shared_buffers 32MB; median of 7)",
                2 * probe_pairs
            ),
            ours: format!("{ms:.0} ms"),
            baseline: format!("{small_ms:.0} ms over {small} pairs: {per_pair:.1} ms more per pair"),
            ratio: None,
            target: "≤ 1000 ms".into(),
            met: Some(ms <= 1000.0),
        },
        Row {
            what: format!(
                "Probe cost: fault tolerance worker's peak memory over {probe_pairs} pairs (VmHWM; VmRSS now)"
            ),
            ours: format!("{} ({})", field("VmHWM:"), field("VmRSS:")),
            baseline: "—".into(),
            ratio: None,
            target: "≤ 50 MB".into(),
            met: Some(kb("VmHWM:") <= 50.0 * 1024.0),
        },
    ])
}

/// The median of 7 probe rounds over a cluster of `pairs` pairs, in ms,
/// and the FTS worker's /proc status after them.
fn probe_round(dir: &Path, scale: u32, pairs: u16) -> Res<(f64, String)> {
    eprintln!("== {pairs} pairs: probe round cost");
    let _ = Cluster::destroy(dir);
    let base = gpdemo::free_port_range(2 * pairs + 1).map_err(err)?;
    let cluster = Cluster::create(dir, pairs, base).map_err(err)?;
    let b = Bench { cluster, runs: 1, scale };
    b.fts((3600, 20, 5, 30))?;
    let mut times = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        b.exec("SELECT gp_request_fts_probe_scan()")?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let pid: i32 = b.value("SELECT pid FROM pg_stat_activity WHERE backend_type = 'gp_recovery fts'")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(err)?;
    Cluster::destroy(dir).map_err(err)?;
    Ok((median(times), status))
}

/// The jobs worker's pid, once it runs.
fn jobs_worker(b: &Bench) -> Res<i32> {
    let mut pid = 0;
    wait_until(Duration::from_secs(30), "the jobs worker", || {
        pid = b.value::<i32>("SELECT pid FROM pg_stat_activity WHERE backend_type = 'gp_recovery jobs'").unwrap_or(0);
        pid > 0
    })
    .map_err(err)?;
    Ok(pid)
}

/// A full recovery of `dbid` slowed to 1 MB/s, once it is copying.
fn slow_copy(b: &Bench, dbid: i16) -> Res<i64> {
    b.exec("ALTER SYSTEM SET gp_recovery.max_rate = 1024")?;
    b.exec("SELECT pg_reload_conf()")?;
    let job = b.submit(&format!("SELECT gp_recover_segment({dbid}, 'full')"))?;
    wait_until(Duration::from_secs(60), "the copy to begin", || {
        b.value::<bool>(&format!(
            "SELECT phase = 'copying' AND coalesce(bytes_done, 0) > 0 FROM gp_recovery_job WHERE job_id = {job}"
        ))
        .unwrap_or(false)
    })
    .map_err(err)?;
    Ok(job)
}

/// Seconds from `started` until `done`, polled every 5 ms (wait_until's
/// 200 ms would be the resolution of the measurement).
fn latency(started: Instant, what: &str, mut done: impl FnMut() -> bool) -> Res<f64> {
    while !done() {
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("{what} took more than 30 s"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Seconds until `pid` is gone after SIGTERM.
fn sigterm_latency(pid: i32) -> Res<f64> {
    let started = Instant::now();
    signal_all(&[pid], libc::SIGTERM);
    latency(started, "the jobs worker's exit", || !gpdemo::process_alive(pid))
}

/// Cancel and SIGTERM latency of the jobs worker while another session
/// keeps a submitting transaction open (issue 11's target: 1 s each).
fn job_latency(dir: &Path, scale: u32, _probe_pairs: u16) -> Res<Vec<Row>> {
    const RUNS: usize = 5;
    eprintln!("== jobs: cancel and SIGTERM latency with a submitter's transaction held open");
    let base = gpdemo::free_port_range(5).map_err(err)?;
    let cluster = Cluster::create(dir, 2, base).map_err(err)?;
    let b = Bench { cluster, runs: RUNS, scale };
    let p = &b.cluster.primaries[0];
    run(b.pg("pgbench").args(["-h", "127.0.0.1", "-p", &p.port.to_string(), "-U", &server_user()]).args([
        "-i",
        "-q",
        "-s",
        &scale.clamp(1, 10).to_string(),
        "postgres",
    ]))
    .map_err(err)?;
    b.fts(FAST)?;
    for m in &b.cluster.mirrors {
        m.stop("immediate").map_err(err)?;
    }
    wait_until(Duration::from_secs(60), "both mirrors to be marked down", || {
        b.value::<i64>("SELECT count(*) FROM gp_segment_configuration WHERE status = 'd'").unwrap_or(0) == 2
    })
    .map_err(err)?;
    let down: Vec<i16> = b
        .coord()?
        .query("SELECT dbid FROM gp_segment_configuration WHERE status = 'd' ORDER BY content", &[])
        .map_err(err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // The blocked submitter: a job for content 1 queued in a transaction
    // that stays open while each latency is measured (it holds the
    // submission lock, so the measured jobs are submitted before it).
    let mut holder = b.coord()?;
    let hold = |holder: &mut postgres::Client| -> Res<()> {
        holder.batch_execute(&format!("BEGIN; SELECT gp_recover_segment({})", down[1])).map_err(err)
    };
    let job_state = |job: i64| b.value::<String>(&format!("SELECT state FROM gp_recovery_job WHERE job_id = {job}"));
    let (mut cancels, mut busy_terms, mut idle_terms) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let job = slow_copy(&b, down[0])?;
        hold(&mut holder)?;
        let mut c = b.coord()?;
        let started = Instant::now();
        c.batch_execute(&format!("SELECT gp_recovery_cancel({job})")).map_err(err)?;
        let state = format!("SELECT state = 'canceled' FROM gp_recovery_job WHERE job_id = {job}");
        cancels.push(latency(started, "the cancel", || c.query_one(&state, &[]).is_ok_and(|r| r.get::<_, bool>(0)))?);
        idle_terms.push(sigterm_latency(jobs_worker(&b)?)?);
        holder.batch_execute("ROLLBACK").map_err(err)?;
        let job = slow_copy(&b, down[0])?;
        hold(&mut holder)?;
        busy_terms.push(sigterm_latency(jobs_worker(&b)?)?);
        holder.batch_execute("ROLLBACK").map_err(err)?;
        // The restarted worker backs the interrupted copy out.
        wait_until(Duration::from_secs(60), "the interrupted job to be backed out", || {
            job_state(job).is_ok_and(|s| s == "failed")
        })
        .map_err(err)?;
    }
    let row = |what: &str, v: Vec<f64>| {
        let worst = v.iter().copied().fold(0.0, f64::max);
        let m = median(v);
        Row {
            what: format!(
                "Job engine: {what} (median of {RUNS}, another session holding a submitting transaction open)"
            ),
            ours: secs(m),
            baseline: format!("worst {}", secs(worst)),
            ratio: None,
            target: "≤ 1 s".into(),
            met: Some(worst <= 1.0),
        }
    };
    let rows = vec![
        row("cancel of a running full copy → job canceled, copy removed, directory restored", cancels),
        row("SIGTERM of the idle jobs worker → process gone", idle_terms),
        row("SIGTERM of the jobs worker while it supervises a copy → process gone", busy_terms),
    ];
    Cluster::destroy(dir).map_err(err)?;
    Ok(rows)
}

/// The commit stall on a primary whose mirror hangs: its postmaster and
/// every child SIGSTOPped (a frozen VM, a disk that stopped answering).
/// Issue 12's target: the grace period + 2 s at the fast settings.
fn hung_mirror(dir: &Path, scale: u32, _probe_pairs: u16) -> Res<Vec<Row>> {
    const RUNS: usize = 5;
    eprintln!("== hung mirror: commit stall on its primary");
    let base = gpdemo::free_port_range(3).map_err(err)?;
    let cluster = Cluster::create(dir, 1, base).map_err(err)?;
    let b = Bench { cluster, runs: RUNS, scale };
    b.fts(FAST)?;
    let (p, m) = (b.cluster.primaries[0].clone(), b.cluster.mirrors[0].clone());
    p.connect().map_err(err)?.batch_execute("CREATE TABLE stall (x int)").map_err(err)?;
    let mdbid: i16 = b.value(&format!("SELECT dbid FROM gp_segment_configuration WHERE port = {}", m.port))?;
    let mut stalls = Vec::new();
    for _ in 0..RUNS {
        gpdemo::wait_for_sync_mirror(&p, Duration::from_secs(60)).map_err(err)?;
        let mut c = p.connect().map_err(err)?;
        // A bound in case it never ends (a canceled wait would commit anyway).
        c.batch_execute("SET statement_timeout = '60s'").map_err(err)?;
        let tree = gpdemo::process_tree(m.postmaster_pid().ok_or("the mirror is not running")?);
        signal_all(&tree, libc::SIGSTOP);
        let started = Instant::now();
        let committed = c.batch_execute("INSERT INTO stall VALUES (1)");
        stalls.push(started.elapsed().as_secs_f64());
        signal_all(&tree, libc::SIGCONT);
        committed.map_err(err)?;
        b.wait_job(b.submit(&format!("SELECT gp_recover_segment({mdbid})"))?)?;
        wait_until(Duration::from_secs(60), "the pair to be synchronized", || {
            b.row_state(mdbid).is_ok_and(|s| s == "mus")
        })
        .map_err(err)?;
    }
    let worst = stalls.iter().copied().fold(0.0, f64::max);
    let rows = vec![Row {
        what: format!(
            "Hung mirror: commit stall on its primary, the mirror's postmaster and every child SIGSTOPped (grace 2 s, \
             probe 1 s; median of {RUNS})"
        ),
        ours: secs(median(stalls)),
        baseline: format!("worst {}; before issue 12 about 64 s (wal_sender_timeout + grace)", secs(worst)),
        ratio: None,
        target: "≤ 4 s".into(),
        met: Some(worst <= 4.0),
    }];
    Cluster::destroy(dir).map_err(err)?;
    Ok(rows)
}

/// A switchover's guard: a rebalance attempted while the mirror's replay is
/// paused is refused before any stop (the writes never wait), and one whose
/// mirror's replay gets stuck only after the checks (a replay conflict with
/// a query on it, max_standby_streaming_delay = -1) costs at most
/// gp_recovery.switchover_timeout before the old primary takes writes again.
fn switchover_guard(dir: &Path, scale: u32, _probe_pairs: u16) -> Res<Vec<Row>> {
    const RUNS: usize = 3;
    eprintln!("== switchover guard: paused and stuck replay");
    let base = gpdemo::free_port_range(3).map_err(err)?;
    let cluster = Cluster::create(dir, 1, base).map_err(err)?;
    let b = Bench { cluster, runs: RUNS, scale };
    b.fts(FAST)?;
    let ((primary, _), _) = b.members()?;
    primary.connect().map_err(err)?.batch_execute("CREATE TABLE bench_probe (x int)").map_err(err)?;
    let (_, down) = b.kill_and_time_failover()?;
    b.wait_job(b.submit(&format!("SELECT gp_recover_segment({down})"))?)?;
    let synchronized = |dbid: i16| {
        wait_until(Duration::from_secs(60), "the pair to be synchronized", || {
            b.row_state(dbid).is_ok_and(|s| s == "mus")
        })
        .map_err(err)
    };
    synchronized(down)?;
    let ((acting, _), (standby, _)) = b.members()?;
    let mut s = standby.connect().map_err(err)?;
    let (mut refused_gaps, mut all_refused) = (Vec::new(), true);
    for _ in 0..RUNS {
        s.batch_execute("SELECT pg_wal_replay_pause()").map_err(err)?;
        let writer = b.gap_writer();
        std::thread::sleep(Duration::from_millis(300));
        let jobs = b.coord()?.query("SELECT * FROM gp_rebalance(NULL)", &[]).map_err(err)?;
        all_refused &= jobs.is_empty();
        std::thread::sleep(Duration::from_secs(2));
        refused_gaps.push(writer.stop());
        s.batch_execute("SELECT pg_wal_replay_resume()").map_err(err)?;
    }
    s.batch_execute("ALTER SYSTEM SET max_standby_streaming_delay = -1").map_err(err)?;
    s.batch_execute("SELECT pg_reload_conf()").map_err(err)?;
    let mut stuck_gaps = Vec::new();
    for _ in 0..RUNS {
        synchronized(down)?;
        // The switchover stopped it last time: a fresh session.
        let mut a = acting.connect().map_err(err)?;
        a.batch_execute(
            "SET synchronous_commit = remote_apply; CREATE TABLE conflict (x int); RESET synchronous_commit",
        )
        .map_err(err)?;
        let mut reader = standby.connect().map_err(err)?;
        reader.batch_execute("BEGIN; SELECT count(*) FROM conflict").map_err(err)?;
        a.batch_execute("DROP TABLE conflict").map_err(err)?;
        let writer = b.gap_writer();
        std::thread::sleep(Duration::from_millis(300));
        let job: i64 = b.value("SELECT * FROM gp_rebalance(NULL)")?;
        if b.wait_job(job).is_ok() {
            return Err("the switchover to a mirror whose replay is stuck succeeded".into());
        }
        wait_until(Duration::from_secs(60), "the old primary to take commits", || commits_on(&acting)).map_err(err)?;
        std::thread::sleep(Duration::from_millis(300));
        stuck_gaps.push(writer.stop());
        reader.batch_execute("ROLLBACK").map_err(err)?;
        // A mirror whose replay was stuck did not stream to the restarted
        // primary either: it was marked down after its grace period.
        if b.row_state(down)?.starts_with("md") {
            b.wait_job(b.submit(&format!("SELECT gp_recover_segment({down})"))?)?;
        }
    }
    let timeout: f64 =
        b.value("SELECT setting::float8 FROM pg_settings WHERE name = 'gp_recovery.switchover_timeout'")?;
    let worst = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let rows = vec![
        Row {
            what: format!(
                "Switchover guard: a rebalance attempted with the mirror's replay paused → longest write outage \
                 (refused before any stop; worst of {RUNS})"
            ),
            ours: secs(worst(&refused_gaps)),
            baseline: "before issue 23: the primary was stopped, writes refused 59-65 s".into(),
            ratio: None,
            target: "0 s (no stop)".into(),
            met: Some(all_refused && worst(&refused_gaps) < 0.5),
        },
        Row {
            what: format!(
                "Switchover guard: the mirror's replay stuck only after the checks → write outage until the old \
                 primary commits again (gp_recovery.switchover_timeout {timeout} s; median of {RUNS})"
            ),
            ours: secs(median(stuck_gaps.clone())),
            baseline: format!("worst {}; before issue 23 a fixed 60 s wait", secs(worst(&stuck_gaps))),
            ratio: None,
            target: format!("≤ {} s (the timeout + 2 s)", timeout + 2.0),
            met: Some(worst(&stuck_gaps) <= timeout + 2.0),
        },
    ];
    Cluster::destroy(dir).map_err(err)?;
    Ok(rows)
}

/// Replaces the rows of results.md that start like `rows` (one section run
/// with --only), keeping every other row.
fn merge_results(path: &Path, rows: &[Row]) -> Res<()> {
    let old = std::fs::read_to_string(path).map_err(err)?;
    let prefixes: Vec<&str> = rows.iter().filter_map(|r| r.what.split(':').next()).collect();
    let mut out: Vec<String> = old
        .lines()
        .filter(|l| !prefixes.iter().any(|p| l.starts_with(&format!("| {p}:"))))
        .map(str::to_string)
        .collect();
    while out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    out.extend(rows.iter().map(table_line));
    std::fs::write(path, out.join("\n") + "\n").map_err(err)
}

/// "yes", "no", or for a missed ratio target how far off it is.
fn met_text(r: &Row) -> String {
    let limit = r.target.strip_prefix("≤ ").and_then(|t| t.parse::<f64>().ok());
    match (r.met, r.ratio, limit) {
        (None, _, _) => "—".into(),
        (Some(true), _, _) => "yes".into(),
        (Some(false), Some(ratio), Some(limit)) => format!("no: {:.1} × the limit", ratio / limit),
        (Some(false), _, _) => "no".into(),
    }
}

fn write_results(path: &Path, rows: &[Row], scale: u32, runs: usize, took: Duration) -> Res<()> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mut md = format!(
        "# gp_recovery benchmark results\n\nMachine: {cores} cores. Data: pgbench scale {scale} per primary \
         (about {} MB). Medians of {runs} runs unless said otherwise. The whole run took {:.0} s.\n\
         Produced by `./bench/run --scale {scale} --runs {runs}`.\n\n\
         | what | ours | baseline | ratio | target | met |\n|---|---|---|---|---|---|\n",
        scale * 15,
        took.as_secs_f64()
    );
    for r in rows {
        md.push_str(&table_line(r));
        md.push('\n');
    }
    // The soak's row comes from `--chaos --record` runs, not from this one: kept.
    let old = std::fs::read_to_string(path).unwrap_or_default();
    for line in old.lines().filter(|l| l.starts_with("| Fault soak:")) {
        md.push_str(line);
        md.push('\n');
    }
    std::fs::write(path, md).map_err(err)
}

fn table_line(r: &Row) -> String {
    format!(
        "| {} | {} | {} | {} | {} | {} |",
        r.what,
        r.ours,
        r.baseline,
        r.ratio.map_or("—".into(), |x| format!("{x:.2}")),
        r.target,
        met_text(r)
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str, default: u32| -> u32 {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (scale, runs, probe_pairs) = (get("--scale", 70), get("--runs", 3) as usize, get("--probe-pairs", 128) as u16);
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results.md");
    let dir = PathBuf::from("/var/tmp/gp-bench");
    // --chaos: the fault soak instead of the benchmark.
    if args.iter().any(|a| a == "--chaos") {
        let name = args.iter().position(|a| a == "--fault").and_then(|i| args.get(i + 1)).cloned();
        let o = chaos::Options {
            rounds: get("--rounds", 30) as usize,
            seed: u64::from(get("--seed", 1)),
            pairs: get("--pairs", 3).clamp(1, 16) as u16,
            fault: name,
            hosts: args
                .iter()
                .position(|a| a == "--hosts")
                .and_then(|i| args.get(i + 1))
                .map(|h| h.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
        };
        match chaos::run(&dir.with_file_name("gp-chaos"), &o) {
            Ok(s) => {
                // --record: the run's summary replaces the soak's row in results.md.
                if args.iter().any(|a| a == "--record") {
                    let row = Row {
                        what: format!("Fault soak: `./bench/run --chaos --record` ({})", s.what),
                        ours: s.line.clone(),
                        baseline: "—".into(),
                        ratio: None,
                        target: "every round healed; 0 lost, 0 mismatched, 0 stuck".into(),
                        met: Some(s.ok),
                    };
                    if let Err(e) = merge_results(&out, &[row]) {
                        eprintln!("gp_bench: could not record the soak in {}: {e}", out.display());
                    }
                }
                if !s.ok {
                    std::process::exit(1);
                }
                return;
            }
            Err(e) => {
                eprintln!("gp_bench: the soak could not run: {e}");
                std::process::exit(1);
            }
        }
    }
    // --only jobs | hung-mirror | failover | recovery | probe | curve | switchover | activation: that section alone, its
    // rows merged into results.md; only recovery runs at --scale, the others at 5 at most.
    if let Some(name) = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)) {
        let section: fn(&Path, u32, u16) -> Res<Vec<Row>> = match name.as_str() {
            "jobs" => job_latency,
            "hung-mirror" => hung_mirror,
            "failover" => failover,
            "recovery" => recovery,
            "probe" => probe_cost,
            "curve" => curve,
            "switchover" => switchover_guard,
            "activation" => activation,
            other => {
                eprintln!(
                    "gp_bench: --only takes jobs, hung-mirror, failover, recovery, probe, curve, switchover or activation, not {other}"
                );
                std::process::exit(2);
            }
        };
        let section_dir = dir.with_file_name(format!("gp-bench-{name}"));
        let _ = Cluster::destroy(&section_dir);
        let scale = if name == "recovery" { scale } else { scale.min(5) };
        match section(&section_dir, scale, probe_pairs).and_then(|rows| merge_results(&out, &rows)) {
            Ok(()) => println!("{}", std::fs::read_to_string(&out).unwrap_or_default()),
            Err(e) => {
                eprintln!("gp_bench: {name} failed: {e}; its cluster is left in {}", section_dir.display());
                std::process::exit(1);
            }
        }
        return;
    }
    let started = Instant::now();
    match run_bench(&dir, scale, runs.max(1), probe_pairs) {
        Ok(rows) => {
            if let Err(e) = write_results(&out, &rows, scale, runs, started.elapsed()) {
                eprintln!("gp_bench: could not write {}: {e}", out.display());
                std::process::exit(1);
            }
            println!("{}", std::fs::read_to_string(&out).unwrap_or_default());
        }
        Err(e) => {
            let _ = Cluster::destroy(&dir);
            eprintln!("gp_bench: {e}");
            std::process::exit(1);
        }
    }
}
