//! The request handler, one stage after another and never back up:
//!
//! 1. one snapshot of the runtime (keys and reloadable settings) for the whole request;
//! 2. the lane, from the path alone ([`crate::lane`]);
//! 3. the message the backend will read: hop-by-hop fields removed (those named by
//!    `Connection` included), forwarding fields set, `Host` from `:authority` for HTTP/2
//!    ([`crate::proxy::headers`]) — before anything is judged, so the checkpoint never
//!    verifies something other than what is forwarded;
//! 4. the body, read whole within the lane's memory budget and `body_read_timeout`;
//! 5. callbacks only: the checkpoint's [`Judgment`] (answer in Click's format, or forward);
//! 6. the forward ([`crate::proxy::forward`]), the only stage that talks to the backend.
//!
//! Every answer the gateway writes itself comes from [`crate::answer`].

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Request, Response, Version};
use hyper::body::{Body, Incoming};

use crate::answer::{self, Refusal};
use crate::body::{read_bounded, BodyError};
use crate::checkpoint::{self, Arrival, Decision, Judgment, LogContext, Upstream as Answered};
use crate::click::{ClickError, Echo, RejectReason, MAX_CALLBACK_BODY};
use crate::config::cidr::Cidr;
use crate::config::Loaded;
use crate::guard::{self, Ruling};
use crate::lane::{Lane, Reservation};
use crate::ledger::{AnswerTap, Backend, Ledger, LedgerError, Timings};
use crate::metrics::Metrics;
use crate::proxy::{headers, Forwarder, ProxyBody, Upstream};
use crate::refusals::Refusals;
use crate::request_id;
use crate::runtime::{Runtime, SharedRuntime};
use crate::server::client::{Client, Peer};

/// Everything a connection needs to serve requests: one per worker thread (see
/// [`Gateway::for_worker`]), sharing keys, metrics and limits.
#[derive(Debug)]
pub struct Gateway {
    pub runtime: SharedRuntime,
    pub forwarder: Forwarder,
    /// Bound on reading a request body once its headers are in.
    pub body_read_timeout: Duration,
    /// Largest non-callback request body (`server.max_body`).
    pub max_body: usize,
    /// The body memory of the two lanes, shared by every worker.
    pub budgets: crate::lane::Budgets,
    /// What refusals may cost the log and the ledger, per client address.
    pub refusals: Arc<Refusals>,
    /// Peers allowed to pass forwarding headers on (`server.trusted_proxies`).
    pub trusted_proxies: Vec<Cidr>,
    pub metrics: Arc<Metrics>,
    /// The callback ledger (`[ledger] database`), when configured.
    pub ledger: Option<Ledger>,
    /// Where the replay guard's bindings are kept (see [`Ledger::open_guard_store`]); the
    /// ledger itself for a store that keeps them.
    pub guard_store: Option<Ledger>,
    /// False until listeners serve, and again once draining starts (`/ready`). Shared by the
    /// per-worker copies of the gateway.
    pub ready: Arc<AtomicBool>,
}

