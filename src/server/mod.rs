//! Accepting connections (plain and TLS) and serving them with hyper: HTTP/1.1 and HTTP/2
//! through hyper-util's auto builder, with graceful draining on shutdown.
//!
//! [`run`] takes bound listeners and a shutdown future, after tokio's mini-redis: tests start
//! the real server on `127.0.0.1:0` in-process and stop it by resolving the future.

pub mod conn;
pub mod send_deadline;
pub mod tls;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::config::ServerSettings;
use crate::gateway::{Client, Gateway, Peer};
use crate::proxy::Scheme;
use conn::{Deadlines, Proto, Protocols};
use prometheus_client::metrics::gauge::Gauge;
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

/// Binds a TCP listener; `setting` is the one that names `addr`, for the error.
pub async fn bind(setting: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
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
    pub max_connections: usize,
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
            max_connections: s.max_connections,
            max_header_bytes: s.max_header_bytes.as_usize(),
            max_headers: s.max_headers,
            send_timeout: s.send_timeout.0,
            http2_max_concurrent_streams: s.http2_max_concurrent_streams,
        }
    }
}

/// Open connections and the cap on them, shared by the accept loops.
#[derive(Debug)]
pub struct Connections {
    open: AtomicUsize,
    /// Open connections of each worker, for [`Connections::ahead`]; [`NOT_ACCEPTING`] for a
    /// worker whose accept loops have not started (or never will).
    per_worker: Box<[AtomicUsize]>,
    permits: Arc<Semaphore>,
}

/// The count of a worker that takes no connections, which no other worker is ever "ahead" of.
const NOT_ACCEPTING: usize = usize::MAX;

/// How long a worker that holds more than its share of connections leaves a new one to the
/// others before taking it anyway (see [`Connections::ahead`]).
const BALANCE_WAIT: Duration = Duration::from_millis(1);

impl Connections {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Whether `worker` holds two or more connections more than another worker.
    ///
    /// All workers wait on the same listening socket, and whichever wakes first accepts
    /// everything queued: a burst of new connections (a load balancer's, or a client pool's
    /// start) would otherwise land on one worker while the other idles (58 of 65 connections of
    /// a `wrk` run on one of two workers, before this). A worker that is ahead leaves new
    /// connections to the others, which are woken by the same arrival, for at most
    /// [`BALANCE_WAIT`]; it takes them itself after that, so a busy or stuck worker delays a
    /// connection by a millisecond and loses none. nginx's answer is the same in spirit
    /// (`accept_mutex`, `EPOLLEXCLUSIVE`); `SO_REUSEPORT` sockets per worker would also
    /// balance, but would let a second instance started by mistake share the port silently
    /// instead of failing to bind.
    fn ahead(&self, worker: usize) -> bool {
        let Some(mine) = self.per_worker.get(worker) else {
            return false;
        };
        let mine = mine.load(Ordering::Relaxed);
        self.per_worker
            .iter()
            .enumerate()
            .any(|(i, other)| i != worker && other.load(Ordering::Relaxed).saturating_add(1) < mine)
    }
}

/// Held by a connection task for its whole life. `run` knows every connection has ended when
/// all the `alive` senders are gone.
struct ConnGuard {
    connections: Arc<Connections>,
    worker: usize,
    gauge: Gauge,
    _alive: mpsc::Sender<()>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.connections.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(mine) = self.connections.per_worker.get(self.worker) {
            mine.fetch_sub(1, Ordering::Relaxed);
        }
        self.gauge.dec();
    }
}

/// Serves every listener until `shutdown` resolves, then stops accepting and gives open
/// connections `drain_timeout` to finish their requests (HTTP/1 connections close once idle,
/// HTTP/2 ones get GOAWAY).
///
/// Connections are served by `workers` threads, each with a single-threaded tokio runtime
/// and its own pool of backend connections, all accepting on the same sockets (nginx's
/// worker model) and kept to even shares of the connections (see [`Connections::ahead`]).
/// A request, its backend connection and its timers then live on one thread: no work
/// stealing, no cross-thread wake-ups on the hot path. The caller's runtime keeps
/// only this coordinator, signals, the admin listener and reloads.
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
    let builder = Arc::new(protocols(&settings));
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    let workers_n = settings.workers.max(1);
    let connections = Arc::new(Connections {
        open: AtomicUsize::new(0),
        per_worker: (0..workers_n)
            .map(|_| AtomicUsize::new(NOT_ACCEPTING))
            .collect(),
        permits: Arc::new(Semaphore::new(settings.max_connections)),
    });
    let (drain_tx, drain_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let deadlines = Deadlines {
        first_request: settings.header_read_timeout,
        idle: settings.idle_timeout,
        send: settings.send_timeout,
    };
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
            gateway: gateway.clone(),
            builder: builder.clone(),
            connections: connections.clone(),
            alive: alive.clone(),
            deadlines,
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
        connections = connections.open(),
        deadline = ?settings.drain_timeout,
        "draining"
    );
    // Only the connections' own senders remain once ours is gone.
    drop(alive);
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
}

