//! One signature, one message: the replay and tamper guard.
//!
//! Click's `sign_string` covers neither `error`, `error_note` nor `click_paydoc_id`, and joins
//! the fields it covers with no separator, so one signature fits several messages: a captured
//! Complete with `error=-5017` (the payment failed) still verifies with `error=0`, and
//! `merchant_prepare_id=5001&amount=1000.00` hashes the same string as
//! `merchant_prepare_id=500&amount=11000.00` (see `click-protocol.md`, "Unsigned"). The
//! gateway sees every callback, so it can bind each signature to the message it first came
//! with:
//!
//! - **rule 1** (`guard.mode`, `enforce` by default with a ledger): a verified callback's
//!   `(service_id, sign_string)` is bound to a digest of all its decoded fields, signed and
//!   unsigned. The same signature again with identical fields is a retry (Click retries) and
//!   passes; with any field different it is refused with `-1`, reason `replayed_with_changes`,
//!   naming the fields. It has no false positive by construction: Click signs a new message
//!   with a new `sign_time`, so a different message under a seen signature is not Click's.
//! - **rule 2** (`guard.transaction_mode`, `shadow` by default): for one
//!   `(service_id, click_trans_id)`, a Complete whose `error` says paid where the first
//!   forwarded Complete said failed, or the other way round, gets reason
//!   `complete_contradicts_earlier` (`-8` when enforced). The protocol does not say whether Click
//!   may legitimately do this, so by default it is only logged and counted.
//!
//! The binding is one statement in the ledger's store, committed (durably) before the callback
//! is forwarded: two copies with different fields arriving at once, on two workers or two
//! gateways sharing a PostgreSQL store, cannot both pass. When the store cannot answer within
//! `guard.timeout`, `guard.on_store_error` decides: `refuse` (a plain 503: Click retries
//! later) or `allow` (forwarded unguarded, counted).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::click::{Action, Callback, Parsed, RejectReason};
use crate::config::{GuardMode, GuardSettings, Mode, StoreErrorPolicy};
use crate::ledger::{self, BindOutcome, Binding, CompleteClaim, Done, Ledger, Seen};
use crate::metrics::{GuardLabels, Metrics};

/// The guard's rules as configured, with a ledger to keep their bindings in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub signature: GuardMode,
    pub transaction: GuardMode,
    pub on_store_error: StoreErrorPolicy,
    pub timeout: Duration,
}

impl Rules {
    /// The rules `[guard]` sets, given whether a ledger is configured; `None` when both rules
    /// are off.
    pub fn new(s: &GuardSettings, ledger: bool) -> Option<Rules> {
        let default = |mode: Option<GuardMode>, on: GuardMode| {
            mode.unwrap_or(if ledger { on } else { GuardMode::Off })
        };
        let rules = Rules {
            signature: default(s.mode, GuardMode::Enforce),
            transaction: default(s.transaction_mode, GuardMode::Shadow),
            on_store_error: s.on_store_error,
            timeout: s.timeout.0,
        };
        (ledger && (rules.signature != GuardMode::Off || rules.transaction != GuardMode::Off))
            .then_some(rules)
    }
}

/// What the guard made of a verified callback.
#[derive(Debug)]
pub enum Ruling {
    /// Nothing against it (a first message, a retry, or the rules off).
    Pass,
    /// A rule found it wrong; the mode says whether it is refused or only reported.
    Fails(RejectReason, Mode),
    /// The store did not answer and `on_store_error = "refuse"`: a plain 503.
    Unavailable(String),
    /// The store did not answer and `on_store_error = "allow"`: forwarded, unguarded.
    Unguarded(String),
}

