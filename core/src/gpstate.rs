//! The SQL form of gpstate: live segment status (catalog + probes), the
//! mirror list of `gpstate -m`, and the report of `gpstate -e`.

use std::collections::HashMap;

use crate::probe::{ProbeResult, Replication};
use crate::segment::{Mode, Pair, Role, Segment, Status};

/// One row of `gp_segment_status`: a catalog row and what its probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentStatus {
    pub segment: Segment,
    /// None when the segment answered.
    pub probe_error: Option<String>,
    pub in_recovery: Option<bool>,
    /// For a mirror: its stream as the content's acting primary reports it.
    pub replication: Option<Replication>,
}

impl SegmentStatus {
    pub fn answering(&self) -> bool {
        self.probe_error.is_none()
    }
}

/// Joins the catalog with the probes (keyed by dbid). A segment missing from
/// `probes` counts as not answering.
pub fn segment_statuses(catalog: &[Segment], probes: &HashMap<i16, ProbeResult>) -> Vec<SegmentStatus> {
    let mirror_stream = |mirror: &Segment| -> Option<Replication> {
        let primary = catalog.iter().find(|s| s.content == mirror.content && s.role == Role::Primary)?;
        probes.get(&primary.dbid)?.as_ref().ok()?.mirror_replication().cloned()
    };
    let mut rows: Vec<SegmentStatus> = catalog
        .iter()
        .map(|s| {
            let probe = probes.get(&s.dbid);
            SegmentStatus {
                segment: s.clone(),
                probe_error: match probe {
                    Some(Ok(_)) => None,
                    Some(Err(e)) => Some(e.clone()),
                    None => Some("not probed".into()),
                },
                in_recovery: probe.and_then(|p| p.as_ref().ok()).map(|p| p.in_recovery),
                replication: if s.role == Role::Mirror { mirror_stream(s) } else { None },
            }
        })
        .collect();
    rows.sort_by_key(|r| (r.segment.content, r.segment.dbid));
    rows
}

/// Looks up the status row of a dbid.
fn status_of(statuses: &[SegmentStatus], dbid: i16) -> Option<&SegmentStatus> {
    statuses.iter().find(|s| s.segment.dbid == dbid)
}

/// True when the catalog says the pair is synchronized and the acting
/// primary confirms that its mirror streams as its synchronous standby.
fn pair_synchronized(statuses: &[SegmentStatus], pair: &Pair) -> bool {
    pair.primary.mode == Mode::Synchronized
        && pair.mirror.mode == Mode::Synchronized
        && status_of(statuses, pair.mirror.dbid)
            .and_then(|m| m.replication.as_ref())
            .is_some_and(Replication::is_synchronous_stream)
}

/// Down in the catalog or not answering now.
fn failed(status: &SegmentStatus) -> bool {
    status.segment.status == Status::Down || !status.answering()
}

/// One row of `gp_mirror_status` (gpstate -m).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorStatus {
    pub dbid: i16,
    pub content: i16,
    pub hostname: String,
    pub datadir: String,
    pub port: i32,
    /// Passive | Acting as Primary | Failed
    pub status: &'static str,
    /// Synchronized | Not In Sync; None for a failed mirror.
    pub data_status: Option<&'static str>,
}

/// The segments configured as mirrors (preferred role 'm'), as gpstate -m lists them.
pub fn mirror_list(statuses: &[SegmentStatus]) -> Vec<MirrorStatus> {
    let catalog: Vec<Segment> = statuses.iter().map(|s| s.segment.clone()).collect();
    let pairs = Pair::all(&catalog);
    statuses
        .iter()
        .filter(|s| s.segment.is_segment() && s.segment.preferred_role == Role::Mirror)
        .map(|s| {
            let seg = &s.segment;
            let synchronized =
                pairs.iter().find(|p| p.primary.content == seg.content).is_some_and(|p| pair_synchronized(statuses, p));
            let (status, data_status) = if failed(s) {
                ("Failed", None)
            } else {
                let status = match seg.role {
                    Role::Primary => "Acting as Primary",
                    Role::Mirror => "Passive",
                };
                let data = if synchronized { Mode::Synchronized } else { Mode::NotInSync };
                (status, Some(data.label()))
            };
            MirrorStatus {
                dbid: seg.dbid,
                content: seg.content,
                hostname: seg.hostname.clone(),
                datadir: seg.datadir.clone(),
                port: seg.port,
                status,
                data_status,
            }
        })
        .collect()
}

