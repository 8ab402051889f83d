//! The checkpoint on callback paths: it judges the exact message the backend would read (the
//! request head after hop-by-hop removal, and the whole body) and hands back a [`Judgment`]:
//! answer in Click's format, or forward the original bytes, vouched for when the signature
//! verified. It does no I/O and talks to nobody; [`crate::gateway`] acts on its decision.
//!
//! In shadow mode (`click.mode`, per service in `click.service_modes`) every check runs, is
//! logged and counted exactly as in enforce mode, but the callback is forwarded anyway, with
//! the trust header only when its signature verified: a team can watch the gateway's verdicts
//! in front of a live backend before letting it refuse anything (Envoy's shadow rules). Size
//! and time limits are not shadowed: an oversized or unfinished body cannot be forwarded.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::request::Parts;
use http::{header, Method};

use crate::click::{
    self, Callback, ClickError, Echo, FormKind, Parsed, RejectReason, Verdict, Verified,
    MAX_CALLBACK_BODY,
};
use crate::clock;
use crate::config::Mode;
use crate::ledger::{self, Record, Timings};
use crate::metrics::{CallbackLabels, Metrics, SlotLabels};
use crate::runtime::Runtime;
use crate::server::client::Peer;

/// What the checkpoint decided about one callback, and everything its log line needs.
pub struct Judgment<'a> {
    pub echo: Echo<'a>,
    /// The callback, when its fields were well-formed.
    pub callback: Option<Callback<'a>>,
    /// Set when the signature verified (even if a later check failed).
    pub verified: Option<Verified>,
    /// The first failed check, if any.
    pub failure: Option<RejectReason>,
    /// The mode the failure is judged in.
    pub mode: Mode,
    /// The service's mode (`click.mode`, or its `click.service_modes` entry), which no later
    /// check changes: a rule's own mode can only shadow within it.
    service_mode: Mode,
    /// Now minus `sign_time` (positive: signed in the past), when it could be read.
    pub skew_secs: Option<i64>,
}

/// What to do with a judged callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Refuse it with this Click error; it never reaches the backend.
    Answer(ClickError),
    /// Forward the original bytes, marked verified for this service when the signature
    /// verified (a shadowed failure is forwarded unmarked).
    Forward { vouch: Option<u64> },
}

