//! The PostgreSQL store: the same logical schema as SQLite v2 (tables `callbacks`, `bindings`,
//! `completes`; Click's ids as TEXT), in a database every gateway behind a load balancer
//! shares, so the replay guard sees every instance's signatures and `payments` every
//! instance's callbacks.
//!
//! **One runtime for every connection.** tokio-postgres drives each connection with a task
//! that must live as long as the connection. The gateway serves on worker threads, each with
//! a runtime of its own that stops with it, and the ledger's writer is a plain thread; so the
//! pool's connections live on a dedicated thread (`ledger-postgres`) running a current-thread
//! runtime, which ends when the last handle on the store is dropped. The writer and the
//! commands block on it (the [`super::Store`] interface is blocking); the guard's check is a
//! task spawned there whose answer the callback awaits.
//!
//! **The pool** (deadpool-postgres) opens connections on demand, up to [`POOL_SIZE`], each
//! with the URL's connect timeout (5 s when it sets none) and keepalives that notice a dead
//! server within a minute. A connection that failed a statement, or was abandoned by a
//! timeout, is never handed out again: a PostgreSQL restart costs the statements in flight,
//! and the next ones connect anew, with no gateway restart.
//!
//! **The guard** binds with one round trip on a pooled connection in autocommit (a Complete's
//! three statements pipelined), so the binding is committed (durable under PostgreSQL's
//! default `synchronous_commit = on`) when the answer arrives, never queued behind the
//! writer's rows. `INSERT ... ON CONFLICT DO UPDATE`
//! makes a second instance's insert of the same signature wait for the first one's commit,
//! then return the first one's row: two copies cannot both be first.
//!
//! **The writer** commits a round in one transaction, its rows in multi-row `INSERT`s. Binds
//! that ride in a transaction (a [`super::Job::Bind`] submitted to the writer) take their row
//! locks in `(service_id, sign)` order, then their transactions' in
//! `(service_id, click_trans_id)` order, so two instances cannot deadlock.
//!
//! **Migrations** run in one transaction holding an advisory lock, so two gateways starting
//! at once take turns: the second finds the schema current. The version is kept in
//! `click_gateway_schema`.
//!
//! PostgreSQL's TEXT cannot hold a NUL character, which a callback's decoded fields can: it
//! is stored as U+FFFD (the body keeps the exact bytes), so no crafted body can fail a batch.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::sync::oneshot;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::binding::{differing, BindOutcome, Binding, Seen};
use super::record::{micros, unix_micros, ClickFields, Record};
use super::store::{
    Filter, Inspection, Op, OpResult, Stored, COLUMNS, REFUSED_FOR_SIGNATURE, SCHEMA_VERSION,
};
use super::{Done, LedgerError};
use crate::config::postgres::{PgUrl, RootCerts, TlsMode, SYSTEM_ROOTS};

/// Connections one gateway holds at most. A bind is one short round trip, so a handful
/// serves thousands of callbacks a second; several gateways together must stay within the
/// server's `max_connections` (100 by default).
pub const POOL_SIZE: usize = 8;
/// Connections a command (`payments`, `recheck`, `check`) uses.
const COMMAND_POOL_SIZE: usize = 2;
/// How long a caller waits for a free pooled connection, or for a new one to be set up.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// A writer's transaction (a batch of rows) must commit within this; a hung server then
/// costs the batch (counted) instead of stopping the writer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A command's query or a migration.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Rows per `INSERT` statement: 33 parameters each, well within PostgreSQL's 65535, and few
/// distinct statement texts to prepare per connection.
const ROWS_PER_INSERT: usize = 64;
/// The advisory lock migrations hold (the SQLite ledger's application id, "ClKG").
const MIGRATION_LOCK: i64 = 0x436c_4b47;

/// The schema, one migration per version: `MIGRATIONS[n]` takes version `n` to `n + 1`, the
/// same logical schema as SQLite's. Append only; a released migration is never edited.
pub const MIGRATIONS: &[&str] = &[
    // v1: one row per request to a callback path.
    "CREATE TABLE callbacks (
        id                  BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        time                BIGINT NOT NULL,
        request_id          TEXT NOT NULL,
        peer                TEXT NOT NULL,
        client              TEXT NOT NULL,
        path                TEXT NOT NULL,
        content_type        TEXT,
        body                BYTEA NOT NULL,
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
        slot                BIGINT,
        fp                  TEXT,
        generation          BIGINT NOT NULL,
        mode                TEXT NOT NULL,
        backend_status      BIGINT,
        backend_error       TEXT,
        backend_error_note  TEXT,
        backend_prepare_id  TEXT,
        backend_confirm_id  TEXT,
        gateway_us          BIGINT NOT NULL,
        upstream_us         BIGINT,
        total_us            BIGINT NOT NULL
    );
    CREATE INDEX callbacks_merchant_trans_id ON callbacks (merchant_trans_id);
    CREATE INDEX callbacks_click_trans_id ON callbacks (click_trans_id, service_id);
    CREATE INDEX callbacks_service_time ON callbacks (service_id, time);
    CREATE INDEX callbacks_time ON callbacks (time);",
    // v2: the replay guard (see sqlite.rs).
    "CREATE TABLE bindings (
        service_id  TEXT NOT NULL,
        sign        TEXT NOT NULL,
        digest      BYTEA NOT NULL,
        fields      TEXT NOT NULL,
        request_id  TEXT NOT NULL,
        token       TEXT NOT NULL,
        time        BIGINT NOT NULL,
        PRIMARY KEY (service_id, sign)
    );
    CREATE INDEX bindings_time ON bindings (time);
    CREATE TABLE completes (
        service_id      TEXT NOT NULL,
        click_trans_id  TEXT NOT NULL,
        error           TEXT NOT NULL,
        request_id      TEXT NOT NULL,
        token           TEXT NOT NULL,
        time            BIGINT NOT NULL,
        PRIMARY KEY (service_id, click_trans_id)
    );
    CREATE INDEX completes_time ON completes (time);",
];

