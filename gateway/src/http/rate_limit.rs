//! Per-client rate limit: a token bucket per client IP.
//!
//! Each client (an IPv4 address, or an IPv6 /64, since one host usually owns
//! a whole /64) has a bucket of `burst` tokens refilled at `per_second`; a
//! request takes one token or is answered 429 with `Retry-After`. Svix
//! retries a 429 later, which is what we want from a sender that is too fast.
//!
//! The token is taken when the request arrives, before its body is read, and
//! given back if the answer is not a 4xx: so concurrent requests count (a
//! client cannot start a thousand forgeries at once because none has failed
//! yet), while verified deliveries end up costing nothing.
//!
//! The client IP is the TCP peer, or with `--trusted-proxy-hops N` the `N`th
//! `X-Forwarded-For` entry from the end: the one the outermost of our `N`
//! proxies appended (any earlier entry was written by the client and proves
//! nothing).

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

use crate::{config::RateLimit, error::RequestError, metrics::Metrics};

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

    /// Takes a token from `client`'s bucket at `now`, or says how long until
    /// one is there. A request that turns out well gets it back with
    /// [`RateLimiter::refund`].
    pub fn acquire(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        self.with_bucket(client, now, true, |bucket, per_second| {
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
                Ok(())
            } else {
                Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
            }
        })
    }

    /// Gives a token back to `client`'s bucket (never above the burst).
    pub fn refund(&self, client: IpAddr, now: Instant) {
        let burst = self.burst;
        self.with_bucket(client, now, false, |bucket, _| bucket.tokens = (bucket.tokens + 1.0).min(burst));
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
        let key = client_key(client);
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

/// The key a client is counted under, here and by the connection caps: IPv4
/// addresses (also IPv4-mapped IPv6) as they are; IPv6 by their /64, so a
/// host cannot dodge a limit by rotating its addresses.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// The `X-Forwarded-For` entry `hops` places from the end (over all the
/// header's lines, in order), if there are that many and it is an IP address
/// (a port, as some proxies add, is ignored). `hops` 0 means the header is
/// not trusted at all.
pub fn forwarded_for(headers: &HeaderMap, hops: u32) -> Option<IpAddr> {
    let hops = usize::try_from(hops).ok().filter(|&hops| hops > 0)?;
    let mut entries = Vec::new();
    for line in headers.get_all(X_FORWARDED_FOR) {
        entries.extend(line.to_str().ok()?.split(',').map(str::trim));
    }
    let entry = *entries.len().checked_sub(hops).and_then(|index| entries.get(index))?;
    entry.parse::<IpAddr>().ok().or_else(|| entry.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
}

/// The client a request is counted for: the `X-Forwarded-For` entry of the
/// outermost of `hops` trusted proxies, else the TCP peer.
pub fn client_ip(headers: &HeaderMap, peer: Option<IpAddr>, hops: u32) -> Option<IpAddr> {
    forwarded_for(headers, hops).or(peer)
}

/// What the rate-limit middleware needs.
#[derive(Debug, Clone)]
pub struct RateLimitState {
    /// The buckets.
    pub limiter: Arc<RateLimiter>,
    /// Proxies in front that append to `X-Forwarded-For` (0: ignore it).
    pub trusted_proxy_hops: u32,
    /// Where refusals are counted, if anywhere.
    pub metrics: Option<Arc<Metrics>>,
}

/// Answers 429 with `Retry-After` when the client's bucket is empty. Every
/// request takes a token on arrival; only those answered with a 4xx (forged,
/// malformed, unverifiable) keep it. Svix delivers from a handful of
/// addresses, sometimes in bursts, and a limit on verified deliveries would
/// throttle Clerk itself, while a source that keeps failing is cut off, and
/// cannot dodge that by sending its forgeries all at once. A request without
/// a known peer (no `ConnectInfo`, e.g. a router driven directly in a test)
/// is not limited.
pub async fn limit(State(state): State<RateLimitState>, request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    let Some(client) = client_ip(request.headers(), peer, state.trusted_proxy_hops) else {
        return next.run(request).await;
    };
    match state.limiter.acquire(client, Instant::now()) {
        Ok(()) => {
            let response = next.run(request).await;
            if !response.status().is_client_error() {
                state.limiter.refund(client, Instant::now());
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
            RequestError::RateLimited { retry_after }.into_response()
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

    /// One failed request: the token taken on arrival is kept.
    fn take(limiter: &RateLimiter, client: IpAddr, now: Instant) -> Result<(), Duration> {
        limiter.acquire(client, now)
    }

    #[test]
    fn a_refunded_request_costs_nothing() {
        let limiter = limiter(1, 1);
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(limiter.acquire(CLIENT, now), Ok(()));
            limiter.refund(CLIENT, now);
        }
    }

    #[test]
    fn requests_in_progress_hold_their_tokens() {
        let limiter = limiter(1, 3);
        let now = Instant::now();
        // Three requests arrive before any has been answered.
        for _ in 0..3 {
            assert_eq!(limiter.acquire(CLIENT, now), Ok(()));
        }
        assert!(limiter.acquire(CLIENT, now).is_err());
    }

    #[test]
    fn refunds_never_fill_a_bucket_above_its_burst() {
        let limiter = limiter(1, 2);
        let now = Instant::now();
        limiter.refund(CLIENT, now);
        limiter.refund(CLIENT, now);
        for _ in 0..2 {
            assert_eq!(limiter.acquire(CLIENT, now), Ok(()));
        }
        assert!(limiter.acquire(CLIENT, now).is_err());
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
    fn with_one_hop_the_last_forwarded_for_entry_is_the_client() {
        let mut headers = HeaderMap::new();
        assert_eq!(forwarded_for(&headers, 1), None);
        headers.append(X_FORWARDED_FOR, "198.51.100.1, 203.0.113.9".parse().unwrap());
        assert_eq!(forwarded_for(&headers, 1), Some(CLIENT));
        headers.append(X_FORWARDED_FOR, "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(forwarded_for(&headers, 1), "2001:db8::1".parse().ok());
        headers.insert(X_FORWARDED_FOR, "unknown".parse().unwrap());
        assert_eq!(forwarded_for(&headers, 1), None);
    }

    #[test]
    fn with_two_hops_the_entry_before_the_inner_proxy_is_the_client() {
        let mut headers = HeaderMap::new();
        headers.append(X_FORWARDED_FOR, "192.0.2.66, 203.0.113.9".parse().unwrap());
        headers.append(X_FORWARDED_FOR, "10.0.0.2".parse().unwrap());
        assert_eq!(forwarded_for(&headers, 2), Some(CLIENT));
        assert_eq!(forwarded_for(&headers, 3), "192.0.2.66".parse().ok());
    }

    #[test]
    fn too_few_entries_or_zero_hops_fall_back_to_the_peer() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, "203.0.113.9".parse().unwrap());
        assert_eq!(client_ip(&headers, Some(peer), 2), Some(peer));
        assert_eq!(client_ip(&headers, Some(peer), 0), Some(peer));
        assert_eq!(client_ip(&headers, Some(peer), 1), Some(CLIENT));
    }
}
