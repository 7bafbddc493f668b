//! Progress deadlines for what a client must keep moving once a request is under way: a
//! request body it is sending, and a response it is reading. A client that sends a body
//! a byte a minute, or stops reading an answer, would otherwise hold its connection (and
//! the listener's slot for it) for as long as it likes. The deadline is on progress, not
//! on the whole transfer, so a large upload or download over a slow link still passes
//! (nginx's `client_body_timeout` and `send_timeout` work the same way).
//!
//! Hand-written because neither hyper nor tower-http has either deadline for a server's
//! connection; they are small wrappers around a tokio timer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A timer armed when progress stops and disarmed when it resumes.
#[derive(Debug)]
struct Deadline {
    after: Duration,
    armed: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    fn new(after: Duration) -> Self {
        Deadline { after, armed: None }
    }

    fn progressed(&mut self) {
        self.armed = None;
    }

    /// Called when the operation is pending: whether the time without progress is up
    /// (else the timer will wake `cx` when it is).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let after = self.after;
        self.armed
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)))
            .as_mut()
            .poll(cx)
            .is_ready()
    }
}

/// A connection whose writes fail when the client has not taken any of them for the
/// deadline: a response it stopped reading.
#[derive(Debug)]
pub(crate) struct WriteProgress<I> {
    io: I,
    deadline: Deadline,
}

impl<I> WriteProgress<I> {
    pub(crate) fn new(io: I, after: Duration) -> Self {
        WriteProgress {
            io,
            deadline: Deadline::new(after),
        }
    }

    fn stalled<T>(
        &mut self,
        polled: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                self.deadline.progressed();
                Poll::Ready(result)
            }
            Poll::Pending if self.deadline.expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading the response",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteProgress<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteProgress<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.stalled(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.stalled(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.stalled(polled, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.stalled(polled, cx)
    }
}

/// Why a request body ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The connection failed or the body was malformed.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// The client sent nothing for the deadline while the service waited for more.
    #[error("the client sent no more of the request body for {0:?}")]
    Stalled(Duration),
}

/// A request body that fails when the service is waiting for more and the client has sent
/// nothing for the deadline.
#[derive(Debug)]
pub(crate) struct BodyProgress {
    body: hyper::body::Incoming,
    deadline: Deadline,
}

impl BodyProgress {
    pub(crate) fn new(body: hyper::body::Incoming, after: Duration) -> Self {
        BodyProgress {
            body,
            deadline: Deadline::new(after),
        }
    }
}

impl http_body::Body for BodyProgress {
    type Data = bytes::Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.deadline.progressed();
                Poll::Ready(frame.map(|f| f.map_err(BodyError::from)))
            }
            Poll::Pending if self.deadline.expired(cx) => {
                Poll::Ready(Some(Err(BodyError::Stalled(self.deadline.after))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
