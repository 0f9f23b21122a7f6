//! gprecoverseg, gpstate, gpinitstandby and gpactivatestandby as a Greenplum DBA types them, over the
//! extension's SQL API only: every decision and every effect on the cluster
//! is the extension's; these commands parse flags, show what the functions
//! and views return in Greenplum's layout, ask, submit and watch.
//!
//! Formatting and parsing are plain functions, unit tested here; the
//! effects (SQL, terminal, signals) are kept thin around them.

pub mod activatestandby;
pub mod catalog;
pub mod conn;
pub mod gpstate;
pub mod initstandby;
pub mod jobs;
pub mod layout;
pub mod log;
pub mod prompt;
pub mod recoverseg;
pub mod redact;
pub mod relocate;
pub mod watch;

/// The options every command takes, as Greenplum's utilities spell them.
#[derive(clap::Args, Debug)]
pub struct CommonArgs {
    /// show this help message and exit
    #[arg(short = 'h', long = "help", visible_short_alias = '?', action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// debug output.
    #[arg(short, long, help_heading = "Logging Options")]
    pub verbose: bool,
    /// suppress status messages
    #[arg(short, long, help_heading = "Logging Options")]
    pub quiet: bool,
    /// quiet mode, do not require user input for confirmations
    #[arg(short = 'a', help_heading = "Logging Options")]
    pub no_prompt: bool,
    /// The coordinator (for gpactivatestandby: the standby), as a libpq
    /// connection string or URL (Greenplum's -d names a data directory).
    /// Default: PGHOST, PGPORT, PGUSER, PGDATABASE.
    #[arg(short = 'd', value_name = "conninfo", help_heading = "Connection Options")]
    pub conninfo: Option<String>,
}

impl CommonArgs {
    /// The command's log, and its main as simple_main runs it.
    pub fn main(
        &self,
        program: &'static str,
        body: impl FnOnce(&log::Log) -> Result<u8, ToolError>,
    ) -> std::process::ExitCode {
        let log = log::Log::new(program, self.quiet, self.verbose);
        simple_main(&log, self.conninfo.as_deref(), || body(&log))
    }
}

/// Exit codes, as Greenplum's management utilities use them.
pub mod exit {
    pub const OK: u8 = 0;
    /// A recovery failed, or the user interrupted it.
    pub const FAILED: u8 = 1;
    /// Bad arguments, and every error before anything was submitted.
    pub const ERROR: u8 = 2;
    /// The user answered no at the prompt.
    pub const ABORTED: u8 = 4;
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Flags that do not go together (Greenplum's ProgramArgumentValidationException).
    #[error("{0}")]
    Usage(String),
    /// A refusal decided before anything was submitted (not enough -p hosts, ...).
    #[error("{0}")]
    Refused(String),
    #[error("could not connect to the coordinator: {0}")]
    Connect(String),
    #[error("{0}")]
    Sql(String),
    #[error("{what} {path}: {source}")]
    File { what: &'static str, path: String, source: std::io::Error },
    #[error("terminal: {0}")]
    Terminal(String),
}

impl ToolError {
    /// The line Greenplum's simple_main logs for such an error.
    pub fn report(&self, program: &str) -> String {
        match self {
            ToolError::Usage(m) => format!("{program}: error: {m}"),
            ToolError::Refused(m) => format!("{program} error: {m}"),
            other => format!("{program} failed. (Reason='{other}') exiting..."),
        }
    }
}

/// A command's main, as Greenplum's simple_main runs one: the starting
/// line (its passwords masked; `conninfo` is the `-d` value clap read),
/// then `body`; an error is logged as those utilities log it and ends with
/// exit::ERROR.
pub fn simple_main(
    log: &log::Log,
    conninfo: Option<&str>,
    body: impl FnOnce() -> Result<u8, ToolError>,
) -> std::process::ExitCode {
    // args_os: a path given to -i or -o need not be UTF-8.
    let args: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    log.info(&format!("Starting {} with args: {}", log.program(), redact::redact_args(&args, conninfo)));
    let code = body().unwrap_or_else(|e| {
        match e {
            ToolError::Usage(_) | ToolError::Refused(_) => log.error(&e.report(log.program())),
            _ => log.critical(&e.report(log.program())),
        }
        exit::ERROR
    });
    std::process::ExitCode::from(code)
}

impl From<std::io::Error> for ToolError {
    fn from(e: std::io::Error) -> Self {
        ToolError::Terminal(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_reported_as_greenplum_does() {
        assert_eq!(
            ToolError::Usage("Only one of -F and --differential may be specified".into()).report("gprecoverseg"),
            "gprecoverseg: error: Only one of -F and --differential may be specified"
        );
        assert_eq!(
            ToolError::Refused("Not enough new recovery hosts given for recovery.".into()).report("gprecoverseg"),
            "gprecoverseg error: Not enough new recovery hosts given for recovery."
        );
        assert_eq!(
            ToolError::Sql("permission denied".into()).report("gpstate"),
            "gpstate failed. (Reason='permission denied') exiting..."
        );
    }
}
