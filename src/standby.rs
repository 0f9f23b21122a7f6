//! The standby coordinator (gpinitstandby, gpactivatestandby):
//! gp_init_standby() registers it and queues the full copy that builds it,
//! gp_remove_standby() takes it away, gp_activate_standby() promotes it;
//! the workers' wait while this instance is itself a standby, in recovery,
//! where gp_recovery takes no decision; and what an activated standby
//! records when its fault tolerance service starts: the catalog change and
//! a higher coordinator epoch on every instance (core/src/coordinator.rs).

use std::time::Duration;

use gp_recovery_core::coordinator::{self, Own};
use gp_recovery_core::events::{History, SegmentEvent};
use gp_recovery_core::host::{self, Owner};
use gp_recovery_core::job::FailureKind;
use gp_recovery_core::recovery::{plan_recovery, NewLocation, RecoveryMode};
use gp_recovery_core::registration;
use gp_recovery_core::segment::{Role, Segment, COORDINATOR_CONTENT};
use gp_recovery_core::CoreError;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;

use crate::error::{required, OrRaise};
use crate::segment_client::{self, Target};
use crate::{catalog, gucs, job_table, recovery, segment_host};

/// Builds a standby of this coordinator (gpinitstandby -s HOST -P PORT -S
/// DATADIR): its row (content -1, role 'm', down until built) and the full
/// recovery job that copies the coordinator there with pg_basebackup,
/// streams through its own slot and becomes the synchronous standby.
/// Returns the job id; gp_recovery_wait(job_id) waits for it.
#[pg_extern]
fn gp_init_standby(hostname: Option<&str>, port: Option<i32>, datadir: Option<&str>) -> i64 {
    let f = "gp_init_standby";
    let (hostname, port, datadir) =
        (required(f, "hostname", hostname), required(f, "port", port), required(f, "datadir", datadir));
    recovery::require_worker();
    job_table::lock_submissions();
    Spi::run("LOCK TABLE public.gp_segment_configuration IN SHARE ROW EXCLUSIVE MODE").or_raise();
    let catalog = catalog::load();
    let hosts = segment_client::resolving_hosts(&catalog, &[hostname]);
    let row = registration::plan_standby(&catalog, hostname, port, datadir, &hosts).or_raise();
    catalog::insert(&History {
        text: format!(
            "gpinitstandby: inserted standby coordinator segment configuration for dbid {} with contentid {}",
            row.dbid, row.content
        ),
        row: row.clone(),
        event: SegmentEvent::SegmentAdded,
    });
    // A copy of this coordinator: its database system, which every step of
    // the job proves before it stops or fences a server.
    catalog::record_system_identifier(row.dbid, &segment_host::coordinator().system_identifier);
    let catalog = catalog::load();
    let spec = plan_recovery(
        &catalog,
        &job_table::active(),
        row.dbid.into(),
        RecoveryMode::Full,
        &NewLocation::default(),
        &hosts,
    )
    .or_raise();
    recovery::submit(vec![spec])[0]
}

