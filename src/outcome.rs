//! What happened to one callback, and the two accounts of it: its log line and its ledger
//! row. The gateway's callback path builds an [`Outcome`] in one place and hands it to one
//! `finish` ([`crate::gateway`]) that logs, counts and records it; the line and the row are
//! made here from the same facts ([`LogContext`]), so they always tell the same story.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header;
use http::request::Parts;

use crate::body::BodyError;
use crate::checkpoint::Judgment;
use crate::click::RejectReason;
use crate::ledger::{self, Record};
use crate::proxy::forward::Forwarded;
use crate::proxy::ProxyError;
use crate::runtime::Runtime;
use crate::server::client::Peer;
pub use crate::text::printable;

/// What happened to a callback: every exit of the callback path is one of these. (One per
/// callback, moved once into `finish`: the forwarded response's size is no cost worth a box.)
#[allow(clippy::large_enum_variant)]
pub enum Outcome<'a> {
    /// Refused for its declared size before its body was read: `-8`, the connection closed.
    TooLarge,
    /// Its body could not be read (too slow, broken off, no memory): a plain status; Click
    /// retries.
    Body(BodyError),
    /// Judged and refused: Click's error. `recorded`: its row is written already.
    Refused {
        judgment: Judgment<'a>,
        recorded: bool,
    },
    /// Its record could not be written and `guard.on_store_error = "refuse"`: a plain 503;
    /// Click retries.
    Unavailable { judgment: Judgment<'a>, why: String },
    /// Forwarded: its row (none when it could not be written and was forwarded anyway), and
    /// the backend's response or why it failed.
    Forwarded {
        judgment: Judgment<'a>,
        row: Option<i64>,
        sent: Result<Forwarded, ProxyError>,
        /// Time in the gateway before it forwarded.
        gateway: Duration,
    },
}

/// What the backend made of a forwarded callback, for its log line.
#[derive(Debug, Clone, Copy)]
pub enum Upstream {
    /// The backend answered with this status after this long.
    Answered(u16, Duration),
    /// It could not be reached or did not answer; the client got this status.
    Failed(&'static str, u16),
}

/// What the ledger keeps of a callback's head, taken when it arrives (its content type only
/// with a ledger).
#[derive(Debug)]
pub struct Arrival {
    pub time: SystemTime,
    /// As sent, query excluded.
    pub path: String,
    /// As judged (after hop-by-hop removal).
    pub content_type: Option<String>,
}

impl Arrival {
    /// `keep`: whether a ledger will keep it. Without one the content type is not copied (the
    /// bare gateway's callback pays nothing for the ledger it does not have); the path is, for
    /// the log line of a body that stopped arriving.
    pub fn of(parts: &Parts, keep: bool) -> Arrival {
        Arrival {
            time: SystemTime::now(),
            path: parts.uri.path().to_owned(),
            content_type: keep
                .then(|| parts.headers.get(header::CONTENT_TYPE))
                .flatten()
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
                    // Escaped only when the line is written.
                    merchant_trans_id = d.echo.merchant_trans_id.map(printable).as_deref(),
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
    /// The callback's ledger row: the facts of its log line, and the body as received (pass the
    /// `Bytes` that is forwarded: cloning it is a reference count). The backend's answer comes
    /// apart ([`ledger::AnswerTap`]) for a forwarded one.
    pub fn record(
        &self,
        d: &Judgment<'_>,
        arrival: &Arrival,
        body: Bytes,
        gateway: Duration,
    ) -> Record {
        let reason = d.failure.as_ref();
        Record {
            time: arrival.time,
            request_id: self.request_id.to_owned(),
            peer: self.peer.addr,
            client: self.client,
            path: arrival.path.clone(),
            content_type: arrival.content_type.clone(),
            body,
            verdict: d.verdict(),
            reason: reason.map(RejectReason::label),
            hint: reason.map(RejectReason::hint).filter(|h| *h != "none"),
            detail: reason.map(ToString::to_string),
            verified: d.verified,
            generation: self.runtime.generation,
            mode: d.mode,
            gateway,
            bound: None,
        }
    }

    /// The ledger row of a callback refused for transport reasons before it was judged (its
    /// body stopped arriving, no memory for it) or because its record could not be written:
    /// `label` and `why` say which.
    pub fn refused(
        &self,
        arrival: &Arrival,
        label: &'static str,
        why: String,
        gateway: Duration,
    ) -> Record {
        Record {
            time: arrival.time,
            request_id: self.request_id.to_owned(),
            peer: self.peer.addr,
            client: self.client,
            path: arrival.path.clone(),
            content_type: arrival.content_type.clone(),
            body: Bytes::new(),
            verdict: ledger::Verdict::Refused,
            reason: Some(label),
            hint: None,
            detail: Some(why),
            verified: None,
            generation: self.runtime.generation,
            mode: self.runtime.mode,
            gateway,
            bound: None,
        }
    }
}
