//! Where the ledger's rows live, behind one interface: the writer's batches, the pruning and
//! the queries of `payments` and `recheck` all go through [`Store`], so a shared PostgreSQL
//! store (a later issue) joins as a second variant without touching its callers.
//!
//! The interface is blocking on purpose: it runs on the writer's own OS thread or in a command,
//! never on the request path. The PostgreSQL variant keeps it by blocking on `tokio-postgres`
//! futures run by a runtime of its own ([`super::postgres`]); the replay guard, which is on the
//! request path, reaches PostgreSQL without the writer ([`super::Ledger::bind`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::binding::{BindOutcome, Binding};
use super::postgres::{PgShared, PgStore};
use super::record::{ClickFields, Record};
use super::sqlite::SqliteStore;
use super::LedgerError;
use crate::config::postgres::PgUrl;
use crate::config::LedgerSettings;

/// The schema version this build writes and reads (SQLite: `PRAGMA user_version`; PostgreSQL:
/// the `click_gateway_schema` table): v1 the callbacks, v2 the replay guard's bindings.
pub const SCHEMA_VERSION: i64 = 2;

/// Which store `ledger.database` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file (already resolved against the config file's directory).
    Sqlite(PathBuf),
    /// A PostgreSQL database, shared by every gateway naming it.
    Postgres(PgUrl),
}

impl Location {
    /// The store of the `[ledger]` settings: `NotConfigured` without a `database`.
    pub fn from_settings(settings: &LedgerSettings) -> Result<Location, LedgerError> {
        let Some(path) = &settings.database else {
            return Err(LedgerError::NotConfigured);
        };
        match settings.postgres() {
            None => Ok(Location::Sqlite(path.clone())),
            Some(Ok(url)) => Ok(Location::Postgres(url)),
            // Refused by the configuration's validation already; said again, without the URL.
            Some(Err(message)) => Err(LedgerError::Postgres {
                at: "ledger.database".into(),
                message: format!("the PostgreSQL URL {message}"),
            }),
        }
    }

    /// The SQLite file, or for PostgreSQL the redacted URL as a path (for messages).
    pub fn path(&self) -> &Path {
        match self {
            Location::Sqlite(p) => p,
            Location::Postgres(url) => Path::new(url.redacted()),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Location::Postgres(_))
    }
}

/// What logs and messages show: the path, or the URL redacted (`postgres://user@host:port/db`).
impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "{}", p.display()),
            Location::Postgres(url) => f.write_str(url.redacted()),
        }
    }
}

/// One statement of a writer's transaction. A batch of them commits or fails as a whole.
#[derive(Debug)]
pub enum Op<'a> {
    /// Insert one callback row, reporting its id.
    Insert(&'a Record, &'a ClickFields),
    /// Insert callback rows nobody waits for (the writer's batches), several per statement.
    Rows(&'a [(&'a Record, &'a ClickFields)]),
    /// Delete at most `limit` rows older than `before_us` (Unix microseconds), oldest first
    /// (and as many of the guard's bindings).
    Prune { before_us: i64, limit: u32 },
    /// The guard's statement (see [`super::binding`]).
    Bind(&'a Binding),
    /// Delete at most `limit` of the oldest rows of refused callbacks (rejected, or refused
    /// before they were judged): what gives way when the ledger reaches its size bound.
    PruneRefused { limit: u32 },
}

/// What an [`Op`] did, in the same order as the ops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    Inserted {
        id: i64,
    },
    /// [`Op::Rows`]: how many.
    Rows(usize),
    Pruned {
        /// Callbacks deleted (what `ledger_pruned_rows_total` counts).
        rows: u64,
        /// Some table gave a whole batch (the callbacks, or the guard's bindings or completes,
        /// which in a guard's own file are all there is): more are due at once.
        more: bool,
    },
    Bound(BindOutcome),
}

