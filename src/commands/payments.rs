//! `click-gateway payments`: one payment's timeline from the ledger, oldest first: every
//! callback, what the gateway decided and why, what the backend answered. The question it
//! answers is the one support asks: "Click says order 1001 was paid; what did we do?".
//!
//! The text table is for a terminal: by default it keeps to what that question needs and
//! about 120 columns (a wider row wraps and the table stops being one); `--wide` shows every
//! column, and `--format json` every field. A callback Click sent again unchanged (the same
//! body as an earlier one of the timeline) is marked a retry, since "two Prepares" reads as a
//! bug until one sees it is the same message twice.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::report::{self, action_name, or_dash, CommandError, Format, Table};
use crate::config::{Environment, Span};
use crate::ledger::time::{rfc3339_micros, rfc3339_secs};
use crate::ledger::{Filter, Store, Stored};
use crate::text::printable;

/// Which callbacks to show: at least one of the three; given together, all must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentsQuery {
    pub merchant_trans_id: Option<String>,
    pub click_trans_id: Option<String>,
    pub service_id: Option<String>,
    /// How far back from now.
    pub since: Span,
    /// Every column in the text table, not only the default ones.
    pub wide: bool,
}

/// Reads the ledger `config` names and writes the timeline; returns how many callbacks it
/// showed (none is an answer too: exit status 0 either way).
pub fn run(
    config: &Path,
    env: &Environment,
    query: &PaymentsQuery,
    format: Format,
    out: &mut dyn Write,
) -> Result<usize, CommandError> {
    let filter = filter(query, report::now_us())?;
    let (_, store) = report::open(config, env)?;
    write(&store, query, &filter, format, out)
}

/// The store filter for `query`, its window ending at `now_us`.
pub fn filter(query: &PaymentsQuery, now_us: i64) -> Result<Filter, CommandError> {
    if query.merchant_trans_id.is_none()
        && query.click_trans_id.is_none()
        && query.service_id.is_none()
    {
        return Err(CommandError::Usage(
            "say which payment: --merchant-trans-id, --click-trans-id or --service-id".into(),
        ));
    }
    if query.merchant_trans_id.as_deref() == Some("") {
        return Err(CommandError::Usage(
            "--merchant-trans-id must not be empty".into(),
        ));
    }
    Ok(Filter {
        merchant_trans_id: query.merchant_trans_id.clone(),
        click_trans_id: query
            .click_trans_id
            .as_deref()
            .map(|c| report::decimal("--click-trans-id", c))
            .transpose()?,
        service_id: query
            .service_id
            .as_deref()
            .map(|s| report::decimal("--service-id", s))
            .transpose()?,
        since_us: report::window_start(now_us, query.since),
    })
}

/// Writes the timeline of `filter` from `store`.
pub fn write(
    store: &Store,
    query: &PaymentsQuery,
    filter: &Filter,
    format: Format,
    out: &mut dyn Write,
) -> Result<usize, CommandError> {
    let rows = store.callbacks(filter)?;
    let retries = retries(&rows);
    match format {
        Format::Json => {
            for (row, retry) in rows.iter().zip(retries) {
                serde_json::to_writer(&mut *out, &JsonCallback::of(row, retry))
                    .map_err(std::io::Error::from)?;
                writeln!(out)?;
            }
        }
        Format::Text => text(query, filter, &rows, &retries, out)?,
    }
    Ok(rows.len())
}

/// For each row, whether it repeats the body of an earlier row byte for byte: Click sending
/// the same callback again. Bodies, not fields, so a body re-signed or altered is never taken
/// for a resend; a body that never arrived (empty) repeats nothing.
fn retries(rows: &[Stored]) -> Vec<bool> {
    let mut seen = std::collections::HashSet::new();
    rows.iter()
        .map(|r| !r.body.is_empty() && !seen.insert(r.body.as_slice()))
        .collect()
}

