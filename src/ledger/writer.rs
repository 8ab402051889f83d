//! The writer: one OS thread that owns the database connection, fed by two bounded queues.
//!
//! - the **row queue** takes [`Record`]s from the data path ([`Ledger::record`]) and flush
//!   markers; the request side only takes a short lock to push, and never waits: a full queue
//!   or a failing database costs the row, counted, not the callback's time;
//! - the **urgent queue** takes [`Job`]s whose caller awaits the commit (a replay guard's
//!   statement); it is drained first, so such a job never waits behind a backlog of rows.
//!
//! Each round takes every urgent job and up to [`BATCH`] queued rows (only [`URGENT_RIDE`]
//! along with urgent jobs, which should not wait for hundreds of inserts) and commits them in
//! one transaction (group commit: one fsync for the lot), then answers the waiters. Rows alone
//! wait for a round until [`COMMIT_WINDOW`] has passed since the last commit (or a batch is
//! full, or someone flushes): a quiet ledger commits a row at once, a busy one in batches of
//! hundreds, and most of a commit's cost is per page written, not per row (the WAL frames, the
//! checkpoint that copies them, the fsync), so its cost per row falls with the batch. Before each
//! round the writer checks that the path still names the file it has open (a deleted or
//! replaced database would otherwise swallow rows into an unlinked inode) and recreates it if
//! not. When the database fails, the round's rows are counted lost, waiters get the error, and
//! the writer retries with a backoff (an urgent job triggers an attempt at once) until it works
//! again; meanwhile rows wait in the queue, and beyond its capacity are counted `write_failed`.
//!
//! [`Ledger::record`]: super::Ledger::record

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{oneshot, watch};

use super::record::{unix_micros, ClickFields, Record, Verdict};
use super::store::{Location, Op, OpResult, Store};
use super::{Done, Job, LedgerError};
use crate::click::MAX_CALLBACK_BODY;
use crate::metrics::Metrics;

/// Rows per transaction at most: a batch stays a few milliseconds of work, so an urgent job
/// arriving during one waits little.
pub const BATCH: usize = 512;
/// Rows that ride along in a transaction carrying urgent jobs: enough to keep a backlog
/// moving, few enough that the urgent job's commit is not held up by them.
pub const URGENT_RIDE: usize = 64;
/// How long rows may wait after a commit for the next one: an upper bound on the extra time a
/// row spends queued (it is on no request's path) that turns a busy ledger's commits into a
/// hundred a second, whatever the rate. Urgent jobs never wait for it.
pub const COMMIT_WINDOW: Duration = Duration::from_millis(10);
/// Rows deleted per pruning transaction: pruning never holds the write lock for long.
pub const PRUNE_BATCH: u32 = 500;
/// How often the writer looks for rows past their retention.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// A lost row is logged at most this often (with the count since the last line).
const LOG_EVERY: Duration = Duration::from_secs(60);
/// First retry after a failure, doubling up to `BACKOFF_MAX`.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The writer wakes at least this often when idle, for its housekeeping.
const TICK: Duration = Duration::from_secs(1);
/// How often the writer measures the ledger against `ledger.max_size` and `ledger.min_free`.
const SIZE_EVERY: Duration = Duration::from_secs(1);

/// `ledger.max_size` and `ledger.min_free`: beyond them, refused callbacks give way.
#[derive(Debug, Clone, Copy)]
pub struct SizeBounds {
    pub max_size: u64,
    pub min_free: u64,
}

/// What a store holds, for what its writer says when it fails: a lost ledger row costs a record,
/// a guard store that cannot answer costs callbacks their guard (`guard.on_store_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Ledger,
    /// A SQLite ledger's `.guard` file: bindings only.
    Guard,
}

/// Why a row was lost: the label of `ledger_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The queue was full while the database worked: the writer is behind.
    QueueFull = 0,
    /// The database failed the row's batch, or was failing when the queue was full.
    WriteFailed = 1,
    /// The ledger was closing or closed, or the row was still queued at the stop deadline.
    Shutdown = 2,
}