/// Checks a verified callback against the bindings, waiting for the store's commit (at most
/// `rules.timeout`). `service_enforced`: the callback's service is in enforce mode. When the
/// store fails, `on_store_error = "refuse"` refuses only where a rule could have refused: with
/// the service or both rules in shadow mode nothing is ever refused, so the callback goes on
/// unguarded (counted, logged).
pub async fn check(
    rules: &Rules,
    ledger: &Ledger,
    metrics: &Metrics,
    parsed: &Parsed<'_>,
    cb: &Callback<'_>,
    request_id: &str,
    service_enforced: bool,
) -> Ruling {
    let binding = binding(rules, parsed, cb, request_id);
    let outcome = tokio::time::timeout(rules.timeout, ledger.bind(binding)).await;
    let count = |rule: &'static str, outcome: &'static str| {
        metrics
            .guard_checks
            .get_or_create(&GuardLabels { rule, outcome })
            .inc();
    };
    let found = match outcome {
        Ok(Ok(Done::Bound(found))) => found,
        failed => {
            let why = match failed {
                Err(_) => format!("no answer within {:?}", rules.timeout),
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(other)) => format!("unexpected answer {other:?}"),
            };
            count("signature", "store_error");
            let could_refuse = service_enforced
                && (rules.signature == GuardMode::Enforce
                    || (rules.transaction == GuardMode::Enforce && cb.action == Action::Complete));
            return match rules.on_store_error {
                StoreErrorPolicy::Refuse if could_refuse => Ruling::Unavailable(why),
                _ => Ruling::Unguarded(why),
            };
        }
    };
    judge(rules, cb, found, count)
}

/// The rules applied to what the store found.
fn judge(
    rules: &Rules,
    cb: &Callback<'_>,
    found: BindOutcome,
    count: impl Fn(&'static str, &'static str),
) -> Ruling {
    let mode = |m: GuardMode| match m {
        GuardMode::Enforce => Mode::Enforce,
        _ => Mode::Shadow,
    };
    let mut ruling = Ruling::Pass;
    if rules.signature != GuardMode::Off {
        match found.signature {
            Seen::First => count("signature", "first"),
            Seen::Same => count("signature", "retry"),
            Seen::Changed(fields) => {
                count("signature", "replayed_with_changes");
                ruling = Ruling::Fails(
                    RejectReason::ReplayedWithChanges(fields),
                    mode(rules.signature),
                );
            }
        }
    }
    if rules.transaction != GuardMode::Off && cb.action == Action::Complete {
        match found.earlier_complete_error {
            None => count("transaction", "first"),
            Some(earlier) if paid(&earlier) == paid(cb.error) => count("transaction", "consistent"),
            Some(earlier) => {
                count("transaction", "contradicts");
                // Rule 1's finding stands, unless it is only shadowed and this one is
                // enforced: a shadowed rule must not let an enforced one through.
                let stronger = match &ruling {
                    Ruling::Pass => true,
                    Ruling::Fails(_, Mode::Shadow) => rules.transaction == GuardMode::Enforce,
                    _ => false,
                };
                if stronger {
                    ruling = Ruling::Fails(
                        RejectReason::CompleteContradictsEarlier {
                            earlier: earlier.chars().take(24).collect(),
                            now: cb.error.to_owned(),
                        },
                        mode(rules.transaction),
                    );
                }
            }
        }
    }
    ruling
}

/// Whether a Complete's `error` says the money was debited: `0` (or more), not a negative code.
fn paid(error: &str) -> bool {
    match error.strip_prefix('-') {
        None => true,
        Some(digits) => digits.bytes().all(|b| b == b'0'),
    }
}

/// The statement's input: the signature, the digest and the fields of the whole message.
fn binding(rules: &Rules, parsed: &Parsed<'_>, cb: &Callback<'_>, request_id: &str) -> Binding {
    let fields = canonical(&parsed.fields());
    Binding {
        service_id: cb.service_id.to_string(),
        sign: cb.sign_string.to_ascii_lowercase(),
        digest: digest(&fields),
        fields,
        request_id: request_id.to_owned(),
        token: token(),
        time_us: ledger::unix_micros(SystemTime::now()),
        enforce_signature: rules.signature == GuardMode::Enforce,
        complete: (cb.action == Action::Complete).then(|| CompleteClaim {
            click_trans_id: cb.click_trans_id.to_string(),
            error: cb.error.to_owned(),
        }),
    }
}

