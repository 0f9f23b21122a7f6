//! Running a recovery step's script on a segment's host: `sh -c` on the
//! coordinator's own machine, otherwise through gp_recovery.remote_shell
//! (ssh), as the OS user the server runs as. The scripts themselves are
//! built in gp_recovery_core::host.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus};

use gp_recovery_core::host::{self, Coordinator, Owner, Scripts};
use gp_recovery_core::identity::{local_machine, local_path_id, own_host_name, ByName};
use gp_recovery_core::job::{Failure, FailureKind};
use once_cell::sync::OnceCell;
use pgrx::pg_sys;

use crate::gucs;

/// A step's failure: its text, and its kind (the remote shell could not
/// log in, the step refused to act on what it could not prove to be the
/// job's own, or what the tool's own output points to).
#[derive(Debug)]
pub struct HostError {
    pub message: String,
    pub kind: FailureKind,
}

impl HostError {
    pub fn other(message: String) -> HostError {
        HostError { message, kind: FailureKind::Other }
    }
}

impl From<HostError> for String {
    fn from(e: HostError) -> String {
        e.message
    }
}

impl From<HostError> for Failure {
    fn from(e: HostError) -> Failure {
        Failure::new(e.kind, e.message)
    }
}

/// Where a segment's steps run.
#[derive(Debug, Clone)]
pub struct SegmentHost {
    pub name: String,
    /// The remote shell's words; None on the coordinator's own host.
    remote: Option<Vec<String>>,
}

/// The directory of the server's own programs (pg_ctl, pg_rewind, ...),
/// taken to be the same on every host.
fn bindir() -> String {
    // SAFETY: my_exec_path is a NUL-terminated path set at backend start.
    let exec = unsafe { std::ffi::CStr::from_ptr(std::ptr::addr_of!(pg_sys::my_exec_path).cast()) };
    Path::new(&*exec.to_string_lossy()).parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The coordinator as every step's script recognises it (read once: its
/// machine, data directory and system identifier do not change while it
/// runs). Its directory is read from DataDir, resolved by the kernel.
pub fn coordinator() -> &'static Coordinator {
    static COORDINATOR: OnceCell<Coordinator> = OnceCell::new();
    COORDINATOR.get_or_init(|| {
        // SAFETY: DataDir is set before any backend or worker runs.
        let data = unsafe { std::ffi::CStr::from_ptr(pg_sys::DataDir) }.to_string_lossy().into_owned();
        Coordinator {
            machine: local_machine(),
            // Without it the guard cannot compare directories; the system
            // identifier check still applies.
            datadir: local_path_id(Path::new(&data)).unwrap_or_default(),
            // SAFETY: reads the control file's copy in shared memory, set
            // up before any backend or worker starts.
            system_identifier: unsafe { pg_sys::GetSystemIdentifier() }.to_string(),
        }
    })
}

/// The step scripts for this server's programs and settings; `owner` is
/// the job they act for, if any.
pub fn scripts(connect_timeout: u64, owner: Option<Owner>) -> Scripts {
    Scripts { bindir: bindir(), connect_timeout, coordinator: coordinator().clone(), owner: owner.unwrap_or_default() }
}

/// How the jobs worker compares host names: without waiting on a resolver.
pub fn hosts_by_name(local_hosts: &str) -> ByName<'_> {
    ByName { own_name: own_host_name_static(), local_hosts }
}

fn own_host_name_static() -> &'static str {
    static NAME: OnceCell<String> = OnceCell::new();
    NAME.get_or_init(own_host_name)
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
            return HostError { message: host::unreachable(&self.name, output), kind: FailureKind::HostUnreachable };
        }
        let tail = host::last_lines(output, 3);
        if status.code() == Some(host::REFUSED) {
            return HostError { message: format!("{what} on host {}: {tail}", self.name), kind: FailureKind::Refused };
        }
        HostError {
            message: format!("{what} failed on host {} ({status}): {tail}", self.name),
            kind: FailureKind::of_tool_output(output),
        }
    }
}
