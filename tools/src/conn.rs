//! The connection to the coordinator: libpq's environment (PGHOST, PGPORT,
//! PGUSER, PGDATABASE, PGPASSWORD, PGAPPNAME, PGCONNECT_TIMEOUT) or `-d
//! CONNINFO` (a `key=value` string or a `postgresql://` URL, whose settings
//! win over the environment's), and the server's NOTICEs and WARNINGs,
//! which carry what the functions say about skipped segments.

use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use postgres::config::Host;
use postgres::types::ToSql;
use postgres::{Client, Config, NoTls, Row};

use crate::log::Log;
use crate::redact::{redact_conninfo, redact_host, redact_reason};
use crate::ToolError;

/// Where libpq looks when no host is given, on Debian.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// The connection settings: `conninfo` first, then the environment for
/// what it leaves out, then libpq's defaults (the socket directory, the OS
/// user).
pub fn config(
    conninfo: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    program: &str,
) -> Result<Config, ToolError> {
    let mut c: Config = match conninfo {
        Some(s) => s.parse().map_err(|e| invalid_conninfo(s, &e))?,
        None => Config::new(),
    };
    if c.get_hosts().is_empty() {
        let hosts = env("PGHOST").filter(|h| !h.is_empty()).unwrap_or_else(|| DEFAULT_SOCKET_DIR.into());
        for h in hosts.split(',') {
            c.host(h);
        }
    }
    if c.get_ports().is_empty() {
        if let Some(ports) = env("PGPORT").filter(|p| !p.is_empty()) {
            for p in ports.split(',') {
                let port = p.trim().parse().map_err(|_| ToolError::Usage(format!("invalid PGPORT '{ports}'")))?;
                c.port(port);
            }
        }
    }
    if c.get_user().is_none() {
        let user =
            env("PGUSER").or_else(|| env("USER")).or_else(|| env("LOGNAME")).unwrap_or_else(|| "postgres".into());
        c.user(&user);
    }
    if c.get_dbname().is_none() {
        if let Some(db) = env("PGDATABASE").filter(|d| !d.is_empty()) {
            c.dbname(&db);
        }
    }
    if c.get_password().is_none() {
        if let Some(pw) = env("PGPASSWORD") {
            c.password(pw);
        }
    }
    if c.get_application_name().is_none() {
        c.application_name(&env("PGAPPNAME").unwrap_or_else(|| program.into()));
    }
    if c.get_connect_timeout().is_none() {
        if let Some(t) = env("PGCONNECT_TIMEOUT").and_then(|t| t.parse::<u64>().ok()).filter(|t| *t > 0) {
            c.connect_timeout(Duration::from_secs(t));
        }
    }
    Ok(c)
}

/// -d refused: the string with its passwords masked, and the library's
/// reason (its cause: the error itself only says "invalid connection
/// string") with the pieces of input it quotes masked too.
fn invalid_conninfo(conninfo: &str, e: &postgres::Error) -> ToolError {
    let shown = redact_conninfo(conninfo);
    let reason = std::error::Error::source(e).map_or_else(|| e.to_string(), |c| c.to_string());
    ToolError::Usage(format!("invalid connection string -d '{shown}': {}", redact_reason(&reason, &shown)))
}

/// "host=... port=..." for messages.
pub fn describe(c: &Config) -> String {
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => redact_host(name),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = c.get_ports().iter().map(u16::to_string).collect();
    format!("host={} port={}", hosts.join(","), if ports.is_empty() { "5432".into() } else { ports.join(",") })
}

/// A NOTICE, WARNING or INFO the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub severity: String,
    pub message: String,
}

pub struct Db {
    client: Client,
    notices: Receiver<Notice>,
}

impl Db {
    /// The coordinator, as `-d CONNINFO` and the libpq environment say.
    pub fn connect_as(conninfo: Option<&str>, program: &str) -> Result<Db, ToolError> {
        let env = |k: &str| std::env::var(k).ok();
        Db::connect(config(conninfo, &env, program)?)
    }

    pub fn connect(mut config: Config) -> Result<Db, ToolError> {
        let (tx, rx) = channel();
        config.notice_callback(move |n| {
            // The receiver lives as long as the client that calls this.
            let _ = tx.send(Notice { severity: n.severity().to_string(), message: n.message().to_string() });
        });
        let client = config
            .connect(NoTls)
            .map_err(|e| ToolError::Connect(format!("{} ({})", message(&e), describe(&config))))?;
        Ok(Db { client, notices: rx })
    }

