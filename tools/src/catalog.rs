//! `gp_segment_configuration` read into the core's segment rows, so the
//! commands decide with the same types and rules as the extension.

use gp_recovery_core::segment::{Mode, Role, Segment, Status};

use crate::conn::Db;
use crate::log::Log;
use crate::ToolError;

const CATALOG: &str = "SELECT dbid, content, role::text, preferred_role::text, mode::text, status::text, \
                              port, hostname, address, datadir \
                         FROM gp_segment_configuration ORDER BY content, dbid";

pub fn load(db: &mut Db, log: &Log) -> Result<Vec<Segment>, ToolError> {
    db.query(log, CATALOG, &[])?
        .iter()
        .map(|r| {
            segment(
                r.get(0),
                r.get(1),
                [r.get::<_, String>(2), r.get(3), r.get(4), r.get(5)],
                r.get(6),
                [r.get(7), r.get(8), r.get(9)],
            )
        })
        .collect()
}

/// A catalog row from its columns: letters role, preferred_role, mode,
/// status; then hostname, address, datadir.
fn segment(dbid: i16, content: i16, letters: [String; 4], port: i32, place: [String; 3]) -> Result<Segment, ToolError> {
    let letter = |s: &str| s.chars().next().unwrap_or(' ');
    let bad =
        |e: gp_recovery_core::error::CoreError| ToolError::Sql(format!("gp_segment_configuration dbid {dbid}: {e}"));
    let [hostname, address, datadir] = place;
    Ok(Segment {
        dbid,
        content,
        role: Role::from_letter(letter(&letters[0])).map_err(bad)?,
        preferred_role: Role::from_letter(letter(&letters[1])).map_err(bad)?,
        mode: Mode::from_letter(letter(&letters[2])).map_err(bad)?,
        status: Status::from_letter(letter(&letters[3])).map_err(bad)?,
        port,
        hostname,
        address,
        datadir,
    })
}

/// Some segment is configured as a mirror.
pub fn has_mirrors(catalog: &[Segment]) -> bool {
    catalog.iter().any(|s| s.is_segment() && s.preferred_role == Role::Mirror)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letters(l: [&str; 4]) -> [String; 4] {
        l.map(str::to_string)
    }

    fn place() -> [String; 3] {
        ["sdw1".into(), "sdw1-1".into(), "/data/m0".into()]
    }

    #[test]
    fn rows_become_segments() {
        let s = segment(3, 0, letters(["m", "m", "n", "d"]), 7002, place()).unwrap();
        assert_eq!(
            (s.role, s.preferred_role, s.mode, s.status),
            (Role::Mirror, Role::Mirror, Mode::NotInSync, Status::Down)
        );
        assert_eq!((s.hostname.as_str(), s.address.as_str(), s.datadir.as_str()), ("sdw1", "sdw1-1", "/data/m0"));
        assert!(has_mirrors(&[s]));
        let e = segment(3, 0, letters(["x", "m", "n", "d"]), 7002, place()).unwrap_err();
        assert!(e.to_string().contains("dbid 3"), "{e}");
    }

    #[test]
    fn a_cluster_of_primaries_has_no_mirrors() {
        let p = segment(2, 0, letters(["p", "p", "n", "u"]), 7001, place()).unwrap();
        let coordinator = segment(1, -1, letters(["p", "p", "n", "u"]), 7000, place()).unwrap();
        assert!(!has_mirrors(&[coordinator, p]));
    }
}