impl<'a> Judgment<'a> {
    /// A callback refused before its fields could be read (its head or its form).
    pub fn refused(runtime: &Runtime, reason: RejectReason) -> Judgment<'a> {
        Judgment {
            echo: Echo::default(),
            callback: None,
            verified: None,
            mode: runtime.mode_for(None),
            service_mode: runtime.mode_for(None),
            failure: Some(reason),
            skew_secs: None,
        }
    }

    /// A callback whose body was refused for its size: never shadowed (it was not read).
    pub fn too_large() -> Judgment<'a> {
        Judgment {
            echo: Echo::default(),
            callback: None,
            verified: None,
            failure: Some(RejectReason::BodyTooLarge),
            mode: Mode::Enforce,
            service_mode: Mode::Enforce,
            skew_secs: None,
        }
    }

    /// Judges a verdict on a parsed body (its fields and its signature, judged with the
    /// runtime's keys), then its `sign_time` when `click.max_sign_age` asks.
    pub fn of(runtime: &Runtime, verdict: Verdict<'a>) -> Self {
        // Malformed callbacks too are judged in their service's mode, when they name one.
        let service = verdict
            .callback
            .as_ref()
            .map(|c| c.service_id)
            .or(verdict.echo.service_id);
        let (verified, failure) = match verdict.outcome {
            Ok(v) => (Some(v), None),
            Err(reason) => (None, Some(reason)),
        };
        let mode = runtime.mode_for(service);
        let mut j = Judgment {
            echo: verdict.echo,
            callback: verdict.callback,
            verified,
            mode,
            service_mode: mode,
            failure,
            skew_secs: None,
        };
        if j.verified.is_some() {
            j.check_sign_time(runtime);
        }
        j
    }

    /// A check with a mode of its own (`sign_age_mode`, a replay guard rule) found the callback
    /// wrong. Shadow wins: the service's mode and the rule's must both enforce to refuse. A failure found in shadow
    /// mode (a stale `sign_time` under `sign_age_mode = "shadow"`, say: what every replay of an
    /// old callback has) is replaced by an enforced one, never the other way round.
    pub fn rule_failed(&mut self, reason: RejectReason, rule_mode: Mode) {
        let mode = match self.service_mode {
            Mode::Enforce => rule_mode,
            Mode::Shadow => Mode::Shadow,
        };
        let replaces = match (&self.failure, self.mode) {
            (None, _) => true,
            (Some(_), Mode::Shadow) => mode == Mode::Enforce,
            (Some(_), Mode::Enforce) => false,
        };
        if replaces {
            self.failure = Some(reason);
            self.mode = mode;
        }
    }

    /// The callback's service is in enforce mode (whatever a failure's own mode).
    pub fn service_enforced(&self) -> bool {
        self.service_mode == Mode::Enforce
    }

    pub fn decision(&self) -> Decision {
        match (&self.failure, self.mode) {
            (Some(reason), Mode::Enforce) => Decision::Answer(reason.click_error()),
            _ => Decision::Forward {
                vouch: self.verified.map(|v| v.service_id),
            },
        }
    }

    /// `verified`, `rejected` or `would_reject` (a failure in shadow mode).
    pub fn outcome(&self) -> &'static str {
        self.verdict().as_str()
    }

    fn verdict(&self) -> ledger::Verdict {
        match (&self.failure, self.mode) {
            (None, _) => ledger::Verdict::Verified,
            (Some(_), Mode::Enforce) => ledger::Verdict::Rejected,
            (Some(_), Mode::Shadow) => ledger::Verdict::WouldReject,
        }
    }

    /// Checks `sign_time` against the clock (a verified callback's, so the time is authentic),
    /// and keeps the distance for the `sign_time_skew_seconds` histogram.
    fn check_sign_time(&mut self, runtime: &Runtime) {
        let Some(cb) = &self.callback else { return };
        let parsed = clock::parse_sign_time(cb.signed.sign_time, runtime.sign_time_offset);
        self.skew_secs = parsed.map(|t| clock::unix_now() - t);
        let Some((max_age, age_mode)) = runtime.sign_age else {
            return;
        };
        let failure = match self.skew_secs {
            None => RejectReason::BadSignTime,
            Some(skew) if skew.unsigned_abs() > max_age.as_secs() => RejectReason::StaleSignTime {
                skew_secs: skew,
                max_secs: max_age.as_secs(),
            },
            Some(_) => return,
        };
        // Shadow wins: the sign_age_mode and the service's mode must both enforce to refuse.
        self.rule_failed(failure, age_mode);
    }

    /// Counts the callback, once: `callbacks_total`, `verifications_total`, the skew and the
    /// time the gateway spent on it.
    pub fn count(&self, m: &Metrics, runtime: &Runtime, gateway_time: Duration) {
        let service_id = self.callback.as_ref().map(|c| c.service_id);
        let counters = service_id.and_then(|id| runtime.service_labels.counters(id));
        match (&self.failure, &self.callback, counters) {
            // The hot path: series resolved with the key set, no label hashing.
            (None, Some(cb), Some(c)) => {
                c.verified[usize::from(cb.action == click::Action::Complete)].inc();
            }
            (reason, _, _) => {
                m.callbacks
                    .get_or_create(&CallbackLabels {
                        service_id: runtime.service_labels.get(service_id),
                        action: self
                            .callback
                            .as_ref()
                            .map_or("unknown", |c| c.action.as_str()),
                        outcome: self.outcome(),
                        reason: reason.as_ref().map_or("none", RejectReason::label),
                        hint: reason.as_ref().map_or("none", RejectReason::hint),
                    })
                    .inc();
            }
        }
        if let Some(v) = self.verified {
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
        if let Some(skew) = self.skew_secs {
            m.sign_time_skew_seconds.observe(skew.unsigned_abs() as f64);
        }
        m.callback_route
            .gateway_seconds
            .observe(gateway_time.as_secs_f64());
    }
}

/// Judges a callback body parsed by [`parse`] (or refused already from its head).
pub fn judge<'a>(runtime: &Runtime, parsed: &'a Result<Parsed<'a>, RejectReason>) -> Judgment<'a> {
    match parsed {
        Ok(form) => Judgment::of(runtime, form.judge(&runtime.keys)),
        Err(reason) => Judgment::refused(runtime, reason.clone()),
    }
}

/// Parses a callback body as its head said (`kind`, from [`precheck`]).
pub fn parse(
    kind: Result<FormKind, RejectReason>,
    body: &[u8],
) -> Result<Parsed<'_>, RejectReason> {
    kind.and_then(|k| Parsed::parse(&k, body).map_err(RejectReason::Form))
}

