//! The SQLite store: one file in WAL mode, written by the ledger's writer thread and read by
//! the commands at the same time (WAL lets readers see the last commit while a write goes on).
//! One file (with its `-wal` and `-shm`): the replay guard keeps no database of its own, its
//! index is rebuilt from this file's rows ([`super::index`]).
//!
//! The file is created `0600` by the gateway itself before SQLite opens it (SQLite would use
//! `0644`); SQLite gives its `-wal` and `-shm` files the database file's permissions (and, run as
//! root, its owner), so they are `0600` too. A body with its signature is material for guessing
//! a weak key offline: the ledger is as private as the keys file.
//!
//! **What a commit promises** (`ledger.synchronous`): `normal` (the default) writes each commit
//! to the WAL, which the operating system holds: a process crash (`kill -9`) loses nothing
//! committed; a power loss or a kernel crash may lose the commits since the last checkpoint
//! (SQLite syncs the WAL when it checkpoints, every 1000 pages or so). `full` syncs the WAL at
//! every commit: a committed row survives a power loss too, at the price of a disk sync per
//! group commit.
//!
//! Row ids are the gateway's ([`super::Ledger`] hands them out in arrival order), so a row can
//! be named before it is written: the guard's index does.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::error::LedgerError;
use super::index::GuardRow;
use super::model::{
    self, Correction, Dialect, Filter, Inspection, Op, OpResult, Row, Stored, FORWARDED,
    PRUNE_REFUSED, REFUSED_FOR_SIGNATURE, SCHEMA_VERSION,
};
use super::record::{micros, unix_micros, Answer, Bound};
use crate::click::digest::DigestKey;
pub use crate::config::Synchronous;

/// `PRAGMA application_id` of a ledger ("ClKG"), so a file that is some other program's
/// database is refused instead of being given a `callbacks` table.
pub const APPLICATION_ID: i64 = 0x436c_4b47;

/// How long a statement waits for a lock held by another connection (an operator's `sqlite3`
/// in a write transaction) before failing; the writer then counts the batch and retries.
const WRITER_BUSY_TIMEOUT: Duration = Duration::from_secs(1);
/// Readers only wait on WAL recovery or a rare checkpoint restart: they can afford more.
const READER_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The run's bookkeeping: where the last run began, and whether it ended cleanly (see
/// [`SqliteStore::begin_run`]).
const META: &str =
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;";

/// Versions 1 and 2 had every Click field and the backend's answer in `callbacks` (and v2 the
/// guard's tables, used only in a file of their own): their rows move to the v3 tables, the
/// answer to `answers`; the guard's entry of each verified row is computed from its body
/// ([`SqliteStore::fill_guard_columns`]).
const FROM_V2: &str = "ALTER TABLE callbacks RENAME TO callbacks_v2;
    @CREATE@
    INSERT INTO callbacks (id, time, request_id, peer, client, path, content_type, body,
        service_id, click_trans_id, merchant_trans_id, verdict, reason, hint, detail, slot, fp,
        generation, mode, gateway_us)
    SELECT id, time, request_id, peer, client, path, content_type, body,
        service_id, click_trans_id, merchant_trans_id, verdict, reason, hint, detail, slot, fp,
        generation, mode, gateway_us
    FROM callbacks_v2;
    INSERT INTO answers (callback, status, error, error_note, prepare_id, confirm_id,
        upstream_us, total_us)
    SELECT id, backend_status, backend_error, backend_error_note, backend_prepare_id,
        backend_confirm_id, upstream_us, total_us
    FROM callbacks_v2 WHERE backend_status IS NOT NULL;
    DROP TABLE callbacks_v2;
    DROP TABLE IF EXISTS bindings;
    DROP TABLE IF EXISTS completes;";

/// An open SQLite ledger.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// Device and inode the path named when it was opened (writer only).
    identity: Option<(u64, u64)>,
    /// The `-wal` and `-shm` files this connection uses, with their device and inode, to tell
    /// them from a replacement file's own (writer only).
    sidecars: Vec<(PathBuf, (u64, u64))>,
}