/// The fields as one JSON object, `(name, value)` pairs in the order given (sorted by name,
/// each name once: [`Parsed::fields`]): a canonical text of the message, the same for the
/// same fields and different for any other, since JSON's escaping is one to one. It is what
/// the store keeps to name the fields a later message changed, and what [`digest`] hashes.
pub fn canonical(fields: &[(&str, &str)]) -> String {
    let size: usize = fields.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
    let mut out = String::with_capacity(size + 2);
    out.push('{');
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(&mut out, name);
        out.push(':');
        json_string(&mut out, value);
    }
    out.push('}');
    out
}

/// Appends `text` as a JSON string (RFC 8259 §7: `"` and `\` escaped, control characters as
/// `\u00XX`, everything else as it is).
fn json_string(out: &mut String, text: &str) {
    out.push('"');
    let mut plain = 0;
    for (i, b) in text.bytes().enumerate() {
        if b == b'"' || b == b'\\' || b < 0x20 {
            out.push_str(&text[plain..i]);
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                _ => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.push_str("\\u00");
                    out.push(char::from(HEX[usize::from(b >> 4)]));
                    out.push(char::from(HEX[usize::from(b & 0x0f)]));
                }
            }
            plain = i + 1;
        }
    }
    out.push_str(&text[plain..]);
    out.push('"');
}

/// SHA-256 of the canonical text: what rule 1 compares (one pass over a few hundred bytes).
pub fn digest(canonical: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref());
    out
}

/// A token unique to this binding attempt among every gateway sharing a store: a random
/// per-process prefix and a counter.
fn token() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 8];
        let random = ring::rand::SystemRandom::new();
        if ring::rand::SecureRandom::fill(&random, &mut bytes).is_err() {
            // No randomness from the OS: the time and pid still tell gateways apart.
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            bytes = (nanos ^ u64::from(std::process::id()) << 32).to_le_bytes();
        }
        u64::from_le_bytes(bytes)
    });
    format!("{prefix:016x}{:016x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_text_tells_re_split_fields_apart_and_is_json() {
        let a = canonical(&[("amount", "1000.00"), ("merchant_prepare_id", "5001")]);
        let b = canonical(&[("amount", "11000.00"), ("merchant_prepare_id", "500")]);
        assert_ne!(digest(&a), digest(&b));
        assert_eq!(a, r#"{"amount":"1000.00","merchant_prepare_id":"5001"}"#);
        // Nor can a value borrow from its name, or escaping make two lists alike.
        assert_ne!(canonical(&[("ab", "c")]), canonical(&[("a", "bc")]));
        let odd = canonical(&[("n", "a\"b\\c\n\u{1}é")]);
        let parsed: serde_json::Value = serde_json::from_str(&odd).unwrap();
        assert_eq!(parsed["n"], "a\"b\\c\n\u{1}é");
        assert_eq!(
            crate::ledger::binding::differing(&a, &b),
            ["amount", "merchant_prepare_id"]
        );
    }

    #[test]
    fn paid_is_zero_or_more() {
        for (error, want) in [
            ("0", true),
            ("-0", true),
            ("5", true),
            ("-5017", false),
            ("-1", false),
        ] {
            assert_eq!(paid(error), want, "{error}");
        }
    }

    #[test]
    fn tokens_are_unique() {
        let (a, b) = (token(), token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn the_rules_need_a_ledger_and_default_to_enforce_and_shadow() {
        let s = GuardSettings::default();
        assert_eq!(Rules::new(&s, false), None);
        let r = Rules::new(&s, true).unwrap();
        assert_eq!(
            (r.signature, r.transaction),
            (GuardMode::Enforce, GuardMode::Shadow)
        );
        let off = GuardSettings {
            mode: Some(GuardMode::Off),
            transaction_mode: Some(GuardMode::Off),
            ..s
        };
        assert_eq!(Rules::new(&off, true), None);
    }
}