/// Where the version lives: one row.
const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS click_gateway_schema (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    version     BIGINT NOT NULL,
    migrated_at TIMESTAMPTZ NOT NULL DEFAULT now()
)";

/// Rule 1 in one statement, as in sqlite.rs: a concurrent second insert waits for the first
/// one's commit, then gets its row.
const BIND: &str =
    "INSERT INTO bindings (service_id, sign, digest, fields, request_id, token, time)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (service_id, sign) DO UPDATE SET service_id = EXCLUDED.service_id
    RETURNING digest, fields, token";

/// Rule 2: the first forwarded Complete of a transaction stays.
const COMPLETE: &str =
    "INSERT INTO completes (service_id, click_trans_id, error, request_id, token, time)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (service_id, click_trans_id) DO UPDATE SET service_id = EXCLUDED.service_id
    RETURNING error, token";

const EARLIER_COMPLETE: &str =
    "SELECT error FROM completes WHERE service_id = $1 AND click_trans_id = $2";

const INSERT_COLUMNS: &str = "INSERT INTO callbacks (
    time, request_id, peer, client, path, content_type, body,
    click_trans_id, service_id, click_paydoc_id, merchant_trans_id, merchant_prepare_id,
    amount, action, error, error_note, sign_time,
    verdict, reason, hint, detail, slot, fp, generation, mode,
    backend_status, backend_error, backend_error_note, backend_prepare_id, backend_confirm_id,
    gateway_us, upstream_us, total_us
) VALUES ";
const INSERT_PARAMS: usize = 33;

/// Pruning skips rows another gateway is deleting (`SKIP LOCKED`): it never waits, so it can
/// never deadlock with another instance's pruning or binds.
const PRUNE: [&str; 3] = [
    "DELETE FROM callbacks WHERE id IN
     (SELECT id FROM callbacks WHERE time < $1 ORDER BY time LIMIT $2 FOR UPDATE SKIP LOCKED)",
    "DELETE FROM bindings WHERE (service_id, sign) IN
     (SELECT service_id, sign FROM bindings WHERE time < $1 ORDER BY time LIMIT $2 FOR UPDATE SKIP LOCKED)",
    "DELETE FROM completes WHERE (service_id, click_trans_id) IN
     (SELECT service_id, click_trans_id FROM completes WHERE time < $1 ORDER BY time LIMIT $2 FOR UPDATE SKIP LOCKED)",
];

/// The thread whose runtime drives every connection of one store; it ends once the store is
/// dropped (its connections close with it).
struct PgRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
}

impl PgRuntime {
    fn start() -> Result<PgRuntime, LedgerError> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("ledger-postgres".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stopped.await;
                });
                // The runtime drops here, on its own thread, with the connection tasks.
            })
            .map_err(LedgerError::Spawn)?;
        let handle = handle_rx
            .recv()
            .map_err(|_| LedgerError::Spawn(std::io::Error::other("the thread ended")))?
            .map_err(LedgerError::Spawn)?;
        Ok(PgRuntime {
            handle,
            stop: Some(stop),
        })
    }
}

impl Drop for PgRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A pool of connections to one PostgreSQL database, and the runtime they live on. Shared by
/// the writer's [`PgStore`] and the guard's binds ([`PgShared::bind`]).
pub struct PgShared {
    url: PgUrl,
    // Dropped before the runtime: the connections end, then their thread.
    pool: Pool,
    rt: PgRuntime,
}

impl std::fmt::Debug for PgShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgShared").field("url", &self.url).finish()
    }
}

/// A pooled connection that goes back to the pool only when [`Checked::ok`] says it worked:
/// one that failed, or whose statement was abandoned by a timeout (the future dropped), is
/// closed instead, so a broken or hung connection is never handed out again.
struct Checked(Option<Object>);

