//! What one client connection is doing, kept in atomics that the connection's tasks update and
//! two readers consult: the connection's own watchdog ([`super::conn`]), for its deadlines, and
//! [`super::pressure`], which picks connections to close when the gateway is full.
//!
//! Updates are counters and timestamps only (no lock, no wake-up on the request path); the
//! readers compute what they need when they look.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Timers of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// `header_read_timeout`: the first request's head from accept, an HTTP/1 connection's
    /// next one from the end of the previous response.
    pub first_request: Duration,
    /// `idle_timeout`, for HTTP/2 connections.
    pub idle: Duration,
    /// `server.send_timeout`: the client must accept response bytes at least this often.
    pub send: Duration,
}

impl Deadlines {
    /// The deadlines under pressure: waiting for a request head and idling are cut to
    /// `pressure_timeout` (Envoy's overload manager, `reduce_timeouts`); sending is not (a
    /// response in flight is work the gateway has already done).
    pub fn pressed(self, pressure_timeout: Duration) -> Deadlines {
        Deadlines {
            first_request: self.first_request.min(pressure_timeout),
            idle: self.idle.min(pressure_timeout),
            send: self.send,
        }
    }
}

/// One connection's requests, as its watchdog and the pressure valve see them.
#[derive(Debug)]
pub struct Activity {
    pub(super) started: Instant,
    pub(super) requests: AtomicU64,
    pub(super) in_flight: AtomicUsize,
    /// Milliseconds from `started` to the end of the last response.
    pub(super) last_done_ms: AtomicU64,
    /// The connection speaks HTTP/2 (known from its first request).
    pub(super) h2: AtomicBool,
    /// Wakes the watchdog when an HTTP/2 body starts streaming (its send deadline is watched
    /// from then on).
    pub(super) changed: Notify,
    /// HTTP/2 response bodies that have streamed at least one piece.
    pub(super) streams: Mutex<Vec<Weak<StreamClock>>>,
    /// Requests of this connection whose bodies are still arriving ([`Activity::reading`]).
    reading: AtomicUsize,
    /// Milliseconds from `started` to the start of the latest body read.
    reading_since_ms: AtomicU64,
    /// [`OPEN`], then [`EVICTED`] when the pressure valve chose this connection to close,
    /// and [`CLOSED`] once its place is given back: one place, so that the valve's count of
    /// connections leaving is given back exactly when it was taken, whichever comes first.
    state: AtomicU8,
    evict: Notify,
}

const OPEN: u8 = 0;
const EVICTED: u8 = 1;
const CLOSED: u8 = 2;

/// When an HTTP/2 response body last handed a piece to hyper without being asked for the next
/// one yet: `NOT_WAITING` while hyper is asking.
#[derive(Debug)]
pub(super) struct StreamClock(pub(super) AtomicU64);

pub(super) const NOT_WAITING: u64 = u64::MAX;

