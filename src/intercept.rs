//! The checkpoint on callback paths: read the body (bounded in size and time), judge it, then
//! either answer in Click's format or forward the exact original bytes with the trust header.
//!
//! Transport failures are not Click errors: a body that never finishes arriving gets a plain
//! `408`, so Click sees "no answer" and retries, exactly as it would if the merchant's server
//! had timed out. Only the content of a callback earns a Click error code.
//!
//! In shadow mode (`click.mode`, per service in `click.service_modes`) every check runs, is
//! logged and counted exactly as in enforce mode, but the callback is forwarded anyway, with
//! the trust header only when its signature verified: a team can watch the gateway's verdicts
//! in front of a live backend before letting it refuse anything (Envoy's shadow rules). Size
//! and time limits are not shadowed: an oversized or unfinished body cannot be forwarded.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use http::request::Parts;
use http::{header, HeaderValue, Method, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::click::{
    self, Callback, Echo, FormKind, Parsed, RejectReason, Verified, MAX_CALLBACK_BODY,
};
use crate::clock;
use crate::config::Mode;
use crate::gateway::{body_failure, Gateway, Peer};
use crate::metrics::{CallbackLabels, SlotLabels};
use crate::proxy::body::{read_bounded, BodyError};
use crate::proxy::{self, headers, ProxyBody};
use crate::runtime::Runtime;

/// What the gateway decided about one callback, and everything its log line needs.
struct Decision<'a> {
    echo: Echo<'a>,
    callback: Option<&'a Callback<'a>>,
    /// Set when the signature verified (even if a later check failed).
    verified: Option<Verified>,
    /// The first failed check, if any.
    failure: Option<RejectReason>,
    /// The mode the failure is judged in.
    mode: Mode,
    /// Now minus `sign_time` (positive: signed in the past), when it could be read.
    skew_secs: Option<i64>,
}

impl Decision<'_> {
    fn outcome(&self) -> &'static str {
        match (&self.failure, self.mode) {
            (None, _) => "verified",
            (Some(_), Mode::Enforce) => "rejected",
            (Some(_), Mode::Shadow) => "would_reject",
        }
    }
}

/// Handles a request to a callback path.
pub async fn callback(
    gw: &Gateway,
    runtime: &Runtime,
    peer: &Peer,
    request_id: &str,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let client = headers::client_ip(req.headers(), peer.addr.ip(), &gw.trusted_proxies);
    let (parts, body) = req.into_parts();
    let log = LogContext {
        peer,
        client,
        request_id,
        runtime,
    };
    let declared = crate::gateway::content_length(&parts);
    let kind = precheck(&parts, declared);
    // Limits are never shadowed: what was not read cannot be forwarded.
    if let Err(RejectReason::BodyTooLarge) = kind {
        return proxy::closing(refuse_too_large(gw, &log));
    }
    // Callback bodies count against the shared buffer memory like any other, for no more than
    // `read_bounded` below can buffer: a request refused for another reason (a GET declaring
    // gigabytes) must not hold the whole budget while its body is read.
    let need = declared.map_or(MAX_CALLBACK_BODY as u64, |n| {
        n.min(MAX_CALLBACK_BODY as u64)
    });
    let _reservation = match gw.body_budget.reserve(need, gw.body_read_timeout).await {
        Ok(permit) => permit,
        Err(e) => {
            gw.metrics.refuse(e.label());
            return body_failure(peer, &parts, &e);
        }
    };
    let body = match read_bounded(body, MAX_CALLBACK_BODY, gw.body_read_timeout).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge(_)) => return proxy::closing(refuse_too_large(gw, &log)),
        // Transport failures are not Click errors: Click sees no answer and retries.
        Err(e) => {
            gw.metrics.refuse(e.label());
            return body_failure(peer, &parts, &e);
        }
    };

    let parsed;
    let verdict;
    let decision =
        match kind.and_then(|kind| Parsed::parse(&kind, &body).map_err(RejectReason::Form)) {
            Err(reason) => Decision {
                echo: Echo::default(),
                callback: None,
                verified: None,
                mode: runtime.mode_for(None),
                failure: Some(reason),
                skew_secs: None,
            },
            Ok(body_form) => {
                parsed = body_form;
                verdict = parsed.judge(&runtime.keys);
                let service = verdict.callback.as_ref().map(|c| c.service_id);
                let (verified, failure) = match verdict.outcome {
                    Ok(v) => (Some(v), None),
                    Err(reason) => (None, Some(reason)),
                };
                let mut d = Decision {
                    echo: verdict.echo,
                    callback: verdict.callback.as_ref(),
                    verified,
                    mode: runtime.mode_for(service),
                    failure,
                    skew_secs: None,
                };
                if let (Some(cb), Some(_)) = (d.callback, d.verified) {
                    check_sign_time(runtime, cb, &mut d);
                }
                d
            }
        };
    let gateway_time = started.elapsed();
    count(gw, runtime, &decision, gateway_time);

    if let (Some(reason), Mode::Enforce) = (&decision.failure, decision.mode) {
        let resp = click_error(reason.click_error(), &decision.echo);
        log.line(&decision, None, gateway_time);
        return resp;
    }
    // Verified, or shadow mode: forward the exact bytes; vouch only for a valid signature.
    let vouch = decision.verified.map(|v| v.service_id);
    let sent = Instant::now();
    // A reference count: the decision still borrows the body for the log line.
    let resp = gw
        .forward(peer, parts, body.clone(), vouch, "callback")
        .await;
    let upstream = Some((resp.status().as_u16(), sent.elapsed()));
    log.line(&decision, upstream, started.elapsed());
    resp
}

