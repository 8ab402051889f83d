//! The one place that talks to the backend: a request already made fit for it (its headers
//! rewritten by [`super::headers`], its body read whole) goes out on a pooled connection, and
//! the response comes back with its body watched for stalls.
//!
//! An idempotent request (RFC 9110 §9.2.2) that fails after reaching the backend without an
//! answer is sent once more on a fresh connection, as nginx's `proxy_next_upstream` does; a
//! callback (a POST) never is: once it may have reached the backend, only Click may resend it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Request, Response, Version};
use http_body_util::{Either, Full};

use super::error::ProxyError;
use super::headers;
use super::stall::{BodyObserver, StallGuard};
use super::upstream::Upstream;
use crate::lane::Lane;
use crate::metrics::Metrics;

/// A response body: the backend's stream (with a deadline between frames), or an answer the
/// gateway wrote itself.
pub type ProxyBody = Either<StallGuard, Full<Bytes>>;

/// Sends requests to the backend for one worker.
#[derive(Debug)]
pub struct Forwarder {
    pub upstream: Upstream,
    metrics: Arc<Metrics>,
}

/// What the backend answered, and how long it took to answer.
pub struct Forwarded {
    pub response: Response<ProxyBody>,
    /// From sending the request to the response headers.
    pub took: Duration,
}

impl Forwarded {
    /// Has `observer` see the response body as it streams to the client, and its end.
    pub fn observe(&mut self, observer: Box<dyn BodyObserver>) {
        if let Either::Left(body) = self.response.body_mut() {
            body.observe(observer);
        }
    }
}

impl Forwarder {
    pub fn new(upstream: Upstream, metrics: Arc<Metrics>) -> Forwarder {
        Forwarder { upstream, metrics }
    }

    /// The same backend for another worker: a pool of its own, the same ceiling.
    pub fn fresh(&self) -> Forwarder {
        Forwarder::new(self.upstream.fresh(), self.metrics.clone())
    }

    /// Sends `parts` with `body` and returns the backend's response, its body streaming
    /// through. Failures are counted and logged here, once; the caller only answers them.
    pub async fn send(
        &self,
        peer: SocketAddr,
        parts: Parts,
        body: Bytes,
        lane: Lane,
    ) -> Result<Forwarded, ProxyError> {
        let route = lane.label();
        let uri = match self.upstream.uri_for(&parts.uri) {
            Ok(uri) => uri,
            Err(e) => {
                self.metrics.upstream_error(route, e.label());
                return Err(e);
            }
        };
        let Parts {
            method, headers, ..
        } = parts;
        let retry = is_idempotent(&method).then(|| headers.clone());
        let build = |headers| {
            let mut req = Request::new(Full::new(body.clone()));
            *req.method_mut() = method.clone();
            *req.uri_mut() = uri.clone();
            *req.version_mut() = Version::HTTP_11;
            *req.headers_mut() = headers;
            req
        };
        let sent = Instant::now();
        let mut outcome = self.upstream.send(build(headers), lane).await;
        if let (Err(ProxyError::Upstream(first)), Some(headers)) = (&outcome, retry) {
            tracing::info!(peer = %peer, method = %method, path = ?uri.path(), "retrying an idempotent request once after: {first}");
            self.metrics.upstream_error(route, "retried");
            // Boxed: rare, and large (see `Pool::send`).
            outcome = Box::pin(self.upstream.send_fresh(build(headers), lane)).await;
        }
        let took = sent.elapsed();
        let series = self.metrics.route(route);
        series.upstream_seconds.observe(took.as_secs_f64());
        match outcome {
            Ok((resp, lease)) => {
                series.upstream_status(resp.status().as_u16());
                let (mut parts, body) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                let body = StallGuard::new(
                    body,
                    self.upstream.response_timeout(),
                    lease,
                    series.stalled.clone(),
                );
                Ok(Forwarded {
                    response: Response::from_parts(parts, Either::Left(body)),
                    took,
                })
            }
            Err(e) => {
                tracing::warn!(
                    peer = %peer,
                    method = %method,
                    path = ?uri.path(),
                    kind = e.label(),
                    status = e.status().as_u16(),
                    "upstream failed: {e}"
                );
                self.metrics.upstream_error(route, e.label());
                Err(e)
            }
        }
    }
}

/// RFC 9110 §9.2.2: methods whose repetition has the same effect as one request.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}
