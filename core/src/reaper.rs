//! Ending a step's processes without waiting for them: the jobs worker's
//! loop must never sleep, so a killed step is handed to a [`Reaper`], which
//! the loop calls on every pass and which signals the step's process group
//! a little more firmly each time until it is gone.

use std::process::Child;
use std::time::{Duration, Instant};

/// After its input closed, a step has this long to end by itself (its
/// watcher ends the script's session, also on another host).
pub const TERM_AFTER: Duration = Duration::from_millis(1500);
/// Then SIGTERM to its local process group, and after this SIGKILL.
pub const KILL_AFTER: Duration = Duration::from_secs(2);

struct Dying {
    child: Child,
    what: String,
    since: Instant,
    killed: bool,
}

/// Killed steps that have not exited yet.
#[derive(Default)]
pub struct Reaper {
    dying: Vec<Dying>,
}

impl Reaper {
    /// Takes a step whose standard input was just closed; `child` leads its
    /// own process group.
    pub fn push(&mut self, child: Child, what: String, now: Instant) {
        self.dying.push(Dying { child, what, since: now, killed: false });
    }

    /// One look at every killed step, never waiting: those that exited are
    /// forgotten, the others signaled as their age says. Returns what had to
    /// be killed with SIGKILL, once each, for the log.
    pub fn reap(&mut self, now: Instant) -> Vec<String> {
        let mut killed = Vec::new();
        self.dying.retain_mut(|d| {
            if !matches!(d.child.try_wait(), Ok(None)) {
                return false;
            }
            let group = -(d.child.id() as i32);
            let age = now.saturating_duration_since(d.since);
            if age >= KILL_AFTER {
                // SAFETY: signals the process group the step created.
                unsafe { libc::kill(group, libc::SIGKILL) };
                if !d.killed {
                    killed.push(d.what.clone());
                }
                d.killed = true;
            } else if age >= TERM_AFTER {
                // SAFETY: as above.
                unsafe { libc::kill(group, libc::SIGTERM) };
            }
            true
        });
        killed
    }

    pub fn is_empty(&self) -> bool {
        self.dying.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    fn step(script: &str) -> Child {
        Command::new("sh").args(["-c", script]).stdin(Stdio::piped()).process_group(0).spawn().unwrap()
    }

    #[test]
    fn a_step_that_ignores_its_input_and_sigterm_is_killed_without_waiting() {
        let mut reaper = Reaper::default();
        let mut child = step("trap '' TERM; sleep 30 & wait; sleep 30");
        drop(child.stdin.take());
        let started = Instant::now();
        reaper.push(child, "stubborn".into(), started);
        let mut killed = Vec::new();
        while !reaper.is_empty() && started.elapsed() < Duration::from_secs(10) {
            let before = Instant::now();
            killed.extend(reaper.reap(Instant::now()));
            assert!(before.elapsed() < Duration::from_millis(50), "a look at the dying waited");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(reaper.is_empty(), "still running after 10 s");
        assert!(started.elapsed() >= KILL_AFTER, "killed before its time");
        assert_eq!(killed, vec!["stubborn".to_string()], "logged once");
    }

    #[test]
    fn a_step_that_ends_by_itself_is_only_forgotten() {
        let mut reaper = Reaper::default();
        let mut child = step("exec cat >/dev/null");
        drop(child.stdin.take());
        let started = Instant::now();
        reaper.push(child, "polite".into(), started);
        while !reaper.is_empty() && started.elapsed() < Duration::from_secs(5) {
            assert!(reaper.reap(Instant::now()).is_empty());
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(started.elapsed() < TERM_AFTER, "it ended when its input closed");
    }
}
