//! Why a signature failed, in words an operator can act on.
//!
//! Failed verifications in the wild have a handful of causes: the backend has no key for the
//! service, the key for it is wrong (or filed under another service), or the signer hashed
//! something other than what it sent: `amount` re-rendered (`1000` vs `1000.00`, the most
//! common), a value trimmed, values hashed still URL-encoded, or the other action's formula.
//! Each is tested by re-signing the callback with one thing changed, against the same key set
//! that judged it; keys themselves are only ever named by fingerprint.
//!
//! The search is bounded: the callback's own keys times a few variants, plus one signature per
//! key of the other services (capped at [`MAX_OTHER_KEYS`]).

use std::fmt;

use super::callback::{Action, Callback};
use super::keys::{Fingerprint, KeyFiles, KeyPlaces, KeySet};
use super::sign::{sign, Signature, SignedFields};

/// Upper bound on keys of other services tried per failed callback.
pub const MAX_OTHER_KEYS: usize = 256;

/// A key that would have verified the callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyMatch {
    pub service_id: u64,
    pub slot: usize,
    pub fingerprint: Fingerprint,
}

/// What would have made the signature verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// The key of another service verifies it: keys filed under the wrong service id.
    OtherService(KeyMatch),
    /// The signer hashed `amount` in another format.
    Amount { sent: String, hashed: String },
    /// The signer trimmed surrounding whitespace from these fields.
    Trimmed(Vec<&'static str>),
    /// The signer hashed the values still URL-encoded.
    Undecoded,
    /// The signer decoded `%XX` but kept `+` instead of a space (percent-decoding without the
    /// form rule, e.g. PHP's `rawurldecode` or Python's `unquote`).
    PlusKept,
    /// The signer used the formula of the other action.
    Formula(Action),
}

/// The reason a callback failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diagnosis {
    /// `sign_string` is not 32 hex characters.
    MalformedDigest,
    /// No key is configured for the service; `other` is a key of another service that verifies.
    UnknownService {
        service_id: u64,
        other: Option<KeyMatch>,
    },
    /// The service's keys do not verify it; `hint` is what would.
    KeyMismatch {
        service_id: u64,
        fingerprints: Vec<Fingerprint>,
        hint: Option<Hint>,
    },
}

impl Diagnosis {
    /// Bounded label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Diagnosis::MalformedDigest => "malformed_sign_string",
            Diagnosis::UnknownService { .. } => "unknown_service",
            Diagnosis::KeyMismatch { .. } => "key_mismatch",
        }
    }

    /// Bounded label of the hint, if any.
    pub fn hint_label(&self) -> Option<&'static str> {
        let hint = match self {
            Diagnosis::UnknownService { other: Some(_), .. } => return Some("other_service"),
            Diagnosis::KeyMismatch { hint: Some(h), .. } => h,
            _ => return None,
        };
        Some(match hint {
            Hint::OtherService(_) => "other_service",
            Hint::Amount { .. } => "amount_format",
            Hint::Trimmed(_) => "trimmed_field",
            Hint::Undecoded => "undecoded_values",
            Hint::PlusKept => "plus_not_decoded",
            Hint::Formula(_) => "wrong_formula",
        })
    }
}

impl Diagnosis {
    /// The explanation, naming the files a missing key goes in: the commands have the
    /// configuration at hand; `Display`, which the request path logs, names the settings.
    pub fn explain<'a>(&'a self, files: Option<KeyFiles<'a>>) -> Explained<'a> {
        Explained {
            diagnosis: self,
            files,
        }
    }
}

/// A [`Diagnosis`] in words, see [`Diagnosis::explain`].
pub struct Explained<'a> {
    diagnosis: &'a Diagnosis,
    files: Option<KeyFiles<'a>>,
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.explain(None).fmt(f)
    }
}

