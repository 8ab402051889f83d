//! The writer: one OS thread that owns the database connection, fed by two bounded queues.
//!
//! - the **write-ahead queue** takes the rows of callbacks about to be forwarded (SQLite; a
//!   PostgreSQL row goes in one round trip of its own, [`super::postgres`]), each with the
//!   callback waiting for its commit, and the reads the guard waits for; it is drained first;
//! - the **row queue** takes what nobody waits for: refused callbacks' rows, forwarded ones'
//!   answers, corrections; a full queue or a failing database costs such an entry, counted,
//!   never a callback's time. Such an entry waits up to `LINGER` for write-ahead rows to
//!   ride along with (under load it finds some at once), so that answers do not each cost a
//!   commit of their own.
//!
//! **Group commit without a window.** Each round takes everything waiting (up to [`BATCH`]
//! rows, and about a megabyte (`MEASURE_BYTES`) of the row queue's bodies; only [`RIDE`] of the
//! row queue along with write-ahead rows, which should not wait for hundreds of refusals) and
//! commits it in one transaction, then answers the waiters: the next round gathers while a
//! commit is in flight, and nothing ever waits for a timer. Before each round the writer checks
//! that the path still names the file it has open (a deleted or replaced database would
//! otherwise swallow rows into an unlinked inode) and recreates it if not. When the database
//! fails, the round's rows are counted lost, waiters get the error (and `guard.on_store_error`
//! decides for their callbacks), and the writer retries with a backoff (a write-ahead row
//! triggers an attempt at once) until it works again; meanwhile the row queue waits, and beyond
//! its capacity entries are counted `write_failed`. Failures are logged when they start and
//! when they end, and lost rows once a minute, never a line per callback.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{oneshot, watch};

use super::error::LedgerError;
use super::model::Location;
use super::model::{Admitted, Correction, Op, OpResult, Row, StoredBody};
use super::record::{unix_micros, Answer, ClickFields, Record, Verdict};
use super::store::Store;
use crate::click::digest::DigestKey;
use crate::click::MAX_CALLBACK_BODY;
use crate::config::Synchronous;
use crate::metrics::Metrics;

/// Rows per transaction at most: a round stays a few milliseconds of work.
pub const BATCH: usize = 512;
/// Entries of the row queue that ride along with write-ahead rows.
pub const RIDE: usize = 64;
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
/// How long entries of the row queue alone wait for write-ahead rows to commit with, unless
/// [`RIDE`] of them are queued: a commit costs about as much whether it holds one row or
/// sixteen (benches/store.rs), and an answer committed apart would double the writer's work
/// per callback. What `kill -9` can lose is therefore the last instants of refused rows and
/// answers (this long, and a commit in flight), never a row that a callback waited for.
const LINGER: Duration = Duration::from_millis(2);
/// How often the writer measures a SQLite ledger against `ledger.max_size` and
/// `ledger.min_free` (a few page counts and a `statvfs`), besides after each [`MEASURE_BYTES`]
/// written.
const SIZE_EVERY: Duration = Duration::from_secs(1);
/// Rows' bytes written between two measures of a SQLite ledger: small beside any bound (a
/// flood of refused rows overshoots it by at most this much), large beside a commit. Measuring
/// after every commit cost more than the commit's rows at low batch sizes (callgrind).
const MEASURE_BYTES: usize = 1 << 20;
/// What a row costs beside its body, for [`MEASURE_BYTES`]: its other columns, its index
/// entries, its answer (a rough figure; the measure itself is exact).
const ROW_OVERHEAD: usize = 256;
/// How often it measures a PostgreSQL one (a query; nothing after commits).
const PG_SIZE_EVERY: Duration = Duration::from_secs(60);

