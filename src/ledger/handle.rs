//! The ledger as the data path holds it: a cheap handle on the writer thread (and, on
//! PostgreSQL, the pool the write-ahead records go through), and the guard's index.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{oneshot, watch};

use super::error::LedgerError;
use super::model::{Admitted, Correction, Location, StoredBody};
use super::record::{unix_micros, Answer, Record};
use super::store::Store;
use super::{binding::Binding, index, postgres, sqlite, writer};
use crate::config::LedgerSettings;
use crate::metrics::Metrics;

/// The answer to something the ledger does for a waiting caller: resolves once its
/// transaction committed (or the statement answered), or with the error that failed it. It
/// never hangs on a dead writer: a writer that is gone answers `Closed`.
#[must_use = "a Pending does nothing unless awaited"]
pub struct Pending<T>(oneshot::Receiver<Result<T, LedgerError>>);

impl<T> Future for Pending<T> {
    type Output = Result<T, LedgerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(LedgerError::Closed)))
    }
}

/// The handle the data path holds: cheap to clone (one reference count), `Send + Sync`.
/// When the last clone is dropped without [`Ledger::close`], the writer drains its queue and
/// exits on its own.
#[derive(Clone)]
pub struct Ledger {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<writer::Shared>,
    exited: watch::Receiver<bool>,
    location: Location,
    /// PostgreSQL's pool, for the write-ahead records.
    postgres: Option<Arc<postgres::PgShared>>,
    /// SQLite's guard index.
    index: Option<index::Index>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close(None);
    }
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("location", &self.handle.location)
            .finish()
    }
}

impl Ledger {
    /// Opens (creating it `0600` if needed) and migrates the store `[ledger]` names, rebuilds
    /// the guard's index from the rows of the last `guard_window` (SQLite), then starts the
    /// writer thread. Fails when the ledger is not configured or its database cannot be opened
    /// and migrated: what `check` reports as a problem.
    pub fn open(
        settings: &LedgerSettings,
        guard_window: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Ledger, LedgerError> {
        let location = Location::from_settings(settings)?;
        let mut store = Store::open_writer(&location, settings.synchronous)?;
        // One bounded batch now, before any callback: rows that aged out while the gateway was
        // stopped go first; the writer takes care of the rest, a batch at a time.
        let pruned = writer::prune_batch(&mut store, settings.retention.0);
        match &pruned {
            Ok((n, _)) => {
                metrics.ledger_pruned_rows.inc_by(*n);
            }
            Err(e) => {
                tracing::warn!(ledger = %location, error = %e, "ledger: pruning failed; the writer retries");
            }
        }
        let more = pruned.as_ref().is_ok_and(|&(_, more)| more);
        let postgres = store.postgres();
        let (first_id, index) = match &mut store {
            Store::Sqlite(s) => {
                if let Some(n) = s.begin_run()?.filter(|n| *n > 0) {
                    tracing::warn!(ledger = %location, unanswered = n, "ledger: the last run did not end cleanly (it was killed, or lost rows or answers it was recording): {n} forwarded callback(s) have no recorded answer (the backend has them; `click-gateway payments` shows each as forwarded with no answer)");
                }
                (
                    Some(s.max_id()? + 1),
                    Some(rebuild_index(s, guard_window, &location)?),
                )
            }
            Store::Postgres(_) => (None, None),
        };
        if let Location::Sqlite(path) = &location {
            note_old_guard_file(path);
        }
        let bounds = writer::SizeBounds {
            max_size: settings.max_size.0,
            min_free: settings.min_free.0,
        };
        let (shared, exited) = writer::Shared::new(
            settings.queue,
            settings.retention.0,
            bounds,
            metrics,
            first_id,
        );
        let w = writer::Writer::new(
            shared.clone(),
            location.clone(),
            settings.synchronous,
            store,
            more,
        );
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || w.run())
            .map_err(LedgerError::Spawn)?;
        // Each forwarded callback is recorded before it is forwarded (README, "The ledger").
        tracing::info!(ledger = %location, "ledger: recording callbacks");
        Ok(Ledger {
            handle: Arc::new(Handle {
                shared,
                exited,
                location,
                postgres,
                index,
            }),
        })
    }

    /// Queues a refused callback's row and returns at once: never waits for the disk, never
    /// fails. A row that cannot be queued (queue full, ledger closed) is counted in
    /// `ledger_dropped_total` and reported in the log, at most once a minute. Returns the
    /// row's id when it was queued and the gateway numbers rows (SQLite).
    pub fn record(&self, rec: Record) -> Option<i64> {
        self.handle.shared.record(rec)
    }

