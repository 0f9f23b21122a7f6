//! gp_recovery: Greenplum-style segment management for clusters of
//! PostgreSQL 15 instances, loaded on the coordinator.
//!
//! This crate is the thin SQL edge. Decisions live in `gp_recovery_core`;
//! here are only the effects: SPI against the catalog (`catalog`),
//! connections to segments (`segment_client`), the fault tolerance service's
//! background worker (`fts`), the gpstate views (`gpstate`) and the mapping
//! of errors to SQLSTATEs (`error`).

use pgrx::prelude::*;

mod catalog;
mod error;
mod fts;
mod gpstate;
mod gucs;
mod segment_client;

::pgrx::pg_module_magic!();

pgrx::extension_sql_file!("../sql/catalog.sql", name = "catalog", bootstrap);
pgrx::extension_sql_file!("../sql/views.sql", name = "views", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::define();
    // Shared memory and the fault tolerance worker exist only when loaded
    // through shared_preload_libraries; without it the catalog and views
    // still work and gp_request_fts_probe_scan() says what is missing.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        fts::init();
    }
}
