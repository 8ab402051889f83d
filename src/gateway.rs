//! The request handler: one snapshot of the runtime per request, then either the callback
//! checkpoint ([`crate::intercept`]) or a plain forward to the backend.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, Version};
use http_body_util::Either;
use hyper::body::Incoming;

use crate::config::cidr::{any_contains, Cidr};
use crate::config::Loaded;
use crate::proxy::{self, headers, ProxyBody, Scheme, Upstream};
use crate::runtime::{Runtime, SharedRuntime};

/// Everything a connection needs to serve requests. Cheap to share: one per process.
#[derive(Debug)]
pub struct Gateway {
    pub runtime: SharedRuntime,
    pub upstream: Upstream,
    /// Bound on reading a callback body once its headers are in.
    pub body_read_timeout: Duration,
    /// Peers allowed to pass forwarding headers on (`server.trusted_proxies`).
    pub trusted_proxies: Vec<Cidr>,
}

/// Who is on the other end of a connection, and how they reached us.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    pub scheme: Scheme,
}

impl Gateway {
    /// Builds the gateway for a freshly loaded configuration (generation 1).
    pub fn new(loaded: &Loaded) -> Gateway {
        Gateway {
            runtime: Runtime::new(loaded, 1).shared(),
            upstream: Upstream::new(&loaded.settings.upstream),
            body_read_timeout: loaded.settings.server.body_read_timeout.0,
            trusted_proxies: loaded.settings.server.trusted_proxies.clone(),
        }
    }

    /// Serves one request. Never fails: every problem becomes an answer.
    pub async fn handle(
        self: Arc<Self>,
        peer: Peer,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let runtime = self.runtime.load_full();
        if runtime.is_callback_path(req.uri().path()) {
            crate::intercept::callback(&self, &runtime, peer, req).await
        } else {
            self.forward(peer, req.map(Either::Left), None).await
        }
    }

    /// Forwards a request to the backend and streams the answer back. `verified_for` marks a
    /// callback that passed verification with the trust header.
    pub async fn forward(
        &self,
        peer: Peer,
        req: Request<ProxyBody>,
        verified_for: Option<u64>,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = req.into_parts();
        // An HTTP/2 request carries its host in `:authority`, not in a Host header; keep it, or
        // Django would see the upstream address (wrong ALLOWED_HOSTS check, wrong absolute URLs).
        if !parts.headers.contains_key(header::HOST) {
            if let Some(host) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                parts.headers.insert(header::HOST, host);
            }
        }
        let trusted = any_contains(&self.trusted_proxies, peer.addr.ip());
        headers::for_upstream(&mut parts.headers, peer.addr.ip(), peer.scheme, trusted);
        if let Some(service_id) = verified_for {
            headers::mark_verified(&mut parts.headers, service_id);
        }
        parts.uri = match self.upstream.uri_for(&parts.uri) {
            Ok(uri) => uri,
            Err(e) => return proxy::error_response(&e),
        };
        parts.version = Version::HTTP_11;
        // Kept for the log line of a failure; both clones are reference counts.
        let method = parts.method.clone();
        let uri = parts.uri.clone();
        match self.upstream.send(Request::from_parts(parts, body)).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Either::Left(body))
            }
            Err(e) => {
                tracing::warn!(
                    peer = %peer.addr,
                    %method,
                    path = ?uri.path(),
                    kind = e.label(),
                    status = e.status().as_u16(),
                    "upstream failed: {e}"
                );
                proxy::error_response(&e)
            }
        }
    }
}
