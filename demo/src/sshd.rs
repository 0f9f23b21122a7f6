//! One OpenSSH server per demo "host" (a loopback address such as
//! 127.0.0.2), so segments on it are reached only through the remote shell,
//! as on a real multi-host cluster: a key made for the cluster lets the
//! server user in, and the hosts' key is in a known_hosts file of its own,
//! so host keys are checked. Stopping a host's sshd makes it unreachable.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{append_server_file, make_server_dir, run, running_as_root, server_user, wait_until, DemoError, Result};

/// The keys and configuration of a cluster's sshds, in `<cluster>/ssh`.
pub struct SshHosts {
    pub dir: PathBuf,
    pub port: u16,
}

impl SshHosts {
    pub fn new(cluster_dir: &Path, port: u16) -> SshHosts {
        SshHosts { dir: cluster_dir.join("ssh"), port }
    }

    /// The sshd settings of the existing cluster in `cluster_dir`.
    pub fn open(cluster_dir: &Path) -> Result<SshHosts> {
        let file = cluster_dir.join("ssh").join("port");
        let port = fs::read_to_string(&file).ok().and_then(|t| t.trim().parse().ok()).ok_or_else(|| {
            DemoError::Usage(format!("{} has no segment hosts (no {})", cluster_dir.display(), file.display()))
        })?;
        Ok(SshHosts::new(cluster_dir, port))
    }

    fn client_key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    fn host_key(&self) -> PathBuf {
        self.dir.join("host_ed25519")
    }

    fn pid_file(&self, host: &str) -> PathBuf {
        self.dir.join(format!("sshd-{host}.pid"))
    }

    /// The remote shell that reaches these hosts as the server user: the
    /// value of gp_recovery.remote_shell.
    pub fn remote_shell(&self) -> String {
        format!(
            "ssh -o BatchMode=yes -o ConnectTimeout=10 -p {} -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes",
            self.port,
            self.client_key().display(),
            self.dir.join("known_hosts").display()
        )
    }

    /// Makes the keys, then starts an sshd on every host.
    pub fn create(&self, hosts: &[String]) -> Result<()> {
        if !running_as_root() {
            return Err(DemoError::Usage("segments on other hosts need root, to start an sshd for each host".into()));
        }
        make_server_dir(&self.dir)?;
        fs::write(self.dir.join("port"), self.port.to_string())
            .map_err(crate::io_err("could not write the sshd port"))?;
        for key in [self.client_key(), self.host_key()] {
            run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "gpdemo", "-f"]).arg(&key))?;
        }
        // The client's key is the server user's; sshd's host key stays root's.
        for f in [self.client_key(), self.client_key().with_extension("pub")] {
            run(Command::new("chown").arg(format!("{0}:{0}", server_user())).arg(&f))?;
        }
        let read =
            |p: PathBuf| fs::read_to_string(&p).map_err(crate::io_err(format!("could not read {}", p.display())));
        append_server_file(&self.dir.join("authorized_keys"), &read(self.client_key().with_extension("pub"))?)?;
        fs::create_dir_all("/run/sshd").map_err(crate::io_err("could not create /run/sshd"))?;
        hosts.iter().try_for_each(|h| self.know_and_start(h))
    }

    /// Makes the host's key known to the remote shell, then starts its sshd.
    fn know_and_start(&self, host: &str) -> Result<()> {
        let path = self.host_key().with_extension("pub");
        let host_pub =
            fs::read_to_string(&path).map_err(crate::io_err(format!("could not read {}", path.display())))?;
        append_server_file(&self.dir.join("known_hosts"), &format!("[{host}]:{} {}\n", self.port, host_pub.trim()))?;
        self.start(host)
    }

    /// Starts the sshd of one host and waits until it accepts connections.
    /// UsePAM: Debian's `postgres` account has a locked password, which
    /// sshd alone refuses even for key logins; PAM's account check does not.
    pub fn start(&self, host: &str) -> Result<()> {
        let conf = self.dir.join(format!("sshd-{host}.conf"));
        fs::write(
            &conf,
            format!(
                "ListenAddress {host}:{port}\nHostKey {key}\nPidFile {pid}\nAuthorizedKeysFile {dir}/authorized_keys\n\
                 AllowUsers {user}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin no\n\
                 UsePAM yes\nStrictModes no\nLogLevel ERROR\n",
                port = self.port,
                key = self.host_key().display(),
                pid = self.pid_file(host).display(),
                dir = self.dir.display(),
                user = server_user()
            ),
        )
        .map_err(crate::io_err(format!("could not write {}", conf.display())))?;
        // sshd insists on its absolute path; it daemonizes once listening,
        // in the host's own file system view when it has one.
        let mut sshd = Command::new("/usr/sbin/sshd");
        sshd.arg("-f").arg(&conf);
        let ns = self.dir.parent().map(|cluster| crate::hostns::ns_file(cluster, host)).filter(|f| f.exists());
        if let Some(ns) = ns {
            sshd = crate::hostns::enter(&sshd, &ns);
        }
        run(&mut sshd)?;
        let addr = format!("{host}:{}", self.port);
        wait_until(Duration::from_secs(10), &format!("sshd on {addr}"), || TcpStream::connect(&addr).is_ok())
    }

    /// Stops the sshd of one host: it becomes unreachable.
    pub fn stop(&self, host: &str) {
        if let Some(pid) = fs::read_to_string(self.pid_file(host)).ok().and_then(|t| t.trim().parse::<i32>().ok()) {
            // SAFETY: signals the sshd this cluster started (its pid file).
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let _ = fs::remove_file(self.pid_file(host));
        }
    }

    /// Stops every sshd of the cluster in `cluster_dir`.
    pub fn stop_all(cluster_dir: &Path) {
        let Ok(entries) = fs::read_dir(cluster_dir.join("ssh")) else { return };
        let hosts = SshHosts::new(cluster_dir, 0);
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(host) = name.strip_prefix("sshd-").and_then(|n| n.strip_suffix(".pid")) {
                hosts.stop(host);
            }
        }
    }
}

