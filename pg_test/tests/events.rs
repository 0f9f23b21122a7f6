//! Events on `LISTEN gp_recovery`: a listener on the coordinator sees a
//! failover, a job that fails, a recovery job phase by phase, a mirror
//! marked down and its recovery, each in the order the changes committed,
//! and nothing from a submission that rolled back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use gp_recovery_pg_test::{kill9, wait_for, TestCluster};
use postgres::fallible_iterator::FallibleIterator;
use serde_json::Value;

/// A connection that LISTENs on gp_recovery and keeps every payload, in
/// the order they arrive, until dropped.
struct Listener {
    events: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn start(tc: &TestCluster) -> Listener {
        let mut client = tc.coordinator();
        client.batch_execute("LISTEN gp_recovery").unwrap();
        let (events, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (kept, stopped) = (events.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let mut notifications = client.notifications();
                let mut arrived = notifications.timeout_iter(Duration::from_millis(200));
                while let Some(n) = arrived.next().expect("the listening connection") {
                    assert_eq!(n.channel(), "gp_recovery");
                    assert!(n.payload().len() < 8000, "a payload fits NOTIFY's limit");
                    let event: Value = serde_json::from_str(n.payload())
                        .unwrap_or_else(|e| panic!("payload is not JSON ({e}): {}", n.payload()));
                    kept.lock().unwrap().push(event);
                }
            }
        });
        Listener { events, stop, thread: Some(thread) }
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until an event after position `from` matches; returns its position.
    fn wait_for(&self, from: usize, what: &str, matches: impl Fn(&Value) -> bool) -> usize {
        let mut found = None;
        wait_for(30, what, || {
            found = self.events().iter().skip(from).position(&matches).map(|i| i + from);
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("{what}"))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            // A panic in the listener (a payload that is not JSON) fails the test.
            if t.join().is_err() && !std::thread::panicking() {
                panic!("the listener failed");
            }
        }
    }
}

/// A history row's event: its name, dbid and "role status mode" after the change.
fn segment_event(e: &Value, event: &str, dbid: i16, state: &str) -> bool {
    e["event"] == event
        && e["dbid"] == i64::from(dbid)
        && e["content"] == 0
        && format!("{} {} {}", str_of(e, "role"), str_of(e, "status"), str_of(e, "mode")) == state
        && e["desc"].as_str().is_some_and(|d| d.contains(&format!("dbid {dbid}")))
        && e["time"].is_string()
}

fn str_of<'a>(e: &'a Value, key: &str) -> &'a str {
    e[key].as_str().unwrap_or("")
}

/// The (state, phase) of each event of one job, in order.
fn job_events(events: &[Value], job: i64) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["event"] == "job" && e["job_id"] == job)
        .map(|e| (str_of(e, "state").to_string(), str_of(e, "phase").to_string()))
        .collect()
}

/// Position of a job's first event in the given state (and phase, if given).
fn job_event_at(events: &[Value], job: i64, state: &str, phase: Option<&str>) -> usize {
    events
        .iter()
        .position(|e| {
            e["event"] == "job" && e["job_id"] == job && e["state"] == state && phase.is_none_or(|p| e["phase"] == p)
        })
        .unwrap_or_else(|| panic!("job {job}: no event {state} {phase:?} in {events:#?}"))
}

/// A recovery job's events: queued, running through phases in the order of
/// gp_recovery_phases(), then succeeded; every event names the job's segment.
fn assert_job_ran(tc: &TestCluster, events: &[Value], job: i64, dbid: i16) {
    let order: Vec<String> = tc
        .coordinator()
        .query("SELECT phase FROM gp_recovery_phases() WHERE recovery_type = 'incremental' ORDER BY position", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let seen = job_events(events, job);
    assert_eq!(seen.first(), Some(&("queued".to_string(), "queued".to_string())), "{seen:?}");
    assert_eq!(seen.last(), Some(&("succeeded".to_string(), "done".to_string())), "{seen:?}");
    let running: Vec<&str> = seen[1..seen.len() - 1]
        .iter()
        .map(|(state, phase)| {
            assert_eq!(state, "running", "{seen:?}");
            phase.as_str()
        })
        .collect();
    assert_eq!(running.first(), Some(&"checking host"), "{seen:?}");
    let positions: Vec<usize> = running
        .iter()
        .map(|p| order.iter().position(|o| o == p).unwrap_or_else(|| panic!("{p} is no incremental phase")))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "phases in table order, each once: {running:?}");
    for p in ["marking up", "catching up", "synchronizing"] {
        assert!(running.contains(&p), "{p} in {running:?}");
    }
    for e in events.iter().filter(|e| e["event"] == "job" && e["job_id"] == job) {
        assert_eq!((e["dbid"].as_i64(), e["content"].as_i64()), (Some(i64::from(dbid)), Some(0)), "{e}");
        assert_eq!(e["recovery_type"], "incremental");
        assert!(e["error"].is_null() && e["time"].is_string(), "{e}");
    }
}