impl fmt::Display for Explained<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.diagnosis {
            Diagnosis::MalformedDigest => f.write_str("sign_string is not 32 hex characters"),
            Diagnosis::UnknownService { service_id, other } => {
                let places = KeyPlaces {
                    service_id: Some(*service_id),
                    files: self.files,
                };
                write!(f, "no key is configured for service {service_id}")?;
                match other {
                    None => write!(f, ": put it {places}"),
                    Some(m) => write!(
                        f,
                        "; the body verifies with the key of service {} (slot {}, fp {}): \
                         that key is probably filed under the wrong service id; otherwise put \
                         the key of service {service_id} {places}",
                        m.service_id, m.slot, m.fingerprint
                    ),
                }
            }
            Diagnosis::KeyMismatch {
                service_id,
                fingerprints,
                hint,
            } => {
                write!(f, "the key(s) of service {service_id} do not match (")?;
                for (slot, fp) in fingerprints.iter().enumerate() {
                    let sep = if slot > 0 { ", " } else { "" };
                    write!(f, "{sep}slot {slot} fp {fp}")?;
                }
                f.write_str(")")?;
                match hint {
                    None => f.write_str(
                        "; no reformatting explains it: the key differs from Click's, \
                         or the body was altered or forged",
                    ),
                    Some(Hint::OtherService(m)) => write!(
                        f,
                        "; the body verifies with the key of service {} (slot {}, fp {}): \
                         the keys are probably filed under the wrong service ids",
                        m.service_id, m.slot, m.fingerprint
                    ),
                    Some(Hint::Amount { sent, hashed }) => write!(
                        f,
                        "; it would verify if amount were hashed as {hashed:?} instead of \
                         {sent:?} as sent: the signer re-formats the amount"
                    ),
                    Some(Hint::Trimmed(fields)) => write!(
                        f,
                        "; it would verify with surrounding whitespace trimmed from {}: \
                         the signer trims values",
                        fields.join(", ")
                    ),
                    Some(Hint::Undecoded) => f.write_str(
                        "; it would verify over the still URL-encoded values: \
                         the signer hashes the raw body, not the decoded fields",
                    ),
                    Some(Hint::PlusKept) => f.write_str(
                        "; it would verify with '+' hashed as '+' rather than a space: \
                         the signer decodes %XX but not the form rule for '+'",
                    ),
                    Some(Hint::Formula(action)) => write!(
                        f,
                        "; it would verify with the {} formula: the signer mixes up \
                         the prepare and complete formulas (merchant_prepare_id)",
                        action.as_str()
                    ),
                }
            }
        }
    }
}

/// Explains a failed verification. Call only after the callback's own keys failed as sent.
pub fn diagnose(cb: &Callback<'_>, expected: &Signature, keys: &KeySet) -> Diagnosis {
    let other = || find_other_service(cb, expected, keys);
    let Some(service) = keys.get(cb.service_id) else {
        return Diagnosis::UnknownService {
            service_id: cb.service_id,
            other: other(),
        };
    };
    let matches = |fields: &SignedFields<'_>| {
        service
            .keys
            .iter()
            .any(|k| sign(fields, &k.secret).ct_eq(expected))
    };
    let hint = other()
        .map(Hint::OtherService)
        .or_else(|| amount_hint(&cb.signed, matches))
        .or_else(|| trim_hint(&cb.signed, matches))
        .or_else(|| encoding_hint(cb, matches))
        .or_else(|| formula_hint(cb, matches));
    Diagnosis::KeyMismatch {
        service_id: cb.service_id,
        fingerprints: service.keys.iter().map(|k| k.fingerprint).collect(),
        hint,
    }
}

fn find_other_service(cb: &Callback<'_>, expected: &Signature, keys: &KeySet) -> Option<KeyMatch> {
    keys.iter()
        .filter(|(id, _)| *id != cb.service_id)
        .flat_map(|(id, svc)| {
            svc.keys
                .iter()
                .enumerate()
                .map(move |(slot, k)| (id, slot, k))
        })
        .take(MAX_OTHER_KEYS)
        .find(|(_, _, k)| sign(&cb.signed, &k.secret).ct_eq(expected))
        .map(|(service_id, slot, k)| KeyMatch {
            service_id,
            slot,
            fingerprint: k.fingerprint,
        })
}

