//! The enqueue progress bar: on stderr, and only when stderr is a terminal,
//! so piped or logged output never contains bar redraws. And the one line
//! that says a producer waits for space, terminal or not.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long a producer waits for space before it says so.
pub const SAY_WAITING_AFTER: Duration = Duration::from_secs(1);

/// How long before it says so again: a worker slower than the input makes
/// short waits one after another, which must not become a line each.
const SAY_AGAIN_AFTER: Duration = Duration::from_secs(30);

/// A progress bar that may be absent; every bar method is a no-op then.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    said_waiting: Option<Instant>,
}

impl Progress {
    /// A bar counting tasks up to `total`, or a spinner with a count when
    /// the total is unknown (stdin).
    pub fn new(total: Option<u64>) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress {
                bar: None,
                said_waiting: None,
            };
        }
        let (bar, template) = match total {
            Some(n) => (
                ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
                "{bar:30} {human_pos}/{human_len} tasks enqueued in {elapsed} ({per_sec}) {msg}",
            ),
            None => (
                ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
                "{spinner} {human_pos} tasks enqueued in {elapsed} ({per_sec}) {msg}",
            ),
        };
        // A bad template is our bug, not the user's: fall back to the default.
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress {
            bar: Some(bar),
            said_waiting: None,
        }
    }

    /// Counts `tasks` more, and shows the queue's fullness after them: the
    /// broker's pacing signal, which makes backpressure visible.
    pub fn advance(&self, tasks: u64, depth: u64, capacity: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(tasks);
            bar.set_message(format!("queue {depth}/{capacity}"));
        }
    }

    /// Counts `tasks` more done (a job's outcomes).
    pub fn advance_done(&self, tasks: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(tasks);
        }
    }

    /// Shows how long the producer has waited for credit in all.
    pub fn waited(&self, waited: Duration) {
        if let Some(bar) = &self.bar {
            let msg = bar.message();
            let base = msg.split(", waited").next().unwrap_or_default().to_owned();
            bar.set_message(format!(
                "{base}, waited {:.1}s for room",
                waited.as_secs_f64()
            ));
        }
    }

    /// Says on stderr that the producer waits for space in `queue`, at
    /// most every [`SAY_AGAIN_AFTER`]. Also without a terminal: silence
    /// would make a pipeline paused by backpressure look hung. Not on
    /// stdout, which holds the ids scripts read.
    pub fn waiting_for_space(&mut self, queue: &str, depth: u64, capacity: u64) {
        if self
            .said_waiting
            .is_some_and(|at| at.elapsed() < SAY_AGAIN_AFTER)
        {
            return;
        }
        self.said_waiting = Some(Instant::now());
        let line = format!(
            "waiting for space in queue {queue:?} ({depth}/{capacity} tasks): \
             start a worker, or create the queue with a larger --capacity"
        );
        self.suspend(|| {
            let _ = writeln!(std::io::stderr(), "{line}");
        });
    }

    /// Runs `f` with the bar hidden, so stdout writes to the same terminal
    /// do not tear it.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
