//! `click-gateway sign`: writes a correctly signed Prepare or Complete body, for testing the
//! gateway and the backend with curl.

use crate::click::callback::{is_amount, parse_id};
use crate::click::sign::{CallbackBody, SignedFields};
use crate::click::{Action, Secret};
use crate::clock::tashkent_now;

/// The fields of the body to sign; `sign_time` defaults to now in Tashkent (UTC+5).
#[derive(Debug, Clone)]
pub struct SignRequest {
    pub action: Action,
    pub service_id: String,
    pub click_trans_id: String,
    pub click_paydoc_id: String,
    pub merchant_trans_id: String,
    pub merchant_prepare_id: Option<String>,
    pub amount: String,
    pub sign_time: Option<String>,
    pub error: String,
    pub error_note: String,
}

/// Builds the signed body, or says which field is unusable.
pub fn body(req: &SignRequest, secret: &Secret) -> Result<String, String> {
    for (name, v) in [
        ("service_id", &req.service_id),
        ("click_trans_id", &req.click_trans_id),
        ("click_paydoc_id", &req.click_paydoc_id),
    ] {
        if parse_id(v).is_none() {
            return Err(format!(
                "{name} must be a decimal integer of at most 64 bits"
            ));
        }
    }
    if !is_amount(&req.amount) {
        return Err("amount must be decimal text such as 1000 or 1000.00".into());
    }
    if req.merchant_trans_id.is_empty() {
        return Err("merchant_trans_id must not be empty".into());
    }
    let prepare_id = match (req.action, &req.merchant_prepare_id) {
        (Action::Complete, None) => return Err("a complete needs --merchant-prepare-id".into()),
        (Action::Complete, Some(id)) if parse_id(id).is_none() => {
            return Err("merchant_prepare_id must be a decimal integer".into())
        }
        (Action::Complete, Some(id)) => Some(id.as_str()),
        (Action::Prepare, Some(_)) => return Err("a prepare has no merchant_prepare_id".into()),
        (Action::Prepare, None) => None,
    };
    let sign_time = req.sign_time.clone().unwrap_or_else(tashkent_now);
    let body = CallbackBody {
        signed: SignedFields {
            click_trans_id: &req.click_trans_id,
            service_id: &req.service_id,
            merchant_trans_id: &req.merchant_trans_id,
            merchant_prepare_id: prepare_id,
            amount: &req.amount,
            action: match req.action {
                Action::Prepare => "0",
                Action::Complete => "1",
            },
            sign_time: &sign_time,
        },
        click_paydoc_id: &req.click_paydoc_id,
        error: &req.error,
        error_note: &req.error_note,
    };
    Ok(body.encode(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_vector_v2() {
        let req = SignRequest {
            action: Action::Complete,
            service_id: "12345".into(),
            click_trans_id: "2103045678".into(),
            click_paydoc_id: "3302114455".into(),
            merchant_trans_id: "order-1001".into(),
            merchant_prepare_id: Some("5001".into()),
            amount: "1000.00".into(),
            sign_time: Some("2024-05-01 12:31:02".into()),
            error: "0".into(),
            error_note: "Success".into(),
        };
        let b = body(&req, &Secret::new("TEST_SECRET_aB3dE5")).unwrap();
        assert_eq!(
            b,
            "click_trans_id=2103045678&service_id=12345&click_paydoc_id=3302114455&merchant_trans_id=order-1001&merchant_prepare_id=5001&amount=1000.00&action=1&error=0&error_note=Success&sign_time=2024-05-01+12%3A31%3A02&sign_string=4b240e5966f8ea8ce6b654c14de08f7a"
        );
        let no_prepare = SignRequest {
            merchant_prepare_id: None,
            ..req
        };
        assert!(body(&no_prepare, &Secret::new("k")).is_err());
    }
}
