//! Accepting connections (plain and TLS) and serving them with hyper: HTTP/1.1 and HTTP/2
//! through hyper-util's auto builder, with graceful draining on shutdown.
//!
//! [`run`] takes bound listeners and a shutdown future, after tokio's mini-redis: tests start
//! the real server on `127.0.0.1:0` in-process and stop it by resolving the future.

pub mod activity;
pub mod admission;
pub mod client;
pub mod conn;
pub mod pressure;
pub mod send_deadline;
pub mod tls;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::config::ServerSettings;
use crate::gateway::Gateway;
use crate::metrics::ReasonLabels;
use crate::proxy::Scheme;
use activity::Deadlines;
use admission::Admission;
use client::{Client, Peer};
use conn::{Proto, Protocols};
use pressure::{Pressure, Slot};
pub use tls::TlsListener;

/// Failures of the server layer: they stop the gateway from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// `setting` names the listener (`server.listen`, `server.tls_listen`, `admin.listen`):
    /// an address in use is fixed there, or by stopping what holds it.
    #[error("{setting}: cannot listen on {addr}: {source}{}", in_use_hint(source))]
    Bind {
        setting: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// nginx's backlog on Linux, for listeners whose settings say none (the admin listener).
pub const DEFAULT_BACKLOG: u32 = 511;

/// Binds a TCP listener whose kernel queue holds `backlog` connections not yet accepted
/// (`server.listen_backlog`; Linux caps it at `net.core.somaxconn`). The standard library and
/// tokio's `bind` say 128: a burst of new clients beyond that has its SYNs dropped, and each
/// dropped client waits a second for its retransmission, then three. `setting` is the one
/// that names `addr`, for the error.
pub fn bind(
    setting: &'static str,
    addr: SocketAddr,
    backlog: u32,
) -> Result<TcpListener, ServerError> {
    let bind = || -> io::Result<TcpListener> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        // As std and tokio do: a restart may bind while the old sockets are in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(backlog)
    };
    bind().map_err(|source| ServerError::Bind {
        setting,
        addr,
        source,
    })
}

fn in_use_hint(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::AddrInUse {
        " (another process listens there: `ss -ltnp` shows which)"
    } else {
        ""
    }
}

/// A bound socket, and TLS when it is the HTTPS listener.
pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<TlsListener>,
}

impl Listener {
    pub fn plain(tcp: TcpListener) -> Listener {
        Listener { tcp, tls: None }
    }

    pub fn tls(tcp: TcpListener, tls: TlsListener) -> Listener {
        Listener {
            tcp,
            tls: Some(tls),
        }
    }
}

/// Connection-level limits and timers.
#[derive(Debug, Clone)]
pub struct ConnSettings {
    /// Worker threads (each with its own runtime and backend pool).
    pub workers: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub pressure_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub http2_max_streams_per_address: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub send_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
}

impl From<&ServerSettings> for ConnSettings {
    fn from(s: &ServerSettings) -> Self {
        ConnSettings {
            workers: s.workers.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            }),
            header_read_timeout: s.header_read_timeout.0,
            idle_timeout: s.idle_timeout.0,
            drain_timeout: s.drain_timeout.0,
            pressure_timeout: s.pressure_timeout.0,
            max_connections: s.max_connections,
            max_connections_per_address: s.max_connections_per_address,
            http2_max_streams_per_address: s.http2_max_streams_per_address,
            max_header_bytes: s.max_header_bytes.as_usize(),
            max_headers: s.max_headers,
            send_timeout: s.send_timeout.0,
            http2_max_concurrent_streams: s.http2_max_concurrent_streams,
        }
    }
}

/// What every accept loop shares: the protocols, the admission table, the connection cap and
/// its pressure, the deadlines, and the signals of the drain.
struct Shared {
    gateway: Arc<Gateway>,
    protocols: Protocols,
    admission: Arc<Admission>,
    pressure: Arc<Pressure>,
    deadlines: Deadlines,
    pressure_timeout: Duration,
    /// Held by every connection task; `run` knows they have all ended when the last is gone.
    alive: mpsc::Sender<()>,
}

