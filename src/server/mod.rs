//! Accepting connections (plain and TLS) and serving them with hyper: HTTP/1.1 and HTTP/2
//! through hyper-util's auto builder, with graceful draining on shutdown.
//!
//! [`run`] takes bound listeners and a shutdown future, after tokio's mini-redis: tests start
//! the real server on `127.0.0.1:0` in-process and stop it by resolving the future.

pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::ServerSettings;
use crate::gateway::{Gateway, Peer};
use crate::proxy::Scheme;
pub use tls::TlsListener;

/// Failures of the server layer: they stop the gateway from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Binds a TCP listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
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

/// Connection-level timers.
#[derive(Debug, Clone)]
pub struct ConnSettings {
    pub header_read_timeout: Duration,
    pub drain_timeout: Duration,
}

impl From<&ServerSettings> for ConnSettings {
    fn from(s: &ServerSettings) -> Self {
        ConnSettings {
            header_read_timeout: s.header_read_timeout.0,
            drain_timeout: s.drain_timeout.0,
        }
    }
}

/// Serves every listener until `shutdown` resolves, then stops accepting and gives open
/// connections `drain_timeout` to finish their requests (HTTP/1 connections close once idle,
/// HTTP/2 ones get GOAWAY).
pub async fn run(
    listeners: Vec<Listener>,
    gateway: Arc<Gateway>,
    settings: ConnSettings,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(http_builder(&settings));
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = watch::channel(());
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            tokio::spawn(accept_loop(
                l,
                gateway.clone(),
                builder.clone(),
                graceful.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    shutdown.await;
    let _ = stop_tx.send(());
    for l in loops {
        // Each loop returns promptly once told to stop; its listener is dropped with it.
        let _ = l.await;
    }
    let Ok(graceful) = Arc::try_unwrap(graceful) else {
        tracing::warn!("drain bookkeeping still shared; waiting out the drain deadline");
        tokio::time::sleep(settings.drain_timeout).await;
        return;
    };
    tracing::info!(
        connections = graceful.count(),
        deadline = ?settings.drain_timeout,
        "draining"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(settings.drain_timeout) => {
            tracing::warn!("drain deadline passed; closing remaining connections");
        }
    }
}

async fn accept_loop(
    listener: Listener,
    gateway: Arc<Gateway>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<()>,
) {
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.tcp.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: log, give the process a moment, keep serving.
                    tracing::error!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        // Taken before the handshake, so a drain also waits for connections still in TLS.
        let watcher = graceful.watcher();
        let (gw, builder, tls) = (gateway.clone(), builder.clone(), listener.tls.clone());
        tokio::spawn(async move {
            match tls {
                None => {
                    let peer = Peer {
                        addr,
                        scheme: Scheme::Http,
                    };
                    serve(&builder, TokioIo::new(stream), peer, gw, watcher).await;
                }
                Some(tls) => match tls.handshake(stream).await {
                    Ok(stream) => {
                        let peer = Peer {
                            addr,
                            scheme: Scheme::Https,
                        };
                        serve(&builder, TokioIo::new(stream), peer, gw, watcher).await;
                    }
                    Err(e) => tracing::debug!(peer = %addr, "{e}"),
                },
            }
        });
    }
}

async fn serve<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    peer: Peer,
    gateway: Arc<Gateway>,
    watcher: Watcher,
) where
    I: Read + Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let gw = gateway.clone();
        async move { Ok::<_, Infallible>(gw.handle(peer, req).await) }
    });
    let conn = builder.serve_connection(io, service).into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(peer = %peer.addr, "connection ended: {e}");
    }
}

/// hyper's HTTP/1 header-read timeout only runs with a timer: without one a configured timeout
/// panics on every connection, and the default one is silently off (hyper `common/time.rs`).
fn http_builder(s: &ConnSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(s.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    builder
}