/// The columns a query reads, in the order [`Stored`] is read from, `body` last (added by the
/// query, or an empty value when not wanted): the same on every store.
pub(super) const COLUMNS: &str = "id, time, request_id, peer, client, path, content_type,
    click_trans_id, service_id, click_paydoc_id, merchant_trans_id, merchant_prepare_id,
    amount, action, error, error_note, sign_time,
    verdict, reason, hint, detail, slot, fp, generation, mode,
    backend_status, backend_error, backend_error_note, backend_prepare_id, backend_confirm_id,
    gateway_us, upstream_us, total_us";

/// The SQL of [`Op::PruneRefused`] on every store (`?1`/`$1`: the limit): the oldest rows of
/// callbacks the gateway refused, whatever their reason.
pub(super) const PRUNE_REFUSED: &str = "DELETE FROM callbacks WHERE id IN
     (SELECT id FROM callbacks WHERE verdict IN ('rejected', 'refused') ORDER BY id LIMIT $1)";

/// The SQL condition, the same on every store, for a callback refused for its signature: what
/// `recheck` re-judges (`unknown_service`, `key_mismatch`, in enforce or shadow mode).
pub(super) const REFUSED_FOR_SIGNATURE: &str =
    "reason IN ('unknown_service', 'key_mismatch') AND verdict IN ('rejected', 'would_reject')";

/// Which callbacks a timeline shows; every filter given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub merchant_trans_id: Option<String>,
    pub click_trans_id: Option<String>,
    pub service_id: Option<String>,
    /// Only callbacks at or after this time (Unix microseconds).
    pub since_us: i64,
    /// Whether the rows carry their bodies: `payments` compares them to tell an identical
    /// resend from a new callback; other readers leave them in the database.
    pub bodies: bool,
}

/// One stored callback, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: i64,
    /// Unix microseconds, UTC.
    pub time_us: i64,
    pub request_id: String,
    pub peer: String,
    pub client: String,
    pub path: String,
    pub content_type: Option<String>,
    /// Empty unless the query asked for bodies ([`Store::refused_signatures`],
    /// [`Filter::bodies`]).
    pub body: Vec<u8>,
    pub fields: ClickFields,
    pub verdict: String,
    pub reason: Option<String>,
    pub hint: Option<String>,
    pub detail: Option<String>,
    pub slot: Option<i64>,
    pub fp: Option<String>,
    pub generation: i64,
    pub mode: String,
    pub backend_status: Option<i64>,
    pub backend_error: Option<String>,
    pub backend_error_note: Option<String>,
    pub backend_prepare_id: Option<String>,
    pub backend_confirm_id: Option<String>,
    pub gateway_us: i64,
    pub upstream_us: Option<i64>,
    pub total_us: i64,
}

/// What `check` learns about a store without changing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspection {
    /// No database yet: the gateway creates it on start (its directory exists).
    Absent,
    Present {
        /// The schema version found; below [`SCHEMA_VERSION`] the gateway migrates on start.
        version: i64,
        /// Rows held.
        rows: i64,
        /// Whether the file can be opened for writing (`Err` says why not).
        writable: Result<(), String>,
        /// Permission bits of the file.
        mode: u32,
    },
    /// A PostgreSQL database, which `check` migrates (several gateways share it, and the
    /// operator's `check` is a better time to create it than whichever gateway starts first).
    Shared {
        /// The schema version found before `check` migrated (0: none, created now).
        from: i64,
        /// The version now.
        version: i64,
        /// Rows held.
        rows: i64,
        /// `server_version`.
        server: String,
    },
}

