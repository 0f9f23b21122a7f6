//! The fault soak (`./bench/run --chaos`): a demo cluster under a
//! synchronous-commit write load on every content, and a seeded random
//! sequence of faults, each healed through the SQL API only. After the last
//! round: every acknowledged commit is on its content's acting primary,
//! every mirror holds what its primary holds, nothing is left running,
//! queued, copied aside or holding WAL.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gpdemo::{wait_until, Cluster, Instance};

use crate::{err, median, signal_all, Res};

/// Probe interval, timeout, retries, grace (s): faults are seen quickly.
const FTS: [(&str, u32); 4] =
    [("fts_probe_interval", 1), ("fts_probe_timeout", 1), ("fts_probe_retries", 2), ("mirror_down_grace_period", 2)];

/// Longer than the probe window (1 + 2 retries within the 1 s interval,
/// 1 s each), so a stopped primary is failed over before it resumes.
const PAUSE: Duration = Duration::from_secs(6);

/// Where a rebalance is interrupted: after the stop, after the catalog
/// swap, before the promotion (crashing the coordinator), after it.
const REBALANCE_POINTS: [&str; 4] = [
    "rebalance:stopping:after",
    "rebalance:switching roles:after",
    "rebalance:promoting:before:crash",
    "rebalance:promoting:after",
];

/// How long one round may take to become healthy again.
const HEAL_LIMIT: Duration = Duration::from_secs(240);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillPrimary,
    KillMirror,
    StopPrimary,
    StopMirror,
    KillWorkersDuringCopy,
    CancelFullCopy,
    CoordinatorCrashDuringCopy,
    RebalanceInterrupted,
    RecycledWal,
    /// Only with --hosts: every segment on one host killed and its sshd
    /// stopped, then the host back.
    HostDown,
    /// Only as root (it mounts a file system): a mirror killed and moved
    /// onto a 32 MB tmpfs, too small for its copy.
    DiskFull,
    /// Only as root: a running mirror's pg_wal on a file system of its own
    /// that fills up; it must be marked down while its primary's commits
    /// go on.
    MirrorDiskFull,
    /// A switched pair whose mirror's replay is paused: gp_rebalance() must
    /// refuse before it stops the primary.
    PausedReplay,
    /// The preferred primary killed twice with self-healing on: the first
    /// failover is recovered and rebalanced by the service, the second only
    /// recovered (damping).
    FlappingPrimary,
}

const FAULTS: [Fault; 11] = [
    Fault::KillPrimary,
    Fault::KillMirror,
    Fault::StopPrimary,
    Fault::StopMirror,
    Fault::KillWorkersDuringCopy,
    Fault::CancelFullCopy,
    Fault::CoordinatorCrashDuringCopy,
    Fault::RebalanceInterrupted,
    Fault::RecycledWal,
    Fault::PausedReplay,
    Fault::FlappingPrimary,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillPrimary => "kill-primary",
            Fault::KillMirror => "kill-mirror",
            Fault::StopPrimary => "stop-primary",
            Fault::StopMirror => "stop-mirror",
            Fault::KillWorkersDuringCopy => "kill-workers",
            Fault::CancelFullCopy => "cancel-copy",
            Fault::CoordinatorCrashDuringCopy => "coordinator-crash",
            Fault::RebalanceInterrupted => "rebalance-fault",
            Fault::RecycledWal => "recycled-wal",
            Fault::HostDown => "host-down",
            Fault::DiskFull => "disk-full",
            Fault::MirrorDiskFull => "mirror-disk-full",
            Fault::PausedReplay => "paused-replay",
            Fault::FlappingPrimary => "flapping-primary",
        }
    }
}

/// xorshift64*: a reproducible sequence from a seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

pub struct Options {
    pub rounds: usize,
    pub seed: u64,
    pub pairs: u16,
    /// One fault only, by name.
    pub fault: Option<String>,
    /// Segment hosts (loopback addresses, each with its own sshd); none:
    /// every segment on 127.0.0.1, reached without ssh.
    pub hosts: Vec<String>,
}

struct Soak {
    cluster: Cluster,
    acked: Vec<Arc<Mutex<Vec<i64>>>>,
    stop: Arc<AtomicBool>,
}

fn sql(c: &mut postgres::Client, q: &str) -> Res<()> {
    c.batch_execute(q).map_err(|e| format!("{q}: {}", gpdemo::sql_message(&e)))
}

/// SIGKILL of a postmaster.
fn kill(i: &Instance) -> Res<()> {
    signal_all(&[i.postmaster_pid().ok_or_else(|| format!("{} is not running", i.name()))?], libc::SIGKILL);
    Ok(())
}

