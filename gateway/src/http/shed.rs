//! The global in-flight limit: at most `--max-in-flight` requests are in
//! progress at once, all clients together. The next one is answered 503 with
//! `Retry-After` at once, before its body is read, so a swarm of clients
//! trickling bodies cannot hold every task and buffer of the gateway; Svix
//! retries a 503.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{error::RequestError, metrics::Metrics};

/// Counts requests in progress against a cap.
#[derive(Debug)]
pub struct InFlight {
    max: usize,
    current: AtomicUsize,
    metrics: Option<Arc<Metrics>>,
}

impl InFlight {
    /// A limit of `max` requests at once.
    pub fn new(max: usize, metrics: Option<Arc<Metrics>>) -> Arc<Self> {
        Arc::new(Self { max, current: AtomicUsize::new(0), metrics })
    }

    /// Requests in progress now.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Acquire)
    }

    /// Takes a place, or `None` when all are taken.
    fn enter(self: &Arc<Self>) -> Option<Place> {
        let taken = self
            .current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1));
        taken.ok()?;
        self.publish(1.0);
        Some(Place(self.clone()))
    }

    fn publish(&self, delta: f64) {
        if let Some(metrics) = &self.metrics {
            metrics.add_requests_in_flight(delta);
        }
    }
}

/// One request's place; dropping it frees the place.
#[derive(Debug)]
struct Place(Arc<InFlight>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::AcqRel);
        self.0.publish(-1.0);
    }
}

/// Answers 503 with `Retry-After: 1` when `--max-in-flight` requests are in
/// progress; otherwise holds a place until the answer is ready.
pub async fn limit(State(in_flight): State<Arc<InFlight>>, request: Request, next: Next) -> Response {
    let Some(place) = in_flight.enter() else {
        if let Some(metrics) = &in_flight.metrics {
            metrics.record_shed();
        }
        tracing::debug!(max = in_flight.max, "request shed: too many in flight");
        return RequestError::Overloaded.into_response();
    };
    let response = next.run(request).await;
    drop(place);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_limited_and_freed_on_drop() {
        let in_flight = InFlight::new(2, None);
        let first = in_flight.enter();
        let second = in_flight.enter();
        assert!(first.is_some() && second.is_some());
        assert!(in_flight.enter().is_none());
        drop(first);
        assert_eq!(in_flight.current(), 1);
        assert!(in_flight.enter().is_some());
    }
}