/// Lays out a table as gpstate does: a header line and rows, columns padded
/// to their widest cell, each line indented.
fn table(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut all = vec![header.iter().map(|h| h.to_string()).collect::<Vec<String>>()];
    all.extend(rows.iter().cloned());
    columns(&all)
}

/// Lines of cells as Greenplum's TableLogger writes them: each column
/// padded to its widest cell, columns three spaces apart, each line
/// indented by three. A row may have fewer cells than others.
pub fn columns(rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(cell.len()),
                None => widths.push(cell.len()),
            }
        }
    }
    rows.iter()
        .map(|cells| {
            let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            format!("   {}", padded.join("   ").trim_end())
        })
        .collect()
}

/// The lines of `gpstate -e`: the sections that apply, or
/// "All segments are running normally".
/// `holds`: the segments held from self-healing, each with who held it and why.
pub fn state_report(statuses: &[SegmentStatus], holds: &[(i16, String)]) -> Vec<String> {
    let catalog: Vec<Segment> = statuses.iter().map(|s| s.segment.clone()).collect();
    let pairs = Pair::all(&catalog);
    let mut lines = vec!["Segment Mirroring Status Report".to_string()];
    if pairs.is_empty() {
        lines.push("Physical mirroring is not configured".into());
        return lines;
    }
    let mut section = |title: &str, header: &[&str], rows: Vec<Vec<String>>| {
        if !rows.is_empty() {
            lines.push(String::new());
            lines.push(title.to_string());
            lines.extend(table(header, &rows));
        }
    };

    let switched: Vec<Vec<String>> = pairs
        .iter()
        .filter(|p| p.switched())
        .map(|p| {
            vec![
                p.primary.hostname.clone(),
                p.primary.port.to_string(),
                p.mirror.hostname.clone(),
                p.mirror.port.to_string(),
            ]
        })
        .collect();
    section(
        "Segments with Primary and Mirror Roles Switched",
        &["Current Primary", "Port", "Mirror", "Port"],
        switched,
    );

    let unsynchronized: Vec<Vec<String>> = pairs
        .iter()
        .filter(|p| !pair_synchronized(statuses, p))
        .map(|p| {
            let remaining = status_of(statuses, p.mirror.dbid)
                .and_then(|m| m.replication.as_ref())
                .and_then(|r| r.wal_sync_remaining_bytes)
                .map_or("Unknown".to_string(), |b| b.to_string());
            vec![
                p.primary.hostname.clone(),
                p.primary.port.to_string(),
                remaining,
                p.mirror.hostname.clone(),
                p.mirror.port.to_string(),
            ]
        })
        .collect();
    section(
        "Unsynchronized Segment Pairs",
        &["Current Primary", "Port", "WAL sync remaining bytes", "Mirror", "Port"],
        unsynchronized,
    );

    let downed: Vec<Vec<String>> = statuses
        .iter()
        .filter(|s| failed(s))
        .map(|s| {
            let detail = match (s.segment.status, &s.probe_error) {
                (Status::Down, _) => "Down in configuration".to_string(),
                (Status::Up, Some(e)) => {
                    format!("Process error -- database process may be down ({e})")
                }
                (Status::Up, None) => "Up".to_string(),
            };
            vec![s.segment.hostname.clone(), s.segment.port.to_string(), s.segment.status.label().to_string(), detail]
        })
        .collect();
    section(
        "Downed Segments (may include segments where status could not be retrieved)",
        &["Segment", "Port", "Config status", "Status"],
        downed,
    );

    let held: Vec<Vec<String>> = holds
        .iter()
        .filter_map(|(dbid, why)| {
            let s = &statuses.iter().find(|s| s.segment.dbid == *dbid)?.segment;
            Some(vec![s.hostname.clone(), s.port.to_string(), dbid.to_string(), why.clone()])
        })
        .collect();
    section("Segments Held from Self-Healing", &["Segment", "Port", "Dbid", "Held"], held);

    if lines.len() == 1 {
        lines.push("All segments are running normally".into());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::InstanceProbe;

    fn seg(dbid: i16, content: i16, role: Role, preferred: Role, port: i32) -> Segment {
        Segment {
            dbid,
            content,
            role,
            preferred_role: preferred,
            mode: Mode::Synchronized,
            status: Status::Up,
            port,
            hostname: "localhost".into(),
            address: "127.0.0.1".into(),
            datadir: format!("/d/{dbid}"),
        }
    }

    fn healthy() -> (Vec<Segment>, HashMap<i16, ProbeResult>) {
        let catalog = vec![
            seg(1, -1, Role::Primary, Role::Primary, 7000),
            seg(2, 0, Role::Primary, Role::Primary, 7001),
            seg(3, 0, Role::Mirror, Role::Mirror, 7002),
        ];
        let mut probes = HashMap::new();
        probes.insert(1, Ok(InstanceProbe::default()));
        probes.insert(
            2,
            Ok(InstanceProbe {
                replication: vec![Replication {
                    application_name: "gp_walreceiver".into(),
                    slot_name: Some(crate::probe::SLOT_NAME.into()),
                    state: "streaming".into(),
                    sync_state: "sync".into(),
                    wal_sync_remaining_bytes: Some(0),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        );
        probes.insert(3, Ok(InstanceProbe { in_recovery: true, ..Default::default() }));
        (catalog, probes)
    }

    #[test]
    fn healthy_cluster_runs_normally() {
        let (catalog, probes) = healthy();
        let st = segment_statuses(&catalog, &probes);
        assert!(st.iter().all(SegmentStatus::answering));
        assert_eq!(st[2].replication.as_ref().unwrap().sync_state, "sync");
        assert!(st[1].replication.is_none(), "replication columns describe the mirror row");
        let m = mirror_list(&st);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].status, m[0].data_status), ("Passive", Some("Synchronized")));
        assert_eq!(
            state_report(&st, &[]),
            vec!["Segment Mirroring Status Report", "All segments are running normally"]
        );
    }

    #[test]
    fn stopped_mirror_is_reported_down_and_unsynchronized() {
        let (catalog, mut probes) = healthy();
        probes.insert(3, Err("connection refused".into()));
        if let Some(Ok(p)) = probes.get_mut(&2) {
            p.replication.clear();
        }
        let st = segment_statuses(&catalog, &probes);
        assert!(!st[2].answering());
        let m = mirror_list(&st);
        assert_eq!((m[0].status, m[0].data_status), ("Failed", None));
        let report = state_report(&st, &[]).join("\n");
        assert!(report.contains("Unsynchronized Segment Pairs"));
        assert!(report.contains("Unknown"));
        assert!(report.contains("Downed Segments"));
        assert!(report.contains("Process error -- database process may be down (connection refused)"));
        assert!(!report.contains("running normally"));
    }

    #[test]
    fn switched_roles_are_reported() {
        let (mut catalog, probes) = healthy();
        catalog[1] = seg(2, 0, Role::Mirror, Role::Primary, 7001);
        catalog[1].status = Status::Down;
        catalog[2] = seg(3, 0, Role::Primary, Role::Mirror, 7002);
        for s in &mut catalog[1..] {
            s.mode = Mode::NotInSync;
        }
        let st = segment_statuses(&catalog, &probes);
        let m = mirror_list(&st);
        assert_eq!((m[0].status, m[0].data_status), ("Acting as Primary", Some("Not In Sync")));
        let report = state_report(&st, &[]);
        let i = report.iter().position(|l| l == "Segments with Primary and Mirror Roles Switched").unwrap();
        assert_eq!(report[i + 1], "   Current Primary   Port   Mirror      Port");
        assert_eq!(report[i + 2], "   localhost         7002   localhost   7001");
        assert!(report.iter().any(|l| l.contains("Down in configuration")));
    }

    #[test]
    fn no_mirrors_is_said() {
        let (catalog, probes) = healthy();
        let st = segment_statuses(&catalog[..2], &probes);
        assert_eq!(state_report(&st, &[])[1], "Physical mirroring is not configured");
    }

    #[test]
    fn held_segments_are_listed() {
        let (catalog, probes) = healthy();
        let st = segment_statuses(&catalog, &probes);
        let report = state_report(&st, &[(3, "held by dba: patching".into())]).join("\n");
        assert!(report.contains("Segments Held from Self-Healing"), "{report}");
        assert!(report.contains("held by dba: patching") && !report.contains("running normally"), "{report}");
    }
}