/// Checks `sign_time` against the clock (a verified callback's, so the time is authentic), and
/// keeps the distance for the `sign_time_skew_seconds` histogram (which `count` records).
fn check_sign_time(runtime: &Runtime, cb: &Callback<'_>, d: &mut Decision<'_>) {
    let parsed = clock::parse_sign_time(cb.signed.sign_time, runtime.sign_time_offset);
    d.skew_secs = parsed.map(|t| clock::unix_now() - t);
    let Some((max_age, age_mode)) = runtime.sign_age else {
        return;
    };
    let failure = match d.skew_secs {
        None => RejectReason::BadSignTime,
        Some(skew) if skew.unsigned_abs() > max_age.as_secs() => RejectReason::StaleSignTime {
            skew_secs: skew,
            max_secs: max_age.as_secs(),
        },
        Some(_) => return,
    };
    // Shadow wins: the sign_age_mode and the service's mode must both enforce to refuse.
    if d.mode == Mode::Enforce {
        d.mode = age_mode;
    }
    d.failure = Some(failure);
}

fn count(gw: &Gateway, runtime: &Runtime, d: &Decision<'_>, gateway_time: Duration) {
    let m = &gw.metrics;
    let service_id = d.callback.map(|c| c.service_id);
    let counters = service_id.and_then(|id| runtime.service_labels.counters(id));
    match (&d.failure, d.callback, counters) {
        // The hot path: series resolved with the key set, no label hashing.
        (None, Some(cb), Some(c)) => {
            c.verified[usize::from(cb.action == click::Action::Complete)].inc();
        }
        (reason, _, _) => {
            m.callbacks
                .get_or_create(&CallbackLabels {
                    service_id: runtime.service_labels.get(service_id),
                    action: d.callback.map_or("unknown", |c| c.action.as_str()),
                    outcome: d.outcome(),
                    reason: reason.as_ref().map_or("none", RejectReason::label),
                    hint: reason.as_ref().map_or("none", RejectReason::hint),
                })
                .inc();
        }
    }
    if let Some(v) = d.verified {
        match counters.and_then(|c| c.slots.get(v.slot)) {
            Some(slot) => {
                slot.inc();
            }
            None => {
                m.verifications
                    .get_or_create(&SlotLabels {
                        service_id: runtime.service_labels.get(service_id),
                        slot: v.slot as u64,
                    })
                    .inc();
            }
        }
    }
    if let Some(skew) = d.skew_secs {
        m.sign_time_skew_seconds.observe(skew.unsigned_abs() as f64);
    }
    m.callback_route
        .gateway_seconds
        .observe(gateway_time.as_secs_f64());
}

