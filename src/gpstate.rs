//! gp_segment_status, gp_mirror_status and gp_state_report(): gpstate as SQL.

use gp_recovery_core::gpstate::{self, SegmentStatus};
use pgrx::prelude::*;

use crate::catalog::{self, letter};
use crate::segment_client;

/// The catalog joined with a fresh probe of every segment.
fn live_status() -> Vec<SegmentStatus> {
    let catalog = catalog::load();
    let probes = segment_client::probe_all(&catalog);
    gpstate::segment_statuses(&catalog, &probes)
}

#[allow(clippy::type_complexity)]
#[pg_extern]
fn gp_segment_status_probe() -> TableIterator<
    'static,
    (
        name!(dbid, i16),
        name!(content, i16),
        name!(role, i8),
        name!(preferred_role, i8),
        name!(mode, i8),
        name!(status, i8),
        name!(port, i32),
        name!(hostname, String),
        name!(address, String),
        name!(datadir, String),
        name!(answering, bool),
        name!(in_recovery, Option<bool>),
        name!(probe_error, Option<String>),
        name!(replication_state, Option<String>),
        name!(sync_state, Option<String>),
        name!(sent_lsn, Option<String>),
        name!(flush_lsn, Option<String>),
        name!(replay_lsn, Option<String>),
        name!(wal_sync_remaining_bytes, Option<i64>),
        name!(bytes_behind, Option<i64>),
    ),
> {
    let rows: Vec<_> = live_status()
        .into_iter()
        .map(|s| {
            let answering = s.answering();
            let seg = s.segment;
            let r = s.replication.unwrap_or_default();
            let text = |v: String| Some(v).filter(|v| !v.is_empty());
            (
                seg.dbid,
                seg.content,
                letter(seg.role.letter()),
                letter(seg.preferred_role.letter()),
                letter(seg.mode.letter()),
                letter(seg.status.letter()),
                seg.port,
                seg.hostname,
                seg.address,
                seg.datadir,
                answering,
                s.in_recovery,
                s.probe_error,
                text(r.state),
                text(r.sync_state),
                r.sent_lsn,
                r.flush_lsn,
                r.replay_lsn,
                r.wal_sync_remaining_bytes,
                r.bytes_behind,
            )
        })
        .collect();
    TableIterator::new(rows)
}

#[allow(clippy::type_complexity)]
#[pg_extern]
fn gp_mirror_status_probe() -> TableIterator<
    'static,
    (
        name!(dbid, i16),
        name!(content, i16),
        name!(hostname, String),
        name!(datadir, String),
        name!(port, i32),
        name!(status, String),
        name!(data_status, Option<String>),
    ),
> {
    let rows: Vec<_> = gpstate::mirror_list(&live_status())
        .into_iter()
        .map(|m| {
            (m.dbid, m.content, m.hostname, m.datadir, m.port, m.status.to_string(), m.data_status.map(str::to_string))
        })
        .collect();
    TableIterator::new(rows)
}

/// The lines of `gpstate -e`.
#[pg_extern]
fn gp_state_report() -> SetOfIterator<'static, String> {
    let mut holds: Vec<(i16, String)> = catalog::holds().into_iter().collect();
    holds.sort();
    SetOfIterator::new(gpstate::state_report(&live_status(), &holds))
}
