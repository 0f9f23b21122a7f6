//! Running a recovery step's script on a segment's host: `sh -c` on the
//! coordinator's own machine, otherwise through gp_recovery.remote_shell
//! (ssh), as the OS user the server runs as. The scripts themselves are
//! built in gp_recovery_core::host.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus};

use gp_recovery_core::host::{self, Scripts};
use pgrx::pg_sys;

use crate::gucs;

/// A step's failure; `unreachable` when the remote shell could not log in.
#[derive(Debug)]
pub struct HostError {
    pub message: String,
    pub unreachable: bool,
}

impl From<HostError> for String {
    fn from(e: HostError) -> String {
        e.message
    }
}

/// Where a segment's steps run.
#[derive(Debug, Clone)]
pub struct SegmentHost {
    pub name: String,
    /// The remote shell's words; None on the coordinator's own host.
    remote: Option<Vec<String>>,
}

/// This machine's host name.
fn own_host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The directory of the server's own programs (pg_ctl, pg_rewind, ...),
/// taken to be the same on every host.
fn bindir() -> String {
    // SAFETY: my_exec_path is a NUL-terminated path set at backend start.
    let exec = unsafe { std::ffi::CStr::from_ptr(std::ptr::addr_of!(pg_sys::my_exec_path).cast()) };
    Path::new(&*exec.to_string_lossy()).parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The step scripts for this server's programs and settings.
pub fn scripts(connect_timeout: u64) -> Scripts {
    Scripts { bindir: bindir(), connect_timeout }
}

impl SegmentHost {
    /// The host of a segment, as the settings say it is reached now.
    pub fn of(hostname: &str) -> Result<SegmentHost, String> {
        let remote = if host::is_local(hostname, &own_host_name(), &gucs::local_hosts()) {
            None
        } else {
            Some(host::split_words(&gucs::remote_shell()).map_err(|e| e.to_string())?)
        };
        Ok(SegmentHost { name: hostname.to_string(), remote })
    }

    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// The command running `script` there. Its standard input must stay
    /// open while it runs: closing it ends the script on that host. The
    /// command dies with the worker (PR_SET_PDEATHSIG), which closes it too.
    pub fn command(&self, script: &str) -> Command {
        let argv = host::command_line(self.remote.as_deref().map(|w| (w, self.name.as_str())), script);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).current_dir("/").process_group(0);
        // SAFETY: prctl is async-signal-safe; it only sets this child's
        // parent-death signal.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd
    }

    /// The error of a step that exited with `status` after printing `output`.
    pub fn failure(&self, what: &str, status: ExitStatus, output: &str) -> HostError {
        if self.is_remote() && status.code() == Some(host::SSH_FAILED) {
            return HostError { message: host::unreachable(&self.name, output), unreachable: true };
        }
        let tail = host::last_lines(output, 3);
        HostError { message: format!("{what} failed on host {} ({status}): {tail}", self.name), unreachable: false }
    }
}
