//! TLS termination with rustls: a certificate resolver whose certificate can be swapped on
//! reload, and handshakes bounded in time and in number.
//!
//! Swapping the resolver's `CertifiedKey` (rather than the whole `ServerConfig`) keeps the
//! session ticketer and cache, so a certificate renewal does not cost clients their TLS
//! resumption (a lesson from rpxy's reloads). The resolver ignores SNI: one gateway, one
//! certificate, whose names `check` lists.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::tls::provider;
use crate::metrics::{Metrics, ReasonLabels};

/// Serves whichever certificate was stored last.
#[derive(Debug)]
pub struct CertResolver(ArcSwap<CertifiedKey>);

impl CertResolver {
    pub fn new(initial: Arc<CertifiedKey>) -> Arc<CertResolver> {
        Arc::new(CertResolver(ArcSwap::new(initial)))
    }

    /// The certificate handshakes get now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.0.load_full()
    }

    /// Installs a new certificate for every handshake from now on; open connections keep
    /// the session they negotiated.
    pub fn store(&self, key: Arc<CertifiedKey>) {
        self.0.store(key);
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Why a TLS connection ended before HTTP.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS setup failed: {0}")]
    Config(#[from] rustls::Error),
    #[error("TLS handshake not completed within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
}

/// TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, certificates from `resolver`.
pub fn acceptor(resolver: Arc<CertResolver>) -> Result<TlsAcceptor, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The TLS side of a listener: the acceptor and the limits on handshakes.
#[derive(Clone)]
pub struct TlsListener {
    pub acceptor: TlsAcceptor,
    pub handshake_timeout: Duration,
    /// Handshakes in progress; a connection waits for a permit within its deadline.
    pub handshakes: Arc<Semaphore>,
}

impl TlsListener {
    pub fn new(acceptor: TlsAcceptor, handshake_timeout: Duration, max_handshakes: usize) -> Self {
        TlsListener {
            acceptor,
            handshake_timeout,
            handshakes: Arc::new(Semaphore::new(max_handshakes)),
        }
    }

    /// Completes the handshake, or gives up at the deadline (counted from accept, waiting
    /// for a handshake slot included), so idle and slow clients cannot hold sockets. Failures
    /// are counted before the socket is closed.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        metrics: &Metrics,
    ) -> Result<TlsStream<TcpStream>, TlsError> {
        let work = async {
            let _permit = self.handshakes.acquire().await;
            self.acceptor.accept(tcp).await
        };
        tokio::pin!(work);
        let failure = |reason| {
            metrics
                .tls_handshake_failures
                .get_or_create(&ReasonLabels { reason })
                .inc();
        };
        tokio::select! {
            result = &mut work => result.map_err(|e| {
                failure("error");
                TlsError::Handshake(e)
            }),
            () = tokio::time::sleep(self.handshake_timeout) => {
                failure("timeout");
                Err(TlsError::HandshakeTimeout(self.handshake_timeout))
            }
        }
    }
}
