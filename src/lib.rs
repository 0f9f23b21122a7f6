//! gp_recovery: Greenplum-style segment management for clusters of
//! PostgreSQL 15 instances, loaded on the coordinator.
//!
//! This crate is the thin SQL edge. Decisions live in `gp_recovery_core`;
//! here are only the effects: SPI against the catalog (`catalog`),
//! connections to segments (`segment_client`), the fault tolerance service's
//! background worker (`fts`), the gpstate views (`gpstate`) and the mapping
//! of errors to SQLSTATEs (`error`).

use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::prelude::*;

mod catalog;
mod error;
mod fts;
mod gpstate;
mod gucs;
mod job_steps;
mod job_table;
mod jobs_worker;
mod latch;
mod plan;
mod recovery;
mod segment_client;
mod segment_host;
mod selfheal;
mod standby;
mod supervise;

::pgrx::pg_module_magic!();

pgrx::extension_sql_file!("../sql/catalog.sql", name = "catalog", bootstrap);
pgrx::extension_sql_file!("../sql/views.sql", name = "views", finalize);

/// Set in the postmaster when the library is preloaded; backends inherit it.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// True when the background workers and their shared memory exist.
pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::SeqCst)
}

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::define();
    // Shared memory and the workers exist only when loaded through
    // shared_preload_libraries; without it the catalog and views still work
    // and the functions that need a worker say what is missing.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        fts::init();
        jobs_worker::init();
        PRELOADED.store(true, Ordering::SeqCst);
    }
}