impl DropReason {
    const ALL: [DropReason; 3] = [
        DropReason::QueueFull,
        DropReason::WriteFailed,
        DropReason::Shutdown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::WriteFailed => "write_failed",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// An entry of the row queue.
enum Queued {
    Row(Box<Record>),
    /// Answered once everything queued before it has been committed or dropped.
    Flush(oneshot::Sender<Result<Done, LedgerError>>),
}

struct Urgent {
    job: Job,
    reply: oneshot::Sender<Result<Done, LedgerError>>,
}

#[derive(Default)]
struct State {
    rows: VecDeque<Queued>,
    /// Flush markers in `rows`: a round is due at once while there is one.
    flushes: usize,
    urgent: VecDeque<Urgent>,
    /// Set by `close`: drain until empty or until this instant (`None`: no deadline).
    closing: Option<Option<Instant>>,
    /// The writer has exited: nothing queued will be taken any more.
    exited: bool,
}

/// What the data path and the writer share.
pub(super) struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    capacity: usize,
    retention: Duration,
    metrics: Arc<Metrics>,
    /// `ledger_dropped_total` by [`DropReason`], resolved once.
    dropped: [Counter; 3],
    /// Lost since the last log line, by [`DropReason`].
    unlogged: [AtomicU64; 3],
    /// The database failed and has not worked since.
    failing: AtomicBool,
    /// The ledger is at its size bound: refused callbacks are not recorded.
    refused_full: AtomicBool,
    bounds: SizeBounds,
    /// `ledger_unrecorded_total{reason="size"}`.
    unrecorded_size: Counter,
    exited_tx: watch::Sender<bool>,
    role: Role,
}

impl Shared {
    pub(super) fn new(
        capacity: usize,
        retention: Duration,
        bounds: SizeBounds,
        metrics: Arc<Metrics>,
        role: Role,
    ) -> (Arc<Shared>, watch::Receiver<bool>) {
        let unrecorded_size = metrics
            .ledger_unrecorded
            .get_or_create(&crate::metrics::ReasonLabels { reason: "size" })
            .clone();
        let dropped = DropReason::ALL.map(|r| {
            metrics
                .ledger_dropped
                .get_or_create(&crate::metrics::ReasonLabels { reason: r.label() })
                .clone()
        });
        let (exited_tx, exited_rx) = watch::channel(false);
        let shared = Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            capacity,
            retention,
            metrics,
            dropped,
            unlogged: Default::default(),
            failing: AtomicBool::new(false),
            refused_full: AtomicBool::new(false),
            bounds,
            unrecorded_size,
            exited_tx,
            role,
        };
        (Arc::new(shared), exited_rx)
    }

    /// The lock, whatever a panic elsewhere did: the queue's contents stay consistent (every
    /// change under the lock is a single push or drain).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn drop_rows(&self, reason: DropReason, n: u64) {
        if n > 0 {
            self.dropped[reason as usize].inc_by(n);
            self.unlogged[reason as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Queues a row; never waits beyond the push itself. A refused callback's row is not
    /// queued while the ledger is at its size bound (counted instead).
    pub(super) fn record(&self, mut rec: Record) {
        if matches!(rec.verdict, Verdict::Rejected | Verdict::Refused)
            && self.refused_full.load(Ordering::Relaxed)
        {
            self.unrecorded_size.inc();
            return;
        }
        // A callback body is at most this long; the ledger never holds more of anything else
        // that reaches a callback path (a reference-counted slice: no copy).
        if rec.body.len() > MAX_CALLBACK_BODY {
            rec.body = rec.body.slice(..MAX_CALLBACK_BODY);
        }
        let mut st = self.lock();
        if st.closing.is_some() || st.exited {
            drop(st);
            return self.drop_rows(DropReason::Shutdown, 1);
        }
        if st.rows.len() >= self.capacity {
            drop(st);
            let reason = if self.failing.load(Ordering::Relaxed) {
                DropReason::WriteFailed
            } else {
                DropReason::QueueFull
            };
            return self.drop_rows(reason, 1);
        }
        st.rows.push_back(Queued::Row(Box::new(rec)));
        let depth = st.rows.len();
        self.metrics.ledger_queue_depth.set(depth as i64);
        drop(st);
        // The writer sleeps past the commit window only on an empty queue; with rows queued it
        // wakes at the window's end by itself, and a full batch cuts that short. So a row
        // wakes it only in those two cases, not once per row (each wake is a futex call here
        // and a context switch there).
        if depth == 1 || depth == BATCH {
            self.wake.notify_one();
        }
    }

    pub(super) fn flush(&self) -> oneshot::Receiver<Result<Done, LedgerError>> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.lock();
        if st.closing.is_some() || st.exited {
            let _ = tx.send(Err(LedgerError::Closed));
        } else if st.rows.len() >= self.capacity {
            let _ = tx.send(Err(LedgerError::QueueFull));
        } else {
            st.rows.push_back(Queued::Flush(tx));
            st.flushes += 1;
            drop(st);
            self.wake.notify_one();
        }
        rx
    }

    pub(super) fn submit(&self, job: Job) -> oneshot::Receiver<Result<Done, LedgerError>> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.lock();
        if st.exited {
            let _ = tx.send(Err(LedgerError::Closed));
        } else if st.urgent.len() >= self.capacity {
            let _ = tx.send(Err(LedgerError::QueueFull));
        } else {
            st.urgent.push_back(Urgent { job, reply: tx });
            drop(st);
            self.wake.notify_one();
        }
        rx
    }