/// A tmpfs of `megabytes` at `dir`, which any user may write: a small disk
/// for a disk fault (unmounted by the fault, or by gpdemo destroy).
fn mount_small_disk(dir: &Path, megabytes: u64) -> Res<()> {
    gpdemo::make_server_dir(dir).map_err(err)?;
    let options = format!("size={megabytes}m,mode=0777");
    gpdemo::run(std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &options, "tmpfs"]).arg(dir))
        .map(|_| ())
        .map_err(err)
}

/// Whatever space is left on the file system of `dir` goes to a file of root's.
fn fill_disk(dir: &Path) -> Res<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).map_err(err)?;
    let block = vec![0u8; 1 << 20];
    while f.write_all(&block).is_ok() {}
    Ok(())
}

/// SIGSTOP of a postmaster and everything under it; SIGCONT after `PAUSE`.
fn pause(instance: &Instance) -> Res<()> {
    let pid = instance.postmaster_pid().ok_or_else(|| format!("{} is not running", instance.name()))?;
    let tree = gpdemo::process_tree(pid);
    signal_all(&tree, libc::SIGSTOP);
    std::thread::sleep(PAUSE);
    signal_all(&tree, libc::SIGCONT);
    Ok(())
}

impl Soak {
    fn coord(&self) -> Res<postgres::Client> {
        self.cluster.coordinator.connect().map_err(err)
    }

    fn members(&self, content: usize) -> [&Instance; 2] {
        [&self.cluster.primaries[content], &self.cluster.mirrors[content]]
    }

    /// (acting primary, mirror) of a content, by the catalog.
    fn roles(&self, content: usize) -> Res<(Instance, Instance, i16, i16)> {
        let rows = self
            .coord()?
            .query(
                "SELECT port, role::text, dbid FROM gp_segment_configuration WHERE content = $1 ORDER BY role",
                &[&(content as i16)],
            )
            .map_err(err)?;
        let find = |role: &str| -> Res<(Instance, i16)> {
            let r = rows.iter().find(|r| r.get::<_, String>(1) == role).ok_or("no such role")?;
            let port: i32 = r.get(0);
            let i = self.members(content).into_iter().find(|i| i32::from(i.port) == port).ok_or("unknown port")?;
            Ok((i.clone(), r.get(2)))
        };
        let (p, pd) = find("p")?;
        let (m, md) = find("m")?;
        Ok((p, m, pd, md))
    }

    fn set(&self, setting: &str, value: &str) -> Res<()> {
        let mut c = self.coord()?;
        sql(&mut c, &format!("ALTER SYSTEM SET gp_recovery.{setting} = '{value}'"))?;
        sql(&mut c, "SELECT pg_reload_conf()")
    }

    /// Whether a boolean query with one parameter says true on the
    /// coordinator now (false while it does not answer).
    fn holds(&self, query: &str, arg: &(dyn postgres::types::ToSql + Sync)) -> bool {
        self.coord().ok().and_then(|mut c| c.query_one(query, &[arg]).ok()).is_some_and(|r| r.get(0))
    }

    /// The flapping primary: self-healing on, damping after this content's
    /// next two failovers; the first is healed and rebalanced by the
    /// service, the second healed but left switched. Self-healing is off
    /// again afterwards, and the round's healing rebalances by hand.
    fn flap(&self, content: usize, primary: &Instance, pdbid: i16, mdbid: i16) -> Res<String> {
        let earlier: i64 = self
            .coord()?
            .query_one(
                "SELECT count(*) FROM gp_recovery_failover WHERE content = $1 \
                   AND \"time\" > now() - interval '1 hour'",
                &[&(content as i16)],
            )
            .map_err(err)?
            .get(0);
        self.set("auto_rebalance_max_failovers", &(earlier + 2).to_string())?;
        self.set("auto_recover_delay", "1")?;
        self.set("auto_recover", "incremental")?;
        self.set("auto_rebalance", "on")?;
        let roles = |p: &str, m: &str| {
            let q = "SELECT string_agg(role::text || status::text || mode::text, ' ' ORDER BY dbid = $1 DESC) = \
                     (SELECT $2) FROM gp_segment_configuration WHERE dbid IN ($1, $3)";
            self.coord()
                .ok()
                .and_then(|mut c| c.query_one(q, &[&pdbid, &format!("{p} {m}"), &mdbid]).ok())
                .is_some_and(|r| r.get(0))
        };
        let outcome = (|| -> Res<()> {
            let failover = || wait_until(Duration::from_secs(60), "the failover", || roles("mdn", "pun")).map_err(err);
            kill(primary)?;
            failover()?;
            wait_until(Duration::from_secs(180), "the service to heal and rebalance", || roles("pus", "mus"))
                .map_err(err)?;
            kill(primary)?;
            failover()?;
            wait_until(Duration::from_secs(180), "the service to heal the second failover", || roles("mus", "pus"))
                .map_err(err)?;
            std::thread::sleep(Duration::from_secs(4));
            if !roles("mus", "pus") {
                return Err("self-healing rebalanced a content that failed over twice (no damping)".into());
            }
            Ok(())
        })();
        for (name, value) in [("auto_rebalance", "off"), ("auto_recover", "off")] {
            self.set(name, value)?;
        }
        outcome.map(|()| {
            format!("{} content {content} (healed twice by the service, damped)", Fault::FlappingPrimary.name())
        })
    }

