//! Greenplum's log lines on stdout:
//! `20240131:10:37:47:002781 gprecoverseg:cdw:gpadmin-[INFO]:-message`
//! (date, time and pid; program, host and user; level), so scripts and eyes
//! used to gpMgmt's output find what they look for.

use std::cell::RefCell;
use std::io::Write;

use indicatif::MultiProgress;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
            Level::Critical => "CRITICAL",
        }
    }
}

/// One log line, from its parts.
pub fn format_line(stamp: &str, program: &str, host: &str, user: &str, level: Level, message: &str) -> String {
    format!("{stamp} {program}:{host}:{user}-[{}]:-{message}", level.name())
}

/// Which levels reach the screen: -q keeps warnings and errors, -v adds debug lines.
pub fn shown(level: Level, quiet: bool, verbose: bool) -> bool {
    match level {
        Level::Debug => verbose,
        Level::Info => !quiet,
        _ => true,
    }
}

pub struct Log {
    program: &'static str,
    host: String,
    user: String,
    quiet: bool,
    verbose: bool,
    /// While progress bars are drawn, lines go above them through this.
    bars: RefCell<Option<MultiProgress>>,
}

impl Log {
    pub fn new(program: &'static str, quiet: bool, verbose: bool) -> Log {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            // SAFETY: getuid has no preconditions and cannot fail.
            .unwrap_or_else(|_| unsafe { libc::getuid() }.to_string());
        Log { program, host: local_hostname(), user, quiet, verbose, bars: RefCell::new(None) }
    }

    pub fn quiet(&self) -> bool {
        self.quiet
    }

    pub fn program(&self) -> &'static str {
        self.program
    }

    /// Sends lines through `bars` until [`Log::detach`].
    pub fn attach(&self, bars: MultiProgress) {
        *self.bars.borrow_mut() = Some(bars);
    }

    pub fn detach(&self) {
        *self.bars.borrow_mut() = None;
    }

    pub fn log(&self, level: Level, message: &str) {
        if !shown(level, self.quiet, self.verbose) {
            return;
        }
        let line = format_line(&timestamp(), self.program, &self.host, &self.user, level, message);
        match self.bars.borrow().as_ref() {
            // A failed write to the terminal leaves nothing better to tell it.
            Some(bars) => {
                let _ = bars.println(&line);
            }
            None => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
    }

    pub fn debug(&self, m: &str) {
        self.log(Level::Debug, m)
    }
    pub fn info(&self, m: &str) {
        self.log(Level::Info, m)
    }
    pub fn warn(&self, m: &str) {
        self.log(Level::Warning, m)
    }
    pub fn error(&self, m: &str) {
        self.log(Level::Error, m)
    }
    pub fn critical(&self, m: &str) {
        self.log(Level::Critical, m)
    }

    pub fn lines(&self, lines: &[(Level, String)]) {
        for (level, line) in lines {
            self.log(*level, line);
        }
    }
}

/// `YYYYmmdd:HH:MM:SS:PID` in local time, as gplog writes it.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let t = libc::time_t::try_from(secs).unwrap_or(0);
    // SAFETY: tm is plain data, for which all zeros is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r only writes tm.
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        return format!("00000000:00:00:00:{:06}", std::process::id());
    }
    format!(
        "{:04}{:02}{:02}:{:02}:{:02}:{:02}:{:06}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        std::process::id()
    )
}

fn local_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_look_like_gplog_lines() {
        assert_eq!(
            format_line("20240131:10:37:47:002781", "gprecoverseg", "cdw", "gpadmin", Level::Info, "Starting"),
            "20240131:10:37:47:002781 gprecoverseg:cdw:gpadmin-[INFO]:-Starting"
        );
        assert_eq!(
            format_line("s", "gpstate", "h", "u", Level::Warning, "x"),
            "s gpstate:h:u-[WARNING]:-x",
            "warnings as gplog names them"
        );
    }

    #[test]
    fn quiet_keeps_warnings_and_verbose_adds_debug() {
        assert!(!shown(Level::Info, true, false));
        assert!(shown(Level::Warning, true, false));
        assert!(shown(Level::Critical, true, false));
        assert!(!shown(Level::Debug, false, false));
        assert!(shown(Level::Debug, false, true));
        assert!(shown(Level::Info, false, false));
    }

    #[test]
    fn the_timestamp_has_gplog_s_shape() {
        let t = timestamp();
        let parts: Vec<&str> = t.split(':').collect();
        assert_eq!(parts.len(), 5, "{t}");
        assert_eq!(parts[0].len(), 8, "{t}");
        assert!(parts.iter().all(|p| p.chars().all(|c| c.is_ascii_digit())), "{t}");
    }
}
