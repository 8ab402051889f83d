//! Accepting connections and serving them with hyper (HTTP/1.1 and HTTP/2 through hyper-util's
//! auto builder), with graceful draining on shutdown.
//!
//! [`run`] takes a bound listener and a shutdown future, after tokio's mini-redis: tests start
//! the real server on `127.0.0.1:0` in-process and stop it by resolving the future.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::config::ServerSettings;
use crate::gateway::{Gateway, Peer};
use crate::proxy::Scheme;

/// Failures of the server layer: they stop the gateway from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

/// Binds the plain HTTP listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Connection-level limits and timers.
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

/// Serves `listener` until `shutdown` resolves, then stops accepting and gives open
/// connections `drain_timeout` to finish their requests (HTTP/1 connections close once idle,
/// HTTP/2 ones get GOAWAY).
pub async fn run(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    settings: ConnSettings,
    shutdown: impl Future<Output = ()>,
) {
    let builder = http_builder(&settings);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: log, give the process a moment, keep serving.
                    tracing::error!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let peer = Peer {
            addr,
            scheme: Scheme::Http,
        };
        let gw = gateway.clone();
        let service = service_fn(move |req| {
            let gw = gw.clone();
            async move { Ok::<_, Infallible>(gw.handle(peer, req).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(peer = %addr, "connection ended: {e}");
            }
        });
    }
    drop(listener);
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
