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
//!
//! **Where this differs from the design sketch** (`design.md`, "The payment path"), and why:
//! - entries nobody waits for (answers, refused rows) wait up to 2 ms for a write-ahead batch
//!   to share a commit with ([`writer`]): a commit costs about as much for one row as for
//!   sixteen, and an answer committed on its own doubled the writer's work per callback at
//!   moderate load (`benches/store.rs`). A callback still never waits for a timer;
//! - the guard's window is a setting of its own (`guard.window`, at most `ledger.retention`),
//!   not derived from `click.max_sign_age`, so that the index's memory is the operator's
//!   choice; a signature older than the window binds anew (the README says so);
//! - rule 1's digest on SQLite is a keyed SipHash kept in the row (the key in the file's
//!   `meta` table), on PostgreSQL a SHA-256 of the canonical text in the bindings table: the
//!   keyed hash costs a fifth and needs a secret no other gateway shares, which PostgreSQL's
//!   several gateways would have to;
//! - PostgreSQL keeps a `(service_id, time)` index that SQLite does not: its ids come from a
//!   sequence several gateways draw from, so a range of ids is not a window of time there.

pub mod binding;
mod error;
mod handle;
pub mod index;
pub mod model;
pub mod postgres;
mod record;
pub mod sqlite;
pub mod store;
pub mod tap;
pub mod time;
pub mod writer;

pub use binding::{BindOutcome, Binding, CompleteClaim, Seen};
pub use error::LedgerError;
pub use handle::{Ledger, Pending};
pub use model::{Admitted, Correction, Filter, Inspection, Location, Stored, SCHEMA_VERSION};
pub use record::{
    micros, unix_micros, Answer, Backend, BackendAnswer, Bound, ClickFields, Record, Verdict,
    MAX_BACKEND_ANSWER,
};
pub use store::Store;
pub use tap::AnswerTap;