/// `ledger.max_size` and `ledger.min_free`: beyond them, refused callbacks give way.
#[derive(Debug, Clone, Copy)]
pub struct SizeBounds {
    pub max_size: u64,
    pub min_free: u64,
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

/// An entry of the row queue: nobody waits for it (but a flush).
enum Queued {
    /// A row, with its id when the gateway numbers rows (SQLite).
    Row(Option<i64>, Box<Record>),
    Answer(Answer),
    Correction(Correction),
    /// Answered once everything queued before it has been committed or dropped.
    Flush(oneshot::Sender<Result<(), LedgerError>>),
}

/// An entry of the write-ahead queue: a callback waits for it.
enum Waited {
    /// The row of a callback about to be forwarded: answered with its id once committed.
    Row(
        i64,
        Box<Record>,
        oneshot::Sender<Result<Admitted, LedgerError>>,
    ),
    /// A row's content type and body.
    Body(i64, oneshot::Sender<Result<StoredBody, LedgerError>>),
}

#[derive(Default)]
struct State {
    rows: VecDeque<Queued>,
    /// Flush markers in `rows`: a round is due at once while there is one.
    flushes: usize,
    waited: VecDeque<Waited>,
    /// Set by `close`: drain until empty or until this instant (`None`: no deadline).
    closing: Option<Option<Instant>>,
    /// The writer has exited: nothing queued will be taken any more.
    exited: bool,
    /// The writer waits on `wake` (else it is at work and looks at the queues before waiting).
    sleeping: bool,
    /// When the oldest entry of `rows` was queued (see [`LINGER`]).
    rows_since: Option<Instant>,
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
    /// The next row id, when the gateway numbers rows (SQLite); 0 when the database does.
    next_id: AtomicI64,
    exited_tx: watch::Sender<bool>,
}

impl Shared {
    pub(super) fn new(
        capacity: usize,
        retention: Duration,
        bounds: SizeBounds,
        metrics: Arc<Metrics>,
        first_id: Option<i64>,
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
            next_id: AtomicI64::new(first_id.unwrap_or(0)),
            exited_tx,
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

    /// The gateway's count goes on after `max_id` (a file opened anew that holds rows).
    fn ids_after(&self, max_id: i64) {
        if self.next_id.load(Ordering::Relaxed) != 0 {
            self.next_id.fetch_max(max_id + 1, Ordering::Relaxed);
        }
    }

    /// A row id from the gateway's count (SQLite), in arrival order; `None` when the database
    /// numbers rows.
    pub(super) fn next_id(&self) -> Option<i64> {
        match self.next_id.load(Ordering::Relaxed) {
            0 => None,
            _ => Some(self.next_id.fetch_add(1, Ordering::Relaxed)),
        }
    }

    /// A callback body is at most this long; the ledger never holds more of anything else
    /// that reaches a callback path (a reference-counted slice: no copy).
    fn clip(rec: &mut Record) {
        if rec.body.len() > MAX_CALLBACK_BODY {
            rec.body = rec.body.slice(..MAX_CALLBACK_BODY);
        }
    }

    /// Queues an entry nobody waits for; never waits beyond the push itself. Returns
    /// whether it was queued (else counted lost).
    fn queue(&self, entry: Queued) -> bool {
        let mut st = self.lock();
        if st.closing.is_some() || st.exited {
            drop(st);
            self.drop_rows(DropReason::Shutdown, 1);
            return false;
        }
        if st.rows.len() >= self.capacity {
            drop(st);
            let reason = if self.failing.load(Ordering::Relaxed) {
                DropReason::WriteFailed
            } else {
                DropReason::QueueFull
            };
            self.drop_rows(reason, 1);
            return false;
        }
        st.rows.push_back(entry);
        let depth = st.rows.len();
        self.metrics.ledger_queue_depth.set(depth as i64);
        if depth == 1 {
            st.rows_since = Some(Instant::now());
        }
        // A writer at work takes the entry in its next round, and one asleep with rows
        // queued already wakes for them in time: no futex call for either.
        let wake = st.sleeping && (depth == 1 || depth == RIDE);
        if wake {
            st.sleeping = false;
        }
        drop(st);
        if wake {
            self.wake.notify_one();
        }
        true
    }

    /// Queues a refused callback's row (not while the ledger is at its size bound: counted
    /// instead); returns its id when queued and the gateway numbers rows.
    pub(super) fn record(&self, mut rec: Record) -> Option<i64> {
        if gives_way(&rec) && self.refused_full.load(Ordering::Relaxed) {
            self.unrecorded_size.inc();
            return None;
        }
        Self::clip(&mut rec);
        let id = self.next_id();
        self.queue(Queued::Row(id, Box::new(rec)))
            .then_some(id)
            .flatten()
    }

    pub(super) fn answer(&self, answer: Answer) {
        self.queue(Queued::Answer(answer));
    }

    pub(super) fn correct(&self, correction: Correction) {
        self.queue(Queued::Correction(correction));
    }

    pub(super) fn flush(&self) -> oneshot::Receiver<Result<(), LedgerError>> {
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

    /// Queues a write-ahead row (its id already given), answered once committed.
    pub(super) fn write_ahead(
        &self,
        id: i64,
        mut rec: Record,
    ) -> oneshot::Receiver<Result<Admitted, LedgerError>> {
        Self::clip(&mut rec);
        let (tx, rx) = oneshot::channel();
        self.wait_for(Waited::Row(id, Box::new(rec), tx));
        rx
    }

    pub(super) fn body(&self, id: i64) -> oneshot::Receiver<Result<StoredBody, LedgerError>> {
        let (tx, rx) = oneshot::channel();
        self.wait_for(Waited::Body(id, tx));
        rx
    }

    fn wait_for(&self, w: Waited) {
        let mut st = self.lock();
        if st.exited || st.closing.is_some() || st.waited.len() >= self.capacity {
            let e = if st.waited.len() >= self.capacity {
                LedgerError::QueueFull
            } else {
                LedgerError::Closed
            };
            drop(st);
            return w.fail(e);
        }
        st.waited.push_back(w);
        // A writer at work takes it in its next round: no futex call for it.
        let wake = st.sleeping;
        st.sleeping = false;
        drop(st);
        if wake {
            self.wake.notify_one();
        }
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

impl Waited {
    fn fail(self, e: LedgerError) {
        match self {
            Waited::Row(_, _, tx) => {
                let _ = tx.send(Err(e));
            }
            Waited::Body(_, tx) => {
                let _ = tx.send(Err(e));
            }
        }
    }
}

/// The database's health as the writer sees it.
enum Health {
    Ok,
    Failing {
        /// No round of the row queue before this (write-ahead rows try at once).
        retry_at: Instant,
        backoff: Duration,
    },
}

pub(super) struct Writer {
    shared: Arc<Shared>,
    location: Location,
    /// `ledger.synchronous`, for a store opened anew.
    synchronous: Synchronous,
    store: Option<Store>,
    health: Health,
    next_prune: Instant,
    last_log: Option<Instant>,
    /// The last failure, logged with the next drop report.
    last_error: Option<String>,
    /// When the size bounds are checked next.
    next_size_check: Instant,
    /// At the size bound, the last prune found no refused row left: no more scans for them
    /// until the bound is left (nothing refused is recorded meanwhile).
    refused_pruned_out: bool,
    /// Rows' bytes written since the last measure (see [`MEASURE_BYTES`]).
    unmeasured: usize,
    /// The guard's digest key of the file the run started with (SQLite), which a file made
    /// anew takes.
    run_key: Option<DigestKey>,
}

/// Marks the writer exited however its thread ends, so nothing waits for it in vain: pending
/// reply senders are dropped with the queue, which their receivers see as `Closed`.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.exited = true;
        let left = std::mem::take(&mut st.rows);
        let waited = std::mem::take(&mut st.waited);
        drop(st);
        let rows = left
            .into_iter()
            .filter(|q| !matches!(q, Queued::Flush(_)))
            .count();
        self.0.drop_rows(DropReason::Shutdown, rows as u64);
        for w in waited {
            w.fail(LedgerError::Closed);
        }
        self.0.metrics.ledger_queue_depth.set(0);
        let _ = self.0.exited_tx.send(true);
    }
}

/// One round's work.
struct Round {
    waited: Vec<Waited>,
    rows: Vec<Queued>,
    exit: bool,
}

impl Writer {
    /// `prune_soon`: the last prune deleted a full batch, so the next is due at once.
    pub(super) fn new(
        shared: Arc<Shared>,
        location: Location,
        synchronous: Synchronous,
        store: Store,
        prune_soon: bool,
    ) -> Writer {
        let now = Instant::now();
        let run_key = match &store {
            Store::Sqlite(s) => s.digest_key().ok(),
            Store::Postgres(_) => None,
        };
        Writer {
            run_key,
            shared,
            location,
            synchronous,
            store: Some(store),
            health: Health::Ok,
            next_prune: if prune_soon { now } else { now + PRUNE_EVERY },
            last_log: None,
            last_error: None,
            next_size_check: now,
            refused_pruned_out: false,
            unmeasured: 0,
        }
    }

    pub(super) fn run(mut self) {
        let _guard = ExitGuard(self.shared.clone());
        loop {
            let round = self.take();
            let exit = round.exit;
            if !round.waited.is_empty() || !round.rows.is_empty() {
                self.commit(round.waited, round.rows);
            }
            self.housekeeping();
            if exit {
                self.report_drops(true);
                // Every answer that was coming is in, unless one was lost (at the stop's
                // deadline, or earlier): only then may the next start skip its count of
                // forwarded callbacks without an answer.
                let lost = self.shared.dropped.iter().any(|c| c.get() > 0);
                if let (Some(Store::Sqlite(s)), false) = (&mut self.store, lost) {
                    if let Err(e) = s.end_run() {
                        tracing::warn!(ledger = %self.location, error = %e, "ledger: cannot mark the run ended");
                    }
                }
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
            if matches!(closing, Some(Some(d)) if now >= d) {
                let left = std::mem::take(&mut st.rows);
                st.flushes = 0;
                let waited: Vec<Waited> = st.waited.drain(..).collect();
                self.shared.metrics.ledger_queue_depth.set(0);
                drop(st);
                let mut rows = 0;
                for q in left {
                    match q {
                        Queued::Flush(tx) => {
                            let _ = tx.send(Err(LedgerError::Closed));
                        }
                        _ => rows += 1,
                    }
                }
                self.shared.drop_rows(DropReason::Shutdown, rows);
                for w in waited {
                    w.fail(LedgerError::Closed);
                }
                return Round {
                    waited: Vec::new(),
                    rows: Vec::new(),
                    exit: true,
                };
            }
            // Rows alone: once they have waited LINGER for write-ahead rows, or when RIDE
            // are queued, a flush waits, or the writer is closing.
            let rows_ready = !st.rows.is_empty()
                && (st.rows.len() >= RIDE
                    || st.flushes > 0
                    || closing.is_some()
                    || st.rows_since.is_none_or(|t| now >= t + LINGER));
            if !st.waited.is_empty() || (rows_due && rows_ready) {
                let n = st.waited.len().min(BATCH);
                let waited: Vec<Waited> = st.waited.drain(..n).collect();
                let cap = if waited.is_empty() { BATCH } else { RIDE };
                let n = if rows_due {
                    batch_len(&st.rows, cap)
                } else {
                    0
                };
                let rows: Vec<Queued> = st.rows.drain(..n).collect();
                st.rows_since = (!st.rows.is_empty()).then_some(now);
                st.flushes -= rows
                    .iter()
                    .filter(|q| matches!(q, Queued::Flush(_)))
                    .count();
                self.shared
                    .metrics
                    .ledger_queue_depth
                    .set(st.rows.len() as i64);
                let exit = closing.is_some() && st.rows.is_empty() && st.waited.is_empty();
                return Round { waited, rows, exit };
            }
            if closing.is_some() && st.rows.is_empty() {
                return Round {
                    waited: Vec::new(),
                    rows: Vec::new(),
                    exit: true,
                };
            }
            let mut wake_at = now + TICK;
            if let (Some(since), true) = (st.rows_since, rows_due && !st.rows.is_empty()) {
                wake_at = wake_at.min(since + LINGER);
            }
            if let Health::Failing { retry_at, .. } = self.health {
                if !st.rows.is_empty() {
                    wake_at = wake_at.min(retry_at);
                }
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
            st.sleeping = true;
            st = shared
                .wake
                .wait_timeout(st, wake_at.saturating_duration_since(now))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            st.sleeping = false;
        }
    }

    fn housekeeping_due(&self, now: Instant) -> bool {
        let ok = matches!(self.health, Health::Ok);
        let prune = ok && now >= self.next_prune;
        let size = ok && now >= self.next_size_check;
        let log = self
            .shared
            .unlogged
            .iter()
            .any(|n| n.load(Ordering::Relaxed) > 0)
            && self.last_log.is_none_or(|t| now >= t + LOG_EVERY);
        prune || size || log
    }

    /// Logs lost rows (at most once a minute), prunes a batch of old rows when due, and keeps
    /// the ledger within its size bounds.
    fn housekeeping(&mut self) {
        let now = Instant::now();
        self.report_drops(false);
        if !matches!(self.health, Health::Ok) {
            return;
        }
        if now >= self.next_size_check {
            self.next_size_check = now
                + if self.location.is_postgres() {
                    PG_SIZE_EVERY
                } else {
                    SIZE_EVERY
                };
            if self.measure() && !self.refused_pruned_out {
                self.prune_refused();
            }
        }
        if now >= self.next_prune {
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

    /// Measures the ledger against `ledger.max_size` and `ledger.min_free` (after every
    /// [`MEASURE_BYTES`] of rows, and every [`SIZE_EVERY`]); returns whether it is at its
    /// bound. At either bound, refused callbacks stop being recorded and the oldest refused rows
    /// are pruned, a batch per look (forwarded rows are always recorded: they find the pages
    /// pruning frees). Below 90 % of `max_size` with `min_free` free again, refused callbacks
    /// are recorded again.
    fn measure(&mut self) -> bool {
        self.unmeasured = 0;
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
                    "ledger: at its size bound (ledger.max_size, or less than ledger.min_free free on its disk): refused callbacks are no longer recorded (click_gateway_ledger_unrecorded_total{{reason=\"size\"}}) and the oldest refused rows are pruned; forwarded callbacks are recorded as always. Free disk space or raise the bound"
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
            "ledger: {total} refused row(s) or answer(s) not recorded since the last report; callbacks were served as usual"
        );
    }

    /// Commits a round, answering its waiters; counts what was lost.
    fn commit(&mut self, waited: Vec<Waited>, queued: Vec<Queued>) {
        let mut records: Vec<(Option<i64>, Box<Record>)> = Vec::new();
        let mut answers = Vec::new();
        let mut corrections = Vec::new();
        let mut flushes = Vec::new();
        // Refused rows queued before the bound was found give way too: a queue full of
        // 16 KiB refusals is more than `ledger.min_free` may be asked to absorb.
        let full = self.shared.refused_full.load(Ordering::Relaxed);
        for q in queued {
            match q {
                Queued::Row(_, r) if full && gives_way(&r) => {
                    self.shared.unrecorded_size.inc();
                }
                Queued::Row(id, r) => records.push((id, r)),
                Queued::Answer(a) => answers.push(a),
                Queued::Correction(c) => corrections.push(c),
                Queued::Flush(tx) => flushes.push(tx),
            }
        }
        let mut reads = Vec::new();
        let mut waiters = Vec::new();
        let mut ahead: Vec<(Option<i64>, Box<Record>)> = Vec::new();
        for w in waited {
            match w {
                Waited::Row(id, r, tx) => {
                    ahead.push((Some(id), r));
                    waiters.push((id, tx));
                }
                Waited::Body(id, tx) => reads.push((id, tx)),
            }
        }
        // The ids the queries select on, decoded here, off the request path.
        let all: Vec<&(Option<i64>, Box<Record>)> = ahead.iter().chain(&records).collect();
        let fields: Vec<ClickFields> = all
            .iter()
            .map(|(_, r)| ClickFields::decode(r.content_type.as_deref(), &r.body))
            .collect();
        let rows: Vec<Row<'_>> = all
            .iter()
            .zip(&fields)
            .map(|((id, record), fields)| Row {
                id: *id,
                record,
                fields,
            })
            .collect();
        let mut ops = Vec::with_capacity(4 + reads.len());
        if !rows.is_empty() {
            ops.push(Op::Rows(&rows));
        }
        if !answers.is_empty() {
            ops.push(Op::Answers(&answers));
        }
        if !corrections.is_empty() {
            ops.push(Op::Corrections(&corrections));
        }
        let reads_at = ops.len();
        ops.extend(reads.iter().map(|(id, _)| Op::Body(*id)));
        let started = Instant::now();
        let outcome = self.attempt(&ops);
        drop(ops);
        let m = self.shared.metrics.clone();
        match outcome {
            Ok(results) => {
                m.ledger_commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                m.ledger_rows_written.inc_by(rows.len() as u64);
                for (id, tx) in waiters {
                    let _ = tx.send(Ok(Admitted {
                        id: Some(id),
                        outcome: None,
                    }));
                }
                for ((_, tx), result) in reads.into_iter().zip(results.into_iter().skip(reads_at)) {
                    let body = match result {
                        OpResult::Body(body) => body,
                        _ => None,
                    };
                    let _ = tx.send(Ok(body));
                }
                for tx in flushes {
                    let _ = tx.send(Ok(()));
                }
                if !self.location.is_postgres() {
                    self.unmeasured += rows
                        .iter()
                        .map(|r| r.record.body.len() + ROW_OVERHEAD)
                        .sum::<usize>();
                    if self.unmeasured >= MEASURE_BYTES {
                        self.measure();
                    }
                }
            }
            Err(e) => {
                let message = e.to_string();
                self.shared.drop_rows(
                    DropReason::WriteFailed,
                    (records.len() + answers.len() + corrections.len()) as u64,
                );
                for (_, tx) in waiters {
                    let _ = tx.send(Err(LedgerError::Unavailable(message.clone())));
                }
                for (_, tx) in reads {
                    let _ = tx.send(Err(LedgerError::Unavailable(message.clone())));
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
                // The rows before are in the old file; the guard's index still holds their
                // entries until the next start.
                tracing::error!(
                    ledger = %self.location,
                    "ledger: the database file was deleted or replaced; opening it anew (rows already committed stay in the old file; the guard keeps the signatures it has seen until the next start)"
                );
                if let Some(old) = self.store.take() {
                    old.retire();
                }
            }
            let store = match &mut self.store {
                Some(store) => store,
                None => {
                    let mut store = Store::open_writer(&self.location, self.synchronous)?;
                    if let (Store::Sqlite(s), Some(key)) = (&mut store, &self.run_key) {
                        let max_id = s.continue_run(key)?;
                        self.shared.ids_after(max_id);
                    }
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
                tracing::error!(
                    ledger = %self.location,
                    error = %e,
                    "ledger: cannot write the database; callbacks about to be forwarded get guard.on_store_error (refuse: a plain 503, Click retries; allow: forwarded unrecorded), refused rows and answers are counted as lost (click_gateway_ledger_dropped_total), until it works again. Check the disk (space, a read-only mount) and the file's permissions"
                );
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
            tracing::info!(
                ledger = %self.location,
                "ledger: the database works again; recording resumed"
            );
            self.report_drops(true);
        }
        self.health = Health::Ok;
        self.last_error = None;
        self.shared.failing.store(false, Ordering::Relaxed);
    }
}

/// One pruning statement: at most [`PRUNE_BATCH`] rows older than `retention` from now.
pub(super) fn prune_op(retention: Duration) -> Op<'static> {
    let cutoff = SystemTime::now()
        .checked_sub(retention)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Op::Prune {
        before_us: unix_micros(cutoff),
        limit: PRUNE_BATCH,
    }
}

/// Prunes one batch in a transaction of its own; returns the callbacks deleted, and whether
/// a whole batch was (more are due).
pub(super) fn prune_batch(
    store: &mut Store,
    retention: Duration,
) -> Result<(u64, bool), LedgerError> {
    match store.apply(&[prune_op(retention)])?.first() {
        Some(OpResult::Pruned { rows, more }) => Ok((*rows, *more)),
        _ => Ok((0, false)),
    }
}

/// Whether a row stops being recorded at the ledger's size bound: a refused callback's.
fn gives_way(rec: &Record) -> bool {
    matches!(rec.verdict, Verdict::Rejected | Verdict::Refused)
}

/// Queue entries making up one batch: up to `cap` rows and answers, and rows' bodies of at
/// most about [`MEASURE_BYTES`] (so the size bounds are measured at least that often: a round
/// of 512 refused 16 KiB bodies would be 8 MiB past them), flush markers riding along.
fn batch_len(rows: &VecDeque<Queued>, cap: usize) -> usize {
    let mut n = 0;
    let mut taken = 0;
    let mut bytes = 0;
    for q in rows {
        if !matches!(q, Queued::Flush(_)) {
            if taken == cap || bytes >= MEASURE_BYTES {
                break;
            }
            taken += 1;
            if let Queued::Row(_, r) = q {
                bytes += r.body.len() + ROW_OVERHEAD;
            }
        }
        n += 1;
    }
    n
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
        let store = Store::open_writer(&location, Default::default()).unwrap();
        let (shared, _) = Shared::new(
            capacity,
            Duration::from_secs(3600),
            SizeBounds {
                max_size: u64::MAX,
                min_free: 0,
            },
            Arc::new(Metrics::new()),
            Some(1),
        );
        let w = Writer::new(shared.clone(), location, Default::default(), store, false);
        (shared, w)
    }

    #[test]
    fn a_round_takes_what_is_queued_at_once_and_write_ahead_rows_first() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, mut w) = writer(dir.path(), 2 * BATCH);
        for i in 0..100 {
            shared.record(sample(&format!("r{i}"), SystemTime::now()));
        }
        let waiting = shared.write_ahead(5000, sample("ahead", SystemTime::now()));
        // No window: the round is there at once, the write-ahead row with only a ride of the
        // refused rows.
        let round = w.take();
        assert_eq!(round.waited.len(), 1);
        assert_eq!(round.rows.len(), RIDE);
        w.commit(round.waited, round.rows);
        assert_eq!(waiting.blocking_recv().unwrap().unwrap().id, Some(5000));
        let round = w.take();
        assert_eq!(round.rows.len(), 100 - RIDE, "the rest, in the next round");
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
                first.contains("3 refused row(s) or answer(s) not recorded")
                    && first.contains("queue_full=3"),
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
                second.contains("1 refused row(s) or answer(s) not recorded")
                    && second.contains("queue_full=1"),
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
            Some(Queued::Row(Some(1), r)) => assert_eq!(r.body.len(), MAX_CALLBACK_BODY),
            _ => panic!("not queued with the first id"),
        }
        drop(st);
        let mut rows: VecDeque<Queued> = VecDeque::new();
        for i in 0..BATCH + 3 {
            if i % 100 == 0 {
                rows.push_back(Queued::Flush(oneshot::channel().0));
            }
            rows.push_back(Queued::Row(None, Box::new(sample("r", SystemTime::now()))));
        }
        // 512 rows and the 6 flush markers among them; the 513th row starts the next batch.
        assert_eq!(batch_len(&rows, BATCH), BATCH + 6);
        assert_eq!(batch_len(&rows, RIDE), RIDE + 1);
        // Bodies of 16 KiB: a batch ends once it holds a measure's worth of bytes.
        let rows: VecDeque<Queued> = (0..BATCH)
            .map(|_| {
                let mut r = sample("big", SystemTime::now());
                r.body = bytes::Bytes::from(vec![b'x'; MAX_CALLBACK_BODY]);
                Queued::Row(None, Box::new(r))
            })
            .collect();
        let row = MAX_CALLBACK_BODY + ROW_OVERHEAD;
        assert_eq!(batch_len(&rows, BATCH), MEASURE_BYTES.div_ceil(row));
    }

    #[test]
    fn a_file_made_anew_mid_run_takes_the_run_s_digest_key_and_ids_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let (shared, mut w) = writer(dir.path(), 16);
        w.next_size_check = Instant::now() + Duration::from_secs(3600);
        let key = w.run_key.expect("a SQLite ledger's key");
        // Records `names` and commits them in one round.
        let commit = |shared: &Shared, w: &mut Writer, names: &[&str]| {
            for name in names {
                shared.record(sample(name, SystemTime::now()));
            }
            let round = w.take();
            w.commit(round.waited, round.rows);
        };
        // The file as the writer left it (closed, so everything is in it).
        let read = |w: &mut Writer| {
            w.store = None;
            crate::ledger::sqlite::SqliteStore::open_reader(&path).unwrap()
        };
        commit(&shared, &mut w, &["a"]);
        // Deleted under the running writer: the next round makes it anew.
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        commit(&shared, &mut w, &["b"]);
        let file = read(&mut w);
        assert_eq!(file.digest_key().unwrap(), key);
        assert_eq!(file.max_id().unwrap(), 2, "row b, with the run's next id");

        // A file with rows of its own keeps its key, and the run's ids go on after its rows.
        let other = tempfile::tempdir().unwrap();
        let (other_shared, mut o) = writer(other.path(), 16);
        commit(&other_shared, &mut o, &["o1", "o2", "o3", "o4", "o5"]);
        o.store = None;
        std::fs::rename(other.path().join("l.db"), &path).unwrap();
        // (A row numbered before the file was swapped would collide: its round fails and is
        // counted lost; from the reopening on, ids go on after the file's.)
        w.attempt(&[]).unwrap();
        commit(&shared, &mut w, &["c"]);
        let file = read(&mut w);
        assert_ne!(file.digest_key().unwrap(), key);
        assert_eq!(file.max_id().unwrap(), 6, "row c after the file's five");
    }

    #[test]
    fn a_run_that_lost_rows_or_answers_is_not_marked_clean() {
        let ended_clean = |dir: &std::path::Path| -> Option<i64> {
            let conn = rusqlite::Connection::open(dir.join("l.db")).unwrap();
            conn.query_row(
                "SELECT value FROM meta WHERE key = 'run_ended_clean'",
                [],
                |r| r.get(0),
            )
            .ok()
        };
        for lose in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (shared, w) = writer(dir.path(), 1);
            shared.record(sample("kept", SystemTime::now()));
            if lose {
                shared.record(sample("lost: the queue is full", SystemTime::now()));
            }
            shared.close(None);
            w.run();
            let expected = (!lose).then_some(1);
            assert_eq!(ended_clean(dir.path()), expected, "lost a row: {lose}");
        }
    }

    #[test]
    fn refused_rows_queued_before_the_size_bound_was_found_give_way_and_others_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, mut w) = writer(dir.path(), 2 * BATCH);
        for i in 0..10 {
            shared.record(sample(&format!("r{i}"), SystemTime::now()));
        }
        let mut shadowed = sample("s", SystemTime::now());
        shadowed.verdict = Verdict::WouldReject;
        shared.record(shadowed);
        // The bound is found while they are queued (and not measured again in this test).
        shared.refused_full.store(true, Ordering::Relaxed);
        w.next_size_check = Instant::now() + Duration::from_secs(3600);
        let round = w.take();
        assert_eq!(round.rows.len(), 11);
        w.commit(round.waited, round.rows);
        assert_eq!(shared.unrecorded_size.get(), 10);
        let conn = rusqlite::Connection::open(dir.path().join("l.db")).unwrap();
        let verdicts: Vec<String> = conn
            .prepare("SELECT verdict FROM callbacks")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(verdicts, ["would_reject"]);
    }
}
