//! A file system view of its own for each demo "host": a mount namespace in
//! which `<cluster>/tablespaces` is that host's `<cluster>/<host>/tablespaces`.
//! Everything that runs on the host (its sshd, so every step the
//! coordinator runs there, and its postmasters) is in it. So a tablespace
//! created at `<cluster>/tablespaces/...` has one directory per host, as on
//! separate machines, while a standby replays CREATE TABLESPACE with its
//! primary's location. Data directories stay visible to all.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{io_err, make_server_dir, run, Result};

/// The path that differs per host.
pub fn tablespaces_dir(cluster_dir: &Path) -> PathBuf {
    cluster_dir.join("tablespaces")
}

/// The directory behind `tablespaces_dir` on `host`.
pub fn host_tablespaces_dir(cluster_dir: &Path, host: &str) -> PathBuf {
    cluster_dir.join(host).join("tablespaces")
}

fn ns_dir(cluster_dir: &Path) -> PathBuf {
    cluster_dir.join("ns")
}

/// The file that keeps `host`'s namespace.
pub fn ns_file(cluster_dir: &Path, host: &str) -> PathBuf {
    ns_dir(cluster_dir).join(host)
}

/// Makes each host's namespace with its tablespaces directory mounted.
///
/// The cluster's directory is first bind-mounted onto itself as a shared
/// mount, and each namespace's copy of it made a slave: what is mounted
/// under it later on the machine (a small disk of a test) is seen on every
/// host, while a host's own mounts stay its own. A persistent namespace is
/// bound to a file on a private mount, hence the private `ns` directory.
pub fn create(cluster_dir: &Path, hosts: &[String]) -> Result<()> {
    let mount = |args: &[&std::ffi::OsStr]| run(Command::new("mount").args(args)).map(|_| ());
    let own = cluster_dir.as_os_str();
    mount(&[("--bind").as_ref(), own, own])?;
    mount(&[("--make-shared").as_ref(), own])?;
    let dir = ns_dir(cluster_dir);
    fs::create_dir_all(&dir).map_err(io_err(format!("could not create {}", dir.display())))?;
    mount(&[("--bind").as_ref(), dir.as_os_str(), dir.as_os_str()])?;
    mount(&[("--make-private").as_ref(), dir.as_os_str()])?;
    make_server_dir(&tablespaces_dir(cluster_dir))?;
    hosts.iter().try_for_each(|h| add(cluster_dir, h))
}

/// The namespace of one more host of a cluster made by `create`.
pub fn add(cluster_dir: &Path, host: &str) -> Result<()> {
    let file = ns_file(cluster_dir, host);
    fs::write(&file, "").map_err(io_err(format!("could not create {}", file.display())))?;
    run(Command::new("unshare").arg(format!("--mount={}", file.display())).args([
        "--propagation",
        "unchanged",
        "true",
    ]))?;
    make_server_dir(&cluster_dir.join(host))?;
    make_server_dir(&host_tablespaces_dir(cluster_dir, host))?;
    let mut slave = Command::new("mount");
    slave.arg("--make-slave").arg(cluster_dir);
    run(&mut enter(&slave, &file))?;
    let mut bind = Command::new("mount");
    bind.arg("--bind").arg(host_tablespaces_dir(cluster_dir, host)).arg(tablespaces_dir(cluster_dir));
    run(&mut enter(&bind, &file))?;
    Ok(())
}

/// The same command, run inside the namespace kept by `ns`.
pub fn enter(cmd: &Command, ns: &Path) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--mount={}", ns.display())).arg("--").arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    c
}

/// Unmounts everything mounted under `dir`, deepest first: any file system
/// a test or the soak mounted there and did not get to release, the hosts'
/// namespaces (each ends with its last process), the mount that held them
/// and `dir`'s own, so that the directory can be removed.
pub fn unmount_under(dir: &Path) {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut under: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        // The mount table writes a space in a path as \040.
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    under.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for p in under {
        let _ = run(Command::new("umount").arg("-l").arg(&p));
    }
}
