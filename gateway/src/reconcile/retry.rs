//! How long to wait before trying again: exponential backoff, capped.

use std::time::Duration;

/// Attempts and backoff for one kind of call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// Wait after the first failure; doubled after each further one.
    pub first_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// Clerk's Backend API: 8 attempts over about a minute and a half, so a
    /// short outage or deploy on Clerk's side does not end the run.
    pub const CLERK: Self =
        Self { attempts: 8, first_backoff: Duration::from_millis(500), max_backoff: Duration::from_secs(30) };

    /// user-service: 6 attempts over about 15 s (a restart, a shed call).
    pub const USER_SERVICE: Self =
        Self { attempts: 6, first_backoff: Duration::from_millis(250), max_backoff: Duration::from_secs(5) };

    /// The wait after failed attempt number `failed` (1-based).
    pub fn backoff(&self, failed: u32) -> Duration {
        let doublings = failed.saturating_sub(1).min(20);
        self.first_backoff.saturating_mul(1 << doublings).min(self.max_backoff)
    }

    /// Whether another attempt may follow failed attempt number `failed`.
    pub fn may_retry(&self, failed: u32) -> bool {
        failed < self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            attempts: 5,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        let waits: Vec<u128> = (1..=6).map(|n| policy.backoff(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert!(policy.may_retry(4));
        assert!(!policy.may_retry(5));
        assert_eq!(RetryPolicy::CLERK.backoff(u32::MAX), RetryPolicy::CLERK.max_backoff);
    }
}
