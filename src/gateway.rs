//! The request handler, one stage after another and never back up:
//!
//! 1. one snapshot of the runtime (keys and reloadable settings) for the whole request;
//! 2. the lane, from the path alone ([`crate::lane`]);
//! 3. the message the backend will read: hop-by-hop fields removed (those named by
//!    `Connection` included), forwarding fields set, `Host` from `:authority` for HTTP/2
//!    ([`crate::proxy::headers`]) — before anything is judged, so the checkpoint never
//!    verifies something other than what is forwarded;
//! 4. the body, read whole within the lane's memory budget and `body_read_timeout`;
//! 5. callbacks only: the checkpoint's [`Judgment`] (answer in Click's format, or forward),
//!    then, with a ledger, the callback's record written before it is forwarded, with the
//!    guard's binding ([`crate::guard`]);
//! 6. the forward ([`crate::proxy::forward`]), the only stage that talks to the backend.
//!
//! A callback's way ends in one [`Outcome`], which one `finish` logs, counts and records
//! (within its sender's refusal budget, [`crate::refusals`]). Every answer the gateway writes
//! itself comes from [`crate::answer`].

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Request, Response, Version};
use hyper::body::{Body, Incoming};

use crate::answer::{self, Refusal};
use crate::body::{read_bounded, BodyError};
use crate::checkpoint::{self, Decision, Judgment};
use crate::click::{ClickError, Echo, RejectReason, MAX_CALLBACK_BODY};
use crate::config::cidr::Cidr;
use crate::config::Loaded;
use crate::guard::{self, Admission};
use crate::lane::{Lane, Reservation};
use crate::ledger::{Answer, AnswerTap, Backend, Ledger, LedgerError};
use crate::metrics::{CallbackLabels, Metrics};
use crate::outcome::{Arrival, LogContext, Outcome, Upstream as Answered};
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
    /// The callback ledger (`[ledger] database`), when configured: every callback's row, the
    /// forwarded ones' written before they are forwarded, and the guard's bindings.
    pub ledger: Option<Ledger>,
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
            Some(_) => Some(Ledger::open(
                &loaded.settings.ledger,
                loaded
                    .settings
                    .guard
                    .window(loaded.settings.ledger.retention),
                metrics.clone(),
            )?),
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

    /// A request to a callback path: judged by the checkpoint, recorded and forwarded or
    /// answered, then finished in one place whatever happened to it.
    async fn callback(
        &self,
        client: &Client,
        log: &LogContext<'_>,
        parts: Parts,
        body: Incoming,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let arrival = Arrival::of(&parts, self.ledger.is_some());
        let declared = content_length(&parts.headers);
        let head = checkpoint::precheck(&parts, declared);
        // Limits are never shadowed: what was not read cannot be forwarded.
        if let Err(RejectReason::BodyTooLarge) = head {
            return self.finish(log, &arrival, &Bytes::new(), Outcome::TooLarge, started);
        }
        let (_reservation, body) = match self
            .buffer(Lane::Callback, client, &parts, body, MAX_CALLBACK_BODY)
            .await
        {
            Ok(read) => read,
            Err(BodyError::TooLarge(_)) => {
                return self.finish(log, &arrival, &Bytes::new(), Outcome::TooLarge, started)
            }
            // Transport failures are not Click errors: Click sees no answer and retries.
            Err(e) => return self.finish(log, &arrival, &Bytes::new(), Outcome::Body(e), started),
        };
        let parsed = checkpoint::parse(head, &body);
        let judgment = checkpoint::judge(log.runtime, &parsed);
        let outcome = self
            .decide(log, &arrival, &parsed, judgment, parts, &body, started)
            .await;
        self.finish(log, &arrival, &body, outcome, started)
    }

    /// The judged callback's way on: refused, or recorded (with the guard's binding) and
    /// forwarded. Returns what happened; [`Gateway::finish`] logs, counts and records it.
    #[allow(clippy::too_many_arguments)]
    async fn decide<'a>(
        &self,
        log: &LogContext<'_>,
        arrival: &Arrival,
        parsed: &'a Result<crate::click::Parsed<'a>, RejectReason>,
        mut judgment: Judgment<'a>,
        mut parts: Parts,
        body: &Bytes,
        started: Instant,
    ) -> Outcome<'a> {
        if let Decision::Answer(_) = judgment.decision() {
            return Outcome::Refused {
                judgment,
                recorded: false,
            };
        }
        let runtime = log.runtime;
        // Record first, then forward: the row is committed before the backend sees a byte.
        let row = match (&self.ledger, &runtime.guard, parsed) {
            (Some(ledger), Some(rules), Ok(parsed)) => {
                let admission = guard::admit(
                    rules,
                    ledger,
                    &self.metrics,
                    parsed,
                    &mut judgment,
                    log.request_id,
                    |j| log.record(j, arrival, body.clone(), started.elapsed()),
                )
                .await;
                match admission {
                    Admission::Recorded(id) => Some(id),
                    Admission::Unrecorded(why) => {
                        if self
                            .refusals
                            .note(log.client, "store_unavailable", false)
                            .log
                        {
                            tracing::warn!(request_id = log.request_id, "callback forwarded without its ledger row: {why} (guard.on_store_error = \"allow\", or the service is in shadow mode)");
                        }
                        None
                    }
                    Admission::Refused { recorded } => {
                        return Outcome::Refused { judgment, recorded }
                    }
                    Admission::Unavailable(why) => return Outcome::Unavailable { judgment, why },
                }
            }
            _ => None,
        };
        let Decision::Forward { vouch } = judgment.decision() else {
            return Outcome::Refused {
                judgment,
                recorded: row.is_some(),
            };
        };
        // Verified, or shadow mode: forward the exact bytes; vouch only for a valid signature.
        if let Some(service_id) = vouch {
            let attestation = runtime
                .trust
                .as_ref()
                .and_then(|t| t.attest(crate::clock::unix_now(), service_id, body));
            let service = runtime.service_labels.counters(service_id).map_or_else(
                || HeaderValue::from(service_id),
                |c| c.verified_header.clone(),
            );
            headers::mark_verified(&mut parts.headers, service, attestation);
        }
        let gateway = started.elapsed();
        let sent = self
            .forwarder
            .send(log.peer.addr, parts, body.clone(), Lane::Callback)
            .await;
        Outcome::Forwarded {
            judgment,
            row,
            sent,
            gateway,
        }
    }

    /// Every callback ends here, once: its count in `callbacks_total`, its log line and its
    /// ledger row (a refusal's within its sender's budget; a forwarded one's answer beside the
    /// row written before it was forwarded), and its answer.
    fn finish(
        &self,
        log: &LogContext<'_>,
        arrival: &Arrival,
        body: &Bytes,
        outcome: Outcome<'_>,
        started: Instant,
    ) -> Response<ProxyBody> {
        let ledger = self.ledger.as_ref();
        let elapsed = started.elapsed();
        match outcome {
            Outcome::TooLarge => {
                let judgment = Judgment::too_large();
                judgment.count(&self.metrics, log.runtime, Duration::ZERO);
                let note = self
                    .refusals
                    .note(log.client, "body_too_large", ledger.is_some());
                log.line(&judgment, None, Duration::ZERO, note.log);
                if let (Some(ledger), true) = (ledger, note.record) {
                    ledger.record(log.record(&judgment, arrival, Bytes::new(), Duration::ZERO));
                }
                answer::click_error_closing(ClickError::BadRequest, &Echo::default())
            }
            Outcome::Body(e) => {
                self.count_refused(None, e.label(), elapsed);
                let note = self.refusals.note(log.client, e.label(), ledger.is_some());
                if let (Some(ledger), true) = (ledger, note.record) {
                    ledger.record(log.refused(arrival, e.label(), e.to_string(), elapsed));
                }
                self.refused_body(log.peer, &arrival.path, e, note.log)
            }
            Outcome::Refused { judgment, recorded } => {
                judgment.count(&self.metrics, log.runtime, elapsed);
                let reason = judgment
                    .failure
                    .as_ref()
                    .map_or("none", RejectReason::label);
                let note = self
                    .refusals
                    .note(log.client, reason, ledger.is_some() && !recorded);
                log.line(&judgment, None, elapsed, note.log);
                if let (Some(ledger), true) = (ledger, note.record) {
                    ledger.record(log.record(&judgment, arrival, body.clone(), elapsed));
                }
                let error = match judgment.decision() {
                    Decision::Answer(error) => error,
                    // A refusal always has a failure in enforce mode.
                    Decision::Forward { .. } => ClickError::BadRequest,
                };
                answer::click_error(error, &judgment.echo)
            }
            Outcome::Unavailable { judgment, why } => {
                self.count_refused(Some(&judgment), "store_unavailable", elapsed);
                self.metrics.refuse("store_unavailable");
                let note = self
                    .refusals
                    .note(log.client, "store_unavailable", ledger.is_some());
                if note.log {
                    tracing::warn!(request_id = log.request_id, peer = %log.peer.addr, "callback refused with 503, its ledger row could not be written ({why}); Click retries (guard.on_store_error = \"refuse\")");
                }
                // Queued like any refusal's: in once the store works again, else counted.
                if let (Some(ledger), true) = (ledger, note.record) {
                    ledger.record(log.refused(arrival, "store_unavailable", why, elapsed));
                }
                answer::refusal(&Refusal::StoreUnavailable)
            }
            Outcome::Forwarded {
                judgment,
                row,
                sent,
                gateway,
            } => {
                judgment.count(&self.metrics, log.runtime, gateway);
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
                let own_line = match &judgment.failure {
                    None => true,
                    Some(reason) => self.refusals.note(log.client, reason.label(), false).log,
                };
                log.line(&judgment, Some(upstream), elapsed, own_line);
                match (sent, ledger.zip(row)) {
                    (Ok(mut forwarded), Some((ledger, id))) => {
                        // The answer is appended once it has streamed to Click.
                        forwarded.observe(AnswerTap::new(
                            ledger.clone(),
                            id,
                            status,
                            took,
                            elapsed,
                        ));
                        forwarded.response
                    }
                    (Ok(forwarded), None) => forwarded.response,
                    (Err(e), written) => {
                        if let Some((ledger, id)) = written {
                            ledger.answer(Answer {
                                callback: id,
                                backend: Backend {
                                    status,
                                    answer: None,
                                },
                                upstream: None,
                                total: elapsed,
                            });
                        }
                        answer::refusal(&Refusal::Upstream(e))
                    }
                }
            }
        }
    }

    /// Counts a callback refused without a Click answer (its body, its record) in
    /// `callbacks_total`, `outcome="refused"`: every callback is counted once.
    fn count_refused(&self, judgment: Option<&Judgment<'_>>, reason: &'static str, took: Duration) {
        let runtime = self.runtime.load();
        let cb = judgment.and_then(|j| j.callback.as_ref());
        self.metrics
            .callbacks
            .get_or_create(&CallbackLabels {
                service_id: runtime.service_labels.get(cb.map(|c| c.service_id)),
                action: cb.map_or("unknown", |c| c.action.as_str()),
                outcome: "refused",
                reason,
                hint: "none",
            })
            .inc();
        self.metrics
            .callback_route
            .gateway_seconds
            .observe(took.as_secs_f64());
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
        self.refused_body(peer, parts.uri.path(), e, log)
    }

    /// [`Gateway::refuse_body`] once the budget has spoken (`log`: a line of its own).
    fn refused_body(
        &self,
        peer: &Peer,
        path: &str,
        e: BodyError,
        log: bool,
    ) -> Response<ProxyBody> {
        self.metrics.refuse(e.label());
        if log {
            tracing::warn!(peer = %peer.addr, path = ?path, "request body: {e}");
        } else {
            tracing::debug!(peer = %peer.addr, path = ?path, "request body: {e}");
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
}

pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
