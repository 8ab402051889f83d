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

use std::time::Duration;

use http::request::Parts;
use http::{header, Method};

use crate::click::{
    self, Callback, ClickError, Echo, FormKind, Parsed, RejectReason, Verdict, Verified,
    MAX_CALLBACK_BODY,
};
use crate::clock;
use crate::config::Mode;
use crate::ledger;
use crate::metrics::{CallbackLabels, Metrics, SlotLabels};
use crate::runtime::Runtime;

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

    /// The ledger's verdict for it.
    pub fn verdict(&self) -> ledger::Verdict {
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