    fn wait_down(&self, dbid: i16) -> Res<()> {
        wait_until(Duration::from_secs(60), "the segment to be marked down", || {
            self.holds("SELECT status = 'd' FROM gp_segment_configuration WHERE dbid = $1", &dbid)
        })
        .map_err(err)
    }

    /// A slowed full recovery of `dbid`, once it copies.
    fn slow_full_copy(&self, dbid: i16) -> Res<i64> {
        self.set("max_rate", "512")?;
        let job: i64 = self
            .coord()?
            .query_one(&format!("SELECT gp_recover_segment({dbid}, 'full')"), &[])
            .map_err(|e| gpdemo::sql_message(&e))?
            .get(0);
        wait_until(Duration::from_secs(60), "the copy to begin", || {
            self.holds(
                "SELECT phase = 'copying' AND coalesce(bytes_done, 0) > 0 FROM gp_recovery_job WHERE job_id = $1",
                &job,
            )
        })
        .map_err(err)?;
        Ok(job)
    }

    fn terminate_workers(&self, types: &str) -> Res<()> {
        sql(
            &mut self.coord()?,
            &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type IN ({types})"),
        )
    }

    /// Injects a fault into `content` (`variant` picks among its forms);
    /// returns what was done.
    fn inject(&self, fault: Fault, content: usize, variant: usize) -> Res<String> {
        let (primary, mirror, pdbid, mdbid) = self.roles(content)?;
        match fault {
            Fault::KillPrimary => kill(&primary)?,
            Fault::KillMirror => kill(&mirror)?,
            Fault::StopPrimary => pause(&primary)?,
            Fault::StopMirror => pause(&mirror)?,
            Fault::KillWorkersDuringCopy => {
                kill(&mirror)?;
                self.wait_down(mdbid)?;
                self.slow_full_copy(mdbid)?;
                self.terminate_workers("'gp_recovery fts', 'gp_recovery jobs'")?;
                self.set("max_rate", "0")?;
            }
            Fault::CancelFullCopy => {
                kill(&mirror)?;
                self.wait_down(mdbid)?;
                let job = self.slow_full_copy(mdbid)?;
                sql(&mut self.coord()?, &format!("SELECT gp_recovery_cancel({job})"))?;
                self.set("max_rate", "0")?;
            }
            Fault::CoordinatorCrashDuringCopy => {
                kill(&mirror)?;
                self.wait_down(mdbid)?;
                self.slow_full_copy(mdbid)?;
                self.cluster.coordinator.stop("immediate").map_err(err)?;
                self.cluster.coordinator.start().map_err(err)?;
                self.set("max_rate", "0")?;
            }
            Fault::RebalanceInterrupted => {
                // Switch the roles first (failover, recovery), then rebalance
                // with the jobs worker dying (or the coordinator crashing) at
                // one of the switchover's side effects.
                kill(&primary)?;
                self.wait_down(pdbid)?;
                self.heal(false)?;
                let point = REBALANCE_POINTS[variant % REBALANCE_POINTS.len()];
                self.set("fault_point", point)?;
                let job: i64 = self.coord()?.query_one("SELECT * FROM gp_rebalance()", &[]).map_err(err)?.get(0);
                let ended = wait_until(Duration::from_secs(120), "the interrupted rebalance to end", || {
                    self.holds("SELECT state NOT IN ('queued', 'running') FROM gp_recovery_job WHERE job_id = $1", &job)
                });
                self.set("fault_point", "")?;
                ended.map_err(err)?;
                return Ok(format!("{} content {content} at {point}", fault.name()));
            }
            Fault::PausedReplay => {
                kill(&primary)?;
                self.wait_down(pdbid)?;
                self.heal(false)?;
                let mut standby = primary.connect().map_err(err)?;
                sql(&mut standby, "SELECT pg_wal_replay_pause()")?;
                let queued = self.coord()?.query("SELECT * FROM gp_rebalance()", &[]).map_err(err);
                sql(&mut standby, "SELECT pg_wal_replay_resume()")?;
                if !queued?.is_empty() {
                    return Err("gp_rebalance() queued a switchover to a mirror whose replay is paused".into());
                }
                return Ok(format!("{} content {content} (the switchover refused)", fault.name()));
            }
            Fault::FlappingPrimary => return self.flap(content, &primary, pdbid, mdbid),
            Fault::DiskFull => return self.relocate_onto_small_disk(content, &mirror, mdbid, variant % 2 == 1),
            Fault::MirrorDiskFull => return self.fill_mirror_disk(content, &primary, &mirror, mdbid),
            Fault::HostDown => {
                let host = &self.cluster.hosts[variant % self.cluster.hosts.len()];
                gpdemo::sshd::fail_host(&self.cluster.dir, host).map_err(err)?;
                // Back once the fault tolerance service has dealt with every
                // segment on it; they stay down until recovered through ssh.
                wait_until(Duration::from_secs(60), "every segment on the host to be marked down", || {
                    self.holds("SELECT bool_and(status = 'd') FROM gp_segment_configuration WHERE hostname = $1", host)
                })
                .map_err(err)?;
                gpdemo::sshd::restart_host(&self.cluster.dir, host).map_err(err)?;
                return Ok(format!("{} {host}", fault.name()));
            }
            Fault::RecycledWal => {
                // The new primary loses the slot and recycles the WAL the
                // old one's rewind would need: incremental fails, full heals.
                kill(&primary)?;
                self.wait_down(pdbid)?;
                let mut c = mirror.connect().map_err(err)?;
                // The FTS creates the slot right after the promotion; its
                // session holds it until it is saved.
                wait_until(Duration::from_secs(30), "the promotion and the new primary's slot", || {
                    c.query_one(
                        "SELECT NOT pg_is_in_recovery() AND EXISTS (SELECT 1 FROM pg_replication_slots \
                          WHERE slot_name = 'internal_wal_replication_slot' AND NOT active)",
                        &[],
                    )
                    .is_ok_and(|r| r.get(0))
                })
                .map_err(err)?;
                sql(
                    &mut c,
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                      WHERE slot_name = 'internal_wal_replication_slot' AND NOT active",
                )?;
                for _ in 0..6 {
                    sql(
                        &mut c,
                        "CREATE TABLE IF NOT EXISTS churn (x int); INSERT INTO churn SELECT generate_series(1, 20000)",
                    )?;
                    sql(&mut c, "SELECT pg_switch_wal(); CHECKPOINT")?;
                }
                sql(&mut c, "DROP TABLE churn")?;
            }
        }
        Ok(format!("{} content {content}", fault.name()))
    }

