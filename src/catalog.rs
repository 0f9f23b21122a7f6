//! The segment catalog over SPI. Every write to gp_segment_configuration
//! goes through this module and writes its gp_configuration_history row,
//! and that row's event for LISTEN gp_recovery, in the same transaction.

use gp_recovery_core::events::{History, SegmentEvent};
use gp_recovery_core::registration::{self, SegmentRequest};
use gp_recovery_core::segment::{Mode, Segment};
use pgrx::prelude::*;

use crate::error::{internal, required, OrRaise};
use crate::{segment_client, segment_host};

const CATALOG_SQL: &str = "SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(c) ORDER BY c.dbid), '[]'::jsonb) \
     FROM public.gp_segment_configuration c";

/// The whole catalog, ordered by dbid.
pub fn load() -> Vec<Segment> {
    parse_catalog(Spi::get_one::<pgrx::JsonB>(CATALOG_SQL).or_raise())
}

/// As load, without asking for a transaction id (pgrx's read/write
/// statements do), so that it works on a hot standby.
pub fn load_in_recovery() -> Vec<Segment> {
    parse_catalog(Spi::connect(|c| c.select(CATALOG_SQL, Some(1), &[])?.first().get_one::<pgrx::JsonB>()).or_raise())
}

fn parse_catalog(json: Option<pgrx::JsonB>) -> Vec<Segment> {
    let json = json.map(|j| j.0).unwrap_or_else(|| serde_json::Value::Array(Vec::new()));
    serde_json::from_value(json).unwrap_or_else(|e| internal("unexpected gp_segment_configuration row", e))
}

/// "char" values travel as i8 through pgrx.
pub fn letter(c: char) -> i8 {
    c as u8 as i8
}

/// Writes one gp_configuration_history row and sends its event, which is
/// delivered when the transaction commits (and never if it rolls back).
/// Like the job trigger in sql/catalog.sql, it drops the event when the
/// notification queue is 90% full: a full queue would fail the commit.
pub fn history(h: &History) {
    Spi::run_with_args(
        "WITH h AS (INSERT INTO public.gp_configuration_history (\"time\", dbid, \"desc\") \
                    VALUES (pg_catalog.now(), $1, $2) RETURNING \"time\", dbid, \"desc\") \
         SELECT pg_catalog.pg_notify('gp_recovery', pg_catalog.json_build_object( \
                  'event', $3, 'time', h.\"time\", 'dbid', h.dbid, 'content', $4, \
                  'role', $5, 'status', $6, 'mode', $7, 'desc', h.\"desc\")::text) \
           FROM h WHERE pg_catalog.pg_notification_queue_usage() < 0.9",
        &[
            h.row.dbid.into(),
            h.text.as_str().into(),
            h.event.as_str().into(),
            h.row.content.into(),
            h.row.role.letter().to_string().into(),
            h.row.status.letter().to_string().into(),
            h.row.mode.letter().to_string().into(),
        ],
    )
    .or_raise();
}

/// Inserts a catalog row, with its history row.
pub fn insert(h: &History) {
    let row = &h.row;
    Spi::run_with_args(
        "INSERT INTO public.gp_segment_configuration \
           (dbid, content, role, preferred_role, mode, status, port, hostname, address, datadir) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            row.dbid.into(),
            row.content.into(),
            letter(row.role.letter()).into(),
            letter(row.preferred_role.letter()).into(),
            letter(row.mode.letter()).into(),
            letter(row.status.letter()).into(),
            row.port.into(),
            row.hostname.as_str().into(),
            row.address.as_str().into(),
            row.datadir.as_str().into(),
        ],
    )
    .or_raise();
    history(h);
}

/// Deletes a row (its identity, hold and backoff rows go with it), with its history row.
pub fn remove(h: &History) {
    Spi::run_with_args("DELETE FROM public.gp_segment_configuration WHERE dbid = $1", &[h.row.dbid.into()]).or_raise();
    history(h);
}