fn identity(path: &Path) -> io::Result<(u64, u64)> {
    std::fs::metadata(path).map(|m| (m.dev(), m.ino()))
}

fn identity_of(path: &Path) -> Option<(u64, u64)> {
    identity(path).ok()
}

/// `ledger.db` + `-wal`: the files SQLite keeps beside a WAL-mode database.
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

impl SqliteStore {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens for writing, creating the file (`0600`) if needed, and migrates it to v3.
    /// `synchronous`: `ledger.synchronous` (see [`Synchronous`]).
    pub fn open_writer(path: &Path, synchronous: Synchronous) -> Result<SqliteStore, LedgerError> {
        let open_err = |source| LedgerError::Open {
            path: path.to_owned(),
            source,
        };
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            // A `-wal` left beside it by a deleted database is not replayed into the new,
            // empty file: SQLite discards a WAL whose database has no pages (tested below).
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(LedgerError::Create {
                    path: path.to_owned(),
                    source: e,
                })
            }
        }
        let identity = identity(path).map_err(|source| LedgerError::Create {
            path: path.to_owned(),
            source,
        })?;
        // Not SQLITE_OPEN_CREATE: the file exists, made above with the right mode.
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(WRITER_BUSY_TIMEOUT).map_err(open_err)?;
        // A file SQLite could only open read-only (a read-only mount) must fail here, not at
        // the first row.
        if conn.is_readonly("main").map_err(open_err)? {
            return Err(LedgerError::Open {
                path: path.to_owned(),
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
                    Some("the database can only be opened read-only".into()),
                ),
            });
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            // Readers must be able to read while the writer writes: WAL or nothing.
            return Err(LedgerError::Open {
                path: path.to_owned(),
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                    Some(format!(
                        "the database stays in {mode} journal mode, not WAL"
                    )),
                ),
            });
        }
        // temp_store: a statement that may have to undo itself halfway (a multi-row INSERT,
        // an upsert) journals the pages it changes, in a temporary file by default: one
        // created, written and deleted per statement, which was most of the writer's writes.
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {}; PRAGMA foreign_keys = OFF; PRAGMA temp_store = MEMORY;",
            synchronous.pragma()
        ))
        .map_err(open_err)?;
        let mut store = SqliteStore {
            conn,
            path: path.to_owned(),
            identity: Some(identity),
            sidecars: Vec::new(),
        };
        store.migrate()?;
        // Both exist once a WAL-mode connection has run a transaction.
        store.sidecars = ["-wal", "-shm"]
            .into_iter()
            .filter_map(|suffix| {
                let p = sidecar(path, suffix);
                identity_of(&p).map(|id| (p, id))
            })
            .collect();
        Ok(store)
    }

    /// Brings the schema to [`SCHEMA_VERSION`] in one write transaction (so two gateways
    /// starting at once cannot both migrate): a new file gets the v3 tables, a v1 or v2 one is
    /// converted in place, its rows kept.
    fn migrate(&mut self) -> Result<(), LedgerError> {
        let path = self.path.clone();
        let err = |source| LedgerError::Open {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let (app, version, tables) = header(&tx).map_err(err)?;
        let fresh = app == 0 && version == 0 && tables == 0;
        if !fresh && app != APPLICATION_ID {
            return Err(LedgerError::NotALedger {
                path: path.clone(),
                found: app,
            });
        }
        if version > SCHEMA_VERSION {
            return Err(LedgerError::NewerSchema {
                path: path.clone(),
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        if version < SCHEMA_VERSION {
            let create = model::create_v3(Dialect::Sqlite, "callbacks");
            let tables = if version == 0 {
                create
            } else {
                FROM_V2.replace("@CREATE@", &create)
            };
            tx.execute_batch(&format!(
                "{tables}\n{}\n{META}",
                model::indexes_v3(Dialect::Sqlite)
            ))
            .map_err(err)?;
            // Pragmas take no parameters; both values are constants of this file.
            tx.execute_batch(&format!(
                "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
            ))
            .map_err(err)?;
        }
        // The guard's digest key, made once with the file (see `DigestKey`); rows that predate
        // it (an older schema's) get their entries computed under it.
        let (a, b) = DigestKey::random_halves();
        let made = tx
            .execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('digest_key_0', ?1), ('digest_key_1', ?2)",
                params![a, b],
            )
            .map_err(err)?
            > 0;
        if made && version > 0 {
            let key = digest_key(&tx).map_err(err)?;
            let filled = Self::fill_guard_columns(&tx, &key).map_err(err)?;
            tracing::info!(ledger = %path.display(), from = version, rows_bound = filled, "ledger: migrated to schema v3 (one narrow row per callback, answers apart, the guard's entries in the rows)");
        }
        tx.commit().map_err(err)
    }

    /// The guard's digest key of this ledger (made when the file was).
    pub fn digest_key(&self) -> Result<DigestKey, LedgerError> {
        digest_key(&self.conn).map_err(|source| self.query_err(source))
    }

    /// Opened anew in the middle of a run whose guard digests are under `key` (the file the
    /// writer had was deleted or replaced): a file without rows takes that key, so that the
    /// rows of the rest of the run agree with the index that the next start rebuilds from
    /// them. Returns the highest row id, after which the run's ids go on.
    pub fn continue_run(&mut self, key: &DigestKey) -> Result<i64, LedgerError> {
        let max_id = self.max_id()?;
        if self.digest_key()? != *key {
            if max_id == 0 {
                let (a, b) = key.halves();
                self.conn
                    .execute(
                        "UPDATE meta SET value = CASE key WHEN 'digest_key_0' THEN ?1 ELSE ?2 END
                         WHERE key IN ('digest_key_0', 'digest_key_1')",
                        params![a, b],
                    )
                    .map_err(|source| self.query_err(source))?;
            } else {
                tracing::warn!(ledger = %self.path.display(), "ledger: the file opened anew is another ledger, with rows of its own: the guard's digests of this run's rows in it will not match its key, so identical retries of them may be refused as changed after the next start (guard.window). Put the gateway's own file back, or restart the gateway on this one");
            }
        }
        Ok(max_id)
    }

    /// The guard's entry of every verified row of an older ledger, computed from its body as
    /// the data path does (a migration's one pass); returns how many rows got one.
    /// A thousand rows at a time, in id order: a ledger of millions of rows is converted
    /// without holding their bodies in memory together.
    fn fill_guard_columns(tx: &Connection, key: &DigestKey) -> rusqlite::Result<usize> {
        let mut select = tx.prepare(
            "SELECT id, content_type, body FROM callbacks WHERE verdict = 'verified' AND id > ?1
             ORDER BY id LIMIT 1000",
        )?;
        let mut update = tx.prepare(
            "UPDATE callbacks SET guard_key = ?2, guard_digest = ?3, complete_error = ?4 WHERE id = ?1",
        )?;
        let mut filled = 0;
        let mut after = i64::MIN;
        loop {
            let rows: Vec<(i64, Option<String>, Vec<u8>)> = select
                .query_map([after], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            let Some(last) = rows.last().map(|(id, _, _)| *id) else {
                return Ok(filled);
            };
            after = last;
            for (id, content_type, body) in rows {
                let bound = super::index::bound_of_body(key, content_type.as_deref(), &body);
                if let Some(bound) = bound {
                    update.execute(params![id, bound.key, bound.digest, bound.complete_error])?;
                    filled += 1;
                }
            }
        }
    }

    pub fn open_reader(path: &Path) -> Result<SqliteStore, LedgerError> {
        if !path.is_file() {
            return Err(LedgerError::Missing(path.to_owned()));
        }
        let open_err = |source| LedgerError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(READER_BUSY_TIMEOUT).map_err(open_err)?;
        let (app, version, _) = header(&conn).map_err(open_err)?;
        if app != APPLICATION_ID {
            return Err(LedgerError::NotALedger {
                path: path.to_owned(),
                found: app,
            });
        }
        if version != SCHEMA_VERSION {
            return Err(if version > SCHEMA_VERSION {
                LedgerError::NewerSchema {
                    path: path.to_owned(),
                    found: version,
                    known: SCHEMA_VERSION,
                }
            } else {
                LedgerError::OlderSchema {
                    path: path.to_owned(),
                    found: version,
                    known: SCHEMA_VERSION,
                }
            });
        }
        Ok(SqliteStore {
            conn,
            path: path.to_owned(),
            identity: None,
            sidecars: Vec::new(),
        })
    }

    /// For `check`: reads the schema version through a read-only connection and tries to open
    /// the file for writing (without writing), so nothing in the database changes.
    pub fn inspect(path: &Path) -> Result<Inspection, LedgerError> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
                return match dir.map(std::fs::metadata) {
                    Some(Ok(m)) if !m.is_dir() => Err(LedgerError::Create {
                        path: path.to_owned(),
                        source: io::Error::other("its directory is not a directory"),
                    }),
                    Some(Err(e)) => Err(LedgerError::Create {
                        path: path.to_owned(),
                        source: io::Error::new(e.kind(), format!("its directory: {e}")),
                    }),
                    _ => Ok(Inspection::Absent),
                };
            }
            Err(e) => {
                return Err(LedgerError::Create {
                    path: path.to_owned(),
                    source: e,
                })
            }
        };
        if !meta.is_file() {
            return Err(LedgerError::Create {
                path: path.to_owned(),
                source: io::Error::other("not a regular file"),
            });
        }
        let open_err = |source| LedgerError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(READER_BUSY_TIMEOUT).map_err(open_err)?;
        let (app, version, tables) = header(&conn).map_err(open_err)?;
        let fresh = app == 0 && version == 0 && tables == 0;
        if !fresh && app != APPLICATION_ID {
            return Err(LedgerError::NotALedger {
                path: path.to_owned(),
                found: app,
            });
        }
        if version > SCHEMA_VERSION {
            return Err(LedgerError::NewerSchema {
                path: path.to_owned(),
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        let rows = if version >= 1 {
            conn.query_row("SELECT count(*) FROM callbacks", [], |r| r.get(0))
                .map_err(open_err)?
        } else {
            0
        };
        let writable = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map(drop)
            .map_err(|e| e.to_string());
        Ok(Inspection::Present {
            version,
            rows,
            writable,
            mode: meta.mode() & 0o7777,
        })
    }

    /// Closes a store whose file was deleted or replaced, and removes its own `-wal` and
    /// `-shm` if they are still beside the path: SQLite leaves them when the database has
    /// moved, and would read them as the WAL of whatever file now stands at the path (a
    /// restored backup), corrupting it. A replacement's own sidecars (other inodes) are kept.
    pub fn retire(self) {
        // Decided while this connection still holds them open, so their inodes cannot have
        // been reused by a new file.
        let ours: Vec<PathBuf> = self
            .sidecars
            .iter()
            .filter(|(p, id)| identity_of(p) == Some(*id))
            .map(|(p, _)| p.clone())
            .collect();
        drop(self.conn);
        for p in ours {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(file = %p.display(), error = %e, "ledger: cannot remove the WAL of a replaced database");
                }
            }
        }
    }

    pub fn replaced(&self) -> bool {
        match (self.identity, identity(&self.path)) {
            (Some(open), Ok(now)) => open != now,
            (Some(_), Err(_)) => true,
            (None, _) => false,
        }
    }

    pub fn schema_version(&self) -> Result<i64, LedgerError> {
        self.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|source| self.query_err(source))
    }

    /// Pages in use (all of them but the free list) times the page size.
    pub fn used_bytes(&self) -> Result<u64, LedgerError> {
        let pragma = |name| -> Result<i64, LedgerError> {
            self.conn
                .pragma_query_value(None, name, |r| r.get(0))
                .map_err(|source| self.query_err(source))
        };
        let pages = pragma("page_count")? - pragma("freelist_count")?;
        Ok(u64::try_from(pages.max(0) * pragma("page_size")?).unwrap_or(0))
    }

    /// Free bytes on the file's filesystem for an unprivileged writer (`statvfs`'s
    /// `f_bavail`); `None` when it cannot be read.
    pub fn free_bytes(&self) -> Option<u64> {
        let dir = self.path.parent().filter(|p| !p.as_os_str().is_empty());
        let vfs = rustix::fs::statvfs(dir.unwrap_or(std::path::Path::new("."))).ok()?;
        Some(vfs.f_bavail.saturating_mul(vfs.f_frsize))
    }

    fn query_err(&self, source: rusqlite::Error) -> LedgerError {
        LedgerError::Query {
            path: self.path.clone(),
            source,
        }
    }

    /// The highest row id (0 for none): the gateway numbers new rows after it.
    pub fn max_id(&self) -> Result<i64, LedgerError> {
        self.conn
            .query_row("SELECT coalesce(max(id), 0) FROM callbacks", [], |r| {
                r.get(0)
            })
            .map_err(|source| self.query_err(source))
    }

    /// The guard's entries of the rows at or after `since_us`, oldest first: row id, service,
    /// Click transaction, entry (what [`super::index::Index::rebuild`] takes). Rows are found
    /// from the first one of the window by id (time order is insertion order), so no time
    /// index is needed.
    pub fn guard_rows(&self, since_us: i64) -> Result<Vec<GuardRow>, LedgerError> {
        let first = self.first_id_at(since_us)?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, service_id, click_trans_id, guard_key, guard_digest, complete_error
                 FROM callbacks WHERE id >= ?1 AND guard_key IS NOT NULL ORDER BY id",
            )
            .map_err(|source| self.query_err(source))?;
        let rows = stmt
            .query_map([first], |r| {
                let service: Option<String> = r.get(1)?;
                let trans: Option<String> = r.get(2)?;
                Ok((
                    r.get::<_, i64>(0)?,
                    service.and_then(|s| s.parse().ok()),
                    trans.and_then(|t| t.parse().ok()),
                    Bound {
                        key: r.get(3)?,
                        digest: r.get(4)?,
                        complete_error: r.get(5)?,
                    },
                ))
            })
            .map_err(|source| self.query_err(source))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, service, trans, bound) = row.map_err(|source| self.query_err(source))?;
            if let Some(service) = service {
                out.push((id, service, trans, bound));
            }
        }
        Ok(out)
    }

    fn first_id_at(&self, us: i64) -> Result<i64, LedgerError> {
        first_id_at(&self.conn, us).map_err(|source| self.query_err(source))
    }

    /// Starts a run: returns how many forwarded callbacks of the last run have no recorded
    /// answer when that run did not end cleanly (the gateway stopped while they were at the
    /// backend), then marks this run begun.
    pub fn begin_run(&mut self) -> Result<Option<u64>, LedgerError> {
        let meta = |key: &str| -> Result<Option<i64>, LedgerError> {
            self.conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
                .map_err(|source| self.query_err(source))
        };
        let began = meta("run_began_after")?;
        let clean = meta("run_ended_clean")?.unwrap_or(1) == 1;
        let unanswered = match began {
            Some(after) if !clean => Some(
                self.conn
                    .query_row(
                        &format!(
                            "SELECT count(*) FROM callbacks c WHERE c.id > ?1 AND c.{FORWARDED}
                             AND NOT EXISTS (SELECT 1 FROM answers a WHERE a.callback = c.id)"
                        ),
                        [after],
                        |r| r.get::<_, i64>(0),
                    )
                    .map_err(|source| self.query_err(source))?
                    .try_into()
                    .unwrap_or(0),
            ),
            _ => None,
        };
        let max = self.max_id()?;
        self.conn
            .execute_batch(&format!(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('run_began_after', {max}), ('run_ended_clean', 0);"
            ))
            .map_err(|source| self.query_err(source))?;
        Ok(unanswered)
    }

    /// Marks the run ended cleanly (every answer that was coming is written).
    pub fn end_run(&mut self) -> Result<(), LedgerError> {
        self.conn
            .execute_batch(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('run_ended_clean', 1);",
            )
            .map_err(|source| self.query_err(source))
    }

    pub fn apply(&mut self, ops: &[Op<'_>]) -> Result<Vec<OpResult>, LedgerError> {
        let path = self.path.clone();
        let err = |source| LedgerError::Query {
            path: path.clone(),
            source,
        };
        // BEGIN and COMMIT as cached statements: rusqlite's `Transaction` parses them again
        // for every batch, which on small batches (a callback waiting for its record) is a
        // good share of the whole transaction.
        let tx = &self.conn;
        tx.prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.execute([]))
            .map_err(err)?;
        let results = Self::run_ops(tx, ops);
        let done = results.and_then(|results| {
            tx.prepare_cached("COMMIT")
                .and_then(|mut s| s.execute([]))
                .map(|_| results)
        });
        if done.is_err() && !tx.is_autocommit() {
            let _ = tx
                .prepare_cached("ROLLBACK")
                .and_then(|mut s| s.execute([]));
        }
        done.map_err(err)
    }

    fn run_ops(tx: &Connection, ops: &[Op<'_>]) -> rusqlite::Result<Vec<OpResult>> {
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(match op {
                Op::Rows(rows) => {
                    insert_rows(tx, rows)?;
                    OpResult::Written(rows.len())
                }
                Op::Answers(answers) => {
                    insert_answers(tx, answers)?;
                    OpResult::Written(answers.len())
                }
                Op::Corrections(corrections) => {
                    correct(tx, corrections)?;
                    OpResult::Written(corrections.len())
                }
                Op::Prune { before_us, limit } => {
                    // Oldest first, by id: the rows before the first one of the retention
                    // window (time order is insertion order, so no time index is needed).
                    let first = first_id_at(tx, *before_us)?;
                    let rows = tx
                        .prepare_cached(
                            "DELETE FROM callbacks WHERE id IN
                             (SELECT id FROM callbacks WHERE id < ?1 ORDER BY id LIMIT ?2)",
                        )
                        .and_then(|mut s| s.execute(params![first, limit]))?;
                    delete_orphan_answers(tx)?;
                    OpResult::Pruned {
                        rows: rows as u64,
                        more: u32::try_from(rows).is_ok_and(|n| n >= *limit),
                    }
                }
                Op::PruneRefused { limit } => {
                    let rows = tx
                        .prepare_cached(PRUNE_REFUSED)
                        .and_then(|mut s| s.execute(params![limit]))?;
                    OpResult::Pruned {
                        rows: rows as u64,
                        more: u32::try_from(rows).is_ok_and(|n| n >= *limit),
                    }
                }
                Op::Body(id) => OpResult::Body(
                    tx.prepare_cached("SELECT content_type, body FROM callbacks WHERE id = ?1")?
                        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()?,
                ),
            });
        }
        Ok(results)
    }

    pub fn callbacks(&self, f: &Filter) -> Result<Vec<Stored>, LedgerError> {
        // The most selective filter leads and gets its index; the others are written `+col`,
        // which keeps SQLite (without statistics) from using a second index for them.
        let by_id = f.merchant_trans_id.is_some() || f.click_trans_id.is_some();
        let mut conditions = Vec::new();
        let mut args: Vec<&dyn rusqlite::ToSql> = Vec::new();
        macro_rules! add {
            ($column:expr, $op:literal, $value:expr) => {{
                args.push($value);
                conditions.push(format!("{} {} ?{}", $column, $op, args.len()));
            }};
        }
        if let Some(m) = &f.merchant_trans_id {
            add!("c.merchant_trans_id", "=", m);
        }
        if let Some(c) = &f.click_trans_id {
            let column = if f.merchant_trans_id.is_some() {
                "+c.click_trans_id"
            } else {
                "c.click_trans_id"
            };
            add!(column, "=", c);
        }
        if let Some(s) = &f.service_id {
            add!(
                if by_id {
                    "+c.service_id"
                } else {
                    "c.service_id"
                },
                "=",
                s
            );
        }
        // A window of time is a range of ids (there is no time index): by id when no other
        // filter leads, else checked on the rows the leading index found.
        let first;
        if by_id {
            add!("+c.time", ">=", &f.since_us);
        } else {
            first = self.first_id_at(f.since_us)?;
            add!("c.id", ">=", &first);
        }
        self.select(&conditions.join(" AND "), &args)
    }

    pub fn refused_signatures(
        &self,
        service_id: Option<&str>,
        since_us: i64,
    ) -> Result<Vec<Stored>, LedgerError> {
        let first = self.first_id_at(since_us)?;
        match service_id {
            Some(s) => self.select(
                &format!("c.id >= ?1 AND c.service_id = ?2 AND {REFUSED_FOR_SIGNATURE}"),
                &[&first, &s],
            ),
            None => self.select(
                &format!("c.id >= ?1 AND {REFUSED_FOR_SIGNATURE}"),
                &[&first],
            ),
        }
    }

    fn select(
        &self,
        condition: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Stored>, LedgerError> {
        let sql = format!("{} WHERE {condition} ORDER BY c.time, c.id", model::SELECT);
        let mut stmt = self
            .conn
            .prepare(&sql)
            .map_err(|source| self.query_err(source))?;
        let rows = stmt
            .query_map(args, |r| Stored::from_row(&Read(r)))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|source| self.query_err(source))?;
        Ok(rows)
    }
}

