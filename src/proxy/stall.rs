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

use prometheus_client::metrics::counter::Counter;

use super::pool::Lease;
use tokio::time::{Instant, Sleep};

/// Watches a backend response body go by without changing it (the ledger reads the backend's
/// Click answer this way, as the bytes stream to the client).
pub trait BodyObserver: Send {
    /// A data frame, as it is handed on.
    fn data(&mut self, chunk: &[u8]);
    /// The body ended: `complete` when it was read to its end, not when it was cut or dropped.
    fn finish(self: Box<Self>, complete: bool);
}

/// The backend's response body with a deadline between frames.
///
/// The clock is read and the timer armed only when the body actually waits (`Pending`): most
/// responses of a callback backend arrive whole with their headers and never touch either. A
/// wait starts at the first `Pending` after a frame; the timer is re-armed from there only
/// when it fires.
///
/// It also holds the lease of the backend connection: the connection goes back to the pool
/// when the body has been read to its end, and is closed if the body is dropped before that.
pub struct StallGuard {
    inner: Incoming,
    timeout: Duration,
    /// When the current wait for a frame began; `None` right after a frame.
    waiting_since: Option<Instant>,
    deadline: Option<Pin<Box<Sleep>>>,
    lease: Option<Lease>,
    /// Counts bodies cut for stalling.
    stalled: Counter,
    observer: Option<Box<dyn BodyObserver>>,
}

impl StallGuard {
    pub fn new(inner: Incoming, timeout: Duration, lease: Lease, stalled: Counter) -> StallGuard {
        StallGuard {
            inner,
            timeout,
            waiting_since: None,
            deadline: None,
            lease: Some(lease),
            stalled,
            observer: None,
        }
    }

    /// Has `observer` see the body's frames and its end.
    pub fn observe(&mut self, observer: Box<dyn BodyObserver>) {
        self.observer = Some(observer);
    }

    fn finish_observer(&mut self, complete: bool) {
        if let Some(observer) = self.observer.take() {
            observer.finish(complete);
        }
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl Drop for StallGuard {
    fn drop(&mut self) {
        // A body nobody read (HEAD, 204, 304) is complete too.
        let complete = self.inner.is_end_stream();
        if complete {
            self.release();
        }
        self.finish_observer(complete);
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
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.waiting_since = None;
            if let (Some(observer), Some(Ok(frame))) = (this.observer.as_mut(), &frame) {
                if let Some(data) = frame.data_ref() {
                    observer.data(data);
                }
            }
            match &frame {
                None => {
                    this.release();
                    this.finish_observer(true);
                }
                Some(Ok(_)) if this.inner.is_end_stream() => {
                    this.release();
                    this.finish_observer(true);
                }
                Some(Err(_)) => {
                    drop(this.lease.take());
                    this.finish_observer(false);
                }
                Some(Ok(_)) => {}
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let timeout = this.timeout;
        let last_progress = *this.waiting_since.get_or_insert_with(Instant::now);
        let sleep = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(last_progress + timeout)));
        loop {
            match sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if Instant::now() >= last_progress + timeout => {
                    tracing::warn!("{}", Stalled(timeout));
                    this.stalled.inc();
                    this.finish_observer(false);
                    return Poll::Ready(Some(Err(Box::new(Stalled(timeout)))));
                }
                // Progress was made since the timer was armed: wait the rest from there.
                Poll::Ready(()) => sleep.as_mut().reset(last_progress + timeout),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