/// Sets the mode of one row, with its history row.
pub fn set_mode(row: &Segment, mode: Mode, program: &str) {
    Spi::run_with_args(
        "UPDATE public.gp_segment_configuration SET mode = $2 WHERE dbid = $1",
        &[row.dbid.into(), letter(mode.letter()).into()],
    )
    .or_raise();
    history(&History {
        text: format!(
            "{program}: update mode for dbid {} with contentid {} to {}",
            row.dbid,
            row.content,
            mode.letter()
        ),
        row: Segment { mode, ..row.clone() },
        event: SegmentEvent::of_mode(mode),
    });
}

/// Writes rows (role, status, mode and location; the dbid stays), each with
/// its history row. Constraints are checked at commit, so a failover can
/// swap two roles.
pub fn update_rows(changes: &[History]) {
    Spi::run("SET CONSTRAINTS ALL DEFERRED").or_raise();
    for h in changes {
        let row = &h.row;
        Spi::run_with_args(
            "UPDATE public.gp_segment_configuration SET role = $2, status = $3, mode = $4, \
                    hostname = $5, address = $6, port = $7, datadir = $8, preferred_role = $9 WHERE dbid = $1",
            &[
                row.dbid.into(),
                letter(row.role.letter()).into(),
                letter(row.status.letter()).into(),
                letter(row.mode.letter()).into(),
                row.hostname.as_str().into(),
                row.address.as_str().into(),
                row.port.into(),
                row.datadir.as_str().into(),
                letter(row.preferred_role.letter()).into(),
            ],
        )
        .or_raise();
        history(h);
    }
}

/// Locks the rows of the given dbids until the end of the transaction and
/// returns them as they are now.
pub fn lock_rows(dbids: &[i16]) -> Vec<Segment> {
    let json = Spi::get_one_with_args::<pgrx::JsonB>(
        "SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(c) ORDER BY c.dbid), '[]'::jsonb) FROM \
           (SELECT * FROM public.gp_segment_configuration WHERE dbid = ANY($1) ORDER BY dbid FOR UPDATE) c",
        &[dbids.to_vec().into()],
    )
    .or_raise()
    .map(|j| j.0)
    .unwrap_or_else(|| serde_json::Value::Array(Vec::new()));
    serde_json::from_value(json).unwrap_or_else(|e| internal("unexpected gp_segment_configuration row", e))
}

/// A text column by dbid (of gp_segment_identity, gp_segment_hold), where it is set.
fn identity_column(sql: &str) -> std::collections::HashMap<i16, String> {
    Spi::connect(|client| {
        client
            .select(sql, None, &[])?
            .map(|row| Ok((row.get::<i16>(1)?.unwrap_or_default(), row.get::<String>(2)?.unwrap_or_default())))
            .collect::<Result<_, pgrx::spi::Error>>()
    })
    .or_raise()
}

/// The database system identifier recorded for each dbid (its pair's).
pub fn system_identifiers() -> std::collections::HashMap<i16, String> {
    identity_column("SELECT dbid, system_identifier FROM public.gp_segment_identity")
}

/// Records what a registered segment is: its pair's system identifier.
pub fn record_system_identifier(dbid: i16, system_identifier: &str) {
    Spi::run_with_args(
        "INSERT INTO public.gp_segment_identity (dbid, system_identifier) VALUES ($1, $2) \
         ON CONFLICT (dbid) DO UPDATE SET system_identifier = EXCLUDED.system_identifier",
        &[dbid.into(), system_identifier.into()],
    )
    .or_raise();
}

/// Records the machine each host (by name, in any case) was found to be.
pub fn record_host_ids(found: &[(String, String)]) {
    for (hostname, machine) in found {
        Spi::run_with_args(
            "UPDATE public.gp_segment_identity i SET host_id = $2, host_checked_at = pg_catalog.now() \
               FROM public.gp_segment_configuration c \
              WHERE c.dbid = i.dbid AND pg_catalog.lower(c.hostname) = pg_catalog.lower($1)",
            &[hostname.as_str().into(), machine.as_str().into()],
        )
        .or_raise();
    }
}

