//! The open-files limit (`RLIMIT_NOFILE`) against `--max-connections`.
//!
//! Each connection costs a file descriptor, and the soft limit is often
//! 1024 (systemd's default, containerd 2.x) while `--max-connections` is
//! 4096: `accept` would fail with `EMFILE` long before the caps, which
//! decide fairly who gives way, come into play. So at startup `gateway
//! serve` raises the soft limit to the hard one, and when the caps still do
//! not fit it says so and lowers the connection cap in force, keeping
//! [`RESERVED_DESCRIPTORS`] for everything else.

/// Descriptors kept for what is not a webhook connection: stdio, the
/// runtime's epoll and wakers, the listeners, connections to user-service
/// and to `/metrics`, name lookups. A few dozen in practice; the rest is
/// margin.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// The open-files limit as found and as left at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorLimit {
    /// The soft limit before we raised it.
    pub was: u64,
    /// The soft limit in force now.
    pub soft: u64,
    /// The hard limit (the most the soft one can be raised to).
    pub hard: u64,
}

impl DescriptorLimit {
    /// The most webhook connections that fit beside
    /// [`RESERVED_DESCRIPTORS`] (at least 1).
    pub fn connections_that_fit(&self) -> usize {
        usize::try_from(self.soft.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX).max(1)
    }
}

/// Raises the soft open-files limit to the hard one. `None` where there is
/// no such limit (not Unix) or it cannot be read; a failure to raise it
/// leaves the old limit in force and is logged.
pub fn raise_to_hard_limit() -> Option<DescriptorLimit> {
    #[cfg(unix)]
    {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok(limits) => limits,
            Err(error) => {
                tracing::warn!(%error, "cannot read the open-files limit (RLIMIT_NOFILE)");
                return None;
            }
        };
        if soft >= hard {
            return Some(DescriptorLimit { was: soft, soft, hard });
        }
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => Some(DescriptorLimit { was: soft, soft: hard, hard }),
            Err(error) => {
                // E.g. macOS refuses an unlimited hard limit as the soft one.
                tracing::warn!(%error, soft, hard, "cannot raise the open-files limit (RLIMIT_NOFILE)");
                Some(DescriptorLimit { was: soft, soft, hard })
            }
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The connection cap to serve with: `max_connections`, or fewer when that
/// many would not fit in `limit` (then a warning says so, naming the flag
/// and the fix). Logs the limit either way.
pub fn fit_connections(limit: Option<DescriptorLimit>, max_connections: usize) -> usize {
    let Some(limit) = limit else {
        return max_connections;
    };
    tracing::info!(
        soft = limit.soft,
        hard = limit.hard,
        raised_from = limit.was,
        "open-files limit (RLIMIT_NOFILE)"
    );
    let fits = limit.connections_that_fit();
    if max_connections <= fits {
        return max_connections;
    }
    tracing::warn!(
        max_connections,
        open_files_limit = limit.soft,
        reserved = RESERVED_DESCRIPTORS,
        serving_at_most = fits,
        "--max-connections does not fit in the open-files limit: at most {fits} connections are \
         served (idle ones give way beyond that); raise the hard limit (`ulimit -Hn`, systemd \
         `LimitNOFILE=`) to at least {} or lower --max-connections",
        max_connections as u64 + RESERVED_DESCRIPTORS,
    );
    fits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(soft: u64) -> Option<DescriptorLimit> {
        Some(DescriptorLimit { was: soft, soft, hard: soft })
    }

    #[test]
    fn a_cap_that_fits_with_the_reserve_is_kept() {
        assert_eq!(fit_connections(limit(4096 + RESERVED_DESCRIPTORS), 4096), 4096);
        assert_eq!(fit_connections(None, 4096), 4096);
    }

    #[test]
    fn a_cap_that_does_not_fit_is_lowered_to_what_does() {
        assert_eq!(fit_connections(limit(1024), 4096), 1024 - RESERVED_DESCRIPTORS as usize);
        assert_eq!(fit_connections(limit(10), 4096), 1);
    }
}