/// What can be refused from the request head alone, before reading any body. `parts` are the
/// head as the backend would read it: hop-by-hop fields (those named by `Connection` too) are
/// already gone, so a `Connection: content-type` callback is judged without its content type.
pub fn precheck(parts: &Parts, declared: Option<u64>) -> Result<FormKind, RejectReason> {
    if parts.method != Method::POST {
        return Err(RejectReason::MethodNotAllowed);
    }
    let headers = &parts.headers;
    if declared.is_some_and(|n| n > MAX_CALLBACK_BODY as u64) {
        return Err(RejectReason::BodyTooLarge);
    }
    if let Some(field) = parts.uri.query().and_then(click::callback::query_field) {
        return Err(RejectReason::QueryField(field));
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

/// What the backend made of a forwarded callback, for its log line.
#[derive(Debug, Clone, Copy)]
pub enum Upstream {
    /// The backend answered with this status after this long.
    Answered(u16, Duration),
    /// It could not be reached or did not answer; the client got this status.
    Failed(&'static str, u16),
}

/// What the ledger keeps of a callback's head, taken when it arrives (only with a ledger).
#[derive(Debug)]
pub struct Arrival {
    pub time: SystemTime,
    /// As sent, query excluded.
    pub path: String,
    /// As judged (after hop-by-hop removal).
    pub content_type: Option<String>,
}

impl Arrival {
    pub fn of(parts: &Parts) -> Arrival {
        Arrival {
            time: SystemTime::now(),
            path: parts.uri.path().to_owned(),
            content_type: parts
                .headers
                .get(header::CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        }
    }
}

/// Who sent the callback and which runtime judged it: the constant part of its log line.
pub struct LogContext<'a> {
    pub peer: &'a Peer,
    pub client: IpAddr,
    pub request_id: &'a str,
    pub runtime: &'a Runtime,
}

impl LogContext<'_> {
    /// The one log line of a callback. Never a key, and nothing of `sign_string`: any
    /// signature may be genuine (a callback of a service whose key is missing is signed with
    /// the real key), and a genuine one with its fields is material for guessing the key
    /// offline. The ledger keeps the body for whoever may read it.
    ///
    /// `own_line`: whether a refusal gets its line at its own level, or was counted for the
    /// summary of its sender's refusals ([`crate::refusals`]) and is logged at debug only
    /// (nothing but a level check when debug is off).
    pub fn line(
        &self,
        d: &Judgment<'_>,
        upstream: Option<Upstream>,
        total: Duration,
        own_line: bool,
    ) {
        let cb = d.callback.as_ref();
        let reason = d.failure.as_ref();
        let merchant = d.echo.merchant_trans_id.map(printable);
        let why = reason.map(tracing::field::display);
        let fields = (
            d.outcome(),
            reason.map(|r| r.click_error().code()),
            reason.map(RejectReason::label),
            reason.map(RejectReason::hint).filter(|h| *h != "none"),
        );
        let (upstream_status, upstream_ms, upstream_error) = match upstream {
            None => (None, None, None),
            Some(Upstream::Answered(status, took)) => {
                (Some(status), Some(took.as_millis() as u64), None)
            }
            Some(Upstream::Failed(kind, status)) => (Some(status), None, Some(kind)),
        };
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
                    sign_skew_s = d.skew_secs,
                    generation = self.runtime.generation,
                    upstream_status,
                    upstream_ms,
                    upstream_error,
                    total_ms = total.as_millis() as u64,
                    why,
                    $msg
                )
            };
        }
        match (fields.0, own_line) {
            ("verified", _) => emit!(info, "callback verified and forwarded"),
            ("rejected", true) => emit!(warn, "callback rejected"),
            ("rejected", false) => emit!(debug, "callback rejected"),
            (_, true) => emit!(warn, "callback would be rejected (shadow mode): forwarded"),
            (_, false) => emit!(debug, "callback would be rejected (shadow mode): forwarded"),
        }
    }
}

impl LogContext<'_> {
    /// The callback's ledger row: the facts of its log line, and the body as received. The
    /// backend's answer is added by [`ledger::AnswerTap`] for a forwarded one.
    pub fn record(
        &self,
        d: &Judgment<'_>,
        arrival: Arrival,
        body: Bytes,
        timings: Timings,
    ) -> Record {
        let reason = d.failure.as_ref();
        Record {
            time: arrival.time,
            request_id: self.request_id.to_owned(),
            peer: self.peer.addr,
            client: self.client,
            path: arrival.path,
            content_type: arrival.content_type,
            body,
            verdict: d.verdict(),
            reason: reason.map(RejectReason::label),
            hint: reason.map(RejectReason::hint).filter(|h| *h != "none"),
            detail: reason.map(ToString::to_string),
            verified: d.verified,
            generation: self.runtime.generation,
            mode: d.mode,
            backend: None,
            timings,
        }
    }

    /// The ledger row of a callback refused for transport reasons before it was judged (its
    /// body stopped arriving, no memory for it): `label` and `why` say which.
    pub fn refused(
        &self,
        arrival: Arrival,
        label: &'static str,
        why: String,
        total: Duration,
    ) -> Record {
        Record {
            time: arrival.time,
            request_id: self.request_id.to_owned(),
            peer: self.peer.addr,
            client: self.client,
            path: arrival.path,
            content_type: arrival.content_type,
            body: Bytes::new(),
            verdict: ledger::Verdict::Refused,
            reason: Some(label),
            hint: None,
            detail: Some(why),
            verified: None,
            generation: self.runtime.generation,
            mode: self.runtime.mode,
            backend: None,
            timings: Timings {
                gateway: total,
                upstream: None,
                total,
            },
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
