//! The SQLite store: one file in WAL mode, written by the ledger's writer thread and read by
//! the commands at the same time (WAL lets readers see the last commit while a write goes on).
//!
//! The file is created `0600` by the gateway itself before SQLite opens it (SQLite would use
//! `0644`); SQLite gives its `-wal` and `-shm` files the database file's permissions (and, run as
//! root, its owner), so they are `0600` too. A body with its signature is material for guessing
//! a weak key offline: the ledger is as private as the keys file.
//!
//! Commits are `synchronous = FULL`: a committed row is on disk, which a replay guard awaiting
//! its commit relies on; group commit keeps that to one fsync per batch.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};

use super::binding::{BindOutcome, Binding, Seen};
use super::record::{micros, unix_micros, ClickFields};
use super::store::{
    Filter, Inspection, Op, OpResult, Stored, COLUMNS, REFUSED_FOR_SIGNATURE, SCHEMA_VERSION,
};
use super::LedgerError;

/// `PRAGMA application_id` of a ledger ("ClKG"), so a file that is some other program's
/// database is refused instead of being given a `callbacks` table.
pub const APPLICATION_ID: i64 = 0x436c_4b47;

/// How long a statement waits for a lock held by another connection (an operator's `sqlite3`
/// in a write transaction) before failing; the writer then counts the batch and retries.
const WRITER_BUSY_TIMEOUT: Duration = Duration::from_secs(1);
/// Readers only wait on WAL recovery or a rare checkpoint restart: they can afford more.
const READER_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema, one migration per version: `MIGRATIONS[n]` takes version `n` to `n + 1`.
/// Append only; a released migration is never edited.
const MIGRATIONS: &[&str] = &[
    // v1: one row per request to a callback path.
    "CREATE TABLE callbacks (
        id                  INTEGER PRIMARY KEY,
        time                INTEGER NOT NULL,
        request_id          TEXT NOT NULL,
        peer                TEXT NOT NULL,
        client              TEXT NOT NULL,
        path                TEXT NOT NULL,
        content_type        TEXT,
        body                BLOB NOT NULL,
        click_trans_id      TEXT,
        service_id          TEXT,
        click_paydoc_id     TEXT,
        merchant_trans_id   TEXT,
        merchant_prepare_id TEXT,
        amount              TEXT,
        action              TEXT,
        error               TEXT,
        error_note          TEXT,
        sign_time           TEXT,
        verdict             TEXT NOT NULL,
        reason              TEXT,
        hint                TEXT,
        detail              TEXT,
        slot                INTEGER,
        fp                  TEXT,
        generation          INTEGER NOT NULL,
        mode                TEXT NOT NULL,
        backend_status      INTEGER,
        backend_error       TEXT,
        backend_error_note  TEXT,
        backend_prepare_id  TEXT,
        backend_confirm_id  TEXT,
        gateway_us          INTEGER NOT NULL,
        upstream_us         INTEGER,
        total_us            INTEGER NOT NULL
    );
    CREATE INDEX callbacks_merchant_trans_id ON callbacks (merchant_trans_id);
    CREATE INDEX callbacks_click_trans_id ON callbacks (click_trans_id, service_id);
    CREATE INDEX callbacks_service_time ON callbacks (service_id, time);
    CREATE INDEX callbacks_time ON callbacks (time);",
    // v2: the replay guard. One row per verified signature, bound to the fields it first came
    // with; one per transaction whose Complete was forwarded, with that Complete's `error`.
    // Ids are decimal text, as in `callbacks` (a u64 does not fit SQLite's INTEGER).
    "CREATE TABLE bindings (
        service_id  TEXT NOT NULL,
        sign        TEXT NOT NULL,
        digest      BLOB NOT NULL,
        fields      TEXT NOT NULL,
        request_id  TEXT NOT NULL,
        token       TEXT NOT NULL,
        time        INTEGER NOT NULL,
        PRIMARY KEY (service_id, sign)
    ) WITHOUT ROWID;
    CREATE INDEX bindings_time ON bindings (time);
    CREATE TABLE completes (
        service_id      TEXT NOT NULL,
        click_trans_id  TEXT NOT NULL,
        error           TEXT NOT NULL,
        request_id      TEXT NOT NULL,
        token           TEXT NOT NULL,
        time            INTEGER NOT NULL,
        PRIMARY KEY (service_id, click_trans_id)
    ) WITHOUT ROWID;
    CREATE INDEX completes_time ON completes (time);",
];

