//! The backend: its address, its connection pool ([`super::pool`]) and the response timeout.
//!
//! Timeouts: connecting (`connect_timeout`, in the pool), the response headers
//! (`response_timeout`, here) and then each response body frame (`StallGuard`). Retries: only
//! a request the pool provably never wrote is resent by the pool; an idempotent one may be
//! resent once by the gateway; a callback that reached the backend never is (nginx's
//! `non_idempotent` rule).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;

use super::pool::{Lease, Pool};
use super::ProxyError;
use crate::config::UpstreamSettings;

/// The backend and the pool of connections that reaches it.
#[derive(Clone, Debug)]
pub struct Upstream {
    pool: Arc<Pool>,
    settings: UpstreamSettings,
    authority: Authority,
    response_timeout: Duration,
}

impl Upstream {
    pub fn new(s: &UpstreamSettings) -> Upstream {
        Upstream {
            settings: s.clone(),
            pool: Pool::new(
                s.url.authority.as_str(),
                s.pool_max_idle,
                s.pool_idle_timeout.0,
                s.connect_timeout.0,
            ),
            authority: s.url.authority.clone(),
            response_timeout: s.response_timeout.0,
        }
    }

    /// The same backend with a pool of its own (for another worker thread).
    pub fn fresh(&self) -> Upstream {
        Upstream::new(&self.settings)
    }

    /// Bound on waiting for the response headers, and then between response body frames.
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// The backend's authority, for requests that came without a `Host`.
    pub fn authority(&self) -> &Authority {
        &self.authority
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

    /// Sends `req` (addressed with [`Upstream::uri_for`]) and waits for the response headers,
    /// at most `response_timeout`. Dropping the wait on timeout closes that connection.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        match tokio::time::timeout(self.response_timeout, self.pool.send(req)).await {
            Err(_) => Err(ProxyError::Timeout),
            Ok(result) => result,
        }
    }

    /// As [`Upstream::send`], on a new connection (see [`Pool::send_fresh`]).
    pub async fn send_fresh(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        match tokio::time::timeout(self.response_timeout, self.pool.send_fresh(req)).await {
            Err(_) => Err(ProxyError::Timeout),
            Ok(result) => result,
        }
    }
}