impl Checked {
    /// The connection (there until `ok` or the drop take it, both of which consume the guard).
    fn client(&mut self) -> Result<&mut Object, LedgerError> {
        self.0.as_mut().ok_or(LedgerError::Closed)
    }

    fn ok(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Checked {
    fn drop(&mut self) {
        if let Some(obj) = self.0.take() {
            drop(Object::take(obj));
        }
    }
}

impl PgShared {
    /// Starts the runtime thread and a pool of at most `size` connections (none opened yet).
    fn start(url: &PgUrl, size: usize) -> Result<Arc<PgShared>, LedgerError> {
        let setup = |message: String| LedgerError::Postgres {
            at: url.redacted().to_owned(),
            message,
        };
        let config = url.config().map_err(|e| setup(format!("the URL {e}")))?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match tls_config(url).map_err(setup)? {
            None => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
            Some(tls) => Manager::from_config(
                config,
                tokio_postgres_rustls::MakeRustlsConnect::new(tls),
                manager_config,
            ),
        };
        let pool = Pool::builder(manager)
            .max_size(size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .recycle_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| setup(format!("cannot set up the connection pool: {e}")))?;
        Ok(Arc::new(PgShared {
            url: url.clone(),
            pool,
            rt: PgRuntime::start()?,
        }))
    }

    /// The redacted URL.
    pub fn at(&self) -> &str {
        self.url.redacted()
    }

    /// The error with its causes (tokio-postgres says "db error" and puts the server's words
    /// in the cause), on one line.
    fn err(&self, e: &(dyn std::error::Error + 'static)) -> LedgerError {
        let mut message = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            let text = c.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            cause = c.source();
        }
        self.fail(&message)
    }

    fn fail(&self, message: &str) -> LedgerError {
        LedgerError::Postgres {
            at: self.at().to_owned(),
            // One line: a server error's DETAIL and HINT come on lines of their own.
            message: message.replace('\n', "; "),
        }
    }

    async fn connection(&self) -> Result<Checked, LedgerError> {
        self.pool
            .get()
            .await
            .map(|c| Checked(Some(c)))
            .map_err(|e| self.err(&e))
    }

    /// Runs `f` to completion on this store's runtime, for a blocking caller: directly on a
    /// plain thread, through a scoped helper thread when the caller is itself inside a
    /// runtime (opening the ledger as `serve` starts), where blocking on another runtime is
    /// not allowed. At most `within`.
    fn block<T: Send>(
        &self,
        within: Duration,
        f: impl Future<Output = Result<T, LedgerError>> + Send,
    ) -> Result<T, LedgerError> {
        let bounded = async {
            tokio::time::timeout(within, f)
                .await
                .unwrap_or_else(|_| Err(self.fail(&format!("no answer within {within:?}"))))
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return self.rt.handle.block_on(bounded);
        }
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("ledger-postgres-call".into())
                .spawn_scoped(s, || self.rt.handle.block_on(bounded))
                .map_err(LedgerError::Spawn)?
                .join()
                .unwrap_or_else(|_| Err(self.fail("the call panicked")))
        })
    }

    /// The guard's check, on a pooled connection in autocommit: each statement is committed
    /// when its answer arrives. Resolves once committed; dropping the receiver (the guard's
    /// timeout) abandons it, and that connection with it.
    pub fn bind(self: &Arc<Self>, b: Binding) -> oneshot::Receiver<Result<Done, LedgerError>> {
        let (mut tx, rx) = oneshot::channel();
        let shared = self.clone();
        self.rt.handle.spawn(async move {
            let work = async {
                let mut conn = shared.connection().await?;
                let outcome = bind_one(&*conn.client()?, &b)
                    .await
                    .map_err(|e| shared.err(&e))?;
                conn.ok();
                Ok(Done::Bound(outcome))
            };
            let result = tokio::select! {
                _ = tx.closed() => return,
                r = work => r,
            };
            let _ = tx.send(result);
        });
        rx
    }

    /// Brings the schema to [`SCHEMA_VERSION`]; returns the version found and the one left.
    async fn migrate(&self) -> Result<(i64, i64), LedgerError> {
        let mut conn = self.connection().await?;
        let found = migrate(conn.client()?, self.at())
            .await
            .map_err(|e| match e {
                Migration::Pg(e) => self.err(&e),
                Migration::Refused(e) => e,
            })?;
        conn.ok();
        Ok(found)
    }

    async fn version(&self) -> Result<Option<i64>, LedgerError> {
        let mut conn = self.connection().await?;
        let version = schema_version(&*conn.client()?)
            .await
            .map_err(|e| self.err(&e))?;
        conn.ok();
        Ok(version)
    }
}

/// The PostgreSQL variant of [`super::Store`]: the writer's, or a command's.
#[derive(Debug)]
pub struct PgStore {
    shared: Arc<PgShared>,
}