/// A whole-host failure: every postmaster on `host` is killed (SIGKILL) and
/// its sshd stopped, so the host neither serves nor answers ssh.
pub fn fail_host(cluster_dir: &Path, host: &str) -> Result<Vec<PathBuf>> {
    let hosts = SshHosts::open(cluster_dir)?;
    let datadirs = crate::find_datadirs(&cluster_dir.join(host));
    if datadirs.is_empty() {
        return Err(DemoError::Usage(format!("no segments of {} are on host {host}", cluster_dir.display())));
    }
    for d in &datadirs {
        if let Some(pid) = crate::postmaster_pid(d) {
            // SAFETY: kills a postmaster of this demo cluster.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    hosts.stop(host);
    Ok(datadirs)
}

/// A new, empty segment host for the cluster in `cluster_dir` (a loopback
/// address it does not use yet), with its own file system view and sshd:
/// a place to relocate segments onto. Every instance's postgresql.conf
/// lists it in listen_addresses, so a copy made there listens on it.
pub fn add_host(cluster_dir: &Path, host: &str) -> Result<()> {
    let hosts = SshHosts::open(cluster_dir)?;
    if !host.starts_with("127.") || host == crate::ADDRESS {
        return Err(DemoError::Usage(format!(
            "a new host is a loopback address other than {}, not {host}",
            crate::ADDRESS
        )));
    }
    if crate::hostns::ns_file(cluster_dir, host).exists() {
        return Err(DemoError::Usage(format!("{host} is already a host of {}", cluster_dir.display())));
    }
    crate::hostns::add(cluster_dir, host)?;
    hosts.know_and_start(host)?;
    let all: Vec<String> = fs::read_dir(cluster_dir.join("ns"))
        .map_err(crate::io_err("could not list the hosts"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    crate::listen_on_hosts(cluster_dir, &all)
}

/// The host is back (its sshd runs again); its segments stay down until
/// they are recovered.
pub fn restart_host(cluster_dir: &Path, host: &str) -> Result<()> {
    SshHosts::open(cluster_dir)?.start(host)
}
