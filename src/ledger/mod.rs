//! The callback ledger: one row per request to a callback path (when it arrived, from whom, the
//! body as received, the verdict and why, the key that verified it by fingerprint, what the
//! backend answered), in an embedded SQLite database or in a PostgreSQL database shared by
//! several gateways ([`postgres`]), so that "what happened to order 1001?" (`click-gateway
//! payments`) and "would these refused callbacks verify with this key?" (`click-gateway
//! recheck`) have answers after the fact.
//!
//! **Record first, then forward.** A callback about to be forwarded gets its row committed
//! first ([`Ledger::write_ahead`]): the row is the write-ahead record, so nothing the backend
//! received can be missing from the ledger after a crash. The guard's binding of a verified
//! callback is part of that record: on SQLite an in-memory index over the rows
//! ([`index`], checked before the append, rebuilt from the rows at start); on PostgreSQL the
//! same statement as the row (one round trip, the database's unique constraint deciding races
//! between gateways). Commits are group commits without a window ([`writer`]).
//!
//! **Nothing waits for what the backend did not get.** A refused callback's row
//! ([`Ledger::record`]) and a forwarded one's answer ([`Ledger::answer`]) are queued and
//! written without anybody waiting; a full queue or a failing disk costs them, counted
//! (`ledger_dropped_total`) and logged once a minute, never a callback's time.
//!
//! Never a key: rows name the key that verified them by slot and fingerprint.

pub mod binding;
pub mod index;
pub mod model;
pub mod postgres;
mod record;
pub mod sqlite;
pub mod store;
pub mod tap;
pub mod time;
pub mod writer;

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{oneshot, watch};

pub use binding::{BindOutcome, Binding, CompleteClaim, Seen};
pub use model::{Filter, Inspection, Location, Stored, SCHEMA_VERSION};
pub use record::{
    micros, unix_micros, Answer, Backend, BackendAnswer, Bound, ClickFields, Record, Verdict,
    MAX_BACKEND_ANSWER,
};
pub use store::{Correction, Store};
pub use tap::AnswerTap;

use crate::config::LedgerSettings;
use crate::metrics::Metrics;

/// Everything that can go wrong in the ledger layer. Messages name files and settings, never
/// a key (the ledger holds none) and never a row's contents.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("no ledger is configured: set database in the [ledger] section")]
    NotConfigured,
    #[error("no ledger at {}: is [ledger] database set and has the gateway run?", .0.display())]
    Missing(PathBuf),
    #[error("cannot create the ledger {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot open the ledger {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{} is not a click-gateway ledger (application_id {found:#x})", path.display())]
    NotALedger { path: PathBuf, found: i64 },
    #[error("the ledger {} has schema v{found}, newer than this click-gateway's v{known}: use a newer click-gateway", path.display())]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("the ledger {} has schema v{found}, this click-gateway reads v{known}: start the gateway once to migrate it", path.display())]
    OlderSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("ledger {}: {source}", path.display())]
    Query {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// A PostgreSQL error or set-up problem; `at` is the redacted URL, never the URL itself.
    #[error("ledger {at}: {message}")]
    Postgres { at: String, message: String },
    #[error("ledger {at}: the database already has a callbacks, bindings or completes table that click-gateway did not create: give the gateway a database of its own, or a schema (options=-c search_path=...)")]
    ForeignTables { at: String },
    #[error("the ledger's queue is full")]
    QueueFull,
    #[error("the ledger database is failing: {0}")]
    Unavailable(String),
    #[error("the ledger is closed")]
    Closed,
    #[error("cannot start the ledger writer thread: {0}")]
    Spawn(io::Error),
}

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

/// A write-ahead record, committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The row's id; `None` when PostgreSQL's statement left the row out because rule 1,
    /// enforced, found the signature bound to another message (the refusal's row is recorded
    /// apart, within its sender's budget).
    pub id: Option<i64>,
    /// What PostgreSQL's statement found for the binding it carried.
    pub outcome: Option<BindOutcome>,
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
                    tracing::warn!(ledger = %location, unanswered = n, "ledger: the last run did not end cleanly: {n} forwarded callback(s) have no recorded answer (the gateway stopped while they were at the backend, which has them; `click-gateway payments` shows each as forwarded with no answer)");
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
    pub fn body(&self, id: i64) -> Pending<store::StoredBody> {
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
    let index = index::Index::new(window);
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
