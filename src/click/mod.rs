//! The Click SHOP-API side of the gateway: parse a callback, verify its signature, diagnose a
//! failure and answer in Click's format. Everything here is pure (no I/O), so the same code
//! serves the data path, `click-gateway verify` and the benchmarks.

pub mod callback;
pub mod diagnose;
pub mod form;
pub mod keys;
pub mod respond;
pub mod sign;
pub mod verify;

pub use callback::{Action, Callback, Echo};
pub use diagnose::Diagnosis;
pub use form::{Form, FormKind};
pub use keys::{Fingerprint, KeySet, Secret};
pub use respond::{ClickError, RejectReason};
pub use verify::Verified;

/// Largest callback body accepted. Click's callbacks are under 1 KiB; 16 KiB leaves room for
/// long `merchant_trans_id`/`error_note` values without letting a body grow unbounded.
pub const MAX_CALLBACK_BODY: usize = 16 * 1024;

/// The gateway's verdict on one parsed callback form.
#[derive(Debug)]
pub struct Verdict<'a> {
    /// What the error answer may echo.
    pub echo: Echo<'a>,
    /// The callback, when its fields were well-formed.
    pub callback: Option<Callback<'a>>,
    pub outcome: Result<Verified, RejectReason>,
}

/// Checks fields, then the signature against `keys`.
pub fn judge<'a>(form: &'a Form<'a>, keys: &KeySet) -> Verdict<'a> {
    let slots = match callback::Slots::of(form) {
        Ok(slots) => slots,
        Err(reason) => {
            return Verdict {
                echo: Echo::from_form(form),
                callback: None,
                outcome: Err(reason),
            }
        }
    };
    let echo = slots.echo();
    match Callback::from_slots(&slots) {
        Err(reason) => Verdict {
            echo,
            callback: None,
            outcome: Err(reason),
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
