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

/// The bar when the total is known: counts, rate and time left.
const BAR_TEMPLATE: &str = "{prefix:>20} [{bar:40}] {human_pos}/{human_len} {rate} eta {eta}";
/// Without a total: a spinner, the count and the rate.
const SPINNER_TEMPLATE: &str = "{prefix:>20} {spinner} {human_pos} {rate}";

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
            finish_bar(&bar);
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
            let template = if total.is_some() { BAR_TEMPLATE } else { SPINNER_TEMPLATE };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> ").with_key("rate", rate));
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
            Some(bar) => finish_bar(&bar),
            None => state.log("done"),
        }
    }
}

/// Draws the bar one last time and moves below it, so what follows (the next
/// phase, the summary) starts on a line of its own.
fn finish_bar(bar: &ProgressBar) {
    bar.finish();
    eprintln!();
}

/// `{rate}`: steps per second, whole.
fn rate(state: &indicatif::ProgressState, out: &mut dyn std::fmt::Write) {
    let _ = write!(out, "{:.0}/s", state.per_sec());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_templates_are_valid() {
        assert!(ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
        assert!(ProgressStyle::with_template(SPINNER_TEMPLATE).is_ok());
    }

    #[test]
    fn each_phase_counts_from_zero() {
        let progress = Progress::new(Display::Log);
        progress.begin("first", Some(10));
        progress.advance(3);
        progress.advance(4);
        assert_eq!(progress.state().done, 7);
        progress.finish();
        progress.begin("second", None);
        let state = progress.state();
        assert_eq!((state.done, state.total, state.phase), (0, None, "second"));
    }
}
