//! The request handler: one snapshot of the runtime per request, then either the callback
//! checkpoint ([`crate::intercept`]) or a plain forward to the backend, body buffered first.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::config::cidr::{any_contains, Cidr};
use crate::config::Loaded;
use crate::metrics::Metrics;
use crate::proxy::body::{read_bounded, BodyBudget, BodyError};
use crate::proxy::stall::StallGuard;
use crate::proxy::{self, headers, ProxyBody, ProxyError, Scheme, Upstream};
use crate::request_id;
use crate::runtime::{Runtime, SharedRuntime};

/// Everything a connection needs to serve requests: one per worker thread (see
/// [`Gateway::for_worker`]), sharing keys, metrics and limits.
#[derive(Debug)]
pub struct Gateway {
    pub runtime: SharedRuntime,
    pub upstream: Upstream,
    /// Bound on reading a request body once its headers are in.
    pub body_read_timeout: Duration,
    /// Largest non-callback request body (`server.max_body`).
    pub max_body: usize,
    /// Memory shared by all bodies being buffered (`server.body_buffer_memory`).
    pub body_budget: BodyBudget,
    /// Peers allowed to pass forwarding headers on (`server.trusted_proxies`).
    pub trusted_proxies: Vec<Cidr>,
    pub metrics: Arc<Metrics>,
    /// False until listeners serve, and again once draining starts (`/ready`). Shared by the
    /// per-worker copies of the gateway.
    pub ready: Arc<AtomicBool>,
}

/// Who is on the other end of a connection, and how they reached us; computed once per
/// connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub scheme: Scheme,
    /// The peer is in `server.trusted_proxies`.
    pub trusted: bool,
    /// The peer's address as an `X-Forwarded-For` value.
    pub xff: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr, scheme: Scheme, trusted_proxies: &[Cidr]) -> Peer {
        Peer {
            addr,
            scheme,
            trusted: any_contains(trusted_proxies, addr.ip()),
            xff: headers::peer_value(addr.ip()),
        }
    }
}