    /// A mirror killed, then relocated onto a tmpfs of its own that cannot
    /// hold the copy: a small one (the free space check refuses the job
    /// before anything changes), or, `during_copy`, a large one filled up
    /// while a slowed copy runs (pg_basebackup fails with no space left and
    /// the relocation is backed out). Either way healing recovers it in place.
    fn relocate_onto_small_disk(
        &self,
        content: usize,
        mirror: &Instance,
        mdbid: i16,
        during_copy: bool,
    ) -> Res<String> {
        kill(mirror)?;
        self.wait_down(mdbid)?;
        let disk = self.cluster.dir.join(format!("small-disk-{content}"));
        mount_small_disk(&disk, if during_copy { 512 } else { 32 })?;
        if during_copy {
            self.set("max_rate", "512")?;
        }
        let port = gpdemo::free_port_range(1).map_err(err)?;
        let error = (|| -> Res<String> {
            let mut c = self.coord()?;
            let job: i64 = c
                .query_one(
                    &format!(
                        "SELECT gp_recover_segment({mdbid}, 'full', new_port => {port}, new_datadir => '{}/data')",
                        disk.display()
                    ),
                    &[],
                )
                .map_err(|e| gpdemo::sql_message(&e))?
                .get(0);
            if during_copy {
                wait_until(Duration::from_secs(60), "the copy to begin", || {
                    self.holds(
                        "SELECT phase = 'copying' AND coalesce(bytes_done, 0) > 0 FROM gp_recovery_job WHERE job_id = $1",
                        &job,
                    )
                })
                .map_err(err)?;
                fill_disk(&disk)?;
                self.set("max_rate", "0")?;
            }
            Ok(c.query_one("SELECT gp_recovery_wait($1, '300s')", &[&job])
                .map(|_| "the copy fit".to_string())
                .unwrap_or_else(|e| gpdemo::sql_message(&e)))
        })();
        let _ = self.set("max_rate", "0");
        let _ = gpdemo::run(std::process::Command::new("umount").arg("-l").arg(&disk));
        let _ = std::fs::remove_dir(&disk);
        let error = error?;
        let how = if error.contains("not enough free space") {
            "refused: not enough free space"
        } else if error.contains("No space left on device") {
            "the copy failed: no space left"
        } else {
            return Err(format!("the copy onto a full disk did not fail for lack of space: {error}"));
        };
        Ok(format!("disk-full content {content} ({how})"))
    }

