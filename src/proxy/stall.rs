//! A bound on a backend that sends its response headers and then stalls the body: each frame
//! must arrive within `upstream.response_timeout` of the previous one (nginx's
//! `proxy_read_timeout` counts the same way, between two reads). Past it the body ends with an
//! error, hyper cuts the client connection (the response is incomplete, so it must not look
//! complete), and the connection's slot is freed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// The backend's response body with a deadline between frames.
pub struct StallGuard {
    inner: Incoming,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl StallGuard {
    pub fn new(inner: Incoming, timeout: Duration) -> StallGuard {
        StallGuard {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

/// The backend stopped sending its response body.
#[derive(Debug, thiserror::Error)]
#[error("the backend sent no response data for {0:?}")]
pub struct Stalled(Duration);

impl Body for StallGuard {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = Instant::now() + this.timeout;
                this.deadline.as_mut().reset(next);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    tracing::warn!("{}", Stalled(this.timeout));
                    Poll::Ready(Some(Err(Box::new(Stalled(this.timeout)))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
