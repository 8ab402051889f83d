//! Configuration: `gateway.toml` through figment (TOML file, then `CLICK_GATEWAY_<SECTION>__<KEY>`
//! environment overrides), and the secret keys through [`keys`], which never lets figment
//! re-type a secret.
//!
//! [`load`] is the one way configuration is read: `serve`, `check` and a reload all call it,
//! so what `check` accepts is exactly what the gateway will run with. It collects every problem
//! it can find instead of stopping at the first, the way `nginx -t` reports.

pub mod cidr;
pub mod dotenv;
pub mod duration;
pub mod environment;
pub mod keys;
pub mod postgres;
pub mod problem;
pub mod size;
pub mod tls;
pub mod trust;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use http::uri::{Authority, Uri};
use serde::Deserialize;

use crate::click::KeySet;
pub use duration::Span;
pub use environment::Environment;
pub use problem::Problem;
pub use size::ByteSize;

/// Prefix of the environment variables that override `gateway.toml` settings.
pub const ENV_OVERRIDE_PREFIX: &str = "CLICK_GATEWAY_";

/// Everything `gateway.toml` sets. Unknown settings are errors, so a typo cannot silently
/// leave a default in place.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub server: ServerSettings,
    pub upstream: UpstreamSettings,
    #[serde(default)]
    pub click: ClickSettings,
    #[serde(default)]
    pub admin: AdminSettings,
    /// Absent: no attestation (the backend trusts `X-Click-Signature-Verified` alone).
    #[serde(default)]
    pub trust: Option<TrustSettings>,
    #[serde(default)]
    pub ledger: LedgerSettings,
    #[serde(default)]
    pub guard: GuardSettings,
}

/// `[guard]`: one signature, one message (see [`crate::guard`]). Reloadable, but for `window`
/// (the index is built at start).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardSettings {
    /// Rule 1, a signature bound to the first message it came with. Absent: `enforce` when a
    /// ledger is configured (the guard keeps its bindings there), `off` otherwise.
    pub mode: Option<GuardMode>,
    /// Rule 2, a Complete contradicting an earlier forwarded one. Absent: `shadow` with a
    /// ledger, `off` without.
    pub transaction_mode: Option<GuardMode>,
    /// When the store cannot be reached: `refuse` callbacks with a plain 503 (Click retries
    /// later), or `allow` them unguarded.
    pub on_store_error: StoreErrorPolicy,
    /// How long a callback waits for its record (and the guard's answer) before
    /// `on_store_error` applies.
    pub timeout: Span,
    /// How long the guard remembers a signature: at least this (its index keeps at most half
    /// again as long). A signature older is bound anew, as if first: enforce
    /// `click.max_sign_age` below the window to refuse changed replays of old callbacks. At
    /// most `ledger.retention` (the index is rebuilt from the ledger's rows at start). Absent:
    /// 30 days, or the retention when that is shorter ([`GuardSettings::window`]).
    pub window: Option<Span>,
}

impl GuardSettings {
    /// The window in force, given `ledger.retention`.
    pub fn window(&self, retention: Span) -> std::time::Duration {
        self.window
            .map_or(DEFAULT_GUARD_WINDOW.min(retention.0), |w| w.0)
    }
}

/// `guard.window` when unset (and `ledger.retention` is longer).
const DEFAULT_GUARD_WINDOW: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

impl Default for GuardSettings {
    fn default() -> Self {
        GuardSettings {
            mode: None,
            transaction_mode: None,
            on_store_error: StoreErrorPolicy::Refuse,
            timeout: Span::secs(2),
            window: None,
        }
    }
}

/// What a guard rule does with a callback it finds wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardMode {
    Enforce,
    Shadow,
    Off,
}

/// `ledger.synchronous`: what a commit promises (see [`crate::ledger::sqlite`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Committed rows survive a process crash (the operating system has them); a power loss
    /// may lose the commits since the last checkpoint.
    #[default]
    Normal,
    /// Every commit is synced to the disk: committed rows survive a power loss too.
    Full,
}

impl Synchronous {
    /// The SQLite `PRAGMA synchronous` value.
    pub fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// `guard.on_store_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreErrorPolicy {
    Refuse,
    Allow,
}

/// `[trust]`: the HMAC attestation of verified callbacks to the backend (see [`crate::trust`]).
/// Reloadable: the secret file is re-read on SIGHUP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustSettings {
    /// One secret per line, shared with the backend; the first signs. Relative paths are
    /// resolved against the directory of `gateway.toml`.
    pub secret_file: PathBuf,
}

/// The callback ledger (`[ledger]`): every request to a callback path, kept in an embedded
/// SQLite database, or in a PostgreSQL database shared by several gateways, for `payments` and
/// `recheck`. Not reloadable: the writer owns the store.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerSettings {
    /// The SQLite file (relative paths are resolved against the directory of `gateway.toml`),
    /// or a `postgres://` / `postgresql://` URL (see [`postgres::PgUrl`]). Absent: no ledger.
    /// A URL may carry a password: it is shown only redacted ([`LedgerSettings::shown`]).
    pub database: Option<PathBuf>,
    /// How long rows are kept; older ones are pruned in small batches by the writer.
    pub retention: Span,
    /// Rows waiting for the writer at most; beyond, a row is dropped (and counted) rather than
    /// delaying a callback.
    pub queue: usize,
    /// Refused callbacks recorded per second from one client address (a burst of ten seconds'
    /// worth is recorded whole); the rest are counted, not recorded. Verified and forwarded
    /// callbacks are always recorded. 0: no refused callback is recorded.
    pub refused_per_second: u32,
    /// When the ledger's rows take this much, refused callbacks are no longer recorded and
    /// the oldest refused rows are pruned first: a flood of forged callbacks cannot grow the
    /// ledger without bound, and verified rows always find room.
    pub max_size: ByteSize,
    /// The same, when the ledger's filesystem has less than this free.
    pub min_free: ByteSize,
    /// What a commit promises (SQLite): `normal`, a process crash loses nothing committed;
    /// `full`, a power loss loses nothing committed either.
    pub synchronous: Synchronous,
}

