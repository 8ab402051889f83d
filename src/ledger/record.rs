//! What the data path hands the ledger about one callback: a [`Record`], owned and cheap to
//! build (the body is a reference-counted [`Bytes`], the labels are `&'static str`), and later,
//! for a forwarded one, its [`Answer`].
//!
//! A row is narrow: the body as received, the few ids the documented queries select on, and
//! what only the gateway knew (its verdict and why, the key by slot and fingerprint, its time,
//! the guard's key). The Click fields are decoded from the body with the gateway's own parser
//! ([`ClickFields::decode`]) when a row is written (its ids) and when it is read (the rest), so
//! the data path allocates nothing for them and every reading shows exactly what the body says.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::click::{Form, FormKind, Verified};
use crate::config::Mode;

/// One request to a callback path, as the gateway saw and judged it. Never holds a key: the
/// key that verified it is named by slot and fingerprint ([`Verified`]). Its `Debug` leaves
/// the body out: it carries the callback's genuine signature.
#[derive(Clone)]
pub struct Record {
    /// When the request arrived (its head was read); stored as Unix microseconds, UTC.
    pub time: SystemTime,
    /// The `X-Request-Id` the gateway used for it (the one in its log line).
    pub request_id: String,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client as the log line names it (`X-Forwarded-For` from a trusted proxy resolved).
    pub client: IpAddr,
    /// The request path as sent (before percent-decoding), query excluded.
    pub path: String,
    /// The `Content-Type` header as sent (lossily made text); `None` when absent.
    pub content_type: Option<String>,
    /// The body exactly as received: at most [`crate::click::MAX_CALLBACK_BODY`] bytes, empty
    /// when it was never read (refused on its head, or its transfer failed). Pass the same
    /// `Bytes` that is forwarded: cloning it is a reference count.
    pub body: Bytes,
    /// What the gateway did with it.
    pub verdict: Verdict,
    /// The rejection or refusal label: [`crate::click::RejectReason::label`] for a Click
    /// rejection (`key_mismatch`, `missing_field`, ...), the transport label for a refusal
    /// (`body_timeout`, `body_aborted`, `busy`); `None` when verified.
    pub reason: Option<&'static str>,
    /// [`crate::click::RejectReason::hint`] when it is not `none`.
    pub hint: Option<&'static str>,
    /// The human explanation, the `why=` of the log line (`RejectReason`'s `Display`).
    pub detail: Option<String>,
    /// The key that verified the signature (service, slot, fingerprint), when one did, even
    /// if a later check (`sign_time`) failed.
    pub verified: Option<Verified>,
    /// The configuration generation whose keys judged it.
    pub generation: u64,
    /// The mode the verdict was given in (`enforce` or `shadow`).
    pub mode: Mode,
    /// Time in the gateway before it forwarded or answered (body read, verification, guard).
    pub gateway: Duration,
    /// The guard's binding, for a verified callback the guard let through: what SQLite's
    /// in-memory index is rebuilt from at start ([`super::index`]).
    pub bound: Option<Bound>,
}

/// The guard's entry of one forwarded, verified callback (see [`super::index`]): its
/// signature's key and its message's digest, both 64 bits, and for a Complete, its `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub key: i64,
    pub digest: i64,
    /// A Complete's `error` as a number (Click's error codes are integers; anything else is
    /// kept as [`super::index::UNREADABLE_ERROR`]).
    pub complete_error: Option<i64>,
}

/// What became of a forwarded callback: the backend's status (or the one the gateway gave when
/// the backend failed) and its Click answer, with the timings. Appended after the callback's
/// row, without anybody waiting for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The callback's row (`callbacks.id`).
    pub callback: i64,
    pub backend: Backend,
    /// From sending to the backend until its response headers; `None` when it failed.
    pub upstream: Option<Duration>,
    /// From the request's arrival until the response headers were ready.
    pub total: Duration,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("time", &self.time)
            .field("request_id", &self.request_id)
            .field("peer", &self.peer)
            .field("path", &self.path)
            .field("body_len", &self.body.len())
            .field("verdict", &self.verdict)
            .field("reason", &self.reason)
            .field("verified", &self.verified)
            .field("generation", &self.generation)
            .field("bound", &self.bound.is_some())
            .finish_non_exhaustive()
    }
}

