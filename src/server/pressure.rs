//! The global connection cap, and what gives way when it is reached.
//!
//! Waiting in the kernel's accept queue is the worst place for a payment callback: it is
//! behind every connection an attacker opened before it, and nothing there can be told apart.
//! So the gateway always accepts, and makes room instead, the way nginx reuses its idle
//! keep-alive connections when `worker_connections` run out and Envoy's overload manager closes
//! idle connections under pressure:
//!
//! - a connection accepted over `server.max_connections` closes others to make room: idle ones
//!   first (an HTTP/1 keep-alive between requests, an HTTP/2 connection with no stream open),
//!   the longest idle first, a batch at a time; then, if none is idle, the one that has waited
//!   longest for its client (a TLS handshake, a request head, or a request body that has not
//!   arrived) if it has waited half a second (`MIN_WAITING`) at least. A connection whose
//!   request the gateway is judging, forwarding or answering is never closed for room. With nothing to
//!   close yet, the new connection is still taken while the gateway is within a sixteenth of
//!   the cap above it (the waiting connections will have waited long
//!   enough, or be cut by the pressure deadline, soon); beyond that it is closed at once
//!   (`connections_refused_total{reason="global_cap"}`);
//! - from 90 % of the cap until the count falls below 80 % the gateway is *under pressure*:
//!   every connection's deadlines for a request head and for idling shrink to
//!   `server.pressure_timeout` (see [`super::activity::Deadlines::pressed`]).
//!
//! Every connection is registered here for its life ([`Slot`]), in the registry of the worker
//! that serves it; only making room reads the registries, so serving requests takes no lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use super::activity::{Activity, Standing};
use crate::metrics::{Metrics, ReasonLabels};

/// Idle connections closed at most per look for room: closing a few more than one makes the
/// next accepts find room without a look of their own (nginx closes up to 32).
const IDLE_BATCH: usize = 16;

/// A connection waiting for its client is closed for room only once it has waited this long:
/// a client that is sending its request right now (a TLS handshake over a slow link takes a
/// few round trips) is not cut for one that arrived a moment later.
const MIN_WAITING: Duration = Duration::from_millis(500);

/// After a look for room found nothing to close, the next look comes no sooner than this (or
/// than the first waiting connection is old enough): at the cap with everything busy, every
/// accept would otherwise read every connection, so that a connect flood cost the whole table
/// per refused connection.
const QUIET: Duration = Duration::from_millis(20);

/// Open connections, the cap, and every connection's [`Activity`].
#[derive(Debug)]
pub struct Pressure {
    cap: usize,
    /// How far above `cap` the gateway may go while nothing can be closed for room yet.
    headroom: usize,
    /// Under pressure from `high` open connections until fewer than `low`.
    high: usize,
    low: usize,
    open: AtomicUsize,
    /// Connections chosen to close that have not closed yet: they no longer count against
    /// the cap (otherwise every accept would choose yet another).
    leaving: AtomicUsize,
    /// Open connections of each worker, for [`Pressure::ahead`]; [`NOT_ACCEPTING`] for a
    /// worker whose accept loops have not started (or never will).
    per_worker: Box<[AtomicUsize]>,
    registries: Box<[Mutex<Registry>]>,
    next_id: AtomicU64,
    /// Milliseconds from `epoch` before which a look for room finds nothing (see [`QUIET`]).
    quiet_until_ms: AtomicU64,
    epoch: Instant,
    under: AtomicBool,
    signal: watch::Sender<bool>,
    gauge: Gauge,
    pressure_gauge: Gauge,
    closed_idle: Counter,
    closed_waiting: Counter,
}

/// One worker's connections, by an id of their own.
type Registry = HashMap<u64, Weak<Activity>>;

/// The count of a worker that takes no connections, which no other worker is ever "ahead" of.
pub const NOT_ACCEPTING: usize = usize::MAX;

/// A connection's place under the cap, for its whole life: dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    pressure: Arc<Pressure>,
    worker: usize,
    id: u64,
    pub activity: Arc<Activity>,
}

impl Pressure {
    pub fn new(cap: usize, workers: usize, metrics: &Metrics) -> Arc<Pressure> {
        let cap = cap.max(1);
        let closed = |reason| {
            metrics
                .connections_closed
                .get_or_create(&ReasonLabels { reason })
                .clone()
        };
        Arc::new(Pressure {
            cap,
            headroom: cap / 16,
            high: (cap * 9 / 10).max(1),
            low: (cap * 8 / 10).max(1),
            open: AtomicUsize::new(0),
            leaving: AtomicUsize::new(0),
            per_worker: (0..workers.max(1))
                .map(|_| AtomicUsize::new(NOT_ACCEPTING))
                .collect(),
            registries: (0..workers.max(1))
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            next_id: AtomicU64::new(0),
            quiet_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            under: AtomicBool::new(false),
            signal: watch::Sender::new(false),
            gauge: metrics.open_connections.clone(),
            pressure_gauge: metrics.under_pressure.clone(),
            closed_idle: closed("pressure_idle"),
            closed_waiting: closed("pressure_waiting"),
        })
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Whether the gateway is under pressure now, and the changes from now on.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.signal.subscribe()
    }

