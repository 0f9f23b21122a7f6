//! Connections from the coordinator to segments: status probes (one
//! connection per segment, all at once, each bounded by a timeout, so one
//! hung or unreachable segment never delays the others) and the operations
//! the fault tolerance service performs on segments.
//!
//! The futures run on a current-thread tokio runtime driven by the backend's
//! main thread, and Postgres is never called from inside them. tokio resolves
//! host names on its blocking pool; that pool is limited to one thread,
//! started once with every signal blocked and kept for the life of the
//! process, because a Postgres signal handler running on a foreign thread
//! aborts the backend. The main thread keeps its signals, so a background
//! worker still sees SIGTERM while it waits on segments.

use std::collections::HashMap;
use std::time::Duration;

use gp_recovery_core::coordinator;
use gp_recovery_core::fts::PrimaryHealth;
use gp_recovery_core::identity::{ByName, HostNames, Member};
use gp_recovery_core::probe::{
    os_user_name, InstanceProbe, ProbeResult, Replication, Tablespace, WalReceiver, MIRROR_APPLICATION_NAME, SLOT_NAME,
};
use gp_recovery_core::segment::Segment;
use once_cell::sync::OnceCell;
use tokio::runtime::Runtime;

use crate::error::internal;

static RUNTIME: OnceCell<Runtime> = OnceCell::new();
static TASKS: OnceCell<Runtime> = OnceCell::new();

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

fn build_runtime() -> std::io::Result<Runtime> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        // Kept for the life of the process, so it is never started again
        // from a thread whose signals are not blocked.
        .thread_keep_alive(Duration::from_secs(100 * 365 * 24 * 3600))
        .build()?;
    // The blocking thread inherits the mask of the thread that spawns it.
    let _blocked = SignalsBlocked::new();
    runtime.block_on(async { tokio::task::spawn_blocking(|| ()).await })?;
    Ok(runtime)
}

/// The backend's runtime, started on first use.
pub fn runtime() -> &'static Runtime {
    RUNTIME.get_or_try_init(build_runtime).unwrap_or_else(|e| internal("could not start the segment client runtime", e))
}

/// The jobs worker's runtime: two threads of its own run its calls to
/// segments while the worker's main thread only polls them, so a slow
/// segment never holds up the loop. The threads start with every signal
/// blocked (they inherit the mask), and Postgres is never called from them.
fn tasks_runtime() -> &'static Runtime {
    TASKS
        .get_or_try_init(|| {
            let _blocked = SignalsBlocked::new();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .max_blocking_threads(2)
                .thread_keep_alive(Duration::from_secs(100 * 365 * 24 * 3600))
                .enable_all()
                .build()
        })
        .unwrap_or_else(|e| internal("could not start the jobs runtime", e))
}

/// A call to segments running on the jobs runtime, polled by the loop.
pub struct Task<T>(Option<tokio::task::JoinHandle<T>>);

impl<T: Send + 'static> Task<T> {
    pub fn spawn(future: impl std::future::Future<Output = T> + Send + 'static) -> Task<T> {
        Task(Some(tasks_runtime().spawn(async move {
            let out = future.await;
            // The loop polls it at once instead of at its next tick.
            crate::latch::wake_self();
            out
        })))
    }

    /// Its result once it has finished; None while it runs.
    pub fn poll(&mut self) -> Option<Result<T, String>> {
        if !self.0.as_ref()?.is_finished() {
            return None;
        }
        let handle = self.0.take()?;
        Some(tasks_runtime().block_on(handle).map_err(|e| format!("the task ended abnormally: {e}")))
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// Runs a future to completion on the backend's runtime; tasks spawned on
/// it make progress only while some block_on runs.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

/// The OS user this server runs as; segments are reached as the role of the
/// same name, as Greenplum uses gpadmin everywhere.
pub fn server_user() -> String {
    os_user_name().unwrap_or_else(|| "postgres".into())
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => gp_recovery_core::error::error_chain(e),
    }
}

/// The application_name of the fault tolerance service's long-lived
/// connection to each primary, as pg_stat_activity shows it.
pub const WATCH_APPLICATION_NAME: &str = "gp_recovery fts watch";

/// How to reach one segment, with the timeout that bounds every call to it.
#[derive(Clone)]
pub struct Target {
    segment: Segment,
    user: String,
    timeout: Duration,
}

impl Target {
    pub fn new(segment: &Segment, timeout: Duration) -> Target {
        Target { segment: segment.clone(), user: server_user(), timeout }
    }