/// What a connection is doing, for the pressure valve: whether closing it costs anybody
/// anything, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Between requests (an HTTP/1 keep-alive, an HTTP/2 connection with no stream open).
    Idle { since: Instant },
    /// Waiting for the client: its TLS handshake or its first request head has not arrived,
    /// or every request in flight is still receiving its body.
    Waiting { since: Instant },
    /// A request is being judged, forwarded or answered.
    Busy,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            started: Instant::now(),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            changed: Notify::new(),
            streams: Mutex::new(Vec::new()),
            reading: AtomicUsize::new(0),
            reading_since_ms: AtomicU64::new(0),
            state: AtomicU8::new(OPEN),
            evict: Notify::new(),
        })
    }

    pub(super) fn begin(self: &Arc<Self>, h2: bool) -> InFlight {
        if h2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Marks a request body as arriving until the returned guard is dropped: such a request
    /// is still waiting for its client, and its connection may be closed under pressure.
    pub fn reading(&self) -> Reading<'_> {
        self.reading_since_ms.store(self.ms(), Ordering::Relaxed);
        self.reading.fetch_add(1, Ordering::Relaxed);
        Reading(self)
    }

    pub(super) fn ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.started + Duration::from_millis(ms)
    }

    /// What the connection is doing now; `None` once it has been chosen to close.
    pub fn standing(&self) -> Option<Standing> {
        (self.state.load(Ordering::Relaxed) == OPEN).then(|| self.doing())
    }

    /// What the connection is doing now, chosen to close or not.
    pub(super) fn doing(&self) -> Standing {
        if self.requests.load(Ordering::Relaxed) == 0 {
            return Standing::Waiting {
                since: self.started,
            };
        }
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        if in_flight == 0 {
            let done = self.last_done_ms.load(Ordering::Relaxed);
            return Standing::Idle {
                since: self.at(done),
            };
        }
        if self.reading.load(Ordering::Relaxed) >= in_flight {
            let since = self.reading_since_ms.load(Ordering::Relaxed);
            return Standing::Waiting {
                since: self.at(since),
            };
        }
        Standing::Busy
    }

    /// Asks the connection to close (once, and not once its place is given back): true when
    /// this call did.
    pub fn evict(&self) -> bool {
        if self
            .state
            .compare_exchange(OPEN, EVICTED, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.evict.notify_one();
        true
    }

    pub fn is_evicted(&self) -> bool {
        self.state.load(Ordering::Relaxed) == EVICTED
    }

    /// Its place is given back: true when it had been chosen to close (and counted leaving).
    pub(super) fn close(&self) -> bool {
        self.state.swap(CLOSED, Ordering::AcqRel) == EVICTED
    }

    /// Resolves once the connection has been chosen to close.
    pub async fn evicted(&self) {
        if !self.is_evicted() {
            self.evict.notified().await;
        }
    }

    /// When the watchdog should look again. With requests in flight nothing is due but an
    /// HTTP/2 stream's send deadline; it looks again one header timeout later, to find the
    /// connection idle (or still busy) then.
    pub(super) fn next_deadline(&self, d: Deadlines) -> Instant {
        if self.requests.load(Ordering::Relaxed) == 0 {
            return self.started + d.first_request;
        }
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            let busy = Instant::now() + d.first_request.min(d.idle);
            return self.stream_deadline(d).map_or(busy, |s| s.min(busy));
        }
        self.idle_deadline(d)
    }

    /// When the connection, idle since its last response, is due to close.
    fn idle_deadline(&self, d: Deadlines) -> Instant {
        let done = Duration::from_millis(self.last_done_ms.load(Ordering::Relaxed));
        let idle = if self.h2.load(Ordering::Relaxed) {
            d.idle
        } else {
            d.first_request
        };
        self.started + done + idle
    }

    /// With HTTP/2 bodies streaming: the send deadline of the one that has waited longest, or,
    /// when none waits, one `send` from now (a body that starts waiting later has a later
    /// deadline, so that look finds it in time).
    fn stream_deadline(&self, d: Deadlines) -> Option<Instant> {
        let mut streams = self
            .streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        streams.retain(|s| s.strong_count() > 0);
        if streams.is_empty() {
            return None;
        }
        let oldest = streams
            .iter()
            .filter_map(Weak::upgrade)
            .map(|s| s.0.load(Ordering::Relaxed))
            .min()
            .unwrap_or(NOT_WAITING);
        Some(match oldest {
            NOT_WAITING => Instant::now() + d.send,
            since => self.started + Duration::from_millis(since) + d.send,
        })
    }

    /// Whether an HTTP/2 body has waited `send` or longer for the client.
    pub(super) fn stream_stuck(&self, d: Deadlines) -> bool {
        let now = self.ms();
        let send = u64::try_from(d.send.as_millis()).unwrap_or(u64::MAX);
        let streams = self
            .streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        streams.iter().filter_map(Weak::upgrade).any(|s| {
            let since = s.0.load(Ordering::Relaxed);
            since != NOT_WAITING && now.saturating_sub(since) >= send
        })
    }
}

/// Marks a request in flight until dropped (with the response body).
pub(super) struct InFlight(pub(super) Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last_done_ms.store(self.0.ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request body still arriving (see [`Activity::reading`]).
pub struct Reading<'a>(&'a Activity);

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.0.reading.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_stands_waiting_then_busy_then_idle() {
        let a = Activity::new();
        assert!(matches!(a.standing(), Some(Standing::Waiting { .. })));
        let in_flight = a.begin(false);
        {
            let _reading = a.reading();
            assert!(
                matches!(a.standing(), Some(Standing::Waiting { .. })),
                "its one request is still receiving its body"
            );
        }
        assert_eq!(a.standing(), Some(Standing::Busy));
        drop(in_flight);
        assert!(matches!(a.standing(), Some(Standing::Idle { .. })));
        assert!(a.evict());
        assert!(!a.evict(), "evicted once");
        assert_eq!(
            a.standing(),
            None,
            "a connection on its way out is not chosen again"
        );
        assert!(a.close(), "it had been chosen");
        let b = Activity::new();
        assert!(!b.close(), "never chosen");
        assert!(
            !b.evict(),
            "a connection whose place is given back is not chosen"
        );
    }

    #[test]
    fn pressure_shortens_waiting_and_idling_but_not_sending() {
        let d = Deadlines {
            first_request: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            send: Duration::from_secs(30),
        };
        let p = d.pressed(Duration::from_secs(2));
        assert_eq!(p.first_request, Duration::from_secs(2));
        assert_eq!(p.idle, Duration::from_secs(2));
        assert_eq!(p.send, Duration::from_secs(30));
    }
}
