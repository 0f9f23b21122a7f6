//! Watching submitted jobs until they end: a progress bar per job on a
//! terminal, plain lines otherwise (-s, a pipe), or nothing
//! (--no-progress); Ctrl-C asks whether to cancel them, as gprecoverseg
//! asks whether to terminate, and cancels them through gp_recovery_cancel.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gp_recovery_core::job::Phase;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::conn::Db;
use crate::jobs::{self, progress_text, JobRow};
use crate::log::Log;
use crate::{prompt, ToolError};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Bars,
    Lines,
    Off,
}

/// How often the jobs are read: the worker updates them twice a second.
const POLL: Duration = Duration::from_millis(500);

/// What Greenplum says before it asks whether to stop on Ctrl-C.
const INTERRUPT_BANNER: &str =
    "It is not recommended to terminate a recovery procedure midway. However, if you choose \
                                to proceed, you will need to run either gprecoverseg --differential or gprecoverseg -F \
                                to start a new recovery process the next time.";

/// SIGINT and SIGTERM as flags the watch loop reads, so a signal never
/// interrupts a statement half way; SIGHUP ignored, as gprecoverseg does,
/// so a closed ssh session does not end the watch.
pub struct Signals {
    interrupt: Arc<AtomicBool>,
    terminate: Arc<AtomicBool>,
    _hangup: Arc<AtomicBool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }
}

impl Signals {
    pub fn install() -> Result<Signals, ToolError> {
        let flag = |sig| -> Result<Arc<AtomicBool>, ToolError> {
            let f = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(sig, f.clone())?;
            Ok(f)
        };
        Ok(Signals { interrupt: flag(SIGINT)?, terminate: flag(SIGTERM)?, _hangup: flag(SIGHUP)? })
    }

    /// The signal received since the last call, SIGTERM first.
    fn take(&self) -> Option<Signal> {
        if self.terminate.swap(false, Ordering::SeqCst) {
            Some(Signal::Terminate)
        } else if self.interrupt.swap(false, Ordering::SeqCst) {
            Some(Signal::Interrupt)
        } else {
            None
        }
    }

    fn pending(&self) -> bool {
        self.terminate.load(Ordering::SeqCst) || self.interrupt.load(Ordering::SeqCst)
    }
}

/// The jobs as they ended (or stood, if the watch was given up), and
/// whether the user had them canceled.
pub struct Watched {
    pub jobs: Vec<JobRow>,
    pub interrupted: bool,
}

/// Waits until every job in `ids` has ended, showing progress.
pub fn watch(db: &mut Db, log: &Log, ids: &[i64], progress: Progress, signals: &Signals) -> Result<Watched, ToolError> {
    let mut display = Display::new(progress, log)?;
    let result = watch_loop(db, log, ids, &mut display, signals);
    display.finish(log);
    result
}

