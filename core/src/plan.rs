//! gp_recovery_plan(): what a recovery would do, without doing it
//! (Greenplum shows this only in gprecoverseg's interactive prompt). For
//! each job the SQL functions would queue: the recovery type and why, the
//! bytes it would move, the free space on the target's file system, and
//! what stands in its way, from facts read live on the source and on the
//! target's host.

use crate::job::JobKind;
use crate::probe::ProbeResult;
use crate::recovery::{self, JobSpec, RecoveryMode, Space};

/// What was read live for one planned job.
pub struct Facts {
    pub source_probe: ProbeResult,
    /// What the source's databases hold.
    pub source_bytes: Result<i64, String>,
    /// The target's file system, read on its host.
    pub space: Result<Space, String>,
}

/// One row of gp_recovery_plan().
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRow {
    pub recovery_type: String,
    pub reason: String,
    /// None where it cannot be known before (pg_rewind copies what changed
    /// since the divergence).
    pub estimated_bytes: Option<i64>,
    pub free_bytes: Option<i64>,
    pub warnings: Vec<String>,
}

/// The row for a job `spec` the functions would queue.
pub fn plan_row(spec: &JobSpec, facts: &Facts) -> PlanRow {
    let kind = JobKind::of(spec.mode, spec.relocate);
    let space = facts.space.as_ref().ok();
    let marked = space.is_some_and(|s| s.marked);
    let mut warnings = Vec::new();
    if let Err(e) = &facts.space {
        warnings.push(format!("the target's host {}: {e}", spec.target.hostname));
    }
    let source_bytes = match &facts.source_bytes {
        Ok(b) => Some(*b),
        Err(e) => {
            warnings.push(format!("the acting primary dbid {}: {e}", spec.source.dbid));
            None
        }
    };
    let estimate = |k: JobKind| Some(recovery::copy_estimate(k, source_bytes?, space?.used_bytes));
    let (reason, estimated_bytes) = match (spec.mode, kind) {
        (RecoveryMode::Auto, _) if marked => (
            "incremental first, which refuses the incomplete copy in the data directory; then differential, and \
             full if that cannot work either"
                .to_string(),
            estimate(JobKind::Differential),
        ),
        (RecoveryMode::Auto, JobKind::Incremental) => {
            ("incremental first; differential, then full, if the rewind or the start shows it cannot work".into(), None)
        }
        (_, JobKind::Incremental) => {
            if marked {
                warnings.push(
                    "the data directory holds an incomplete copy: incremental recovery will refuse it; use \
                     differential, full or auto"
                        .into(),
                );
            }
            ("pg_rewind against the acting primary; a mirror that only stopped is started again".into(), None)
        }
        (_, JobKind::Differential) => (
            "rsync of what differs into the data directory, in a base backup of the acting primary".into(),
            estimate(kind),
        ),
        (_, JobKind::Relocation) => (
            format!(
                "pg_basebackup of the acting primary into the new place {} {}",
                spec.target.location(),
                spec.target.datadir
            ),
            estimate(kind),
        ),
        _ => (
            "pg_basebackup of the acting primary beside the data directory, swapped in when complete".into(),
            estimate(kind),
        ),
    };
    // The copy that must fit: the mode's own; for auto, the full copy it
    // may come to.
    let copy = if spec.mode == RecoveryMode::Auto && !spec.relocate { JobKind::Full } else { kind };
    if let (Some(bytes), Some(space)) = (source_bytes, space) {
        if let Err(e) = recovery::check_space(copy, spec.target.dbid, &spec.target.hostname, bytes, space) {
            warnings.push(if copy == kind { e } else { format!("should auto come to a full copy: {e}") });
        }
    }
    if let Err(e) = recovery::verify_source(&spec.source, &spec.target, copy.mode(), spec.relocate, &facts.source_probe)
    {
        warnings.push(e.to_string());
    }
    PlanRow {
        recovery_type: spec.mode.to_string(),
        reason,
        estimated_bytes,
        free_bytes: space.map(|s| s.avail_bytes),
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{InstanceProbe, Tablespace};
    use crate::segment::{Mode, Role, Segment, Status};

    fn seg(dbid: i16, role: Role, status: Status, host: &str) -> Segment {
        Segment {
            dbid,
            content: 0,
            role,
            preferred_role: role,
            mode: Mode::NotInSync,
            status,
            port: 7000 + i32::from(dbid),
            hostname: host.into(),
            address: host.into(),
            datadir: format!("/d/{dbid}"),
        }
    }

    fn spec(mode: RecoveryMode, relocate: bool) -> JobSpec {
        let target = seg(3, Role::Mirror, Status::Down, "sdw2");
        JobSpec { mode, original: target.clone(), target, source: seg(2, Role::Primary, Status::Up, "sdw1"), relocate }
    }

    fn facts(avail_mb: i64, used_mb: i64, marked: bool) -> Facts {
        Facts {
            source_probe: Ok(InstanceProbe::default()),
            source_bytes: Ok(100 << 20),
            space: Ok(Space { avail_bytes: avail_mb << 20, used_bytes: used_mb << 20, marked, path: "/d".into() }),
        }
    }

    #[test]
    fn each_mode_says_what_it_moves_and_what_stands_in_its_way() {
        let row = plan_row(&spec(RecoveryMode::Full, false), &facts(1000, 90, false));
        assert_eq!(
            (row.recovery_type.as_str(), row.estimated_bytes, row.free_bytes),
            ("full", Some(100 << 20), Some(1000 << 20))
        );
        assert!(row.warnings.is_empty(), "{row:?}");
        let row = plan_row(&spec(RecoveryMode::Differential, false), &facts(1000, 90, false));
        assert_eq!(row.estimated_bytes, Some(10 << 20), "only what the directory lacks");
        let row = plan_row(&spec(RecoveryMode::Incremental, false), &facts(1000, 90, true));
        assert_eq!(row.estimated_bytes, None);
        assert!(row.warnings[0].contains("incremental recovery will refuse it"), "{row:?}");
        let row = plan_row(&spec(RecoveryMode::Auto, false), &facts(1000, 90, true));
        assert!(row.reason.contains("refuses the incomplete copy"), "{row:?}");
        assert_eq!(row.estimated_bytes, Some(10 << 20));
        // Too small for the full copy auto may come to.
        let row = plan_row(&spec(RecoveryMode::Auto, false), &facts(100, 90, false));
        assert!(row.warnings[0].starts_with("should auto come to a full copy: not enough free space"), "{row:?}");
        let row = plan_row(&spec(RecoveryMode::Full, true), &facts(100, 0, false));
        assert!(row.reason.contains("new place sdw2:7003 /d/3"), "{row:?}");
        assert!(row.warnings[0].starts_with("not enough free space for the relocation copy"), "{row:?}");
    }

    #[test]
    fn an_unreachable_host_or_source_is_a_warning_not_an_error() {
        let far = Tablespace { name: "far".into(), location: "/far".into() };
        let f = Facts {
            source_probe: Ok(InstanceProbe { outside_tablespaces: vec![far], ..Default::default() }),
            source_bytes: Err("no answer within 5 s".into()),
            space: Err("host sdw2 is unreachable".into()),
        };
        let row = plan_row(&spec(RecoveryMode::Full, true), &f);
        assert_eq!((row.estimated_bytes, row.free_bytes), (None, None));
        assert_eq!(row.warnings.len(), 3, "{row:?}");
        assert!(row.warnings[2].contains("relocation does not map"), "{row:?}");
        let down = Facts { source_probe: Err("connection refused".into()), ..facts(1000, 0, false) };
        let row = plan_row(&spec(RecoveryMode::Incremental, false), &down);
        assert!(row.warnings[0].starts_with("double fault"), "{row:?}");
    }
}
