//! Per-client rate limit: a token bucket per client IP.
//!
//! Each client (an IPv4 address, or an IPv6 /64, since one host usually owns
//! a whole /64) has a bucket of `burst` tokens refilled at `per_second`; a
//! request takes one token or is answered 429 with `Retry-After`. Svix
//! retries a 429 later, which is what we want from a sender that is too fast.
//!
//! The client IP is the TCP peer, or with `--trust-forwarded-for` the last
//! `X-Forwarded-For` entry: the one the proxy in front of us appended (any
//! earlier entry was written by the client and proves nothing).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::HeaderMap,
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{config::RateLimit, error::WebhookError, metrics::Metrics};

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Buckets kept before idle ones are swept out (the threshold then grows to
/// twice the survivors, so sweeping stays amortised O(1) per request).
const SWEEP_THRESHOLD: usize = 4096;

/// One client's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug)]
struct Buckets {
    map: HashMap<IpAddr, Bucket>,
    sweep_at: usize,
}

/// Token buckets keyed by client.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<Buckets>,
}

impl RateLimiter {
    /// A limiter for `limit`, or `None` when the limit is off.
    pub fn new(limit: RateLimit) -> Option<Self> {
        limit.is_on().then(|| Self {
            per_second: f64::from(limit.per_second),
            burst: f64::from(limit.burst.max(1)),
            buckets: Mutex::new(Buckets { map: HashMap::new(), sweep_at: SWEEP_THRESHOLD }),
        })
    }

    /// Whether `client` may be served at `now`, or how long until it may. A
    /// request is only charged afterwards, and only if it failed (see
    /// [`limit`]).
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        self.with_bucket(client, now, true, |bucket, per_second| {
            if bucket.tokens >= 1.0 {
                Ok(())
            } else {
                Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
            }
        })
    }

    /// Takes a token from `client`'s bucket (never below empty).
    pub fn charge(&self, client: IpAddr, now: Instant) {
        self.with_bucket(client, now, false, |bucket, _| bucket.tokens = (bucket.tokens - 1.0).max(0.0));
    }

    /// Runs `f` on `client`'s bucket, refilled up to `now`; with `sweep`, first
    /// drops refilled buckets if there are many.
    fn with_bucket<T>(
        &self,
        client: IpAddr,
        now: Instant,
        sweep: bool,
        f: impl FnOnce(&mut Bucket, f64) -> T,
    ) -> T {
        let key = bucket_key(client);
        // A panic elsewhere cannot leave a bucket half-updated in a way that
        // matters: at worst one client gets a token more or less.
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if sweep && buckets.map.len() >= buckets.sweep_at {
            self.sweep(&mut buckets, now);
        }
        let bucket = buckets.map.entry(key).or_insert(Bucket { tokens: self.burst, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.updated = now;
        f(bucket, self.per_second)
    }

    /// How many clients have a bucket (for tests and debugging).
    pub fn tracked_clients(&self) -> usize {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner).map.len()
    }

    /// Drops the buckets that have refilled: a new bucket would be the same.
    fn sweep(&self, buckets: &mut Buckets, now: Instant) {
        let (per_second, burst) = (self.per_second, self.burst);
        buckets.map.retain(|_, bucket| {
            let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
            bucket.tokens + elapsed * per_second < burst
        });
        buckets.sweep_at = (buckets.map.len() * 2).max(SWEEP_THRESHOLD);
    }
}

/// IPv4 addresses (also IPv4-mapped IPv6) are keyed as they are; IPv6 by
/// their /64, so a host cannot dodge the limit by rotating its addresses.
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// The last `X-Forwarded-For` entry, if it is an IP address (a port, as
/// some proxies add, is ignored).
pub fn forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let last_header = headers.get_all(X_FORWARDED_FOR).iter().next_back()?;
    let last = last_header.to_str().ok()?.rsplit(',').next()?.trim();
    last.parse::<IpAddr>().ok().or_else(|| last.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
}

/// What the rate-limit middleware needs.
#[derive(Debug, Clone)]
pub struct RateLimitState {
    /// The buckets.
    pub limiter: Arc<RateLimiter>,
    /// Honour `X-Forwarded-For`.
    pub trust_forwarded_for: bool,
    /// Where refusals are counted, if anywhere.
    pub metrics: Option<Arc<Metrics>>,
}