impl PgStore {
    /// Connects and migrates the schema forward (creating it in an empty database); refuses a
    /// newer schema, or tables of the ledger's names that it did not create.
    pub fn open_writer(url: &PgUrl) -> Result<PgStore, LedgerError> {
        let shared = PgShared::start(url, POOL_SIZE)?;
        shared.block(COMMAND_TIMEOUT, shared.migrate())?;
        Ok(PgStore { shared })
    }

    /// Connects for the commands, which read: the schema must be there and current.
    pub fn open_reader(url: &PgUrl) -> Result<PgStore, LedgerError> {
        let shared = PgShared::start(url, COMMAND_POOL_SIZE)?;
        let at = shared.at().to_owned();
        match shared.block(COMMAND_TIMEOUT, shared.version())? {
            None => Err(LedgerError::Missing(at.into())),
            Some(v) if v == SCHEMA_VERSION => Ok(PgStore { shared }),
            Some(v) if v > SCHEMA_VERSION => Err(LedgerError::NewerSchema {
                path: at.into(),
                found: v,
                known: SCHEMA_VERSION,
            }),
            Some(v) => Err(LedgerError::OlderSchema {
                path: at.into(),
                found: v,
                known: SCHEMA_VERSION,
            }),
        }
    }

    /// For `check`: connects and migrates, as `serve` would on start (a shared schema is
    /// better created by the operator's `check` than by whichever gateway starts first), then
    /// reports what it found.
    pub fn inspect(url: &PgUrl) -> Result<Inspection, LedgerError> {
        let shared = PgShared::start(url, 1)?;
        let s = &shared;
        s.block(COMMAND_TIMEOUT, async move {
            let (from, version) = s.migrate().await?;
            let mut conn = s.connection().await?;
            let row = conn
                .client()?
                .query_one(
                    "SELECT (SELECT count(*) FROM callbacks), current_setting('server_version')",
                    &[],
                )
                .await
                .map_err(|e| s.err(&e))?;
            let rows: i64 = row.try_get(0).map_err(|e| s.err(&e))?;
            let server: String = row.try_get(1).map_err(|e| s.err(&e))?;
            conn.ok();
            Ok(Inspection::Shared {
                from,
                version,
                rows,
                server,
            })
        })
    }

    /// What the guard's binds go through.
    pub fn shared(&self) -> Arc<PgShared> {
        self.shared.clone()
    }

    pub fn url(&self) -> &PgUrl {
        &self.shared.url
    }

    pub fn schema_version(&self) -> Result<i64, LedgerError> {
        self.shared
            .block(COMMAND_TIMEOUT, self.shared.version())
            .map(|v| v.unwrap_or(0))
    }

