//! gpactivatestandby over gp_activate_standby(): run against the standby
//! coordinator; promotes it and waits until its fault tolerance service has
//! recorded it as the coordinator.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::conn::Db;
use crate::log::Log;
use crate::{exit, prompt, ToolError};

#[derive(Parser, Debug)]
#[command(
    name = "gpactivatestandby",
    version,
    about = "Activates the standby coordinator as the coordinator of the cluster",
    after_help = "Calls gp_activate_standby() on the standby coordinator (PGHOST/PGPORT or -d name the standby) and \
                  waits until it is the coordinator in gp_segment_configuration. Exit codes: 0 done, 1 not recorded \
                  in time, 2 bad arguments or refused, 4 answered no.",
    disable_help_flag = true
)]
pub struct Args {
    #[command(flatten)]
    pub common: crate::CommonArgs,
    /// activate even if the old coordinator still answers (it is fenced)
    #[arg(short = 'f')]
    pub force: bool,
}

/// How long the standby's service may take to record the activation.
const RECORDED_WITHIN: Duration = Duration::from_secs(60);

pub fn main() -> ExitCode {
    let args = Args::parse();
    args.common.main("gpactivatestandby", |log| run(&args, log))
}

fn run(args: &Args, log: &Log) -> Result<u8, ToolError> {
    let mut db = Db::connect_as(args.common.conninfo.as_deref(), "gpactivatestandby")?;
    log.info("Standby data directory and settings are read from the standby's catalog");
    if !args.common.no_prompt
        && !prompt::ask(None, "Do you want to continue with standby coordinator activation?", false)?
    {
        return Ok(exit::ABORTED);
    }
    if args.force {
        log.warn("Forcing the activation: an old coordinator that still answers is fenced");
    }
    let said: String =
        db.query(log, "SELECT gp_activate_standby($1)", &[&args.force])?.first().map(|r| r.get(0)).unwrap_or_default();
    db.relay_notices(log);
    log.info(&said);
    log.info("Waiting for the standby's fault tolerance service to record it as the coordinator...");
    let until = Instant::now() + RECORDED_WITHIN;
    loop {
        let rows = db.query(
            log,
            "SELECT dbid FROM gp_segment_configuration WHERE content = -1 AND role = 'p' \
               AND port = current_setting('port')::int AND datadir = current_setting('data_directory')",
            &[],
        )?;
        if let Some(dbid) = rows.first().map(|r| r.get::<_, i16>(0)) {
            log.info(&format!("The activation of the standby coordinator (dbid {dbid}) has completed successfully"));
            log.info("The activated coordinator has no standby: add one with gpinitstandby");
            return Ok(exit::OK);
        }
        if Instant::now() > until {
            log.error(
                "The standby was promoted, but its catalog does not show it as the coordinator yet; see its server log",
            );
            return Ok(exit::FAILED);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
