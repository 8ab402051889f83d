//! The backend: its address, its connection pool ([`super::pool`]) and the response timeout.
//!
//! Timeouts: waiting for a free connection slot and then the response headers together get
//! `response_timeout` (one deadline per attempt; a slot that never frees up is 503, a backend
//! that does not answer 504), connecting gets `connect_timeout` (in the pool), and then each
//! response body frame gets `response_timeout` again (`StallGuard`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus_client::metrics::gauge::Gauge;

use super::error::ProxyError;
use super::pool::{Lease, Pool, Slots};
use crate::config::UpstreamSettings;
use crate::lane::Lane;

/// The backend and the pool of connections that reaches it.
#[derive(Clone, Debug)]
pub struct Upstream {
    pool: Arc<Pool>,
    slots: Slots,
    settings: UpstreamSettings,
    response_timeout: Duration,
}

impl Upstream {
    /// `open` is the gauge of open backend connections.
    pub fn new(s: &UpstreamSettings, open: Gauge) -> Upstream {
        let slots = Slots::new(s.max_connections, s.callback_connections, open);
        Self::with_slots(s, slots)
    }

    fn with_slots(s: &UpstreamSettings, slots: Slots) -> Upstream {
        Upstream {
            pool: Pool::new(
                &s.url.target,
                slots.clone(),
                s.pool_max_idle,
                s.pool_idle_timeout.0,
                s.connect_timeout.0,
            ),
            slots,
            settings: s.clone(),
            response_timeout: s.response_timeout.0,
        }
    }

    /// The same backend with a pool of its own (for another worker thread), within the same
    /// ceiling on connections.
    pub fn fresh(&self) -> Upstream {
        Self::with_slots(&self.settings, self.slots.clone())
    }

    /// The ceiling on backend connections (for tests and metrics).
    pub fn slots(&self) -> &Slots {
        &self.slots
    }

    /// Bound on waiting for the response headers, and then between response body frames.
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// The `Host` of requests that came without one (HTTP/1.0): the backend's authority, or
    /// `localhost` on a unix socket.
    pub fn default_host(&self) -> &str {
        self.settings.url.default_host()
    }

    /// The origin-form request target sent to the backend: the request's path and query.
    pub fn uri_for(&self, original: &Uri) -> Result<Uri, ProxyError> {
        let path = original
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Uri::from_parts({
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(path);
            parts
        })
        .map_err(|_| ProxyError::BadUri)
    }

    /// Sends `req` (addressed with [`Upstream::uri_for`]) for `lane` and waits for the
    /// response headers, at most `response_timeout` (waiting for a connection slot
    /// included). Dropping the wait on timeout closes that connection.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        lane: Lane,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        let deadline = tokio::time::Instant::now() + self.response_timeout;
        self.pool.send(req, lane, deadline).await
    }

    /// As [`Upstream::send`], on a new connection (see [`Pool::send_fresh`]).
    pub async fn send_fresh(
        &self,
        req: Request<Full<Bytes>>,
        lane: Lane,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        let deadline = tokio::time::Instant::now() + self.response_timeout;
        self.pool.send_fresh(req, lane, deadline).await
    }
}