/// The first row id whose time is at or after `us`, by binary search over ids (rows are in
/// time order, up to clock steps): a few primary-key lookups, whatever the size. What stands
/// in for a time index: a window of time is a range of ids.
fn first_id_at(conn: &Connection, us: i64) -> rusqlite::Result<i64> {
    let mut at =
        conn.prepare_cached("SELECT id, time FROM callbacks WHERE id >= ?1 ORDER BY id LIMIT 1")?;
    let mut lo = 0i64;
    let mut hi: i64 = conn
        .prepare_cached("SELECT coalesce(max(id), 0) FROM callbacks")?
        .query_row([], |r| r.get(0))?;
    hi += 1;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match at
            .query_row([mid], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .optional()?
        {
            Some((id, time)) if time < us => lo = id + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

fn digest_key(conn: &Connection) -> rusqlite::Result<DigestKey> {
    let half = |name: &str| -> rusqlite::Result<i64> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [name], |r| {
            r.get(0)
        })
    };
    Ok(DigestKey::from_halves(
        half("digest_key_0")?,
        half("digest_key_1")?,
    ))
}

/// A SQLite row, read by position for [`Stored::from_row`].
struct Read<'a, 'r>(&'a rusqlite::Row<'r>);

impl model::RowRead for Read<'_, '_> {
    type Error = rusqlite::Error;
    fn int(&self, i: usize) -> rusqlite::Result<i64> {
        self.0.get(i)
    }
    fn opt_int(&self, i: usize) -> rusqlite::Result<Option<i64>> {
        self.0.get(i)
    }
    fn text(&self, i: usize) -> rusqlite::Result<String> {
        self.0.get(i)
    }
    fn opt_text(&self, i: usize) -> rusqlite::Result<Option<String>> {
        self.0.get(i)
    }
    fn bytes(&self, i: usize) -> rusqlite::Result<Vec<u8>> {
        self.0.get(i)
    }
}

/// `(application_id, user_version, number of tables and indexes)`.
fn header(conn: &Connection) -> rusqlite::Result<(i64, i64, i64)> {
    let app = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
    let version = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let tables = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    Ok((app, version, tables))
}

/// Rows inserted by one statement: the statement's own overhead (its program's start and
/// halt, its bindings' reset) is paid once for them all.
const ROWS_PER_INSERT: usize = 8;

/// The multi-row statements for 1 to [`ROWS_PER_INSERT`] rows, built once.
fn statements(
    build: fn(usize) -> String,
    cache: &'static std::sync::OnceLock<Vec<String>>,
    rows: usize,
) -> &'static str {
    let all = cache.get_or_init(|| (1..=ROWS_PER_INSERT).map(build).collect());
    all.get(rows.saturating_sub(1)).map_or("", String::as_str)
}

