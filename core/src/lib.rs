//! The Postgres-free core of gp_recovery.
//!
//! Everything here is plain data and decisions: the segment catalog model and
//! its rules, what a probe of a segment saw, and how gpstate-style reports are
//! derived from the two. The pgrx extension (the crate at the repository root)
//! supplies catalog rows and probe results and turns the answers into SQL rows
//! and ERRORs, so all of this is unit tested with a plain `cargo test`.

pub mod error;
pub mod fts;
pub mod gpstate;
pub mod host;
pub mod job;
pub mod plan;
pub mod probe;
pub mod rebalance;
pub mod recovery;
pub mod registration;
pub mod segment;
pub mod selfheal;

pub use error::{CoreError, ErrorKind};