/// The text table's columns, and which the default table shows: enough to follow a payment
/// (when, what, how much, the verdict and the backend's answer) in about 120 columns. The key,
/// the generation, the backend's ids and the request id are for `--wide`.
const COLUMNS: [(&str, bool); 15] = [
    ("TIME (UTC)", true),
    ("ACTION", true),
    ("SERVICE", false),
    ("CLICK_TRANS_ID", true),
    ("MERCHANT_TRANS_ID", true),
    ("AMOUNT", true),
    ("ERROR", true),
    ("VERDICT", true),
    ("REASON", true),
    ("KEY", false),
    ("GEN", false),
    ("BACKEND", true),
    ("PREPARE_ID", false),
    ("CONFIRM_ID", false),
    ("REQUEST_ID", false),
];

/// Which of [`COLUMNS`] the table shows. The default table also leaves out an id the query
/// fixed (every row has the one the title line names).
fn shown(query: &PaymentsQuery) -> [bool; 15] {
    COLUMNS.map(|(name, default)| {
        query.wide
            || (default
                && !((name == "MERCHANT_TRANS_ID" && query.merchant_trans_id.is_some())
                    || (name == "CLICK_TRANS_ID" && query.click_trans_id.is_some())))
    })
}

fn describe(query: &PaymentsQuery) -> String {
    let mut parts = Vec::new();
    if let Some(m) = &query.merchant_trans_id {
        parts.push(format!("merchant_trans_id {}", printable(m)));
    }
    if let Some(c) = &query.click_trans_id {
        parts.push(format!("click_trans_id {c}"));
    }
    if let Some(s) = &query.service_id {
        parts.push(format!("service {s}"));
    }
    parts.join(", ")
}