#[test]
fn fault_tolerance_decisions_and_job_changes_are_sent_in_commit_order() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    let listener = Listener::start(&tc);

    // A failover: both rows of the content, in one transaction.
    let (old, new) = tc.fail_over(0);
    let failed = listener.wait_for(0, "the failover's events", |e| segment_event(e, "failover", old, "m d n"));
    let promoted = listener.wait_for(0, "the failover's events", |e| segment_event(e, "failover", new, "p u n"));
    assert_eq!(failed.abs_diff(promoted), 1, "{:#?}", listener.events());

    // A submission that rolls back sends nothing.
    let mut c = tc.coordinator();
    let mut tx = c.transaction().unwrap();
    let rolled_back: i64 = tx.query_one(&format!("SELECT gp_recover_segment({old})"), &[]).unwrap().get(0);
    tx.rollback().unwrap();

    // A job that fails (a superuser's hand-written row the worker refuses):
    // its error comes with it.
    let bad: i64 = c
        .query_one(
            &format!(
                "INSERT INTO gp_recovery_job (recovery_type, dbid, content, relocate, source_dbid, source_hostname, \
                   source_address, source_port, source_datadir, target_hostname, target_address, target_port, \
                   target_datadir, original) \
                 SELECT 'incremental', s.dbid, s.content, false, p.dbid, p.hostname, p.address, p.port, p.datadir, \
                        s.hostname, s.address, s.port, '/var/tmp/elsewhere', pg_catalog.to_jsonb(s) \
                   FROM gp_segment_configuration s, gp_segment_configuration p WHERE s.dbid = {old} AND p.dbid = {new} \
                 RETURNING job_id"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(tc.wait_job(bad).unwrap_err().contains("refused"));
    let end = listener.wait_for(0, "the failed job's end", |e| e["job_id"] == bad && e["state"] == "failed");
    let error: String = c.query_one("SELECT error FROM gp_recovery_job WHERE job_id = $1", &[&bad]).unwrap().get(0);
    let events = listener.events();
    assert_eq!(events[end]["error"], error.chars().take(1000).collect::<String>());
    assert_eq!(
        job_events(&events, bad).iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
        ["queued", "running", "failed"],
        "{events:#?}"
    );

    // The recovery: queued, running phase by phase, the segment marked up
    // with the phase after it, synchronized by the fault tolerance
    // service, then succeeded.
    let job = tc.submit(&format!("SELECT gp_recover_segment({old})"));
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
    let done = listener.wait_for(0, "the job's end", |e| e["job_id"] == job && e["state"] == "succeeded");
    let events = listener.events();
    assert_job_ran(&tc, &events, job, old);
    assert!(events.iter().all(|e| e["job_id"] != rolled_back), "{events:#?}");
    let queued = job_event_at(&events, job, "queued", None);
    let up = listener.wait_for(queued, "the segment marked up", |e| segment_event(e, "segment_up", old, "m u n"));
    let catching_up = job_event_at(&events, job, "running", Some("catching up"));
    assert_eq!(up + 1, catching_up, "marked up in the transaction that enters the next phase: {events:#?}");
    for (dbid, state) in [(old, "m u s"), (new, "p u s")] {
        let synced = listener.wait_for(up, "the pair synchronized", |e| segment_event(e, "sync_on", dbid, state));
        assert!(promoted < queued && synced < done, "{events:#?}");
    }

    // The mirror dies: the primary leaves sync mode and the mirror is
    // marked down, in one transaction; then it is recovered.
    let from = listener.events().len();
    kill9(tc.primary(0));
    let sync_off = listener.wait_for(from, "sync off", |e| segment_event(e, "sync_off", new, "p u n"));
    let down = listener.wait_for(from, "the mirror marked down", |e| segment_event(e, "mirror_down", old, "m d n"));
    assert_eq!(sync_off + 1, down, "{:#?}", listener.events());
    let job = tc.submit(&format!("SELECT gp_recover_segment({old})"));
    assert_eq!(tc.wait_job(job).unwrap(), "succeeded");
    listener.wait_for(down, "the job's end", |e| e["job_id"] == job && e["state"] == "succeeded");
    let events = listener.events();
    assert_job_ran(&tc, &events, job, old);
    let up = listener.wait_for(down, "the mirror up again", |e| segment_event(e, "segment_up", old, "m u n"));
    listener.wait_for(up, "synchronized again", |e| segment_event(e, "sync_on", new, "p u s"));

    // Every event of the history is one of the documented names.
    for e in &events {
        let name = str_of(e, "event");
        assert!(
            ["job", "failover", "mirror_down", "sync_off", "sync_on", "segment_up"].contains(&name),
            "unexpected event {e}"
        );
    }
}

#[test]
fn a_canceled_queued_job_reports_both_states() {
    let tc = TestCluster::new(1);
    tc.set_fts(1, 2, 2, 2);
    let (old, _) = tc.fail_over(0);
    let listener = Listener::start(&tc);
    let mut c = tc.coordinator();
    let mut tx = c.transaction().unwrap();
    let job: i64 = tx.query_one(&format!("SELECT gp_recover_segment({old})"), &[]).unwrap().get(0);
    assert!(tx.query_one("SELECT gp_recovery_cancel($1)", &[&job]).unwrap().get::<_, bool>(0));
    tx.commit().unwrap();
    listener.wait_for(0, "the cancel", |e| e["job_id"] == job && e["state"] == "canceled");
    let events = listener.events();
    assert_eq!(
        job_events(&events, job),
        [("queued".to_string(), "queued".to_string()), ("canceled".to_string(), "queued".to_string())]
    );
    let canceled = &events[job_event_at(&events, job, "canceled", None)];
    assert!(str_of(canceled, "error").starts_with("canceled by "), "{canceled}");
    assert_eq!(canceled["cancel_requested"], false);
}
