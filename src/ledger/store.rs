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

use super::error::LedgerError;
use super::model::{Filter, Inspection, Location, Op, OpResult, Stored};
use super::postgres::{PgShared, PgStore};
use super::sqlite::SqliteStore;

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
