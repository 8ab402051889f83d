//! click-gateway: a reverse proxy that verifies Click (click.uz) payment callbacks before they
//! reach the backend, and forwards everything else unchanged.
//!
//! These are the developer's docs (`cargo doc --no-deps --open`). The operator's are
//! `README.md`; what each deployable file is, `config/README.md`; the measurements,
//! `benches/README.md`.
//!
//! # The path of one callback
//!
//! A Prepare from Click, file by file, from its TCP connection to the backend and back. Steps 1
//! to 4 hand the connection on; from step 5, `gateway.rs` runs the stages in order, each
//! returning what it decided as a value the next one takes (see "How the files depend on each
//! other" below).
//!
//! 1. **`server/mod.rs`** ([`server::run`]): worker threads (`server.workers`, one per CPU by
//!    default), each with a single-threaded tokio runtime and its own backend pool, accept on
//!    the same sockets (nginx's worker model); a request, its backend connection and its timers
//!    stay on one thread. Each accept loop takes every queued connection when it wakes, and a
//!    worker holding two connections more than another leaves new ones to it for a moment
//!    ([`server::pressure::Pressure::ahead`]), so a burst is spread evenly.
//! 2. **`server/admission.rs`** ([`server::admission`]): the client address's share (an IPv6
//!    client is its /64): at most `server.max_connections_per_address` connections, closed at
//!    once beyond; `server.trusted_proxies` are exempt. **`server/pressure.rs`**
//!    ([`server::pressure`]): the global cap, `server.max_connections`; at the cap, idle
//!    connections are closed for room, then waiting ones, and deadlines shrink to
//!    `server.pressure_timeout` while the gateway is under pressure.
//! 3. **`server/tls.rs`** ([`server::tls`]), on the HTTPS listener: the handshake within
//!    `tls_handshake_timeout`, at most `max_tls_handshakes` at once, the certificate from a
//!    resolver a reload can swap; ALPN picks HTTP/2 or HTTP/1.1.
//! 4. **`server/conn.rs`** ([`server::conn`]): hyper serves the connection (HTTP/1.1, or HTTP/2:
//!    by ALPN on TLS, by its preface on plain HTTP); one watchdog per connection enforces the
//!    header-read, idle and HTTP/2 send deadlines from what [`server::activity`] records, the
//!    socket's writes have nginx's `send_timeout` ([`server::send_deadline`]), and an address's
//!    HTTP/2 streams are capped. [`server::client`] says who the peer is. Each request goes to:
//! 5. **`gateway.rs`** ([`Gateway::handle`]): the request's [`request_id`], one snapshot of the
//!    [`runtime`] (keys and reloadable settings, loaded once: a reload cannot split a request),
//!    the [`lane`] from the path alone (callbacks have their own body memory and a reserve
//!    of backend connections), and the head made into what the backend will read
//!    ([`proxy::headers::for_upstream`]: hop-by-hop fields removed, forwarding fields set),
//!    before anything is judged.
//! 6. **`body.rs`** ([`body::read_bounded`]): the body read whole, at most 16 KiB for a
//!    callback, within `body_read_timeout`, taking the lane's memory as its bytes arrive.
//! 7. **`checkpoint.rs`** ([`checkpoint`]): [`checkpoint::precheck`] refuses from the head
//!    (method, content type and encoding, a Click field in the query);
//!    [`checkpoint::parse`] reads the form ([`click::form`], or the fast path of
//!    [`click::callback`] for a plain urlencoded callback); [`checkpoint::judge`] checks the
//!    fields ([`click::callback`]), verifies the md5 with each key of the service
//!    ([`click::verify`], [`click::sign`], keys from [`click::keys`]), says why a signature
//!    failed ([`click::diagnose`]), checks `sign_time` ([`clock`]) when
//!    `click.max_sign_age` asks, and names any refusal in one type ([`click::reject`]). It
//!    does no I/O: it returns a [`checkpoint::Judgment`] (answer in Click's format, or
//!    forward).
//! 8. **`guard.rs`** ([`guard::admit`]), with a ledger, for a callback to be forwarded: its
//!    ledger row is written first, and a verified callback's signature is bound to its
//!    message ([`click::digest`]). On SQLite the guard's in-memory index over the rows
//!    ([`ledger::index`]) answers under a lock, then the row goes to the writer thread
//!    ([`ledger::writer`], group commit, [`ledger::sqlite`]) and the callback waits for its
//!    commit ([`ledger::Ledger::write_ahead`]); on PostgreSQL the row and the binding are one
//!    statement ([`ledger::postgres`]). A binding that finds the signature with other fields
//!    turns the judgment into a refusal.
//! 9. **`trust.rs`** ([`trust`]): the HMAC attestation a verified callback carries to the
//!    backend, with `X-Click-Signature-Verified` ([`proxy::headers::mark_verified`]).
//! 10. **`proxy/forward.rs`** ([`proxy::forward::Forwarder::send`]), the only file that talks to
//!     the backend: a connection from the pool ([`proxy::pool`], within `upstream.max_connections`
//!     and the callbacks' reserve; [`proxy::upstream`] holds the deadlines), the original
//!     bytes sent, the response body streamed back under [`proxy::stall`]'s watch.
//! 11. **`outcome.rs`** ([`outcome::Outcome`]): every exit of the callback path is one value,
//!     which `Gateway::finish` (in `gateway.rs`) counts ([`metrics`]), logs
//!     ([`outcome::LogContext::line`]) and records, a refusal within its sender's budget
//!     ([`refusals`]); its answer is the backend's, or the gateway's own ([`answer`]: plain
//!     statuses, or Click's JSON from [`click::respond`]). The backend's answer is appended to
//!     the ledger as it streams past ([`ledger::tap`]).
//!
//! Everything else is a request on the general lane: the same steps 1 to 6, then 10.
//!
//! Beside the path: [`config`] reads `gateway.toml` and the keys (the one loader `serve`,
//! `check` and a reload share); [`reload`] builds a new [`runtime`] off to the side and swaps
//! it in on SIGHUP ([`signals`]); [`notify`] tells systemd; [`admin`] serves `/live`, `/ready`
//! and `/metrics`; [`commands`] are `check`, `sign`, `verify`, `payments` and `recheck`;
//! [`text`] makes client-chosen text safe to print. `main.rs` parses arguments, sets up
//! logging and signals, and maps errors to exit codes.
//!
//! # How the files depend on each other
//!
//! The `use` graph of `src/` has no cycle, and `tests/architecture.rs` keeps it so: each
//! layer's error is its own type, wrapped by the layer above ([`click::reject`] wraps the
//! form's, the fields' and the signature's), and data flows one way. A stage that needs
//! something of its caller's gets it as a value: [`guard::admit`] is handed the closure that
//! builds the callback's row, and never names `gateway.rs`.
//!
//! # The files
//!
//! - `main.rs`: arguments, logging, signals, exit codes; `lib.rs`: these docs, the modules.
//! - Serving connections (steps 1 to 4): `server/mod.rs`, `server/admission.rs`,
//!   `server/pressure.rs`, `server/activity.rs`, `server/tls.rs`, `server/conn.rs`,
//!   `server/send_deadline.rs`, `server/client.rs`.
//! - One request's way (steps 5 to 11): `gateway.rs`, `request_id.rs`, `lane.rs`, `body.rs`,
//!   `checkpoint.rs`, `guard.rs`, `trust.rs`, `outcome.rs`, `refusals.rs`, `answer.rs`.
//! - The keys and settings in force: `runtime.rs`, `reload.rs`, `signals.rs` (SIGHUP, SIGTERM,
//!   SIGINT), `notify.rs` (sd_notify).
//! - Observing it: `admin.rs` (`/live`, `/ready`, `/metrics`), `metrics.rs`, `log_fields.rs`
//!   (the log line's fields, written as the default formatter does, at less cost).
//! - Small shared pieces: `clock.rs` (`sign_time` and dates, without a date crate), `text.rs`
//!   (client-chosen text made printable).
//! - The Click protocol, pure (no I/O): `click/mod.rs`, `click/form.rs`, `click/callback.rs`,
//!   `click/sign.rs`, `click/verify.rs`, `click/diagnose.rs`, `click/digest.rs`, `click/keys.rs`,
//!   `click/reject.rs`, `click/respond.rs`, `click/hex.rs`.
//! - Configuration: `config/mod.rs` (`gateway.toml` through figment), `config/keys.rs` and
//!   `config/dotenv.rs` (the keys' three sources), `config/environment.rs`, `config/problem.rs`,
//!   `config/duration.rs`, `config/size.rs`, `config/cidr.rs`, `config/tls.rs` (the certificate
//!   pair), `config/trust.rs` (the trust secrets), `config/postgres.rs` (the ledger's URL).
//! - The backend: `proxy/mod.rs`, `proxy/forward.rs`, `proxy/pool.rs`, `proxy/upstream.rs`,
//!   `proxy/headers.rs`, `proxy/stall.rs`, `proxy/error.rs`.
//! - The callback ledger and the guard's bindings: `ledger/mod.rs`, `ledger/handle.rs`,
//!   `ledger/record.rs`, `ledger/model.rs` (the schema), `ledger/index.rs`, `ledger/binding.rs`,
//!   `ledger/writer.rs`, `ledger/store.rs`, `ledger/sqlite.rs`, `ledger/postgres.rs`,
//!   `ledger/tap.rs`, `ledger/time.rs`, `ledger/error.rs`.
//! - The operator's subcommands: `commands/mod.rs`, `commands/check.rs`, `commands/sign.rs`,
//!   `commands/verify.rs`, `commands/payments.rs`, `commands/recheck.rs`, `commands/report.rs`.
//!
//! # Tests
//!
//! `tests/` holds integration tests on real sockets: they bind `127.0.0.1:0`, start the real
//! gateway (in-process through [`server::run`], or the binary: `tests/common`) and a real
//! upstream (a hyper server that records what it receives, or the Django app of `tests/django`
//! under gunicorn), and send real bytes; `tests/postgres.rs` starts private PostgreSQL
//! clusters. `tests/readme.rs` runs the README's runnable blocks. `tests/properties.rs` holds
//! property tests (proptest): any signed body verifies, any changed byte of a signed field or
//! of the digest fails, the parsers never panic, the word-at-a-time urlencoded scanner and the
//! callback fast path agree with the general parser. A coverage-guided fuzzer checks the last
//! on raw bytes, outside CI, with the nightly toolchain:
//! `cargo +nightly fuzz run --fuzz-dir tests/fuzz callback -- -max_total_time=60`.
//! `benches/` measures the gateway against nginx (`benches/README.md`).
//!
//! # Decisions where the protocol is silent
//!
//! Click's SHOP-API documentation (<https://docs.click.uz/en/click-api-request/>) gives the
//! fields, the md5 formulas and the error codes; it says nothing of what follows, so the
//! gateway decides, always toward "never verify something other than what Django will read":
//!
//! - **Transport failures never get a Click code.** A backend down or slow, a body that stops
//!   arriving, a ledger that cannot record: a plain `502`/`503`/`504`/`408`, which Click treats
//!   as no answer and retries; a made-up `-8` or `-1` could cancel a real payment ([`answer`]).
//! - **What the signature does not cover.** `error`, `error_note` and `click_paydoc_id` are
//!   not hashed, and the hashed fields are joined without separators, so one signature fits
//!   several messages; the replay guard binds it to the first ([`guard`]).
//! - **Repeated form names are refused**, not resolved: Django reads the last value, a naive
//!   verifier the first. Names are decoded before the check, as Django decodes them.
//! - **Parser parity with Django** ([`click::form`]): `&` is the only separator, `+` is a
//!   space, `%XX` a byte, in names and values; where Python would be lenient (an invalid `%`,
//!   invalid UTF-8) the gateway refuses. `multipart/form-data` is accepted in one unambiguous
//!   shape only (text fields, no preamble, no `filename`, no `Content-Transfer-Encoding`).
//! - **Content-Type** is read as Django reads it and no wider: type and subtype in any case,
//!   one `boundary`, a `charset` of `utf-8`; any other parameter is refused.
//! - **A Click field in a callback's query string** (`?amount=`, `?%61mount=`, PHP's
//!   `sign.string`) is refused with `-8`: frameworks that merge query and form would read it
//!   instead of the signed body's ([`click::callback`]).
//! - **Both spellings of a callback path** (with and without the trailing slash, after
//!   percent-decoding, as Django routes) are judged ([`runtime`]).
//! - **Headers** ([`proxy::headers`]): hop-by-hop fields removed both ways, including every
//!   field any `Connection` line names (so `Connection: content-type` makes a callback without
//!   a content type, judged as such); forwarding fields replaced unless the peer is a trusted
//!   proxy; fields with `_` in their name dropped (WSGI maps `_` and `-` to one name);
//!   `X-Click-Signature-Verified` and `X-Click-Gateway-Signature` removed from every request.
//!   `Upgrade` is hop-by-hop: WebSockets are not proxied.
//! - **Retries** ([`proxy::forward`]): a request never written to a closed pooled connection
//!   is resent; an idempotent one that reached the backend without an answer is sent once
//!   more; a callback (a POST) that may have reached the backend never is: Click resends it.

// A panic on the request or reload path would drop a payment callback: outside tests, every
// fallible step is handled, and clippy (`-D warnings` in CI) keeps it that way.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod answer;
pub mod body;
pub mod checkpoint;
pub mod click;
pub mod clock;
pub mod commands;
pub mod config;
pub mod gateway;
pub mod guard;
pub mod lane;
pub mod ledger;
pub mod log_fields;
pub mod metrics;
pub mod notify;
pub mod outcome;
pub mod proxy;
pub mod refusals;
pub mod reload;
pub mod request_id;
pub mod runtime;
pub mod server;
pub mod signals;
pub mod text;
pub mod trust;

pub use gateway::Gateway;