/// By hand: `database` may be a URL with a password in it, and settings are printed in
/// places (a test's failure, a debug line) where nobody thinks of that.
impl fmt::Debug for LedgerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LedgerSettings")
            .field("database", &self.shown())
            .field("retention", &self.retention)
            .field("queue", &self.queue)
            .field("refused_per_second", &self.refused_per_second)
            .field("max_size", &self.max_size)
            .field("min_free", &self.min_free)
            .field("synchronous", &self.synchronous)
            .finish()
    }
}

impl Default for LedgerSettings {
    fn default() -> Self {
        LedgerSettings {
            database: None,
            retention: Span::secs(90 * 86_400),
            queue: 4096,
            refused_per_second: 50,
            max_size: ByteSize::gib(4),
            min_free: ByteSize::gib(1),
            synchronous: Synchronous::Normal,
        }
    }
}

impl LedgerSettings {
    /// Whether `database` names a PostgreSQL store.
    pub fn is_postgres(&self) -> bool {
        self.database
            .as_deref()
            .is_some_and(postgres::is_postgres_url)
    }

    /// The PostgreSQL URL, read, when `database` is one (`Err` says what is wrong with it,
    /// never repeating it).
    pub fn postgres(&self) -> Option<Result<postgres::PgUrl, String>> {
        let db = self
            .database
            .as_deref()
            .filter(|p| postgres::is_postgres_url(p))?;
        Some(postgres::PgUrl::parse(&db.to_string_lossy()))
    }

    /// `database` as it may be shown: the path, or the URL redacted to
    /// `postgres://user@host:port/db`; `None` without a ledger.
    pub fn shown(&self) -> Option<String> {
        let db = self.database.as_deref()?;
        Some(match self.postgres() {
            Some(Ok(url)) => url.redacted().to_owned(),
            Some(Err(_)) => "postgres://(a URL that does not parse; not shown)".to_owned(),
            None => db.display().to_string(),
        })
    }
}

/// The admin listener: `/live`, `/ready`, `/metrics`. Not reloadable.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    pub enabled: bool,
    /// Loopback unless `allow_remote` says otherwise: metrics name services and volumes.
    pub listen: SocketAddr,
    pub allow_remote: bool,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
            allow_remote: false,
        }
    }
}

/// What a failed check does: refuse the callback, or only log and count it and forward anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Shadow,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Plain HTTP listener. At least one of `listen` and `tls_listen` is required.
    pub listen: Option<SocketAddr>,
    /// HTTPS listener (HTTP/2 and HTTP/1.1 by ALPN); needs `tls_cert` and `tls_key`.
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain, leaf first (e.g. Let's Encrypt's `fullchain.pem`). Reloaded on
    /// SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Reloaded on SIGHUP.
    pub tls_key: Option<PathBuf>,
    /// Time for a TLS handshake to complete, from accept (waiting for a handshake slot
    /// included).
    pub tls_handshake_timeout: Span,
    /// TLS handshakes in progress at once; more wait for a slot within their deadline.
    pub max_tls_handshakes: usize,
    /// Time allowed for a request's headers to arrive: the first request's from accept (or
    /// from the end of the TLS handshake), later ones from the end of the previous response.
    pub header_read_timeout: Span,
    /// Time allowed for a request body to arrive once its headers are in.
    pub body_read_timeout: Span,
    /// A connection with no request in flight is closed after this long (HTTP/2 gets GOAWAY;
    /// an idle HTTP/1 connection already ends at `header_read_timeout`).
    pub idle_timeout: Span,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    pub drain_timeout: Span,
    /// Worker threads serving connections; default: one per CPU.
    pub workers: Option<usize>,
    /// The `listen(2)` backlog: connections the kernel completes and queues before the gateway
    /// accepts them (Linux caps it at `net.core.somaxconn`). HAProxy's rule: as many as
    /// `max_connections`, so a burst of new clients waits in the queue instead of having its
    /// SYNs dropped (a dropped SYN costs the client a 1 s retransmission, then 3 s).
    pub listen_backlog: u32,
    /// Open client connections at most. A connection accepted at the cap makes room by closing
    /// an idle one (the oldest first), else one still waiting for its request (see
    /// [`crate::server::pressure`]); with nothing to close yet it is still taken up to a
    /// sixteenth above the cap, and beyond that closed itself, at once.
    pub max_connections: usize,
    /// Open connections one client address may hold (IPv6: one /64); beyond, a new one is
    /// closed at once. Peers in `trusted_proxies` are exempt: the edge has its own limits,
    /// and every client behind it shares its address.
    pub max_connections_per_address: usize,
    /// HTTP/2 streams one client address may have in flight across its connections; beyond,
    /// a new stream is answered 503 at once. Trusted proxies are exempt.
    pub http2_max_streams_per_address: usize,
    /// Under pressure (open connections at 90 % of `max_connections`, until they fall below
    /// 80 %), the time a connection may wait for a request head or sit idle shrinks to this
    /// (Envoy's overload manager, `reduce_timeouts`).
    pub pressure_timeout: Span,
    /// Largest request head (request line and headers) accepted; larger gets 431.
    pub max_header_bytes: ByteSize,
    /// Most header fields in a request; more gets 431.
    pub max_headers: usize,
    /// Largest request body forwarded on non-callback paths; larger gets 413 before the
    /// backend is contacted. Callback bodies are capped at 16 KiB regardless.
    pub max_body: ByteSize,
    /// Memory for non-callback request bodies being buffered, across all connections; a body
    /// that cannot get its share within `body_read_timeout` is answered 503.
    pub body_buffer_memory: ByteSize,
    /// What the non-callback bodies of one HTTP/2 connection may reserve together, so one
    /// connection's streams cannot take the whole `body_buffer_memory` (an HTTP/1 connection
    /// reads one body at a time anyway).
    pub connection_body_memory: ByteSize,
    /// Memory for callback bodies, apart from `body_buffer_memory`: no upload, however many or
    /// slow, makes a callback wait for buffer memory.
    pub callback_body_memory: ByteSize,
    /// Streams an HTTP/2 client may have open at once on one connection (hyper's default is
    /// 200; every stream can hold a body reservation and a backend connection).
    pub http2_max_concurrent_streams: u32,
    /// A client that accepts no response bytes for this long (nginx's `send_timeout`: the time
    /// between two successful writes; on HTTP/2 also a stream whose flow-control window stays
    /// shut) is disconnected, and its backend connection released.
    pub send_timeout: Span,
    /// Peers whose `X-Forwarded-*`/`Forwarded` headers are passed on (a TLS edge in front of
    /// the gateway). Everyone else's are replaced.
    pub trusted_proxies: Vec<cidr::Cidr>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: None,
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_handshake_timeout: Span::secs(10),
            max_tls_handshakes: 256,
            header_read_timeout: Span::secs(10),
            body_read_timeout: Span::secs(10),
            idle_timeout: Span::secs(60),
            drain_timeout: Span::secs(30),
            workers: None,
            listen_backlog: 4096,
            max_connections: 4096,
            max_connections_per_address: 256,
            http2_max_streams_per_address: 256,
            pressure_timeout: Span::secs(2),
            max_header_bytes: ByteSize::kib(16),
            max_headers: 100,
            max_body: ByteSize::mib(1),
            body_buffer_memory: ByteSize::mib(64),
            connection_body_memory: ByteSize::mib(2),
            callback_body_memory: ByteSize::mib(16),
            http2_max_concurrent_streams: 32,
            send_timeout: Span::secs(30),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    /// The backend, `http://host:port` (no path: requests keep their own).
    pub url: UpstreamUrl,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Span,
    /// Time from sending a request until the backend's response headers arrive.
    #[serde(default = "default_response_timeout")]
    pub response_timeout: Span,
    /// Idle pooled connections are closed after this; keep it below the backend's keep-alive
    /// (gunicorn's `keepalive`, 2 s by default) so the backend never closes one under us.
    #[serde(default = "default_pool_idle_timeout")]
    pub pool_idle_timeout: Span,
    /// Idle connections to the backend kept by each worker (so up to `workers` times this in
    /// all); 0 disables pooling (right for gunicorn sync workers, which close every connection
    /// anyway).
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle: usize,
    /// Open connections to the backend at most, across all workers (idle pooled ones count).
    /// Beyond it a request waits for one within `response_timeout`, then gets 503.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Of `max_connections`, how many only callbacks may use: a flood of slow API requests can
    /// take every other backend connection and still leave a callback its own.
    #[serde(default = "default_callback_connections")]
    pub callback_connections: usize,
}

