//! The Click signature: `md5` over the plain concatenation of the form-decoded values, with the
//! service's secret key third (Click SHOP-API, "Signature"):
//!
//! ```text
//! Prepare:  md5(click_trans_id + service_id + SECRET_KEY + merchant_trans_id + amount + action + sign_time)
//! Complete: md5(click_trans_id + service_id + SECRET_KEY + merchant_trans_id + merchant_prepare_id
//!               + amount + action + sign_time)
//! ```
//!
//! Values are hashed exactly as received: never trimmed, never re-rendered as numbers.

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use super::hex;
use super::keys::Secret;

/// The signed values of a callback, as decoded from the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedFields<'a> {
    pub click_trans_id: &'a str,
    pub service_id: &'a str,
    pub merchant_trans_id: &'a str,
    /// Present for Complete (`action=1`), absent for Prepare: it decides the formula.
    pub merchant_prepare_id: Option<&'a str>,
    pub amount: &'a str,
    pub action: &'a str,
    pub sign_time: &'a str,
}

/// An md5 digest, as Click sends it hex-encoded in `sign_string`. Held as its 16 bytes, so a
/// comparison is two machine words rather than 32 characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; 16]);

impl Signature {
    /// Accepts exactly 32 hex characters in any case (the comparison is case-insensitive).
    pub fn parse(text: &str) -> Option<Signature> {
        let digits: &[u8; 32] = text.as_bytes().try_into().ok()?;
        let (mut out, mut seen) = ([0u8; 16], 0);
        for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let (hi, lo) = (
                hex::DIGIT[usize::from(pair[0])],
                hex::DIGIT[usize::from(pair[1])],
            );
            seen |= hi | lo;
            *o = hi << 4 | lo;
        }
        // Any non-digit set bits above the low four (its value is 0xff).
        (seen < 16).then_some(Signature(out))
    }

    /// Constant-time equality, so response timing reveals nothing about how close a guess was.
    pub fn ct_eq(&self, other: &Signature) -> bool {
        u128::from_ne_bytes(self.0)
            .ct_eq(&u128::from_ne_bytes(other.0))
            .into()
    }
}

/// Lowercase hex, the form Click sends.
impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = [0u8; 32];
        hex::encode_into(&self.0, &mut text);
        f.write_str(std::str::from_utf8(&text).map_err(|_| std::fmt::Error)?)
    }
}

/// Computes the signature of `fields` under `secret`, without building the string in memory.
pub fn sign(fields: &SignedFields<'_>, secret: &Secret) -> Signature {
    let mut md5 = Md5::new();
    md5.update(fields.click_trans_id);
    md5.update(fields.service_id);
    md5.update(secret.expose());
    md5.update(fields.merchant_trans_id);
    if let Some(prepare_id) = fields.merchant_prepare_id {
        md5.update(prepare_id);
    }
    md5.update(fields.amount);
    md5.update(fields.action);
    md5.update(fields.sign_time);
    Signature(md5.finalize().into())
}

/// The fields of a callback body that `click-gateway sign` writes, in Click's order.
#[derive(Debug, Clone)]
pub struct CallbackBody<'a> {
    pub signed: SignedFields<'a>,
    pub click_paydoc_id: &'a str,
    pub error: &'a str,
    pub error_note: &'a str,
}

impl CallbackBody<'_> {
    /// A complete `application/x-www-form-urlencoded` body, signed with `secret`.
    pub fn encode(&self, secret: &Secret) -> String {
        let s = &self.signed;
        let digest = sign(s, secret).to_string();
        let mut fields = vec![
            ("click_trans_id", s.click_trans_id),
            ("service_id", s.service_id),
            ("click_paydoc_id", self.click_paydoc_id),
            ("merchant_trans_id", s.merchant_trans_id),
        ];
        if let Some(prepare_id) = s.merchant_prepare_id {
            fields.push(("merchant_prepare_id", prepare_id));
        }
        fields.extend([
            ("amount", s.amount),
            ("action", s.action),
            ("error", self.error),
            ("error_note", self.error_note),
            ("sign_time", s.sign_time),
            ("sign_string", &digest),
        ]);
        let mut out = String::with_capacity(256);
        for (i, (name, value)) in fields.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.push_str(name);
            out.push('=');
            encode_component(value, &mut out);
        }
        out
    }
}