/// Rule 1 in one statement: the first message of a signature is bound; a later one gets the
/// first one's row back (the no-op update makes RETURNING see it), to compare.
const BIND: &str =
    "INSERT INTO bindings (service_id, sign, digest, fields, request_id, token, time)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
    ON CONFLICT (service_id, sign) DO UPDATE SET service_id = excluded.service_id
    RETURNING digest, fields, token";

/// Rule 2: the first forwarded Complete of a transaction stays; a later one gets its `error`.
const COMPLETE: &str =
    "INSERT INTO completes (service_id, click_trans_id, error, request_id, token, time)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)
    ON CONFLICT (service_id, click_trans_id) DO UPDATE SET service_id = excluded.service_id
    RETURNING error, token";

const INSERT: &str = "INSERT INTO callbacks (
    time, request_id, peer, client, path, content_type, body,
    click_trans_id, service_id, click_paydoc_id, merchant_trans_id, merchant_prepare_id,
    amount, action, error, error_note, sign_time,
    verdict, reason, hint, detail, slot, fp, generation, mode,
    backend_status, backend_error, backend_error_note, backend_prepare_id, backend_confirm_id,
    gateway_us, upstream_us, total_us
) VALUES (
    ?1, ?2, ?3, ?4, ?5, ?6, ?7,
    ?8, ?9, ?10, ?11, ?12,
    ?13, ?14, ?15, ?16, ?17,
    ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25,
    ?26, ?27, ?28, ?29, ?30,
    ?31, ?32, ?33
)";