    /// Runs `ops` in one transaction, within [`WRITE_TIMEOUT`].
    pub fn apply(&mut self, ops: &[Op<'_>]) -> Result<Vec<OpResult>, LedgerError> {
        let s = &self.shared;
        s.block(WRITE_TIMEOUT, async move {
            let mut conn = s.connection().await?;
            let results = apply(conn.client()?, ops).await.map_err(|e| s.err(&e))?;
            conn.ok();
            Ok(results)
        })
    }

    pub fn callbacks(&self, f: &Filter) -> Result<Vec<Stored>, LedgerError> {
        let mut conditions = Vec::new();
        let mut args: Vec<&(dyn ToSql + Sync)> = Vec::new();
        for (column, value) in [
            ("merchant_trans_id", &f.merchant_trans_id),
            ("click_trans_id", &f.click_trans_id),
            ("service_id", &f.service_id),
        ] {
            if let Some(v) = value {
                args.push(v);
                conditions.push(format!("{column} = ${}", args.len()));
            }
        }
        args.push(&f.since_us);
        conditions.push(format!("time >= ${}", args.len()));
        self.select(&conditions.join(" AND "), false, &args)
    }

    pub fn refused_signatures(
        &self,
        service_id: Option<&str>,
        since_us: i64,
    ) -> Result<Vec<Stored>, LedgerError> {
        match service_id {
            Some(s) => self.select(
                &format!("service_id = $1 AND time >= $2 AND {REFUSED_FOR_SIGNATURE}"),
                true,
                &[&s, &since_us],
            ),
            None => self.select(
                &format!("time >= $1 AND {REFUSED_FOR_SIGNATURE}"),
                true,
                &[&since_us],
            ),
        }
    }

    fn select(
        &self,
        condition: &str,
        with_body: bool,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Stored>, LedgerError> {
        let body = if with_body { "body" } else { "''::bytea" };
        let sql =
            format!("SELECT {COLUMNS}, {body} FROM callbacks WHERE {condition} ORDER BY time, id");
        let s = &self.shared;
        s.block(COMMAND_TIMEOUT, async move {
            let mut conn = s.connection().await?;
            let rows = conn
                .client()?
                .query(&sql, args)
                .await
                .map_err(|e| s.err(&e))?;
            conn.ok();
            rows.iter()
                .map(stored)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| s.err(&e))
        })
    }
}

/// Why a migration stopped.
enum Migration {
    Pg(tokio_postgres::Error),
    Refused(LedgerError),
}

impl From<tokio_postgres::Error> for Migration {
    fn from(e: tokio_postgres::Error) -> Migration {
        Migration::Pg(e)
    }
}

async fn schema_version(c: &impl GenericClient) -> Result<Option<i64>, tokio_postgres::Error> {
    let exists: bool = c
        .query_one(
            "SELECT to_regclass('click_gateway_schema') IS NOT NULL",
            &[],
        )
        .await?
        .try_get(0)?;
    if !exists {
        return Ok(None);
    }
    match c
        .query_opt("SELECT version FROM click_gateway_schema WHERE id = 1", &[])
        .await?
    {
        Some(row) => Ok(Some(row.try_get(0)?)),
        None => Ok(Some(0)),
    }
}

/// One transaction, serialised between gateways by an advisory lock held until it ends: the
/// version is read, the missing migrations run, the version is written.
async fn migrate(conn: &mut Object, at: &str) -> Result<(i64, i64), Migration> {
    let tx = conn.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let found = schema_version(&tx).await?.unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(Migration::Refused(LedgerError::NewerSchema {
            path: at.into(),
            found,
            known: SCHEMA_VERSION,
        }));
    }
    if found == 0 {
        let foreign: bool = tx
            .query_one(
                "SELECT to_regclass('callbacks') IS NOT NULL OR to_regclass('bindings') IS NOT NULL
                     OR to_regclass('completes') IS NOT NULL",
                &[],
            )
            .await?
            .try_get(0)?;
        if foreign {
            return Err(Migration::Refused(LedgerError::ForeignTables {
                at: at.to_owned(),
            }));
        }
    }
    let from = usize::try_from(found).unwrap_or(0);
    for sql in MIGRATIONS.iter().skip(from) {
        tx.batch_execute(sql).await?;
    }
    if found < SCHEMA_VERSION {
        tx.batch_execute(SCHEMA_TABLE).await?;
        tx.execute(
            "INSERT INTO click_gateway_schema (id, version) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, migrated_at = now()",
            &[&SCHEMA_VERSION],
        )
        .await?;
    }
    tx.commit().await?;
    Ok((found, SCHEMA_VERSION))
}

/// Rule 1's statement for one binding.
async fn bind_signature(
    c: &impl GenericClient,
    b: &Binding,
) -> Result<Seen, tokio_postgres::Error> {
    let stmt = c.prepare_cached(BIND).await?;
    let row = c
        .query_one(
            &stmt,
            &[
                &text(&b.service_id),
                &text(&b.sign),
                &&b.digest[..],
                &text(&b.fields),
                &text(&b.request_id),
                &text(&b.token),
                &b.time_us,
            ],
        )
        .await?;
    seen(&row, b)
}

/// Rule 2's statement for a Complete, given what rule 1 found (as sqlite.rs: a message that
/// rule 1 refuses does not become its transaction's first Complete).
async fn bind_complete(
    c: &impl GenericClient,
    b: &Binding,
    signature: &Seen,
) -> Result<Option<String>, tokio_postgres::Error> {
    let Some(claim) = &b.complete else {
        return Ok(None);
    };
    if b.enforce_signature && matches!(signature, Seen::Changed(_)) {
        let stmt = c.prepare_cached(EARLIER_COMPLETE).await?;
        return match c
            .query_opt(&stmt, &[&text(&b.service_id), &text(&claim.click_trans_id)])
            .await?
        {
            Some(row) => Ok(Some(row.try_get(0)?)),
            None => Ok(None),
        };
    }
    let stmt = c.prepare_cached(COMPLETE).await?;
    let row = c
        .query_one(
            &stmt,
            &[
                &text(&b.service_id),
                &text(&claim.click_trans_id),
                &text(&claim.error),
                &text(&b.request_id),
                &text(&b.token),
                &b.time_us,
            ],
        )
        .await?;
    let error: String = row.try_get(0)?;
    let token: String = row.try_get(1)?;
    Ok((token != b.token).then_some(error))
}

/// Rule 2's claim in autocommit, for [`bind_one`]: run right after rule 1's statement committed,
/// it decides from the binding row itself whether this message may become its transaction's
/// first Complete (not when rule 1 is enforced and the signature was bound to other fields).
const CLAIM_COMPLETE: &str =
    "INSERT INTO completes (service_id, click_trans_id, error, request_id, token, time)
    SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::bigint
    WHERE NOT $7::boolean OR EXISTS (
        SELECT 1 FROM bindings
        WHERE service_id = $1::text AND sign = $8::text AND (token = $5::text OR digest = $9::bytea))
    ON CONFLICT (service_id, click_trans_id) DO NOTHING";

