//! `click-gateway sign`: writes a correctly signed Prepare or Complete body, for testing the
//! gateway and the backend with curl.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::click::callback::{is_amount, parse_id};
use crate::click::sign::{CallbackBody, SignedFields};
use crate::click::{Action, Secret};

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

/// Now as `YYYY-MM-DD HH:mm:ss` in UTC+5, the zone Click's `sign_time` most likely uses.
pub fn tashkent_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 5 * 3600;
    format_unix(secs)
}

/// Formats seconds since the epoch as a civil date-time (proleptic Gregorian calendar).
pub fn format_unix(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's days-from-civil, inverted.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_time() {
        assert_eq!(format_unix(0), "1970-01-01 00:00:00");
        assert_eq!(format_unix(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_unix(1_714_566_645), "2024-05-01 12:30:45");
    }

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
