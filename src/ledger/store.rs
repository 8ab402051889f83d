//! Where the ledger's rows live, behind one interface: the writer's transactions, the pruning
//! and the queries of `payments` and `recheck` all go through [`Store`], which dispatches to
//! SQLite ([`super::sqlite`]) or PostgreSQL ([`super::postgres`]); what they share (the
//! tables, the statements that are alike, a row as read back) is [`super::model`].
//!
//! The interface is blocking on purpose: it runs on the writer's own OS thread or in a command,
//! never on the request path. The PostgreSQL variant keeps it by blocking on `tokio-postgres`
//! futures run by a runtime of its own ([`super::postgres`]); the write-ahead record of a
//! callback about to be forwarded reaches PostgreSQL without the writer ([`super::Ledger`]).

use std::sync::Arc;

use super::model::{Filter, Inspection, Location, Stored};
use super::postgres::{PgShared, PgStore};
use super::record::{Answer, ClickFields, Record};
use super::sqlite::SqliteStore;
use super::LedgerError;

/// One row to insert: its id (SQLite's rows get theirs from the gateway; PostgreSQL's from the
/// database), the record, and the ids decoded from its body.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    pub id: Option<i64>,
    pub record: &'a Record,
    pub fields: &'a ClickFields,
}

/// A row's content type and body, when it is there.
pub type StoredBody = Option<(Option<String>, Vec<u8>)>;

/// A correction of a row written before its guard's finding was known (PostgreSQL, where the
/// row and the binding are one statement): the verdict and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correction {
    pub callback: i64,
    pub verdict: &'static str,
    pub reason: Option<&'static str>,
    pub hint: Option<&'static str>,
    pub detail: Option<String>,
}

/// One statement of a writer's transaction. A batch of them commits or fails as a whole.
#[derive(Debug)]
pub enum Op<'a> {
    /// Insert callback rows, several per statement.
    Rows(&'a [Row<'a>]),
    /// Insert the answers of forwarded callbacks.
    Answers(&'a [Answer]),
    /// Correct rows' verdicts.
    Corrections(&'a [Correction]),
    /// Delete at most `limit` rows older than `before_us` (Unix microseconds), oldest first,
    /// with their answers (and on PostgreSQL as many of the guard's bindings).
    Prune { before_us: i64, limit: u32 },
    /// Delete at most `limit` of the oldest rows of refused callbacks (see
    /// [`super::model::PRUNE_REFUSED`]).
    PruneRefused { limit: u32 },
    /// Read one row's body and content type (to name what a changed message differs in).
    Body(i64),
}

/// What an [`Op`] did, in the same order as the ops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// Rows or answers or corrections written.
    Written(usize),
    Pruned {
        /// Callbacks deleted (what `ledger_pruned_rows_total` counts).
        rows: u64,
        /// A whole batch was deleted: more are due at once.
        more: bool,
    },
    /// [`Op::Body`]: the content type and body, when the row exists.
    Body(StoredBody),
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
    pub fn open_writer(
        location: &Location,
        synchronous: crate::config::Synchronous,
    ) -> Result<Store, LedgerError> {
        match location {
            Location::Sqlite(path) => {
                SqliteStore::open_writer(path, synchronous).map(Store::Sqlite)
            }
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
    /// would-reject) since `since_us`, of one service or all, oldest first.
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

    /// The PostgreSQL pool, for the write-ahead records, which do not go through the writer.
    pub fn postgres(&self) -> Option<Arc<PgShared>> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(s) => Some(s.shared()),
        }
    }
}
