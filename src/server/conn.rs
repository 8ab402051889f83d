//! One client connection: its service, and the watchdog that bounds what hyper leaves open.
//!
//! hyper's own header-read timer is not used: it allocates and registers a new timer for every
//! request, and it leaves open:
//! - the protocol sniff of hyper-util's auto builder, which reads the first bytes before
//!   hyper's timer starts: a peer sending one byte of the HTTP/2 preface would be held forever;
//! - HTTP/2 connections with no request: hyper has no header-read or idle timeout for them;
//! - HTTP/2 streams whose client never opens their flow-control window (no WINDOW_UPDATE):
//!   the socket is fine, so [`super::send_deadline::SendDeadline`] sees nothing, but the stream's response
//!   body (and the backend connection behind it) waits for ever.
//!
//! The watchdog, one per connection with one timer, closes a connection that has not delivered
//! its first request within `header_read_timeout`; an HTTP/1 connection whose next request's
//! head has not arrived `header_read_timeout` after the previous response (an idle keep-alive,
//! or headers trickled: hyper's own semantics); asks an HTTP/2 connection with nothing in
//! flight for `idle_timeout` to shut down (GOAWAY), and drops it if it has not finished
//! `send_timeout` later; and drops a connection one of whose HTTP/2 response bodies has waited
//! `send_timeout` for the client to take more. A request is in flight from the moment it
//! reaches the service until its response body has been sent or dropped, so a long download is
//! never "idle".
//!
//! The watchdog is lazy: a request that starts or ends only updates counters. The watchdog
//! wakes at the deadline it computed, finds the connection busy or recently active, and sleeps
//! again until the new deadline, so a busy connection costs it one wake-up per timeout period,
//! not one per request.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use bytes::{Buf, Bytes};
use http::Version;
use hyper::body::{Body, Frame, SizeHint};
use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::watch;

use super::activity::{Activity, Deadlines, InFlight, Standing, StreamClock, NOT_WAITING};
use super::admission::StreamHold;
use super::client::Client;
use super::send_deadline::SendDeadline;
use crate::gateway::Gateway;
use crate::metrics::ReasonLabels;
use crate::proxy::ProxyBody;

/// How long an idle HTTP/2 connection chosen to make room has to finish after its GOAWAY.
const EVICT_GRACE: Duration = Duration::from_secs(1);

/// A connection's deadlines, and the pressure that shortens them.
pub struct Timers {
    pub deadlines: Deadlines,
    pub pressure_timeout: Duration,
    /// Whether the gateway is under pressure ([`super::pressure`]).
    pub pressure: watch::Receiver<bool>,
}

impl Timers {
    /// The deadlines in force now.
    fn now(&self) -> Deadlines {
        if *self.pressure.borrow() {
            self.deadlines.pressed(self.pressure_timeout)
        } else {
            self.deadlines
        }
    }
}

/// How much of an HTTP/2 response body is handed to hyper at a time: hyper asks for the next
/// piece only once the client's flow-control window has taken the last one, so the pieces are
/// what makes a stream's progress visible to the watchdog (a client reading at least 16 KiB
/// per `send_timeout` is never cut).
const H2_SLICE: usize = 16 * 1024;

/// A response body that keeps its request in flight until it is fully sent or dropped, and on
/// HTTP/2 hands out its data in `H2_SLICE` pieces on a `StreamClock`.
pub struct TrackedBody {
    inner: ProxyBody,
    in_flight: InFlight,
    /// An HTTP/2 stream's place in its address's allowance.
    _stream: Option<StreamHold>,
    /// HTTP/2 only: the clock, once the body has streamed a piece.
    clock: Option<Arc<StreamClock>>,
    h2: bool,
    /// The rest of a data frame larger than a slice.
    rest: Bytes,
}

impl TrackedBody {
    fn new(
        inner: ProxyBody,
        in_flight: InFlight,
        stream: Option<StreamHold>,
        h2: bool,
    ) -> TrackedBody {
        TrackedBody {
            inner,
            in_flight,
            _stream: stream,
            clock: None,
            h2,
            rest: Bytes::new(),
        }
    }

