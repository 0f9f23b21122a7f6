//! gpinitstandby over gp_init_standby() and gp_remove_standby(): -s HOST
//! [-P PORT] [-S DATADIR] builds the standby coordinator and waits for its
//! job; -r removes it.

use std::process::ExitCode;

use clap::Parser;
use gp_recovery_core::segment::Segment;

use crate::conn::Db;
use crate::log::Log;
use crate::watch::{self, Progress, Signals};
use crate::{catalog, exit, jobs, prompt, ToolError};

#[derive(Parser, Debug)]
#[command(
    name = "gpinitstandby",
    version,
    about = "Adds a standby coordinator to the cluster, or removes it",
    after_help = "Calls gp_init_standby() (or gp_remove_standby() with -r) on the coordinator and waits for the \
                  job that builds the standby. Exit codes: 0 done, 1 the build failed, 2 bad arguments or an error, \
                  4 answered no.",
    disable_help_flag = true
)]
pub struct Args {
    #[command(flatten)]
    pub common: crate::CommonArgs,
    /// hostname of the standby coordinator
    #[arg(short = 's', value_name = "standby_hostname")]
    pub host: Option<String>,
    /// port of the standby coordinator (default: the coordinator's)
    #[arg(short = 'P', value_name = "port")]
    pub port: Option<i32>,
    /// data directory of the standby coordinator (default: the coordinator's)
    #[arg(short = 'S', value_name = "standby_datadir")]
    pub datadir: Option<String>,
    /// remove the standby coordinator
    #[arg(short = 'r')]
    pub remove: bool,
}

/// What was asked: build one (host, port, data directory) or remove it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Init { host: String, port: Option<i32>, datadir: Option<String> },
    Remove,
}

pub fn validate(args: &Args) -> Result<Request, ToolError> {
    match (args.remove, &args.host) {
        (true, Some(_)) => Err(ToolError::Usage("Options -r and -s are mutually exclusive".into())),
        (true, None) if args.port.is_some() || args.datadir.is_some() => {
            Err(ToolError::Usage("Options -P and -S are only valid with -s".into()))
        }
        (true, None) => Ok(Request::Remove),
        (false, None) => Err(ToolError::Usage("No action provided; use -s to add a standby or -r to remove it".into())),
        (false, Some(h)) => Ok(Request::Init { host: h.clone(), port: args.port, datadir: args.datadir.clone() }),
    }
}

/// The parameter lines Greenplum shows before it asks.
pub fn parameter_lines(coordinator: &Segment, host: &str, port: i32, datadir: &str) -> Vec<String> {
    let rule = "-----------------------------------------------------".to_string();
    vec![
        rule.clone(),
        "Greenplum standby coordinator initialization parameters".into(),
        rule.clone(),
        format!("Greenplum coordinator hostname               = {}", coordinator.hostname),
        format!("Greenplum coordinator data directory         = {}", coordinator.datadir),
        format!("Greenplum coordinator port                   = {}", coordinator.port),
        format!("Greenplum standby coordinator hostname       = {host}"),
        format!("Greenplum standby coordinator port           = {port}"),
        format!("Greenplum standby coordinator data directory = {datadir}"),
        "Greenplum update system catalog              = On".into(),
        rule,
    ]
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    args.common.main("gpinitstandby", |log| run(&args, log))
}

fn run(args: &Args, log: &Log) -> Result<u8, ToolError> {
    let request = validate(args)?;
    let mut db = Db::connect_as(args.common.conninfo.as_deref(), "gpinitstandby")?;
    let catalog = catalog::load(&mut db, log)?;
    let coordinator =
        catalog.iter().find(|s| s.is_coordinator()).cloned().ok_or_else(|| {
            ToolError::Refused("The coordinator is not registered in gp_segment_configuration".into())
        })?;
    let standby = catalog.iter().find(|s| s.is_standby());
    match request {
        Request::Remove => {
            let Some(s) = standby else {
                return Err(ToolError::Refused("No standby coordinator is configured".into()));
            };
            log.info(&format!("Removing standby coordinator from host {} data directory {}", s.hostname, s.datadir));
            if !args.common.no_prompt
                && !prompt::ask(None, "Do you want to continue with deleting the standby coordinator?", false)?
            {
                return Ok(exit::ABORTED);
            }
            db.query(log, "SELECT gp_remove_standby()", &[])?;
            db.relay_notices(log);
            log.info("Successfully removed standby coordinator");
            Ok(exit::OK)
        }
        Request::Init { host, port, datadir } => {
            log.info("Validating environment and parameters for standby initialization...");
            if let Some(s) = standby {
                return Err(ToolError::Refused(format!(
                    "Standby coordinator already configured on host {} port {}; remove it first with gpinitstandby -r",
                    s.hostname, s.port
                )));
            }
            let port = port.unwrap_or(coordinator.port);
            let datadir = datadir.unwrap_or_else(|| coordinator.datadir.clone());
            for line in parameter_lines(&coordinator, &host, port, &datadir) {
                log.info(&line);
            }
            if !args.common.no_prompt
                && !prompt::ask(None, "Do you want to continue with standby coordinator initialization?", false)?
            {
                return Ok(exit::ABORTED);
            }
            let signals = Signals::install()?;
            log.info("Adding standby coordinator to catalog...");
            let rows = db.query(log, "SELECT gp_init_standby($1, $2, $3)", &[&host, &port, &datadir])?;
            db.relay_notices(log);
            let id: i64 = rows.first().map(|r| r.get(0)).ok_or_else(|| ToolError::Sql("no job id returned".into()))?;
            log.info("Database catalog updated successfully.");
            log.info(&format!("Copying the coordinator to {host}:{datadir} (recovery job {id})"));
            let progress = if log.quiet() { Progress::Off } else { Progress::Lines };
            let watched = watch::watch(&mut db, log, &[id], progress, &signals)?;
            let outcome = jobs::recovery_summary(&watched.jobs, watched.interrupted);
            if outcome.exit == exit::OK {
                log.info(&format!("Successfully created standby coordinator on {host}"));
            } else {
                log.lines(&outcome.lines);
                log.error(&format!(
                    "Failed to create standby coordinator on {host}; gpinitstandby -r removes its entry"
                ));
            }
            Ok(outcome.exit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("gpinitstandby").chain(a.iter().copied())).unwrap()
    }

    #[test]
    fn flags_are_checked_as_greenplum_checks_them() {
        assert_eq!(
            validate(&args(&["-s", "smdw", "-P", "6432"])).unwrap(),
            Request::Init { host: "smdw".into(), port: Some(6432), datadir: None }
        );
        assert_eq!(validate(&args(&["-r", "-a"])).unwrap(), Request::Remove);
        assert!(validate(&args(&["-r", "-s", "x"])).unwrap_err().to_string().contains("mutually exclusive"));
        assert!(validate(&args(&["-r", "-P", "1"])).unwrap_err().to_string().contains("only valid with -s"));
        assert!(validate(&args(&[])).unwrap_err().to_string().contains("No action"));
    }
}