impl Gateway {
    /// Builds the gateway for a freshly loaded configuration (generation 1), opening its
    /// ledger when one is configured (a ledger that cannot be opened keeps it from starting:
    /// `check` reports the same cases).
    pub fn new(loaded: &Loaded) -> Result<Gateway, LedgerError> {
        let srv = &loaded.settings.server;
        let metrics = Arc::new(Metrics::new());
        metrics.generation.set(1);
        metrics
            .last_reload_success
            .set(crate::clock::unix_now() as f64);
        let upstream = Upstream::new(
            &loaded.settings.upstream,
            metrics.upstream_open_connections.clone(),
        );
        let ledger = match loaded.settings.ledger.database {
            Some(_) => Some(Ledger::open(&loaded.settings.ledger, metrics.clone())?),
            None => None,
        };
        let guard_store = match &ledger {
            Some(ledger) => {
                Ledger::open_guard_store(&loaded.settings.ledger)?.or_else(|| Some(ledger.clone()))
            }
            None => None,
        };
        Ok(Gateway {
            runtime: Runtime::new(loaded, 1, &metrics).shared(),
            forwarder: Forwarder::new(upstream, metrics.clone()),
            body_read_timeout: srv.body_read_timeout.0,
            max_body: srv.max_body.as_usize(),
            budgets: crate::lane::Budgets::new(srv),
            refusals: Refusals::new(loaded.settings.ledger.refused_per_second, &metrics),
            trusted_proxies: srv.trusted_proxies.clone(),
            metrics,
            ledger,
            guard_store,
            ready: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The copy a worker thread serves with: the same keys, metrics and limits, its own
    /// connection pool (whose connections live on that worker's runtime). Call it on the
    /// worker's runtime.
    pub fn for_worker(&self) -> Gateway {
        Gateway {
            runtime: self.runtime.clone(),
            forwarder: self.forwarder.fresh(),
            body_read_timeout: self.body_read_timeout,
            max_body: self.max_body,
            budgets: self.budgets.clone(),
            refusals: self.refusals.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
            metrics: self.metrics.clone(),
            ledger: self.ledger.clone(),
            guard_store: self.guard_store.clone(),
            ready: self.ready.clone(),
        }
    }

    /// Serves one request. Never fails: every problem becomes an answer. Every request leaves
    /// with an `X-Request-Id` (the client's when well-formed, else a new one), which the
    /// backend also receives and the callback log line carries.
    pub async fn handle(
        self: Arc<Self>,
        client: Arc<Client>,
        mut req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let request_id = request_id::ensure(req.headers_mut());
        let runtime = self.runtime.load_full();
        let (mut parts, body) = req.into_parts();
        let lane = if runtime.is_callback_path(parts.uri.path()) {
            Lane::Callback
        } else {
            Lane::General
        };
        let peer = &client.peer;
        // Read before the forwarding fields are rewritten below.
        let client_ip = match lane {
            Lane::Callback => {
                headers::client_ip(&parts.headers, peer.addr.ip(), &self.trusted_proxies)
            }
            Lane::General => peer.addr.ip(),
        };
        self.for_backend(peer, &mut parts);
        let mut resp = match lane {
            Lane::General => self.general(&client, parts, body).await,
            Lane::Callback => {
                let log = LogContext {
                    peer,
                    client: client_ip,
                    request_id: request_id.to_str().unwrap_or(""),
                    runtime: &runtime,
                };
                self.callback(&client, &log, parts, body).await
            }
        };
        resp.headers_mut()
            .insert(request_id::HEADER.clone(), request_id);
        resp
    }

    /// Rewrites the head into the message the backend will read (step 3 of the module docs).
    fn for_backend(&self, peer: &Peer, parts: &mut Parts) {
        // An HTTP/2 request carries its host in `:authority`, not in a Host header; keep it, or
        // Django would see the upstream address (wrong ALLOWED_HOSTS check, wrong absolute URLs).
        if !parts.headers.contains_key(header::HOST) {
            let host = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                // HTTP/1.0 without Host: name the backend, as a client would.
                .or_else(|| HeaderValue::from_str(self.forwarder.upstream.default_host()).ok());
            if let Some(host) = host {
                parts.headers.insert(header::HOST, host);
            }
        }
        headers::for_upstream(&mut parts.headers, &peer.xff, peer.scheme, peer.trusted);
        if parts.version == Version::HTTP_2 {
            headers::join_cookie_crumbs(&mut parts.headers);
        }
    }

    /// Everything that is not a callback: buffer the body, then forward.
    async fn general(&self, client: &Client, parts: Parts, body: Incoming) -> Response<ProxyBody> {
        let started = Instant::now();
        let peer = &client.peer;
        let declared = content_length(&parts.headers);
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return self.refuse_body(
                peer,
                peer.addr.ip(),
                &parts,
                BodyError::TooLarge(self.max_body),
            );
        }
        let (_reservation, body) = match self
            .buffer(Lane::General, client, &parts, body, self.max_body)
            .await
        {
            Ok(read) => read,
            Err(e) => return self.refuse_body(peer, peer.addr.ip(), &parts, e),
        };
        self.metrics
            .proxy_route
            .gateway_seconds
            .observe(started.elapsed().as_secs_f64());
        match self
            .forwarder
            .send(peer.addr, parts, body, Lane::General)
            .await
        {
            Ok(forwarded) => forwarded.response,
            Err(e) => answer::refusal(&Refusal::Upstream(e)),
        }
    }

    /// A request to a callback path: judged by the checkpoint, then answered or forwarded,
    /// and kept in the ledger (when there is one) whatever happened to it.
    async fn callback(
        &self,
        client: &Client,
        log: &LogContext<'_>,
        mut parts: Parts,
        body: Incoming,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let runtime = log.runtime;
        let arrival = self.ledger.as_ref().map(|_| Arrival::of(&parts));
        let declared = content_length(&parts.headers);
        let head = checkpoint::precheck(&parts, declared);
        // Limits are never shadowed: what was not read cannot be forwarded.
        if let Err(RejectReason::BodyTooLarge) = head {
            return self.refuse_too_large(log, arrival);
        }
        let (_reservation, body) = match self
            .buffer(Lane::Callback, client, &parts, body, MAX_CALLBACK_BODY)
            .await
        {
            Ok(read) => read,
            Err(BodyError::TooLarge(_)) => return self.refuse_too_large(log, arrival),
            // Transport failures are not Click errors: Click sees no answer and retries.
            Err(e) => {
                let note = self
                    .refusals
                    .note(log.client, e.label(), self.ledger.is_some());
                if let (Some(ledger), Some(arrival), true) = (&self.ledger, arrival, note.record) {
                    ledger.record(log.refused(
                        arrival,
                        e.label(),
                        e.to_string(),
                        started.elapsed(),
                    ));
                }
                return self.refused_body(log.peer, &parts, e, note.log);
            }
        };

        let parsed = checkpoint::parse(head, &body);
        let mut judgment = checkpoint::judge(runtime, &parsed);
        // One signature, one message: a verified callback on its way to the backend is bound
        // to its fields first (committed before it is forwarded).
        let ruling = match (
            &self.guard_store,
            &runtime.guard,
            &parsed,
            &judgment.callback,
        ) {
            (Some(store), Some(rules), Ok(form), Some(cb))
                if matches!(judgment.decision(), Decision::Forward { vouch: Some(_) }) =>
            {
                let enforced = judgment.service_enforced();
                Some(
                    guard::check(
                        rules,
                        store,
                        &self.metrics,
                        form,
                        cb,
                        log.request_id,
                        enforced,
                    )
                    .await,
                )
            }
            _ => None,
        };
        match ruling {
            None | Some(Ruling::Pass) => {}
            Some(Ruling::Fails(reason, mode)) => judgment.rule_failed(reason, mode),
            Some(Ruling::Unguarded(why)) => {
                tracing::warn!(request_id = log.request_id, "replay guard unavailable ({why}): forwarded unguarded (guard.on_store_error = \"allow\", or no rule enforced for this callback)");
            }
            Some(Ruling::Unavailable(why)) => {
                self.metrics.refuse("guard_unavailable");
                tracing::warn!(request_id = log.request_id, peer = %log.peer.addr, "replay guard unavailable ({why}): callback refused with 503, Click retries (guard.on_store_error = \"refuse\")");
                if let (Some(ledger), Some(arrival)) = (&self.ledger, arrival) {
                    ledger.record(log.refused(
                        arrival,
                        "guard_unavailable",
                        why,
                        started.elapsed(),
                    ));
                }
                return answer::refusal(&Refusal::GuardUnavailable);
            }
        }
        let gateway_time = started.elapsed();
        judgment.count(&self.metrics, runtime, gateway_time);
        let vouch = match judgment.decision() {
            Decision::Answer(error) => {
                // A refusal: its line and its row within the sender's budgets (verified
                // callbacks refused by the guard included: a replay flood is a flood too).
                let reason = judgment
                    .failure
                    .as_ref()
                    .map_or("none", RejectReason::label);
                let note = self
                    .refusals
                    .note(log.client, reason, self.ledger.is_some());
                log.line(&judgment, None, gateway_time, note.log);
                if let (Some(ledger), Some(arrival), true) = (&self.ledger, arrival, note.record) {
                    let timings = Timings {
                        gateway: gateway_time,
                        upstream: None,
                        total: gateway_time,
                    };
                    ledger.record(log.record(&judgment, arrival, body.clone(), timings));
                }
                return answer::click_error(error, &judgment.echo);
            }
            Decision::Forward { vouch } => vouch,
        };
        // Verified, or shadow mode: forward the exact bytes; vouch only for a valid signature.
        if let Some(service_id) = vouch {
            let attestation = runtime
                .trust
                .as_ref()
                .and_then(|t| t.attest(crate::clock::unix_now(), service_id, &body));
            let service = runtime.service_labels.counters(service_id).map_or_else(
                || HeaderValue::from(service_id),
                |c| c.verified_header.clone(),
            );
            headers::mark_verified(&mut parts.headers, service, attestation);
        }
        // A reference count: the judgment still borrows the body for the log line.
        let sent = self
            .forwarder
            .send(log.peer.addr, parts, body.clone(), Lane::Callback)
            .await;
        let total = started.elapsed();
        let (upstream, status, took) = match &sent {
            Ok(f) => {
                let status = f.response.status().as_u16();
                (Answered::Answered(status, f.took), status, Some(f.took))
            }
            Err(e) => (
                Answered::Failed(e.label(), e.status().as_u16()),
                e.status().as_u16(),
                None,
            ),
        };
        // A shadowed failure is forwarded (and recorded), but its line is a refusal's.
        let logged = match &judgment.failure {
            None => true,
            Some(reason) => self.refusals.note(log.client, reason.label(), false).log,
        };
        log.line(&judgment, Some(upstream), total, logged);
        let record = match (&self.ledger, arrival) {
            (Some(ledger), Some(arrival)) => {
                let timings = Timings {
                    gateway: gateway_time,
                    upstream: took,
                    total,
                };
                Some((
                    ledger,
                    log.record(&judgment, arrival, body.clone(), timings),
                ))
            }
            _ => None,
        };
        match sent {
            Ok(mut forwarded) => {
                // The row is kept once the backend's answer has streamed to the client.
                if let Some((ledger, record)) = record {
                    forwarded.observe(AnswerTap::new(ledger.clone(), record, status));
                }
                forwarded.response
            }
            Err(e) => {
                if let Some((ledger, mut record)) = record {
                    record.backend = Some(Backend {
                        status,
                        answer: None,
                    });
                    ledger.record(record);
                }
                answer::refusal(&Refusal::Upstream(e))
            }
        }
    }

    /// Reads the body (at most `limit`) within `body_read_timeout` of now, taking the lane's
    /// memory as its bytes arrive. The memory is held as long as the caller keeps the
    /// reservation (until the request is answered).
    async fn buffer(
        &self,
        lane: Lane,
        client: &Client,
        parts: &Parts,
        body: Incoming,
        limit: usize,
    ) -> Result<(Option<Reservation>, Bytes), BodyError> {
        if body.is_end_stream() {
            return Ok((None, Bytes::new()));
        }
        let timeout = self.body_read_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        // An HTTP/2 connection multiplexes streams: each connection gets its own share.
        let share = (parts.version == Version::HTTP_2).then_some(&client.share);
        // While its body arrives, the request waits for its client: under pressure, its
        // connection may be closed for room.
        let _reading = client.activity.reading();
        let mut meter = self
            .budgets
            .meter(lane, share, client.address(), deadline, timeout);
        let bytes = read_bounded(body, limit, deadline, timeout, &mut meter).await?;
        Ok((Some(meter.into_reservation()), bytes))
    }

    /// A body that could not be buffered: counted, logged (within `client`'s budget),
    /// answered plainly.
    fn refuse_body(
        &self,
        peer: &Peer,
        client: std::net::IpAddr,
        parts: &Parts,
        e: BodyError,
    ) -> Response<ProxyBody> {
        let log = self.refusals.note(client, e.label(), false).log;
        self.refused_body(peer, parts, e, log)
    }

    /// [`Gateway::refuse_body`] once the budget has spoken (`log`: a line of its own).
    fn refused_body(
        &self,
        peer: &Peer,
        parts: &Parts,
        e: BodyError,
        log: bool,
    ) -> Response<ProxyBody> {
        self.metrics.refuse(e.label());
        if log {
            tracing::warn!(peer = %peer.addr, method = %parts.method, path = ?parts.uri.path(), "request body: {e}");
        } else {
            tracing::debug!(peer = %peer.addr, method = %parts.method, path = ?parts.uri.path(), "request body: {e}");
        }
        answer::refusal(&Refusal::Body(e))
    }

    /// An HTTP/2 stream over its address's allowance (`server.http2_max_streams_per_address`):
    /// a plain 503, counted, logged within the address's budget.
    pub fn refuse_streams(&self, peer: &Peer) -> Response<ProxyBody> {
        self.metrics.refuse("address_streams");
        if self
            .refusals
            .note(peer.addr.ip(), "address_streams", false)
            .log
        {
            tracing::warn!(peer = %peer.addr, "HTTP/2 stream refused with 503: the address has server.http2_max_streams_per_address streams in flight");
        }
        answer::refusal(&Refusal::AddressStreams)
    }

    /// A callback too large to read: `-8`, and the connection closed (its body was not read).
    fn refuse_too_large(
        &self,
        log: &LogContext<'_>,
        arrival: Option<Arrival>,
    ) -> Response<ProxyBody> {
        let judgment = Judgment::too_large();
        judgment.count(&self.metrics, log.runtime, Duration::ZERO);
        let note = self
            .refusals
            .note(log.client, "body_too_large", self.ledger.is_some());
        log.line(&judgment, None, Duration::ZERO, note.log);
        if let (Some(ledger), Some(arrival), true) = (&self.ledger, arrival, note.record) {
            ledger.record(log.record(&judgment, arrival, Bytes::new(), Timings::default()));
        }
        answer::click_error_closing(ClickError::BadRequest, &Echo::default())
    }
}

pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
