//! `svix-storm`: deliver signed Clerk events the way Svix does (at least once,
//! unordered, retried on Svix's schedule), optionally while processes or the
//! database fail, then check that user-service holds exactly the state the
//! delivered events describe.
//!
//! - [`plan`]: the events and what each user should end up as;
//! - [`deliver`]: the Svix-like sender;
//! - [`check`]: the comparison over gRPC;
//! - [`cluster`]: release binaries that can be killed and restarted;
//! - [`faults`]: the faults injected while a storm runs.

pub mod check;
pub mod cluster;
pub mod deliver;
pub mod faults;
pub mod plan;
pub mod rng;

use std::fmt;

/// The storm's one-line result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Distinct messages (svix-ids).
    pub events: usize,
    /// HTTP requests sent (retries, duplicates and races included).
    pub attempts: usize,
    /// Messages acknowledged with a 2xx in time.
    pub delivered: usize,
    /// Messages whose every attempt failed.
    pub gave_up: usize,
    /// Acknowledged effects missing.
    pub lost: usize,
    /// Effects applied twice.
    pub doubled: usize,
    /// States no event describes.
    pub wrong: usize,
}

impl Summary {
    /// Combines a delivery report and its verdict.
    pub fn new(report: &deliver::Report, verdict: &check::Verdict) -> Self {
        Self {
            events: report.records.len(),
            attempts: report.attempts(),
            delivered: report.delivered(),
            gave_up: report.gave_up(),
            lost: verdict.lost,
            doubled: verdict.doubled,
            wrong: verdict.wrong,
        }
    }

    /// True when nothing was lost, doubled or wrong.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.doubled == 0 && self.wrong == 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "events {}, attempts {}, delivered {}, gave up {}, lost {}, doubled {}, wrong {}",
            self.events, self.attempts, self.delivered, self.gave_up, self.lost, self.doubled, self.wrong
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_one_line_in_the_documented_shape() {
        let summary = Summary { events: 10, attempts: 12, delivered: 10, ..Summary::default() };
        assert_eq!(
            summary.to_string(),
            "events 10, attempts 12, delivered 10, gave up 0, lost 0, doubled 0, wrong 0"
        );
        assert!(summary.is_clean());
    }
}
