//! From a parsed form to a typed Click callback, or the reason it is malformed.
//!
//! Which fields are required and how they look is set by the field list of Click's SHOP-API
//! documentation (<https://docs.click.uz/en/click-api-request/>, "Request parameters"): ids are
//! decimal integers up to 64 bits (never floats: `click_trans_id` and `click_paydoc_id` are
//! `bigint` there), `amount` is decimal text, `action` is `0` (Prepare) or `1` (Complete),
//! Complete adds `merchant_prepare_id`. Values keep their exact text, since that text is what
//! was signed.

use super::form::{self, Form};
use super::sign::SignedFields;

/// Why a form is not a well-formed callback: a field missing, repeated or malformed, or an
/// unknown `action`. This layer's own error, as [`form::FormError`] is the form's: the request
/// path wraps it in its `RejectReason` (`super::reject`), so nothing here depends on how a
/// refusal is answered or logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("field {0:?} is sent more than once (Django would read the last one)")]
    DuplicateField(String),
    #[error("required field {0} is missing")]
    MissingField(&'static str),
    #[error("required field {0} is empty")]
    EmptyField(&'static str),
    #[error("{0} is not a decimal integer of at most 64 bits")]
    MalformedId(&'static str),
    #[error("{0} is malformed")]
    MalformedField(&'static str),
    #[error("action is neither 0 (prepare) nor 1 (complete)")]
    UnknownAction,
}

impl FieldError {
    /// A short, bounded label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            FieldError::DuplicateField(_) => "duplicate_field",
            FieldError::MissingField(_) => "missing_field",
            FieldError::EmptyField(_) => "empty_field",
            FieldError::MalformedId(_) => "malformed_id",
            FieldError::MalformedField(_) => "malformed_field",
            FieldError::UnknownAction => "bad_action",
        }
    }
}

/// Prepare (`action=0`) or Complete (`action=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Prepare,
    Complete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Prepare => "prepare",
            Action::Complete => "complete",
        }
    }
}

/// A callback whose fields are all present and well-formed; not yet verified.
#[derive(Debug, Clone)]
pub struct Callback<'a> {
    pub action: Action,
    pub service_id: u64,
    pub click_trans_id: u64,
    pub click_paydoc_id: &'a str,
    pub error: &'a str,
    pub error_note: &'a str,
    pub sign_string: &'a str,
    /// The values that were hashed, as decoded.
    pub signed: SignedFields<'a>,
    /// The same values as they stood in the body before decoding (for the diagnosis).
    pub signed_raw: SignedFields<'a>,
}

/// What can be echoed in an error answer, read even from a callback that is otherwise
/// malformed: `click_trans_id` when it is a number, `merchant_trans_id` when sent once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Echo<'a> {
    pub click_trans_id: Option<u64>,
    pub merchant_trans_id: Option<&'a str>,
    /// Never echoed: the service the callback names, when its `service_id` is one number, even
    /// if other fields are malformed, so that its mode (`click.service_modes`) judges it.
    pub service_id: Option<u64>,
}

impl<'a> Echo<'a> {
    pub fn from_form(form: &'a Form<'a>) -> Self {
        let single = |name| {
            let mut values = form.values(name);
            match (values.next(), values.next()) {
                (Some(f), None) => Some(&*f.value),
                _ => None,
            }
        };
        Echo {
            click_trans_id: single("click_trans_id").and_then(parse_id),
            merchant_trans_id: single("merchant_trans_id").filter(|v| !v.is_empty()),
            service_id: single("service_id").and_then(parse_id),
        }
    }
}

/// Required in every callback, non-empty. `error_note` is required but may be empty: it is
/// free text that Click does not sign, and refusing a payment over it would help nobody.
const REQUIRED: [(&str, usize); 9] = [
    ("click_trans_id", CLICK_TRANS_ID),
    ("service_id", SERVICE_ID),
    ("click_paydoc_id", CLICK_PAYDOC_ID),
    ("merchant_trans_id", MERCHANT_TRANS_ID),
    ("amount", AMOUNT),
    ("action", ACTION),
    ("error", ERROR),
    ("sign_time", SIGN_TIME),
    ("sign_string", SIGN_STRING),
];

