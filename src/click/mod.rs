//! The Click SHOP-API side of the gateway: parse a callback, verify its signature, diagnose a
//! failure and answer in Click's format. Everything here is pure (no I/O), so the same code
//! serves the data path, `click-gateway verify` and the benchmarks.

pub mod callback;
pub mod diagnose;
pub mod digest;
pub mod form;
pub(crate) mod hex;
pub mod keys;
pub mod reject;
pub mod respond;
pub mod sign;
pub mod verify;

pub use callback::{Action, Callback, Echo, FieldError};
pub use diagnose::Diagnosis;
pub use form::{Form, FormKind, MAX_CALLBACK_BODY};
pub use keys::{Fingerprint, KeySet, Secret};
pub use reject::RejectReason;
pub use respond::ClickError;
pub use verify::Verified;

/// The gateway's verdict on one parsed callback form.
#[derive(Debug)]
pub struct Verdict<'a> {
    /// What the error answer may echo.
    pub echo: Echo<'a>,
    /// The callback, when its fields were well-formed.
    pub callback: Option<Callback<'a>>,
    pub outcome: Result<Verified, RejectReason>,
}

/// A callback body parsed for judging, which the [`Verdict`] borrows: its fields straight in
/// their slots (the fast path every well-formed urlencoded callback takes), or the whole form
/// (multipart, and urlencoded bodies with anything unusual, so their answer is precise).
pub enum Parsed<'a> {
    Slotted(callback::SlotFields<'a>),
    Form(Form<'a>),
}

impl<'a> Parsed<'a> {
    pub fn parse(kind: &FormKind, body: &'a [u8]) -> Result<Parsed<'a>, form::FormError> {
        if let FormKind::UrlEncoded = kind {
            if let Some(fields) = callback::slot_fields(body) {
                return Ok(Parsed::Slotted(fields));
            }
        }
        Form::parse(kind, body).map(Parsed::Form)
    }

    /// Every field of the body but `sign_string`, decoded, `(name, value)` sorted by name:
    /// the message the replay guard binds a signature to (the signature itself is the
    /// binding's key, compared case-insensitively as Click's is). The fast path holds every
    /// field too (it takes only bodies whose every name it knows).
    pub fn fields(&self) -> Vec<(&str, &str)> {
        let mut all: Vec<(&str, &str)> = match self {
            Parsed::Slotted(slots) => callback::FIELD_NAMES
                .iter()
                .enumerate()
                .filter_map(|(k, name)| slots.get(k).map(|(value, _)| (*name, value)))
                .collect(),
            Parsed::Form(form) => form.fields.iter().map(|f| (&*f.name, &*f.value)).collect(),
        };
        all.retain(|(name, _)| *name != "sign_string");
        all.sort_unstable();
        all
    }

    /// Checks fields, then the signature against `keys`; the same verdict whichever way the
    /// body was parsed.
    pub fn judge(&'a self, keys: &KeySet) -> Verdict<'a> {
        match self {
            Parsed::Slotted(fields) => judge_slots(callback::Slots::of_fields(fields), keys),
            Parsed::Form(form) => judge(form, keys),
        }
    }
}

/// Checks fields, then the signature against `keys`.
pub fn judge<'a>(form: &'a Form<'a>, keys: &KeySet) -> Verdict<'a> {
    match callback::Slots::of(form) {
        Ok(slots) => judge_slots(slots, keys),
        Err(reason) => Verdict {
            echo: Echo::from_form(form),
            callback: None,
            outcome: Err(RejectReason::Field(reason)),
        },
    }
}

fn judge_slots<'a>(slots: callback::Slots<'a, 'a>, keys: &KeySet) -> Verdict<'a> {
    let echo = slots.echo();
    match Callback::from_slots(&slots) {
        Err(reason) => Verdict {
            echo,
            callback: None,
            outcome: Err(RejectReason::Field(reason)),
        },
        Ok(cb) => {
            let outcome = verify::verify(&cb, keys).map_err(RejectReason::Signature);
            Verdict {
                echo,
                callback: Some(cb),
                outcome,
            }
        }
    }
}
