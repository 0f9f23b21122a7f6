//! Monitoring: Debian's prometheus-postgres-exporter with
//! monitoring/queries.yaml scrapes gp_recovery_metrics on a real
//! coordinator; a failover and a recovery change the series.

use std::collections::BTreeMap;

use std::time::{Duration, Instant};

use gp_recovery_pg_test::{wait_for, Stopped, TestCluster};
use gpdemo::monitoring::Exporter;

/// Every gp_recovery sample of a scrape: (name, labels) → value.
fn samples(exporter: &Exporter) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let mut out = BTreeMap::new();
    for line in exporter.scrape().unwrap_or_default() {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        out.insert((name.to_string(), labels), value);
    }
    out
}

/// The value of the first sample named `name` whose labels include `labels`.
fn value(exporter: &Exporter, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(exporter).into_iter().find_map(|((n, l), v)| {
        (n == name && labels.iter().all(|(k, want)| l.get(*k).map(String::as_str) == Some(want))).then_some(v)
    })
}

#[test]
fn the_exporter_sees_a_failover_and_a_recovery() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    let exporter = Exporter::start(&tc.cluster, gpdemo::free_port_range(1).unwrap()).unwrap();
    wait_for(60, "the exporter to serve gp_recovery's series", || {
        value(&exporter, "gp_recovery_segments_count", &[("role", "p"), ("status", "u")]) == Some(1.0)
    });
    assert_eq!(value(&exporter, "gp_recovery_segments_count", &[("role", "m"), ("status", "d")]), Some(0.0));
    assert_eq!(value(&exporter, "gp_recovery_last_failover_time_seconds", &[]), Some(0.0));
    assert_eq!(value(&exporter, "gp_recovery_pairs_not_synchronized_count", &[]), Some(0.0));
    assert!(value(&exporter, "gp_recovery_fts_rounds", &[]).is_some_and(|r| r > 0.0));
    assert!(value(&exporter, "gp_recovery_fts_last_round_seconds", &[]).is_some_and(|s| s > 0.0 && s < 5.0));
    assert!(value(&exporter, "gp_recovery_mirror_lag_bytes", &[("content", "0")]).is_some());

    let (down, _) = tc.fail_over(0);
    wait_for(60, "the failover in the series", || {
        value(&exporter, "gp_recovery_segments_count", &[("role", "m"), ("status", "d")]) == Some(1.0)
            && value(&exporter, "gp_recovery_last_failover_time_seconds", &[]).is_some_and(|t| t > 0.0)
            && value(&exporter, "gp_recovery_pairs_not_synchronized_count", &[]) == Some(1.0)
    });
    assert!(
        value(&exporter, "gp_recovery_fts_probe_errors", &[]).is_some_and(|e| e >= 1.0),
        "the dead primary's probes"
    );

    tc.set_rate(4096);
    let job = tc.submit(&format!("SELECT gp_recover_segment({down}, 'full')"));
    wait_for(60, "the copy's bytes in the series", || {
        value(&exporter, "gp_recovery_copy_bytes", &[]).is_some_and(|b| b > 0.0)
            && value(&exporter, "gp_recovery_jobs_count", &[("state", "running"), ("recovery_type", "full")])
                == Some(1.0)
    });
    tc.set_rate(0);
    assert_eq!(tc.wait_job(job), Ok("succeeded".into()));
    wait_for(60, "the recovery in the series", || {
        value(&exporter, "gp_recovery_jobs_count", &[("state", "succeeded"), ("recovery_type", "full")]) == Some(1.0)
            && value(&exporter, "gp_recovery_segments_count", &[("role", "m"), ("status", "d")]) == Some(0.0)
    });
}

/// Issue item 5: the metrics read what the fault tolerance service last saw
/// of each stream, so a hung mirror costs them nothing; and a
/// configuration with a Windows byte-order mark is read as written.
#[test]
fn the_metrics_never_wait_on_a_hung_mirror() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    let mut c = tc.coordinator();
    let lag = |c: &mut postgres::Client| {
        c.query("SELECT value FROM gp_recovery_metrics WHERE metric = 'mirror_lag_bytes' AND content = 0", &[])
            .unwrap()
            .len()
    };
    wait_for(30, "the mirror's lag in the metrics", || lag(&mut c) == 1);
    let hung = Stopped::new(tc.mirror(0).postmaster_pid().unwrap());
    for _ in 0..3 {
        let started = Instant::now();
        c.query("SELECT * FROM gp_recovery_metrics", &[]).unwrap();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "the metrics waited {took:?} on the hung mirror");
    }
    drop(hung);
    let m = tc.mirror_down(0);
    let config: String = c.query_one("SELECT gp_recovery_config()", &[]).unwrap().get(0);
    let line = config.lines().find(|l| !l.starts_with('#')).unwrap().to_string();
    let job: i64 =
        c.query_one("SELECT * FROM gp_recover_from_config($1)", &[&format!("\u{feff}{line}\n")]).unwrap().get(0);
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
    wait_for(60, "the mirror back", || tc.row_state(m) == "m u s");
}