    /// Asks the writer to drain and exit, by `deadline` if given.
    pub(super) fn close(&self, deadline: Option<Instant>) {
        let mut st = self.lock();
        // An earlier deadline wins; a later or absent one does not extend it.
        st.closing = Some(match st.closing {
            Some(Some(earlier)) => Some(deadline.map_or(earlier, |d| d.min(earlier))),
            _ => deadline,
        });
        drop(st);
        self.wake.notify_all();
    }
}

/// The database's health as the writer sees it.
enum Health {
    Ok,
    Failing {
        /// No round of rows before this (urgent jobs try at once).
        retry_at: Instant,
        backoff: Duration,
    },
}

pub(super) struct Writer {
    shared: Arc<Shared>,
    location: Location,
    store: Option<Store>,
    health: Health,
    next_prune: Instant,
    last_log: Option<Instant>,
    /// The last failure, logged with the next drop report.
    last_error: Option<String>,
    /// When the last round of rows was committed (see [`COMMIT_WINDOW`]).
    last_commit: Instant,
    /// When the size bounds are checked next.
    next_size_check: Instant,
    /// At the size bound, the last prune found no refused row left: no more scans for them
    /// until the bound is left (nothing refused is recorded meanwhile).
    refused_pruned_out: bool,
}

/// Marks the writer exited however its thread ends, so nothing waits for it in vain: pending
/// reply senders are dropped with the queue, which their receivers see as `Closed`.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.exited = true;
        let left = std::mem::take(&mut st.rows);
        let urgent = std::mem::take(&mut st.urgent);
        drop(st);
        let rows = left
            .into_iter()
            .filter(|q| matches!(q, Queued::Row(_)))
            .count();
        self.0.drop_rows(DropReason::Shutdown, rows as u64);
        for u in urgent {
            let _ = u.reply.send(Err(LedgerError::Closed));
        }
        self.0.metrics.ledger_queue_depth.set(0);
        let _ = self.0.exited_tx.send(true);
    }
}

impl Writer {
    /// `prune_soon`: the last prune deleted a full batch, so the next is due at once.
    pub(super) fn new(
        shared: Arc<Shared>,
        location: Location,
        store: Store,
        prune_soon: bool,
    ) -> Writer {
        let now = Instant::now();
        Writer {
            shared,
            location,
            store: Some(store),
            health: Health::Ok,
            next_prune: if prune_soon { now } else { now + PRUNE_EVERY },
            last_log: None,
            last_error: None,
            last_commit: now.checked_sub(COMMIT_WINDOW).unwrap_or(now),
            next_size_check: now,
            refused_pruned_out: false,
        }
    }

    pub(super) fn run(mut self) {
        let _guard = ExitGuard(self.shared.clone());
        loop {
            let round = self.take();
            let exit = round.exit;
            if !round.urgent.is_empty() || !round.rows.is_empty() {
                self.commit(round.urgent, round.rows);
            }
            self.housekeeping();
            if exit {
                self.report_drops(true);
                // The connection closes here (SQLite checkpoints the WAL into the file).
                self.store = None;
                return;
            }
        }
    }

