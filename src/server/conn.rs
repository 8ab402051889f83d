//! One client connection: its service, and the watchdog that bounds what hyper leaves open.
//!
//! hyper bounds the header read of HTTP/1 requests (once its timer is wired), but not:
//! - the protocol sniff of hyper-util's auto builder, which reads the first bytes before
//!   hyper's timer starts: a peer sending one byte of the HTTP/2 preface would be held forever;
//! - HTTP/2 connections with no request: hyper has no header-read or idle timeout for them.
//!
//! The watchdog closes a connection that has not delivered its first request within
//! `header_read_timeout`, and asks one with nothing in flight for `idle_timeout` to shut down
//! (GOAWAY for HTTP/2). A request is in flight from the moment it reaches the service until
//! its response body has been sent or dropped, so a long download is never "idle".

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::sync::{watch, Notify};

use crate::gateway::{Gateway, Peer};
use crate::metrics::ReasonLabels;
use crate::proxy::ProxyBody;

/// Timers of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub first_request: Duration,
    pub idle: Duration,
}

/// What the watchdog needs to know about a connection's requests.
#[derive(Debug)]
struct Activity {
    started: Instant,
    requests: AtomicU64,
    in_flight: AtomicUsize,
    /// Milliseconds from `started` to the end of the last response.
    last_done_ms: AtomicU64,
    /// Wakes the watchdog when a request ends, so the idle deadline is armed again.
    done: Notify,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            started: Instant::now(),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(0),
            done: Notify::new(),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// When the watchdog should look again, if there is anything to watch for.
    fn next_deadline(&self, d: Deadlines) -> Option<Instant> {
        if self.requests.load(Ordering::Relaxed) == 0 {
            return Some(self.started + d.first_request);
        }
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let done = Duration::from_millis(self.last_done_ms.load(Ordering::Relaxed));
        Some(self.started + done + d.idle)
    }
}

/// Marks a request in flight until dropped (with the response body).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_done_ms.store(ms, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.done.notify_one();
    }
}

/// A response body that keeps its request in flight until it is fully sent or dropped.
pub struct TrackedBody {
    inner: ProxyBody,
    _in_flight: InFlight,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves one connection until it ends, it breaks a deadline, or the drain asks it to finish.
pub async fn serve<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    peer: Peer,
    gateway: Arc<Gateway>,
    deadlines: Deadlines,
    mut drain: watch::Receiver<bool>,
) where
    I: Read + Write + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let tracker = activity.clone();
    let metrics = gateway.metrics.clone();
    let log_addr = peer.addr;
    let service = service_fn(move |req| {
        let gw = gateway.clone();
        let peer = peer.clone();
        let in_flight = tracker.begin();
        async move {
            let resp = gw.handle(peer, req).await;
            Ok::<_, Infallible>(resp.map(|inner| TrackedBody {
                inner,
                _in_flight: in_flight,
            }))
        }
    });
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut closing = *drain.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        let deadline = if closing {
            None
        } else {
            activity.next_deadline(deadlines)
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %log_addr, "connection ended: {e}");
                }
                return;
            }
            _ = drain.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            // With requests in flight there is no deadline: wait for one to end.
            () = activity.done.notified(), if deadline.is_none() && !closing => {}
            () = sleep_until(deadline), if deadline.is_some() => {
                // Re-check: a request may have started or ended meanwhile.
                let still_due = activity.next_deadline(deadlines).is_some_and(|d| d <= Instant::now());
                if !still_due {
                    continue;
                }
                if activity.requests.load(Ordering::Relaxed) == 0 {
                    tracing::debug!(peer = %log_addr, "no request within {:?}: closing", deadlines.first_request);
                    metrics.connections_closed.get_or_create(&ReasonLabels { reason: "first_request_timeout" }).inc();
                    return;
                }
                tracing::debug!(peer = %log_addr, "idle for {:?}: closing", deadlines.idle);
                metrics.connections_closed.get_or_create(&ReasonLabels { reason: "idle" }).inc();
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
