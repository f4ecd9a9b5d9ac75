//! Progress of a run: a bar with counts and rate on a terminal, plain log
//! lines every few seconds otherwise (cron, Kubernetes), so logs stay
//! readable and are not flooded.

use std::{
    io::IsTerminal,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a log line is written when there is no terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// A progress bar on stderr.
    Bar,
    /// `info` log lines.
    Log,
}

impl Display {
    /// A bar when stderr is a terminal, log lines otherwise.
    pub fn detect() -> Self {
        if std::io::stderr().is_terminal() { Self::Bar } else { Self::Log }
    }
}

/// Shared by every task of a run; cheap to clone.
#[derive(Debug, Clone)]
pub struct Progress {
    display: Display,
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    bar: Option<ProgressBar>,
    phase: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    logged: Instant,
}

impl Progress {
    /// Progress shown as `display`.
    pub fn new(display: Display) -> Self {
        let now = Instant::now();
        let state = State { bar: None, phase: "", total: None, done: 0, started: now, logged: now };
        Self { display, state: Arc::new(Mutex::new(state)) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Only counters live behind the lock; a panic elsewhere leaves them usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a phase (`reading Clerk users`, ...) of `total` steps, if known.
    pub fn begin(&self, phase: &'static str, total: Option<u64>) {
        let mut state = self.state();
        if let Some(bar) = state.bar.take() {
            bar.finish();
        }
        let now = Instant::now();
        state.phase = phase;
        state.total = total;
        state.done = 0;
        state.started = now;
        state.logged = now;
        if self.display == Display::Bar {
            let bar = match total {
                Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = if total.is_some() {
                "{prefix:>22} [{bar:40}] {human_pos}/{human_len} {per_sec} eta {eta}"
            } else {
                "{prefix:>22} {spinner} {human_pos} {per_sec}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(phase);
            bar.enable_steady_tick(Duration::from_millis(200));
            state.bar = Some(bar);
        }
    }

    /// Counts `steps` more done.
    pub fn advance(&self, steps: u64) {
        let mut state = self.state();
        state.done += steps;
        if let Some(bar) = &state.bar {
            bar.inc(steps);
        } else if state.logged.elapsed() >= LOG_EVERY {
            state.logged = Instant::now();
            state.log("progress");
        }
    }

    /// Ends the current phase with a last line.
    pub fn finish(&self) {
        let mut state = self.state();
        match state.bar.take() {
            Some(bar) => bar.finish(),
            None => state.log("done"),
        }
    }
}

impl State {
    fn log(&self, what: &str) {
        let seconds = self.started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)] // a rate for humans
        let rate = if seconds > 0.0 { self.done as f64 / seconds } else { 0.0 };
        match self.total {
            Some(total) => tracing::info!(
                phase = self.phase,
                done = self.done,
                total,
                per_second = format!("{rate:.0}"),
                "reconcile {what}"
            ),
            None => tracing::info!(
                phase = self.phase,
                done = self.done,
                per_second = format!("{rate:.0}"),
                "reconcile {what}"
            ),
        }
    }
}