/// A ledger store.
#[derive(Debug)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Store {
    /// Opens for writing, creating the database (mode `0600`) and migrating its schema
    /// forward; refuses a file that is not a ledger or has a newer schema.
    pub fn open_writer(location: &Location) -> Result<Store, LedgerError> {
        match location {
            Location::Sqlite(path) => SqliteStore::open_writer(path).map(Store::Sqlite),
            Location::Postgres(url) => PgStore::open_writer(url).map(Store::Postgres),
        }
    }

    /// Opens read-only, for the commands; works while the gateway writes.
    pub fn open_reader(location: &Location) -> Result<Store, LedgerError> {
        match location {
            Location::Sqlite(path) => SqliteStore::open_reader(path).map(Store::Sqlite),
            Location::Postgres(url) => PgStore::open_reader(url).map(Store::Postgres),
        }
    }

    /// Reports on the store for `check`: a SQLite file is left as it is, a PostgreSQL schema
    /// is created or migrated ([`Inspection::Shared`]).
    pub fn inspect(location: &Location) -> Result<Inspection, LedgerError> {
        match location {
            Location::Sqlite(path) => SqliteStore::inspect(path),
            Location::Postgres(url) => PgStore::inspect(url),
        }
    }

    /// Runs `ops` in one transaction (group commit).
    pub fn apply(&mut self, ops: &[Op<'_>]) -> Result<Vec<OpResult>, LedgerError> {
        match self {
            Store::Sqlite(s) => s.apply(ops),
            Store::Postgres(s) => s.apply(ops),
        }
    }

    /// Whether the store the writer holds is no longer the one its location names (the file
    /// deleted or replaced): rows committed to it would be lost.
    pub fn replaced(&self) -> bool {
        match self {
            Store::Sqlite(s) => s.replaced(),
            Store::Postgres(_) => false,
        }
    }

    /// Closes a store whose location now names another file (see [`Store::replaced`]),
    /// cleaning up what would otherwise be taken for the new file's own.
    pub fn retire(self) {
        match self {
            Store::Sqlite(s) => s.retire(),
            Store::Postgres(_) => {}
        }
    }

    /// Callbacks matching `filter`, oldest first, with their bodies if it asks for them.
    pub fn callbacks(&self, filter: &Filter) -> Result<Vec<Stored>, LedgerError> {
        match self {
            Store::Sqlite(s) => s.callbacks(filter),
            Store::Postgres(s) => s.callbacks(filter),
        }
    }

    /// Callbacks refused for their signature (`unknown_service`, `key_mismatch`, rejected or
    /// would-reject) since `since_us`, of one service or all, oldest first, with their bodies.
    pub fn refused_signatures(
        &self,
        service_id: Option<&str>,
        since_us: i64,
    ) -> Result<Vec<Stored>, LedgerError> {
        match self {
            Store::Sqlite(s) => s.refused_signatures(service_id, since_us),
            Store::Postgres(s) => s.refused_signatures(service_id, since_us),
        }
    }

    /// The schema version of the open store.
    pub fn schema_version(&self) -> Result<i64, LedgerError> {
        match self {
            Store::Sqlite(s) => s.schema_version(),
            Store::Postgres(s) => s.schema_version(),
        }
    }

    pub fn location(&self) -> Location {
        match self {
            Store::Sqlite(s) => Location::Sqlite(s.path().to_owned()),
            Store::Postgres(s) => Location::Postgres(s.url().clone()),
        }
    }

    /// Whether a failed transaction should close the store, to be opened anew at the next
    /// attempt: a SQLite connection that saw an I/O error is not trusted to recover; a
    /// PostgreSQL pool replaces its failed connections by itself.
    pub fn reopen_after_failure(&self) -> bool {
        matches!(self, Store::Sqlite(_))
    }

    /// Bytes the ledger's rows take (pages in use, not the file's size: a pruned page is
    /// reused before the file grows).
    pub fn used_bytes(&self) -> Result<u64, LedgerError> {
        match self {
            Store::Sqlite(s) => s.used_bytes(),
            Store::Postgres(s) => s.used_bytes(),
        }
    }

    /// Bytes free for the ledger on its filesystem; `None` for PostgreSQL, whose disk is the
    /// database server's business.
    pub fn free_bytes(&self) -> Option<u64> {
        match self {
            Store::Sqlite(s) => s.free_bytes(),
            Store::Postgres(_) => None,
        }
    }

    /// The PostgreSQL pool, for the guard's binds, which do not go through the writer.
    pub fn postgres(&self) -> Option<Arc<PgShared>> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(s) => Some(s.shared()),
        }
    }
}