/// The transaction's first forwarded Complete, after the claim.
const FIRST_COMPLETE: &str =
    "SELECT error, token FROM completes WHERE service_id = $1 AND click_trans_id = $2";

/// The guard's check on a connection in autocommit, in one round trip: a Prepare is rule 1's
/// statement alone; a Complete's three statements (rule 1's, the claim, the read) are sent
/// together (pipelined) and run in order, each committed before the next starts, so the
/// outcome is the one [`bind_signature`] then [`bind_complete`] give.
async fn bind_one(
    c: &impl GenericClient,
    b: &Binding,
) -> Result<BindOutcome, tokio_postgres::Error> {
    let Some(claim) = &b.complete else {
        return Ok(BindOutcome {
            signature: bind_signature(c, b).await?,
            earlier_complete_error: None,
        });
    };
    let (bind, claim_stmt, first) = tokio::try_join!(
        c.prepare_cached(BIND),
        c.prepare_cached(CLAIM_COMPLETE),
        c.prepare_cached(FIRST_COMPLETE)
    )?;
    let (service_id, sign, fields) = (text(&b.service_id), text(&b.sign), text(&b.fields));
    let (request_id, token) = (text(&b.request_id), text(&b.token));
    let (trans, error) = (text(&claim.click_trans_id), text(&claim.error));
    let digest = &b.digest[..];
    let bind_args: [&(dyn ToSql + Sync); 7] = [
        &service_id,
        &sign,
        &digest,
        &fields,
        &request_id,
        &token,
        &b.time_us,
    ];
    let claim_args: [&(dyn ToSql + Sync); 9] = [
        &service_id,
        &trans,
        &error,
        &request_id,
        &token,
        &b.time_us,
        &b.enforce_signature,
        &sign,
        &digest,
    ];
    let first_args: [&(dyn ToSql + Sync); 2] = [&service_id, &trans];
    let (bound, _, first) = tokio::try_join!(
        c.query_one(&bind, &bind_args),
        c.execute(&claim_stmt, &claim_args),
        c.query_opt(&first, &first_args)
    )?;
    let signature = seen(&bound, b)?;
    let earlier_complete_error = match first {
        Some(row) => {
            let error: String = row.try_get(0)?;
            let first_token: String = row.try_get(1)?;
            (first_token != token).then_some(error)
        }
        None => None,
    };
    Ok(BindOutcome {
        signature,
        earlier_complete_error,
    })
}

/// Rule 1's verdict from the row [`BIND`] returned.
fn seen(row: &Row, b: &Binding) -> Result<Seen, tokio_postgres::Error> {
    let digest: Vec<u8> = row.try_get(0)?;
    let fields: String = row.try_get(1)?;
    let token: String = row.try_get(2)?;
    Ok(if token == b.token {
        Seen::First
    } else if digest == b.digest {
        Seen::Same
    } else {
        Seen::Changed(differing(&fields, &b.fields))
    })
}

/// One writer round in one transaction. Rows go in multi-row `INSERT`s (their ids come back
/// in `VALUES` order, which PostgreSQL keeps for a plain `INSERT ... RETURNING`; Django's
/// `bulk_create` relies on it too).
async fn apply(conn: &mut Object, ops: &[Op<'_>]) -> Result<Vec<OpResult>, tokio_postgres::Error> {
    let tx = conn.transaction().await?;
    let mut results: Vec<Option<OpResult>> = vec![None; ops.len()];
    // Inserts, in runs of consecutive ones.
    let mut run: Vec<(usize, &Record, &ClickFields)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Insert(rec, fields) => {
                run.push((i, rec, fields));
                if run.len() == ROWS_PER_INSERT {
                    insert_rows(&tx, &run, &mut results).await?;
                    run.clear();
                }
            }
            Op::Prune { before_us, limit } => {
                let limit = i64::from(*limit);
                let mut rows = 0;
                let mut more = false;
                for (n, sql) in PRUNE.iter().enumerate() {
                    let stmt = tx.prepare_cached(sql).await?;
                    let deleted = tx.execute(&stmt, &[before_us, &limit]).await?;
                    more |= i64::try_from(deleted).is_ok_and(|d| d >= limit);
                    // The guard's rows age out with the ledger's; the metric counts callbacks.
                    if n == 0 {
                        rows = deleted;
                    }
                }
                results[i] = Some(OpResult::Pruned { rows, more });
            }
            Op::Rows(rows) => {
                // A writer batch: the same multi-row statements, ids not reported.
                let batch: Vec<(usize, &Record, &ClickFields)> = rows
                    .iter()
                    .enumerate()
                    .map(|(j, (rec, fields))| (j, *rec, *fields))
                    .collect();
                let mut ids = vec![None; batch.len()];
                for chunk in batch.chunks(ROWS_PER_INSERT) {
                    insert_rows(&tx, chunk, &mut ids).await?;
                }
                results[i] = Some(OpResult::Rows(rows.len()));
            }
            Op::Bind(_) => {}
        }
    }
    if !run.is_empty() {
        insert_rows(&tx, &run, &mut results).await?;
    }
    // Binds: every signature's row lock in one order, then every transaction's.
    let mut binds: Vec<(usize, &Binding)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match op {
            Op::Bind(b) => Some((i, *b)),
            _ => None,
        })
        .collect();
    binds.sort_by(|a, b| (&a.1.service_id, &a.1.sign).cmp(&(&b.1.service_id, &b.1.sign)));
    let mut seen = Vec::with_capacity(binds.len());
    for (i, b) in &binds {
        seen.push((*i, *b, bind_signature(&tx, b).await?));
    }
    let key = |b: &Binding| {
        (
            b.service_id.clone(),
            b.complete
                .as_ref()
                .map(|c| c.click_trans_id.clone())
                .unwrap_or_default(),
        )
    };
    seen.sort_by_key(|(_, b, _)| key(b));
    for (i, b, signature) in seen {
        let earlier_complete_error = bind_complete(&tx, b, &signature).await?;
        results[i] = Some(OpResult::Bound(BindOutcome {
            signature,
            earlier_complete_error,
        }));
    }
    tx.commit().await?;
    Ok(results
        .into_iter()
        .map(|r| {
            r.unwrap_or(OpResult::Pruned {
                rows: 0,
                more: false,
            })
        })
        .collect())
}