    /// A worker's accept loops are running (it counts for [`Pressure::ahead`]).
    pub fn accepting(&self, worker: usize) {
        if let Some(mine) = self.per_worker.get(worker) {
            mine.store(0, Ordering::Relaxed);
        }
    }

    /// Whether `worker` holds two or more connections more than another worker.
    ///
    /// All workers wait on the same listening socket, and whichever wakes first accepts
    /// everything queued: a burst of new connections would otherwise land on one worker while
    /// the other idles. A worker that is ahead yields once before accepting, so that another
    /// worker, woken by the same arrival, can take the connection; it never sleeps, so a burst
    /// is drained at once whichever worker takes it. (`SO_REUSEPORT` sockets per worker would
    /// balance too, but would let a second instance started by mistake share the port
    /// silently instead of failing to bind.)
    pub fn ahead(&self, worker: usize) -> bool {
        let Some(mine) = self.per_worker.get(worker) else {
            return false;
        };
        let mine = mine.load(Ordering::Relaxed);
        self.per_worker
            .iter()
            .enumerate()
            .any(|(i, other)| i != worker && other.load(Ordering::Relaxed).saturating_add(1) < mine)
    }

    /// Takes a place for a new connection served by `worker`, making room at the cap; `None`
    /// when nothing could be closed for it (the caller closes it, and counts it).
    pub fn admit(self: &Arc<Self>, worker: usize) -> Option<Slot> {
        self.admit_at(worker, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, worker: usize, now: Instant) -> Option<Slot> {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        let counted = open.saturating_sub(self.leaving.load(Ordering::Relaxed));
        if counted > self.cap
            && self.make_room(counted - self.cap, now) == 0
            && counted > self.cap + self.headroom
        {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        self.gauge.inc();
        self.update(open);
        let activity = Activity::new();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(registry) = self.registries.get(worker) {
            lock(registry).insert(id, Arc::downgrade(&activity));
        }
        if let Some(mine) = self.per_worker.get(worker) {
            mine.fetch_add(1, Ordering::Relaxed);
        }
        Some(Slot {
            pressure: self.clone(),
            worker,
            id,
            activity,
        })
    }

    /// Chooses at least `need` connections to close (see the module docs); returns how many
    /// it chose.
    fn make_room(&self, need: usize, now: Instant) -> usize {
        let ms = |t: Instant| u64::try_from(t.saturating_duration_since(self.epoch).as_millis());
        if ms(now).is_ok_and(|now| now < self.quiet_until_ms.load(Ordering::Relaxed)) {
            return 0;
        }
        let mut idle = Vec::new();
        let mut waiting = Vec::new();
        let mut next_look = now + QUIET;
        for registry in self.registries.iter() {
            for activity in lock(registry).values().filter_map(Weak::upgrade) {
                match activity.standing() {
                    Some(Standing::Idle { since }) => idle.push((since, activity)),
                    Some(Standing::Waiting { since }) if since + MIN_WAITING <= now => {
                        waiting.push((since, activity));
                    }
                    Some(Standing::Waiting { since }) => {
                        next_look = next_look.min(since + MIN_WAITING);
                    }
                    Some(Standing::Busy) | None => {}
                }
            }
        }
        let mut chosen = 0;
        chosen += self.close_oldest(idle, need.max(IDLE_BATCH), &self.closed_idle);
        if chosen < need {
            chosen += self.close_oldest(waiting, need - chosen, &self.closed_waiting);
        }
        if chosen == 0 {
            if let Ok(next) = ms(next_look) {
                self.quiet_until_ms.store(next, Ordering::Relaxed);
            }
        }
        chosen
    }

    /// Asks the `n` oldest of `candidates` to close; returns how many did not already.
    fn close_oldest(
        &self,
        mut candidates: Vec<(Instant, Arc<Activity>)>,
        n: usize,
        counter: &Counter,
    ) -> usize {
        if candidates.len() > n {
            candidates.select_nth_unstable_by_key(n, |(since, _)| *since);
            candidates.truncate(n);
        }
        let mut closed = 0;
        for (_, activity) in candidates {
            // Counted leaving before it is marked, so that its place, given back at any
            // moment from the mark on, always finds the count it takes back.
            self.leaving.fetch_add(1, Ordering::AcqRel);
            if activity.evict() {
                counter.inc();
                closed += 1;
            } else {
                // Already chosen by another look, or closed since it was read.
                self.leaving.fetch_sub(1, Ordering::AcqRel);
            }
        }
        closed
    }

    /// Enters or leaves the pressure state for `open` connections.
    fn update(&self, open: usize) {
        let under = self.under.load(Ordering::Relaxed);
        let now = if under {
            open >= self.low
        } else {
            open >= self.high
        };
        if now != under && self.under.swap(now, Ordering::Relaxed) == under {
            self.pressure_gauge.set(i64::from(now));
            self.signal.send_replace(now);
            if now {
                tracing::warn!(
                    open,
                    cap = self.cap,
                    "under pressure: connections at 90% of server.max_connections; deadlines for request heads and idle connections cut to server.pressure_timeout, idle connections closed for room"
                );
            } else {
                tracing::info!(open, "pressure over: open connections below 80% of the cap");
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let p = &self.pressure;
        if let Some(registry) = p.registries.get(self.worker) {
            lock(registry).remove(&self.id);
        }
        if let Some(mine) = p.per_worker.get(self.worker) {
            mine.fetch_sub(1, Ordering::Relaxed);
        }
        if self.activity.close() {
            p.leaving.fetch_sub(1, Ordering::AcqRel);
        }
        let open = p.open.fetch_sub(1, Ordering::Relaxed) - 1;
        p.gauge.dec();
        p.update(open);
    }
}

/// The lock, whatever a panic elsewhere did: every change under it is one insert or remove.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pressure(cap: usize, counts: &[usize]) -> Arc<Pressure> {
        let p = Pressure::new(cap, counts.len(), &Metrics::new());
        for (w, n) in counts.iter().enumerate() {
            p.per_worker[w].store(*n, Ordering::Relaxed);
        }
        p
    }

    #[test]
    fn a_worker_is_ahead_only_when_it_holds_two_more_than_another() {
        let p = pressure(10, &[5, 3]);
        assert!(p.ahead(0));
        assert!(!p.ahead(1));
        let p = pressure(10, &[4, 3, 9]);
        assert!(!p.ahead(0), "one over is an even split of an odd count");
        assert!(p.ahead(2));
        assert!(
            !pressure(10, &[7]).ahead(0),
            "a single worker takes everything"
        );
        assert!(
            !pressure(10, &[0, 0]).ahead(5),
            "an unknown worker is never held back"
        );
        assert!(
            !pressure(10, &[9, NOT_ACCEPTING]).ahead(0),
            "a worker that never started accepting is not waited for"
        );
    }

    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room_then_the_longest_waiting() {
        let p = pressure(3, &[0]);
        let waiting = p.admit(0).unwrap();
        let idle_old = p.admit(0).unwrap();
        drop(idle_old.activity.begin(false));
        let idle_new = p.admit(0).unwrap();
        drop(idle_new.activity.begin(false));
        let busy = p.admit(0).expect("room made");
        let _in_flight = busy.activity.begin(false);
        assert!(idle_old.activity.is_evicted() && idle_new.activity.is_evicted());
        assert!(
            !waiting.activity.is_evicted(),
            "idle ones go first, a batch at a time"
        );
        drop((idle_old, idle_new));
        let other = p.admit(0).expect("below the cap");
        let _busy_too = other.activity.begin(false);
        assert!(
            p.admit(0).is_none(),
            "nothing idle, and the waiting one has waited only a moment"
        );
        let later = Instant::now() + MIN_WAITING;
        let last = p.admit_at(0, later).expect("room made");
        assert!(
            waiting.activity.is_evicted(),
            "no idle one left: the waiting one goes"
        );
        drop(waiting);
        let busy_last = last.activity.begin(false);
        let then = later + MIN_WAITING;
        assert!(
            p.admit_at(0, then).is_none(),
            "everything is busy: the newcomer is refused ({} open)",
            p.open()
        );
        drop(busy_last);
        assert!(
            p.admit_at(0, then).is_none(),
            "after a look that found nothing, the next waits a moment"
        );
        assert!(p.admit_at(0, then + QUIET).is_some(), "the idle one goes");
        assert!(last.activity.is_evicted());
    }

    #[test]
    fn pressure_starts_at_ninety_percent_and_ends_below_eighty() {
        let p = pressure(10, &[0]);
        let rx = p.watch();
        let mut held: Vec<Slot> = (0..8).map(|_| p.admit(0).unwrap()).collect();
        assert!(!*rx.borrow());
        held.push(p.admit(0).unwrap());
        assert!(*rx.borrow(), "9 of 10");
        held.pop();
        assert!(*rx.borrow(), "8 of 10 is not below 80 %");
        held.pop();
        assert!(!*rx.borrow(), "7 of 10");
    }
}