impl Gateway {
    /// Builds the gateway for a freshly loaded configuration (generation 1).
    pub fn new(loaded: &Loaded) -> Gateway {
        let srv = &loaded.settings.server;
        let metrics = Metrics::new();
        metrics.generation.set(1);
        metrics
            .last_reload_success
            .set(crate::clock::unix_now() as f64);
        Gateway {
            runtime: Runtime::new(loaded, 1, &metrics).shared(),
            upstream: Upstream::new(&loaded.settings.upstream),
            body_read_timeout: srv.body_read_timeout.0,
            max_body: srv.max_body.as_usize(),
            body_budget: BodyBudget::new(srv.body_buffer_memory.0),
            trusted_proxies: srv.trusted_proxies.clone(),
            metrics: Arc::new(metrics),
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The copy a worker thread serves with: the same keys, metrics and limits, its own
    /// connection pool (whose connections live on that worker's runtime). Call it on the
    /// worker's runtime.
    pub fn for_worker(&self) -> Gateway {
        Gateway {
            runtime: self.runtime.clone(),
            upstream: self.upstream.fresh(),
            body_read_timeout: self.body_read_timeout,
            max_body: self.max_body,
            body_budget: self.body_budget.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
            metrics: self.metrics.clone(),
            ready: self.ready.clone(),
        }
    }

    /// Serves one request. Never fails: every problem becomes an answer. Every request leaves
    /// with an `X-Request-Id` (the client's when well-formed, else a new one), which the
    /// backend also receives and the callback log line carries.
    pub async fn handle(
        self: Arc<Self>,
        peer: Peer,
        mut req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let request_id = request_id::ensure(req.headers_mut());
        let runtime = self.runtime.load_full();
        let mut resp = if runtime.is_callback_path(req.uri().path()) {
            let id = request_id.to_str().unwrap_or("");
            crate::intercept::callback(&self, &runtime, &peer, id, req).await
        } else {
            self.proxy(&peer, req).await
        };
        resp.headers_mut()
            .insert(request_id::HEADER.clone(), request_id);
        resp
    }

    /// Everything that is not a callback: buffer the body, then forward.
    async fn proxy(&self, peer: &Peer, req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let (parts, body) = req.into_parts();
        let declared = content_length(&parts);
        if declared.is_some_and(|n| n > self.max_body as u64) {
            self.metrics.refuse("body_too_large");
            return too_large(peer, &parts, self.max_body);
        }
        // Reserve buffer memory for the body before reading it (none for an empty one).
        let mut reservation = None;
        if !hyper::body::Body::is_end_stream(&body) {
            let need = declared.unwrap_or(self.max_body as u64);
            match self.body_budget.reserve(need, self.body_read_timeout).await {
                Ok(permit) => reservation = Some(permit),
                Err(e) => {
                    self.metrics.refuse(e.label());
                    return body_failure(peer, &parts, &e);
                }
            }
        }
        let body = match read_bounded(body, self.max_body, self.body_read_timeout).await {
            Ok(bytes) => bytes,
            Err(e) => {
                self.metrics.refuse(e.label());
                return match e {
                    BodyError::TooLarge(limit) => too_large(peer, &parts, limit),
                    e => body_failure(peer, &parts, &e),
                };
            }
        };
        self.metrics
            .proxy_route
            .gateway_seconds
            .observe(started.elapsed().as_secs_f64());
        let resp = self.forward(peer, parts, body, None, "proxy").await;
        drop(reservation);
        resp
    }

    /// Forwards a request with a buffered body and streams the answer back. `verified_for`
    /// marks a callback that passed verification with the trust header.
    ///
    /// An idempotent request (RFC 9110 §9.2.2) that fails after reaching the backend without
    /// an answer is sent once more on a fresh connection, as nginx's `proxy_next_upstream`
    /// does; a callback (a POST) never is.
    pub async fn forward(
        &self,
        peer: &Peer,
        mut parts: Parts,
        body: Bytes,
        verified_for: Option<u64>,
        route: &'static str,
    ) -> Response<ProxyBody> {
        // An HTTP/2 request carries its host in `:authority`, not in a Host header; keep it, or
        // Django would see the upstream address (wrong ALLOWED_HOSTS check, wrong absolute URLs).
        if !parts.headers.contains_key(header::HOST) {
            if let Some(host) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                parts.headers.insert(header::HOST, host);
            } else if let Ok(host) = HeaderValue::from_str(self.upstream.authority().as_str()) {
                // HTTP/1.0 without Host: name the backend, as a client would.
                parts.headers.insert(header::HOST, host);
            }
        }
        headers::for_upstream(&mut parts.headers, &peer.xff, peer.scheme, peer.trusted);
        if let Some(service_id) = verified_for {
            headers::mark_verified(&mut parts.headers, service_id);
        }
        let uri = match self.upstream.uri_for(&parts.uri) {
            Ok(uri) => uri,
            Err(e) => return proxy::error_response(&e),
        };
        let retry = is_idempotent(&parts.method).then(|| parts.headers.clone());
        let build = |headers| {
            let mut req = Request::new(Full::new(body.clone()));
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = uri.clone();
            *req.version_mut() = Version::HTTP_11;
            *req.headers_mut() = headers;
            req
        };
        let sent = Instant::now();
        let mut outcome = self.upstream.send(build(parts.headers)).await;
        if let (Err(ProxyError::Upstream(first)), Some(headers)) = (&outcome, retry) {
            tracing::info!(peer = %peer.addr, method = %parts.method, path = ?uri.path(), "retrying an idempotent request once after: {first}");
            self.metrics.upstream_error(route, "retried");
            outcome = self.upstream.send_fresh(build(headers)).await;
        }
        let series = self.metrics.route(route);
        series
            .upstream_seconds
            .observe(sent.elapsed().as_secs_f64());
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
                Response::from_parts(parts, Either::Left(body))
            }
            Err(e) => {
                tracing::warn!(
                    peer = %peer.addr,
                    method = %parts.method,
                    path = ?uri.path(),
                    kind = e.label(),
                    status = e.status().as_u16(),
                    "upstream failed: {e}"
                );
                self.metrics.upstream_error(route, e.label());
                proxy::error_response(&e)
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

pub(crate) fn content_length(parts: &Parts) -> Option<u64> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn too_large(peer: &Peer, parts: &Parts, limit: usize) -> Response<ProxyBody> {
    tracing::warn!(peer = %peer.addr, method = %parts.method, path = ?parts.uri.path(), limit, "request body too large: 413");
    proxy::closing(proxy::plain(
        StatusCode::PAYLOAD_TOO_LARGE,
        "413 Payload Too Large\n",
    ))
}

/// A body that could not be buffered: 408 (too slow), 503 (no memory), 400 (broken off).
pub fn body_failure(peer: &Peer, parts: &Parts, e: &BodyError) -> Response<ProxyBody> {
    tracing::warn!(peer = %peer.addr, method = %parts.method, path = ?parts.uri.path(), "request body: {e}");
    let resp = match e {
        BodyError::Timeout(_) => proxy::plain(StatusCode::REQUEST_TIMEOUT, "408 Request Timeout\n"),
        BodyError::Busy(_) => {
            proxy::plain(StatusCode::SERVICE_UNAVAILABLE, "503 Service Unavailable\n")
        }
        BodyError::TooLarge(_) => {
            proxy::plain(StatusCode::PAYLOAD_TOO_LARGE, "413 Payload Too Large\n")
        }
        BodyError::Aborted(_) => proxy::plain(StatusCode::BAD_REQUEST, "400 Bad Request\n"),
    };
    proxy::closing(resp)
}