/// The fields the gateway reads, by position in [`Slots`].
const CLICK_TRANS_ID: usize = 0;
const SERVICE_ID: usize = 1;
const CLICK_PAYDOC_ID: usize = 2;
const MERCHANT_TRANS_ID: usize = 3;
const AMOUNT: usize = 4;
const ACTION: usize = 5;
const ERROR: usize = 6;
const SIGN_TIME: usize = 7;
const SIGN_STRING: usize = 8;
const ERROR_NOTE: usize = 9;
const MERCHANT_PREPARE_ID: usize = 10;

fn slot_of(name: &str) -> Option<usize> {
    Some(match name {
        "click_trans_id" => CLICK_TRANS_ID,
        "service_id" => SERVICE_ID,
        "click_paydoc_id" => CLICK_PAYDOC_ID,
        "merchant_trans_id" => MERCHANT_TRANS_ID,
        "amount" => AMOUNT,
        "action" => ACTION,
        "error" => ERROR,
        "sign_time" => SIGN_TIME,
        "sign_string" => SIGN_STRING,
        "error_note" => ERROR_NOTE,
        "merchant_prepare_id" => MERCHANT_PREPARE_ID,
        _ => return None,
    })
}

/// How many fields a callback can have that the gateway reads.
const SLOTS: usize = 11;

/// The names of the fields of a callback, by slot (`slot_of` is the same table as a match,
/// which compiles to a length switch on the hot path; a test holds the two together).
pub const FIELD_NAMES: [&str; SLOTS] = [
    "click_trans_id",
    "service_id",
    "click_paydoc_id",
    "merchant_trans_id",
    "amount",
    "action",
    "error",
    "sign_time",
    "sign_string",
    "error_note",
    "merchant_prepare_id",
];

/// The Click field a request's query string carries, if any: a framework that merges the query
/// with the form (Flask's `request.values`, PHP's `$_REQUEST`, several Node integrations)
/// would read it in place of the signed body's, so a callback with one is refused.
///
/// Read as broadly as any of them would: `&` and `;` both separate (older Python and Perl CGI
/// split on `;`), names are decoded (`+`, `%XX`; an invalid escape stays as written), PHP's
/// name mangling is applied (leading spaces dropped, `.` and space become `_`, `amount[]` is
/// `amount`), and names compare case-insensitively. A merchant's own parameters (`?token=`)
/// pass.
pub fn query_field(query: &str) -> Option<&'static str> {
    query
        .split(['&', ';'])
        .filter_map(|pair| {
            let raw = pair.split('=').next().unwrap_or(pair);
            let mut name = form::decode_lossy(raw.as_bytes());
            if let Some(bracket) = name.iter().position(|&b| b == b'[') {
                name.truncate(bracket);
            }
            let start = name.iter().position(|&b| b != b' ').unwrap_or(name.len());
            let name: Vec<u8> = name[start..]
                .iter()
                .map(|&b| if b == b'.' || b == b' ' { b'_' } else { b })
                .collect();
            FIELD_NAMES
                .iter()
                .copied()
                .find(|f| f.as_bytes().eq_ignore_ascii_case(&name))
        })
        .next()
}

/// The known fields of a form, found in one pass: each one's value, decoded, and its raw
/// text in the body.
pub struct Slots<'f, 'a>([Option<(&'f str, &'a str)>; SLOTS]);

/// A callback's fields read straight from its body into their slots.
pub type SlotFields<'a> = form::SlotForm<'a, SLOTS>;

/// The fast path for a urlencoded callback body: `None` when the body has anything unusual
/// (an unknown, escaped or repeated name, a value that does not decode), which the general
/// path ([`Form::parse`], then [`Slots::of`]) then answers precisely.
pub fn slot_fields(body: &[u8]) -> Option<SlotFields<'_>> {
    SlotFields::parse(body, slot_of)
}

impl<'f, 'a> Slots<'f, 'a> {
    /// Sorts the fields into slots; the first repeated name (known or not) is an error.
    pub fn of(form: &'f Form<'a>) -> Result<Self, FieldError> {
        let mut slots = [None; SLOTS];
        for (i, f) in form.fields.iter().enumerate() {
            let repeated = match slot_of(&f.name) {
                Some(k) => slots[k].replace((&*f.value, f.raw_value)).is_some(),
                None => form.fields[..i].iter().any(|g| g.name == f.name),
            };
            if repeated {
                return Err(FieldError::DuplicateField(clip(&f.name)));
            }
        }
        Ok(Slots(slots))
    }