/// The gateway's verdict on a callback, as stored in the `verdict` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Passed every check; forwarded with the trust header.
    Verified,
    /// Failed a check in enforce mode; answered by the gateway in Click's format.
    Rejected,
    /// Failed a check in shadow mode; forwarded anyway.
    WouldReject,
    /// Refused for transport reasons before it could be judged (a body that stopped arriving:
    /// 408; no buffer memory: 503); Click retries these.
    Refused,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Verified => "verified",
            Verdict::Rejected => "rejected",
            Verdict::WouldReject => "would_reject",
            Verdict::Refused => "refused",
        }
    }
}

/// What the backend answered a forwarded callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The HTTP status (a 502/504 the gateway made when the backend failed counts too).
    pub status: u16,
    /// The Click JSON in the body, when the backend answered some (see [`BackendAnswer::parse`]).
    pub answer: Option<BackendAnswer>,
}

/// The fields of a backend's Click answer the timeline shows, as text (a JSON number as its
/// digits, a string as its contents).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendAnswer {
    pub error: Option<String>,
    pub error_note: Option<String>,
    pub merchant_prepare_id: Option<String>,
    pub merchant_confirm_id: Option<String>,
}

/// A backend answer longer than this is not read for its fields: Click answers are a few dozen
/// bytes, and the data path should not buffer a large body for the ledger's sake.
pub const MAX_BACKEND_ANSWER: usize = 4096;

impl BackendAnswer {
    /// Reads a backend response body as a Click answer: a JSON object with at least one of
    /// `error`, `error_note`, `merchant_prepare_id`, `merchant_confirm_id`. `None` for anything
    /// else (HTML error pages, bodies over [`MAX_BACKEND_ANSWER`]); never fails otherwise.
    pub fn parse(body: &[u8]) -> Option<BackendAnswer> {
        if body.len() > MAX_BACKEND_ANSWER {
            return None;
        }
        // The four fields only, each kept as its raw JSON: no map of every key, no owned
        // value tree (this runs as the answer streams to Click).
        #[derive(serde::Deserialize)]
        struct Fields<'a> {
            #[serde(borrow, default)]
            error: Option<&'a serde_json::value::RawValue>,
            #[serde(borrow, default)]
            error_note: Option<&'a serde_json::value::RawValue>,
            #[serde(borrow, default)]
            merchant_prepare_id: Option<&'a serde_json::value::RawValue>,
            #[serde(borrow, default)]
            merchant_confirm_id: Option<&'a serde_json::value::RawValue>,
        }
        // serde would also read a struct from an array: only an object is a Click answer.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return None;
        }
        let fields: Fields<'_> = serde_json::from_slice(body).ok()?;
        let text = |raw: Option<&serde_json::value::RawValue>| -> Option<String> {
            let raw = raw?.get();
            match raw.as_bytes().first()? {
                b'"' => serde_json::from_str::<std::borrow::Cow<'_, str>>(raw)
                    .ok()
                    .map(|s| clip(&s, MAX_FIELD_TEXT).to_owned()),
                // A number as its digits, a boolean as its word; null, objects and arrays
                // are no value.
                b'-' | b'0'..=b'9' | b't' | b'f' => Some(clip(raw, MAX_FIELD_TEXT).to_owned()),
                _ => None,
            }
        };
        let answer = BackendAnswer {
            error: text(fields.error),
            error_note: text(fields.error_note),
            merchant_prepare_id: text(fields.merchant_prepare_id),
            merchant_confirm_id: text(fields.merchant_confirm_id),
        };
        (answer != BackendAnswer::default()).then_some(answer)
    }
}

/// Longest text kept of one backend answer field.
const MAX_FIELD_TEXT: usize = 1024;

fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The Click fields of a body, decoded ("as sent": the form-decoded text, never re-rendered).
/// A field that is absent, or sent more than once, is `None` (the stored body has them all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClickFields {
    pub click_trans_id: Option<String>,
    pub service_id: Option<String>,
    pub click_paydoc_id: Option<String>,
    pub merchant_trans_id: Option<String>,
    pub merchant_prepare_id: Option<String>,
    pub amount: Option<String>,
    pub action: Option<String>,
    pub error: Option<String>,
    pub error_note: Option<String>,
    pub sign_time: Option<String>,
}

impl ClickFields {
    /// Decodes `body` with the gateway's parser ([`Form::parse`]) in the encoding its content
    /// type names. A content type the gateway refused (none, `text/plain`, another charset) is
    /// read as urlencoded, Click's encoding, so that such a callback still shows in its
    /// payment's timeline; its verdict says why it was refused. A body that is not a valid
    /// form gives no fields.
    pub fn decode(content_type: Option<&str>, body: &[u8]) -> ClickFields {
        if body.is_empty() {
            return ClickFields::default();
        }
        let kind = FormKind::of_stored(content_type);
        // The callback fast path first (one pass, no field list): what nearly every body is.
        if kind == FormKind::UrlEncoded {
            if let Some(slots) = crate::click::callback::slot_fields(body) {
                let field = |name: &str| {
                    let k = crate::click::callback::FIELD_NAMES
                        .iter()
                        .position(|n| *n == name)?;
                    slots.get(k).map(|(value, _)| value.to_owned())
                };
                return ClickFields {
                    click_trans_id: field("click_trans_id"),
                    service_id: field("service_id"),
                    click_paydoc_id: field("click_paydoc_id"),
                    merchant_trans_id: field("merchant_trans_id"),
                    merchant_prepare_id: field("merchant_prepare_id"),
                    amount: field("amount"),
                    action: field("action"),
                    error: field("error"),
                    error_note: field("error_note"),
                    sign_time: field("sign_time"),
                };
            }
        }
        let Ok(form) = Form::parse(&kind, body) else {
            return ClickFields::default();
        };
        let single = |name: &str| {
            let mut values = form.values(name);
            match (values.next(), values.next()) {
                (Some(f), None) => Some(f.value.clone().into_owned()),
                _ => None,
            }
        };
        ClickFields {
            click_trans_id: single("click_trans_id"),
            service_id: single("service_id"),
            click_paydoc_id: single("click_paydoc_id"),
            merchant_trans_id: single("merchant_trans_id"),
            merchant_prepare_id: single("merchant_prepare_id"),
            amount: single("amount"),
            action: single("action"),
            error: single("error"),
            error_note: single("error_note"),
            sign_time: single("sign_time"),
        }
    }
}

/// Unix microseconds of `t` (negative before 1970; saturating far out).
pub fn unix_micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |us| -us),
    }
}