/// Runs the guard's statements for one binding (see [`BIND`] and [`COMPLETE`]).
fn bind(tx: &Connection, b: &Binding) -> rusqlite::Result<BindOutcome> {
    let (digest, fields, token): (Vec<u8>, String, String) = tx.prepare_cached(BIND)?.query_row(
        params![
            b.service_id,
            b.sign,
            &b.digest[..],
            b.fields,
            b.request_id,
            b.token,
            b.time_us
        ],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let signature = b.seen(&digest, &fields, &token);
    let mut earlier_complete_error = None;
    if let Some(c) = &b.complete {
        if b.enforce_signature && matches!(signature, Seen::Changed(_)) {
            earlier_complete_error = tx
                .prepare_cached(
                    "SELECT error FROM completes WHERE service_id = ?1 AND click_trans_id = ?2",
                )?
                .query_row(params![b.service_id, c.click_trans_id], |r| r.get(0))
                .optional()?;
        } else {
            let (error, token): (String, String) = tx.prepare_cached(COMPLETE)?.query_row(
                params![
                    b.service_id,
                    c.click_trans_id,
                    c.error,
                    b.request_id,
                    b.token,
                    b.time_us
                ],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if token != b.token {
                earlier_complete_error = Some(error);
            }
        }
    }
    Ok(BindOutcome {
        signature,
        earlier_complete_error,
    })
}

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

    pub fn open_writer(path: &Path) -> Result<SqliteStore, LedgerError> {
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
        conn.execute_batch(
            "PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF; PRAGMA temp_store = MEMORY;",
        )
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
    /// starting at once cannot both migrate).
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
        let from = usize::try_from(version).unwrap_or(0);
        for sql in MIGRATIONS.iter().skip(from) {
            tx.execute_batch(sql).map_err(err)?;
        }
        if fresh || version < SCHEMA_VERSION {
            // Pragmas take no parameters; both values are constants of this file.
            tx.execute_batch(&format!(
                "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
            ))
            .map_err(err)?;
        }
        tx.commit().map_err(err)
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

    pub fn apply(&mut self, ops: &[Op<'_>]) -> Result<Vec<OpResult>, LedgerError> {
        let path = self.path.clone();
        let err = |source| LedgerError::Query {
            path: path.clone(),
            source,
        };
        // BEGIN and COMMIT as cached statements: rusqlite's `Transaction` parses them again
        // for every batch, which on small batches (a guard's awaited commit) is a good share
        // of the whole transaction.
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
                Op::Insert(rec, fields) => {
                    insert(tx, rec, fields)?;
                    OpResult::Inserted {
                        id: tx.last_insert_rowid(),
                    }
                }
                Op::Rows(rows) => {
                    insert_rows(tx, rows)?;
                    OpResult::Rows(rows.len())
                }
                Op::Prune { before_us, limit } => {
                    let rows = tx
                        .prepare_cached(
                            "DELETE FROM callbacks WHERE id IN
                             (SELECT id FROM callbacks WHERE time < ?1 ORDER BY time LIMIT ?2)",
                        )
                        .and_then(|mut s| s.execute(params![before_us, limit]))?;
                    let full = |n: usize| u32::try_from(n).is_ok_and(|n| n >= *limit);
                    let mut more = full(rows);
                    // The guard's rows age out with the ledger's (their own count is not
                    // reported: the metric counts callbacks).
                    for sql in [
                        "DELETE FROM bindings WHERE (service_id, sign) IN
                         (SELECT service_id, sign FROM bindings WHERE time < ?1 ORDER BY time LIMIT ?2)",
                        "DELETE FROM completes WHERE (service_id, click_trans_id) IN
                         (SELECT service_id, click_trans_id FROM completes WHERE time < ?1 ORDER BY time LIMIT ?2)",
                    ] {
                        let n = tx
                            .prepare_cached(sql)
                            .and_then(|mut s| s.execute(params![before_us, limit]))?;
                        more |= full(n);
                    }
                    OpResult::Pruned {
                        rows: rows as u64,
                        more,
                    }
                }
                Op::Bind(b) => OpResult::Bound(bind(tx, b)?),
                Op::PruneRefused { limit } => {
                    let rows = tx
                        .prepare_cached(super::store::PRUNE_REFUSED)
                        .and_then(|mut s| s.execute(params![limit]))?;
                    OpResult::Pruned {
                        rows: rows as u64,
                        more: u32::try_from(rows).is_ok_and(|n| n >= *limit),
                    }
                }
            });
        }
        Ok(results)
    }

    pub fn callbacks(&self, f: &Filter) -> Result<Vec<Stored>, LedgerError> {
        // The most selective filter leads and gets its index; the others are written `+col`,
        // which keeps SQLite (without statistics) from picking the (service_id, time) index
        // for a merchant_trans_id lookup in a busy service.
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
            add!("merchant_trans_id", "=", m);
        }
        if let Some(c) = &f.click_trans_id {
            let column = if f.merchant_trans_id.is_some() {
                "+click_trans_id"
            } else {
                "click_trans_id"
            };
            add!(column, "=", c);
        }
        if let Some(s) = &f.service_id {
            add!(if by_id { "+service_id" } else { "service_id" }, "=", s);
        }
        add!(if by_id { "+time" } else { "time" }, ">=", &f.since_us);
        self.select(&conditions.join(" AND "), f.bodies, &args)
    }

    pub fn refused_signatures(
        &self,
        service_id: Option<&str>,
        since_us: i64,
    ) -> Result<Vec<Stored>, LedgerError> {
        match service_id {
            Some(s) => self.select(
                &format!("service_id = ?1 AND time >= ?2 AND {REFUSED_FOR_SIGNATURE}"),
                true,
                &[&s, &since_us],
            ),
            None => self.select(
                &format!("time >= ?1 AND {REFUSED_FOR_SIGNATURE}"),
                true,
                &[&since_us],
            ),
        }
    }

    fn select(
        &self,
        condition: &str,
        with_body: bool,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Stored>, LedgerError> {
        let body = if with_body { "body" } else { "x''" };
        let sql =
            format!("SELECT {COLUMNS}, {body} FROM callbacks WHERE {condition} ORDER BY time, id");
        let mut stmt = self
            .conn
            .prepare(&sql)
            .map_err(|source| self.query_err(source))?;
        let rows = stmt
            .query_map(args, stored)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|source| self.query_err(source))?;
        Ok(rows)
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

/// The multi-row `INSERT` for `rows` rows (1 to [`ROWS_PER_INSERT`]), built once.
fn insert_sql(rows: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        (1..=ROWS_PER_INSERT)
            .map(|n| {
                let head = &INSERT[..INSERT.find("VALUES").unwrap_or(INSERT.len())];
                let row = |r: usize| {
                    let marks: Vec<String> = (1..=INSERT_VALUES)
                        .map(|c| format!("?{}", r * INSERT_VALUES + c))
                        .collect();
                    format!("({})", marks.join(", "))
                };
                let rows: Vec<String> = (0..n).map(row).collect();
                format!("{head}VALUES {}", rows.join(", "))
            })
            .collect()
    });
    all.get(rows.saturating_sub(1))
        .map_or(INSERT, String::as_str)
}