    /// Waits for work and takes a round of it.
    fn take(&mut self) -> Round {
        let shared = self.shared.clone();
        let mut st = shared.lock();
        loop {
            let now = Instant::now();
            let closing = st.closing;
            let rows_due = match self.health {
                Health::Ok => true,
                // Closing: one last attempt for what is queued, whatever the backoff.
                Health::Failing { retry_at, .. } => now >= retry_at || closing.is_some(),
            };
            let past_deadline = matches!(closing, Some(Some(d)) if now >= d);
            if past_deadline {
                let left = std::mem::take(&mut st.rows);
                st.flushes = 0;
                let urgent: Vec<Urgent> = st.urgent.drain(..).collect();
                self.shared.metrics.ledger_queue_depth.set(0);
                drop(st);
                let mut rows = 0;
                for q in left {
                    match q {
                        Queued::Row(_) => rows += 1,
                        Queued::Flush(tx) => {
                            let _ = tx.send(Err(LedgerError::Closed));
                        }
                    }
                }
                self.shared.drop_rows(DropReason::Shutdown, rows);
                for u in urgent {
                    let _ = u.reply.send(Err(LedgerError::Closed));
                }
                return Round::exit();
            }
            if !st.urgent.is_empty() || (rows_due && self.window_due(&st, now)) {
                let urgent: Vec<Urgent> = st.urgent.drain(..).collect();
                let cap = if urgent.is_empty() {
                    BATCH
                } else {
                    URGENT_RIDE
                };
                let n = if rows_due {
                    batch_len(&st.rows, cap)
                } else {
                    0
                };
                let rows: Vec<Queued> = st.rows.drain(..n).collect();
                st.flushes -= rows
                    .iter()
                    .filter(|q| matches!(q, Queued::Flush(_)))
                    .count();
                self.shared
                    .metrics
                    .ledger_queue_depth
                    .set(st.rows.len() as i64);
                let exit = closing.is_some() && st.rows.is_empty() && st.urgent.is_empty();
                return Round { urgent, rows, exit };
            }
            if closing.is_some() && st.rows.is_empty() {
                return Round::exit();
            }
            let mut wake_at = now + TICK;
            if !st.rows.is_empty() {
                wake_at = wake_at.min(match self.health {
                    Health::Ok => self.last_commit + COMMIT_WINDOW,
                    // Both must have passed (see `rows_due` and `window_due`).
                    Health::Failing { retry_at, .. } => {
                        retry_at.max(self.last_commit + COMMIT_WINDOW)
                    }
                });
            }
            if let Some(Some(deadline)) = closing {
                wake_at = wake_at.min(deadline);
            }
            if self.housekeeping_due(now) {
                drop(st);
                self.housekeeping();
                st = shared.lock();
                continue;
            }
            st = shared
                .wake
                .wait_timeout(st, wake_at.saturating_duration_since(now))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Queued rows make a round now: a batch is full, someone flushes, the ledger closes, or
    /// the commit window since the last round of rows has passed (see [`COMMIT_WINDOW`]).
    fn window_due(&self, st: &State, now: Instant) -> bool {
        !st.rows.is_empty()
            && (st.rows.len() >= BATCH
                || st.flushes > 0
                || st.closing.is_some()
                || now >= self.last_commit + COMMIT_WINDOW)
    }

    fn housekeeping_due(&self, now: Instant) -> bool {
        let prune = matches!(self.health, Health::Ok)
            && (now >= self.next_prune
                || (now >= self.next_size_check && self.shared.role == Role::Ledger));
        let log = self
            .shared
            .unlogged
            .iter()
            .any(|n| n.load(Ordering::Relaxed) > 0)
            && self.last_log.is_none_or(|t| now >= t + LOG_EVERY);
        prune || log
    }

    /// Logs lost rows (at most once a minute), prunes a batch of old rows when due, and keeps
    /// the ledger within its size bounds.
    fn housekeeping(&mut self) {
        let now = Instant::now();
        self.report_drops(false);
        if matches!(self.health, Health::Ok)
            && self.shared.role == Role::Ledger
            && now >= self.next_size_check
        {
            self.next_size_check = now + SIZE_EVERY;
            if self.measure() && !self.refused_pruned_out {
                self.prune_refused();
            }
        }
        if matches!(self.health, Health::Ok) && now >= self.next_prune {
            match self.attempt(&[prune_op(self.shared.retention)]) {
                Ok(results) => {
                    let (pruned, more) = match results.first() {
                        Some(OpResult::Pruned { rows, more }) => (*rows, *more),
                        _ => (0, false),
                    };
                    self.shared.metrics.ledger_pruned_rows.inc_by(pruned);
                    // A full batch: more are due; the next round comes after queued rows.
                    self.next_prune = if more { now } else { now + PRUNE_EVERY };
                }
                Err(e) => {
                    self.failed(&e);
                    self.next_prune = now + PRUNE_EVERY;
                }
            }
        }
    }

    /// Measures the ledger against `ledger.max_size` and `ledger.min_free` (after every commit
    /// of rows, and every [`SIZE_EVERY`]); returns whether it is at its bound. At either bound,
    /// refused callbacks stop being recorded and the oldest refused rows are pruned, a batch per
    /// look (verified rows are always recorded: they find the pages pruning frees). Below 90 %
    /// of `max_size` with `min_free` free again, refused callbacks are recorded again.
    fn measure(&mut self) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        let bounds = self.shared.bounds;
        let was_full = self.shared.refused_full.load(Ordering::Relaxed);
        let used = match store.used_bytes() {
            Ok(used) => used,
            Err(e) => {
                tracing::debug!(ledger = %self.location, error = %e, "ledger: cannot measure its size");
                return was_full;
            }
        };
        let free = store.free_bytes();
        let full = free.is_some_and(|f| f < bounds.min_free)
            || used >= bounds.max_size
            || (was_full && used >= bounds.max_size / 10 * 9);
        if full != was_full {
            self.shared.refused_full.store(full, Ordering::Relaxed);
            self.refused_pruned_out = false;
            if full {
                tracing::warn!(
                    ledger = %self.location,
                    used,
                    free,
                    max_size = bounds.max_size,
                    min_free = bounds.min_free,
                    "ledger: at its size bound (ledger.max_size, or less than ledger.min_free free on its disk): refused callbacks are no longer recorded (click_gateway_ledger_unrecorded_total{{reason=\"size\"}}) and the oldest refused rows are pruned; verified callbacks are recorded as always. Free disk space or raise the bound"
                );
            } else {
                tracing::info!(ledger = %self.location, used, "ledger: back within its size bounds; refused callbacks are recorded again");
            }
        }
        full
    }

    /// Deletes a batch of the oldest refused rows (see [`Writer::measure`]).
    fn prune_refused(&mut self) {
        match self.attempt(&[Op::PruneRefused { limit: PRUNE_BATCH }]) {
            Ok(results) => {
                if let Some(OpResult::Pruned { rows, more }) = results.first() {
                    self.shared.metrics.ledger_pruned_rows.inc_by(*rows);
                    if *more {
                        self.next_size_check = Instant::now();
                    } else {
                        self.refused_pruned_out = true;
                    }
                }
            }
            Err(e) => self.failed(&e),
        }
    }

    fn report_drops(&mut self, last: bool) {
        let now = Instant::now();
        if !last && self.last_log.is_some_and(|t| now < t + LOG_EVERY) {
            return;
        }
        let counts = self
            .shared
            .unlogged
            .each_ref()
            .map(|n| n.swap(0, Ordering::Relaxed));
        if counts.iter().all(|&n| n == 0) {
            return;
        }
        self.last_log = Some(now);
        let total: u64 = counts.iter().sum();
        let by_reason: Vec<String> = DropReason::ALL
            .iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{}={n}", r.label()))
            .collect();
        tracing::warn!(
            ledger = %self.location,
            dropped = total,
            reasons = %by_reason.join(","),
            error = self.last_error.as_deref(),
            "ledger: {total} row(s) not recorded since the last report; callbacks were served as usual"
        );
    }

    /// Commits a round, answering its waiters; counts what was lost.
    fn commit(&mut self, urgent: Vec<Urgent>, rows: Vec<Queued>) {
        let mut records: Vec<Box<Record>> = Vec::with_capacity(rows.len());
        let mut flushes = Vec::new();
        for q in rows {
            match q {
                Queued::Row(r) => records.push(r),
                Queued::Flush(tx) => flushes.push(tx),
            }
        }
        // Decoded here, off the request path.
        let fields: Vec<ClickFields> = records
            .iter()
            .map(|r| ClickFields::decode(r.content_type.as_deref(), &r.body))
            .collect();
        let urgent_fields: Vec<Option<ClickFields>> = urgent
            .iter()
            .map(|u| match &u.job {
                Job::Record(r) => Some(ClickFields::decode(r.content_type.as_deref(), &r.body)),
                Job::Prune | Job::Bind(_) => None,
            })
            .collect();
        let mut ops = Vec::with_capacity(urgent.len() + records.len());
        for (u, f) in urgent.iter().zip(&urgent_fields) {
            ops.push(match (&u.job, f) {
                (Job::Record(r), Some(f)) => Op::Insert(r, f),
                (Job::Bind(b), _) => Op::Bind(b),
                _ => prune_op(self.shared.retention),
            });
        }
        let rows: Vec<(&Record, &ClickFields)> =
            records.iter().map(|r| &**r).zip(&fields).collect();
        if !rows.is_empty() {
            ops.push(Op::Rows(&rows));
        }
        let started = Instant::now();
        let outcome = self.attempt(&ops);
        drop(ops);
        if !rows.is_empty() {
            self.last_commit = Instant::now();
        }
        match outcome {
            Ok(results) => {
                if !rows.is_empty() && self.shared.role == Role::Ledger {
                    self.measure();
                }
                let m = &self.shared.metrics;
                m.ledger_commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                m.ledger_rows_written.inc_by(
                    results
                        .iter()
                        .map(|r| match r {
                            OpResult::Inserted { .. } => 1,
                            OpResult::Rows(n) => *n as u64,
                            _ => 0,
                        })
                        .sum(),
                );
                for (u, result) in urgent.into_iter().zip(results) {
                    let done = match result {
                        OpResult::Inserted { id } => Done::Recorded { id },
                        OpResult::Pruned { rows, .. } => {
                            m.ledger_pruned_rows.inc_by(rows);
                            Done::Pruned { rows }
                        }
                        OpResult::Bound(outcome) => Done::Bound(outcome),
                        // Only the batch's own op, never an urgent job's.
                        OpResult::Rows(_) => continue,
                    };
                    let _ = u.reply.send(Ok(done));
                }
                for tx in flushes {
                    let _ = tx.send(Ok(Done::Flushed));
                }
            }
            Err(e) => {
                let message = e.to_string();
                let lost_urgent = urgent
                    .iter()
                    .filter(|u| matches!(u.job, Job::Record(_)))
                    .count();
                self.shared.drop_rows(
                    DropReason::WriteFailed,
                    (records.len() + lost_urgent) as u64,
                );
                for u in urgent {
                    let _ = u.reply.send(Err(LedgerError::Unavailable(message.clone())));
                }
                for tx in flushes {
                    let _ = tx.send(Err(LedgerError::Unavailable(message.clone())));
                }
                self.failed(&e);
            }
        }
    }

    /// One transaction on a store that is the one the path names: reopened (recreated) first
    /// when the file was deleted or replaced, and tried once more on a fresh store if the file
    /// turns out to have been replaced during a failed attempt.
    fn attempt(&mut self, ops: &[Op<'_>]) -> Result<Vec<OpResult>, LedgerError> {
        for _ in 0..2 {
            if self.store.as_ref().is_some_and(Store::replaced) {
                match self.shared.role {
                    Role::Ledger => tracing::warn!(
                        ledger = %self.location,
                        "ledger: the database file was deleted or replaced; opening it anew (rows already committed stay in the old file)"
                    ),
                    // Not a lost record but a forgotten guard: say so loudly.
                    Role::Guard => tracing::error!(
                        ledger = %self.location,
                        "guard store: the database file was deleted or replaced; opening it anew: the signatures bound before are forgotten (a changed replay of a callback seen before would now be bound as new)"
                    ),
                }
                if let Some(old) = self.store.take() {
                    old.retire();
                }
            }
            let store = match &mut self.store {
                Some(store) => store,
                None => {
                    let store = Store::open_writer(&self.location)?;
                    self.shared.metrics.ledger_reopens.inc();
                    self.store.insert(store)
                }
            };
            match store.apply(ops) {
                Ok(results) => {
                    self.recovered();
                    return Ok(results);
                }
                // Replaced during the attempt: retired and opened anew by the next iteration.
                Err(e) if store.replaced() => self.last_error = Some(e.to_string()),
                Err(e) => {
                    // SQLite: opened anew at the next attempt, a connection that saw an I/O
                    // error is not trusted to recover by itself (its WAL stays: it may hold
                    // commits). PostgreSQL: the pool replaces the failed connection itself.
                    if store.reopen_after_failure() {
                        self.store = None;
                    }
                    return Err(e);
                }
            }
        }
        Err(LedgerError::Unavailable(
            self.last_error
                .clone()
                .unwrap_or_else(|| "the database file keeps being replaced".to_owned()),
        ))
    }

    fn failed(&mut self, e: &LedgerError) {
        let now = Instant::now();
        let backoff = match self.health {
            Health::Ok => {
                match self.shared.role {
                    Role::Ledger => tracing::error!(
                        ledger = %self.location,
                        error = %e,
                        "ledger: cannot write the database; callbacks are served as usual, their rows are counted as lost (click_gateway_ledger_dropped_total) until it works again"
                    ),
                    Role::Guard => tracing::error!(
                        ledger = %self.location,
                        error = %e,
                        "guard store: cannot write the database; verified callbacks get guard.on_store_error (refuse: a 503, Click retries; allow: forwarded unguarded), counted in click_gateway_guard_checks_total{{outcome=\"store_error\"}}, until it works again"
                    ),
                }
                BACKOFF_MIN
            }
            Health::Failing { backoff, .. } => (backoff * 2).min(BACKOFF_MAX),
        };
        self.health = Health::Failing {
            retry_at: now + backoff,
            backoff,
        };
        self.last_error = Some(e.to_string());
        self.shared.failing.store(true, Ordering::Relaxed);
    }

    fn recovered(&mut self) {
        if let Health::Failing { .. } = self.health {
            match self.shared.role {
                Role::Ledger => tracing::info!(
                    ledger = %self.location,
                    "ledger: the database works again; recording resumed"
                ),
                Role::Guard => tracing::info!(
                    ledger = %self.location,
                    "guard store: the database works again; callbacks are guarded again"
                ),
            }
            self.report_drops(true);
        }
        self.health = Health::Ok;
        self.last_error = None;
        self.shared.failing.store(false, Ordering::Relaxed);
    }
}

/// One pruning statement: at most [`PRUNE_BATCH`] rows older than `retention` from now.
fn prune_op(retention: Duration) -> Op<'static> {
    let cutoff = SystemTime::now()
        .checked_sub(retention)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Op::Prune {
        before_us: unix_micros(cutoff),
        limit: PRUNE_BATCH,
    }
}

/// Prunes one batch in a transaction of its own; returns the callbacks deleted, and whether
/// some table gave a whole batch (more are due).
pub(super) fn prune_batch(
    store: &mut Store,
    retention: Duration,
) -> Result<(u64, bool), LedgerError> {
    match store.apply(&[prune_op(retention)])?.first() {
        Some(OpResult::Pruned { rows, more }) => Ok((*rows, *more)),
        _ => Ok((0, false)),
    }
}

/// Queue entries making up one batch: up to `cap` rows, flush markers riding along.
fn batch_len(rows: &VecDeque<Queued>, cap: usize) -> usize {
    let mut n = 0;
    let mut records = 0;
    for q in rows {
        if let Queued::Row(_) = q {
            if records == cap {
                break;
            }
            records += 1;
        }
        n += 1;
    }
    n
}

struct Round {
    urgent: Vec<Urgent>,
    rows: Vec<Queued>,
    exit: bool,
}

impl Round {
    fn exit() -> Round {
        Round {
            urgent: Vec::new(),
            rows: Vec::new(),
            exit: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::record::sample;
    use std::io::Write;

    /// Log lines written by `tracing` on this thread.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn take(&self) -> String {
            String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
        }
    }