fn default_connect_timeout() -> Span {
    Span::secs(2)
}
fn default_response_timeout() -> Span {
    Span::secs(30)
}
fn default_pool_idle_timeout() -> Span {
    Span::secs(1)
}
fn default_pool_max_idle() -> usize {
    32
}
fn default_max_connections() -> usize {
    256
}
fn default_callback_connections() -> usize {
    16
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickSettings {
    /// Request paths (percent-decoded, exact match) whose POSTs are Click callbacks. Either
    /// action may arrive on any of them.
    pub paths: Vec<String>,
    /// TOML file of `[services.<id>] secret_keys = [...]`. Relative paths are resolved against
    /// the directory of `gateway.toml`.
    pub keys_file: Option<PathBuf>,
    /// The backend's dotenv file, read for `CLICK_SERVICE_<id>_SECRET_KEY` lines.
    pub env_file: Option<PathBuf>,
    /// `enforce` refuses bad callbacks; `shadow` logs and counts them and forwards them anyway.
    pub mode: Mode,
    /// Per-service override of `mode`, by service id: `{ "12345" = "shadow" }`.
    pub service_modes: std::collections::BTreeMap<String, Mode>,
    /// How far `sign_time` may be from the gateway's clock; absent: no check.
    pub max_sign_age: Option<Span>,
    /// What a `sign_time` outside `max_sign_age` does (`shadow` by default: the zone of
    /// Click's `sign_time` is undocumented, so measure first).
    pub sign_age_mode: Mode,
    /// The zone `sign_time` is read in, `+05:00` (Tashkent) by default.
    pub sign_time_zone: UtcOffset,
}

impl Default for ClickSettings {
    fn default() -> Self {
        ClickSettings {
            paths: vec!["/click/prepare/".into(), "/click/complete/".into()],
            keys_file: None,
            env_file: None,
            mode: Mode::Enforce,
            service_modes: Default::default(),
            max_sign_age: None,
            sign_age_mode: Mode::Shadow,
            sign_time_zone: UtcOffset(5 * 3600),
        }
    }
}

/// A fixed offset from UTC, written `+05:00`, `-03:30` or `UTC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct UtcOffset(pub i32);

impl TryFrom<String> for UtcOffset {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text == "UTC" || text == "Z" {
            return Ok(UtcOffset(0));
        }
        let bad = || format!("{text:?} is not an offset like +05:00");
        let (sign, rest) = match text.as_bytes().first() {
            Some(b'+') => (1, &text[1..]),
            Some(b'-') => (-1, &text[1..]),
            _ => return Err(bad()),
        };
        let (h, m) = rest.split_once(':').ok_or_else(bad)?;
        let digits = |t: &str| t.len() == 2 && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(h) || !digits(m) {
            return Err(bad());
        }
        let h: i32 = h.parse().map_err(|_| bad())?;
        let m: i32 = m.parse().map_err(|_| bad())?;
        if !(0..=14).contains(&h) || !(0..60).contains(&m) {
            return Err(bad());
        }
        Ok(UtcOffset(sign * (h * 3600 + m * 60)))
    }
}

/// The backend's address: an `http://` URL with nothing after the authority, or
/// `unix:/absolute/path` for a unix socket (gunicorn's `--bind unix:/run/gunicorn.sock`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct UpstreamUrl {
    pub target: UpstreamTarget,
}

/// Where the backend listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    Tcp(Authority),
    Unix(PathBuf),
}

impl UpstreamUrl {
    /// What a request that came without a `Host` is sent with: the backend's authority, or
    /// `localhost` for a unix socket.
    pub fn default_host(&self) -> &str {
        match &self.target {
            UpstreamTarget::Tcp(authority) => authority.as_str(),
            UpstreamTarget::Unix(_) => "localhost",
        }
    }
}