    /// The mirror's pg_wal moves onto a small tmpfs of its own, which then
    /// fills up while WAL switches on the primary make the mirror need new
    /// segment files. The fault tolerance service must mark the mirror down
    /// and its primary's commits go on. Then the DBA's remedy: the mirror
    /// stopped, its WAL moved back onto the data directory's disk, the small
    /// disk released; healing recovers the mirror.
    fn fill_mirror_disk(&self, content: usize, primary: &Instance, mirror: &Instance, mdbid: i16) -> Res<String> {
        let wal = mirror.datadir.join("pg_wal");
        let disk = self.cluster.dir.join(format!("wal-disk-{content}"));
        let moved = disk.join("pg_wal");
        let run = |cmd: &mut std::process::Command| gpdemo::run(cmd).map(|_| ()).map_err(err);
        let used: u64 =
            std::fs::read_dir(&wal).map_err(err)?.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum();
        mirror.stop("fast").map_err(err)?;
        mount_small_disk(&disk, used / (1 << 20) + 64)?;
        run(std::process::Command::new("cp").arg("-a").arg(&wal).arg(&disk))?;
        let away = mirror.datadir.join("pg_wal.soak-away");
        std::fs::rename(&wal, &away).map_err(err)?;
        std::os::unix::fs::symlink(&moved, &wal).map_err(err)?;
        run(std::process::Command::new("chown").args(["-h", "postgres:postgres"]).arg(&wal))?;
        mirror.start().map_err(err)?;
        // The restart may have been seen as a fault: the pair must be whole
        // again before the disk fills.
        self.heal(false)?;
        fill_disk(&disk)?;
        let filled = Instant::now();
        let acked_before = self.acked[content].lock().map(|a| a.len()).unwrap_or(0);
        let mut p = primary.connect().map_err(err)?;
        let down = wait_until(Duration::from_secs(90), "the mirror with a full disk to be marked down", || {
            let _ = p.batch_execute(
                "CREATE TABLE IF NOT EXISTS churn (x int); INSERT INTO churn VALUES (1); SELECT pg_switch_wal()",
            );
            self.holds("SELECT status = 'd' FROM gp_segment_configuration WHERE dbid = $1", &mdbid)
        });
        let marked = filled.elapsed().as_secs_f64();
        let went_on = down.is_ok()
            && wait_until(Duration::from_secs(30), "the primary's commits to go on", || {
                self.acked[content].lock().map(|a| a.len()).unwrap_or(0) > acked_before + 10
            })
            .is_ok();
        // The remedy, whatever happened.
        let log = std::fs::read_to_string(&mirror.logfile).unwrap_or_default();
        let full = log.contains("No space left on device");
        if mirror.postmaster_pid().is_some() {
            mirror.stop("fast").map_err(err)?;
        }
        std::fs::remove_file(&wal).map_err(err)?;
        std::fs::remove_dir_all(&away).map_err(err)?;
        run(std::process::Command::new("cp").arg("-a").arg(&moved).arg(&mirror.datadir))?;
        run(std::process::Command::new("umount").arg(&disk))?;
        std::fs::remove_dir(&disk).map_err(err)?;
        let _ = p.batch_execute("DROP TABLE IF EXISTS churn");
        down.map_err(err)?;
        if !went_on {
            return Err("the primary's commits stopped while its mirror's disk was full".into());
        }
        if !full {
            return Err(format!("{}'s log does not say its disk was full", mirror.name()));
        }
        Ok(format!("mirror-disk-full content {content} (mirror marked down {marked:.1} s after its disk filled; commits went on)"))
    }

    /// Every pair up, synchronized, in its preferred role, streaming as the
    /// synchronous standby, with the catalog's primary the writable one.
    fn healthy(&self) -> bool {
        let Ok(mut c) = self.coord() else { return false };
        let Ok(bad) = c.query_one(
            "SELECT count(*) FROM gp_segment_configuration WHERE content >= 0 \
               AND (status <> 'u' OR mode <> 's' OR role <> preferred_role)",
            &[],
        ) else {
            return false;
        };
        if bad.get::<_, i64>(0) != 0 {
            return false;
        }
        (0..self.cluster.primaries.len()).all(|content| {
            let (p, m) = (&self.cluster.primaries[content], &self.cluster.mirrors[content]);
            let streaming = p.connect().ok().and_then(|mut c| {
                c.query_one(
                    "SELECT NOT pg_is_in_recovery() AND EXISTS (SELECT 1 FROM pg_stat_replication \
                      WHERE application_name = 'gp_walreceiver' AND state = 'streaming' AND sync_state = 'sync')",
                    &[],
                )
                .ok()
            });
            streaming.is_some_and(|r| r.get(0)) && m.in_recovery()
        })
    }