    fn writer(dir: &std::path::Path, capacity: usize) -> (Arc<Shared>, Writer) {
        let location = Location::Sqlite(dir.join("l.db"));
        let store = Store::open_writer(&location).unwrap();
        let (shared, _) = Shared::new(
            capacity,
            Duration::from_secs(3600),
            SizeBounds {
                max_size: u64::MAX,
                min_free: 0,
            },
            Arc::new(Metrics::new()),
            Role::Ledger,
        );
        let w = Writer::new(shared.clone(), location, store, false);
        (shared, w)
    }

    #[test]
    fn rows_wait_for_the_commit_window_unless_a_batch_fills_or_a_flush_asks() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, mut w) = writer(dir.path(), 2 * BATCH);
        let now = Instant::now();
        let due = |w: &Writer| w.window_due(&shared.lock(), now);
        // A quiet ledger: the first row commits at once.
        assert!(!due(&w), "nothing queued");
        shared.record(sample("a", SystemTime::now()));
        assert!(due(&w), "a row long after the last commit");
        // Just committed: the next rows wait for the window...
        w.last_commit = now;
        assert!(!due(&w));
        for i in 1..BATCH {
            shared.record(sample(&format!("r{i}"), SystemTime::now()));
        }
        assert!(due(&w), "...unless they fill a batch");
        let round = w.take();
        assert_eq!(round.rows.len(), BATCH);
        // ...or a flush asks, which takes the rows before it along.
        shared.record(sample("b", SystemTime::now()));
        assert!(!due(&w));
        let _flushed = shared.flush();
        assert!(due(&w));
        let round = w.take();
        assert_eq!(round.rows.len(), 2, "the row and the flush marker");
        assert_eq!(shared.lock().flushes, 0);
        shared.record(sample("c", SystemTime::now()));
        assert!(!due(&w));
        // The window passed.
        w.last_commit = now.checked_sub(COMMIT_WINDOW).unwrap();
        assert!(due(&w));
    }

    #[test]
    fn lost_rows_are_logged_at_most_once_a_minute_with_the_count_since() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, mut w) = writer(dir.path(), 1);
        // Only the log report is under test here.
        w.next_size_check = Instant::now() + Duration::from_secs(3600);
        let lines = Lines::default();
        let sink = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            shared.record(sample("a", SystemTime::now()));
            for _ in 0..3 {
                shared.record(sample("b", SystemTime::now()));
            }
            w.report_drops(false);
            let first = lines.take();
            assert!(
                first.contains("3 row(s) not recorded") && first.contains("queue_full=3"),
                "{first}"
            );
            shared.record(sample("c", SystemTime::now()));
            w.report_drops(false);
            assert_eq!(lines.take(), "", "a second line within the minute");
            assert!(!w.housekeeping_due(Instant::now()));
            // A minute later, the count since the last line.
            let a_minute_ago = Instant::now().checked_sub(LOG_EVERY).unwrap();
            w.last_log = Some(a_minute_ago);
            assert!(w.housekeeping_due(Instant::now()));
            w.report_drops(false);
            let second = lines.take();
            assert!(
                second.contains("1 row(s) not recorded") && second.contains("queue_full=1"),
                "{second}"
            );
            w.report_drops(false);
            assert_eq!(lines.take(), "", "nothing new to report");
        });
    }

    #[test]
    fn bodies_are_kept_to_a_callback_s_size_and_batches_to_their_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, _w) = writer(dir.path(), 2 * BATCH);
        let mut rec = sample("big", SystemTime::now());
        rec.body = bytes::Bytes::from(vec![b'x'; MAX_CALLBACK_BODY + 100]);
        shared.record(rec);
        let st = shared.lock();
        match st.rows.front() {
            Some(Queued::Row(r)) => assert_eq!(r.body.len(), MAX_CALLBACK_BODY),
            _ => panic!("not queued"),
        }
        drop(st);
        let mut rows: VecDeque<Queued> = VecDeque::new();
        for i in 0..BATCH + 3 {
            if i % 100 == 0 {
                rows.push_back(Queued::Flush(oneshot::channel().0));
            }
            rows.push_back(Queued::Row(Box::new(sample("r", SystemTime::now()))));
        }
        // 512 rows and the 6 flush markers among them; the 513th row starts the next batch.
        assert_eq!(batch_len(&rows, BATCH), BATCH + 6);
        assert_eq!(batch_len(&rows, URGENT_RIDE), URGENT_RIDE + 1);
    }
}
