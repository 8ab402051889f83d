//! Answers in Click's own format. Click must never learn that a gateway exists, so a refused
//! callback gets what a merchant's server would send: HTTP 200, `application/json`, and the
//! `error`/`error_note` pair from the SHOP-API error table, echoing `click_trans_id` and
//! `merchant_trans_id` when they could be read.
//!
//! Only the three codes about the request itself are the gateway's to give (`-1`, `-3`, `-8`);
//! the business codes (`-2`, `-4`…`-7`, `-9`) are the backend's alone.

use bytes::Bytes;
use serde::Serialize;

use super::callback::Echo;

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
