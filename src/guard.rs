//! One signature, one message: the replay and tamper guard.
//!
//! Click's `sign_string` covers neither `error`, `error_note` nor `click_paydoc_id`, and joins
//! the fields it covers with no separator, so one signature fits several messages: a captured
//! Complete with `error=-5017` (the payment failed) still verifies with `error=0`, and
//! `merchant_prepare_id=5001&amount=1000.00` hashes the same string as
//! `merchant_prepare_id=500&amount=11000.00`: both formulas of Click's SHOP-API documentation
//! (<https://docs.click.uz/en/click-api-request/>, [`crate::click::sign`]) leave those three
//! fields out and concatenate the rest. The gateway sees every callback, so it can bind each
//! signature to the message it first came with:
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
//! **Record first, then forward.** The binding is part of the callback's write-ahead record
//! ([`crate::ledger::Ledger::write_ahead`]): on SQLite the ledger's in-memory index over its
//! rows answers at once, under a lock, before the row is appended ([`crate::ledger::index`]);
//! on PostgreSQL the row and the binding are one statement, whose unique constraint decides
//! between gateways. Two copies with different fields arriving at once, on two workers or two
//! gateways, cannot both pass. The index remembers `guard.window` (30 days by default): a
//! signature older than that is bound anew as if first, so a changed replay of a callback
//! signed longer ago would pass it; `click.max_sign_age`, enforced and shorter than the
//! window, refuses those (nothing warns when it is not: `check` does not compare the two). On
//! PostgreSQL the bindings are kept, and pruned, with the rows (`ledger.retention`).
//!
//! When the record cannot be committed within `guard.timeout`, `guard.on_store_error` decides:
//! `refuse` (a plain 503: Click retries later; the ledger never lacks a callback the backend
//! got) or `allow` (forwarded unrecorded, counted). A service in shadow mode is never refused
//! for it: it is forwarded unrecorded, counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

use crate::checkpoint::{Decision, Judgment};
use crate::click::{digest, Action, Callback, Parsed, RejectReason};
use crate::config::{GuardMode, Mode, StoreErrorPolicy};
use crate::ledger::index::{self, Claim, Signed};
use crate::ledger::{
    self, Admitted, BindOutcome, Binding, CompleteClaim, Correction, Ledger, LedgerError, Record,
    Seen,
};
use crate::metrics::{GuardLabels, Metrics, ReasonLabels};
pub use crate::runtime::GuardRules as Rules;

/// What became of a callback on its way to the backend.
#[derive(Debug)]
pub enum Admission {
    /// Its record is committed (this row): forward it.
    Recorded(i64),
    /// Forward it unrecorded: the record could not be written (why), and `on_store_error =
    /// "allow"` or the service is in shadow mode. Counted.
    Unrecorded(String),
    /// A rule refused it (the judgment says why); `recorded`: its row is written already
    /// (PostgreSQL, rule 2 enforced), corrected to say so.
    Refused { recorded: bool },
    /// The record could not be written (why) and `on_store_error = "refuse"`: a plain 503.
    Unavailable(String),
}

