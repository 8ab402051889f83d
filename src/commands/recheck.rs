//! `click-gateway recheck`: judges again every recorded callback that was refused for its
//! signature (`unknown_service`, `key_mismatch`) in a window, from its stored bytes, against
//! the keys configured now or against one candidate key. It answers "we added the key for
//! service 82154 at 09:40: which of the callbacks refused since 09:12 would have verified?"
//! and "is this the key Click signs with?" without forwarding anything.
//!
//! The candidate key is read by the binary from a file or standard input, never taken from the
//! command line (where `ps` and shell history would keep it); it is named by fingerprint only.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::report::{self, or_dash, CommandError, Format, Table};
use crate::click::keys::{KeyEntry, KeySource, ServiceKeys};
use crate::click::{callback, FormKind, KeySet, Parsed, Secret};
use crate::config::{Environment, Span};
use crate::ledger::time::rfc3339_secs;
use crate::ledger::{Store, Stored};
use crate::text::printable;

/// Which refused callbacks to judge again, and with what.
#[derive(Debug, Clone)]
pub struct RecheckQuery {
    /// One service, or all.
    pub service_id: Option<String>,
    pub since: Span,
    /// Judge each callback as if this key alone were configured for its service, instead of
    /// the configured keys.
    pub candidate: Option<Secret>,
}

/// Most `merchant_trans_id`s a summary line lists.
const MAX_ORDERS: usize = 20;

/// Reads the ledger `config` names and re-judges; returns whether at least one refused
/// callback verifies now (exit status 0, as `verify`'s for a verified body; 1 when none does).
pub fn run(
    config: &Path,
    env: &Environment,
    query: &RecheckQuery,
    format: Format,
    out: &mut dyn Write,
) -> Result<bool, CommandError> {
    let service_id = query
        .service_id
        .as_deref()
        .map(|s| report::decimal("--service-id", s))
        .transpose()?;
    let since_us = report::window_start(report::now_us(), query.since);
    let (loaded, store) = report::open(config, env)?;
    write(
        &store,
        service_id.as_deref(),
        since_us,
        query,
        &loaded.keys,
        format,
        out,
    )
}

/// The verdict on one refused callback now.
struct Rejudged<'a> {
    row: &'a Stored,
    /// Fingerprint and slot of the key that verifies it now.
    verifies: Option<(String, usize)>,
    /// Why it still fails: the reason label, with its hint.
    still: Option<(&'static str, &'static str)>,
}

/// Re-judges the refused callbacks of `store` since `since_us` and writes the report.
pub fn write(
    store: &Store,
    service_id: Option<&str>,
    since_us: i64,
    query: &RecheckQuery,
    configured: &KeySet,
    format: Format,
    out: &mut dyn Write,
) -> Result<bool, CommandError> {
    let rows = store.refused_signatures(service_id, since_us)?;
    let judged: Vec<Rejudged<'_>> = rows
        .iter()
        .map(|row| rejudge(row, query.candidate.as_ref(), configured))
        .collect();
    let any = judged.iter().any(|j| j.verifies.is_some());
    match format {
        Format::Json => {
            for j in &judged {
                let f = &j.row.fields;
                let line = JsonRecheck {
                    request_id: &j.row.request_id,
                    time: crate::ledger::time::rfc3339_micros(j.row.time_us),
                    service_id: f.service_id.as_deref(),
                    click_trans_id: f.click_trans_id.as_deref(),
                    merchant_trans_id: f.merchant_trans_id.as_deref(),
                    was: j.row.reason.as_deref(),
                    would_verify: j.verifies.is_some(),
                    fp: j.verifies.as_ref().map(|(fp, _)| fp.as_str()),
                    slot: j.verifies.as_ref().map(|(_, slot)| *slot),
                    reason: j.still.map(|s| s.0),
                    hint: j.still.map(|s| s.1).filter(|h| *h != "none"),
                };
                serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from)?;
                writeln!(out)?;
            }
        }
        Format::Text => text(&judged, service_id, since_us, query, out)?,
    }
    Ok(any)
}

fn rejudge<'a>(row: &'a Stored, candidate: Option<&Secret>, configured: &KeySet) -> Rejudged<'a> {
    let fail = |label: &'static str| Rejudged {
        row,
        verifies: None,
        still: Some((label, "none")),
    };
    // Judged as the gateway judged it: the same parser for the same content type.
    let kind = match row.content_type.as_deref().map(FormKind::from_content_type) {
        Some(Ok(kind)) => kind,
        _ => return fail("content_type"),
    };
    let Ok(parsed) = Parsed::parse(&kind, &row.body) else {
        return fail("bad_form");
    };
    let candidate_keys;
    let keys = match (
        candidate,
        row.fields
            .service_id
            .as_deref()
            .and_then(callback::parse_id),
    ) {
        (Some(secret), Some(service)) => {
            let entry = KeyEntry::new(
                secret.clone(),
                KeySource::KeysFile(PathBuf::from("--secret-file")),
            );
            candidate_keys = KeySet::new(BTreeMap::from([(
                service,
                ServiceKeys { keys: vec![entry] },
            )]));
            &candidate_keys
        }
        (Some(_), None) => return fail("malformed_id"),
        (None, _) => configured,
    };
    let verdict = parsed.judge(keys);
    match verdict.outcome {
        Ok(v) => Rejudged {
            row,
            verifies: Some((v.fingerprint.to_string(), v.slot)),
            still: None,
        },
        Err(reason) => Rejudged {
            row,
            verifies: None,
            still: Some((reason.label(), reason.hint())),
        },
    }
}

