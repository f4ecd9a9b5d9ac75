//! The in-flight limits: at most `--max-in-flight` requests are in progress
//! at once, all clients together, and at most `--max-in-flight-per-ip` from
//! one client. The next one is answered 503 with `Retry-After` at once,
//! before its body is read, so a swarm of clients trickling bodies cannot
//! hold every task and buffer of the gateway; Svix retries a 503.
//!
//! The per-client cap is what keeps one host from taking every place (over
//! HTTP/2, 8 connections × 64 streams that never send their body fill the
//! default 512): it can hold its share, and the rest stays free for Svix.
//! Clients are keyed like the rate limit's buckets (IPv4 address, IPv6 /64,
//! the forwarded client behind `--trusted-proxy-hops`).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{
    error::RequestError,
    http::rate_limit::{client_ip, client_key},
    metrics::Metrics,
};

/// Which limit a request was shed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// `--max-in-flight`: the gateway as a whole is full.
    Global,
    /// `--max-in-flight-per-ip`: this client holds its share already.
    Client,
}

impl Shed {
    /// The `reason` label of the shed metric.
    pub fn label(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::Client => "per_ip",
        }
    }

    fn error(self) -> RequestError {
        match self {
            Self::Global => RequestError::Overloaded,
            Self::Client => RequestError::ClientOverloaded,
        }
    }
}

/// The places taken, in all and per client.
#[derive(Debug, Default)]
struct Places {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// Counts requests in progress against the global and per-client caps.
#[derive(Debug)]
pub struct InFlight {
    max: usize,
    max_per_client: usize,
    trusted_proxy_hops: u32,
    // One lock for both counts, so a request never holds a client place
    // without a global one (or the reverse) even for an instant.
    places: Mutex<Places>,
    metrics: Option<Arc<Metrics>>,
}

impl InFlight {
    /// A limit of `max` requests at once, `max_per_client` of them from one
    /// client; the client is found as the rate limit finds it, through
    /// `trusted_proxy_hops` proxies.
    pub fn new(
        max: usize,
        max_per_client: usize,
        trusted_proxy_hops: u32,
        metrics: Option<Arc<Metrics>>,
    ) -> Arc<Self> {
        Arc::new(Self { max, max_per_client, trusted_proxy_hops, places: Mutex::default(), metrics })
    }

    /// Requests in progress now.
    pub fn current(&self) -> usize {
        self.places.lock().unwrap_or_else(PoisonError::into_inner).total
    }

    /// Takes a place for a request from `client` (none when unknown, e.g. a
    /// router driven directly in a test: only the global cap applies).
    fn enter(self: &Arc<Self>, client: Option<IpAddr>) -> Result<Place, Shed> {
        let client = client.map(client_key);
        let mut places = self.places.lock().unwrap_or_else(PoisonError::into_inner);
        if places.total >= self.max {
            return Err(Shed::Global);
        }
        if let Some(client) = client {
            if places.by_client.get(&client).is_some_and(|&mine| mine >= self.max_per_client) {
                return Err(Shed::Client);
            }
            *places.by_client.entry(client).or_insert(0) += 1;
        }
        places.total += 1;
        drop(places);
        self.publish(1.0);
        Ok(Place { in_flight: self.clone(), client })
    }

    fn leave(&self, client: Option<IpAddr>) {
        let mut places = self.places.lock().unwrap_or_else(PoisonError::into_inner);
        places.total -= 1;
        if let Some(client) = client
            && let Some(mine) = places.by_client.get_mut(&client)
        {
            *mine -= 1;
            // Forget clients with nothing in progress, so the map stays as
            // small as the number of clients being served.
            if *mine == 0 {
                places.by_client.remove(&client);
            }
        }
        drop(places);
        self.publish(-1.0);
    }

    fn publish(&self, delta: f64) {
        if let Some(metrics) = &self.metrics {
            metrics.add_requests_in_flight(delta);
        }
    }
}

/// One request's place; dropping it frees the place.
#[derive(Debug)]
struct Place {
    in_flight: Arc<InFlight>,
    client: Option<IpAddr>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.in_flight.leave(self.client);
    }
}

/// Answers 503 with `Retry-After: 1` when `--max-in-flight` requests are in
/// progress, or `--max-in-flight-per-ip` from this client; otherwise holds a
/// place until the answer is ready.
pub async fn limit(State(in_flight): State<Arc<InFlight>>, request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    let client = client_ip(request.headers(), peer, in_flight.trusted_proxy_hops);
    let place = match in_flight.enter(client) {
        Ok(place) => place,
        Err(shed) => {
            if let Some(metrics) = &in_flight.metrics {
                metrics.record_shed(shed.label());
            }
            // Debug only, and without the client: a flood would otherwise
            // flood the log.
            tracing::debug!(reason = shed.label(), "request shed: too many in flight");
            return shed.error().into_response();
        }
    };
    let response = next.run(request).await;
    drop(place);
    response
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2));

    #[test]
    fn places_are_limited_and_freed_on_drop() {
        let in_flight = InFlight::new(2, 2, 0, None);
        let first = in_flight.enter(Some(A));
        let second = in_flight.enter(Some(B));
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(in_flight.enter(Some(A)).err(), Some(Shed::Global));
        drop(first);
        assert_eq!(in_flight.current(), 1);
        assert!(in_flight.enter(Some(A)).is_ok());
    }

    #[test]
    fn a_client_at_its_share_is_shed_while_others_get_places() {
        let in_flight = InFlight::new(10, 2, 0, None);
        let _mine = (in_flight.enter(Some(A)), in_flight.enter(Some(A)));

        assert_eq!(in_flight.enter(Some(A)).err(), Some(Shed::Client));
        assert!(in_flight.enter(Some(B)).is_ok());
        assert!(in_flight.enter(None).is_ok(), "an unknown client meets only the global cap");
    }

    #[test]
    fn a_shed_request_takes_no_place_and_freed_places_are_forgotten() {
        let in_flight = InFlight::new(10, 1, 0, None);
        let first = in_flight.enter(Some(A)).unwrap();
        assert!(in_flight.enter(Some(A)).is_err());
        assert_eq!(in_flight.current(), 1);

        drop(first);

        assert_eq!(in_flight.current(), 0);
        assert!(in_flight.places.lock().unwrap().by_client.is_empty());
    }

    #[test]
    fn ipv6_clients_share_a_place_count_per_64() {
        let in_flight = InFlight::new(10, 1, 0, None);
        let _first = in_flight.enter("2001:db8:1:2::1".parse().ok()).unwrap();

        assert_eq!(in_flight.enter("2001:db8:1:2::99".parse().ok()).err(), Some(Shed::Client));
    }
}
