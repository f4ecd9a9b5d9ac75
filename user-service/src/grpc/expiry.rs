//! A stream that ends with its caller's session token.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;
use tokio::time::Sleep;
use tonic::Status;

use crate::domain::error::Error;

/// Passes `inner` through until `after` has elapsed, then ends it with one
/// `UNAUTHENTICATED`: a stream opened with a session token lasts no longer
/// than the token, so a user signed out, suspended or deleted since stops
/// receiving changes once their token runs out (Clerk's last a minute), and
/// the client opens the stream again with a fresh token.
pub fn until_expiry<S, T>(inner: S, after: Duration) -> UntilExpiry<S>
where
    S: Stream<Item = Result<T, Status>>,
{
    UntilExpiry { inner, expiry: Some(Box::pin(tokio::time::sleep(after))) }
}

/// The stream [`until_expiry`] returns.
pub struct UntilExpiry<S> {
    inner: S,
    /// `None` once the expiry has been reported.
    expiry: Option<Pin<Box<Sleep>>>,
}

impl<S, T> Stream for UntilExpiry<S>
where
    S: Stream<Item = Result<T, Status>> + Unpin,
{
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(expiry) = self.expiry.as_mut() else {
            return Poll::Ready(None);
        };
        if expiry.as_mut().poll(cx).is_ready() {
            self.expiry = None;
            return Poll::Ready(Some(Err(Status::from(Error::SessionExpired))));
        }
        Pin::new(&mut self.inner).poll_next(cx)
    }
}