fn text(
    judged: &[Rejudged<'_>],
    service_id: Option<&str>,
    since_us: i64,
    query: &RecheckQuery,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let against = match &query.candidate {
        Some(secret) => format!("the candidate key (fp {})", secret.fingerprint()),
        None => "the configured keys".to_owned(),
    };
    let scope = service_id.map_or_else(String::new, |s| format!(" of service {s}"));
    if judged.is_empty() {
        writeln!(
            out,
            "no callbacks{scope} were refused for their signature since {} ({})",
            rfc3339_secs(since_us),
            report::span_text(query.since)
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{} callback{}{scope} refused for their signature since {}, judged again against {against}:",
        judged.len(),
        if judged.len() == 1 { "" } else { "s" },
        rfc3339_secs(since_us)
    )?;
    let mut table = Table::new(&[
        "TIME (UTC)",
        "SERVICE",
        "CLICK_TRANS_ID",
        "MERCHANT_TRANS_ID",
        "WAS",
        "NOW",
        "REQUEST_ID",
    ]);
    for j in judged {
        let f = &j.row.fields;
        let now = match (&j.verifies, j.still) {
            (Some((fp, slot)), _) => format!("verifies (slot {slot} fp {fp})"),
            (None, Some((label, "none"))) => format!("fails: {label}"),
            (None, Some((label, hint))) => format!("fails: {label} ({hint})"),
            (None, None) => "fails".to_owned(),
        };
        table.push(
            vec![
                rfc3339_secs(j.row.time_us),
                or_dash(f.service_id.as_deref()),
                or_dash(f.click_trans_id.as_deref()),
                or_dash(f.merchant_trans_id.as_deref()),
                or_dash(j.row.reason.as_deref()),
                now,
                printable(&j.row.request_id).into_owned(),
            ],
            Vec::new(),
        );
    }
    table.write(out)?;
    for line in summary(judged) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Per service (in id order): one line per key that verifies some of its refused callbacks
/// (most first), or one saying none does.
fn summary(judged: &[Rejudged<'_>]) -> Vec<String> {
    let mut services: BTreeMap<(u64, String), Vec<&Rejudged<'_>>> = BTreeMap::new();
    for j in judged {
        let id = j.row.fields.service_id.clone().unwrap_or_default();
        let order = callback::parse_id(&id).unwrap_or(u64::MAX);
        services.entry((order, id)).or_default().push(j);
    }
    let mut lines = Vec::new();
    for ((_, service), group) in services {
        let total = group.len();
        let first = group.iter().map(|j| j.row.time_us).min().unwrap_or(0);
        let head = format!(
            "of {total} refused callback{} of service {} since {}",
            if total == 1 { "" } else { "s" },
            printable(&service),
            rfc3339_secs(first)
        );
        let mut by_fp: Vec<(String, Vec<&Rejudged<'_>>)> = Vec::new();
        for j in &group {
            if let Some((fp, _)) = &j.verifies {
                match by_fp.iter_mut().find(|(f, _)| f == fp) {
                    Some((_, v)) => v.push(j),
                    None => by_fp.push((fp.clone(), vec![j])),
                }
            }
        }
        if by_fp.is_empty() {
            lines.push(format!("0 {head} verify"));
            continue;
        }
        by_fp.sort_by_key(|b| std::cmp::Reverse(b.1.len()));
        for (fp, verified) in by_fp {
            let mut orders: Vec<String> = Vec::new();
            for j in &verified {
                let m = or_dash(j.row.fields.merchant_trans_id.as_deref());
                if !orders.contains(&m) {
                    orders.push(m);
                }
            }
            let more = orders.len().saturating_sub(MAX_ORDERS);
            orders.truncate(MAX_ORDERS);
            let mut list = orders.join(", ");
            if more > 0 {
                list.push_str(&format!(" and {more} more"));
            }
            lines.push(format!(
                "{} {head} verify with fp {fp}; orders: {list}",
                verified.len()
            ));
        }
    }
    lines
}

#[derive(Serialize)]
struct JsonRecheck<'a> {
    request_id: &'a str,
    time: String,
    service_id: Option<&'a str>,
    click_trans_id: Option<&'a str>,
    merchant_trans_id: Option<&'a str>,
    /// The reason it was refused.
    was: Option<&'a str>,
    would_verify: bool,
    fp: Option<&'a str>,
    slot: Option<usize>,
    /// Why it still fails, when it does.
    reason: Option<&'static str>,
    hint: Option<&'static str>,
}