    /// Runs one statement; -v shows it.
    pub fn query(&mut self, log: &Log, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, ToolError> {
        log.debug(&format!("SQL: {sql}"));
        self.client.query(sql, params).map_err(|e| ToolError::Sql(message(&e)))
    }

    /// The notices received so far.
    pub fn take_notices(&self) -> Vec<Notice> {
        self.notices.try_iter().collect()
    }

    /// Logs the notices received so far: WARNINGs as warnings, the rest as information.
    pub fn relay_notices(&self, log: &Log) -> Vec<Notice> {
        let notices = self.take_notices();
        for n in &notices {
            if n.severity == "WARNING" {
                log.warn(&n.message);
            } else {
                log.info(&n.message);
            }
        }
        notices
    }
}

/// The server's message (with its detail and hint), or the client's.
pub fn message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut m = db.message().to_string();
            if let Some(d) = db.detail() {
                m.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                m.push_str(&format!(" HINT: {h}"));
            }
            m
        }
        None => {
            // The client's own errors keep their cause (refused, timed out) one level down.
            let mut m = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                m.push_str(&format!(": {c}"));
                cause = c.source();
            }
            m
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_libpq_environment_is_read() {
        let env =
            env_of(&[("PGHOST", "127.0.0.1"), ("PGPORT", "7000"), ("PGUSER", "gpadmin"), ("PGDATABASE", "postgres")]);
        let c = config(None, &env, "gprecoverseg").unwrap();
        assert_eq!(c.get_hosts(), &[Host::Tcp("127.0.0.1".into())]);
        assert_eq!(c.get_ports(), &[7000]);
        assert_eq!(c.get_user(), Some("gpadmin"));
        assert_eq!(c.get_dbname(), Some("postgres"));
        assert_eq!(c.get_application_name(), Some("gprecoverseg"));
        assert_eq!(describe(&c), "host=127.0.0.1 port=7000");
    }

    #[test]
    fn a_conninfo_wins_over_the_environment() {
        let env = env_of(&[("PGHOST", "10.0.0.1"), ("PGPORT", "7000"), ("PGUSER", "gpadmin")]);
        let c = config(Some("host=cdw port=5433 dbname=gp"), &env, "gpstate").unwrap();
        assert_eq!(c.get_hosts(), &[Host::Tcp("cdw".into())]);
        assert_eq!(c.get_ports(), &[5433]);
        assert_eq!(c.get_dbname(), Some("gp"));
        assert_eq!(c.get_user(), Some("gpadmin"), "the environment fills in what the string leaves out");
        let url = config(Some("postgresql://admin@cdw:6000/postgres"), &env, "gpstate").unwrap();
        assert_eq!(url.get_user(), Some("admin"));
        assert_eq!(url.get_ports(), &[6000]);
    }

    #[test]
    fn libpq_defaults_when_nothing_is_set() {
        let env = env_of(&[("USER", "postgres")]);
        let c = config(None, &env, "gpstate").unwrap();
        assert_eq!(c.get_hosts(), &[Host::Unix(DEFAULT_SOCKET_DIR.into())]);
        assert!(c.get_ports().is_empty(), "5432, the library's default");
        assert_eq!(c.get_user(), Some("postgres"));
        assert_eq!(describe(&c), format!("host={DEFAULT_SOCKET_DIR} port=5432"));
    }

    #[test]
    fn bad_settings_are_usage_errors() {
        let env = env_of(&[("PGPORT", "seven")]);
        assert!(matches!(config(None, &env, "gpstate"), Err(ToolError::Usage(m)) if m.contains("PGPORT")));
        let env = env_of(&[]);
        assert!(matches!(config(Some("host=a nonsense"), &env, "gpstate"), Err(ToolError::Usage(_))));
    }

    /// The message a bad -d string gets, as gpstate prints it.
    fn refusal(conninfo: &str) -> String {
        match config(Some(conninfo), &env_of(&[]), "gpstate") {
            Err(e) => e.report("gpstate"),
            Ok(_) => panic!("{conninfo} was accepted"),
        }
    }

    #[test]
    fn a_bad_conninfo_s_message_shows_no_password() {
        for (conninfo, message) in [
            (
                "hots=cdw port=5432 password=S3cr3t user=u",
                "gpstate: error: invalid connection string -d 'hots=cdw port=5432 password=******** user=u': unknown \
                 option `hots`",
            ),
            (
                "host=cdw port=x password=S3cr3t",
                "gpstate: error: invalid connection string -d 'host=cdw port=x password=********': invalid value for \
                 option `port`",
            ),
            (
                "password='S3cr3t",
                "gpstate: error: invalid connection string -d 'password=********': unterminated quoted connection \
                 parameter value",
            ),
            (
                "password S3cr3t",
                "gpstate: error: invalid connection string -d 'password ********': unexpected character at byte 9: \
                 expected `=` but got `********`",
            ),
            (
                "postgresql://u:S3cr3t@cdw:5432/db?password=S3cr3t&sslmode=bogus",
                "gpstate: error: invalid connection string -d \
                 'postgresql://u:********@cdw:5432/db?password=********&sslmode=bogus': invalid value for option \
                 `sslmode`",
            ),
        ] {
            assert_eq!(refusal(conninfo), message);
        }
        // What the library quotes of its input, a misquoted password's pieces included.
        for conninfo in [
            "postgresql://cdw/db?password=S3&cr3t&sslmode=require",
            " postgresql://u:S3cr3t@cdw/db?password=x",
            "postgresql://u:S3cr3t@cdw:port/db",
            "postgresql://u:S3cr3t@[::1/db",
            "postgresql://u:S3cr3t@cdw/db?password=S3cr3t&nonsense",
            "postgresql://u:S3cr3t@cdw/%ff",
        ] {
            let m = refusal(conninfo);
            assert!(!m.contains("S3") && !m.contains("cr3t"), "{conninfo}: {m}");
        }
    }

    #[test]
    fn a_host_holding_a_password_s_piece_is_masked() {
        // tokio-postgres ends the userinfo at the first `@`: "ss@cdw" is its host.
        let c = config(Some("postgresql://u:p@ss@cdw:7000/db"), &env_of(&[]), "gpstate").unwrap();
        assert_eq!(c.get_hosts(), &[Host::Tcp("ss@cdw".into())]);
        assert_eq!(describe(&c), "host=********@cdw port=7000");
    }
}