fn insert_rows(tx: &Connection, rows: &[Row<'_>]) -> rusqlite::Result<()> {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let sql = statements(|n| model::insert_callbacks(n, true), &SQL, chunk.len());
        let mut stmt = tx.prepare_cached(sql)?;
        for (i, row) in chunk.iter().enumerate() {
            bind_row(&mut stmt, i * model::CALLBACK_VALUES, row)?;
        }
        stmt.raw_execute()?;
    }
    Ok(())
}

/// Binds one row's values at parameters `base + 1 ..= base + CALLBACK_VALUES`, in the order
/// of [`model::insert_callbacks`].
fn bind_row(
    stmt: &mut rusqlite::Statement<'_>,
    base: usize,
    row: &Row<'_>,
) -> rusqlite::Result<()> {
    let (rec, f) = (row.record, row.fields);
    let fp = rec.verified.map(|v| v.fingerprint);
    let bound = rec.bound;
    let values: [&dyn rusqlite::ToSql; model::CALLBACK_VALUES] = [
        &row.id,
        &unix_micros(rec.time),
        &rec.request_id,
        &rec.peer.to_string(),
        &rec.client.to_string(),
        &rec.path,
        &rec.content_type,
        &&rec.body[..],
        &f.service_id,
        &f.click_trans_id,
        &f.merchant_trans_id,
        &rec.verdict.as_str(),
        &rec.reason,
        &rec.hint,
        &rec.detail,
        &rec.verified
            .map(|v| i64::try_from(v.slot).unwrap_or(i64::MAX)),
        &fp.as_ref().map(|fp| fp.as_str()),
        &i64::try_from(rec.generation).unwrap_or(i64::MAX),
        &rec.mode.as_str(),
        &micros(rec.gateway),
        &bound.map(|b| b.key),
        &bound.map(|b| b.digest),
        &bound.and_then(|b| b.complete_error),
    ];
    for (i, value) in values.iter().enumerate() {
        stmt.raw_bind_parameter(base + i + 1, value)?;
    }
    Ok(())
}

