//! The pooled HTTP client to the backend, with the timeouts hyper-util leaves off by default.
//!
//! - connect timeout: `HttpConnector` has none unless set;
//! - response timeout: the legacy client has none; it bounds the wait for response headers;
//! - idle timeout: `pool_idle_timeout` only works with a `pool_timer`, and must stay below the
//!   backend's keep-alive so the gateway, not gunicorn, closes idle connections (otherwise a
//!   request can be written into a connection gunicorn is closing: a 502 out of nowhere).
//!
//! Retries: hyper-util retries a request only when it was never written to a reused connection
//! (`retry_canceled_requests`), which is provably safe even for a callback. Nothing else is
//! retried: a callback that reached the backend may have been acted on (nginx's
//! `non_idempotent` rule).

use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::ProxyError;
use crate::config::UpstreamSettings;

/// The backend and the client that reaches it.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: Client<HttpConnector, Full<Bytes>>,
    authority: Authority,
    response_timeout: Duration,
}

impl Upstream {
    pub fn new(s: &UpstreamSettings) -> Upstream {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(s.connect_timeout.0));
        http.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(s.pool_idle_timeout.0)
            .pool_max_idle_per_host(s.pool_max_idle)
            .timer(TokioTimer::new())
            .build(http);
        Upstream {
            client,
            authority: s.url.authority.clone(),
            response_timeout: s.response_timeout.0,
        }
    }

    /// Bound on waiting for the response headers, and then between response body frames.
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// The absolute URI the backend is asked for: its authority, the request's path and query.
    pub fn uri_for(&self, original: &Uri) -> Result<Uri, ProxyError> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            original
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).map_err(|_| ProxyError::BadUri)
    }

    /// Sends `req` (already addressed with [`Upstream::uri_for`]) and waits for the response
    /// headers, at most `response_timeout`.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, ProxyError> {
        match tokio::time::timeout(self.response_timeout, self.client.request(req)).await {
            Err(_) => Err(ProxyError::Timeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(ProxyError::from_client(e)),
        }
    }
}