impl TryFrom<String> for UpstreamUrl {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(
                    "a unix socket must be an absolute path: unix:/run/gunicorn.sock".into(),
                );
            }
            return Ok(UpstreamUrl {
                target: UpstreamTarget::Unix(path),
            });
        }
        let uri: Uri = text.parse().map_err(|e| format!("not a URL ({e})"))?;
        if uri.scheme_str() != Some("http") {
            return Err("must start with http:// (the backend is reached in plain HTTP) or be unix:/path/to.sock".into());
        }
        let authority = uri.authority().ok_or("has no host")?.clone();
        if authority.as_str().contains('@') {
            return Err("must not carry user:password".into());
        }
        if authority.port_u16().is_none() && authority.as_str().ends_with(':') {
            return Err("has an empty port".into());
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(
                "must not have a path or query: requests are forwarded with their own".into(),
            );
        }
        Ok(UpstreamUrl {
            target: UpstreamTarget::Tcp(authority),
        })
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            UpstreamTarget::Tcp(authority) => write!(f, "http://{authority}"),
            UpstreamTarget::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The configuration could not be loaded; every problem found is listed.
#[derive(Debug, thiserror::Error)]
#[error("{}", display_problems(.problems))]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

fn display_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// One `CLICK_GATEWAY_<SECTION>__<KEY>` variable as a figment provider, so an error in its
/// value names the variable.
struct EnvOverride {
    var: String,
    key: String,
    value: String,
}

impl Provider for EnvOverride {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("environment variable {}", self.var))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        // Parsed the way figment's own `Env` provider does (arrays, numbers, booleans).
        let value: Value = self
            .value
            .parse()
            .unwrap_or_else(|_| Value::from(self.value.clone()));
        let dict = figment::util::nest(&self.key, value)
            .into_dict()
            .ok_or_else(|| figment::Error::from(format!("{} names no setting", self.var)))?;
        Ok(Profile::Default.collect(dict))
    }
}

/// The `CLICK_GATEWAY_<SECTION>__<KEY>` variables; one that names no section is a problem
/// of its own, reported under its name.
fn env_overrides(env: &Environment) -> (Vec<EnvOverride>, Vec<Problem>) {
    let mut overrides = Vec::new();
    let mut problems = Vec::new();
    for (var, value) in env.vars() {
        let Some(rest) = var.strip_prefix(ENV_OVERRIDE_PREFIX) else {
            continue;
        };
        let key = rest.to_ascii_lowercase().replace("__", ".");
        let section = key.split('.').next().unwrap_or("");
        if !key.contains('.') || !SECTIONS.contains(&section) {
            problems.push(Problem::new(
                &format!("environment variable {var}"),
                None,
                "names no setting: use CLICK_GATEWAY_<SECTION>__<KEY>, e.g. CLICK_GATEWAY_UPSTREAM__URL".into(),
            ));
            continue;
        }
        overrides.push(EnvOverride {
            var: var.clone(),
            key,
            value: value.clone(),
        });
    }
    (overrides, problems)
}

/// The sections of gateway.toml.
const SECTIONS: [&str; 7] = [
    "server", "upstream", "click", "admin", "trust", "ledger", "guard",
];

/// Settings and keys, validated together.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// With relative file paths resolved against the config file's directory.
    pub settings: Settings,
    pub keys: KeySet,
    /// The certificate and key, when `server.tls_listen` is set.
    pub tls: Option<tls::TlsMaterial>,
    /// The attestation secrets, when `[trust]` is set.
    pub trust: Option<crate::trust::Trust>,
    pub warnings: Vec<String>,
}

impl Loaded {
    /// Where keys come from in this configuration (`config`: the file it was loaded from),
    /// for messages that say where a missing key goes.
    pub fn key_files<'a>(&'a self, config: &'a Path) -> crate::click::keys::KeyFiles<'a> {
        let click = &self.settings.click;
        crate::click::keys::KeyFiles {
            config,
            keys_file: click.keys_file.as_deref(),
            env_file: click.env_file.as_deref(),
            ledger: self.settings.ledger.database.is_some(),
        }
    }
}