fn insert_answers(tx: &Connection, answers: &[Answer]) -> rusqlite::Result<()> {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    for chunk in answers.chunks(ROWS_PER_INSERT) {
        let sql = statements(model::insert_answers, &SQL, chunk.len());
        let mut stmt = tx.prepare_cached(sql)?;
        for (i, a) in chunk.iter().enumerate() {
            let base = i * model::ANSWER_VALUES;
            let field = |get: fn(&super::record::BackendAnswer) -> &Option<String>| {
                a.backend.answer.as_ref().and_then(|x| get(x).clone())
            };
            let values: [&dyn rusqlite::ToSql; model::ANSWER_VALUES] = [
                &a.callback,
                &i64::from(a.backend.status),
                &field(|x| &x.error),
                &field(|x| &x.error_note),
                &field(|x| &x.merchant_prepare_id),
                &field(|x| &x.merchant_confirm_id),
                &a.upstream.map(micros),
                &micros(a.total),
            ];
            for (j, value) in values.iter().enumerate() {
                stmt.raw_bind_parameter(base + j + 1, value)?;
            }
        }
        stmt.raw_execute()?;
    }
    Ok(())
}

fn correct(tx: &Connection, corrections: &[Correction]) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "UPDATE callbacks SET verdict = ?2, reason = ?3, hint = ?4, detail = ?5 WHERE id = ?1",
    )?;
    for c in corrections {
        stmt.execute(params![c.callback, c.verdict, c.reason, c.hint, c.detail])?;
    }
    Ok(())
}

/// Answers whose row was pruned go with it (the oldest rows: the answers table is keyed by
/// the row's id, so they are its first entries).
fn delete_orphan_answers(tx: &Connection) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "DELETE FROM answers WHERE callback < (SELECT coalesce(min(id), 9223372036854775807) FROM callbacks)",
    )
    .and_then(|mut s| s.execute([]))
}