type Param = Box<dyn ToSql + Sync + Send>;

async fn insert_rows(
    tx: &deadpool_postgres::Transaction<'_>,
    run: &[(usize, &Record, &ClickFields)],
    results: &mut [Option<OpResult>],
) -> Result<(), tokio_postgres::Error> {
    let mut sql = String::from(INSERT_COLUMNS);
    for r in 0..run.len() {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..INSERT_PARAMS {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", r * INSERT_PARAMS + c + 1));
        }
        sql.push(')');
    }
    sql.push_str(" RETURNING id");
    let params: Vec<Param> = run
        .iter()
        .flat_map(|(_, rec, fields)| row_params(rec, fields))
        .collect();
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let stmt = tx.prepare_cached(&sql).await?;
    let rows = tx.query(&stmt, &refs).await?;
    for ((i, _, _), row) in run.iter().zip(&rows) {
        results[*i] = Some(OpResult::Inserted {
            id: row.try_get(0)?,
        });
    }
    Ok(())
}

/// PostgreSQL's TEXT cannot hold NUL, which a form-decoded field can (`%00`).
fn text(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

fn opt_text(s: Option<&str>) -> Param {
    Box::new(s.map(text))
}

fn row_params(rec: &Record, f: &ClickFields) -> Vec<Param> {
    let answer = rec.backend.as_ref().and_then(|b| b.answer.as_ref());
    let answer_field = |get: fn(&super::BackendAnswer) -> &Option<String>| {
        opt_text(answer.and_then(|a| get(a).as_deref()))
    };
    vec![
        Box::new(unix_micros(rec.time)),
        Box::new(text(&rec.request_id)),
        Box::new(rec.peer.to_string()),
        Box::new(rec.client.to_string()),
        Box::new(text(&rec.path)),
        opt_text(rec.content_type.as_deref()),
        Box::new(rec.body.to_vec()),
        opt_text(f.click_trans_id.as_deref()),
        opt_text(f.service_id.as_deref()),
        opt_text(f.click_paydoc_id.as_deref()),
        opt_text(f.merchant_trans_id.as_deref()),
        opt_text(f.merchant_prepare_id.as_deref()),
        opt_text(f.amount.as_deref()),
        opt_text(f.action.as_deref()),
        opt_text(f.error.as_deref()),
        opt_text(f.error_note.as_deref()),
        opt_text(f.sign_time.as_deref()),
        Box::new(rec.verdict.as_str().to_owned()),
        opt_text(rec.reason),
        opt_text(rec.hint),
        opt_text(rec.detail.as_deref()),
        Box::new(
            rec.verified
                .map(|v| i64::try_from(v.slot).unwrap_or(i64::MAX)),
        ),
        opt_text(rec.verified.as_ref().map(|v| v.fingerprint.as_str())),
        Box::new(i64::try_from(rec.generation).unwrap_or(i64::MAX)),
        Box::new(rec.mode.as_str().to_owned()),
        Box::new(rec.backend.as_ref().map(|b| i64::from(b.status))),
        answer_field(|a| &a.error),
        answer_field(|a| &a.error_note),
        answer_field(|a| &a.merchant_prepare_id),
        answer_field(|a| &a.merchant_confirm_id),
        Box::new(micros(rec.timings.gateway)),
        Box::new(rec.timings.upstream.map(micros)),
        Box::new(micros(rec.timings.total)),
    ]
}

fn stored(r: &Row) -> Result<Stored, tokio_postgres::Error> {
    Ok(Stored {
        id: r.try_get(0)?,
        time_us: r.try_get(1)?,
        request_id: r.try_get(2)?,
        peer: r.try_get(3)?,
        client: r.try_get(4)?,
        path: r.try_get(5)?,
        content_type: r.try_get(6)?,
        fields: ClickFields {
            click_trans_id: r.try_get(7)?,
            service_id: r.try_get(8)?,
            click_paydoc_id: r.try_get(9)?,
            merchant_trans_id: r.try_get(10)?,
            merchant_prepare_id: r.try_get(11)?,
            amount: r.try_get(12)?,
            action: r.try_get(13)?,
            error: r.try_get(14)?,
            error_note: r.try_get(15)?,
            sign_time: r.try_get(16)?,
        },
        verdict: r.try_get(17)?,
        reason: r.try_get(18)?,
        hint: r.try_get(19)?,
        detail: r.try_get(20)?,
        slot: r.try_get(21)?,
        fp: r.try_get(22)?,
        generation: r.try_get(23)?,
        mode: r.try_get(24)?,
        backend_status: r.try_get(25)?,
        backend_error: r.try_get(26)?,
        backend_error_note: r.try_get(27)?,
        backend_prepare_id: r.try_get(28)?,
        backend_confirm_id: r.try_get(29)?,
        gateway_us: r.try_get(30)?,
        upstream_us: r.try_get(31)?,
        total_us: r.try_get(32)?,
        body: r.try_get(33)?,
    })
}

/// The rustls configuration the URL asks for, `None` for a plain connection. libpq's meaning
/// of each `sslmode`: `require` (and `prefer`) encrypt but, without `sslrootcert`, take any
/// certificate (an active attacker on the path can read the traffic); with `sslrootcert` they
/// check the chain as `verify-ca` does; `verify-full` also checks the certificate is for the
/// host, the one that authenticates the server.
pub fn tls_config(url: &PgUrl) -> Result<Option<rustls::ClientConfig>, String> {
    if url.tls() == TlsMode::Disable {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match url.roots() {
        None => None,
        Some(roots) => Some(Arc::new(root_store(roots)?)),
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (url.tls(), roots) {
        (TlsMode::VerifyFull, Some(roots)) => {
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("sslrootcert: {e}"))?
        }
        (_, Some(roots)) => Arc::new(ChainOnly(
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("sslrootcert: {e}"))?,
        )),
        (_, None) => Arc::new(EncryptOnly(provider.clone())),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(config))
}

fn root_store(roots: &RootCerts) -> Result<RootCertStore, String> {
    let path = match roots {
        RootCerts::File(p) => p.as_path(),
        RootCerts::System => std::path::Path::new(SYSTEM_ROOTS),
    };
    let mut store = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
        store
            .add(cert)
            .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
    }
    if store.is_empty() {
        return Err(format!(
            "sslrootcert {}: no certificate in it",
            path.display()
        ));
    }
    Ok(store)
}