    /// Heals through the SQL API: recover what is down (falling back to
    /// full when a job says so), then, with `rebalance`, put the roles back.
    /// Returns what it did.
    fn heal(&self, rebalance: bool) -> Res<String> {
        let started = Instant::now();
        let mut did = Did::default();
        loop {
            if started.elapsed() > HEAL_LIMIT {
                return Err(format!("not healthy after {} s (did: {})", HEAL_LIMIT.as_secs(), did.text()));
            }
            let mut c = match self.coord() {
                Ok(c) => c,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            };
            let state =
                |q: &str, c: &mut postgres::Client| c.query_one(q, &[]).map(|r| r.get::<_, i64>(0)).unwrap_or(-1);
            let active = state("SELECT count(*) FROM gp_recovery_job WHERE state IN ('queued', 'running')", &mut c);
            let down = state("SELECT count(*) FROM gp_segment_configuration WHERE status = 'd'", &mut c);
            let unsynced =
                state("SELECT count(*) FROM gp_segment_configuration WHERE content >= 0 AND mode <> 's'", &mut c);
            let switched = state(
                "SELECT count(*) FROM gp_segment_configuration WHERE content >= 0 AND role <> preferred_role",
                &mut c,
            );
            if active != 0 {
                std::thread::sleep(Duration::from_millis(300));
                continue;
            }
            if down > 0 {
                let jobs: Vec<i64> = match c.query("SELECT * FROM gp_recover_all()", &[]) {
                    Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
                    Err(e) => {
                        did.note(format!("recover_all: {}", gpdemo::sql_message(&e)));
                        std::thread::sleep(Duration::from_millis(500));
                        continue;
                    }
                };
                did.note(format!("recover_all({} jobs)", jobs.len()));
                for job in jobs {
                    if let Err(e) = c.query_one("SELECT gp_recovery_wait($1, '300s')", &[&job]) {
                        let message = gpdemo::sql_message(&e);
                        // The job's advice names the mode that works.
                        if let Some(dbid) = full_advice(&message) {
                            did.note(format!("full({dbid})"));
                            let full = c
                                .query_one(&format!("SELECT gp_recover_segment({dbid}, 'full')"), &[])
                                .map_err(|e| gpdemo::sql_message(&e))?;
                            let _ = c.query_one("SELECT gp_recovery_wait($1, '300s')", &[&full.get::<_, i64>(0)]);
                        } else {
                            did.note(format!("job {job} failed: {message}"));
                        }
                    }
                }
                continue;
            }
            if unsynced == 0 && switched > 0 && rebalance {
                match c.query("SELECT * FROM gp_rebalance()", &[]) {
                    Ok(rows) => did.note(format!("rebalance({} jobs)", rows.len())),
                    Err(e) => did.note(format!("rebalance: {}", gpdemo::sql_message(&e))),
                }
                std::thread::sleep(Duration::from_millis(300));
                continue;
            }
            if (rebalance && self.healthy()) || (!rebalance && down == 0 && unsynced == 0) {
                return Ok(did.text());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// A writer per content: commits to the content's acting primary (found
    /// in the catalog) and keeps every id it was told committed.
    fn start_writers(&self) -> Vec<std::thread::JoinHandle<()>> {
        (0..self.cluster.primaries.len())
            .map(|content| {
                let (coordinator, members) = (
                    self.cluster.coordinator.clone(),
                    [self.members(content)[0].clone(), self.members(content)[1].clone()],
                );
                let (acked, stop) = (self.acked[content].clone(), self.stop.clone());
                std::thread::spawn(move || {
                    let mut next = content as i64 * 1_000_000_000;
                    while !stop.load(Ordering::SeqCst) {
                        let acting = coordinator.connect().ok().and_then(|mut c| {
                            c.query_one(
                                "SELECT port FROM gp_segment_configuration WHERE content = $1 AND role = 'p'",
                                &[&(content as i16)],
                            )
                            .ok()
                        });
                        let target =
                            acting.and_then(|r| members.iter().find(|i| i32::from(i.port) == r.get::<_, i32>(0)));
                        let Some(mut c) = target.and_then(|i| i.connect().ok()) else {
                            std::thread::sleep(Duration::from_millis(200));
                            continue;
                        };
                        // No statement_timeout: a canceled sync-rep wait
                        // reports the commit as done although the mirror
                        // may not have it.
                        while !stop.load(Ordering::SeqCst) {
                            next += 1;
                            if c.execute("INSERT INTO soak VALUES ($1)", &[&next]).is_err() {
                                break;
                            }
                            acked.lock().map(|mut a| a.push(next)).ok();
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                })
            })
            .collect()
    }

    /// The checks after the last round: (acknowledged commits lost, pairs
    /// mismatched, jobs stuck, every problem as a line).
    fn final_checks(&self) -> Res<(usize, usize, i64, Vec<String>)> {
        let (mut lost, mut mismatched, mut problems) = (0, 0, Vec::new());
        for content in 0..self.cluster.primaries.len() {
            let (p, m, _, _) = self.roles(content)?;
            let acked = self.acked[content].lock().map(|a| a.clone()).unwrap_or_default();
            let mut pc = p.connect().map_err(err)?;
            let present: i64 =
                pc.query_one("SELECT count(*) FROM soak WHERE id = ANY($1)", &[&acked]).map_err(err)?.get(0);
            lost += acked.len() - present as usize;
            // remote_apply: the mirror has replayed everything before this.
            sql(
                &mut pc,
                "SET synchronous_commit = remote_apply; INSERT INTO soak VALUES (-1); DELETE FROM soak WHERE id = -1",
            )?;
            let sum =
                "SELECT count(*)::text || ' ' || coalesce(md5(string_agg(id::text, ',' ORDER BY id)), '') FROM soak";
            let on = |i: &Instance| -> Res<String> {
                i.connect().map_err(err)?.query_one(sum, &[]).map_err(err).map(|r| r.get(0))
            };
            let (a, b) = (on(&p)?, on(&m)?);
            if a != b {
                mismatched += 1;
                problems.push(format!("content {content}: primary has {a}, mirror has {b}"));
            }
            let slots: Vec<(String, bool)> = pc
                .query("SELECT slot_name::text, active FROM pg_replication_slots", &[])
                .map_err(err)?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            if slots != [("internal_wal_replication_slot".to_string(), true)] {
                problems.push(format!("content {content}: the primary's slots are {slots:?}"));
            }
            let mirror_slots: i64 = m
                .connect()
                .map_err(err)?
                .query_one("SELECT count(*) FROM pg_replication_slots", &[])
                .map_err(err)?
                .get(0);
            if mirror_slots != 0 {
                problems.push(format!("content {content}: the mirror keeps {mirror_slots} replication slots"));
            }
        }
        let stuck: i64 = self
            .coord()?
            .query_one("SELECT count(*) FROM gp_recovery_job WHERE state IN ('queued', 'running')", &[])
            .map_err(err)?
            .get(0);
        if stuck != 0 {
            problems.push(format!("{stuck} jobs queued or running"));
        }
        let leftovers: Vec<String> = leftovers(&self.cluster.dir);
        if !leftovers.is_empty() {
            problems.push(format!("left beside data directories: {}", leftovers.join(", ")));
        }
        let expected = 1 + 2 * self.cluster.primaries.len();
        let postmasters = step_processes(&self.cluster.dir);
        if postmasters.get("postgres-postmaster").copied().unwrap_or(0) != expected
            || postmasters.keys().any(|k| k != "postgres-postmaster")
        {
            problems
                .push(format!("processes on the cluster's files: {postmasters:?} (expected {expected} postmasters)"));
        }
        Ok((lost, mismatched, stuck, problems))
    }
}

/// What healing did, in order, a repeated step counted once ("rebalance(0
/// jobs) ×9" while the catalog still calls a pair synchronized).
#[derive(Default)]
struct Did(Vec<(String, usize)>);

impl Did {
    fn note(&mut self, step: String) {
        match self.0.last_mut() {
            Some((last, n)) if *last == step => *n += 1,
            _ => self.0.push((step, 1)),
        }
    }

    fn text(&self) -> String {
        let steps: Vec<String> =
            self.0.iter().map(|(s, n)| if *n > 1 { format!("{s} ×{n}") } else { s.clone() }).collect();
        steps.join(", ")
    }
}

/// The dbid of gprecoverseg's advice "gp_recover_segment(N, 'full')".
fn full_advice(message: &str) -> Option<i16> {
    let at = message.find("'full')")?;
    let head = &message[..at];
    let open = head.rfind("gp_recover_segment(")? + "gp_recover_segment(".len();
    head[open..].split(',').next()?.trim().parse().ok()
}

/// `.gp_recovery_*` entries up to three levels below the cluster's directory.
fn leftovers(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, depth: u8, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains(".gp_recovery_") && !name.ends_with(".gp_recovery.log") {
                out.push(e.path().display().to_string());
            } else if depth > 0 && e.file_type().is_ok_and(|t| t.is_dir()) && !name.starts_with("pg_") {
                walk(&e.path(), depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, 2, &mut out);
    out
}

/// Postmasters (postgres processes whose parent is not a postgres) and
/// copy tools running on the cluster's files, counted by kind.
fn step_processes(dir: &Path) -> HashMap<String, usize> {
    let needle = dir.display().to_string();
    let mut counts = HashMap::new();
    for pid in std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(&needle) {
            continue;
        }
        let kind = match comm.as_str() {
            "postgres" => "postgres-postmaster",
            "pg_basebackup" | "pg_rewind" | "rsync" | "pg_ctl" => comm.as_str(),
            _ => continue,
        };
        *counts.entry(kind.to_string()).or_insert(0) += 1;
    }
    counts
}

/// Runs the soak; Ok(true) when every check passed.
/// What a soak run showed, for bench/results.md.
pub struct Summary {
    pub ok: bool,
    pub line: String,
    pub what: String,
}

/// Runs the soak; `ok` when every check passed.
pub fn run(dir: &Path, o: &Options) -> Res<Summary> {
    let _ = Cluster::destroy(dir);
    let base = gpdemo::free_port_range(2 * o.pairs + 1).map_err(err)?;
    let cluster = Cluster::create_on(dir, o.pairs, base, &o.hosts).map_err(err)?;
    let soak = Soak {
        acked: (0..o.pairs).map(|_| Arc::new(Mutex::new(Vec::new()))).collect(),
        stop: Arc::new(AtomicBool::new(false)),
        cluster,
    };
    {
        let mut c = soak.coord()?;
        for (name, value) in FTS {
            sql(&mut c, &format!("ALTER SYSTEM SET gp_recovery.{name} = {value}"))?;
        }
        sql(&mut c, "SELECT pg_reload_conf()")?;
    }
    for p in &soak.cluster.primaries {
        sql(&mut p.connect().map_err(err)?, "CREATE TABLE soak (id bigint PRIMARY KEY)")?;
    }
    let mut all = FAULTS.to_vec();
    if !o.hosts.is_empty() {
        all.push(Fault::HostDown);
    }
    if gpdemo::running_as_root() {
        all.extend([Fault::DiskFull, Fault::MirrorDiskFull]);
    }
    let names = all.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ");
    let faults: Vec<Fault> = match &o.fault {
        Some(name) => vec![*all
            .iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| format!("no fault named {name} here; one of {names}"))?],
        None => all,
    };
    let used = faults.iter().map(|f| f.name()).collect::<Vec<_>>().join(" ");
    println!("soak: {} pairs, {} rounds, seed {}, faults {used}", o.pairs, o.rounds, o.seed);
    let writers = soak.start_writers();
    let mut rng = Rng(o.seed.max(1));
    let (mut healed, mut times) = (0, Vec::new());
    let mut failure = None;
    for round in 1..=o.rounds {
        let (fault, content, variant) =
            (faults[rng.next(faults.len())], rng.next(usize::from(o.pairs)), rng.next(REBALANCE_POINTS.len()));
        let started = Instant::now();
        let outcome = soak.inject(fault, content, variant).and_then(|what| soak.heal(true).map(|did| (what, did)));
        let took = started.elapsed().as_secs_f64();
        match outcome {
            Ok((what, did)) => {
                healed += 1;
                times.push(took);
                println!("round {round}/{}: {what}: healthy after {took:.1} s ({did})", o.rounds);
            }
            Err(e) => {
                println!(
                    "round {round}/{}: {} content {content}: NOT HEALED after {took:.1} s: {e}",
                    o.rounds,
                    fault.name()
                );
                failure = Some(e);
                break;
            }
        }
    }
    soak.stop.store(true, Ordering::SeqCst);
    for w in writers {
        let _ = w.join();
    }
    let acked: usize = soak.acked.iter().map(|a| a.lock().map(|a| a.len()).unwrap_or(0)).sum();
    let (lost, mismatched, stuck, problems) =
        if failure.is_none() { soak.final_checks()? } else { (0, 0, 0, Vec::new()) };
    for p in &problems {
        println!("soak: {p}");
    }
    let max = times.iter().copied().fold(0.0, f64::max);
    let line = format!(
        "{} rounds, {healed} healed, seconds to heal median {:.1} max {max:.1}, {acked} acknowledged commits, \
         {lost} lost, {mismatched} mismatched, {stuck} stuck",
        o.rounds,
        if times.is_empty() { 0.0 } else { median(times) },
    );
    println!("soak: {line}");
    let ok = failure.is_none() && lost == 0 && mismatched == 0 && problems.is_empty();
    if ok {
        Cluster::destroy(dir).map_err(err)?;
    } else {
        println!("soak: the cluster is left in {} for a look", dir.display());
    }
    let hosts = if o.hosts.is_empty() { String::new() } else { format!(", hosts {}", o.hosts.join(",")) };
    let what = format!("{} pairs{hosts}, seed {}, faults {used}", o.pairs, o.seed);
    Ok(Summary { ok, line, what })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_advice_names_its_dbid() {
        let m =
            "recovery job 4 failed: ...; run gp_recover_segment(12, 'differential') or gp_recover_segment(12, 'full')";
        assert_eq!(full_advice(m), Some(12));
        assert_eq!(full_advice("pg_rewind failed"), None);
    }

    #[test]
    fn a_seed_gives_one_sequence() {
        let (mut a, mut b) = (Rng(42), Rng(42));
        let xs: Vec<usize> = (0..20).map(|_| a.next(9)).collect();
        assert_eq!(xs, (0..20).map(|_| b.next(9)).collect::<Vec<_>>());
        assert!(xs.iter().any(|&x| x != xs[0]));
    }
}