/// Serves every listener until `shutdown` resolves, then stops accepting and gives open
/// connections `drain_timeout` to finish their requests (HTTP/1 connections close once idle,
/// HTTP/2 ones get GOAWAY).
///
/// Connections are served by `workers` threads, each with a single-threaded tokio runtime
/// and its own pool of backend connections, all accepting on the same sockets (nginx's
/// worker model) and kept to even shares of the connections (see [`Pressure::ahead`]).
/// A request, its backend connection and its timers then live on one thread: no work
/// stealing, no cross-thread wake-ups on the hot path. The caller's runtime keeps
/// only this coordinator, signals, the admin listener, reloads and the refusal summaries.
pub async fn run(
    listeners: Vec<Listener>,
    gateway: Arc<Gateway>,
    settings: ConnSettings,
    shutdown: impl Future<Output = ()>,
) {
    // The sockets leave this runtime; each worker registers its own clone in its own.
    let sockets: Vec<(std::net::TcpListener, Option<TlsListener>)> = listeners
        .into_iter()
        .filter_map(|l| match l.tcp.into_std() {
            Ok(std) => Some((std, l.tls)),
            Err(e) => {
                tracing::error!("cannot hand a listener to the workers: {e}");
                None
            }
        })
        .collect();
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    let workers_n = settings.workers.max(1);
    let shared = Arc::new(Shared {
        gateway: gateway.clone(),
        protocols: protocols(&settings),
        admission: Admission::new(
            u32::try_from(settings.max_connections_per_address).unwrap_or(u32::MAX),
        ),
        pressure: Pressure::new(settings.max_connections, workers_n, &gateway.metrics),
        deadlines: Deadlines {
            first_request: settings.header_read_timeout,
            idle: settings.idle_timeout,
            send: settings.send_timeout,
        },
        pressure_timeout: settings.pressure_timeout,
        alive,
    });
    let reports = tokio::spawn(gateway.refusals.clone().run_reports());
    let (drain_tx, drain_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = Vec::new();
    for n in 0..workers_n {
        let socks: Vec<_> = sockets
            .iter()
            .filter_map(|(std, tls)| match std.try_clone() {
                Ok(s) => Some((s, tls.clone())),
                Err(e) => {
                    tracing::error!("cannot share a listener with worker {n}: {e}");
                    None
                }
            })
            .collect();
        let (accepting_tx, accepting_rx) = tokio::sync::oneshot::channel::<()>();
        let worker = Worker {
            index: n,
            sockets: socks,
            shared: shared.clone(),
            drain: drain_rx.clone(),
            stop: stop_rx.clone(),
            accepting: accepting_tx,
        };
        match std::thread::Builder::new()
            .name(format!("click-gateway-{n}"))
            .spawn(move || worker.run())
        {
            Ok(thread) => workers.push((thread, accepting_rx)),
            Err(e) => tracing::error!("cannot start worker {n}: {e}"),
        }
    }
    drop(sockets);
    let pressure = shared.pressure.clone();
    drop(shared);
    gateway.ready.store(true, Ordering::Relaxed);
    shutdown.await;
    gateway.ready.store(false, Ordering::Relaxed);
    let _ = drain_tx.send(true);
    let mut threads = Vec::new();
    for (thread, accepting) in workers {
        // Each worker answers once its accept loops are gone (and its listeners with them).
        let _ = accepting.await;
        threads.push(thread);
    }
    tracing::info!(
        connections = pressure.open(),
        deadline = ?settings.drain_timeout,
        "draining"
    );
    tokio::select! {
        _ = all_closed.recv() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(settings.drain_timeout) => {
            tracing::warn!("drain deadline passed; closing remaining connections");
        }
    }
    // Workers drop their runtimes, and with them whatever is still open.
    let _ = stop_tx.send(true);
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
    reports.abort();
    gateway.refusals.report();
}

/// One worker thread's share of the serving.
struct Worker {
    index: usize,
    sockets: Vec<(std::net::TcpListener, Option<TlsListener>)>,
    shared: Arc<Shared>,
    drain: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
    accepting: tokio::sync::oneshot::Sender<()>,
}

impl Worker {
    fn run(self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("cannot start a worker runtime: {e}");
                return;
            }
        };
        let Worker {
            index,
            sockets,
            shared,
            drain,
            mut stop,
            accepting,
        } = self;
        runtime.block_on(async move {
            let gateway = Arc::new(shared.gateway.for_worker());
            let mut loops = Vec::new();
            for (std, tls) in sockets {
                match TcpListener::from_std(std) {
                    Ok(tcp) => loops.push(tokio::spawn(
                        AcceptLoop {
                            worker: index,
                            listener: Listener { tcp, tls },
                            gateway: gateway.clone(),
                            shared: shared.clone(),
                            drain: drain.clone(),
                        }
                        .run(),
                    )),
                    Err(e) => tracing::error!("worker cannot use a listener: {e}"),
                }
            }
            let pressure = shared.pressure.clone();
            // Only the connections' own senders keep `run` waiting from now on.
            drop(shared);
            if !loops.is_empty() {
                pressure.accepting(index);
            }
            for l in loops {
                let _ = l.await;
            }
            let _ = accepting.send(());
            // Open connections drain on this runtime until the coordinator says stop.
            let _ = stop.wait_for(|stop| *stop).await;
        });
        // The coordinator joins this thread: a blocking task (a backend name lookup) must not
        // hold the join without limit.
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// One listener's accept loop on one worker (mini-redis's `Listener`): it takes every queued
/// connection each time it wakes (nginx's `multi_accept`), admits or closes each at once, and
/// spawns a task per admitted connection.
struct AcceptLoop {
    worker: usize,
    listener: Listener,
    /// This worker's copy.
    gateway: Arc<Gateway>,
    shared: Arc<Shared>,
    drain: watch::Receiver<bool>,
}

impl AcceptLoop {
    async fn run(mut self) {
        loop {
            if self.shared.pressure.ahead(self.worker) {
                // Another worker, woken by the same arrival, may take it (see `ahead`).
                tokio::task::yield_now().await;
            }
            let (stream, addr) = tokio::select! {
                biased;
                _ = self.drain.changed() => return,
                accepted = self.listener.tcp.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // EMFILE and friends: log, give the process a moment, keep serving.
                        tracing::error!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            self.admit(stream, addr);
        }
    }

    /// Admits a connection against its address's cap and the global one, and serves it; or
    /// closes it at once (with a reset: nothing of it lingers), counted.
    fn admit(&self, stream: TcpStream, addr: SocketAddr) {
        let shared = &self.shared;
        let metrics = &self.gateway.metrics;
        let refuse = |stream: TcpStream, reason: &'static str| {
            let _ = stream.set_zero_linger();
            metrics
                .connections_refused
                .get_or_create(&ReasonLabels { reason })
                .inc();
            let note = self.gateway.refusals.note(addr.ip(), reason, false);
            if note.log {
                tracing::warn!(peer = %addr, reason, "connection refused: {}", match reason {
                    "address_cap" => "its address holds server.max_connections_per_address already",
                    _ => "at server.max_connections, with no idle or waiting connection to close for room",
                });
            }
        };
        let scheme = match self.listener.tls {
            None => Scheme::Http,
            Some(_) => Scheme::Https,
        };
        let peer = Peer::new(addr, scheme, &self.gateway.trusted_proxies);
        let ticket = match shared.admission.admit(addr.ip(), peer.trusted) {
            Ok(ticket) => ticket,
            Err(admission::Refusal::Connections) => return refuse(stream, "address_cap"),
        };
        let Some(slot) = shared.pressure.admit(self.worker) else {
            return refuse(stream, "global_cap");
        };
        let _ = stream.set_nodelay(true);
        let client = Client::new(peer, ticket, slot.activity.clone());
        let connection = Connection {
            gateway: self.gateway.clone(),
            shared: shared.clone(),
            tls: self.listener.tls.clone(),
            drain: self.drain.clone(),
            _alive: shared.alive.clone(),
            slot,
        };
        tokio::spawn(connection.serve(stream, client));
    }
}

/// One admitted connection (mini-redis's `Handler`): what its task needs, and what it holds
/// until it ends (its place under the cap, and a sender that keeps the drain waiting).
struct Connection {
    gateway: Arc<Gateway>,
    shared: Arc<Shared>,
    tls: Option<TlsListener>,
    drain: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
    slot: Slot,
}

impl Connection {
    async fn serve(self, stream: TcpStream, client: Arc<Client>) {
        let Some(tls) = &self.tls else {
            return self.http(Proto::Sniff, TokioIo::new(stream), client).await;
        };
        let handshake = tokio::select! {
            result = tls.handshake(stream, &self.gateway.metrics) => result,
            // Chosen to make room at the cap while its handshake was still arriving.
            () = self.slot.activity.evicted() => return,
        };
        match handshake {
            Ok(stream) => {
                // ALPN said which protocol (RFC 9113 §3.2: h2 over TLS is negotiated).
                let proto = match stream.get_ref().1.alpn_protocol() {
                    Some(b"h2") => Proto::Http2,
                    _ => Proto::Http1,
                };
                self.http(proto, TokioIo::new(stream), client).await;
            }
            // Counted by the handshake itself, before the socket closed.
            Err(e) => tracing::debug!(peer = %client.peer.addr, "{e}"),
        }
    }

    async fn http<I>(&self, proto: Proto, io: I, client: Arc<Client>)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let timers = conn::Timers {
            deadlines: self.shared.deadlines,
            pressure_timeout: self.shared.pressure_timeout,
            pressure: self.shared.pressure.watch(),
        };
        conn::serve(
            &self.shared.protocols,
            proto,
            io,
            client,
            self.gateway.clone(),
            timers,
            self.drain.clone(),
        )
        .await;
    }
}