/// Answers 429 with `Retry-After` when the client's bucket is empty. Only
/// requests answered with a 4xx (forged, malformed, unverifiable) take a
/// token: Svix delivers from a handful of addresses, sometimes in bursts, and
/// a limit on verified deliveries would throttle Clerk itself, while a
/// source that keeps failing is cut off. A request without a known peer (no
/// `ConnectInfo`, e.g. a router driven directly in a test) is not limited.
pub async fn limit(State(state): State<RateLimitState>, request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    let forwarded = if state.trust_forwarded_for { forwarded_for(request.headers()) } else { None };
    let Some(client) = forwarded.or(peer) else {
        return next.run(request).await;
    };
    match state.limiter.check(client, Instant::now()) {
        Ok(()) => {
            let response = next.run(request).await;
            if response.status().is_client_error() {
                state.limiter.charge(client, Instant::now());
            }
            response
        }
        Err(wait) => {
            if let Some(metrics) = &state.metrics {
                metrics.record_rate_limited();
            }
            // Whole seconds, rounded up: `Retry-After: 0` would invite an
            // immediate retry that fails again.
            let retry_after = u32::try_from(wait.as_millis().div_ceil(1000)).unwrap_or(u32::MAX).max(1);
            tracing::debug!(%client, retry_after, "rate limited");
            WebhookError::RateLimited { retry_after }.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn limiter(per_second: u32, burst: u32) -> RateLimiter {
        match RateLimiter::new(RateLimit { per_second, burst }) {
            Some(limiter) => limiter,
            None => panic!("the limit is on"),
        }
    }

    /// One failed request: checked, then charged.
    fn take(limiter: &RateLimiter, client: IpAddr, now: Instant) -> Result<(), Duration> {
        limiter.check(client, now)?;
        limiter.charge(client, now);
        Ok(())
    }

    #[test]
    fn checking_alone_takes_nothing() {
        let limiter = limiter(1, 1);
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(limiter.check(CLIENT, now), Ok(()));
        }
    }

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));

    #[test]
    fn a_burst_passes_then_requests_wait_for_the_refill() {
        let limiter = limiter(10, 3);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(take(&limiter, CLIENT, start), Ok(()));
        }
        let wait = take(&limiter, CLIENT, start).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        assert_eq!(take(&limiter, CLIENT, start + Duration::from_millis(100)), Ok(()));
    }

    #[test]
    fn clients_have_separate_buckets() {
        let limiter = limiter(1, 1);
        let now = Instant::now();
        assert_eq!(take(&limiter, CLIENT, now), Ok(()));
        assert!(take(&limiter, CLIENT, now).is_err());
        assert_eq!(take(&limiter, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)), now), Ok(()));
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        let limiter = limiter(1, 1);
        let now = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::7".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(take(&limiter, a, now), Ok(()));
        assert!(take(&limiter, b, now).is_err());
        assert_eq!(take(&limiter, other, now), Ok(()));
    }

    #[test]
    fn zero_turns_the_limit_off() {
        assert!(RateLimiter::new(RateLimit::OFF).is_none());
    }

    #[test]
    fn refilled_buckets_are_swept() {
        let limiter = limiter(1000, 1);
        let start = Instant::now();
        for n in 0..SWEEP_THRESHOLD as u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
            assert_eq!(take(&limiter, ip, start), Ok(()));
        }
        assert_eq!(limiter.tracked_clients(), SWEEP_THRESHOLD);
        let _ = take(&limiter, CLIENT, start + Duration::from_secs(1));
        assert_eq!(limiter.tracked_clients(), 1);
    }

    #[test]
    fn the_last_forwarded_for_entry_is_the_client() {
        let mut headers = HeaderMap::new();
        assert_eq!(forwarded_for(&headers), None);
        headers.append(X_FORWARDED_FOR, "198.51.100.1, 203.0.113.9".parse().unwrap());
        assert_eq!(forwarded_for(&headers), Some(CLIENT));
        headers.append(X_FORWARDED_FOR, "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(forwarded_for(&headers), "2001:db8::1".parse().ok());
        headers.insert(X_FORWARDED_FOR, "unknown".parse().unwrap());
        assert_eq!(forwarded_for(&headers), None);
    }
}