fn text(
    query: &PaymentsQuery,
    filter: &Filter,
    rows: &[Stored],
    retries: &[bool],
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let what = describe(query);
    let since = rfc3339_secs(filter.since_us);
    if rows.is_empty() {
        writeln!(
            out,
            "no callbacks for {what} since {since} ({}): a longer --since reaches back to ledger.retention",
            report::span_text(query.since)
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{what}: {} callback{} since {since}, oldest first",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    )?;
    let shown = shown(query);
    let pick = |cells: Vec<String>| -> Vec<String> {
        cells
            .into_iter()
            .zip(shown)
            .filter_map(|(c, show)| show.then_some(c))
            .collect()
    };
    let header: Vec<&'static str> = COLUMNS
        .iter()
        .zip(shown)
        .filter_map(|((name, _), show)| show.then_some(*name))
        .collect();
    let mut table = Table::new(&header);
    for (r, &retry) in rows.iter().zip(retries) {
        let f = &r.fields;
        let reason = match (&r.reason, &r.hint) {
            // The default table leaves the hint to the `why:` line below, which says it in
            // words.
            (Some(reason), Some(hint)) if query.wide => format!("{reason} ({hint})"),
            (Some(reason), _) => reason.clone(),
            (None, _) => "-".into(),
        };
        let key = match (&r.fp, r.slot) {
            (Some(fp), Some(slot)) => format!("{fp}/{slot}"),
            (Some(fp), None) => fp.clone(),
            _ => "-".into(),
        };
        let backend = match (r.backend_status, &r.backend_error) {
            (None, _) => "-".to_owned(),
            (Some(status), None) => status.to_string(),
            (Some(status), Some(error)) if error == "0" => format!("{status} error=0"),
            (Some(status), Some(error)) => match &r.backend_error_note {
                Some(note) => format!("{status} error={} {}", printable(error), printable(note)),
                None => format!("{status} error={}", printable(error)),
            },
        };
        let mut action = action_name(f.action.as_deref())
            .map_or_else(|| or_dash(f.action.as_deref()), str::to_owned);
        if retry {
            action.push_str(" (retry)");
        }
        let mut below = Vec::new();
        if r.verdict != "verified" {
            if let Some(why) = &r.detail {
                below.push(format!("why: {}", printable(why)));
            }
        }
        table.push(
            pick(vec![
                rfc3339_secs(r.time_us),
                action,
                or_dash(f.service_id.as_deref()),
                or_dash(f.click_trans_id.as_deref()),
                or_dash(f.merchant_trans_id.as_deref()),
                or_dash(f.amount.as_deref()),
                or_dash(f.error.as_deref()),
                r.verdict.clone(),
                reason,
                key,
                r.generation.to_string(),
                backend,
                or_dash(prepare_id(r)),
                or_dash(r.backend_confirm_id.as_deref()),
                printable(&r.request_id).into_owned(),
            ]),
            below,
        );
    }
    table.write(out)?;
    Ok(())
}

/// The payment's `merchant_prepare_id`: what the backend answered (a Prepare's answer), or
/// else what the callback carried (a Complete sends the id its Prepare got).
fn prepare_id(r: &Stored) -> Option<&str> {
    r.backend_prepare_id
        .as_deref()
        .or(r.fields.merchant_prepare_id.as_deref())
}

/// One callback as a JSON line. Click fields are strings, as sent; unknowns are `null`.
#[derive(Serialize)]
struct JsonCallback<'a> {
    time: String,
    request_id: &'a str,
    action: Option<&'static str>,
    service_id: Option<&'a str>,
    click_trans_id: Option<&'a str>,
    merchant_trans_id: Option<&'a str>,
    click_paydoc_id: Option<&'a str>,
    amount: Option<&'a str>,
    error: Option<&'a str>,
    error_note: Option<&'a str>,
    sign_time: Option<&'a str>,
    /// The same body as an earlier callback of the timeline: Click sent it again.
    retry: bool,
    verdict: &'a str,
    reason: Option<&'a str>,
    hint: Option<&'a str>,
    detail: Option<&'a str>,
    mode: &'a str,
    slot: Option<i64>,
    fp: Option<&'a str>,
    generation: i64,
    backend_status: Option<i64>,
    backend_error: Option<&'a str>,
    backend_error_note: Option<&'a str>,
    merchant_prepare_id: Option<&'a str>,
    merchant_confirm_id: Option<&'a str>,
    peer: &'a str,
    client: &'a str,
    path: &'a str,
    gateway_us: i64,
    upstream_us: Option<i64>,
    total_us: i64,
}

impl<'a> JsonCallback<'a> {
    fn of(r: &'a Stored, retry: bool) -> JsonCallback<'a> {
        let f = &r.fields;
        JsonCallback {
            time: rfc3339_micros(r.time_us),
            request_id: &r.request_id,
            action: action_name(f.action.as_deref()),
            service_id: f.service_id.as_deref(),
            click_trans_id: f.click_trans_id.as_deref(),
            merchant_trans_id: f.merchant_trans_id.as_deref(),
            click_paydoc_id: f.click_paydoc_id.as_deref(),
            amount: f.amount.as_deref(),
            error: f.error.as_deref(),
            error_note: f.error_note.as_deref(),
            sign_time: f.sign_time.as_deref(),
            retry,
            verdict: &r.verdict,
            reason: r.reason.as_deref(),
            hint: r.hint.as_deref(),
            detail: r.detail.as_deref(),
            mode: &r.mode,
            slot: r.slot,
            fp: r.fp.as_deref(),
            generation: r.generation,
            backend_status: r.backend_status,
            backend_error: r.backend_error.as_deref(),
            backend_error_note: r.backend_error_note.as_deref(),
            merchant_prepare_id: prepare_id(r),
            merchant_confirm_id: r.backend_confirm_id.as_deref(),
            peer: &r.peer,
            client: &r.client,
            path: &r.path,
            gateway_us: r.gateway_us,
            upstream_us: r.upstream_us,
            total_us: r.total_us,
        }
    }
}