/// The machine last recorded for each dbid's host, where one was.
pub fn host_ids() -> std::collections::HashMap<i16, String> {
    identity_column("SELECT dbid, host_id FROM public.gp_segment_identity WHERE host_id IS NOT NULL")
}

/// Each held dbid with who held it and why.
pub fn holds() -> std::collections::HashMap<i16, String> {
    identity_column("SELECT dbid, 'held by ' || held_by || ': ' || reason FROM public.gp_segment_hold")
}

/// A hold on a segment; false when it was held already.
pub fn add_hold(dbid: i16, reason: &str, by: &str) -> bool {
    Spi::get_one_with_args::<bool>(
        "WITH i AS (INSERT INTO public.gp_segment_hold (dbid, reason, held_by) VALUES ($1, $2, $3) \
                    ON CONFLICT (dbid) DO NOTHING RETURNING 1) SELECT EXISTS (SELECT 1 FROM i)",
        &[dbid.into(), reason.into(), by.into()],
    )
    .or_raise()
    .unwrap_or(false)
}

/// Ends a hold; false when there was none.
pub fn remove_hold(dbid: i16) -> bool {
    Spi::get_one_with_args::<bool>(
        "WITH d AS (DELETE FROM public.gp_segment_hold WHERE dbid = $1 RETURNING 1) SELECT EXISTS (SELECT 1 FROM d)",
        &[dbid.into()],
    )
    .or_raise()
    .unwrap_or(false)
}

/// A failover of `content` to `promoted`, in the failover's transaction.
pub fn record_failover(content: i16, promoted: i16) {
    Spi::run_with_args(
        "INSERT INTO public.gp_recovery_failover (content, promoted) VALUES ($1, $2)",
        &[content.into(), promoted.into()],
    )
    .or_raise();
}

/// Removes history rows older than `age` (gp_recovery.history_retention),
/// at most 10000 a call so the transaction stays short, and failovers older
/// than damping's longest window; returns the history rows removed.
pub fn remove_old_history(age: Option<std::time::Duration>) -> i64 {
    Spi::run("DELETE FROM public.gp_recovery_failover WHERE \"time\" < pg_catalog.now() - interval '30 days'")
        .or_raise();
    let Some(age) = age else { return 0 };
    Spi::get_one_with_args::<i64>(
        "WITH d AS (DELETE FROM public.gp_configuration_history WHERE ctid = ANY (ARRAY( \
                      SELECT ctid FROM public.gp_configuration_history \
                       WHERE \"time\" < pg_catalog.now() - pg_catalog.make_interval(secs => $1) LIMIT 10000)) \
                    RETURNING 1) SELECT count(*) FROM d",
        &[age.as_secs_f64().into()],
    )
    .or_raise()
    .unwrap_or(0)
}

/// Each content's failovers within the last `window`.
pub fn recent_failovers(window: std::time::Duration) -> std::collections::HashMap<i16, u32> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT content, count(*)::int4 FROM public.gp_recovery_failover \
                  WHERE \"time\" > pg_catalog.now() - pg_catalog.make_interval(secs => $1) GROUP BY content",
                None,
                &[window.as_secs_f64().into()],
            )?
            .map(|r| {
                Ok((r.get::<i16>(1)?.unwrap_or_default(), u32::try_from(r.get::<i32>(2)?.unwrap_or(0)).unwrap_or(0)))
            })
            .collect::<Result<_, pgrx::spi::Error>>()
    })
    .or_raise()
}

/// Contents the fault tolerance service recorded in a double fault.
pub fn contents_in_double_fault() -> Vec<i16> {
    Spi::connect(|client| {
        client
            .select("SELECT content FROM public.gp_fts_double_fault", None, &[])?
            .map(|row| row.get::<i16>(1).map(|c| c.unwrap_or_default()))
            .collect::<Result<Vec<i16>, _>>()
    })
    .or_raise()
}