/// What can be refused from the request head alone, before reading any body.
fn precheck(parts: &Parts, declared: Option<u64>) -> Result<FormKind, RejectReason> {
    if parts.method != Method::POST {
        return Err(RejectReason::MethodNotAllowed);
    }
    let headers = &parts.headers;
    if declared.is_some_and(|n| n > MAX_CALLBACK_BODY as u64) {
        return Err(RejectReason::BodyTooLarge);
    }
    if headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return Err(RejectReason::ContentEncoding);
    }
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    match (types.next(), types.next()) {
        (Some(ct), None) => ct
            .to_str()
            .map_err(|_| "content-type is not ASCII")
            .and_then(FormKind::from_content_type),
        (None, _) => Err("no content-type: the body is not a form"),
        (Some(_), Some(_)) => Err("more than one content-type"),
    }
    .map_err(RejectReason::ContentType)
}

fn refuse_too_large(gw: &Gateway, log: &LogContext<'_>) -> Response<ProxyBody> {
    let decision = Decision {
        echo: Echo::default(),
        callback: None,
        verified: None,
        failure: Some(RejectReason::BodyTooLarge),
        mode: Mode::Enforce,
        skew_secs: None,
    };
    count(gw, log.runtime, &decision, Duration::ZERO);
    log.line(&decision, None, Duration::ZERO);
    click_error(click::ClickError::BadRequest, &decision.echo)
}

/// The answer a merchant's server would give.
fn click_error(error: click::ClickError, echo: &Echo<'_>) -> Response<ProxyBody> {
    let body = click::respond::error_body(error, echo);
    let mut resp = Response::new(Either::Right(Full::new(body)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Client-chosen text made safe for a one-line log: control characters (a newline could
/// forge a log line) are escaped as `\u{..}`; everything else is kept as sent.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Who sent the callback and which runtime judged it: the constant part of its log line.
struct LogContext<'a> {
    peer: &'a Peer,
    client: IpAddr,
    request_id: &'a str,
    runtime: &'a Runtime,
}

impl LogContext<'_> {
    /// The one log line of a callback. Never a key; of `sign_string` only the first 8
    /// characters, and only when it failed (a genuine signature in a log is material for
    /// guessing the key offline).
    fn line(&self, d: &Decision<'_>, upstream: Option<(u16, Duration)>, total: Duration) {
        let cb = d.callback;
        let reason = d.failure.as_ref();
        // Not for a callback whose signature verified and that failed a later check (its
        // `sign_time`): its signature is genuine.
        let sign_prefix = match (reason, cb, d.verified) {
            (Some(_), Some(c), None) => {
                let end = c
                    .sign_string
                    .char_indices()
                    .nth(8)
                    .map_or(c.sign_string.len(), |(i, _)| i);
                Some(printable(&c.sign_string[..end]))
            }
            _ => None,
        };
        let merchant = d.echo.merchant_trans_id.map(printable);
        let why = reason.map(tracing::field::display);
        let fields = (
            d.outcome(),
            reason.map(|r| r.click_error().code()),
            reason.map(RejectReason::label),
            reason.map(RejectReason::hint).filter(|h| *h != "none"),
        );
        macro_rules! emit {
            ($level:ident, $msg:literal) => {
                tracing::$level!(
                    request_id = self.request_id,
                    peer = %self.peer.addr,
                    client = %self.client,
                    verdict = fields.0,
                    error = fields.1,
                    reason = fields.2,
                    hint = fields.3,
                    mode = d.mode.as_str(),
                    service_id = cb.map(|c| c.service_id),
                    click_trans_id = d.echo.click_trans_id,
                    merchant_trans_id = merchant.as_deref(),
                    action = cb.map(|c| c.action.as_str()),
                    slot = d.verified.map(|v| v.slot),
                    fp = d.verified.map(|v| tracing::field::display(v.fingerprint)),
                    sign_string = sign_prefix.as_deref(),
                    sign_skew_s = d.skew_secs,
                    generation = self.runtime.generation,
                    upstream_status = upstream.map(|u| u.0),
                    upstream_ms = upstream.map(|u| u.1.as_millis() as u64),
                    total_ms = total.as_millis() as u64,
                    why,
                    $msg
                )
            };
        }
        match fields.0 {
            "verified" => emit!(info, "callback verified and forwarded"),
            "rejected" => emit!(warn, "callback rejected"),
            _ => emit!(warn, "callback would be rejected (shadow mode): forwarded"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped_for_logs() {
        assert_eq!(printable("order-1 №7"), "order-1 №7");
        assert_eq!(printable("a\nb\r\u{1b}"), "a\\u{a}b\\u{d}\\u{1b}");
    }
}