/// hyper's built-in limit on header fields.
const DEFAULT_MAX_HEADERS: usize = 100;

/// hyper's HTTP/1 header-read timeout is turned off explicitly (its default, 30 s, is silently
/// off without a timer, and a configured one panics on every connection without one: hyper
/// `common/time.rs`); the timer stays wired for HTTP/2's keep-alive pings. No header-read
/// timeout of hyper's: it would allocate and register a timer for every request. The
/// connection watchdog enforces `header_read_timeout` with one timer per connection (see
/// `conn`).
fn protocols(s: &ConnSettings) -> Protocols {
    // The same settings on hyper's builders and on the auto builder's views of them (types of
    // their own, with the same methods).
    macro_rules! http1 {
        ($b:expr) => {{
            let b = $b;
            b.timer(TokioTimer::new())
                .header_read_timeout(None)
                .keep_alive(true)
                .max_buf_size(s.max_header_bytes);
            // hyper's default (100) parses into an inline array; an explicit limit, even the
            // same one, costs a heap vector per request head.
            if s.max_headers != DEFAULT_MAX_HEADERS {
                b.max_headers(s.max_headers);
            }
        }};
    }
    macro_rules! http2 {
        ($b:expr) => {{
            $b.timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX))
                .max_concurrent_streams(s.http2_max_concurrent_streams)
                // Dead peers: a PING unanswered within 20 s ends the connection.
                .keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(20));
        }};
    }
    let mut auto = auto::Builder::new(TokioExecutor::new());
    http1!(&mut auto.http1());
    http2!(auto.http2());
    let mut http1_tls = hyper::server::conn::http1::Builder::new();
    http1!(&mut http1_tls);
    // One buffer, not a vector of them: over TLS each write is a record, and a head and a body
    // written apart would be two.
    http1_tls.writev(false);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2!(http2);
    Protocols {
        auto,
        http1_tls,
        http2,
        streams_per_address: u32::try_from(s.http2_max_streams_per_address).unwrap_or(u32::MAX),
    }
}