fn watch_loop(
    db: &mut Db,
    log: &Log,
    ids: &[i64],
    display: &mut Display,
    signals: &Signals,
) -> Result<Watched, ToolError> {
    let mut seen: HashMap<i64, JobRow> = HashMap::new();
    let mut interrupted = false;
    loop {
        for row in jobs::fetch(db, log, ids)? {
            seen.insert(row.job_id, row);
        }
        let current: Vec<JobRow> = ids.iter().filter_map(|id| seen.get(id).cloned()).collect();
        display.show(&current, log)?;
        // A job whose row is gone was removed after gp_recovery.job_retention: it ended.
        if ids.iter().all(|id| seen.get(id).is_none_or(JobRow::ended)) {
            return Ok(Watched { jobs: current, interrupted });
        }
        if let Some(signal) = signals.take() {
            // Greenplum's words, its spelling included: scripts grep for them.
            log.warn(&format!("Recieved {} signal, terminating gprecoverseg", signal.name()));
            if interrupted {
                // Greenplum's second Ctrl-C ends it; the jobs back out on the server anyway.
                log.warn("Not waiting for the canceled jobs to back out; gp_recovery_progress shows them");
                return Ok(Watched { jobs: current, interrupted });
            }
            if confirm(signal, display)? {
                interrupted = true;
                cancel(db, log, &current)?;
            }
        }
        let until = Instant::now() + POLL;
        while Instant::now() < until && !signals.pending() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// SIGTERM, or SIGINT without a terminal to ask on, stops at once;
/// otherwise the user is asked, as gprecoverseg asks.
fn confirm(signal: Signal, display: &Display) -> Result<bool, ToolError> {
    if signal == Signal::Terminate || !std::io::stdin().is_terminal() {
        return Ok(true);
    }
    Ok(display.suspend(|| prompt::ask(Some(INTERRUPT_BANNER), "Continue terminating gprecoverseg", false))?)
}

fn cancel(db: &mut Db, log: &Log, jobs: &[JobRow]) -> Result<(), ToolError> {
    for j in jobs.iter().filter(|j| !j.ended()) {
        log.info(&format!("Canceling recovery job {} of {}", j.job_id, j.label()));
        db.query(log, "SELECT gp_recovery_cancel($1)", &[&j.job_id])?;
        db.relay_notices(log);
    }
    Ok(())
}

/// The shape a bar is drawn in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Bytes against a known total: bar, rate, ETA.
    Bytes,
    /// No total known yet (a rewind before it counts, a phase without a copy).
    Spinner,
    Ended,
}

const BYTES_TEMPLATE: &str =
    "{prefix:24} [{bar:30}] {bytes:>10}/{total_bytes:10} {binary_bytes_per_sec:>12} ETA {eta:>4} {msg}";
const SPINNER_TEMPLATE: &str = "{prefix:24} {spinner} {msg}";
const ENDED_TEMPLATE: &str = "{prefix:24} {msg}";

/// The bar styles, in Shape order: bytes, spinner, ended.
fn styles() -> Result<[ProgressStyle; 3], ToolError> {
    let style = |t: &str| {
        ProgressStyle::with_template(t)
            .map(|s| s.progress_chars("=> "))
            .map_err(|e| ToolError::Terminal(format!("progress bar template: {e}")))
    };
    Ok([style(BYTES_TEMPLATE)?, style(SPINNER_TEMPLATE)?, style(ENDED_TEMPLATE)?])
}

struct Bars {
    multi: MultiProgress,
    bars: HashMap<i64, (ProgressBar, Shape)>,
    styles: [ProgressStyle; 3],
}

enum Display {
    Bars(Box<Bars>),
    /// The last line shown per job, so a line is written only when it changes.
    Lines(HashMap<i64, String>),
    Off,
}

impl Display {
    fn new(progress: Progress, log: &Log) -> Result<Display, ToolError> {
        Ok(match progress {
            Progress::Off => Display::Off,
            Progress::Lines => Display::Lines(HashMap::new()),
            Progress::Bars => {
                let bars = Bars::new(ProgressDrawTarget::stdout())?;
                log.attach(bars.multi.clone());
                Display::Bars(Box::new(bars))
            }
        })
    }

    fn show(&mut self, jobs: &[JobRow], log: &Log) -> Result<(), ToolError> {
        match self {
            Display::Off => {}
            Display::Lines(last) => {
                for j in jobs {
                    let text = progress_text(j);
                    if last.get(&j.job_id) != Some(&text) {
                        log.info(&format!("{}: {text}", j.label()));
                        last.insert(j.job_id, text);
                    }
                }
            }
            Display::Bars(b) => {
                for j in jobs {
                    b.show(j);
                }
            }
        }
        Ok(())
    }

    fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match self {
            Display::Bars(b) => b.multi.suspend(f),
            _ => f(),
        }
    }

    fn finish(self, log: &Log) {
        if let Display::Bars(b) = self {
            for (bar, _) in b.bars.values() {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
            log.detach();
        }
    }
}

impl Bars {
    fn new(target: ProgressDrawTarget) -> Result<Bars, ToolError> {
        Ok(Bars { multi: MultiProgress::with_draw_target(target), bars: HashMap::new(), styles: styles()? })
    }

    fn show(&mut self, j: &JobRow) {
        let Bars { multi, bars, styles } = self;
        let (bar, shape) = bars.entry(j.job_id).or_insert_with(|| {
            let bar = multi.add(ProgressBar::no_length().with_style(styles[1].clone()).with_prefix(j.label()));
            (bar, Shape::Spinner)
        });
        if *shape == Shape::Ended {
            return;
        }
        let want = match (j.ended(), j.bytes_total) {
            (true, _) => Shape::Ended,
            (false, Some(t)) if t > 0 => Shape::Bytes,
            _ => Shape::Spinner,
        };
        if want != *shape {
            let style = match want {
                Shape::Bytes => &styles[0],
                Shape::Spinner => &styles[1],
                Shape::Ended => &styles[2],
            };
            bar.set_style(style.clone());
            *shape = want;
        }
        match want {
            Shape::Ended => bar.finish_with_message(progress_text(j)),
            Shape::Bytes => {
                bar.set_length(u64::try_from(j.bytes_total.unwrap_or(0)).unwrap_or(0));
                bar.set_position(u64::try_from(j.bytes_done.unwrap_or(0)).unwrap_or(0));
                // Once copied, the phases after it say more than the bytes.
                let copying = j.phase == Phase::Copying.as_str() || j.phase == Phase::Rewinding.as_str();
                bar.set_message(if copying { j.stage() } else { progress_text(j) });
            }
            Shape::Spinner => {
                bar.set_message(progress_text(j));
                bar.tick();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_templates_parse() {
        assert!(styles().is_ok());
    }

    fn job(state: &str, phase: &str, done: Option<i64>, total: Option<i64>) -> JobRow {
        JobRow {
            job_id: 7,
            dbid: 3,
            hostname: "sdw1".into(),
            port: 7002,
            datadir: "/data/m0".into(),
            recovery_type: "full".into(),
            running_mode: None,
            state: state.into(),
            phase: phase.into(),
            bytes_done: done,
            bytes_total: total,
            wal_remaining: None,
            error: None,
            logfile: None,
        }
    }

    #[test]
    fn a_bar_follows_its_job_from_queue_to_end() {
        let mut bars = Bars::new(ProgressDrawTarget::hidden()).unwrap();
        bars.show(&job("queued", "queued", None, None));
        assert_eq!(bars.bars[&7].1, Shape::Spinner, "no total yet");
        bars.show(&job("running", "copying", Some(1 << 20), Some(4 << 20)));
        let (bar, shape) = &bars.bars[&7];
        assert_eq!((*shape, bar.length(), bar.position()), (Shape::Bytes, Some(4 << 20), 1 << 20));
        assert_eq!(bar.prefix(), "sdw1 (dbid 3)");
        assert_eq!(bar.message(), "copying");
        bars.show(&job("succeeded", "done", Some(4 << 20), Some(4 << 20)));
        let (bar, shape) = &bars.bars[&7];
        assert_eq!(*shape, Shape::Ended);
        assert!(bar.is_finished());
        assert_eq!(bar.message(), "succeeded");
        bars.show(&job("running", "copying", Some(0), Some(1)));
        assert!(bars.bars[&7].0.is_finished(), "an ended bar stays ended");
    }

    #[test]
    fn signals_become_flags_read_once() {
        let signals = Signals::install().unwrap();
        assert_eq!(signals.take(), None);
        signal_hook::low_level::raise(SIGTERM).unwrap();
        assert!(signals.pending());
        assert_eq!(signals.take(), Some(Signal::Terminate));
        assert_eq!(signals.take(), None, "each signal is taken once");
        signal_hook::low_level::raise(SIGHUP).unwrap();
        assert_eq!(signals.take(), None, "SIGHUP is ignored");
    }
}
