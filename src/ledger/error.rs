//! What can go wrong in the ledger layer.

use std::io;
use std::path::PathBuf;

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
