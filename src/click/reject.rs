//! Why a callback was refused, gathered from every layer that can refuse one: the head (method,
//! content type, query string, size), the form ([`FormError`]), the fields ([`FieldError`]),
//! the signature ([`Diagnosis`]), the clock and the replay guard.
//!
//! It sits above those layers and below the answer: each layer keeps its own error and knows
//! nothing of this type, which wraps them, so data flows one way (`form`, `callback`,
//! `diagnose` → `reject` → the request path), and [`RejectReason::click_error`] picks the
//! code of the answer [`super::respond`] writes.

use std::fmt;

use super::callback::FieldError;
use super::diagnose::Diagnosis;
use super::form::{FormError, MAX_CALLBACK_BODY};
use super::respond::ClickError;

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
    /// A field is missing, repeated or malformed, or `action` is unknown.
    Field(FieldError),
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

impl From<FieldError> for RejectReason {
    fn from(e: FieldError) -> Self {
        RejectReason::Field(e)
    }
}

impl RejectReason {
    pub fn click_error(&self) -> ClickError {
        match self {
            RejectReason::Field(FieldError::UnknownAction) => ClickError::ActionNotFound,
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
            RejectReason::Field(e) => e.label(),
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
                "the body is over {MAX_CALLBACK_BODY} bytes; Click callbacks are under 1 KiB"
            ),
            RejectReason::Form(e) => write!(f, "the body is not a valid form: {e}"),
            RejectReason::Field(e) => write!(f, "{e}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The labels and texts of field errors are what they were when `RejectReason` held one
    /// variant per field error: dashboards and alerts match on them.
    #[test]
    fn field_errors_keep_their_labels_codes_and_texts() {
        for (error, label, code, text) in [
            (
                FieldError::DuplicateField("amount".into()),
                "duplicate_field",
                -8,
                "field \"amount\" is sent more than once (Django would read the last one)",
            ),
            (
                FieldError::MissingField("sign_time"),
                "missing_field",
                -8,
                "required field sign_time is missing",
            ),
            (
                FieldError::EmptyField("amount"),
                "empty_field",
                -8,
                "required field amount is empty",
            ),
            (
                FieldError::MalformedId("service_id"),
                "malformed_id",
                -8,
                "service_id is not a decimal integer of at most 64 bits",
            ),
            (
                FieldError::MalformedField("amount"),
                "malformed_field",
                -8,
                "amount is malformed",
            ),
            (
                FieldError::UnknownAction,
                "bad_action",
                -3,
                "action is neither 0 (prepare) nor 1 (complete)",
            ),
        ] {
            let reason = RejectReason::from(error);
            assert_eq!(reason.label(), label);
            assert_eq!(reason.click_error().code(), code, "{label}");
            assert_eq!(reason.to_string(), text);
            assert_eq!(reason.hint(), "none");
        }
    }

    #[test]
    fn too_large_names_the_limit() {
        assert_eq!(
            RejectReason::BodyTooLarge.to_string(),
            "the body is over 16384 bytes; Click callbacks are under 1 KiB"
        );
    }
}
