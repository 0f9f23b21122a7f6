//! gp_recovery_plan(): the jobs gp_recover_all, gp_recover_segment or
//! gp_recover_from_config would queue, each with its recovery type and
//! why, the bytes it would move, the free space where it goes and what
//! stands in its way (gp_recovery_core::plan decides), read live on the
//! sources and on the targets' hosts. Nothing changes.

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use gp_recovery_core::plan::{plan_row, Facts};
use gp_recovery_core::recovery::{JobSpec, NewLocation, RecoveryMode, Space};
use gp_recovery_core::segment::Segment;
use gp_recovery_core::CoreError;
use pgrx::prelude::*;

use crate::error::raise;
use crate::recovery::{plan_all, plan_config, plan_one};
use crate::segment_client;
use crate::segment_host::{self, SegmentHost};

/// How long the plan waits for a host's free space.
const HOST_TIMEOUT: Duration = Duration::from_secs(30);

/// A running script and what it returns.
struct Running {
    host: SegmentHost,
    child: Child,
}

/// The result of a script once it ended (killed at `deadline`).
fn finished(run: &mut Running, deadline: Instant) -> Option<Result<String, String>> {
    let status = match run.child.try_wait() {
        Ok(Some(status)) => status,
        Ok(None) if Instant::now() < deadline => return None,
        Ok(None) => {
            let _ = run.child.kill();
            let _ = run.child.wait();
            return Some(Err(format!("no answer within {} s", HOST_TIMEOUT.as_secs())));
        }
        Err(e) => return Some(Err(e.to_string())),
    };
    let mut output = String::new();
    if let Some(mut out) = run.child.stdout.take() {
        let _ = out.read_to_string(&mut output);
    }
    if let Some(mut err) = run.child.stderr.take() {
        let _ = err.read_to_string(&mut output);
    }
    Some(if status.success() {
        Ok(output)
    } else {
        Err(run.host.failure("reading the free space", status, &output).message)
    })
}

/// Runs each script on its host, all at once, waiting at most
/// HOST_TIMEOUT (a canceled query stops waiting); the output of each, or
/// why there is none.
fn run_on_hosts(scripts: Vec<(Result<SegmentHost, String>, String)>) -> Vec<Result<String, String>> {
    let mut running: Vec<Result<Running, String>> = scripts
        .into_iter()
        .map(|(host, script)| {
            let host = host?;
            let child = host
                .command(&script)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("could not run a script on host {}: {e}", host.name))?;
            Ok(Running { host, child })
        })
        .collect();
    let mut results: Vec<Option<Result<String, String>>> = running.iter().map(|_| None).collect();
    let deadline = Instant::now() + HOST_TIMEOUT;
    while results.iter().any(Option::is_none) {
        for (r, slot) in running.iter_mut().zip(results.iter_mut()).filter(|(_, slot)| slot.is_none()) {
            *slot = match r {
                Err(e) => Some(Err(e.clone())),
                Ok(run) => finished(run, deadline),
            };
        }
        if results.iter().any(Option::is_none) {
            check_for_interrupts!();
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    results.into_iter().map(|r| r.unwrap_or_else(|| Err("not run".into()))).collect()
}

fn describe(s: &Segment) -> String {
    format!("{} {} (dbid {})", s.location(), s.datadir, s.dbid)
}

/// What a recovery would do, without doing it: one row per job that
/// gp_recover_all(mode) would queue, or gp_recover_segment(dbid, mode),
/// or gp_recover_from_config(config) (whose lines carry their own types).
#[pg_extern]
#[allow(clippy::type_complexity)]
fn gp_recovery_plan(
    mode: default!(Option<&str>, "'auto'"),
    dbid: default!(Option<i32>, "NULL"),
    config: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(dbid, i16),
        name!(content, i16),
        name!(recovery_type, String),
        name!(reason, String),
        name!(source, String),
        name!(target, String),
        name!(estimated_bytes, Option<i64>),
        name!(free_bytes, Option<i64>),
        name!(warnings, Vec<String>),
    ),
> {
    let mode = crate::error::required("gp_recovery_plan", "mode", mode);
    let specs: Vec<JobSpec> = match (dbid, config) {
        (Some(_), Some(_)) => raise(CoreError::InvalidValue {
            what: "arguments",
            value: "dbid and config".into(),
            expected: "give a dbid or a configuration, not both",
        }),
        (Some(d), None) => vec![plan_one(d, mode, NewLocation::default())],
        (None, Some(c)) => plan_config(c),
        (None, None) => plan_all(mode),
    };
    if specs.is_empty() {
        notice!("No segments to recover");
        return TableIterator::new(Vec::new());
    }
    // One job per content, so each source once.
    let sources: Vec<Segment> = specs.iter().map(|s| s.source.clone()).collect();
    let probes = segment_client::probe_all(&sources);
    let bytes = segment_client::call_all(&sources, Duration::from_secs(10), "reading the size", |t| async move {
        t.database_bytes().await
    });
    let scripts = segment_host::scripts(10, None);
    let spaces = run_on_hosts(
        specs
            .iter()
            .map(|s| {
                // In place, a full copy (auto may come to one) is made
                // beside the directory; a differential one (auto's second)
                // counts what the directory holds.
                let measure = matches!(s.mode, RecoveryMode::Differential | RecoveryMode::Auto);
                (SegmentHost::of(&s.target.hostname), scripts.space(&s.target.datadir, !s.relocate, measure))
            })
            .collect(),
    );
    let rows: Vec<_> = specs
        .iter()
        .zip(spaces)
        .map(|(spec, space)| {
            let facts = Facts {
                source_probe: probes.get(&spec.source.dbid).cloned().unwrap_or_else(|| Err("not probed".into())),
                source_bytes: bytes.get(&spec.source.dbid).cloned().unwrap_or_else(|| Err("not read".into())),
                space: space.and_then(|out| {
                    Space::parse(&out).ok_or_else(|| format!("could not read the free space: {}", out.trim()))
                }),
            };
            let row = plan_row(spec, &facts);
            (
                spec.target.dbid,
                spec.target.content,
                row.recovery_type,
                row.reason,
                describe(&spec.source),
                describe(&spec.target),
                row.estimated_bytes,
                row.free_bytes,
                row.warnings,
            )
        })
        .collect();
    TableIterator::new(rows)
}
