//! The rows of `gp_segment_configuration` and the letters Greenplum 7 uses in them.

use serde::{Deserialize, Serialize};

use crate::error::CoreError;

/// Content id of the coordinator row.
pub const COORDINATOR_CONTENT: i16 = -1;
/// The coordinator is always dbid 1, as in Greenplum.
pub const COORDINATOR_DBID: i16 = 1;

/// Defines a catalog letter enum with its letter, its gpstate label and its
/// serde form (the letter), so the three never drift apart.
macro_rules! catalog_letter {
    ($(#[$doc:meta])* $name:ident, $what:literal, $expected:literal,
     { $($variant:ident = $letter:literal, $label:literal;)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $letter)] $variant,)+
        }

        impl $name {
            pub fn letter(self) -> char {
                match self { $($name::$variant => $letter.chars().next().unwrap_or('?'),)+ }
            }

            /// The word gpstate prints for this value.
            pub fn label(self) -> &'static str {
                match self { $($name::$variant => $label,)+ }
            }

            pub fn from_letter(c: char) -> Result<Self, CoreError> {
                $(if $letter.starts_with(c) { return Ok($name::$variant); })+
                Err(CoreError::InvalidValue {
                    what: $what,
                    value: c.to_string(),
                    expected: $expected,
                })
            }
        }
    };
}

catalog_letter!(
    /// `role` and `preferred_role`.
    Role, "role", "must be 'p' (primary) or 'm' (mirror)",
    { Primary = "p", "Primary"; Mirror = "m", "Mirror"; }
);

catalog_letter!(
    /// `mode`: whether the pair is synchronized.
    Mode, "mode", "must be 's' (synchronized) or 'n' (not in sync)",
    { Synchronized = "s", "Synchronized"; NotInSync = "n", "Not In Sync"; }
);

catalog_letter!(
    /// `status`: up or down, as the fault tolerance service last decided.
    Status, "status", "must be 'u' (up) or 'd' (down)",
    { Up = "u", "Up"; Down = "d", "Down"; }
);

/// One row of `gp_segment_configuration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub dbid: i16,
    pub content: i16,
    pub role: Role,
    pub preferred_role: Role,
    pub mode: Mode,
    pub status: Status,
    pub port: i32,
    pub hostname: String,
    pub address: String,
    pub datadir: String,
}

impl Segment {
    /// The acting coordinator: content -1 in the primary role.
    pub fn is_coordinator(&self) -> bool {
        self.content == COORDINATOR_CONTENT && self.role == Role::Primary
    }

    /// The coordinator's standby (gp_init_standby): content -1 in the mirror role.
    pub fn is_standby(&self) -> bool {
        self.content == COORDINATOR_CONTENT && self.role == Role::Mirror
    }

    /// A segment of the cluster, neither the coordinator nor its standby.
    pub fn is_segment(&self) -> bool {
        self.content != COORDINATOR_CONTENT
    }

    /// "host:port" as used in messages.
    pub fn location(&self) -> String {
        format!("{}:{}", self.hostname, self.port)
    }
}

/// The history text Greenplum writes when a row's role, status or mode
/// changes, prefixed by who changed it ("FTS", "gprecoverseg: segment config
/// for resync", ...).
pub fn update_history(program: &str, s: &Segment) -> String {
    format!(
        "{program}: update role, status, and mode for dbid {} with contentid {} to {}, {}, and {}",
        s.dbid,
        s.content,
        s.role.letter(),
        s.status.letter(),
        s.mode.letter()
    )
}

/// The acting primary and the mirror of one content, looked up in a catalog.
#[derive(Debug, Clone, Copy)]
pub struct Pair<'a> {
    pub primary: &'a Segment,
    pub mirror: &'a Segment,
}

impl<'a> Pair<'a> {
    /// Every content (other than the coordinator's) that has both a primary
    /// and a mirror, ordered by content.
    pub fn all(catalog: &'a [Segment]) -> Vec<Pair<'a>> {
        Self::of(catalog, Segment::is_segment)
    }

    /// What the fault tolerance service watches: every pair of
    /// [`Pair::all`], and first the coordinator with its standby when there
    /// is one.
    pub fn watched(catalog: &'a [Segment]) -> Vec<Pair<'a>> {
        Self::of(catalog, |_| true)
    }

    fn of(catalog: &'a [Segment], with: fn(&Segment) -> bool) -> Vec<Pair<'a>> {
        let mut pairs: Vec<Pair<'a>> = catalog
            .iter()
            .filter(|s| with(s) && s.role == Role::Primary)
            .filter_map(|primary| {
                catalog
                    .iter()
                    .find(|s| s.content == primary.content && s.role == Role::Mirror)
                    .map(|mirror| Pair { primary, mirror })
            })
            .collect();
        pairs.sort_by_key(|p| p.primary.content);
        pairs
    }

    /// True when the roles differ from the preferred ones (a failover happened).
    pub fn switched(&self) -> bool {
        self.primary.role != self.primary.preferred_role
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_round_trip() {
        for r in [Role::Primary, Role::Mirror] {
            assert_eq!(Role::from_letter(r.letter()).unwrap(), r);
        }
        for m in [Mode::Synchronized, Mode::NotInSync] {
            assert_eq!(Mode::from_letter(m.letter()).unwrap(), m);
        }
        for s in [Status::Up, Status::Down] {
            assert_eq!(Status::from_letter(s.letter()).unwrap(), s);
        }
    }

    #[test]
    fn unknown_letter_names_the_problem() {
        let err = Role::from_letter('x').unwrap_err();
        assert_eq!(err.to_string(), "invalid role \"x\": must be 'p' (primary) or 'm' (mirror)");
    }

    #[test]
    fn serde_uses_catalog_letters() {
        let json = r#"{"dbid":2,"content":0,"role":"p","preferred_role":"m","mode":"n",
            "status":"u","port":7001,"hostname":"h","address":"a","datadir":"/d"}"#;
        let s: Segment = serde_json::from_str(json).unwrap();
        assert_eq!(s.role, Role::Primary);
        assert_eq!(s.preferred_role, Role::Mirror);
        assert_eq!(s.mode, Mode::NotInSync);
        assert_eq!(serde_json::to_value(s.status).unwrap(), "u");
    }
}