/// Writes a callback's record before it is forwarded, with the guard's binding when it
/// verified, and applies the rules to what the binding found (changing `judgment`). `record`
/// builds the row from the judgment as it stands.
pub async fn admit(
    rules: &Rules,
    ledger: &Ledger,
    metrics: &Metrics,
    parsed: &Parsed<'_>,
    judgment: &mut Judgment<'_>,
    request_id: &str,
    record: impl Fn(&Judgment<'_>) -> Record,
) -> Admission {
    let guarded = judgment.verified.is_some()
        && (rules.signature != GuardMode::Off || rules.transaction != GuardMode::Off);
    let Some(cb) = judgment.callback.clone().filter(|_| guarded) else {
        return recorded(rules, ledger, metrics, judgment, record(judgment), None).await;
    };
    match ledger.index() {
        Some(index) => sqlite(rules, ledger, index, metrics, parsed, cb, judgment, record).await,
        None => {
            let canonical = digest::of(parsed);
            let refuses = rules.signature == GuardMode::Enforce && judgment.service_enforced();
            let binding = binding(refuses, &canonical, &cb, request_id);
            let rec = record(judgment);
            let admitted = match within(rules, ledger.write_ahead(rec, Some(binding))).await {
                Ok(admitted) => admitted,
                Err(why) => return store_failed(rules, metrics, judgment, why),
            };
            postgres(rules, ledger, metrics, &cb, judgment, admitted, record)
        }
    }
}

/// SQLite: the index first (one step under its lock), then the row.
#[allow(clippy::too_many_arguments)]
async fn sqlite(
    rules: &Rules,
    ledger: &Ledger,
    index: &index::Index,
    metrics: &Metrics,
    parsed: &Parsed<'_>,
    cb: Callback<'_>,
    judgment: &mut Judgment<'_>,
    record: impl Fn(&Judgment<'_>) -> Record,
) -> Admission {
    let (Some(bound), Some(id)) = (index.bound_of(parsed, &cb), ledger.row_id()) else {
        return recorded(rules, ledger, metrics, judgment, record(judgment), None).await;
    };
    let found = index.bind(&Claim {
        key: bound.key,
        signed: Signed {
            digest: bound.digest,
            row: id,
        },
        complete: bound
            .complete_error
            .map(|e| (cb.service_id, cb.click_trans_id, e)),
        enforce_signature: rules.signature == GuardMode::Enforce && judgment.service_enforced(),
    });
    let signature = match found.signature {
        Seen::Changed(_) => Seen::Changed(match found.first_row {
            Some(row) => first_fields(rules, ledger, row, &digest::of(parsed)).await,
            None => Vec::new(),
        }),
        seen => seen,
    };
    let binds = !matches!(signature, Seen::Changed(_));
    let outcome = BindOutcome {
        signature,
        earlier_complete_error: found.earlier_complete_error.map(|e| match e {
            index::UNREADABLE_ERROR => "?".to_owned(),
            e => e.to_string(),
        }),
    };
    judge(rules, &cb, outcome, judgment, metrics);
    if matches!(judgment.decision(), Decision::Answer(_)) {
        return Admission::Refused { recorded: false };
    }
    let mut rec = record(judgment);
    rec.bound = binds.then_some(bound);
    recorded(rules, ledger, metrics, judgment, rec, Some(id)).await
}

/// The names of the fields `canonical` differs in from the message of row `first` (read from
/// the ledger); none named when that row cannot be read in time.
async fn first_fields(rules: &Rules, ledger: &Ledger, first: i64, canonical: &str) -> Vec<String> {
    let read = tokio::time::timeout(rules.timeout, ledger.body(first)).await;
    let Ok(Ok(Some((content_type, body)))) = read else {
        return Vec::new();
    };
    let kind = crate::click::FormKind::of_stored(content_type.as_deref());
    match Parsed::parse(&kind, &body) {
        Ok(parsed) => digest::differing(&digest::of(&parsed), canonical),
        Err(_) => Vec::new(),
    }
}

/// PostgreSQL: the statement has written the row with its binding (unless rule 1, enforced,
/// refused it); a finding it reports corrects the row.
fn postgres(
    rules: &Rules,
    ledger: &Ledger,
    metrics: &Metrics,
    cb: &Callback<'_>,
    judgment: &mut Judgment<'_>,
    admitted: Admitted,
    record: impl Fn(&Judgment<'_>) -> Record,
) -> Admission {
    // The row holds what was known before the statement (a shadowed failure, say): only a
    // finding of the statement's corrects it.
    let known = judgment.failure.as_ref().map(|r| r.label());
    if let Some(outcome) = admitted.outcome {
        judge(rules, cb, outcome, judgment, metrics);
    }
    let refused = matches!(judgment.decision(), Decision::Answer(_));
    match admitted.id {
        Some(id) => {
            let found = judgment
                .failure
                .as_ref()
                .filter(|r| Some(r.label()) != known);
            if let Some(reason) = found {
                ledger.correct(Correction {
                    callback: id,
                    verdict: judgment.verdict().as_str(),
                    reason: Some(reason.label()),
                    hint: Some(reason.hint()).filter(|h| *h != "none"),
                    detail: Some(reason.to_string()),
                });
            }
            if refused {
                Admission::Refused { recorded: true }
            } else {
                Admission::Recorded(id)
            }
        }
        None if refused => Admission::Refused { recorded: false },
        // Left out by the statement (rule 1 would refuse it) yet forwarded: cannot be, the
        // statement's rule is this one's; should it ever be, the row is recorded apart and
        // the callback counted as forwarded unrecorded.
        None => {
            ledger.record(record(judgment));
            store_failed(
                rules,
                metrics,
                judgment,
                "the statement left the row out".to_owned(),
            )
        }
    }
}

/// The record of a callback the guard does not bind (or binds in memory): committed before
/// it is forwarded.
async fn recorded(
    rules: &Rules,
    ledger: &Ledger,
    metrics: &Metrics,
    judgment: &Judgment<'_>,
    rec: Record,
    id: Option<i64>,
) -> Admission {
    let pending = match id {
        Some(id) => ledger.write_ahead_as(id, rec),
        None => ledger.write_ahead(rec, None),
    };
    match within(rules, pending).await {
        Ok(Admitted { id: Some(id), .. }) => Admission::Recorded(id),
        Ok(Admitted { id: None, .. }) => store_failed(
            rules,
            metrics,
            judgment,
            "the ledger gave the row no id".to_owned(),
        ),
        Err(why) => store_failed(rules, metrics, judgment, why),
    }
}

/// Waits for the store at most `guard.timeout`.
async fn within<T>(rules: &Rules, pending: ledger::Pending<T>) -> Result<T, String> {
    match tokio::time::timeout(rules.timeout, pending).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(store_error(&e)),
        Err(_) => Err(format!(
            "no commit within {:?} (guard.timeout)",
            rules.timeout
        )),
    }
}

fn store_error(e: &LedgerError) -> String {
    e.to_string()
}

/// `on_store_error` for a callback whose record could not be written: refused (a plain 503)
/// only when its service enforces; otherwise forwarded unrecorded, counted.
fn store_failed(
    rules: &Rules,
    metrics: &Metrics,
    judgment: &Judgment<'_>,
    why: String,
) -> Admission {
    count(metrics, "signature", "store_error");
    match rules.on_store_error {
        StoreErrorPolicy::Refuse if judgment.service_enforced() => Admission::Unavailable(why),
        _ => {
            metrics
                .ledger_unrecorded
                .get_or_create(&ReasonLabels {
                    reason: "store_error",
                })
                .inc();
            Admission::Unrecorded(why)
        }
    }
}

fn count(metrics: &Metrics, rule: &'static str, outcome: &'static str) {
    metrics
        .guard_checks
        .get_or_create(&GuardLabels { rule, outcome })
        .inc();
}

fn mode(m: GuardMode) -> Mode {
    match m {
        GuardMode::Enforce => Mode::Enforce,
        _ => Mode::Shadow,
    }
}

/// The rules applied to what the binding found, into the judgment.
fn judge(
    rules: &Rules,
    cb: &Callback<'_>,
    found: BindOutcome,
    judgment: &mut Judgment<'_>,
    metrics: &Metrics,
) {
    let mut ruling: Option<(RejectReason, Mode)> = None;
    if rules.signature != GuardMode::Off {
        match found.signature {
            Seen::First => count(metrics, "signature", "first"),
            Seen::Same => count(metrics, "signature", "retry"),
            Seen::Changed(fields) => {
                count(metrics, "signature", "replayed_with_changes");
                ruling = Some((
                    RejectReason::ReplayedWithChanges(fields),
                    mode(rules.signature),
                ));
            }
        }
    }
    if rules.transaction != GuardMode::Off && cb.action == Action::Complete {
        match found.earlier_complete_error {
            None => count(metrics, "transaction", "first"),
            Some(earlier) if paid(&earlier) == paid(cb.error) => {
                count(metrics, "transaction", "consistent")
            }
            Some(earlier) => {
                count(metrics, "transaction", "contradicts");
                // Rule 1's finding stands, unless it is only shadowed and this one is
                // enforced: a shadowed rule must not let an enforced one through.
                let stronger = match &ruling {
                    None => true,
                    Some((_, Mode::Shadow)) => rules.transaction == GuardMode::Enforce,
                    Some(_) => false,
                };
                if stronger {
                    ruling = Some((
                        RejectReason::CompleteContradictsEarlier {
                            earlier: earlier.chars().take(24).collect(),
                            now: cb.error.to_owned(),
                        },
                        mode(rules.transaction),
                    ));
                }
            }
        }
    }
    if let Some((reason, mode)) = ruling {
        judgment.rule_failed(reason, mode);
    }
}

/// Whether a Complete's `error` says the money was debited: `0` (or more), not a negative code.
fn paid(error: &str) -> bool {
    match error.strip_prefix('-') {
        None => true,
        Some(digits) => digits.bytes().all(|b| b == b'0'),
    }
}

/// The PostgreSQL statement's input: the signature, the digest and the fields of the whole
/// message.
/// `refuses`: rule 1 refuses a changed message of this callback's service (the statement then
/// leaves its row out).
fn binding(refuses: bool, canonical: &str, cb: &Callback<'_>, request_id: &str) -> Binding {
    Binding {
        service_id: cb.service_id.to_string(),
        sign: cb.sign_string.to_ascii_lowercase(),
        digest: digest::digest(canonical),
        fields: canonical.to_owned(),
        request_id: request_id.to_owned(),
        token: token(),
        time_us: ledger::unix_micros(SystemTime::now()),
        enforce_signature: refuses,
        complete: (cb.action == Action::Complete).then(|| CompleteClaim {
            click_trans_id: cb.click_trans_id.to_string(),
            error: cb.error.to_owned(),
        }),
    }
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
}
