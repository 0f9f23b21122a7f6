//! gp_recovery: Greenplum-style segment management for clusters of
//! PostgreSQL 15 instances, loaded on the coordinator.
//!
//! This crate is the thin SQL edge. Decisions live in `gp_recovery_core`;
//! here are only the effects: SPI against the catalog (`catalog`), network
//! probes of segments (`segment_probe`), the gpstate views (`gpstate`) and
//! the mapping of errors to SQLSTATEs (`error`).

use pgrx::prelude::*;

mod catalog;
mod error;
mod gpstate;
mod gucs;
mod segment_probe;

::pgrx::pg_module_magic!();

pgrx::extension_sql_file!("../sql/catalog.sql", name = "catalog", bootstrap);
pgrx::extension_sql_file!("../sql/views.sql", name = "views", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::define();
}