/// One worker thread's share of the serving.
struct Worker {
    index: usize,
    sockets: Vec<(std::net::TcpListener, Option<TlsListener>)>,
    gateway: Arc<Gateway>,
    builder: Arc<conn::Protocols>,
    connections: Arc<Connections>,
    alive: mpsc::Sender<()>,
    deadlines: Deadlines,
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
            gateway,
            builder,
            connections,
            alive,
            deadlines,
            drain,
            mut stop,
            accepting,
        } = self;
        runtime.block_on(async move {
            let gateway = Arc::new(gateway.for_worker());
            let mut loops = Vec::new();
            for (std, tls) in sockets {
                match TcpListener::from_std(std) {
                    Ok(tcp) => loops.push(tokio::spawn(accept_loop(
                        index,
                        Listener { tcp, tls },
                        gateway.clone(),
                        builder.clone(),
                        (connections.clone(), alive.clone()),
                        deadlines,
                        drain.clone(),
                    ))),
                    Err(e) => tracing::error!("worker cannot use a listener: {e}"),
                }
            }
            drop(alive);
            if !loops.is_empty() {
                if let Some(mine) = connections.per_worker.get(index) {
                    mine.store(0, Ordering::Relaxed);
                }
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

async fn accept_loop(
    worker: usize,
    listener: Listener,
    gateway: Arc<Gateway>,
    builder: Arc<conn::Protocols>,
    (connections, alive): (Arc<Connections>, mpsc::Sender<()>),
    deadlines: Deadlines,
    mut drain: watch::Receiver<bool>,
) {
    loop {
        // At the connection cap, stop accepting: new clients wait in the kernel's queue.
        let permit = tokio::select! {
            biased;
            _ = drain.changed() => return,
            permit = connections.permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        if connections.ahead(worker) {
            tokio::select! {
                biased;
                _ = drain.changed() => return,
                () = tokio::time::sleep(BALANCE_WAIT) => {}
            }
        }
        let (stream, addr) = tokio::select! {
            biased;
            _ = drain.changed() => return,
            accepted = listener.tcp.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: log, give the process a moment, keep serving.
                    tracing::error!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        connections.open.fetch_add(1, Ordering::Relaxed);
        if let Some(mine) = connections.per_worker.get(worker) {
            mine.fetch_add(1, Ordering::Relaxed);
        }
        gateway.metrics.open_connections.inc();
        let guard = ConnGuard {
            connections: connections.clone(),
            worker,
            gauge: gateway.metrics.open_connections.clone(),
            _alive: alive.clone(),
            _permit: permit,
        };
        let (gw, builder, tls, drain) = (
            gateway.clone(),
            builder.clone(),
            listener.tls.clone(),
            drain.clone(),
        );
        tokio::spawn(async move {
            let _guard = guard;
            match tls {
                None => {
                    let client = Client::new(Peer::new(addr, Scheme::Http, &gw.trusted_proxies));
                    let io = TokioIo::new(stream);
                    conn::serve(&builder, Proto::Sniff, io, client, gw, deadlines, drain).await;
                }
                Some(tls) => match tls.handshake(stream, &gw.metrics).await {
                    Ok(stream) => {
                        let client =
                            Client::new(Peer::new(addr, Scheme::Https, &gw.trusted_proxies));
                        // ALPN said which protocol (RFC 9113 §3.2: h2 over TLS is negotiated).
                        let proto = match stream.get_ref().1.alpn_protocol() {
                            Some(b"h2") => Proto::Http2,
                            _ => Proto::Http1,
                        };
                        let io = TokioIo::new(stream);
                        conn::serve(&builder, proto, io, client, gw, deadlines, drain).await;
                    }
                    // Counted by the handshake itself, before the socket closed.
                    Err(e) => tracing::debug!(peer = %addr, "{e}"),
                },
            }
        });
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connections(counts: &[usize]) -> Connections {
        Connections {
            open: AtomicUsize::new(0),
            per_worker: counts.iter().map(|&n| AtomicUsize::new(n)).collect(),
            permits: Arc::new(Semaphore::new(1)),
        }
    }

    #[test]
    fn a_worker_is_ahead_only_when_it_holds_two_more_than_another() {
        let c = connections(&[5, 3]);
        assert!(c.ahead(0));
        assert!(!c.ahead(1));
        let c = connections(&[4, 3, 9]);
        assert!(!c.ahead(0), "one over is an even split of an odd count");
        assert!(c.ahead(2));
        assert!(
            !connections(&[7]).ahead(0),
            "a single worker takes everything"
        );
        assert!(
            !connections(&[0, 0]).ahead(5),
            "an unknown worker is never held back"
        );
        assert!(
            !connections(&[9, NOT_ACCEPTING]).ahead(0),
            "a worker that never started accepting is not waited for"
        );
    }
}