/// Takes the standby coordinator away (gpinitstandby -r): synchronous
/// replication off on the coordinator, the standby stopped (only when the
/// server in its directory is this coordinator's copy), its slot dropped,
/// its row deleted. Its data directory stays on its host.
#[pg_extern]
fn gp_remove_standby() -> bool {
    recovery::require_worker();
    job_table::lock_submissions();
    Spi::run("LOCK TABLE public.gp_segment_configuration IN SHARE ROW EXCLUSIVE MODE").or_raise();
    let catalog = catalog::load();
    let standby = catalog
        .iter()
        .find(|s| s.is_standby())
        .cloned()
        .ok_or_else(|| CoreError::WrongState("this coordinator has no standby in gp_segment_configuration".into()));
    let standby = standby.or_raise();
    if let Some(j) = job_table::active().iter().find(|j| j.content == COORDINATOR_CONTENT) {
        Err::<(), _>(CoreError::WrongState(format!(
            "recovery job {} ({}) is working on the standby; cancel it with gp_recovery_cancel({}) first",
            j.job_id, j.state, j.job_id
        )))
        .or_raise();
    }
    let coordinator = catalog.iter().find(|s| s.is_coordinator()).cloned();
    let timeout = gucs::seconds(&gucs::JOB_CALL_TIMEOUT);
    if let Some(c) = &coordinator {
        segment_client::block_on(Target::new(c, timeout).disable_sync_rep())
            .map_err(|e| {
                CoreError::WrongState(format!("could not turn synchronous replication off on the coordinator: {e}"))
            })
            .or_raise();
    }
    stop(&standby, timeout).or_raise();
    if let Some(c) = &coordinator {
        segment_client::block_on(Target::new(c, timeout).drop_slot(timeout))
            .map_err(|e| CoreError::WrongState(format!("could not drop the standby's replication slot: {e}")))
            .or_raise();
    }
    catalog::remove(&History {
        text: format!(
            "gpinitstandby: removed standby coordinator segment configuration for dbid {} with contentid {}",
            standby.dbid, standby.content
        ),
        row: standby.clone(),
        event: SegmentEvent::SegmentRemoved,
    });
    notice!(
        "standby coordinator dbid {} at {} removed; its data directory {} is left in place",
        standby.dbid,
        standby.location(),
        standby.datadir
    );
    true
}

/// Stops the standby on its host, refusing a server that is not this
/// coordinator's copy running in the standby's directory.
fn stop(standby: &Segment, timeout: Duration) -> Result<(), CoreError> {
    let owner =
        Owner { job: 0, dbid: standby.dbid, system_identifier: segment_host::coordinator().system_identifier.clone() };
    let script = segment_host::scripts(timeout.as_secs(), Some(owner)).stop(&standby.datadir, false);
    let on = segment_host::SegmentHost::of(&standby.hostname).map_err(CoreError::WrongState)?;
    let out = host::output(&mut on.command(&script))
        .map_err(|e| CoreError::WrongState(format!("could not run pg_ctl stop on host {}: {e}", standby.hostname)))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        return Ok(());
    }
    let e = on.failure("stopping the standby", out.status, &text);
    // Unreachable, or what runs there is not the standby (the step refused
    // to stop it): nothing of the standby's is left to stop, and without its
    // slot nothing there streams from the coordinator again.
    if matches!(e.kind, FailureKind::HostUnreachable | FailureKind::Refused) {
        warning!("the standby was not stopped: {}; removing it from the catalog", e.message);
        return Ok(());
    }
    Err(CoreError::WrongState(e.message))
}

/// Waits while this instance is in recovery (a standby coordinator): the
/// workers make no decision there, and start their work once it is
/// promoted. False when the worker is asked to stop meanwhile.
pub fn wait_while_in_recovery(worker: &str) -> bool {
    let mut said = false;
    // SAFETY: reads shared memory the startup process maintains.
    while unsafe { pg_sys::RecoveryInProgress() } {
        if !said {
            log!("gp_recovery {worker}: this instance is in recovery (a standby coordinator): no decision is taken here until it is promoted");
            said = true;
        }
        if !BackgroundWorker::wait_latch(Some(Duration::from_secs(1))) {
            return false;
        }
    }
    if said {
        log!("gp_recovery {worker}: this instance was promoted; starting");
    }
    true
}

/// This instance as the catalog names it: its port and data directory.
fn own() -> Own {
    // SAFETY: both are set at server start, before any backend or worker runs.
    let (port, datadir) = unsafe { (pg_sys::PostPortNumber, std::ffi::CStr::from_ptr(pg_sys::DataDir)) };
    Own { port, datadir: datadir.to_string_lossy().into_owned() }
}