/// Records that a content is in a double fault, or no longer is.
pub fn set_double_fault(content: i16, on: bool) {
    let sql = if on {
        "INSERT INTO public.gp_fts_double_fault (content) VALUES ($1) ON CONFLICT (content) DO NOTHING"
    } else {
        "DELETE FROM public.gp_fts_double_fault WHERE content = $1"
    };
    Spi::run_with_args(sql, &[content.into()]).or_raise();
}

/// Both workers run as the bootstrap superuser: nothing a user can create
/// may be on their search path. Their commits do not wait for the
/// coordinator's standby: a dead standby is marked down, and synchronous
/// replication turned off, by a commit of the fault tolerance service.
pub fn set_worker_session() {
    Spi::run("SET search_path = pg_catalog, pg_temp").or_raise();
    Spi::run("SET synchronous_commit = local").or_raise();
}

/// Whether CREATE EXTENSION gp_recovery has run in this database (the
/// workers start with the server, possibly before it has).
pub fn extension_exists() -> bool {
    Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'gp_recovery')")
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Contents a running job has taken out of the fault tolerance service's hands.
pub fn contents_on_fts_hold() -> Vec<i16> {
    Spi::connect(|client| {
        client
            .select("SELECT content FROM public.gp_recovery_job WHERE state = 'running' AND fts_hold", None, &[])?
            .map(|row| row.get::<i16>(1).map(|c| c.unwrap_or_default()))
            .collect::<Result<Vec<i16>, _>>()
    })
    .or_raise()
}

/// Registers a running instance after checking it is what the caller says.
#[pg_extern]
fn gp_add_segment(
    content: Option<i32>,
    role: Option<i8>,
    hostname: Option<&str>,
    port: Option<i32>,
    datadir: Option<&str>,
    address: default!(Option<&str>, "NULL"),
) -> i16 {
    let f = "gp_add_segment";
    let request = SegmentRequest {
        content: required(f, "content", content),
        role: required(f, "role", role) as u8 as char,
        hostname: required(f, "hostname", hostname).to_string(),
        port: required(f, "port", port),
        datadir: required(f, "datadir", datadir).to_string(),
        address: address.map(str::to_string),
    };
    // Registrations are serialized; readers of the catalog are not blocked.
    Spi::run("LOCK TABLE public.gp_segment_configuration IN SHARE ROW EXCLUSIVE MODE").or_raise();
    let catalog = load();
    let row = registration::plan(&catalog, &request, &segment_client::resolving_hosts(&catalog, &[&request.hostname]))
        .or_raise();
    let primary = if row.content >= 0 && row.role == gp_recovery_core::segment::Role::Mirror {
        registration::primary_of(&catalog, row.content).cloned()
    } else {
        None
    };
    let mut to_probe = vec![row.clone()];
    to_probe.extend(primary.clone());
    let probes = segment_client::probe_all(&to_probe);
    let missing = || Err("not probed".to_string());
    let probe = probes.get(&row.dbid).cloned().unwrap_or_else(missing);
    let primary_probe = primary.as_ref().map(|p| probes.get(&p.dbid).cloned().unwrap_or_else(missing));
    let mode = registration::verify_claim(&row, &probe, primary.as_ref().zip(primary_probe.as_ref())).or_raise();
    let system_identifier = probe.map(|p| p.system_identifier).unwrap_or_default();
    let own = segment_host::coordinator().system_identifier.clone();
    registration::verify_system_identifier(&row, &system_identifier, &own).or_raise();

    let row = Segment { mode, ..row };
    insert(&History {
        text: format!(
            "gp_add_segment: inserted {} segment configuration for dbid {} with contentid {}",
            row.role.label().to_lowercase(),
            row.dbid,
            row.content
        ),
        row: row.clone(),
        event: SegmentEvent::SegmentAdded,
    });
    record_system_identifier(row.dbid, &system_identifier);
    if let Some(primary) = primary.filter(|p| p.mode != mode) {
        set_mode(&primary, mode, "gp_add_segment");
    }
    row.dbid
}
