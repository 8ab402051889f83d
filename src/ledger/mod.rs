//! The callback ledger: one row per request to a callback path (when it arrived, from whom,
//! the body as received, the decoded Click fields, the verdict and why, the key that verified
//! it by fingerprint, what the backend answered), in an embedded SQLite database or in a
//! PostgreSQL database shared by several gateways ([`postgres`]), so that
//! "what happened to order 1001?" (`click-gateway payments`) and "would these refused
//! callbacks verify with this key?" (`click-gateway recheck`) have answers after the fact.
//!
//! The ledger is off the request path: [`Ledger::record`] queues a [`Record`] and returns
//! without waiting, and one writer thread commits queued rows in batches ([`writer`]). A full
//! queue or a failing disk costs rows, which are counted (`ledger_dropped_total`) and logged,
//! never a callback's time. Jobs whose caller must know their commit go through
//! [`Ledger::submit`], on a queue of their own that the writer drains first. The replay guard's
//! check goes through [`Ledger::bind`]: the writer's urgent queue on SQLite (one connection
//! writes the file), a pooled connection of its own on PostgreSQL.
//!
//! Never a key: rows name the key that verified them by slot and fingerprint.

pub mod binding;
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
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

pub use binding::{BindOutcome, Binding, CompleteClaim, Seen};
pub use record::{
    micros, unix_micros, Backend, BackendAnswer, ClickFields, Record, Timings, Verdict,
    MAX_BACKEND_ANSWER,
};
pub use store::{Filter, Inspection, Location, Store, Stored, SCHEMA_VERSION};
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

/// A job for the writer whose caller awaits its commit ([`Ledger::submit`]). Each kind of job
/// is a statement every [`Store`] implements inside the batch's transaction; a replay guard's
/// "have I seen this callback?" becomes one more variant.
#[derive(Debug)]
pub enum Job {
    /// Insert a row, like [`Ledger::record`], but answer once it is committed.
    Record(Box<Record>),
    /// Delete a batch of rows older than the retention now (it also runs by itself every
    /// minute).
    Prune,
    /// The replay guard's one statement: bind a verified callback's signature to its fields,
    /// or compare (see [`binding`]). Never counted as a ledger row.
    Bind(Box<Binding>),
}

/// What a committed job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// The row's id (`callbacks.id`).
    Recorded { id: i64 },
    /// Rows deleted.
    Pruned { rows: u64 },
    /// A [`Ledger::flush`]: everything queued before it is committed or counted lost.
    Flushed,
    /// What the store found for a [`Job::Bind`], committed.
    Bound(BindOutcome),
}

/// The answer to a submitted job: resolves after its transaction committed, or with the error
/// that failed it. It never hangs on a dead writer: a writer that is gone answers `Closed`.
#[must_use = "a Pending does nothing unless awaited; the job runs either way"]
pub struct Pending(oneshot::Receiver<Result<Done, LedgerError>>);

impl Future for Pending {
    type Output = Result<Done, LedgerError>;

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
    /// PostgreSQL's pool, for the guard's binds.
    postgres: Option<Arc<postgres::PgShared>>,
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
    /// Opens (creating it `0600` if needed) and migrates the store `[ledger]` names, then
    /// starts the writer thread. Fails when the ledger is not configured or its database
    /// cannot be opened and migrated: what `check` reports as a problem.
    pub fn open(settings: &LedgerSettings, metrics: Arc<Metrics>) -> Result<Ledger, LedgerError> {
        Ledger::open_as(settings, metrics, writer::Role::Ledger)
    }

    fn open_as(
        settings: &LedgerSettings,
        metrics: Arc<Metrics>,
        role: writer::Role,
    ) -> Result<Ledger, LedgerError> {
        let location = Location::from_settings(settings)?;
        let mut store = Store::open_writer(&location)?;
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
        let bounds = writer::SizeBounds {
            max_size: settings.max_size.0,
            min_free: settings.min_free.0,
        };
        let (shared, exited) =
            writer::Shared::new(settings.queue, settings.retention.0, bounds, metrics, role);
        let w = writer::Writer::new(shared.clone(), location.clone(), store, more);
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || w.run())
            .map_err(LedgerError::Spawn)?;
        match role {
            writer::Role::Ledger => {
                tracing::info!(ledger = %location, "ledger: recording callbacks")
            }
            writer::Role::Guard => {
                tracing::info!(ledger = %location, "guard store: binding signatures")
            }
        }
        Ok(Ledger {
            handle: Arc::new(Handle {
                shared,
                exited,
                location,
                postgres,
            }),
        })
    }

    /// The store the replay guard's bindings go to, for a SQLite ledger: a file of its own
    /// beside the ledger (`ledger.db` → `ledger.guard.db`), with a writer thread of its own.
    /// SQLite lets one transaction write a database at a time, and the guard's statements are
    /// awaited before a callback is forwarded: they must not queue behind a batch of ledger
    /// rows. `None` for a ledger that is not a SQLite file.
    pub fn open_guard_store(settings: &LedgerSettings) -> Result<Option<Ledger>, LedgerError> {
        #[allow(unreachable_patterns)] // a store of another kind keeps its bindings itself
        let path = match Location::from_settings(settings)? {
            Location::Sqlite(path) => path,
            _ => return Ok(None),
        };
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = match path.extension() {
            Some(ext) => format!("{stem}.guard.{}", ext.to_string_lossy()),
            None => format!("{stem}.guard"),
        };
        let guard = LedgerSettings {
            database: Some(path.with_file_name(name)),
            ..settings.clone()
        };
        // Its own metrics: it holds no ledger rows, and must not move the ledger's gauges.
        Ledger::open_as(&guard, Arc::new(Metrics::new()), writer::Role::Guard).map(Some)
    }

    /// Queues a row for the writer and returns at once: never waits for the disk, never fails.
    /// A row that cannot be queued (queue full, ledger closed) is counted in
    /// `ledger_dropped_total` and reported in the log, at most once a minute.
    pub fn record(&self, rec: Record) {
        self.handle.shared.record(rec);
    }

    /// Runs `job` in the writer's next transaction, ahead of any queued rows, and resolves once
    /// it is committed (or with the error that failed it; a failing database answers at once
    /// instead of waiting for its backoff).
    pub fn submit(&self, job: Job) -> Pending {
        Pending(self.handle.shared.submit(job))
    }

    /// The replay guard's statement ([`Job::Bind`]), resolving once committed. On SQLite it is
    /// an urgent job of the writer, which owns the one connection; on PostgreSQL one round
    /// trip on a pooled connection of its own, so it never waits behind the writer's batches
    /// (and a failing ledger write never holds it up). Dropping the future abandons it.
    pub fn bind(&self, binding: Binding) -> Pending {
        match &self.handle.postgres {
            Some(pg) => Pending(pg.bind(binding)),
            None => self.submit(Job::Bind(Box::new(binding))),
        }
    }

    /// Resolves once every row recorded before it has been committed (or counted lost): `Ok`
    /// when the transaction that carried it committed. For tests, and for a stop that wants
    /// to know its rows are in.
    pub fn flush(&self) -> Pending {
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