/// Promotes this standby to be the coordinator (gpactivatestandby), after
/// proving the old coordinator no longer answers as this cluster's writable
/// coordinator (unless `force`, with a WARNING). Its fault tolerance
/// service records the change in the catalog as it starts, raises the
/// coordinator epoch on every instance, and fences the old coordinator
/// should it answer again (gp_configuration_history shows each step).
#[pg_extern]
fn gp_activate_standby(force: default!(Option<bool>, "false")) -> String {
    let force = required("gp_activate_standby", "force", force);
    recovery::require_worker();
    let own = own();
    let catalog = catalog::load_in_recovery();
    // SAFETY: reads shared memory the startup process maintains.
    let in_recovery = unsafe { pg_sys::RecoveryInProgress() };
    let old: Vec<Segment> = catalog.iter().filter(|s| s.is_coordinator()).cloned().collect();
    let probes = segment_client::probe_all(&old);
    let sysid = segment_host::coordinator().system_identifier.clone();
    let activation = coordinator::check_activation(
        &catalog,
        &own,
        in_recovery,
        &sysid,
        old.first().and_then(|c| probes.get(&c.dbid)),
        force,
    )
    .or_raise();
    if let Some(w) = &activation.warning {
        warning!("{w}");
    }
    let promoted =
        Spi::connect(|c| c.select("SELECT pg_catalog.pg_promote(true, 60)", Some(1), &[])?.first().get_one::<bool>())
            .or_raise()
            .unwrap_or(false);
    if !promoted {
        Err::<(), _>(CoreError::WrongState("the promotion did not finish within 60 s; see the server log".into()))
            .or_raise();
    }
    let dbid = activation.standby.dbid;
    notice!("standby dbid {dbid} promoted; its fault tolerance service now records it as the coordinator and raises the coordinator epoch");
    format!("standby dbid {dbid} promoted")
}

/// Run by the fault tolerance service as it starts: on an activated
/// standby, the catalog change (this instance the coordinator, the old one
/// its down mirror) and a coordinator epoch above any instance's, committed
/// together; then the epoch on every primary. Returns this coordinator's
/// epoch.
pub fn record_activation() -> i64 {
    let own = own();
    let (changes, catalog) = BackgroundWorker::transaction(|| {
        let catalog = catalog::load();
        (coordinator::activation_changes(&catalog, &own), catalog)
    });
    let epoch =
        || BackgroundWorker::transaction(|| Spi::get_one::<i64>(coordinator::EPOCH_SQL).or_raise().unwrap_or_default());
    let Some(changes) = changes else {
        return epoch();
    };
    let timeout = gucs::seconds(&gucs::FTS_PROBE_TIMEOUT);
    let others: Vec<Segment> = catalog.iter().filter(|s| !own.is(s)).cloned().collect();
    let seen = segment_client::call_all(&others, timeout, "probe", |t| async move { t.probe().await });
    let next =
        coordinator::next_epoch(epoch(), seen.values().filter_map(|p| p.as_ref().ok()).map(|p| p.coordinator_epoch));
    BackgroundWorker::transaction(|| {
        catalog::update_rows(&changes);
        Spi::run(&coordinator::raise_epoch_sql(next)).or_raise();
    });
    log!(
        "gp_recovery: this instance (dbid {}) was activated and is the coordinator now; coordinator epoch {next}",
        changes[0].row.dbid
    );
    let primaries: Vec<Segment> =
        catalog.iter().filter(|s| s.is_segment() && s.role == Role::Primary).cloned().collect();
    let raised =
        segment_client::call_all(
            &primaries,
            timeout,
            "raise the epoch",
            move |t| async move { t.raise_epoch(next).await },
        );
    for (dbid, result) in raised {
        match result {
            Ok(()) => log!("gp_recovery: dbid {dbid} keeps coordinator epoch {next}"),
            Err(e) => warning!("gp_recovery: could not raise the coordinator epoch of dbid {dbid} to {next}: {e}; the fault tolerance service raises it when it reaches it"),
        }
    }
    next
}