    /// The slots of fields already read by [`slot_fields`]: nothing left to check, since the
    /// fast path took only bodies whose every name is known and sent once.
    pub fn of_fields(fields: &'f SlotFields<'a>) -> Self {
        Slots(std::array::from_fn(|k| fields.get(k)))
    }

    /// The value of slot `k` (decoded) and its raw text.
    fn field(&self, k: usize) -> Option<(&'f str, &'a str)> {
        self.0[k]
    }

    fn value(&self, k: usize) -> &'f str {
        self.0[k].map(|(value, _)| value).unwrap_or_default()
    }

    fn raw(&self, k: usize) -> &'a str {
        self.0[k].map(|(_, raw)| raw).unwrap_or_default()
    }
}

impl<'f, 'a> Slots<'f, 'a> {
    /// What the error answer may echo: `click_trans_id` when it is a number,
    /// `merchant_trans_id` when not empty (each was sent once, or `of` had refused the form).
    pub fn echo(&self) -> Echo<'f> {
        Echo {
            click_trans_id: parse_id(self.value(CLICK_TRANS_ID)),
            merchant_trans_id: Some(self.value(MERCHANT_TRANS_ID)).filter(|v| !v.is_empty()),
            service_id: parse_id(self.value(SERVICE_ID)),
        }
    }
}

impl<'a> Callback<'a> {
    /// Checks the form in a fixed order, so a given body always gets the same answer:
    /// repeated names, missing fields (`-8`); `action` (`-3`); `merchant_prepare_id` for a
    /// Complete and the shape of every id and the amount (`-8`).
    pub fn from_form(form: &'a Form<'a>) -> Result<Callback<'a>, FieldError> {
        Self::from_slots(&Slots::of(form)?)
    }

    /// As [`Callback::from_form`], with the fields already slotted.
    pub fn from_slots(slots: &Slots<'a, 'a>) -> Result<Callback<'a>, FieldError> {
        for (name, k) in REQUIRED {
            match slots.field(k) {
                None => return Err(FieldError::MissingField(name)),
                Some(("", _)) => return Err(FieldError::EmptyField(name)),
                Some(_) => {}
            }
        }
        // `let ... else` rather than `ok_or(reason)?`: a reason built eagerly is also dropped
        // on the success path, at a cost the hot path notices.
        let Some((error_note, _)) = slots.field(ERROR_NOTE) else {
            return Err(FieldError::MissingField("error_note"));
        };

        let action = match slots.value(ACTION) {
            "0" => Action::Prepare,
            "1" => Action::Complete,
            _ => return Err(FieldError::UnknownAction),
        };
        let prepare_id = match (action, slots.field(MERCHANT_PREPARE_ID)) {
            (Action::Complete, None) => {
                return Err(FieldError::MissingField("merchant_prepare_id"))
            }
            (Action::Complete, Some(("", _))) => {
                return Err(FieldError::EmptyField("merchant_prepare_id"))
            }
            (Action::Complete, Some(field)) if parse_id(field.0).is_some() => Some(field),
            (Action::Complete, Some(_)) => {
                return Err(FieldError::MalformedId("merchant_prepare_id"))
            }
            // A Prepare carries no merchant_prepare_id; one sent anyway is not signed.
            (Action::Prepare, _) => None,
        };

        let id = |k: usize, name: &'static str| match parse_id(slots.value(k)) {
            Some(id) => Ok(id),
            None => Err(FieldError::MalformedId(name)),
        };
        let click_trans_id = id(CLICK_TRANS_ID, "click_trans_id")?;
        let service_id = id(SERVICE_ID, "service_id")?;
        id(CLICK_PAYDOC_ID, "click_paydoc_id")?;
        if !is_integer(slots.value(ERROR)) {
            return Err(FieldError::MalformedField("error"));
        }
        if !is_amount(slots.value(AMOUNT)) {
            return Err(FieldError::MalformedField("amount"));
        }

        let signed = SignedFields {
            click_trans_id: slots.value(CLICK_TRANS_ID),
            service_id: slots.value(SERVICE_ID),
            merchant_trans_id: slots.value(MERCHANT_TRANS_ID),
            merchant_prepare_id: prepare_id.map(|(value, _)| value),
            amount: slots.value(AMOUNT),
            action: slots.value(ACTION),
            sign_time: slots.value(SIGN_TIME),
        };
        let signed_raw = SignedFields {
            click_trans_id: slots.raw(CLICK_TRANS_ID),
            service_id: slots.raw(SERVICE_ID),
            merchant_trans_id: slots.raw(MERCHANT_TRANS_ID),
            merchant_prepare_id: prepare_id.map(|(_, raw)| raw),
            amount: slots.raw(AMOUNT),
            action: slots.raw(ACTION),
            sign_time: slots.raw(SIGN_TIME),
        };
        Ok(Callback {
            action,
            service_id,
            click_trans_id,
            click_paydoc_id: slots.value(CLICK_PAYDOC_ID),
            error: slots.value(ERROR),
            error_note,
            sign_string: slots.value(SIGN_STRING),
            signed,
            signed_raw,
        })
    }
}

