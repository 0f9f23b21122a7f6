//! The Postgres-free core of gp_recovery.
//!
//! Everything here is plain data and decisions: the segment catalog model and
//! its rules, what a probe of a segment saw, and how gpstate-style reports are
//! derived from the two. The pgrx extension (the crate at the repository root)
//! supplies catalog rows and probe results and turns the answers into SQL rows
//! and ERRORs, so all of this is unit tested with a plain `cargo test`.

/// An enum whose values are stored and shown by name: its names, every
/// value in order, Display, and FromStr with an error naming `what`.
macro_rules! named_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal, $expected:literal, { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::error::CoreError;

            fn from_str(s: &str) -> Result<Self, $crate::error::CoreError> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| $crate::error::CoreError::InvalidValue {
                    what: $what,
                    value: s.to_string(),
                    expected: $expected,
                })
            }
        }
    };
}

pub mod coordinator;
pub mod error;
pub mod events;
pub mod fts;
pub mod fts_tracker;
pub mod gpstate;
pub mod host;
pub mod identity;
pub mod job;
pub mod plan;
pub mod probe;
pub mod reaper;
pub mod rebalance;
pub mod recovery;
pub mod registration;
pub mod segment;
pub mod selfheal;

pub use error::{CoreError, ErrorKind};
