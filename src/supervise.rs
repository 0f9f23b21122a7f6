//! Supervised step processes of the jobs worker: a step's script runs as a
//! child (on the segment's host, see `segment_host`), its output going to a
//! file under the coordinator's gp_recovery_log/; the worker's loop only
//! polls it, and ends it when its deadline passes or its job is canceled.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Stdio};
use std::time::{Duration, Instant};

use pgrx::prelude::*;

use gp_recovery_core::reaper::Reaper;

use crate::segment_host::{HostError, SegmentHost};

/// gp_recovery_log/ under the coordinator's data directory.
pub fn log_dir() -> PathBuf {
    // SAFETY: DataDir is set before any worker starts.
    let data = unsafe { std::ffi::CStr::from_ptr(pg_sys::DataDir) };
    PathBuf::from(&*data.to_string_lossy()).join("gp_recovery_log")
}

/// Removes the output files of the given jobs from gp_recovery_log/ (only
/// files there, named as gp_recovery_core::job::log_file_name names them);
/// returns how many were removed.
pub fn remove_job_logs(jobs: &HashSet<i64>) -> usize {
    let dir = log_dir();
    let Ok(entries) = fs::read_dir(&dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let of_job = name.to_str().and_then(gp_recovery_core::job::log_file_job).is_some_and(|j| jobs.contains(&j));
        // A link or directory by that name is nothing a step wrote.
        if !of_job || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => warning!("gp_recovery: could not remove {}: {e}", entry.path().display()),
        }
    }
    removed
}

/// A step's script running on a host.
pub struct Tool {
    pub name: &'static str,
    host: SegmentHost,
    /// None once killed: it is then the reaper's (see [`reap`]).
    child: Option<Child>,
    /// Held open while the script runs: closing it ends the script's session on its host.
    stdin: Option<ChildStdin>,
    pub log: PathBuf,
    /// How much of the log `appended` has returned.
    read_to: u64,
    /// When it must have ended, and its limit for the error text.
    deadline: Option<(Instant, Duration)>,
}

/// What a finished step left.
pub struct Finished {
    pub result: Result<(), HostError>,
    /// Everything it printed.
    pub output: String,
}

fn read(log: &PathBuf) -> String {
    fs::read(log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

impl Tool {
    /// Starts `script` on `host`; `log_name` names its output file; past
    /// `limit` the step is ended and fails.
    pub fn spawn(
        host: SegmentHost,
        name: &'static str,
        log_name: &str,
        script: &str,
        limit: Option<Duration>,
    ) -> Result<Tool, String> {
        let dir = log_dir();
        fs::create_dir_all(&dir).map_err(|e| format!("could not create {}: {e}", dir.display()))?;
        let log = dir.join(log_name);
        let out = fs::File::create(&log).map_err(|e| format!("could not create {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut child = host
            .command(script)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("could not run {name} for host {}: {e}", host.name))?;
        let stdin = child.stdin.take();
        Ok(Tool {
            name,
            host,
            child: Some(child),
            stdin,
            log,
            read_to: 0,
            deadline: limit.map(|l| (Instant::now() + l, l)),
        })
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        read(&self.log)
    }

    /// What it printed since the last call (nothing if the log cannot be read).
    pub fn appended(&mut self) -> Vec<u8> {
        let mut new = Vec::new();
        let read = fs::File::open(&self.log)
            .and_then(|mut f| f.seek(SeekFrom::Start(self.read_to)).and_then(|_| f.read_to_end(&mut new)));
        match read {
            Ok(n) => self.read_to += n as u64,
            Err(_) => new.clear(),
        }
        new
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// None while the step runs; how it ended once it has.
    pub fn poll(&mut self) -> Option<Finished> {
        let child = self.child.as_mut()?;
        let status = match child.try_wait() {
            Ok(None) => {
                if let Some((_, limit)) = self.deadline.filter(|(d, _)| Instant::now() > *d) {
                    self.kill();
                    let output = self.output();
                    let message = format!(
                        "{} on host {} did not finish within {} s: {} (output in {})",
                        self.name,
                        self.host.name,
                        limit.as_secs(),
                        gp_recovery_core::host::last_lines(&output, 3),
                        self.log.display()
                    );
                    return Some(Finished { result: Err(HostError::other(message)), output });
                }
                return None;
            }
            Ok(Some(status)) => status,
            Err(e) => {
                let message = format!("could not wait for {}: {e}", self.name);
                return Some(Finished { result: Err(HostError::other(message)), output: String::new() });
            }
        };
        let output = self.output();
        let result = if gp_recovery_core::host::exit_ok(self.name, status.code()) {
            Ok(())
        } else {
            let mut e = self.host.failure(self.name, status, &output);
            e.message = format!("{} (output in {})", e.message, self.log.display());
            Err(e)
        };
        Some(Finished { result, output })
    }

    /// Ends the step and everything it started, on its host, without
    /// waiting: closing its standard input makes the script's watcher end
    /// the script's session (which runs apart from the local process group,
    /// under setsid), and the reaper gives that time before it signals the
    /// local process group (see [`reap`]).
    pub fn kill(&mut self) {
        drop(self.stdin.take());
        if let Some(child) = self.child.take() {
            let what = format!("{} on host {}", self.name, self.host.name);
            REAPER.with(|r| r.borrow_mut().push(child, what, Instant::now()));
        }
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        self.kill();
    }
}

thread_local! {
    static REAPER: std::cell::RefCell<Reaper> = std::cell::RefCell::new(Reaper::default());
}

/// Ends killed steps without ever waiting; called on every pass of the
/// jobs worker's loop.
pub fn reap() {
    for what in REAPER.with(|r| r.borrow_mut().reap(Instant::now())) {
        log!("gp_recovery: {what} did not end when its input closed; it was killed");
    }
}

/// Whether killed steps are still ending (the loop then keeps polling).
pub fn reaping() -> bool {
    REAPER.with(|r| !r.borrow().is_empty())
}
