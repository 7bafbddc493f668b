//! What the ingress and the egress share when they send a request on: a body that streams
//! through and says when it has been sent whole, so that a route's timeout counts the
//! upstream's time to answer and not the client's time to upload (a slow upload is the
//! listener's stall watch's to judge).

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;

/// `body`, streaming as it is, and what is notified once it has been sent whole.
pub(crate) fn watch(body: Body) -> (Body, Arc<Notify>) {
    let sent = Arc::new(Notify::new());
    let watched = Watched {
        body,
        sent: Arc::clone(&sent),
    };
    // A body known to be empty may never be polled.
    watched.is_end_stream();
    (Body::new(watched), sent)
}

/// `answer` (a request on its way, with a body from [`watch`]), given `timeout` from the
/// moment `sent` says the body is out; `None` when that passed first.
pub(crate) async fn answer_within<T>(
    timeout: Duration,
    sent: &Notify,
    answer: impl Future<Output = T>,
) -> Option<T> {
    let mut answer = std::pin::pin!(answer);
    tokio::select! {
        answered = &mut answer => Some(answered),
        () = sent.notified() => tokio::time::timeout(timeout, answer).await.ok(),
    }
}

/// A request body that notifies `sent` when it ends.
struct Watched {
    body: Body,
    sent: Arc<Notify>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.sent.notify_one();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.body.is_end_stream();
        if end {
            // A stored permit: the waiter may come later; a second one changes nothing.
            self.sent.notify_one();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A body of the pieces sent on a channel, ending when the sender is dropped.
#[cfg(test)]
pub(crate) struct Channel(pub(crate) tokio::sync::mpsc::Receiver<Bytes>);

#[cfg(test)]
impl HttpBody for Channel {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|piece| piece.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use http_body_util::BodyExt;

    const TIMEOUT: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn the_timeout_starts_when_the_body_has_been_sent() {
        let never = std::future::pending::<()>;
        // An empty body is out at once: the timeout runs.
        let (_, sent) = watch(Body::empty());
        assert!(answer_within(TIMEOUT, &sent, never()).await.is_none());

        // A body still streaming: no timeout yet.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let (mut body, sent) = watch(Body::new(Channel(rx)));
        let waiting = answer_within(TIMEOUT, &sent, never());
        tokio::pin!(waiting);
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        assert!(
            tokio::time::timeout(TIMEOUT * 3, &mut waiting)
                .await
                .is_err(),
            "timed out while the body was still being sent"
        );
        // Once it ends, the timeout runs.
        drop(tx);
        assert!(body.frame().await.is_none());
        assert!(waiting.await.is_none());

        // An answer that comes before the end of the body is taken as it comes.
        let (_, sent) = watch(Body::from("x"));
        assert_eq!(answer_within(TIMEOUT, &sent, async { 7 }).await, Some(7));
    }
}