/// Field names echoed in reasons are attacker-chosen: keep them short.
fn clip(name: &str) -> String {
    name.chars().take(40).collect()
}

/// A decimal id up to 64 bits: ASCII digits only (no sign, no spaces, no exponent). One pass,
/// checked, so an id past `u64::MAX` is refused rather than wrapped.
pub fn parse_id(text: &str) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    text.bytes().try_fold(0u64, |n, b| {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Click's `error` field: an integer, possibly negative (`-5017` for a failed debit).
fn is_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.len() <= 20 && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Decimal text in soums: `1000`, `1000.00`, `1000.5`: digits, at most one `.`, with digits on
/// both sides of it.
pub fn is_amount(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut dot = None;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'0'..=b'9' => {}
            b'.' if dot.is_none() => dot = Some(i),
            _ => return false,
        }
    }
    match dot {
        None => !bytes.is_empty(),
        Some(i) => i > 0 && i + 1 < bytes.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::form::parse_urlencoded;
    use super::*;

    const V1: &str = "click_trans_id=2103045678&service_id=12345&click_paydoc_id=3302114455&merchant_trans_id=order-1001&amount=1000.00&action=0&error=0&error_note=Success&sign_time=2024-05-01+12%3A30%3A45&sign_string=4c30b2304e2d17ef17eec7d8710e914c";

    fn check(body: &str) -> Result<Action, FieldError> {
        let form = parse_urlencoded(body.as_bytes()).unwrap();
        Callback::from_form(&form).map(|c| c.action)
    }

    fn with(field: &str, value: &str) -> String {
        V1.split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k == field => format!("{k}={value}"),
                _ => kv.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&")
    }

    fn without(field: &str) -> String {
        V1.split('&')
            .filter(|kv| !kv.starts_with(&format!("{field}=")))
            .collect::<Vec<_>>()
            .join("&")
    }

    #[test]
    fn well_formed_prepare() {
        let form = parse_urlencoded(V1.as_bytes()).unwrap();
        let cb = Callback::from_form(&form).unwrap();
        assert_eq!(cb.action, Action::Prepare);
        assert_eq!((cb.service_id, cb.click_trans_id), (12345, 2103045678));
        assert_eq!(cb.signed.sign_time, "2024-05-01 12:30:45");
        assert_eq!(cb.signed_raw.sign_time, "2024-05-01+12%3A30%3A45");
        assert_eq!(cb.signed.merchant_prepare_id, None);
    }

    #[test]
    fn every_required_field_missing_or_empty() {
        for (name, _) in REQUIRED {
            assert_eq!(check(&without(name)), Err(FieldError::MissingField(name)));
            assert_eq!(check(&with(name, "")), Err(FieldError::EmptyField(name)));
        }
        assert_eq!(
            check(&without("error_note")),
            Err(FieldError::MissingField("error_note"))
        );
        assert_eq!(check(&with("error_note", "")), Ok(Action::Prepare));
    }

    #[test]
    fn action_must_be_exactly_0_or_1() {
        for bad in ["2", "00", "-1", "+0", "prepare", "0 "] {
            assert_eq!(
                check(&with("action", bad)),
                Err(FieldError::UnknownAction),
                "{bad}"
            );
        }
    }

    #[test]
    fn complete_needs_merchant_prepare_id() {
        let complete = with("action", "1");
        assert_eq!(
            check(&complete),
            Err(FieldError::MissingField("merchant_prepare_id"))
        );
        assert_eq!(
            check(&format!("{complete}&merchant_prepare_id=")),
            Err(FieldError::EmptyField("merchant_prepare_id"))
        );
        assert_eq!(
            check(&format!("{complete}&merchant_prepare_id=5x")),
            Err(FieldError::MalformedId("merchant_prepare_id"))
        );
        assert_eq!(
            check(&format!("{complete}&merchant_prepare_id=5001")),
            Ok(Action::Complete)
        );
    }

    #[test]
    fn ids_are_64_bit_decimal() {
        assert_eq!(
            check(&with("click_trans_id", "18446744073709551615")),
            Ok(Action::Prepare)
        );
        for bad in ["18446744073709551616", "1e3", "-1", "12.0", "%2B1", "0x10"] {
            assert_eq!(
                check(&with("click_trans_id", bad)),
                Err(FieldError::MalformedId("click_trans_id")),
                "{bad}"
            );
        }
        assert_eq!(
            check(&with("service_id", "12a")),
            Err(FieldError::MalformedId("service_id"))
        );
        assert_eq!(
            check(&with("click_paydoc_id", "x")),
            Err(FieldError::MalformedId("click_paydoc_id"))
        );
    }

    #[test]
    fn field_names_and_slots_are_one_table() {
        for (k, name) in FIELD_NAMES.iter().enumerate() {
            assert_eq!(slot_of(name), Some(k), "{name}");
        }
        assert_eq!(slot_of("x"), None);
    }

    #[test]
    fn query_strings_naming_a_click_field_are_found_however_spelled() {
        for (query, field) in [
            ("amount=1", "amount"),
            ("token=abc&sign_string=00", "sign_string"),
            ("%61mount=1", "amount"),
            ("AMOUNT=1", "amount"),
            ("token=x;error=0", "error"),
            ("sign.string=x", "sign_string"),
            ("sign+string=x", "sign_string"),
            ("+%20merchant_trans_id=x", "merchant_trans_id"),
            ("amount[]=1", "amount"),
            ("error", "error"),
            ("a=1&click_paydoc_id", "click_paydoc_id"),
        ] {
            assert_eq!(query_field(query), Some(field), "{query}");
        }
        for ok in [
            "",
            "token=abc",
            "amount_x=1",
            "x=amount",
            "ref=1&lang=uz",
            "%zz=1",
            "a&&b",
        ] {
            assert_eq!(query_field(ok), None, "{ok}");
        }
    }

    #[test]
    fn ids_are_plain_decimal_u64() {
        assert_eq!(parse_id("0"), Some(0));
        assert_eq!(parse_id("007"), Some(7));
        assert_eq!(parse_id("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "18446744073709551616",
            "99999999999999999999",
            "+1",
            "-1",
            "1 ",
            "1e3",
            "١",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn amount_and_error_shapes() {
        for ok in ["1000", "1000.00", "0.5"] {
            assert!(is_amount(ok), "{ok}");
        }
        assert!(!is_amount(""));
        for bad in [".", "1,000", "1000.", ".5", "1e3", "-5", " 1000", "1.2.3"] {
            assert!(!is_amount(bad), "{bad}");
            assert_eq!(
                check(&with("amount", bad)),
                Err(FieldError::MalformedField("amount"))
            );
        }
        assert_eq!(check(&with("error", "-5017")), Ok(Action::Prepare));
        assert_eq!(
            check(&with("error", "x")),
            Err(FieldError::MalformedField("error"))
        );
    }

    #[test]
    fn duplicate_names_are_refused_and_echo_needs_a_single_value() {
        let body = format!("{V1}&amount=1");
        assert_eq!(
            check(&body),
            Err(FieldError::DuplicateField("amount".into()))
        );
        // Encoded and unknown names are compared too.
        assert_eq!(
            check(&format!("{V1}&%61ction=1")),
            Err(FieldError::DuplicateField("action".into()))
        );
        assert_eq!(
            check(&format!("{V1}&x=1&x=2")),
            Err(FieldError::DuplicateField("x".into()))
        );
        let twice = format!("{V1}&click_trans_id=7");
        let form = parse_urlencoded(twice.as_bytes()).unwrap();
        let echo = Echo::from_form(&form);
        assert_eq!(echo.click_trans_id, None);
        assert_eq!(echo.merchant_trans_id, Some("order-1001"));
    }
}