/// Reads `path`, applies the environment overrides, validates, then reads every key source.
pub fn load(path: &Path, env: &Environment) -> Result<Loaded, ConfigError> {
    let origin = path.display().to_string();
    let fail = |problems| Err(ConfigError { problems });
    if let Err(e) = std::fs::metadata(path) {
        return fail(vec![Problem::new(
            &origin,
            None,
            format!("cannot read config file: {e}"),
        )]);
    }
    // Syntax first, reported by position only: figment's TOML errors quote the offending
    // line, and a key pasted into the wrong file must not end up in a log.
    match std::fs::read_to_string(path) {
        Ok(text) => {
            if let Err(e) = text.parse::<toml::Table>() {
                let at = e.span().map(|s| keys::line_col(&text, s.start));
                let key = at.map(|(l, c)| format!("line {l}, column {c}"));
                return fail(vec![Problem::new(
                    &origin,
                    key,
                    e.message().trim().replace('\n', "; "),
                )]);
            }
        }
        Err(e) => {
            return fail(vec![Problem::new(
                &origin,
                None,
                format!("cannot read config file: {e}"),
            )])
        }
    }
    let (overrides, env_problems) = env_overrides(env);
    if !env_problems.is_empty() {
        return fail(env_problems);
    }
    let mut figment = Figment::new().merge(Toml::file_exact(path));
    for o in overrides {
        figment = figment.merge(o);
    }
    let mut settings = extract(&figment, &origin)?;
    let mut problems = validate(&settings, &origin);
    let base = path.parent().unwrap_or(Path::new("."));
    let resolve = |p: &mut Option<PathBuf>| {
        if let Some(p) = p {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    };
    resolve(&mut settings.click.keys_file);
    resolve(&mut settings.click.env_file);
    resolve(&mut settings.server.tls_cert);
    resolve(&mut settings.server.tls_key);
    if let Some(t) = &mut settings.trust {
        if t.secret_file.is_relative() {
            t.secret_file = base.join(&t.secret_file);
        }
    }
    // A PostgreSQL URL is refused by `validate`, and must not become a path under the config
    // directory on the way.
    if !settings.ledger.is_postgres() {
        resolve(&mut settings.ledger.database);
    }
    let (keys, key_problems) = keys::load(
        settings.click.keys_file.as_deref(),
        settings.click.env_file.as_deref(),
        env,
    );
    problems.extend(key_problems);
    let mut warnings = Vec::new();
    let mut tls = None;
    if let (Some(_), Some(cert), Some(key)) = (
        settings.server.tls_listen,
        &settings.server.tls_cert,
        &settings.server.tls_key,
    ) {
        match tls::load(cert, key) {
            Ok((material, w)) => {
                tls = Some(material);
                warnings.extend(w);
            }
            Err(p) => problems.extend(p),
        }
    }
    let trust = match &settings.trust {
        None => None,
        Some(t) => match trust::load(&t.secret_file) {
            Ok(trust) => Some(trust),
            Err(p) => {
                problems.extend(p);
                None
            }
        },
    };
    if !problems.is_empty() {
        return fail(problems);
    }
    if keys.is_empty() {
        warnings.push(
            "no service has a key: every callback will be answered -1 SIGN CHECK FAILED!".into(),
        );
    }
    Ok(Loaded {
        settings,
        keys,
        tls,
        trust,
        warnings,
    })
}

/// Extracts section by section, so one bad setting per section is reported rather than only
/// the first of the whole file (serde stops at the first error).
fn extract(figment: &Figment, origin: &str) -> Result<Settings, ConfigError> {
    let to_problems = |e: figment::Error| -> Vec<Problem> {
        e.into_iter().map(|e| figment_problem(e, origin)).collect()
    };
    let root: Dict = figment.extract().map_err(|e| ConfigError {
        problems: to_problems(e),
    })?;
    let mut problems = Vec::new();
    for key in root.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            problems.push(Problem::new(
                origin,
                Some(key.clone()),
                "unknown section (expected server, upstream, click, admin, trust, ledger, guard)"
                    .into(),
            ));
        }
    }
    let section = |name: &str| root.contains_key(name);
    let server = if section("server") {
        figment.extract_inner("server").map_err(to_problems)
    } else {
        Ok(ServerSettings::default())
    };
    let click = if section("click") {
        figment.extract_inner("click").map_err(to_problems)
    } else {
        Ok(ClickSettings::default())
    };
    let admin = if section("admin") {
        figment.extract_inner("admin").map_err(to_problems)
    } else {
        Ok(AdminSettings::default())
    };
    let trust = if section("trust") {
        figment
            .extract_inner("trust")
            .map(Some)
            .map_err(to_problems)
    } else {
        Ok(None)
    };
    let ledger = if section("ledger") {
        figment.extract_inner("ledger").map_err(to_problems)
    } else {
        Ok(LedgerSettings::default())
    };
    let guard = if section("guard") {
        figment.extract_inner("guard").map_err(to_problems)
    } else {
        Ok(GuardSettings::default())
    };
    let upstream = if section("upstream") {
        figment
            .extract_inner::<UpstreamSettings>("upstream")
            .map_err(to_problems)
    } else {
        Err(vec![Problem::new(
            origin,
            Some("upstream.url".into()),
            "missing: the backend's address is required".into(),
        )])
    };
    fn take<T>(r: Result<T, Vec<Problem>>, problems: &mut Vec<Problem>) -> Option<T> {
        r.map_err(|p| problems.extend(p)).ok()
    }
    let server = take(server, &mut problems);
    let upstream = take(upstream, &mut problems);
    let click = take(click, &mut problems);
    let admin = take(admin, &mut problems);
    let trust = take(trust, &mut problems);
    let ledger = take(ledger, &mut problems);
    let guard = take(guard, &mut problems);
    match (server, upstream, click, admin, trust, ledger, guard) {
        (
            Some(server),
            Some(upstream),
            Some(click),
            Some(admin),
            Some(trust),
            Some(ledger),
            Some(guard),
        ) if problems.is_empty() => Ok(Settings {
            server,
            upstream,
            click,
            admin,
            trust,
            ledger,
            guard,
        }),
        _ => Err(ConfigError { problems }),
    }
}

fn figment_problem(e: figment::Error, config_origin: &str) -> Problem {
    let origin = match &e.metadata {
        Some(Metadata {
            source: Some(figment::Source::File(p)),
            ..
        }) => p.display().to_string(),
        Some(m) if m.name.starts_with("environment variable") => m.name.to_string(),
        _ => config_origin.to_owned(),
    };
    // `extract_inner("server")` reports paths as [field, "server"]: put the section first.
    let mut path = e.path.clone();
    if path.len() > 1 && SECTIONS.contains(&path[path.len() - 1].as_str()) {
        path.rotate_right(1);
    }
    let key = (!path.is_empty()).then(|| path.join("."));
    Problem::new(&origin, key, kind_text(&e.kind))
}

/// figment's message, without the doubled backticks its own wording gives a list of names
/// (`expected `one of `url`, `connect_timeout```), and saying "setting" for a field.
fn kind_text(kind: &figment::error::Kind) -> String {
    use figment::error::{Kind, OneOf};
    match kind {
        Kind::UnknownField(found, expected) => {
            format!("unknown setting `{found}`, expected {}", OneOf(expected))
        }
        Kind::UnknownVariant(found, expected) => {
            format!("unknown value `{found}`, expected {}", OneOf(expected))
        }
        other => other.to_string(),
    }
}

/// Rows the ledger's queue may hold at most: 1 Mi rows of up to 16 KiB is already more memory
/// than a gateway should spend on waiting rows.
const MAX_LEDGER_QUEUE: usize = 1 << 20;