/// Other renderings of the same amount: `1000` ↔ `1000.0` ↔ `1000.00`, `12.5` ↔ `12.50`.
pub fn amount_variants(amount: &str) -> Vec<String> {
    let (int, frac) = amount.split_once('.').unwrap_or((amount, ""));
    let frac = frac.trim_end_matches('0');
    let mut out = if frac.is_empty() {
        vec![int.to_owned(), format!("{int}.0"), format!("{int}.00")]
    } else {
        vec![format!("{int}.{frac}"), format!("{int}.{frac:0<2}")]
    };
    out.dedup();
    out.retain(|v| v != amount);
    out
}

fn amount_hint(
    signed: &SignedFields<'_>,
    matches: impl Fn(&SignedFields<'_>) -> bool,
) -> Option<Hint> {
    amount_variants(signed.amount)
        .into_iter()
        .find_map(|hashed| {
            matches(&SignedFields {
                amount: &hashed,
                ..*signed
            })
            .then(|| Hint::Amount {
                sent: signed.amount.to_owned(),
                hashed,
            })
        })
}

fn trim_hint(
    signed: &SignedFields<'_>,
    matches: impl Fn(&SignedFields<'_>) -> bool,
) -> Option<Hint> {
    let untrimmed = |v: &str| v.trim() != v;
    let mut fields = Vec::new();
    if untrimmed(signed.merchant_trans_id) {
        fields.push("merchant_trans_id");
    }
    if untrimmed(signed.sign_time) {
        fields.push("sign_time");
    }
    let trimmed = SignedFields {
        merchant_trans_id: signed.merchant_trans_id.trim(),
        sign_time: signed.sign_time.trim(),
        ..*signed
    };
    (!fields.is_empty() && matches(&trimmed)).then_some(Hint::Trimmed(fields))
}

fn encoding_hint(cb: &Callback<'_>, matches: impl Fn(&SignedFields<'_>) -> bool) -> Option<Hint> {
    let raw = &cb.signed_raw;
    if *raw == cb.signed {
        return None;
    }
    if matches(raw) {
        return Some(Hint::Undecoded);
    }
    let d = |v: &str| percent_decode_keep_plus(v);
    let (cti, sid, mti, amt, act, st) = (
        d(raw.click_trans_id),
        d(raw.service_id),
        d(raw.merchant_trans_id),
        d(raw.amount),
        d(raw.action),
        d(raw.sign_time),
    );
    let mpi = raw.merchant_prepare_id.map(d);
    let plus_kept = SignedFields {
        click_trans_id: &cti,
        service_id: &sid,
        merchant_trans_id: &mti,
        merchant_prepare_id: mpi.as_deref(),
        amount: &amt,
        action: &act,
        sign_time: &st,
    };
    (plus_kept != cb.signed && matches(&plus_kept)).then_some(Hint::PlusKept)
}

/// `%XX` decoding without the form rule for `+`; invalid sequences stay as written.
fn percent_decode_keep_plus(raw: &str) -> String {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |j: usize| b.get(j).and_then(|&c| char::from(c).to_digit(16));
        match (b[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn formula_hint(cb: &Callback<'_>, matches: impl Fn(&SignedFields<'_>) -> bool) -> Option<Hint> {
    // Only a Complete carries merchant_prepare_id, so only it can be hashed the other way.
    let prepare_shaped = SignedFields {
        merchant_prepare_id: None,
        ..cb.signed
    };
    (cb.action == Action::Complete && matches(&prepare_shaped))
        .then_some(Hint::Formula(Action::Prepare))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amount_variants_cover_common_renderings() {
        assert_eq!(amount_variants("1000.00"), ["1000", "1000.0"]);
        assert_eq!(amount_variants("1000"), ["1000.0", "1000.00"]);
        assert_eq!(amount_variants("12.5"), ["12.50"]);
        assert_eq!(amount_variants("12.50"), ["12.5"]);
        assert_eq!(amount_variants("12.345"), Vec::<String>::new());
    }
}
