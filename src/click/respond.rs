//! Answers in Click's own format. Click must never learn that a gateway exists, so a refused
//! callback gets what a merchant's server would send: HTTP 200, `application/json`, and the
//! `error`/`error_note` pair from the SHOP-API error table, echoing `click_trans_id` and
//! `merchant_trans_id` when they could be read.
//!
//! Only the three codes about the request itself are the gateway's to give (`-1`, `-3`, `-8`);
//! the business codes (`-2`, `-4`…`-7`, `-9`) are the backend's alone.

use std::fmt;

use bytes::Bytes;
use serde::Serialize;

use super::callback::Echo;
use super::diagnose::Diagnosis;
use super::form::FormError;

/// The Click error codes the gateway answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClickError {
    /// `-1 SIGN CHECK FAILED!`: unknown service or a signature that does not verify.
    SignCheckFailed,
    /// `-3 Action not found`: `action` is not 0 or 1.
    ActionNotFound,
    /// `-8 Error in request from click`: missing or malformed parameters.
    BadRequest,
}

impl ClickError {
    pub fn code(self) -> i32 {
        match self {
            ClickError::SignCheckFailed => -1,
            ClickError::ActionNotFound => -3,
            ClickError::BadRequest => -8,
        }
    }

    /// The exact `error_note` texts of the SHOP-API error table.
    pub fn note(self) -> &'static str {
        match self {
            ClickError::SignCheckFailed => "SIGN CHECK FAILED!",
            ClickError::ActionNotFound => "Action not found",
            ClickError::BadRequest => "Error in request from click",
        }
    }
}

