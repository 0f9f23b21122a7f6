//! Prometheus for a demo cluster: Debian's prometheus-postgres-exporter
//! with the repository's monitoring/queries.yaml, and one scrape of it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{io_err, server_user, Cluster, DemoError, Result, ADDRESS};

pub const EXPORTER: &str = "/usr/bin/prometheus-postgres-exporter";

/// The exporter on 127.0.0.1:`port`, reading gp_recovery_metrics on the
/// cluster's coordinator; stopped when dropped.
pub struct Exporter {
    child: Child,
    pub port: u16,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Exporter {
    pub fn start(cluster: &Cluster, port: u16) -> Result<Exporter> {
        let queries = Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring/queries.yaml");
        let child = Command::new(EXPORTER)
            .env(
                "DATA_SOURCE_NAME",
                format!(
                    "host={ADDRESS} port={} user={} dbname=postgres sslmode=disable",
                    cluster.coordinator.port,
                    server_user()
                ),
            )
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--extend.query-path={}", queries.display()))
            .args(["--disable-default-metrics", "--disable-settings-metrics"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_err(format!("could not run {EXPORTER} (scripts/setup.sh installs it)")))?;
        Ok(Exporter { child, port })
    }

    /// The gp_recovery series of one scrape of /metrics, as text lines.
    pub fn scrape(&self) -> Result<Vec<String>> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(io_err("could not reach the exporter"))?;
        s.set_read_timeout(Some(Duration::from_secs(30))).map_err(io_err("socket"))?;
        let mut body = String::new();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .and_then(|_| s.read_to_string(&mut body))
            .map_err(io_err("could not read /metrics"))?;
        if !body.starts_with("HTTP/1.") || !body.lines().next().is_some_and(|l| l.contains(" 200")) {
            return Err(DemoError::Usage(format!("the exporter answered {}", body.lines().next().unwrap_or(""))));
        }
        Ok(body.lines().filter(|l| l.starts_with("gp_recovery_")).map(str::to_string).collect())
    }
}