    /// Hands out `data` a slice at a time; starts the stream's clock.
    fn slice(&mut self, mut data: Bytes) -> Bytes {
        if data.len() > H2_SLICE {
            self.rest = data.split_off(H2_SLICE);
        }
        if !self.rest.is_empty() || !self.inner.is_end_stream() {
            let activity = &self.in_flight.0;
            let clock = self.clock.get_or_insert_with(|| {
                let clock = Arc::new(StreamClock(AtomicU64::new(NOT_WAITING)));
                activity
                    .streams
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(Arc::downgrade(&clock));
                activity.changed.notify_one();
                clock
            });
            clock.0.store(activity.ms(), Ordering::Relaxed);
        }
        data
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if !this.h2 {
            return Pin::new(&mut this.inner).poll_frame(cx);
        }
        // hyper asks for more: the client has taken what it was given.
        if let Some(clock) = &this.clock {
            clock.0.store(NOT_WAITING, Ordering::Relaxed);
        }
        if !this.rest.is_empty() {
            let rest = std::mem::take(&mut this.rest);
            let piece = this.slice(rest);
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    let piece = this.slice(data);
                    Poll::Ready(Some(Ok(Frame::data(piece))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.remaining() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

/// How a connection's protocol is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// Plain TCP: HTTP/1.1, or HTTP/2 with prior knowledge (h2c), told apart by the first
    /// bytes (hyper-util's auto builder).
    Sniff,
    /// TLS that negotiated `http/1.1` (or nothing) by ALPN.
    Http1,
    /// TLS that negotiated `h2` by ALPN (RFC 9113 §3.2).
    Http2,
}

/// The server side of HTTP, built once: the auto builder for plain listeners, and the two
/// protocols on their own for TLS, where ALPN has already said which (no sniffing; and HTTP/1
/// without writev, so a response's head and body go out as one TLS record, not two).
pub struct Protocols {
    pub auto: auto::Builder<TokioExecutor>,
    pub http1_tls: hyper::server::conn::http1::Builder,
    pub http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    /// `server.http2_max_streams_per_address`.
    pub streams_per_address: u32,
}

/// Serves one connection until it ends, it breaks a deadline, it is chosen to make room, or
/// the drain asks it to finish.
pub async fn serve<I>(
    protocols: &Protocols,
    proto: Proto,
    io: I,
    client: Arc<Client>,
    gateway: Arc<Gateway>,
    timers: Timers,
    drain: watch::Receiver<bool>,
) where
    I: Read + Write + Unpin + Send + 'static,
{
    let activity = client.activity.clone();
    let tracker = activity.clone();
    let metrics = gateway.metrics.clone();
    let log_addr = client.peer.addr;
    let io = SendDeadline::new(io, timers.deadlines.send, metrics.send_timeouts.clone());
    let address = client.address().cloned();
    let stream_limit = protocols.streams_per_address;
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let gw = gateway.clone();
        let client = client.clone();
        let h2 = req.version() == Version::HTTP_2;
        let in_flight = tracker.begin(h2);
        // One address's HTTP/2 streams, across its connections, are capped.
        let stream = match (&address, h2) {
            (Some(address), true) => address.stream(stream_limit).map(Some).ok_or(()),
            _ => Ok(None),
        };
        async move {
            let (resp, hold) = match stream {
                Ok(hold) => (gw.handle(client, req).await, hold),
                Err(()) => (gw.refuse_streams(&client.peer), None),
            };
            Ok::<_, Infallible>(resp.map(|inner| TrackedBody::new(inner, in_flight, hold, h2)))
        }
    });
    let watch = Watch {
        activity,
        timers,
        drain,
        metrics,
        log_addr,
    };
    match proto {
        Proto::Sniff => {
            watch
                .run(protocols.auto.serve_connection(io, service))
                .await
        }
        Proto::Http1 => {
            watch
                .run(protocols.http1_tls.serve_connection(io, service))
                .await
        }
        Proto::Http2 => {
            watch
                .run(protocols.http2.serve_connection(io, service))
                .await
        }
    }
}

/// What woke the watchdog.
enum Event {
    /// The connection ended (with hyper's error, if any).
    Ended(Option<String>),
    /// The gateway is draining.
    Drain,
    /// Chosen to close to make room at `server.max_connections`.
    Evicted,
    /// Pressure came or went: the deadlines changed.
    Pressure,
    /// An HTTP/2 body started streaming: its send deadline may be the next one.
    Stream,
    /// The timer reached the deadline it was set to.
    Timer,
}

/// The waker of the watchdog's own signals (drain, eviction, pressure, a stream's deadline,
/// the timer): it marks them woken and wakes the connection's task. The task is woken far more
/// often by its connection (every read and write); on those wake-ups the signals are not
/// polled at all. Polling them each time (as `select!` does) cost about a thousand
/// instructions a keep-alive request (callgrind, `benches/instructions.sh`).
#[derive(Default)]
struct Signals {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signals {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// The watchdog of one connection (see the module docs).
struct Watch {
    activity: Arc<Activity>,
    timers: Timers,
    drain: watch::Receiver<bool>,
    metrics: Arc<crate::metrics::Metrics>,
    log_addr: std::net::SocketAddr,
}

impl Watch {
    /// Drives `conn` under the connection's deadlines until it ends or is dropped.
    async fn run<C>(self, conn: C)
    where
        C: GracefulConnection,
        C::Error: std::fmt::Display,
    {
        let Watch {
            activity,
            mut timers,
            mut drain,
            metrics,
            log_addr,
        } = self;
        tokio::pin!(conn);
        let mut closing = *drain.borrow();
        if closing {
            conn.as_mut().graceful_shutdown();
        }
        // Once the gateway has asked an idle connection to close: when to stop waiting for it.
        let mut close_by: Option<Instant> = None;
        // Chosen to make room, and acted on.
        let mut evicted_seen = false;
        // The connection's one timer, reset to each deadline.
        let timer = tokio::time::sleep_until(activity.next_deadline(timers.now()).into());
        tokio::pin!(timer);
        let signals = Arc::new(Signals::default());
        let signal_waker = Waker::from(signals.clone());
        // Set once the pressure's sender is gone (the gateway is stopping): never polled again.
        let mut pressure_gone = false;
        loop {
            // This round's signals, polled once to register them, then only when one woke us.
            let event = {
                let drained = drain.changed();
                let evicted = activity.evicted();
                let pressure = timers.pressure.changed();
                let stream = activity.changed.notified();
                tokio::pin!(drained, evicted, pressure, stream);
                signals.woken.store(true, Ordering::Release);
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                        return Poll::Ready(Event::Ended(result.err().map(|e| e.to_string())));
                    }
                    signals.task.register(cx.waker());
                    if !signals.woken.swap(false, Ordering::AcqRel) {
                        return Poll::Pending;
                    }
                    let mut cx = Context::from_waker(&signal_waker);
                    if !closing && drained.as_mut().poll(&mut cx).is_ready() {
                        return Poll::Ready(Event::Drain);
                    }
                    if !evicted_seen
                        && close_by.is_none()
                        && evicted.as_mut().poll(&mut cx).is_ready()
                    {
                        return Poll::Ready(Event::Evicted);
                    }
                    if !closing && !pressure_gone {
                        if let Poll::Ready(changed) = pressure.as_mut().poll(&mut cx) {
                            if changed.is_ok() {
                                return Poll::Ready(Event::Pressure);
                            }
                            pressure_gone = true;
                        }
                    }
                    if !closing && stream.as_mut().poll(&mut cx).is_ready() {
                        return Poll::Ready(Event::Stream);
                    }
                    if (!closing || close_by.is_some()) && timer.as_mut().poll(&mut cx).is_ready() {
                        return Poll::Ready(Event::Timer);
                    }
                    Poll::Pending
                })
                .await
            };
            match event {
                Event::Ended(error) => {
                    if let Some(e) = error {
                        tracing::debug!(peer = %log_addr, "connection ended: {e}");
                    }
                    return;
                }
                Event::Drain => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                // Chosen to make room at the cap (counted by the chooser): an idle HTTP/2
                // connection gets a GOAWAY and a moment; one whose request began since it was
                // chosen finishes that request under its usual deadlines, then closes;
                // anything else, idle or still waiting for its client, is dropped now.
                Event::Evicted => {
                    evicted_seen = true;
                    let h2 = activity.h2.load(Ordering::Relaxed);
                    match activity.doing() {
                        Standing::Busy => {
                            conn.as_mut().graceful_shutdown();
                            continue;
                        }
                        Standing::Idle { .. } if h2 => {}
                        Standing::Idle { .. } | Standing::Waiting { .. } => {
                            tracing::debug!(peer = %log_addr, "closed to make room at server.max_connections");
                            return;
                        }
                    }
                    closing = true;
                    let by = Instant::now() + EVICT_GRACE;
                    close_by = Some(by);
                    timer.as_mut().reset(by.into());
                    conn.as_mut().graceful_shutdown();
                }
                // Pressure came or went: the deadlines changed.
                Event::Pressure => {
                    timer
                        .as_mut()
                        .reset(activity.next_deadline(timers.now()).into());
                }
                // An HTTP/2 body started streaming: its send deadline may be the next one.
                Event::Stream => {
                    let next = activity.next_deadline(timers.now());
                    if next < timer.deadline().into_std() {
                        timer.as_mut().reset(next.into());
                    }
                }
                Event::Timer => {
                    let deadlines = timers.now();
                    let now = Instant::now();
                    if close_by.is_some_and(|by| by <= now) {
                        tracing::debug!(peer = %log_addr, "did not finish in time after being asked to close: dropping");
                        metrics.send_timeouts.inc();
                        return;
                    }
                    if activity.stream_stuck(deadlines) {
                        tracing::debug!(peer = %log_addr, "an HTTP/2 stream took nothing for {:?}: closing", deadlines.send);
                        metrics.send_timeouts.inc();
                        return;
                    }
                    let due = activity.next_deadline(deadlines);
                    let busy = activity.in_flight.load(Ordering::Relaxed) > 0;
                    if busy || due > now {
                        // Not due yet (a request started or ended since): look again then.
                        timer.as_mut().reset(due.into());
                        continue;
                    }
                    if activity.requests.load(Ordering::Relaxed) == 0 {
                        tracing::debug!(peer = %log_addr, "no request within {:?}: closing", deadlines.first_request);
                        metrics
                            .connections_closed
                            .get_or_create(&ReasonLabels {
                                reason: "first_request_timeout",
                            })
                            .inc();
                        return;
                    }
                    metrics
                        .connections_closed
                        .get_or_create(&ReasonLabels { reason: "idle" })
                        .inc();
                    if !activity.h2.load(Ordering::Relaxed) {
                        // HTTP/1: no next request head within header_read_timeout (hyper's rule).
                        tracing::debug!(peer = %log_addr, "no request head within {:?} of the last response: closing", deadlines.first_request);
                        return;
                    }
                    tracing::debug!(peer = %log_addr, "idle for {:?}: closing", deadlines.idle);
                    closing = true;
                    let by = now + deadlines.send;
                    close_by = Some(by);
                    timer.as_mut().reset(by.into());
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