    fn config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.segment.address)
            .port(u16::try_from(self.segment.port).unwrap_or(0))
            .user(&self.user)
            .dbname("postgres")
            .application_name("gp_recovery")
            .connect_timeout(self.timeout);
        config
    }

    async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.config().connect(tokio_postgres::NoTls).await?;
        // The connection ends by itself when the client is dropped.
        tokio::spawn(connection);
        Ok(client)
    }

    /// Runs `work` on a fresh connection, bounded by the timeout.
    async fn with_client<T, F, Fut>(&self, work: F) -> Result<T, String>
    where
        F: FnOnce(tokio_postgres::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    {
        self.with_client_coded(work).await.map_err(|(message, _)| message)
    }

    /// As with_client, and a failure keeps the SQLSTATE the server sent, if
    /// any: the fault tolerance service tells a refusal from a death by it.
    async fn with_client_coded<T, F, Fut>(&self, work: F) -> Result<T, (String, Option<String>)>
    where
        F: FnOnce(tokio_postgres::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let attempt = async {
            let client = self.connect().await?;
            work(client).await
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result.map_err(|e| (describe(&e), e.as_db_error().map(|db| db.code().code().to_string()))),
            Err(_) => Err((format!("no answer within {} s", self.timeout.as_secs()), None)),
        }
    }

    /// What the segment reports about itself and its replication.
    pub async fn probe(&self) -> ProbeResult {
        self.with_client(|client| async move { query_instance(&client).await }).await
    }

    /// Probes a primary up to 1 + `retries` times, `pause` apart, before it
    /// counts as failed; the last failure is classified (alive but refusing,
    /// starting up, or gone).
    pub async fn probe_primary(&self, retries: u32, pause: Duration) -> PrimaryHealth {
        let mut attempt = 0;
        loop {
            match self.with_client_coded(|client| async move { query_instance(&client).await }).await {
                Ok(p) => return PrimaryHealth::Alive(p),
                Err((e, code)) if attempt >= retries => return PrimaryHealth::from_failure(e, code.as_deref()),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Holds one idle connection to the segment until the server ends it.
    /// True when a connection was made and then lost (the server died or
    /// ended the session), false when none could be made. A killed
    /// postmaster's backends exit at once, so the loss is seen within
    /// milliseconds instead of at the next probe round.
    pub async fn watch(&self) -> bool {
        let mut config = self.config();
        config.application_name(WATCH_APPLICATION_NAME);
        let connected = tokio::time::timeout(self.timeout, config.connect(tokio_postgres::NoTls)).await;
        let Ok(Ok((_client, connection))) = connected else {
            return false;
        };
        // Ends with an error or end of file when the server goes away; the
        // client stays alive meanwhile, so it never ends on our side.
        let _ = connection.await;
        true
    }

    /// Promotes a standby of the pair (`system_identifier`; another
    /// database system's standby at this host and port is refused) and
    /// waits until it accepts writes. A server that is no longer in recovery
    /// is left alone, so repeating this is harmless.
    pub async fn promote(&self, system_identifier: Option<&str>) -> Result<(), String> {
        let expected = system_identifier.unwrap_or_default().to_string();
        let location = self.segment.location();
        let refused = self
            .with_client(|client| async move {
                let found: String =
                    client.query_one("SELECT system_identifier::text FROM pg_catalog.pg_control_system()", &[]).await?.try_get(0)?;
                Ok((found != expected || expected.is_empty()).then(|| {
                    format!(
                        "the server at {location} has database system identifier {found}, not the pair's {}: not promoting it",
                        if expected.is_empty() { "(none recorded)" } else { expected.as_str() }
                    )
                }))
            })
            .await?;
        if let Some(refusal) = refused {
            return Err(refusal);
        }
        self.with_client(|client| async move {
            // pg_promote(wait => true) looks every 100 ms; polling here
            // every 10 ms lets commits start sooner. with_client's timeout
            // bounds the wait.
            let mut requested = false;
            while client.query_one("SELECT pg_is_in_recovery()", &[]).await?.try_get::<_, bool>(0)? {
                if !requested {
                    client.execute("SELECT pg_promote(false)", &[]).await?;
                    requested = true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(())
        })
        .await
    }

    async fn set_sync_standby_names(client: &tokio_postgres::Client, value: &str) -> Result<(), tokio_postgres::Error> {
        // ALTER SYSTEM takes no parameters; the value is a fixed name or ''.
        client.batch_execute(&format!("ALTER SYSTEM SET synchronous_standby_names = '{value}'")).await?;
        client.batch_execute("SELECT pg_reload_conf()").await
    }

    /// Turns synchronous replication off: commits waiting for the mirror complete.
    pub async fn disable_sync_rep(&self) -> Result<(), String> {
        self.with_client(|client| async move { Self::set_sync_standby_names(&client, "").await }).await
    }

    /// Turns synchronous replication to the mirror on, waits until the
    /// mirror's stream is 'sync', and returns the WAL flush position at that
    /// moment: every commit acknowledged before it may still be missing on
    /// the mirror until the mirror has flushed this far.
    pub async fn enable_sync_rep(&self) -> Result<u64, String> {
        self.with_client(|client| async move {
            Self::set_sync_standby_names(&client, MIRROR_APPLICATION_NAME).await?;
            loop {
                let row = client
                    .query_opt(
                        "SELECT pg_current_wal_flush_lsn()::text FROM pg_stat_replication r \
                         JOIN pg_replication_slots s ON s.active_pid = r.pid AND s.slot_type = 'physical' \
                         WHERE r.application_name = $1 AND s.slot_name = $2 AND r.sync_state = 'sync'",
                        &[&MIRROR_APPLICATION_NAME, &SLOT_NAME],
                    )
                    .await?;
                if let Some(row) = row {
                    let lsn: String = row.try_get(0)?;
                    return Ok(gp_recovery_core::fts::parse_lsn(&lsn).unwrap_or(u64::MAX));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Creates the replication slot the content's mirror streams from, if
    /// missing, reserving WAL from now on.
    pub async fn create_slot(&self) -> Result<(), String> {
        self.with_client(|client| async move {
            // A slot whose WAL is gone (max_slot_wal_keep_size) cannot serve
            // a mirror; any other is kept: since the failover it holds the
            // WAL the old primary needs, also when an earlier attempt failed.
            client
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE slot_name = $1 AND NOT active AND wal_status = 'lost'",
                    &[&SLOT_NAME],
                )
                .await?;
            client
                .execute(
                    "SELECT pg_create_physical_replication_slot($1, true) \
                     WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                    &[&SLOT_NAME],
                )
                .await
                .map(|_| ())
        })
        .await
    }

    /// Drops the slot a stopped mirror streamed from, waiting up to `wait`
    /// for its walsender to end.
    pub async fn drop_slot(&self, wait: Duration) -> Result<(), String> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let active = self
                .with_client(|client| async move {
                    let row = client
                        .query_one(
                            "SELECT count(*) FILTER (WHERE active), \
                                    count(pg_drop_replication_slot(slot_name)) FILTER (WHERE NOT active) \
                               FROM pg_replication_slots WHERE slot_name = $1",
                            &[&SLOT_NAME],
                        )
                        .await?;
                    Ok(row.get::<_, i64>(0) > 0)
                })
                .await?;
            if !active {
                return Ok(());
            }
            if tokio::time::Instant::now() >= until {
                return Err(format!("slot {SLOT_NAME} is still in use after {} s", wait.as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Raises the coordinator epoch the server keeps to `epoch`, unless it
    /// keeps a higher one already.
    pub async fn raise_epoch(&self, epoch: i64) -> Result<(), String> {
        self.with_client(|client| async move {
            let kept: i64 = client.query_one(coordinator::EPOCH_SQL, &[]).await?.try_get(0)?;
            if kept < epoch {
                client.batch_execute(&coordinator::raise_epoch_sql(epoch)).await?;
            }
            Ok(())
        })
        .await
    }

    /// Immediate shutdown of a writable server through its own connection
    /// (it may be on any host): SIGQUIT to the postmaster named in its
    /// postmaster.pid, but only when it is `member` (the pair's database
    /// system identifier, the row's data directory), asked in the same
    /// session. A server in recovery is left alone. The connection dies with
    /// the server, so losing it counts as done; the next probe round checks.
    pub async fn fence(&self, member: &Member<'_>) -> Result<(), String> {
        let (sysid, datadir) = (member.system_identifier.to_string(), member.datadir.to_string());
        let refused = self
            .with_client(|client| async move {
                let row = client
                    .query_one(
                        "SELECT pg_is_in_recovery(), split_part(pg_read_file('postmaster.pid'), E'\\n', 1), \
                                (SELECT system_identifier::text FROM pg_catalog.pg_control_system()), \
                                current_setting('data_directory')",
                        &[],
                    )
                    .await?;
                if row.try_get::<_, bool>(0)? {
                    return Ok(None);
                }
                let expected = Member { system_identifier: &sysid, datadir: &datadir };
                if let Some(why) = expected.refusal(&row.try_get::<_, String>(2)?, &row.try_get::<_, String>(3)?) {
                    return Ok(Some(format!("not fencing it: {why}")));
                }
                let pid: String = row.try_get(1)?;
                let Ok(pid) = pid.trim().parse::<u32>() else {
                    return Ok(Some(format!("its postmaster.pid starts with {pid:?}, not a pid")));
                };
                match client.batch_execute(&format!("COPY (SELECT 1) TO PROGRAM 'kill -QUIT {pid}'")).await {
                    Ok(()) => Ok(None),
                    // Our backend gets the SIGQUIT too: the session ends with
                    // an admin or crash shutdown error, or just goes away.
                    Err(e) if e.is_closed() || e.as_db_error().is_none_or(|d| d.code().code().starts_with("57P")) => {
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            })
            .await?;
        refused.map_or(Ok(()), Err)
    }

    /// How far a standby has replayed.
    pub async fn replay_lsn(&self) -> Result<u64, String> {
        let lsn: Option<String> = self
            .with_client(|client| async move {
                client.query_one("SELECT pg_last_wal_replay_lsn()::text", &[]).await?.try_get(0)
            })
            .await?;
        Ok(lsn.as_deref().and_then(gp_recovery_core::fts::parse_lsn).unwrap_or(0))
    }

    /// What the segment's databases hold, in bytes: what a copy of it moves.
    pub async fn database_bytes(&self) -> Result<i64, String> {
        self.with_client(|client| async move {
            client
                .query_one(
                    "SELECT coalesce(sum(pg_catalog.pg_database_size(oid)), 0)::bigint FROM pg_catalog.pg_database",
                    &[],
                )
                .await?
                .try_get(0)
        })
        .await
    }

    /// A CHECKPOINT, so the source's control file shows its current timeline
    /// (pg_rewind reads it).
    pub async fn checkpoint(&self) -> Result<(), String> {
        self.with_client(|client| async move { client.batch_execute("CHECKPOINT").await }).await
    }

    /// Opens a session and starts a non-exclusive base backup in it; the
    /// backup lasts as long as the returned session.
    pub async fn backup_start(&self, label: &str) -> Result<tokio_postgres::Client, String> {
        let label = label.to_string();
        self.with_client(|client| async move {
            client.execute("SELECT pg_backup_start($1, true)", &[&label]).await?;
            Ok(client)
        })
        .await
    }

    /// Ends the backup started in `session`; returns the backup_label and
    /// tablespace_map contents the copy needs.
    pub async fn backup_stop(&self, session: &tokio_postgres::Client) -> Result<(String, String), String> {
        let stop = async {
            let row =
                session.query_one("SELECT labelfile, coalesce(spcmapfile, '') FROM pg_backup_stop(false)", &[]).await?;
            Ok::<_, tokio_postgres::Error>((row.try_get(0)?, row.try_get(1)?))
        };
        match tokio::time::timeout(self.timeout, stop).await {
            Ok(r) => r.map_err(|e| describe(&e)),
            Err(_) => Err(format!("pg_backup_stop did not answer within {} s", self.timeout.as_secs())),
        }
    }
}

static IDENTITY_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT pg_is_in_recovery(), current_setting('data_directory'), \
         (SELECT system_identifier::text FROM pg_control_system()), \
         current_setting('synchronous_standby_names'), \
         ARRAY(SELECT spcname::text FROM pg_tablespace WHERE pg_tablespace_location(oid) LIKE '/%' ORDER BY oid), \
         ARRAY(SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE pg_tablespace_location(oid) LIKE '/%' ORDER BY oid), \
         current_setting('hba_file'), ({})",
        coordinator::EPOCH_SQL
    )
});
const STANDBY_SQL: &str = "SELECT pg_get_wal_replay_pause_state() <> 'not paused', \
     (SELECT setting::bigint FROM pg_settings WHERE name = 'recovery_min_apply_delay')";
const WAL_RECEIVER_SQL: &str = "SELECT status, sender_host, sender_port FROM pg_stat_wal_receiver";
/// Each walsender with the physical slot it streams from, if any, so that
/// only the mirror on the content's slot counts as the mirror.
const REPLICATION_SQL: &str = "SELECT r.application_name, r.state, r.sync_state, \
     r.sent_lsn::text, r.flush_lsn::text, r.replay_lsn::text, \
     pg_wal_lsn_diff(pg_current_wal_flush_lsn(), r.sent_lsn)::bigint, \
     pg_wal_lsn_diff(pg_current_wal_flush_lsn(), r.replay_lsn)::bigint, \
     s.slot_name::text, \
     pg_wal_lsn_diff(pg_current_wal_flush_lsn(), r.flush_lsn)::bigint \
     FROM pg_stat_replication r \
     LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid AND s.slot_type = 'physical' \
     ORDER BY r.pid";

async fn query_instance(client: &tokio_postgres::Client) -> Result<InstanceProbe, tokio_postgres::Error> {
    let row = client.query_one(IDENTITY_SQL.as_str(), &[]).await?;
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
    // A standby that would not apply WAL promptly must not be switched over to.
    let (replay_paused, min_apply_delay_ms) = if in_recovery {
        let r = client.query_one(STANDBY_SQL, &[]).await?;
        (r.try_get(0)?, r.try_get(1)?)
    } else {
        (false, 0)
    };
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
                    slot_name: r.try_get(8)?,
                    unflushed_bytes: r.try_get(9)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()?
    };
    Ok(InstanceProbe {
        in_recovery,
        data_directory: row.try_get(1)?,
        system_identifier: row.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
        synchronous_standby_names: row.try_get(3)?,
        wal_receiver,
        replication,
        outside_tablespaces: row
            .try_get::<_, Vec<String>>(4)?
            .into_iter()
            .zip(row.try_get::<_, Vec<String>>(5)?)
            .map(|(name, location)| Tablespace { name, location })
            .collect(),
        hba_file: row.try_get(6)?,
        replay_paused,
        min_apply_delay_ms,
        coordinator_epoch: row.try_get(7)?,
    })
}

/// The timeout of status probes made from SQL (the views, gp_add_segment).
fn status_timeout() -> Duration {
    let secs = u64::try_from(crate::gucs::SEGMENT_CONNECT_TIMEOUT.get()).unwrap_or(5);
    Duration::from_secs(secs.max(1))
}

/// Makes the same call (`what`, for its error) to every given segment at
/// once, each bounded by `timeout`; the map is keyed by dbid.
pub fn call_all<T, Fut>(
    segments: &[Segment],
    timeout: Duration,
    what: &str,
    call: impl Fn(Target) -> Fut,
) -> HashMap<i16, Result<T, String>>
where
    T: Send + 'static,
    Fut: std::future::Future<Output = Result<T, String>> + Send + 'static,
{
    block_on(async {
        let handles: Vec<_> = segments.iter().map(|s| (s.dbid, tokio::spawn(call(Target::new(s, timeout))))).collect();
        let mut results = HashMap::new();
        for (dbid, handle) in handles {
            results.insert(dbid, handle.await.unwrap_or_else(|e| Err(format!("{what} failed: {e}"))));
        }
        results
    })
}

/// Host names compared by what they reach, for the SQL functions: by name
/// ([`ByName`]: any case, the coordinator's own names) or by a common
/// address. Every name is resolved at once, all within 2 s; one that does
/// not resolve in time is compared by name only.
pub struct Resolved {
    own_name: String,
    local_hosts: String,
    addresses: HashMap<String, Vec<std::net::IpAddr>>,
}

impl HostNames for Resolved {
    fn same_host(&self, a: &str, b: &str) -> bool {
        let by_name = ByName { own_name: &self.own_name, local_hosts: &self.local_hosts };
        let of = |h: &str| self.addresses.get(&h.trim().to_ascii_lowercase());
        by_name.same_host(a, b) || of(a).zip(of(b)).is_some_and(|(x, y)| x.iter().any(|ip| y.contains(ip)))
    }
}

/// [`Resolved`] for every host name and address of the catalog and `more`.
pub fn resolving_hosts(catalog: &[Segment], more: &[&str]) -> Resolved {
    let mut names: Vec<String> = catalog
        .iter()
        .flat_map(|s| [s.hostname.as_str(), s.address.as_str()])
        .chain(more.iter().copied())
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();
    let addresses = block_on(async move {
        let lookups: Vec<_> = names
            .into_iter()
            .map(|name| {
                tokio::spawn(async move {
                    let found =
                        tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host((name.as_str(), 0)))
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .map(|addrs| addrs.map(|a| a.ip()).collect::<Vec<_>>());
                    (name, found)
                })
            })
            .collect();
        let mut addresses = HashMap::new();
        for lookup in lookups {
            if let Ok((name, Some(found))) = lookup.await {
                addresses.insert(name, found);
            }
        }
        addresses
    });
    Resolved {
        own_name: gp_recovery_core::identity::own_host_name(),
        local_hosts: crate::gucs::local_hosts(),
        addresses,
    }
}

/// Probes every given segment at once; the map is keyed by dbid.
pub fn probe_all(segments: &[Segment]) -> HashMap<i16, ProbeResult> {
    call_all(segments, status_timeout(), "probe", |t| async move { t.probe().await })
}