/// Microseconds of a duration, saturating, for the timing columns.
pub fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A refused Prepare of service 12345, for tests of the ledger's own modules.
#[cfg(test)]
pub(crate) fn sample(merchant_trans_id: &str, time: SystemTime) -> Record {
    let body = format!(
        "click_trans_id=1001&service_id=12345&click_paydoc_id=1&merchant_trans_id={merchant_trans_id}&amount=1000.00&action=0&error=0&error_note=Success&sign_time=2024-05-01+12%3A30%3A45&sign_string=00000000000000000000000000000000"
    );
    Record {
        time,
        request_id: format!("req-{merchant_trans_id}"),
        peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
        client: IpAddr::from([127, 0, 0, 1]),
        path: "/click/prepare/".into(),
        content_type: Some("application/x-www-form-urlencoded".into()),
        body: Bytes::from(body),
        verdict: Verdict::Rejected,
        reason: Some("key_mismatch"),
        hint: None,
        detail: Some("the key(s) of service 12345 do not match".into()),
        verified: None,
        generation: 1,
        mode: Mode::Enforce,
        gateway: Duration::ZERO,
        bound: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_body_and_its_signature() {
        let rec = sample("o1", SystemTime::now());
        let shown = format!("{rec:?}");
        assert!(
            shown.contains("req-o1") && shown.contains("body_len"),
            "{shown}"
        );
        assert!(
            !shown.contains("sign_string") && !shown.contains("00000000"),
            "{shown}"
        );
    }

    #[test]
    fn fields_are_decoded_as_sent_and_repeats_are_none() {
        let f = ClickFields::decode(
            Some("application/x-www-form-urlencoded"),
            b"click_trans_id=0017&amount=1000.00&merchant_trans_id=%D0%B7+1&action=1&action=0&sign_time=2024-05-01+12%3A30%3A45",
        );
        assert_eq!(f.click_trans_id.as_deref(), Some("0017"));
        assert_eq!(f.amount.as_deref(), Some("1000.00"));
        assert_eq!(f.merchant_trans_id.as_deref(), Some("з 1"));
        assert_eq!(f.sign_time.as_deref(), Some("2024-05-01 12:30:45"));
        assert_eq!(f.action, None, "sent twice");
        assert_eq!(f.service_id, None);
    }

    #[test]
    fn refused_content_types_are_read_as_urlencoded_and_bad_forms_give_nothing() {
        let body = b"merchant_trans_id=order-1&amount=5";
        for ct in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded; charset=latin1"),
        ] {
            assert_eq!(
                ClickFields::decode(ct, body).merchant_trans_id.as_deref(),
                Some("order-1"),
                "{ct:?}"
            );
        }
        assert_eq!(ClickFields::decode(None, b"a=%zz"), ClickFields::default());
        assert_eq!(ClickFields::decode(None, b""), ClickFields::default());
        let multipart = b"--xx\r\nContent-Disposition: form-data; name=\"merchant_trans_id\"\r\n\r\nm-1\r\n--xx--\r\n";
        assert_eq!(
            ClickFields::decode(Some("multipart/form-data; boundary=xx"), multipart)
                .merchant_trans_id
                .as_deref(),
            Some("m-1")
        );
    }

    #[test]
    fn backend_answers_are_read_only_when_they_are_click_json() {
        let a = BackendAnswer::parse(
            br#"{"click_trans_id":1,"merchant_trans_id":"o","merchant_prepare_id":5001,"error":0,"error_note":"Success"}"#,
        )
        .unwrap();
        assert_eq!(a.error.as_deref(), Some("0"));
        assert_eq!(a.error_note.as_deref(), Some("Success"));
        assert_eq!(a.merchant_prepare_id.as_deref(), Some("5001"));
        assert_eq!(a.merchant_confirm_id, None);
        let a = BackendAnswer::parse(br#"{"error":"-4","merchant_confirm_id":null}"#).unwrap();
        assert_eq!(a.error.as_deref(), Some("-4"));
        assert_eq!(a.merchant_confirm_id, None);
        for not_click in [
            &b"<html>502</html>"[..],
            b"[1,2]",
            b"{\"upstream\":true}",
            b"",
        ] {
            assert_eq!(BackendAnswer::parse(not_click), None);
        }
        let big = format!(
            "{{\"error\":0,\"pad\":\"{}\"}}",
            "x".repeat(MAX_BACKEND_ANSWER)
        );
        assert_eq!(BackendAnswer::parse(big.as_bytes()), None);
        let long = format!("{{\"error_note\":\"{}\"}}", "я".repeat(1000));
        let note = BackendAnswer::parse(long.as_bytes())
            .unwrap()
            .error_note
            .unwrap();
        assert!(note.len() <= MAX_FIELD_TEXT && note.chars().all(|c| c == 'я'));
    }

    #[test]
    fn micros_of_times() {
        assert_eq!(
            unix_micros(UNIX_EPOCH + Duration::from_micros(1_500_000)),
            1_500_000
        );
        assert_eq!(unix_micros(UNIX_EPOCH - Duration::from_micros(3)), -3);
        assert_eq!(micros(Duration::from_millis(2)), 2000);
    }
}