/// `application/x-www-form-urlencoded` encoding (WHATWG URL §5.2): space as `+`, everything
/// outside `*-._` and alphanumerics as `%XX`.
pub fn encode_component(value: &str, out: &mut String) {
    for &b in value.as_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => {
                let [hi, lo] = hex::upper(b);
                out.push('%');
                out.push(char::from(hi));
                out.push(char::from(lo));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1() -> SignedFields<'static> {
        SignedFields {
            click_trans_id: "2103045678",
            service_id: "12345",
            merchant_trans_id: "order-1001",
            merchant_prepare_id: None,
            amount: "1000.00",
            action: "0",
            sign_time: "2024-05-01 12:30:45",
        }
    }

    #[test]
    fn prepare_and_complete_formulas() {
        let key = Secret::new("TEST_SECRET_aB3dE5");
        assert_eq!(
            sign(&v1(), &key).to_string(),
            "4c30b2304e2d17ef17eec7d8710e914c"
        );
        let complete = SignedFields {
            merchant_prepare_id: Some("5001"),
            action: "1",
            sign_time: "2024-05-01 12:31:02",
            ..v1()
        };
        assert_eq!(
            sign(&complete, &key).to_string(),
            "4b240e5966f8ea8ce6b654c14de08f7a"
        );
    }

    #[test]
    fn near_misses_from_the_protocol_notes() {
        let key = Secret::new("TEST_SECRET_aB3dE5");
        let with = |amount, sign_time| {
            sign(
                &SignedFields {
                    amount,
                    sign_time,
                    ..v1()
                },
                &key,
            )
        };
        assert_eq!(
            with("1000", "2024-05-01 12:30:45").to_string(),
            "98bccec0b93a8c704d1daef634aeecb4"
        );
        assert_eq!(
            with("1000.0", "2024-05-01 12:30:45").to_string(),
            "8ec41dc0f1a8c1cb8955d2dced13e809"
        );
        // "sign_time left encoded": `%XX` decoded, `+` kept.
        assert_eq!(
            with("1000.00", "2024-05-01+12:30:45").to_string(),
            "1fe497622140d77fe18c1bcc7614b5fe"
        );
    }

    #[test]
    fn digest_parse_is_case_insensitive_and_exact_length() {
        let d = Signature::parse("4C30B2304E2D17EF17EEC7D8710E914C").unwrap();
        assert!(d.ct_eq(&Signature::parse("4c30b2304e2d17ef17eec7d8710e914c").unwrap()));
        assert!(Signature::parse("4c30b2304e2d17ef17eec7d8710e914").is_none());
        assert!(Signature::parse("4c30b2304e2d17ef17eec7d8710e914cc").is_none());
        assert!(Signature::parse("4c30b2304e2d17ef17eec7d8710e914g").is_none());
        assert!(Signature::parse("").is_none());
        assert_eq!(d.to_string(), "4c30b2304e2d17ef17eec7d8710e914c");
        // Differs in the last nibble only.
        assert!(!d.ct_eq(&Signature::parse("4c30b2304e2d17ef17eec7d8710e914d").unwrap()));
    }

    #[test]
    fn encoded_body_round_trips_through_the_form_parser() {
        let key = Secret::new("fake+key/with=chars&x");
        let body = CallbackBody {
            signed: SignedFields {
                click_trans_id: "987654321012",
                service_id: "70001",
                merchant_trans_id: "заказ-№7 ü",
                merchant_prepare_id: None,
                amount: "15000",
                action: "0",
                sign_time: "2023-12-31 23:59:59",
            },
            click_paydoc_id: "1122334455",
            error: "0",
            error_note: "Success",
        };
        let text = body.encode(&key);
        assert!(
            text.ends_with("sign_string=3cb95f762f91fd4756380cda0b494c2d"),
            "{text}"
        );
        assert!(text.contains("merchant_trans_id=%D0%B7%D0%B0%D0%BA%D0%B0%D0%B7-%E2%84%967+%C3%BC"));
        let form = super::super::form::parse_urlencoded(text.as_bytes()).unwrap();
        assert_eq!(
            form.values("merchant_trans_id").next().unwrap().value,
            "заказ-№7 ü"
        );
    }
}