/// Values in one row of [`INSERT`].
const INSERT_VALUES: usize = 33;

/// Inserts plain rows (nobody waits for their ids) in statements of up to
/// [`ROWS_PER_INSERT`] rows.
fn insert_rows(tx: &Connection, rows: &[(&super::Record, &ClickFields)]) -> rusqlite::Result<()> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut stmt = tx.prepare_cached(insert_sql(chunk.len()))?;
        for (i, (rec, f)) in chunk.iter().enumerate() {
            bind_row(&mut stmt, i * INSERT_VALUES, rec, f)?;
        }
        stmt.raw_execute()?;
    }
    Ok(())
}

/// Binds one row's values at parameters `base + 1 ..= base + INSERT_VALUES`, in [`INSERT`]'s
/// order.
fn bind_row(
    stmt: &mut rusqlite::Statement<'_>,
    base: usize,
    rec: &super::Record,
    f: &ClickFields,
) -> rusqlite::Result<()> {
    let answer = rec.backend.as_ref().and_then(|b| b.answer.as_ref());
    let answer_field =
        |get: fn(&super::BackendAnswer) -> &Option<String>| answer.and_then(|a| get(a).as_deref());
    let fp = rec.verified.map(|v| v.fingerprint);
    let values: [&dyn rusqlite::ToSql; INSERT_VALUES] = [
        &unix_micros(rec.time),
        &rec.request_id,
        &rec.peer.to_string(),
        &rec.client.to_string(),
        &rec.path,
        &rec.content_type,
        &&rec.body[..],
        &f.click_trans_id,
        &f.service_id,
        &f.click_paydoc_id,
        &f.merchant_trans_id,
        &f.merchant_prepare_id,
        &f.amount,
        &f.action,
        &f.error,
        &f.error_note,
        &f.sign_time,
        &rec.verdict.as_str(),
        &rec.reason,
        &rec.hint,
        &rec.detail,
        &rec.verified
            .map(|v| i64::try_from(v.slot).unwrap_or(i64::MAX)),
        &fp.as_ref().map(|fp| fp.as_str()),
        &i64::try_from(rec.generation).unwrap_or(i64::MAX),
        &rec.mode.as_str(),
        &rec.backend.as_ref().map(|b| i64::from(b.status)),
        &answer_field(|a| &a.error),
        &answer_field(|a| &a.error_note),
        &answer_field(|a| &a.merchant_prepare_id),
        &answer_field(|a| &a.merchant_confirm_id),
        &micros(rec.timings.gateway),
        &rec.timings.upstream.map(micros),
        &micros(rec.timings.total),
    ];
    for (i, value) in values.iter().enumerate() {
        stmt.raw_bind_parameter(base + i + 1, value)?;
    }
    Ok(())
}

fn insert(tx: &Connection, rec: &super::Record, f: &ClickFields) -> rusqlite::Result<()> {
    insert_rows(tx, &[(rec, f)])
}