/// Why a callback was refused: one variant per cause an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    MethodNotAllowed,
    ContentEncoding,
    ContentType(&'static str),
    /// The query string carries this Click field (see `callback::query_field`).
    QueryField(&'static str),
    BodyTooLarge,
    Form(FormError),
    DuplicateField(String),
    MissingField(&'static str),
    EmptyField(&'static str),
    MalformedId(&'static str),
    MalformedField(&'static str),
    UnknownAction,
    /// Failed verification; the diagnosis says why.
    Signature(Diagnosis),
    /// A verified callback whose `sign_time` is further from now than `click.max_sign_age`.
    StaleSignTime {
        skew_secs: i64,
        max_secs: u64,
    },
    /// `sign_time` is not `YYYY-MM-DD HH:mm:ss` (only checked when `max_sign_age` is set).
    BadSignTime,
    /// The guard's rule 1: a verified signature seen before with other fields (named).
    ReplayedWithChanges(Vec<String>),
    /// The guard's rule 2: a Complete whose `error` contradicts the transaction's first
    /// forwarded Complete.
    CompleteContradictsEarlier {
        earlier: String,
        now: String,
    },
}

impl RejectReason {
    pub fn click_error(&self) -> ClickError {
        match self {
            RejectReason::UnknownAction => ClickError::ActionNotFound,
            // The signature does not authenticate this message.
            RejectReason::Signature(_)
            | RejectReason::StaleSignTime { .. }
            | RejectReason::ReplayedWithChanges(_) => ClickError::SignCheckFailed,
            _ => ClickError::BadRequest,
        }
    }

    /// A short, bounded label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            RejectReason::MethodNotAllowed => "method",
            RejectReason::ContentEncoding => "content_encoding",
            RejectReason::ContentType(_) => "content_type",
            RejectReason::QueryField(_) => "query_field",
            RejectReason::BodyTooLarge => "body_too_large",
            RejectReason::Form(_) => "bad_form",
            RejectReason::DuplicateField(_) => "duplicate_field",
            RejectReason::MissingField(_) => "missing_field",
            RejectReason::EmptyField(_) => "empty_field",
            RejectReason::MalformedId(_) => "malformed_id",
            RejectReason::MalformedField(_) => "malformed_field",
            RejectReason::UnknownAction => "bad_action",
            RejectReason::Signature(d) => d.label(),
            RejectReason::StaleSignTime { .. } => "stale_sign_time",
            RejectReason::BadSignTime => "bad_sign_time",
            RejectReason::ReplayedWithChanges(_) => "replayed_with_changes",
            RejectReason::CompleteContradictsEarlier { .. } => "complete_contradicts_earlier",
        }
    }

    /// The diagnosis hint label, or `none`.
    pub fn hint(&self) -> &'static str {
        match self {
            RejectReason::Signature(d) => d.hint_label().unwrap_or("none"),
            _ => "none",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::MethodNotAllowed => f.write_str("callbacks must be POST"),
            RejectReason::ContentEncoding => {
                f.write_str("the body is compressed (Content-Encoding); Click sends plain forms")
            }
            RejectReason::ContentType(why) => write!(f, "{why}"),
            RejectReason::QueryField(name) => write!(
                f,
                "the query string carries {name}: a framework that merges query and form would read it instead of the signed body's"
            ),
            RejectReason::BodyTooLarge => write!(
                f,
                "the body is over {} bytes; Click callbacks are under 1 KiB",
                super::MAX_CALLBACK_BODY
            ),
            RejectReason::Form(e) => write!(f, "the body is not a valid form: {e}"),
            RejectReason::DuplicateField(name) => write!(
                f,
                "field {name:?} is sent more than once (Django would read the last one)"
            ),
            RejectReason::MissingField(name) => write!(f, "required field {name} is missing"),
            RejectReason::EmptyField(name) => write!(f, "required field {name} is empty"),
            RejectReason::MalformedId(name) => {
                write!(f, "{name} is not a decimal integer of at most 64 bits")
            }
            RejectReason::MalformedField(name) => write!(f, "{name} is malformed"),
            RejectReason::UnknownAction => {
                f.write_str("action is neither 0 (prepare) nor 1 (complete)")
            }
            RejectReason::Signature(d) => write!(f, "{d}"),
            RejectReason::StaleSignTime {
                skew_secs,
                max_secs,
            } => write!(
                f,
                "sign_time is {} s {} the gateway's clock, beyond max_sign_age ({max_secs} s)",
                skew_secs.unsigned_abs(),
                if *skew_secs >= 0 {
                    "behind"
                } else {
                    "ahead of"
                }
            ),
            RejectReason::BadSignTime => f.write_str("sign_time is not YYYY-MM-DD HH:mm:ss"),
            RejectReason::ReplayedWithChanges(fields) => write!(
                f,
                "this signature was seen before with other fields: {} differ (the signature does not cover them, or they were re-split)",
                if fields.is_empty() {
                    "none named".to_owned()
                } else {
                    fields.join(", ")
                }
            ),
            RejectReason::CompleteContradictsEarlier { earlier, now } => write!(
                f,
                "this Complete says error {now}, the transaction's first forwarded Complete said {earlier}"
            ),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    click_trans_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    merchant_trans_id: Option<&'a str>,
    error: i32,
    error_note: &'static str,
}

/// The JSON body of an error answer, e.g.
/// `{"click_trans_id":2103045678,"merchant_trans_id":"order-1001","error":-1,"error_note":"SIGN CHECK FAILED!"}`.
pub fn error_body(error: ClickError, echo: &Echo<'_>) -> Bytes {
    let body = ErrorBody {
        click_trans_id: echo.click_trans_id,
        merchant_trans_id: echo.merchant_trans_id,
        error: error.code(),
        error_note: error.note(),
    };
    // Serializing this struct cannot fail: no maps, no non-string keys.
    serde_json::to_vec(&body)
        .map(Bytes::from)
        .unwrap_or_else(|_| {
            Bytes::from(format!(
                "{{\"error\":{},\"error_note\":\"{}\"}}",
                error.code(),
                error.note()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_protocol_example() {
        let echo = Echo {
            click_trans_id: Some(2103045678),
            merchant_trans_id: Some("order-1001"),
            service_id: Some(12345),
        };
        assert_eq!(
            error_body(ClickError::SignCheckFailed, &echo),
            r#"{"click_trans_id":2103045678,"merchant_trans_id":"order-1001","error":-1,"error_note":"SIGN CHECK FAILED!"}"#
        );
        assert_eq!(
            error_body(ClickError::BadRequest, &Echo::default()),
            r#"{"error":-8,"error_note":"Error in request from click"}"#
        );
    }

    #[test]
    fn echoed_text_is_escaped_json() {
        let echo = Echo {
            click_trans_id: Some(u64::MAX),
            merchant_trans_id: Some("a\"b\\c\n№"),
            service_id: None,
        };
        let body = error_body(ClickError::ActionNotFound, &echo);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["merchant_trans_id"], "a\"b\\c\n№");
        assert_eq!(v["click_trans_id"].as_u64(), Some(u64::MAX));
        assert_eq!(v["error"], -3);
    }
}