fn validate(s: &Settings, origin: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut bad = |key: &str, message: &str| {
        problems.push(Problem::new(
            origin,
            Some(key.to_owned()),
            message.to_owned(),
        ))
    };
    let srv = &s.server;
    if srv.listen.is_none() && srv.tls_listen.is_none() {
        bad(
            "server.listen",
            "no listener: set listen, tls_listen or both",
        );
    }
    if srv.tls_listen.is_some() {
        if srv.tls_cert.is_none() {
            bad(
                "server.tls_cert",
                "tls_listen needs a certificate chain (PEM)",
            );
        }
        if srv.tls_key.is_none() {
            bad("server.tls_key", "tls_listen needs a private key (PEM)");
        }
    } else if srv.tls_cert.is_some() || srv.tls_key.is_some() {
        bad(
            "server.tls_listen",
            "tls_cert/tls_key are set but no tls_listen uses them",
        );
    }
    if srv.max_tls_handshakes == 0 {
        bad("server.max_tls_handshakes", "must be at least 1");
    }
    if srv.workers == Some(0) {
        bad("server.workers", "must be at least 1");
    }
    if srv.max_connections == 0 {
        bad("server.max_connections", "must be at least 1");
    }
    if srv.max_connections_per_address == 0 {
        bad("server.max_connections_per_address", "must be at least 1");
    }
    if srv.http2_max_streams_per_address == 0 {
        bad("server.http2_max_streams_per_address", "must be at least 1");
    }
    if srv.listen_backlog == 0 {
        bad("server.listen_backlog", "must be at least 1");
    }
    if srv.pressure_timeout.0.is_zero() {
        bad("server.pressure_timeout", "must be at least 1ms");
    }
    // hyper refuses (panics on) read buffers under 8 KiB.
    if srv.max_header_bytes < ByteSize::kib(8) {
        bad("server.max_header_bytes", "must be at least 8KiB");
    }
    if srv.max_headers == 0 {
        bad("server.max_headers", "must be at least 1");
    }
    if srv.body_buffer_memory < srv.max_body {
        bad(
            "server.body_buffer_memory",
            "must be at least max_body, or no large body could ever be buffered",
        );
    }
    if srv.connection_body_memory < srv.max_body {
        bad(
            "server.connection_body_memory",
            "must be at least max_body, or no large body could ever be buffered",
        );
    }
    if srv.callback_body_memory < ByteSize(crate::click::MAX_CALLBACK_BODY as u64) {
        bad(
            "server.callback_body_memory",
            "must be at least 16KiB, the largest callback body",
        );
    }
    if srv.http2_max_concurrent_streams == 0 {
        bad("server.http2_max_concurrent_streams", "must be at least 1");
    }
    let up = &s.upstream;
    if up.max_connections == 0 {
        bad("upstream.max_connections", "must be at least 1");
    }
    if up.callback_connections >= up.max_connections {
        bad(
            "upstream.callback_connections",
            "must be below max_connections, or nothing but callbacks could reach the backend",
        );
    }
    if s.admin.enabled && !s.admin.listen.ip().is_loopback() && !s.admin.allow_remote {
        bad(
            "admin.listen",
            "not a loopback address: metrics name services and volumes; set admin.allow_remote = true to expose them",
        );
    }
    let mut mode_ids = std::collections::BTreeMap::new();
    for id in s.click.service_modes.keys() {
        match crate::click::callback::parse_id(id) {
            None => bad(
                &format!("click.service_modes.{id}"),
                "service id must be decimal digits",
            ),
            Some(n) => {
                if let Some(first) = mode_ids.insert(n, id) {
                    bad(
                        &format!("click.service_modes.{id}"),
                        &format!("same service as {first}"),
                    );
                }
            }
        }
    }
    if let Some(Err(why)) = s.ledger.postgres() {
        bad("ledger.database", &format!("the PostgreSQL URL {why}"));
    }
    if s.ledger.database.as_deref() == Some(Path::new("")) {
        bad(
            "ledger.database",
            "is empty: name a SQLite file or a postgres:// URL, or remove the setting to run without a ledger",
        );
    }
    if s.ledger.max_size < ByteSize::mib(1) {
        bad("ledger.max_size", "must be at least 1MiB");
    }
    if s.ledger.refused_per_second > 100_000 {
        bad(
            "ledger.refused_per_second",
            "is implausibly large (at most 100000): the bound is what keeps a flood out of the ledger",
        );
    }
    if s.ledger.queue == 0 || s.ledger.queue > MAX_LEDGER_QUEUE {
        bad("ledger.queue", "must be between 1 and 1048576");
    }
    if s.ledger.retention.0 < std::time::Duration::from_secs(3600)
        || s.ledger.retention.0 > std::time::Duration::from_secs(3650 * 86_400)
    {
        bad("ledger.retention", "must be between 1h and 3650d");
    }
    if s.ledger.database.is_none() {
        for (key, mode) in [
            ("guard.mode", s.guard.mode),
            ("guard.transaction_mode", s.guard.transaction_mode),
        ] {
            if matches!(mode, Some(GuardMode::Enforce | GuardMode::Shadow)) {
                bad(
                    key,
                    "the guard keeps its bindings in the ledger: set [ledger] database, or mode = \"off\"",
                );
            }
        }
    }
    if s.guard.timeout.0.is_zero() || s.guard.timeout.0 > std::time::Duration::from_secs(60) {
        bad("guard.timeout", "must be between 1ms and 60s");
    }
    let window = s.guard.window.map(|w| w.0);
    if window.is_some_and(|w| w < std::time::Duration::from_secs(3600)) {
        bad(
            "guard.window",
            "must be at least 1h (Click retries a callback for a while)",
        );
    } else if s.ledger.database.is_some() && window.is_some_and(|w| w > s.ledger.retention.0) {
        bad(
            "guard.window",
            "is longer than ledger.retention: the guard's index is rebuilt from the ledger's rows, which are gone after the retention; shorten the window or lengthen the retention",
        );
    }
    if s.click.paths.is_empty() {
        bad("click.paths", "no callback path: nothing would be verified");
    }
    for (i, p) in s.click.paths.iter().enumerate() {
        if !p.starts_with('/') || p.contains(['?', '#']) {
            bad(
                &format!("click.paths[{i}]"),
                "must be a path starting with / (no query)",
            );
        }
        if s.click.paths[..i].contains(p) {
            bad(&format!("click.paths[{i}]"), "listed twice");
        }
    }
    // Beyond these, `Instant + duration` and tokio's semaphores would overflow (a panic in
    // every connection): no sane deployment wants more.
    const MAX_SPAN: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
    const MAX_PERMITS: usize = 1 << 24;
    for (key, n) in [
        ("server.max_connections", s.server.max_connections),
        (
            "server.max_connections_per_address",
            s.server.max_connections_per_address,
        ),
        (
            "server.http2_max_streams_per_address",
            s.server.http2_max_streams_per_address,
        ),
        ("server.listen_backlog", s.server.listen_backlog as usize),
        ("server.max_tls_handshakes", s.server.max_tls_handshakes),
        ("server.workers", s.server.workers.unwrap_or(1)),
        ("upstream.max_connections", s.upstream.max_connections),
        (
            "server.http2_max_concurrent_streams",
            s.server.http2_max_concurrent_streams as usize,
        ),
    ] {
        if n > MAX_PERMITS {
            bad(key, "is implausibly large (at most 16777216)");
        }
    }
    for (key, span) in [
        ("server.drain_timeout", s.server.drain_timeout),
        ("server.idle_timeout", s.server.idle_timeout),
        ("server.pressure_timeout", s.server.pressure_timeout),
        ("server.send_timeout", s.server.send_timeout),
        ("server.header_read_timeout", s.server.header_read_timeout),
        ("server.body_read_timeout", s.server.body_read_timeout),
        (
            "server.tls_handshake_timeout",
            s.server.tls_handshake_timeout,
        ),
        ("upstream.connect_timeout", s.upstream.connect_timeout),
        ("upstream.response_timeout", s.upstream.response_timeout),
        ("upstream.pool_idle_timeout", s.upstream.pool_idle_timeout),
    ] {
        if span.0 > MAX_SPAN {
            bad(key, "is longer than a day");
        }
    }
    if s.click
        .max_sign_age
        .is_some_and(|a| a.0.is_zero() || a.0 > MAX_SPAN * 366)
    {
        bad("click.max_sign_age", "must be between 1s and a year");
    }
    for (key, span) in [
        ("server.header_read_timeout", s.server.header_read_timeout),
        (
            "server.tls_handshake_timeout",
            s.server.tls_handshake_timeout,
        ),
        ("server.body_read_timeout", s.server.body_read_timeout),
        ("server.idle_timeout", s.server.idle_timeout),
        ("server.pressure_timeout", s.server.pressure_timeout),
        ("server.send_timeout", s.server.send_timeout),
        ("upstream.connect_timeout", s.upstream.connect_timeout),
        ("upstream.response_timeout", s.upstream.response_timeout),
        ("upstream.pool_idle_timeout", s.upstream.pool_idle_timeout),
    ] {
        if span.0.is_zero() {
            bad(key, "must be greater than zero");
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn dir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("cg-config-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        p
    }

    fn env(pairs: &[(&str, &str)]) -> Environment {
        Environment::from_pairs(pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())))
    }

    #[test]
    fn file_then_env_overrides_and_relative_key_paths() {
        let d = dir("ok");
        fs::write(d.join("keys.toml"), "[services.1]\nsecret_keys=[\"k\"]\n").unwrap();
        let cfg = d.join("gateway.toml");
        fs::write(
            &cfg,
            "[server]\nlisten = \"127.0.0.1:9000\"\n[upstream]\nurl = \"http://127.0.0.1:8000\"\n[click]\nkeys_file = \"keys.toml\"\n",
        )
        .unwrap();
        let loaded = load(
            &cfg,
            &env(&[
                ("CLICK_GATEWAY_UPSTREAM__URL", "http://127.0.0.1:8001"),
                ("CLICK_GATEWAY_UPSTREAM__RESPONSE_TIMEOUT", "5s"),
                ("CLICK_GATEWAY_CLICK__PATHS", "[\"/cb/\"]"),
            ]),
        )
        .unwrap();
        let s = &loaded.settings;
        assert_eq!(s.server.listen.map(|a| a.port()), Some(9000));
        assert_eq!(s.upstream.url.to_string(), "http://127.0.0.1:8001");
        assert_eq!(s.upstream.response_timeout, Span::secs(5));
        assert_eq!(s.click.paths, ["/cb/"]);
        assert_eq!(
            s.click.keys_file.as_deref(),
            Some(d.join("keys.toml").as_path())
        );
        assert_eq!(loaded.keys.len(), 1);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn every_problem_names_its_origin_and_setting() {
        let d = dir("bad");
        let cfg = d.join("gateway.toml");
        fs::write(
            &cfg,
            "[server]\nlisten = \"nope\"\n[upstream]\nurl = \"https://x\"\n[click]\npathz = []\n",
        )
        .unwrap();
        let err = load(
            &cfg,
            &env(&[("CLICK_GATEWAY_UPSTREAM__CONNECT_TIMEOUT", "3")]),
        )
        .unwrap_err();
        let text = err.to_string();
        let origin = cfg.display().to_string();
        assert!(
            text.contains(&format!("{origin}: server.listen:")),
            "{text}"
        );
        assert!(
            text.contains(
                "click.pathz: unknown setting `pathz`, expected one of `paths`, `keys_file`,"
            ),
            "{text}"
        );
        assert!(!text.contains("``"), "{text}");
        assert!(
            text.contains("upstream.connect_timeout: 3 is a bare number: write a duration with its unit, in quotes: \"3s\""),
            "{text}"
        );
        assert!(
            text.contains("environment variable CLICK_GATEWAY_UPSTREAM__CONNECT_TIMEOUT"),
            "{text}"
        );
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn semantic_checks_and_missing_file() {
        let d = dir("sem");
        let cfg = d.join("gateway.toml");
        fs::write(
            &cfg,
            "[upstream]\nurl = \"http://127.0.0.1:8000/api\"\n[click]\npaths = [\"x\", \"/a/\", \"/a/\"]\nkeys_file = \"missing.toml\"\n",
        )
        .unwrap();
        let text = load(&cfg, &env(&[])).unwrap_err().to_string();
        assert!(
            text.contains("upstream.url: must not have a path"),
            "{text}"
        );
        let cfg2 = d.join("g2.toml");
        fs::write(
            &cfg2,
            "[upstream]\nurl = \"http://127.0.0.1:8000\"\n[click]\npaths = [\"x\", \"/a/\", \"/a/\"]\nkeys_file = \"missing.toml\"\n[server]\ndrain_timeout=\"1s\"\nheader_read_timeout=\"0s\"\n",
        )
        .unwrap();
        let text = load(&cfg2, &env(&[])).unwrap_err().to_string();
        for want in [
            "click.paths[0]: must be a path",
            "click.paths[2]: listed twice",
            "server.header_read_timeout: must be greater than zero",
            "missing.toml: cannot read keys file",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let text = load(&d.join("nope.toml"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(text.contains("cannot read config file"), "{text}");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn misnamed_overrides_and_syntax_errors_name_their_origin_not_their_text() {
        let d = dir("names");
        let cfg = d.join("gateway.toml");
        fs::write(
            &cfg,
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n",
        )
        .unwrap();
        let text = load(&cfg, &env(&[("CLICK_GATEWAY_UPSTREAM_URL", "http://x")]))
            .unwrap_err()
            .to_string();
        assert!(
            text.starts_with("environment variable CLICK_GATEWAY_UPSTREAM_URL: names no setting"),
            "{text}"
        );
        fs::write(
            &cfg,
            "[upstream]\nurl = \"http://127.0.0.1:1\"\nsecret = sekrit-pasted-here\n",
        )
        .unwrap();
        let text = load(&cfg, &env(&[])).unwrap_err().to_string();
        assert!(text.contains("gateway.toml: line 3, column"), "{text}");
        assert!(!text.contains("sekrit"), "{text}");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn offsets_and_service_modes() {
        for (t, want) in [
            ("+05:00", Some(18_000)),
            ("-03:30", Some(-12_600)),
            ("UTC", Some(0)),
        ] {
            assert_eq!(
                UtcOffset::try_from(t.to_owned()).ok().map(|o| o.0),
                want,
                "{t}"
            );
        }
        for bad in ["++05:00", "-+05:00", "+5:00", "05:00", "+15:00"] {
            assert!(UtcOffset::try_from(bad.to_owned()).is_err(), "{bad}");
        }
        let d = dir("modes");
        let cfg = d.join("gateway.toml");
        fs::write(
            &cfg,
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n[click]\nservice_modes = { \"12345\" = \"shadow\", \"012345\" = \"enforce\" }\n",
        )
        .unwrap();
        let text = load(&cfg, &env(&[])).unwrap_err().to_string();
        assert!(text.contains("same service as"), "{text}");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn ledger_section_resolves_its_file_and_reads_postgres_urls() {
        let d = dir("ledger");
        let cfg = d.join("gateway.toml");
        let base = "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n";
        fs::write(&cfg, base).unwrap();
        let s = load(&cfg, &env(&[])).unwrap().settings;
        assert_eq!(s.ledger, LedgerSettings::default());
        assert_eq!(s.ledger.retention, Span::secs(90 * 86_400));
        fs::write(
            &cfg,
            format!("{base}[ledger]\ndatabase = \"ledger.db\"\nretention = \"7d\"\nqueue = 16\n"),
        )
        .unwrap();
        let s = load(&cfg, &env(&[])).unwrap().settings;
        assert_eq!(s.ledger.database, Some(d.join("ledger.db")));
        assert_eq!(s.ledger.retention, Span::secs(7 * 86_400));
        assert_eq!(s.ledger.queue, 16);
        let s = load(
            &cfg,
            &env(&[("CLICK_GATEWAY_LEDGER__DATABASE", "/var/lib/cg/l.db")]),
        )
        .unwrap()
        .settings;
        assert_eq!(s.ledger.database, Some(PathBuf::from("/var/lib/cg/l.db")));
        for url in [
            "postgres://u:pw-1@db/ledger",
            "PostgreSQL://u:pw-1@db/ledger",
        ] {
            fs::write(&cfg, format!("{base}[ledger]\ndatabase = \"{url}\"\n")).unwrap();
            let s = load(&cfg, &env(&[])).unwrap().settings;
            // Taken as it is (not a path to resolve), shown only redacted.
            assert_eq!(s.ledger.database, Some(PathBuf::from(url)));
            assert!(s.ledger.is_postgres());
            assert_eq!(s.ledger.shown().unwrap(), "postgres://u@db:5432/ledger");
            assert!(!format!("{s:?}").contains("pw-1"), "{s:?}");
        }
        fs::write(
            &cfg,
            format!("{base}[ledger]\ndatabase = \"postgres://u:pw-1@db/ledger?sslmode=maybe\"\n"),
        )
        .unwrap();
        let text = load(&cfg, &env(&[])).unwrap_err().to_string();
        assert!(
            text.contains("ledger.database: the PostgreSQL URL sslmode must be"),
            "{text}"
        );
        assert!(!text.contains("pw-1"), "{text}");
        fs::write(
            &cfg,
            format!(
                "{base}[ledger]\ndatabase = \"l.db\"\nretention = \"10m\"\nqueue = 0\nsize = 1\n"
            ),
        )
        .unwrap();
        let text = load(&cfg, &env(&[])).unwrap_err().to_string();
        assert!(text.contains("size"), "{text}");
        fs::write(
            &cfg,
            format!("{base}[ledger]\ndatabase = \"l.db\"\nretention = \"10m\"\nqueue = 0\n"),
        )
        .unwrap();
        let text = load(&cfg, &env(&[])).unwrap_err().to_string();
        for want in [
            "ledger.queue: must be between 1 and 1048576",
            "ledger.retention: must be between 1h and 3650d",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn upstream_urls() {
        let ok = |s: &str| UpstreamUrl::try_from(s.to_owned());
        assert_eq!(
            ok("http://127.0.0.1:8000").unwrap().to_string(),
            "http://127.0.0.1:8000"
        );
        assert!(ok("http://localhost/").is_ok());
        assert_eq!(
            ok("unix:/run/gunicorn.sock").unwrap().target,
            UpstreamTarget::Unix("/run/gunicorn.sock".into())
        );
        assert_eq!(ok("unix:/run/g.sock").unwrap().default_host(), "localhost");
        for bad in [
            "unix:run/gunicorn.sock",
            "unix:",
            "127.0.0.1:8000",
            "https://x",
            "http://u:p@x",
            "http://x/a",
            "http://x/?q",
            "http://x:",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
    }
}