fn stored(r: &Row<'_>) -> rusqlite::Result<Stored> {
    Ok(Stored {
        id: r.get(0)?,
        time_us: r.get(1)?,
        request_id: r.get(2)?,
        peer: r.get(3)?,
        client: r.get(4)?,
        path: r.get(5)?,
        content_type: r.get(6)?,
        fields: ClickFields {
            click_trans_id: r.get(7)?,
            service_id: r.get(8)?,
            click_paydoc_id: r.get(9)?,
            merchant_trans_id: r.get(10)?,
            merchant_prepare_id: r.get(11)?,
            amount: r.get(12)?,
            action: r.get(13)?,
            error: r.get(14)?,
            error_note: r.get(15)?,
            sign_time: r.get(16)?,
        },
        verdict: r.get(17)?,
        reason: r.get(18)?,
        hint: r.get(19)?,
        detail: r.get(20)?,
        slot: r.get(21)?,
        fp: r.get(22)?,
        generation: r.get(23)?,
        mode: r.get(24)?,
        backend_status: r.get(25)?,
        backend_error: r.get(26)?,
        backend_error_note: r.get(27)?,
        backend_prepare_id: r.get(28)?,
        backend_confirm_id: r.get(29)?,
        gateway_us: r.get(30)?,
        upstream_us: r.get(31)?,
        total_us: r.get(32)?,
        body: r.get(33)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::record::sample;
    use std::time::SystemTime;

    fn insert_one(store: &mut SqliteStore, merchant: &str) -> i64 {
        let rec = sample(merchant, SystemTime::now());
        let fields = ClickFields::decode(rec.content_type.as_deref(), &rec.body);
        match store.apply(&[Op::Insert(&rec, &fields)]).unwrap()[..] {
            [OpResult::Inserted { id }] => id,
            ref other => panic!("{other:?}"),
        }
    }

    fn binding(sign: &str, fields: &str, complete: Option<(&str, &str)>) -> Binding {
        Binding {
            service_id: "12345".into(),
            sign: sign.into(),
            digest: crate::guard::digest(&crate::guard::canonical(&[("f", fields)])),
            fields: format!("{{\"f\":\"{fields}\"}}"),
            request_id: "r".into(),
            token: format!("{sign}{fields}{}", complete.map_or("", |c| c.1)),
            time_us: 1,
            enforce_signature: true,
            complete: complete.map(|(t, e)| crate::ledger::CompleteClaim {
                click_trans_id: t.into(),
                error: e.into(),
            }),
        }
    }

    fn bind_one(store: &mut SqliteStore, b: &Binding) -> BindOutcome {
        match store.apply(&[Op::Bind(b)]).unwrap().pop() {
            Some(OpResult::Bound(o)) => o,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_signature_binds_to_its_first_message_and_a_complete_to_its_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open_writer(&dir.path().join("ledger.db")).unwrap();
        let first = binding("aa", "x", Some(("7", "-5017")));
        assert_eq!(bind_one(&mut store, &first).signature, Seen::First);
        // A retry: another attempt (token), the same fields.
        let retry = Binding {
            token: "again".into(),
            ..first.clone()
        };
        let found = bind_one(&mut store, &retry);
        assert_eq!(found.signature, Seen::Same);
        assert_eq!(found.earlier_complete_error.as_deref(), Some("-5017"));
        // The same signature with other fields: named; refused, so not the transaction's.
        let changed = binding("aa", "y", Some(("8", "0")));
        assert_eq!(
            bind_one(&mut store, &changed).signature,
            Seen::Changed(vec!["f".into()])
        );
        let other = binding("bb", "z", Some(("8", "0")));
        let found = bind_one(&mut store, &other);
        assert_eq!(found.signature, Seen::First);
        assert_eq!(
            found.earlier_complete_error, None,
            "the refused one did not count"
        );
    }

    #[test]
    fn a_v1_ledger_is_migrated_to_the_current_schema_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(&format!(
                "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = 1;"
            ))
            .unwrap();
            conn.execute(
                "INSERT INTO callbacks (time, request_id, peer, client, path, body, verdict, generation, mode, gateway_us, total_us)
                 VALUES (1, 'old-row', 'p', 'c', '/', x'', 'verified', 1, 'enforce', 0, 0)",
                [],
            )
            .unwrap();
        }
        let mut store = SqliteStore::open_writer(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let kept: String = store
            .conn
            .query_row("SELECT request_id FROM callbacks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, "old-row");
        assert_eq!(
            bind_one(&mut store, &binding("cc", "x", None)).signature,
            Seen::First
        );
    }

    #[test]
    fn a_new_ledger_is_private_wal_and_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let mut store = SqliteStore::open_writer(&path).unwrap();
        insert_one(&mut store, "order-1");
        for file in ["ledger.db", "ledger.db-wal", "ledger.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(file)).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o600, "{file}");
        }
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let (app, version, _) = header(&store.conn).unwrap();
        assert_eq!((app, version), (APPLICATION_ID, SCHEMA_VERSION));
        let mode: String = store
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(store);
        // Opening again migrates nothing and keeps the row.
        let store = SqliteStore::open_writer(&path).unwrap();
        let rows = store
            .callbacks(&Filter {
                merchant_trans_id: Some("order-1".into()),
                ..Filter::default()
            })
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].fields.amount.as_deref(), Some("1000.00"));
        assert!(rows[0].body.is_empty(), "timelines carry no bodies");
    }

    #[test]
    fn other_files_are_refused_and_never_changed() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other.db");
        let conn = Connection::open(&other).unwrap();
        conn.execute_batch("CREATE TABLE accounts (x)").unwrap();
        drop(conn);
        let err = SqliteStore::open_writer(&other).unwrap_err();
        assert!(
            matches!(err, LedgerError::NotALedger { found: 0, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("is not a click-gateway ledger"),
            "{err}"
        );
        assert!(matches!(
            SqliteStore::open_reader(&other),
            Err(LedgerError::NotALedger { .. })
        ));

        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, "not a database, and long enough to look like a header....................................................................").unwrap();
        let before = std::fs::read(&junk).unwrap();
        let err = SqliteStore::open_writer(&junk).unwrap_err();
        assert!(err.to_string().contains("not a database"), "{err}");
        assert_eq!(std::fs::read(&junk).unwrap(), before);

        let newer = dir.path().join("newer.db");
        drop(SqliteStore::open_writer(&newer).unwrap());
        Connection::open(&newer)
            .unwrap()
            .execute_batch("PRAGMA user_version = 7")
            .unwrap();
        let err = SqliteStore::open_writer(&newer).unwrap_err();
        assert!(
            err.to_string()
                .contains("has schema v7, newer than this click-gateway's v2"),
            "{err}"
        );
        assert!(matches!(
            SqliteStore::inspect(&newer),
            Err(LedgerError::NewerSchema { found: 7, .. })
        ));
    }

    #[test]
    fn readers_need_an_existing_current_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.db");
        let err = SqliteStore::open_reader(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no ledger at {}: is [ledger] database set and has the gateway run?",
                path.display()
            )
        );
        assert!(!path.exists(), "a reader creates nothing");
        // An empty file is a database of schema v0: the gateway would migrate it, a reader
        // says so.
        std::fs::write(&path, b"").unwrap();
        let err = SqliteStore::open_reader(&path).unwrap_err();
        assert!(matches!(err, LedgerError::NotALedger { .. }), "{err}");
        match SqliteStore::inspect(&path).unwrap() {
            Inspection::Present {
                version: 0,
                rows: 0,
                writable: Ok(()),
                ..
            } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            0,
            "inspect wrote nothing"
        );
    }

    #[test]
    fn inspect_reports_without_creating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        assert_eq!(SqliteStore::inspect(&path).unwrap(), Inspection::Absent);
        assert!(!path.exists());
        let err = SqliteStore::inspect(&dir.path().join("no-such-dir/l.db")).unwrap_err();
        assert!(err.to_string().contains("its directory"), "{err}");
        let mut store = SqliteStore::open_writer(&path).unwrap();
        insert_one(&mut store, "o");
        match SqliteStore::inspect(&path).unwrap() {
            Inspection::Present {
                version: SCHEMA_VERSION,
                rows: 1,
                writable: Ok(()),
                mode: 0o600,
            } => {}
            other => panic!("{other:?}"),
        }
    }

    /// What the writer relies on when it recreates a deleted database.
    #[test]
    fn a_fresh_file_never_replays_the_wal_of_a_deleted_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let mut store = SqliteStore::open_writer(&path).unwrap();
        insert_one(&mut store, "old");
        assert!(!store.replaced());
        // What `rm l.db` leaves: the -wal and -shm of the deleted database.
        std::fs::remove_file(&path).unwrap();
        assert!(store.replaced());
        let wal = sidecar(&path, "-wal");
        let stale = std::fs::read(&wal).unwrap();
        assert!(!stale.is_empty());
        // A copy survives the old connection's close, as it would if another process held it.
        drop(store);
        std::fs::write(&wal, &stale).unwrap();
        let store = SqliteStore::open_writer(&path).unwrap();
        let rows = store.callbacks(&Filter::default()).unwrap();
        assert!(rows.is_empty(), "stale WAL pages replayed: {rows:?}");
    }

    #[test]
    fn prune_deletes_the_oldest_in_bounded_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open_writer(&dir.path().join("l.db")).unwrap();
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let recs: Vec<_> = (0..5u64)
            .map(|i| sample(&format!("o{i}"), base + Duration::from_secs(i)))
            .collect();
        let fields: Vec<_> = recs
            .iter()
            .map(|r| ClickFields::decode(r.content_type.as_deref(), &r.body))
            .collect();
        let ops: Vec<_> = recs
            .iter()
            .zip(&fields)
            .map(|(r, f)| Op::Insert(r, f))
            .collect();
        store.apply(&ops).unwrap();
        let cutoff = unix_micros(base + Duration::from_secs(4));
        let prune = |store: &mut SqliteStore| match store
            .apply(&[Op::Prune {
                before_us: cutoff,
                limit: 3,
            }])
            .unwrap()[..]
        {
            [OpResult::Pruned { rows, .. }] => rows,
            ref other => panic!("{other:?}"),
        };
        assert_eq!(prune(&mut store), 3);
        assert_eq!(prune(&mut store), 1);
        assert_eq!(prune(&mut store), 0);
        let left: Vec<_> = store
            .callbacks(&Filter::default())
            .unwrap()
            .into_iter()
            .map(|r| r.fields.merchant_trans_id.unwrap())
            .collect();
        assert_eq!(left, ["o4"]);
    }

    #[test]
    fn a_guard_file_with_only_bindings_is_pruned_batch_after_batch() {
        // A guard's own file holds no callbacks: its bindings must still say "more are due".
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open_writer(&dir.path().join("l.guard.db")).unwrap();
        for i in 0..4 {
            // time_us 1: long past any cutoff.
            bind_one(&mut store, &binding(&format!("s{i}"), "a", None));
        }
        let prune = |store: &mut SqliteStore| match store
            .apply(&[Op::Prune {
                before_us: 2,
                limit: 3,
            }])
            .unwrap()[..]
        {
            [OpResult::Pruned { rows, more }] => (rows, more),
            ref other => panic!("{other:?}"),
        };
        assert_eq!(prune(&mut store), (0, true), "a whole batch of bindings");
        assert_eq!(prune(&mut store), (0, false), "the last one");
        let left: i64 = store
            .conn
            .query_row("SELECT count(*) FROM bindings", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }

    #[test]
    fn lookups_use_their_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_writer(&dir.path().join("l.db")).unwrap();
        let plan = |sql: &str| -> String {
            let mut stmt = store
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            rows.join("; ")
        };
        let q = |cond: &str| format!("SELECT id FROM callbacks WHERE {cond} ORDER BY time, id");
        for (cond, index) in [
            (
                "merchant_trans_id = 'x' AND +service_id = '1' AND +time >= 0",
                "callbacks_merchant_trans_id",
            ),
            (
                "click_trans_id = '1' AND +time >= 0",
                "callbacks_click_trans_id",
            ),
            (
                "click_trans_id = '1' AND +service_id = '2' AND +time >= 0",
                "callbacks_click_trans_id",
            ),
            ("service_id = '1' AND time >= 0", "callbacks_service_time"),
            ("time >= 0 AND reason IN ('a')", "callbacks_time"),
        ] {
            let p = plan(&q(cond));
            assert!(p.contains(index), "{cond}: {p}");
        }
    }
}
