//! The enqueue progress bar: on stderr, and only when stderr is a terminal,
//! so piped or logged output never contains bar redraws.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar that may be absent; every method is a no-op then.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar counting tasks up to `total`, or a spinner with a count when
    /// the total is unknown (stdin).
    pub fn new(total: Option<u64>) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None };
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
        Progress { bar: Some(bar) }
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
