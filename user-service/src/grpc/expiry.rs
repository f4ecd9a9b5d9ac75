//! Streams that end by themselves: with the caller's session token, or at
//! their maximum age.

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
/// error, `why()`: a stream opened with a session token lasts no longer than
/// the token (so a user signed out, suspended or deleted since stops
/// receiving changes once their token runs out, and the client reopens with
/// a fresh one), and no stream outlives its connection's maximum age (so a
/// follower moves to another replica, resuming from its cursor).
pub fn end_after<S, T>(inner: S, after: Duration, why: fn() -> Error) -> EndAfter<S>
where
    S: Stream<Item = Result<T, Status>>,
{
    EndAfter { inner, end: Some(Box::pin(tokio::time::sleep(after))), why }
}

/// The stream [`end_after`] returns.
pub struct EndAfter<S> {
    inner: S,
    /// `None` once the end has been sent.
    end: Option<Pin<Box<Sleep>>>,
    why: fn() -> Error,
}

impl<S, T> Stream for EndAfter<S>
where
    S: Stream<Item = Result<T, Status>> + Unpin,
{
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(end) = self.end.as_mut() else {
            return Poll::Ready(None);
        };
        if end.as_mut().poll(cx).is_ready() {
            self.end = None;
            return Poll::Ready(Some(Err(Status::from((self.why)()))));
        }
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tonic::Code;

    use super::*;

    #[tokio::test]
    async fn a_stream_ends_once_with_its_reason_when_its_time_is_up() {
        let quiet = futures::stream::pending::<Result<(), Status>>();
        let mut stream = end_after(quiet, Duration::from_millis(20), || Error::StreamAged);
        let ended = stream.next().await.expect("an item").expect_err("the end");
        assert_eq!(ended.code(), Code::Unavailable);
        assert!(ended.message().contains("resume from your last cursor"), "{ended:?}");
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn what_comes_before_the_end_passes_through() {
        let items = futures::stream::iter([Ok(1), Ok(2)]).chain(futures::stream::pending());
        let mut stream = end_after(items, Duration::from_millis(20), || Error::SessionExpired);
        assert_eq!(stream.next().await.unwrap().unwrap(), 1);
        assert_eq!(stream.next().await.unwrap().unwrap(), 2);
        assert_eq!(stream.next().await.unwrap().unwrap_err().code(), Code::Unauthenticated);
    }
}
