//! Probes segments over the network: one connection per segment, all at
//! once, each bounded by a timeout, so one hung or unreachable segment never
//! delays the answer for the others.
//!
//! The futures run on a current-thread tokio runtime driven by the backend's
//! main thread; Postgres is never called from inside it. Host names are
//! resolved on tokio's blocking pool, so every thread the runtime starts
//! must have all signals blocked (a Postgres signal handler running on a
//! foreign thread aborts the backend): signals stay blocked for the whole of
//! `block_on`, which threads started inside it inherit.

use std::collections::HashMap;
use std::time::Duration;

use gp_recovery_core::probe::{InstanceProbe, ProbeResult, Replication, WalReceiver};
use gp_recovery_core::segment::Segment;
use once_cell::sync::OnceCell;
use tokio::runtime::Runtime;

use crate::error::internal;

static RUNTIME: OnceCell<Runtime> = OnceCell::new();

/// Blocks every signal on this thread until dropped.
struct SignalsBlocked(libc::sigset_t);

impl SignalsBlocked {
    fn new() -> Self {
        // SAFETY: sigset_t is plain data; the calls only read and write the
        // sets passed to them.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            SignalsBlocked(old)
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in new().
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut());
        }
    }
}

/// Runs a future to completion on the backend's runtime.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let _blocked = SignalsBlocked::new();
    let runtime = RUNTIME
        .get_or_try_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build())
        .unwrap_or_else(|e| internal("could not start the probe runtime", e));
    runtime.block_on(future)
}

/// The OS user this server runs as; segments are reached as the role of the
/// same name, as Greenplum uses gpadmin everywhere.
pub fn server_user() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or NULL; the
    // name is copied out at once on this (the only Postgres) thread.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() {
            return "postgres".into();
        }
        std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned()
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => gp_recovery_core::error::error_chain(e),
    }
}

const IDENTITY_SQL: &str = "SELECT pg_is_in_recovery(), current_setting('data_directory'), \
     (SELECT system_identifier::text FROM pg_control_system())";
const WAL_RECEIVER_SQL: &str = "SELECT status, sender_host, sender_port FROM pg_stat_wal_receiver";
const REPLICATION_SQL: &str = "SELECT application_name, state, sync_state, \
     sent_lsn::text, flush_lsn::text, replay_lsn::text, \
     pg_wal_lsn_diff(pg_current_wal_flush_lsn(), sent_lsn)::bigint, \
     pg_wal_lsn_diff(pg_current_wal_flush_lsn(), replay_lsn)::bigint \
     FROM pg_stat_replication ORDER BY pid";

async fn query_instance(config: tokio_postgres::Config) -> Result<InstanceProbe, tokio_postgres::Error> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    // The connection ends by itself when the client is dropped.
    tokio::spawn(connection);
    let row = client.query_one(IDENTITY_SQL, &[]).await?;
    let in_recovery: bool = row.try_get(0)?;
    let wal_receiver = client
        .query_opt(WAL_RECEIVER_SQL, &[])
        .await?
        .map(|r| -> Result<WalReceiver, tokio_postgres::Error> {
            Ok(WalReceiver {
                status: r.try_get::<_, Option<String>>(0)?.unwrap_or_default(),
                sender_host: r.try_get(1)?,
                sender_port: r.try_get(2)?,
            })
        })
        .transpose()?;
    let replication = if in_recovery {
        Vec::new()
    } else {
        client
            .query(REPLICATION_SQL, &[])
            .await?
            .iter()
            .map(|r| {
                Ok(Replication {
                    application_name: r.try_get::<_, Option<String>>(0)?.unwrap_or_default(),
                    state: r.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
                    sync_state: r.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
                    sent_lsn: r.try_get(3)?,
                    flush_lsn: r.try_get(4)?,
                    replay_lsn: r.try_get(5)?,
                    wal_sync_remaining_bytes: r.try_get(6)?,
                    bytes_behind: r.try_get(7)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()?
    };
    Ok(InstanceProbe {
        in_recovery,
        data_directory: row.try_get(1)?,
        system_identifier: row.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
        wal_receiver,
        replication,
    })
}

async fn probe_one(segment: Segment, user: String, timeout: Duration) -> ProbeResult {
    let port = u16::try_from(segment.port).map_err(|_| format!("invalid port {}", segment.port))?;
    let mut config = tokio_postgres::Config::new();
    config
        .host(&segment.address)
        .port(port)
        .user(&user)
        .dbname("postgres")
        .application_name("gp_recovery")
        .connect_timeout(timeout);
    match tokio::time::timeout(timeout, query_instance(config)).await {
        Ok(result) => result.map_err(|e| describe(&e)),
        Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
    }
}

/// Probes every given segment at once; the map is keyed by dbid.
pub fn probe_all(segments: &[Segment]) -> HashMap<i16, ProbeResult> {
    let secs = u64::try_from(crate::gucs::SEGMENT_CONNECT_TIMEOUT.get()).unwrap_or(5);
    let timeout = Duration::from_secs(secs.max(1));
    let user = server_user();
    block_on(async {
        let handles: Vec<_> = segments
            .iter()
            .map(|s| (s.dbid, tokio::spawn(probe_one(s.clone(), user.clone(), timeout))))
            .collect();
        let mut results = HashMap::new();
        for (dbid, handle) in handles {
            let result = handle.await.unwrap_or_else(|e| Err(format!("probe failed: {e}")));
            results.insert(dbid, result);
        }
        results
    })
}