/// `sslmode=require` without `sslrootcert`: any certificate, as libpq; the handshake's own
/// signatures are still checked, so the session is with whoever holds the certificate's key.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to `sslrootcert`, for whatever host name.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_require_builds_a_rustls_connector_and_disable_none() {
        let plain = PgUrl::parse("postgres://gw:pw@127.0.0.1/ledger").unwrap();
        assert!(tls_config(&plain).unwrap().is_none());
        let off = PgUrl::parse("postgres://gw:pw@127.0.0.1/ledger?sslmode=disable").unwrap();
        assert!(tls_config(&off).unwrap().is_none());
        let tls = PgUrl::parse("postgres://gw:pw@127.0.0.1/ledger?sslmode=require").unwrap();
        let config = tls_config(&tls).unwrap().expect("a TLS configuration");
        // The ring provider, nothing else: its suites, in its order.
        let suites =
            |p: &CryptoProvider| -> Vec<_> { p.cipher_suites.iter().map(|s| s.suite()).collect() };
        assert_eq!(
            suites(config.crypto_provider()),
            suites(&rustls::crypto::ring::default_provider())
        );
        // And the pool over it builds.
        let shared = PgShared::start(&tls, 1).unwrap();
        assert_eq!(shared.at(), "postgres://gw@127.0.0.1:5432/ledger");
    }

    #[test]
    fn verify_full_needs_a_readable_root_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.pem");
        let url = PgUrl::parse(&format!(
            "postgres://h/db?sslmode=verify-full&sslrootcert={}",
            missing.display()
        ))
        .unwrap();
        let e = tls_config(&url).unwrap_err();
        assert!(e.contains("sslrootcert"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let url = PgUrl::parse(&format!(
            "postgres://h/db?sslmode=verify-full&sslrootcert={}",
            empty.display()
        ))
        .unwrap();
        assert!(tls_config(&url).unwrap_err().contains("no certificate"));
    }

    #[test]
    fn nul_characters_become_replacement_characters() {
        assert_eq!(text("a\0b"), "a\u{FFFD}b");
    }
}