    /// Queues a forwarded callback's answer, as [`Ledger::record`].
    pub fn answer(&self, answer: Answer) {
        self.handle.shared.answer(answer);
    }

    /// Queues the correction of a write-ahead row whose guard finding came with it
    /// (PostgreSQL), as [`Ledger::record`].
    pub fn correct(&self, correction: Correction) {
        self.handle.shared.correct(correction);
    }

    /// The write-ahead record of a callback about to be forwarded: resolves once its row is
    /// committed. On SQLite through the writer (group commit; the guard's index was checked
    /// before); on PostgreSQL one statement on a pooled connection, carrying the guard's
    /// binding when given. Dropping the future abandons the wait, not the row.
    pub fn write_ahead(&self, rec: Record, binding: Option<Binding>) -> Pending<Admitted> {
        if let Some(pg) = &self.handle.postgres {
            return Pending(pg.admit(rec, binding));
        }
        let shared = &self.handle.shared;
        match shared.next_id() {
            Some(id) => Pending(shared.write_ahead(id, rec)),
            None => {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Err(LedgerError::Closed));
                Pending(rx)
            }
        }
    }

    /// A row id for a write-ahead record (SQLite numbers rows in the gateway, so the guard's
    /// index can name a row before it is written); `None` on PostgreSQL.
    pub fn row_id(&self) -> Option<i64> {
        self.handle.index.as_ref()?;
        self.handle.shared.next_id()
    }

    /// [`Ledger::write_ahead`] of a row whose id [`Ledger::row_id`] gave.
    pub fn write_ahead_as(&self, id: i64, rec: Record) -> Pending<Admitted> {
        Pending(self.handle.shared.write_ahead(id, rec))
    }

    /// SQLite's guard index; `None` on PostgreSQL, where the binding rides with the row.
    pub fn index(&self) -> Option<&index::Index> {
        self.handle.index.as_ref()
    }

    /// A row's content type and body (SQLite; what the guard names a changed message's fields
    /// from), once the writer has a moment; `None` when the row is not (yet) there.
    pub fn body(&self, id: i64) -> Pending<StoredBody> {
        Pending(self.handle.shared.body(id))
    }

    /// Resolves once everything queued before it has been committed (or counted lost): `Ok`
    /// when the transaction that carried it committed. For tests, and for a stop that wants
    /// to know its rows are in.
    pub fn flush(&self) -> Pending<()> {
        Pending(self.handle.shared.flush())
    }

    /// Stops the writer: rows still queued are committed until `within` has passed; what is
    /// left then is counted lost (`shutdown`). Returns whether the writer exited in time. Rows
    /// recorded after this call are counted lost too.
    pub async fn close(&self, within: Duration) -> bool {
        self.handle.shared.close(Some(Instant::now() + within));
        let mut exited = self.handle.exited.clone();
        // A little beyond the deadline: the writer may be finishing the batch in flight.
        let grace = within + Duration::from_millis(500);
        let outcome = tokio::time::timeout(grace, exited.wait_for(|&done| done)).await;
        matches!(outcome, Ok(Ok(_)))
    }

    /// The store this ledger writes.
    pub fn location(&self) -> &Location {
        &self.handle.location
    }
}

/// Rebuilds the guard's index from the rows of the window, and says what it took.
fn rebuild_index(
    store: &sqlite::SqliteStore,
    window: Duration,
    location: &Location,
) -> Result<index::Index, LedgerError> {
    let started = Instant::now();
    let since = SystemTime::now()
        .checked_sub(window)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let rows = store.guard_rows(unix_micros(since))?;
    let index = index::Index::new(window, store.digest_key()?);
    index.rebuild(rows);
    let (signatures, completes) = index.len();
    tracing::info!(
        ledger = %location,
        signatures,
        transactions = completes,
        mib = format!("{:.1}", index.bytes() as f64 / (1024.0 * 1024.0)),
        ms = started.elapsed().as_millis() as u64,
        "guard: index rebuilt from the ledger's rows of the window (guard.window)"
    );
    Ok(index)
}

/// A v2 ledger had its guard's bindings in a file of its own beside it; v3 keeps them in the
/// ledger's rows. The old file is left as it is, with a word in the log.
fn note_old_guard_file(path: &std::path::Path) {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.guard.{}", ext.to_string_lossy()),
        None => format!("{stem}.guard"),
    };
    let old = path.with_file_name(name);
    if old.exists() {
        tracing::info!(file = %old.display(), "ledger: the replay guard's file of an earlier version is no longer used (its signatures are the ledger's rows now); it can be deleted");
    }
}
