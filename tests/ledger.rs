//! The callback ledger on real SQLite files: rows written through `Ledger` (as the data path
//! will), read back by the `payments` and `recheck` commands; group commit and awaited
//! commits; a full queue; a database deleted, replaced, unwritable or killed mid-write;
//! restarts, the stop deadline, retention; and `check`.
//!
//! Failures that root cannot be stopped by (`chmod` does not stop root) are made real:
//! the file is replaced by a directory or by a file that is not a database (the writer must
//! notice, count, and recover once it is gone, never touching the operator's file), and the
//! database is made unwritable in a child process through `RLIMIT_FSIZE`, which makes every
//! write(2) to a regular file fail with `EFBIG` for root too, like a full disk or a quota, and
//! is lifted again by raising the limit. A writer killed with SIGKILL runs in a child process
//! too: this test binary run again with an environment switch (`child_*` tests are no-ops
//! otherwise).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use click_gateway::click::sign::{CallbackBody, SignedFields};
use click_gateway::click::Secret;
use click_gateway::commands::payments::{self, PaymentsQuery};
use click_gateway::commands::recheck::{self, RecheckQuery};
use click_gateway::commands::report::{CommandError, Format};
use click_gateway::config::{Environment, Span};
use click_gateway::ledger::time::rfc3339_micros;
use click_gateway::ledger::{unix_micros, Ledger, LedgerError, Location, Store, Verdict};
use click_gateway::metrics::Metrics;

use common::binary::{bin, run_with_stdin};
use common::ledger::*;
use common::{KEY_12345, PATIENCE};

/// The key Click signs service 82154's callbacks with in these tests (not configured at first).
const KEY_82154: &str = "key-B-new";
const WRONG_KEY: &str = "key-C-final";

/// 2024-05-01T07:30:45Z.
const BASE: u64 = 1_714_548_645;

fn signed(
    key: &str,
    service_id: &str,
    click_trans_id: u64,
    merchant_trans_id: &str,
    prepare_id: Option<&str>,
) -> String {
    let id = click_trans_id.to_string();
    CallbackBody {
        signed: SignedFields {
            click_trans_id: &id,
            service_id,
            merchant_trans_id,
            merchant_prepare_id: prepare_id,
            amount: "1000.00",
            action: if prepare_id.is_some() { "1" } else { "0" },
            sign_time: "2024-05-01 12:30:45",
        },
        click_paydoc_id: "3302114455",
        error: "0",
        error_note: "Success",
    }
    .encode(&Secret::new(key))
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .expect("the ledger did not answer in time")
}

fn reader(d: &LedgerDir) -> Store {
    Store::open_reader(&Location::Sqlite(d.db())).unwrap()
}

/// The request ids in the database, in id order.
fn request_ids(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT request_id FROM callbacks ORDER BY id")
        .unwrap();
    let ids = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<Vec<String>, _>>()
        .unwrap();
    ids
}

/// Holds the database's write lock from another connection (an operator's `sqlite3` in a
/// write transaction would), and records one row, returning once the writer has taken it: the
/// writer is then stuck in that row's transaction until `release`, and rows recorded meanwhile
/// stay queued. (Waits on the queue-depth gauge: the writer's taking the row is the event.)
async fn stall_writer(d: &LedgerDir, ledger: &Ledger, metrics: &Metrics) -> rusqlite::Connection {
    let lock = rusqlite::Connection::open(d.db()).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    ledger.keep(record("a=1", ago(1), "stalled"));
    common::eventually("the writer takes the row", || {
        metric(metrics, "click_gateway_ledger_queue_depth") == 0.0
    })
    .await;
    lock
}

fn release(lock: &rusqlite::Connection) {
    lock.execute_batch("ROLLBACK").unwrap();
}

fn text(out: Vec<u8>) -> String {
    String::from_utf8(out).unwrap()
}

/// Order 1001's three callbacks (Prepare, a Complete signed wrongly, the good Complete), one
/// of another order, and a body that timed out.
fn payment_story(ledger: &Ledger) {
    let prepare = signed(KEY_12345, "12345", 2103045678, "order-1001", None);
    let complete = signed(KEY_12345, "12345", 2103045678, "order-1001", Some("5001"));
    ledger.keep(verified(
        record(&prepare, at(BASE), "r-prepare"),
        12345,
        KEY_12345,
        0,
        200,
        Some(answer("0", "Success", Some("5001"), None)),
    ));
    ledger.keep(verified(
        record(
            &signed(KEY_12345, "12345", 2103045679, "order-2002", None),
            at(BASE + 5),
            "r-other",
        ),
        12345,
        KEY_12345,
        0,
        200,
        None,
    ));
    let mut bad = rejected(
        record(&complete.replace("1000.00", "1000"), at(BASE + 17), "r-bad"),
        "key_mismatch",
        "the key(s) of service 12345 do not match (slot 0 fp d3b738e5); it would verify if amount were hashed as \"1000.00\" instead of \"1000\" as sent: the signer re-formats the amount",
    );
    bad.hint = Some("amount_format");
    bad.path = "/click/complete/".into();
    ledger.keep(bad);
    let mut good = verified(
        record(&complete, at(BASE + 20), "r-complete"),
        12345,
        KEY_12345,
        0,
        200,
        Some(answer("0", "Success", Some("5001"), Some("7001"))),
    );
    good.path = "/click/complete/".into();
    ledger.keep(good);
    let mut timeout = record("", at(BASE + 30), "r-timeout");
    timeout.verdict = Verdict::Refused;
    timeout.reason = Some("body_timeout");
    timeout.detail = Some("the body did not arrive within body_read_timeout".into());
    ledger.keep(timeout);
}

#[tokio::test]
async fn payments_shows_the_timeline_of_an_order() {
    let d = LedgerDir::new();
    let (ledger, metrics) = d.open();
    payment_story(&ledger);
    within(ledger.flush()).await.unwrap();
    assert_eq!(written(&metrics), 5.0);

    let query = PaymentsQuery {
        merchant_trans_id: Some("order-1001".into()),
        click_trans_id: None,
        service_id: None,
        since: Span::secs(24 * 3600),
        wide: false,
    };
    let now = unix_micros(at(BASE + 3600));
    let filter = payments::filter(&query, now).unwrap();
    let store = reader(&d);
    let mut out = Vec::new();
    assert_eq!(
        payments::write(&store, &query, &filter, Format::Text, &mut out).unwrap(),
        3
    );
    // The default table: what support needs, the order (which the title names) not repeated.
    assert_eq!(
        text(out),
        "merchant_trans_id order-1001: 3 callbacks since 2024-04-30T08:30:45Z, oldest first
TIME (UTC)            ACTION    CLICK_TRANS_ID  AMOUNT   ERROR  VERDICT   REASON        BACKEND
2024-05-01T07:30:45Z  prepare   2103045678      1000.00  0      verified  -             200 error=0
2024-05-01T07:31:02Z  complete  2103045678      1000     0      rejected  key_mismatch  -
    why: the key(s) of service 12345 do not match (slot 0 fp d3b738e5); it would verify if amount were hashed as \"1000.00\" instead of \"1000\" as sent: the signer re-formats the amount
2024-05-01T07:31:05Z  complete  2103045678      1000.00  0      verified  -             200 error=0
"
    );
    // --wide: every column.
    let wide = PaymentsQuery {
        wide: true,
        ..query.clone()
    };
    let mut out = Vec::new();
    payments::write(&store, &wide, &filter, Format::Text, &mut out).unwrap();
    assert_eq!(
        text(out),
        "merchant_trans_id order-1001: 3 callbacks since 2024-04-30T08:30:45Z, oldest first
TIME (UTC)            ACTION    SERVICE  CLICK_TRANS_ID  MERCHANT_TRANS_ID  AMOUNT   ERROR  VERDICT   REASON                        KEY         GEN  BACKEND      PREPARE_ID  CONFIRM_ID  REQUEST_ID
2024-05-01T07:30:45Z  prepare   12345    2103045678      order-1001         1000.00  0      verified  -                             d3b738e5/0  1    200 error=0  5001        -           r-prepare
2024-05-01T07:31:02Z  complete  12345    2103045678      order-1001         1000     0      rejected  key_mismatch (amount_format)  -           1    -            5001        -           r-bad
    why: the key(s) of service 12345 do not match (slot 0 fp d3b738e5); it would verify if amount were hashed as \"1000.00\" instead of \"1000\" as sent: the signer re-formats the amount
2024-05-01T07:31:05Z  complete  12345    2103045678      order-1001         1000.00  0      verified  -                             d3b738e5/0  1    200 error=0  5001        7001        r-complete
"
    );

    let mut out = Vec::new();
    payments::write(&store, &query, &filter, Format::Json, &mut out).unwrap();
    let lines: Vec<serde_json::Value> = text(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[0],
        serde_json::json!({
            "time": "2024-05-01T07:30:45.000000Z",
            "request_id": "r-prepare",
            "action": "prepare",
            "service_id": "12345",
            "click_trans_id": "2103045678",
            "merchant_trans_id": "order-1001",
            "click_paydoc_id": "3302114455",
            "amount": "1000.00",
            "error": "0",
            "error_note": "Success",
            "sign_time": "2024-05-01 12:30:45",
            "retry": false,
            "verdict": "verified",
            "reason": null,
            "hint": null,
            "detail": null,
            "mode": "enforce",
            "slot": 0,
            "fp": "d3b738e5",
            "generation": 1,
            "backend_status": 200,
            "backend_error": "0",
            "backend_error_note": "Success",
            "merchant_prepare_id": "5001",
            "merchant_confirm_id": null,
            "peer": "10.0.0.7:51804",
            "client": "203.0.113.9",
            "path": "/click/prepare/",
            "gateway_us": 120,
            "upstream_us": 3000,
            "total_us": 3120
        })
    );
    assert_eq!(lines[1]["verdict"], "rejected");
    assert_eq!(lines[1]["reason"], "key_mismatch");
    assert_eq!(lines[1]["hint"], "amount_format");
    assert_eq!(lines[1]["fp"], serde_json::Value::Null);
    assert_eq!(lines[1]["backend_status"], serde_json::Value::Null);
    assert_eq!(lines[1]["amount"], "1000");
    assert_eq!(lines[2]["action"], "complete");
    assert_eq!(lines[2]["merchant_confirm_id"], "7001");

    // By Click's id, by service (the refused body has no fields, so no service), and a window
    // that starts after the first callback.
    let count = |q: PaymentsQuery, now: u64| {
        let f = payments::filter(&q, unix_micros(at(now))).unwrap();
        let mut out = Vec::new();
        payments::write(&store, &q, &f, Format::Json, &mut out).unwrap()
    };
    let by = |m: Option<&str>, c: Option<&str>, s: Option<&str>, since: u64| PaymentsQuery {
        merchant_trans_id: m.map(Into::into),
        click_trans_id: c.map(Into::into),
        service_id: s.map(Into::into),
        since: Span::secs(since),
        wide: false,
    };
    assert_eq!(
        count(by(None, Some("2103045678"), None, 3600), BASE + 60),
        3
    );
    assert_eq!(
        count(by(None, Some("2103045678"), Some("12345"), 3600), BASE + 60),
        3
    );
    assert_eq!(
        count(by(None, Some("2103045678"), Some("70001"), 3600), BASE + 60),
        0
    );
    assert_eq!(count(by(None, None, Some("12345"), 3600), BASE + 60), 4);
    assert_eq!(count(by(Some("order-1001"), None, None, 50), BASE + 60), 2);
    assert_eq!(
        count(
            by(Some("order-1001"), Some("2103045679"), None, 3600),
            BASE + 60
        ),
        0
    );

    let empty = by(Some("order-9"), None, None, 7 * 86_400);
    let f = payments::filter(&empty, unix_micros(at(BASE))).unwrap();
    let mut out = Vec::new();
    assert_eq!(
        payments::write(&store, &empty, &f, Format::Text, &mut out).unwrap(),
        0
    );
    assert_eq!(
        text(out),
        "no callbacks for merchant_trans_id order-9 since 2024-04-24T07:30:45Z (7d): a longer --since reaches back to ledger.retention\n"
    );
    for bad in [
        by(None, None, None, 60),
        by(Some(""), None, None, 60),
        by(None, Some("12x"), None, 60),
        by(Some("o"), None, Some("-1"), 60),
    ] {
        assert!(matches!(
            payments::filter(&bad, 0),
            Err(CommandError::Usage(_))
        ));
    }
}

#[tokio::test]
async fn payments_reads_the_ledger_the_config_names_and_says_when_there_is_none() {
    let d = LedgerDir::new();
    let env = Environment::default();
    let query = PaymentsQuery {
        merchant_trans_id: Some("order-7".into()),
        click_trans_id: None,
        service_id: None,
        since: Span::secs(24 * 3600),
        wide: false,
    };
    let err = payments::run(
        &d.config.path(),
        &env,
        &query,
        Format::Json,
        &mut Vec::new(),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        format!(
            "no ledger at {}: is [ledger] database set and has the gateway run?",
            d.db().display()
        )
    );
    let (ledger, _) = d.open();
    let t = ago(30);
    ledger.keep(record(
        &signed(KEY_12345, "12345", 1, "order-7", None),
        t,
        "r-7",
    ));
    within(ledger.flush()).await.unwrap();
    let mut out = Vec::new();
    assert_eq!(
        payments::run(&d.config.path(), &env, &query, Format::Json, &mut out).unwrap(),
        1
    );
    let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(line["time"], rfc3339_micros(unix_micros(t)));
    assert_eq!(line["request_id"], "r-7");

    let off = common::ConfigDir::new("127.0.0.1:1".parse().unwrap(), common::KEYS_TOML, "", "");
    let err = payments::run(&off.path(), &env, &query, Format::Text, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no [ledger] database is set"), "{err}");
}

/// Three Prepares of service 82154, which has no key yet: refused `unknown_service`.
fn refused_story(ledger: &Ledger, times: [std::time::SystemTime; 3]) {
    for (i, t) in times.into_iter().enumerate() {
        let order = format!("order-{}", 10 + i);
        let body = signed(KEY_82154, "82154", 7000 + i as u64, &order, None);
        ledger.keep(rejected(
            record(&body, t, &format!("r-{i}")),
            "unknown_service",
            "no key is configured for service 82154",
        ));
    }
    // Not refused for its signature: not rechecked.
    let body = signed(KEY_82154, "82154", 7999, "order-99", None);
    ledger.keep(rejected(
        record(
            &body.replace("amount=1000.00", "amount=1e3"),
            times[0],
            "r-malformed",
        ),
        "malformed_field",
        "amount is malformed",
    ));
}

#[tokio::test]
async fn recheck_finds_the_key_that_verifies_refused_callbacks() {
    let d = LedgerDir::new();
    let (ledger, _) = d.open();
    refused_story(&ledger, [at(BASE), at(BASE + 60), at(BASE + 120)]);
    within(ledger.flush()).await.unwrap();
    let store = reader(&d);
    let keys = click_gateway::click::KeySet::default();
    let since = unix_micros(at(BASE - 3600));
    let run = |candidate: Option<&str>, format: Format| {
        let query = RecheckQuery {
            service_id: Some("82154".into()),
            since: Span::secs(3600),
            candidate: candidate.map(Secret::new),
        };
        let mut out = Vec::new();
        let any = recheck::write(
            &store,
            Some("82154"),
            since,
            &query,
            &keys,
            format,
            &mut out,
        )
        .unwrap();
        (any, text(out))
    };
    let right = fp(KEY_82154);
    let (any, out) = run(Some(KEY_82154), Format::Text);
    assert!(any);
    assert_eq!(
        out,
        format!(
            "3 callbacks of service 82154 refused for their signature since 2024-05-01T06:30:45Z, judged again against the candidate key (fp {right}):
TIME (UTC)            SERVICE  CLICK_TRANS_ID  MERCHANT_TRANS_ID  WAS              NOW                            REQUEST_ID
2024-05-01T07:30:45Z  82154    7000            order-10           unknown_service  verifies (slot 0 fp {right})  r-0
2024-05-01T07:31:45Z  82154    7001            order-11           unknown_service  verifies (slot 0 fp {right})  r-1
2024-05-01T07:32:45Z  82154    7002            order-12           unknown_service  verifies (slot 0 fp {right})  r-2
3 of 3 refused callbacks of service 82154 since 2024-05-01T07:30:45Z verify with fp {right}; orders: order-10, order-11, order-12
"
        )
    );
    assert!(!out.contains(KEY_82154));

    let (any, out) = run(Some(WRONG_KEY), Format::Text);
    assert!(!any);
    assert!(out.contains("fails: key_mismatch"), "{out}");
    assert!(
        out.ends_with(
            "0 of 3 refused callbacks of service 82154 since 2024-05-01T07:30:45Z verify\n"
        ),
        "{out}"
    );
    assert!(!out.contains(WRONG_KEY));

    // Against the configured keys (none for 82154): still unknown.
    let (any, out) = run(None, Format::Json);
    assert!(!any);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[0],
        serde_json::json!({
            "request_id": "r-0",
            "time": "2024-05-01T07:30:45.000000Z",
            "service_id": "82154",
            "click_trans_id": "7000",
            "merchant_trans_id": "order-10",
            "was": "unknown_service",
            "would_verify": false,
            "fp": null,
            "slot": null,
            "reason": "unknown_service",
            "hint": null
        })
    );
    let (_, out) = run(Some(KEY_82154), Format::Json);
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["would_verify"], true);
        assert_eq!(v["fp"], right.to_string());
    }

    // Outside the window, or another service: nothing to recheck.
    let query = RecheckQuery {
        service_id: None,
        since: Span::secs(60),
        candidate: None,
    };
    let mut out = Vec::new();
    let later = unix_micros(at(BASE + 200));
    assert!(!recheck::write(&store, None, later, &query, &keys, Format::Text, &mut out).unwrap());
    assert_eq!(
        text(out),
        "no callbacks were refused for their signature since 2024-05-01T07:34:05Z (1m)\n"
    );
}

#[tokio::test]
async fn recheck_against_the_configured_keys_once_the_key_is_added() {
    let keys = format!(
        "{}[services.82154]\nsecret_keys = [\"{KEY_82154}\"]\n",
        common::KEYS_TOML
    );
    let d = LedgerDir::with_keys(&keys, "");
    let (ledger, _) = d.open();
    refused_story(&ledger, [ago(300), ago(200), ago(100)]);
    within(ledger.flush()).await.unwrap();
    let query = RecheckQuery {
        service_id: None,
        since: Span::secs(3600),
        candidate: None,
    };
    let mut out = Vec::new();
    assert!(recheck::run(
        &d.config.path(),
        &Environment::default(),
        &query,
        Format::Text,
        &mut out
    )
    .unwrap());
    let out = text(out);
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with("3 of 3 refused callbacks of service 82154 since ")
            && last.ends_with(&format!(
                " verify with fp {}; orders: order-10, order-11, order-12",
                fp(KEY_82154)
            )),
        "{out}"
    );
    assert!(out.contains("against the configured keys"), "{out}");
}

#[tokio::test]
async fn the_binary_reads_the_candidate_key_from_stdin_and_exits_by_the_verdict() {
    let d = LedgerDir::new();
    let cfg = d.config.path();
    let (code, _, err) = run_with_stdin(
        bin()
            .args(["payments", "--merchant-trans-id", "x", "-c"])
            .arg(&cfg),
        "",
    );
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("no ledger at {}", d.db().display())),
        "{err}"
    );
    let (ledger, _) = d.open();
    refused_story(&ledger, [ago(300), ago(200), ago(100)]);
    within(ledger.flush()).await.unwrap();

    let recheck = |key: &str| {
        run_with_stdin(
            bin()
                .args([
                    "recheck",
                    "--service-id",
                    "82154",
                    "--since",
                    "1h",
                    "--secret-file",
                    "-",
                    "--config",
                ])
                .arg(&cfg),
            &format!("{key}\n"),
        )
    };
    let (code, out, err) = recheck(KEY_82154);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("3 of 3 refused callbacks of service 82154 since "),
        "{out}"
    );
    assert!(!out.contains(KEY_82154) && !err.contains(KEY_82154));
    let (code, out, err) = recheck(WRONG_KEY);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("0 of 3 refused callbacks"), "{out}");

    let (code, out, err) = run_with_stdin(
        bin()
            .args([
                "payments",
                "--service-id",
                "82154",
                "--since",
                "7d",
                "--format",
                "json",
                "-c",
            ])
            .arg(&cfg),
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 4, "{out}");
    for args in [
        &["payments", "--since", "1h"][..],
        &["payments", "--service-id", "82154", "--since", "1w"],
        &["payments", "--click-trans-id", "x1"],
        &["recheck", "--service-id", "-5"],
    ] {
        let (code, _, err) = run_with_stdin(bin().args(args).arg("-c").arg(&cfg), "");
        assert_eq!(code, 2, "{args:?}: {err}");
    }
}

#[tokio::test]
async fn an_awaited_commit_goes_before_the_backlog_and_rows_commit_in_groups() {
    let d = LedgerDir::new();
    let (ledger, metrics) = d.open();
    let body = signed(KEY_12345, "12345", 1, "bulk", None);
    let lock = stall_writer(&d, &ledger, &metrics).await;
    for i in 0..1500 {
        ledger.keep(record(&body, ago(1), &format!("bulk-{i}")));
    }
    assert_eq!(metric(&metrics, "click_gateway_ledger_queue_depth"), 1500.0);
    let urgent = ledger.write_ahead(record(&body, ago(1), "urgent"), None);
    release(&lock);
    // Committed with only a ride of the 1500 queued before it (its id is the next one given,
    // after theirs): the round's make-up is the writer's unit test's, since the writer goes on
    // with the backlog before this task reads a count.
    assert_eq!(within(urgent).await.unwrap().id, Some(1502));
    within(ledger.flush()).await.unwrap();
    assert_eq!(written(&metrics), 1502.0);
    assert_eq!(dropped(&metrics), 0.0);
    let ids = request_ids(&d.db());
    assert_eq!(ids[..2], ["stalled", "bulk-0"]);
    assert_eq!(ids.last().unwrap(), "urgent");
    // 1502 rows in six transactions at most: the stalled row; the urgent one with the 64 rows
    // that ride along with awaited ones; 512; 512; 412 (with the flush, or the flush alone).
    let commits = metric(
        &metrics,
        "click_gateway_ledger_commit_duration_seconds_count",
    );
    assert!((5.0..=6.0).contains(&commits), "{commits} commits");
    assert_eq!(metric(&metrics, "click_gateway_ledger_queue_depth"), 0.0);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_rows_without_waiting() {
    let d = LedgerDir::new();
    let (ledger, metrics) = d.open_with(d.settings_with_queue(4));
    let body = signed(KEY_12345, "12345", 1, "q", None);
    let lock = stall_writer(&d, &ledger, &metrics).await;
    for i in 0..20 {
        ledger.keep(record(&body, ago(1), &format!("q-{i}")));
    }
    assert_eq!(metric(&metrics, "click_gateway_ledger_queue_depth"), 4.0);
    assert_eq!(
        metric(
            &metrics,
            "click_gateway_ledger_dropped_total{reason=\"queue_full\"}"
        ),
        16.0
    );
    assert!(matches!(
        within(ledger.flush()).await,
        Err(LedgerError::QueueFull)
    ));
    release(&lock);
    // An awaited row's transaction carries the queued rows along (up to 64): once it is
    // answered, they are in.
    within(ledger.write_ahead(record(&body, ago(1), "awaited"), None))
        .await
        .unwrap();
    assert_eq!(written(&metrics), 6.0);
    assert_eq!(
        request_ids(&d.db()),
        ["stalled", "q-0", "q-1", "q-2", "q-3", "awaited"]
    );
}

#[tokio::test]
async fn a_deleted_or_replaced_database_is_noticed_and_writing_goes_on() {
    let d = LedgerDir::new();
    let (ledger, metrics) = d.open();
    let body = signed(KEY_12345, "12345", 1, "o", None);
    let rec = |id: &str| record(&body, ago(1), id);
    ledger.keep(rec("a"));
    within(ledger.flush()).await.unwrap();
    // `rm ledger.db`: SQLite would go on writing into the unlinked inode.
    std::fs::remove_file(d.db()).unwrap();
    ledger.keep(rec("b"));
    within(ledger.flush()).await.unwrap();
    assert_eq!(request_ids(&d.db()), ["b"]);
    assert_eq!(metric(&metrics, "click_gateway_ledger_reopens_total"), 1.0);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.db()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // `rm ledger.db*`.
    for suffix in ["", "-wal", "-shm"] {
        std::fs::remove_file(format!("{}{suffix}", d.db().display())).unwrap();
    }
    ledger.keep(rec("c"));
    within(ledger.flush()).await.unwrap();
    assert_eq!(request_ids(&d.db()), ["c"]);
    // A backup moved into place.
    let backup = d.config.dir.path().join("backup.db");
    {
        let (old, _) = LedgerDir::new().open_with(click_gateway::config::LedgerSettings {
            database: Some(backup.clone()),
            ..Default::default()
        });
        old.record(rec("restored"));
        within(old.flush()).await.unwrap();
        assert!(old.close(PATIENCE).await);
    }
    std::fs::rename(&backup, d.db()).unwrap();
    ledger.keep(rec("d"));
    within(ledger.flush()).await.unwrap();
    assert_eq!(request_ids(&d.db()), ["restored", "d"]);
    assert_eq!(metric(&metrics, "click_gateway_ledger_reopens_total"), 3.0);
    assert_eq!(dropped(&metrics), 0.0, "nothing was lost");
}

#[tokio::test]
async fn a_directory_or_a_foreign_file_in_its_place_is_counted_and_left_alone() {
    let d = LedgerDir::new();
    let (ledger, metrics) = d.open();
    let body = signed(KEY_12345, "12345", 1, "o", None);
    let rec = |id: &str| record(&body, ago(1), id);
    let write_failed = || {
        metric(
            &metrics,
            "click_gateway_ledger_dropped_total{reason=\"write_failed\"}",
        )
    };
    ledger.keep(rec("a"));
    within(ledger.flush()).await.unwrap();

    for (kind, put, remove) in [
        (
            "directory",
            Box::new(|p: &Path| std::fs::create_dir(p).unwrap()) as Box<dyn Fn(&Path)>,
            Box::new(|p: &Path| std::fs::remove_dir(p).unwrap()) as Box<dyn Fn(&Path)>,
        ),
        (
            "foreign file",
            Box::new(|p: &Path| {
                std::fs::write(p, "accounts.csv, not a database\n".repeat(10)).unwrap()
            }),
            Box::new(|p: &Path| {
                assert_eq!(
                    std::fs::read_to_string(p).unwrap(),
                    "accounts.csv, not a database\n".repeat(10),
                    "the operator's file was changed"
                );
                std::fs::remove_file(p).unwrap()
            }),
        ),
    ] {
        let failed_before = write_failed();
        std::fs::remove_file(d.db()).unwrap();
        put(&d.db());
        ledger.keep(rec("lost"));
        let err = within(ledger.flush()).await.unwrap_err();
        assert!(matches!(err, LedgerError::Unavailable(_)), "{kind}: {err}");
        assert_eq!(write_failed(), failed_before + 1.0, "{kind}");
        // A job awaiting its commit hears of the failure at once.
        let err = within(ledger.write_ahead(rec("lost-urgent"), None))
            .await
            .unwrap_err();
        assert!(matches!(err, LedgerError::Unavailable(_)), "{kind}: {err}");
        // Recording goes on, without waiting.
        for i in 0..10 {
            ledger.keep(rec(&format!("meanwhile-{i}")));
        }
        remove(&d.db());
        // The writer's own retry: everything queued is written or counted.
        within(ledger.flush()).await.unwrap();
        let ids = request_ids(&d.db());
        let meanwhile = ids.iter().filter(|r| r.starts_with("meanwhile-")).count();
        assert_eq!(
            meanwhile as f64 + (write_failed() - failed_before - 1.0),
            10.0,
            "{kind}: {ids:?}"
        );
        assert!(!ids.iter().any(|r| r.starts_with("lost")), "{kind}");
        ledger.keep(rec("after"));
        within(ledger.flush()).await.unwrap();
        assert_eq!(request_ids(&d.db()).last().unwrap(), "after");
    }
}

/// Runs this test binary again as a child that executes the test `name` only.
fn child(name: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("LEDGER_TEST_CHILD", name)
        .env("LEDGER_TEST_DIR", dir);
    cmd
}

/// The directory the parent gave, when this process is the child running `name`.
fn child_dir(name: &str) -> Option<std::path::PathBuf> {
    (std::env::var("LEDGER_TEST_CHILD").ok()? == name)
        .then(|| std::env::var_os("LEDGER_TEST_DIR").map(Into::into))
        .flatten()
}

fn child_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn set_file_size_limit(limit: libc::rlim_t) {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut rl), 0);
        rl.rlim_cur = limit.min(rl.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &rl), 0);
    }
}

#[test]
fn an_unwritable_database_costs_rows_not_time_and_writing_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = child("child_unwritable_database", dir.path())
        .output()
        .unwrap();
    let log = format!("{}{}", text(out.stdout), text(out.stderr));
    assert!(out.status.success(), "child failed:\n{log}");
    assert!(
        log.contains("CHILD DONE"),
        "the child test did not run:\n{log}"
    );
}

/// The child of the test above: with `RLIMIT_FSIZE` at 0, every write(2) to a file fails
/// (`EFBIG`), for root too.
#[test]
fn child_unwritable_database() {
    let Some(dir) = child_dir("child_unwritable_database") else {
        return;
    };
    // The default action of SIGXFSZ ends the process; ignored, the write fails instead.
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    child_runtime().block_on(async {
        let settings = click_gateway::config::LedgerSettings {
            database: Some(dir.join("ledger.db")),
            ..Default::default()
        };
        let metrics = std::sync::Arc::new(click_gateway::metrics::Metrics::new());
        let ledger = Ledger::open(&settings, GUARD_WINDOW, metrics.clone()).unwrap();
        let body = signed(KEY_12345, "12345", 1, "o", None);
        let rec = |id: &str| record(&body, ago(1), id);
        ledger.keep(rec("before"));
        within(ledger.flush()).await.unwrap();

        set_file_size_limit(0);
        ledger.keep(rec("lost"));
        let err = within(ledger.flush()).await.unwrap_err();
        assert!(matches!(err, LedgerError::Unavailable(_)), "{err}");
        let err = within(ledger.write_ahead(rec("lost-urgent"), None))
            .await
            .unwrap_err();
        assert!(matches!(err, LedgerError::Unavailable(_)), "{err}");
        // The awaited row's caller heard of it (and guard.on_store_error decides for its
        // callback); the queued one is counted lost.
        let failed = metric(
            &metrics,
            "click_gateway_ledger_dropped_total{reason=\"write_failed\"}",
        );
        assert!(failed >= 1.0, "{failed}");
        for i in 0..10 {
            ledger.keep(rec(&format!("meanwhile-{i}")));
        }

        set_file_size_limit(libc::RLIM_INFINITY);
        ledger.keep(rec("after"));
        within(ledger.flush()).await.unwrap();
        let ids = request_ids(&dir.join("ledger.db"));
        assert_eq!(ids.first().unwrap(), "before");
        assert_eq!(ids.last().unwrap(), "after");
        assert!(!ids.iter().any(|r| r.starts_with("lost")), "{ids:?}");
        assert_eq!(written(&metrics) + dropped(&metrics), 13.0);
        assert!(ledger.close(PATIENCE).await);
    });
    println!("CHILD DONE");
}

#[test]
fn a_writer_killed_mid_write_leaves_every_committed_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut proc = child("child_killed_writer", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = proc.id() as libc::pid_t;
    // Kills the child should it hang, so the read below ends.
    let (cancel, cancelled) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if cancelled.recv_timeout(PATIENCE * 3).is_err() {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut committed = None;
    for line in BufReader::new(proc.stdout.take().unwrap()).lines() {
        let Ok(line) = line else { break };
        if let Some(n) = line.strip_prefix("COMMITTED ") {
            let n: u64 = n.parse().unwrap();
            committed = Some(n);
            if n >= 300 {
                break;
            }
        }
    }
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let status = proc.wait().unwrap();
    let _ = cancel.send(());
    watchdog.join().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let committed = committed.expect("the child committed nothing");
    assert!(committed >= 300, "the child stalled at {committed}");

    let db = dir.path().join("ledger.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    let ids = request_ids(&db);
    for i in 0..=committed {
        assert!(ids.contains(&format!("acked-{i}")), "acked-{i} lost");
    }
    // And the gateway starts on it again.
    let settings = click_gateway::config::LedgerSettings {
        database: Some(db.clone()),
        ..Default::default()
    };
    let metrics = std::sync::Arc::new(click_gateway::metrics::Metrics::new());
    let ledger = Ledger::open(&settings, GUARD_WINDOW, metrics).unwrap();
    child_runtime().block_on(async {
        ledger.keep(record("a=1", ago(1), "after-restart"));
        within(ledger.flush()).await.unwrap();
    });
    assert_eq!(request_ids(&db).last().unwrap(), "after-restart");
}

/// The child of the test above: writes until killed, printing each awaited commit.
#[test]
fn child_killed_writer() {
    let Some(dir) = child_dir("child_killed_writer") else {
        return;
    };
    child_runtime().block_on(async {
        let settings = click_gateway::config::LedgerSettings {
            database: Some(dir.join("ledger.db")),
            ..Default::default()
        };
        let metrics = std::sync::Arc::new(click_gateway::metrics::Metrics::new());
        let ledger = Ledger::open(&settings, GUARD_WINDOW, metrics).unwrap();
        let body = signed(KEY_12345, "12345", 1, "k", None);
        let mut stdout = std::io::stdout();
        for i in 0..1_000_000u64 {
            for j in 0..4 {
                ledger.keep(record(&body, ago(1), &format!("bulk-{i}-{j}")));
            }
            let acked = record(&body, ago(1), &format!("acked-{i}"));
            within(ledger.write_ahead(acked, None)).await.unwrap();
            writeln!(stdout, "COMMITTED {i}").unwrap();
            stdout.flush().unwrap();
        }
    });
}

#[tokio::test]
async fn a_restart_keeps_the_rows_and_a_stop_drains_the_queue() {
    let d = LedgerDir::new();
    let body = signed(KEY_12345, "12345", 1, "order-r", None);
    {
        let (ledger, metrics) = d.open();
        let lock = stall_writer(&d, &ledger, &metrics).await;
        for i in 0..50 {
            ledger.keep(record(&body, ago(5), &format!("r-{i}")));
        }
        release(&lock);
        assert!(ledger.close(PATIENCE).await, "the writer did not exit");
        assert_eq!(written(&metrics), 51.0);
        // After the stop: counted, never queued.
        ledger.keep(record(&body, ago(5), "late"));
        assert_eq!(
            metric(
                &metrics,
                "click_gateway_ledger_dropped_total{reason=\"shutdown\"}"
            ),
            1.0
        );
        assert!(matches!(
            within(ledger.write_ahead(record(&body, ago(5), "after-stop"), None)).await,
            Err(LedgerError::Closed)
        ));
        assert!(matches!(
            within(ledger.flush()).await,
            Err(LedgerError::Closed)
        ));
    }
    let (ledger, _) = d.open();
    let query = PaymentsQuery {
        merchant_trans_id: Some("order-r".into()),
        click_trans_id: None,
        service_id: None,
        since: Span::secs(3600),
        wide: false,
    };
    let mut out = Vec::new();
    let n = payments::run(
        &d.config.path(),
        &Environment::default(),
        &query,
        Format::Json,
        &mut out,
    )
    .unwrap();
    assert_eq!(n, 50);
    drop(ledger);
}

#[tokio::test]
async fn a_stop_deadline_counts_what_it_leaves() {
    let d = LedgerDir::new();
    let (ledger, metrics) = d.open();
    let body = signed(KEY_12345, "12345", 1, "o", None);
    let lock = stall_writer(&d, &ledger, &metrics).await;
    for i in 0..600 {
        ledger.keep(record(&body, ago(1), &format!("s-{i}")));
    }
    // The deadline has passed when the stalled row commits: the queue is counted, not written.
    let (_, ()) = tokio::join!(ledger.close(Duration::ZERO), async { release(&lock) });
    assert!(ledger.close(PATIENCE).await);
    assert_eq!(written(&metrics), 1.0);
    assert_eq!(
        metric(
            &metrics,
            "click_gateway_ledger_dropped_total{reason=\"shutdown\"}"
        ),
        600.0
    );
    assert_eq!(request_ids(&d.db()), ["stalled"]);
}

#[tokio::test]
async fn rows_past_their_retention_are_pruned() {
    let d = LedgerDir::new();
    let settings = d.settings_with_retention(Span::secs(3600));
    let body = signed(KEY_12345, "12345", 1, "p", None);
    {
        let (ledger, metrics) = d.open_with(settings.clone());
        for i in 0..3 {
            ledger.keep(record(&body, ago(7200 + i), &format!("old-{i}")));
        }
        for i in 0..2 {
            ledger.keep(record(&body, ago(60), &format!("new-{i}")));
        }
        within(ledger.flush()).await.unwrap();
        assert!(ledger.close(PATIENCE).await);
        assert_eq!(request_ids(&d.db()).len(), 5);
        let _ = metrics;
    }
    // Rows past their retention go as the ledger opens (and every minute, a batch at a time).
    {
        let (ledger, metrics) = d.open_with(settings.clone());
        assert_eq!(request_ids(&d.db()), ["new-0", "new-1"]);
        assert_eq!(
            metric(&metrics, "click_gateway_ledger_pruned_rows_total"),
            3.0
        );
        ledger.keep(record(&body, ago(30), "newer"));
        within(ledger.flush()).await.unwrap();
        assert!(ledger.close(PATIENCE).await);
    }
    // Rows past a retention shortened while the gateway was stopped go as it starts. (A
    // window of time is a range of ids: a row whose clock stepped back goes once the rows
    // before it do.)
    let (_ledger, metrics) = d.open_with(d.settings_with_retention(Span::secs(45)));
    assert_eq!(
        metric(&metrics, "click_gateway_ledger_pruned_rows_total"),
        2.0
    );
    assert_eq!(request_ids(&d.db()), ["newer"]);
}

#[tokio::test]
async fn the_commands_read_while_the_writer_writes() {
    let d = LedgerDir::new();
    let (ledger, metrics) = d.open();
    let writer = {
        let ledger = ledger.clone();
        std::thread::spawn(move || {
            child_runtime().block_on(async move {
                for i in 0..2000u64 {
                    let order = format!("order-{}", i % 10);
                    let body = signed(KEY_82154, "82154", 9000 + i, &order, None);
                    let rec = record(&body, ago(10), &format!("w-{i}"));
                    ledger.keep(if i % 2 == 0 {
                        rejected(
                            rec,
                            "unknown_service",
                            "no key is configured for service 82154",
                        )
                    } else {
                        rec
                    });
                    if i % 100 == 99 {
                        within(ledger.flush()).await.unwrap();
                    }
                }
            })
        })
    };
    let env = Environment::default();
    let query = PaymentsQuery {
        merchant_trans_id: Some("order-3".into()),
        click_trans_id: None,
        service_id: None,
        since: Span::secs(3600),
        wide: false,
    };
    let mut seen = 0;
    while !writer.is_finished() {
        let mut out = Vec::new();
        let n = payments::run(&d.config.path(), &env, &query, Format::Json, &mut out).unwrap();
        assert!(n >= seen, "{n} < {seen}");
        seen = n;
        let ids: Vec<u64> = text(out)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["request_id"].as_str().unwrap()[2..].parse().unwrap()
            })
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "out of order: {ids:?}");
        let q = RecheckQuery {
            service_id: Some("82154".into()),
            since: Span::secs(3600),
            candidate: Some(Secret::new(KEY_82154)),
        };
        let mut out = Vec::new();
        recheck::run(&d.config.path(), &env, &q, Format::Json, &mut out).unwrap();
        for line in text(out).lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["would_verify"], true);
        }
    }
    writer.join().unwrap();
    within(ledger.flush()).await.unwrap();
    let mut out = Vec::new();
    assert_eq!(
        payments::run(&d.config.path(), &env, &query, Format::Json, &mut out).unwrap(),
        200
    );
    assert_eq!(written(&metrics), 2000.0);
}

#[tokio::test]
async fn check_reports_the_ledger_without_changing_it() {
    let d = LedgerDir::new();
    let env = Environment::default();
    let check = || {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let ok = click_gateway::commands::check::run(&d.config.path(), &env, &mut out, &mut err)
            .unwrap();
        (ok, text(out), text(err))
    };
    let (ok, out, err) = check();
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "  ledger          {} (not created yet: serve creates it, schema v3); retention 90d, queue 4096\n",
            d.db().display()
        )),
        "{out}"
    );
    assert!(!d.db().exists(), "check created the database");
    let (ledger, _) = d.open();
    ledger.keep(record("a=1", ago(1), "one"));
    within(ledger.flush()).await.unwrap();
    assert!(ledger.close(PATIENCE).await);
    let before = std::fs::read(d.db()).unwrap();
    let (ok, out, _) = check();
    assert!(ok);
    assert!(
        out.contains(&format!(
            "  ledger          {} (schema v3, 1 rows, writable); retention 90d, queue 4096\n",
            d.db().display()
        )),
        "{out}"
    );
    assert_eq!(
        std::fs::read(d.db()).unwrap(),
        before,
        "check changed the database"
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.db(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, _, err) = check();
    assert!(ok);
    assert!(
        err.contains("has mode 0644: other users can read signed callbacks"),
        "{err}"
    );
    std::fs::write(d.db(), "not a database ".repeat(20)).unwrap();
    let (ok, _, err) = check();
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "error: {}: ledger.database: cannot open the ledger {}: file is not a database",
            d.config.path().display(),
            d.db().display()
        )),
        "{err}"
    );
}

#[tokio::test]
async fn the_ledger_metrics_are_exposed() {
    let d = LedgerDir::new();
    let (ledger, metrics) = d.open();
    ledger.keep(record("a=1", ago(1), "m"));
    within(ledger.flush()).await.unwrap();
    let text = metrics.encode();
    for line in [
        "# TYPE click_gateway_ledger_rows_written counter",
        "click_gateway_ledger_rows_written_total 1",
        "# TYPE click_gateway_ledger_dropped counter",
        // Every reason is exposed from the start, so a rate() alert has a series to watch.
        "click_gateway_ledger_dropped_total{reason=\"queue_full\"} 0",
        "click_gateway_ledger_dropped_total{reason=\"write_failed\"} 0",
        "click_gateway_ledger_dropped_total{reason=\"shutdown\"} 0",
        "# TYPE click_gateway_ledger_queue_depth gauge",
        "click_gateway_ledger_queue_depth 0",
        "# TYPE click_gateway_ledger_commit_duration_seconds histogram",
        "click_gateway_ledger_commit_duration_seconds_count 1",
        "# TYPE click_gateway_ledger_reopens counter",
        "# TYPE click_gateway_ledger_pruned_rows counter",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}

#[test]
fn check_shows_the_shipped_configs_ledger_and_never_a_postgres_password() {
    // The shipped example records callbacks with no extra step, next to itself.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml");
    let (code, out, err) = run_with_stdin(bin().arg("check").arg("--config").arg(&shipped), "");
    assert_eq!(code, 0, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("  ledger          "))
        .unwrap_or_else(|| panic!("no ledger line in {out}"));
    assert!(line.contains("config/ledger.db"), "{line}");
    let d = LedgerDir::with_keys(common::KEYS_TOML, "");
    let cfg = d.config.path();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "database = \"ledger.db\"",
        "database = \"postgres://ledger:pw-Secret-1@127.0.0.1:1/click\"",
    );
    std::fs::write(&cfg, text).unwrap();
    // Nothing listens there: a problem, naming the store by its redacted URL only.
    let (code, out, err) = run_with_stdin(bin().arg("check").arg("-c").arg(&cfg), "");
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("ledger.database: ledger postgres://ledger@127.0.0.1:1/click: "),
        "{err}"
    );
    assert!(
        !format!("{out}{err}").contains("pw-Secret-1"),
        "the URL's password was printed: {err}"
    );
}

/// Click sends a callback again, byte for byte, until it gets an answer it accepts: the
/// timeline marks each resend a retry (in the table, and `retry` in JSON), and the default
/// table of the support question (one order) fits a terminal; `--wide` has every column.
#[tokio::test]
async fn payments_marks_resent_callbacks_as_retries_and_fits_a_terminal() {
    use click_gateway::click::Diagnosis;
    let d = LedgerDir::new();
    let (ledger, _) = d.open();
    let prepare = signed(KEY_82154, "82154", 2103045678, "order-1001", None);
    let complete = signed(KEY_82154, "82154", 2103045678, "order-1001", Some("5001"));
    // The log line's own words, as the data path stores them.
    let why = Diagnosis::UnknownService {
        service_id: 82154,
        other: None,
    }
    .to_string();
    ledger.keep(rejected(
        record(&prepare, ago(300), "r-1"),
        "unknown_service",
        &why,
    ));
    ledger.keep(rejected(
        record(&prepare, ago(240), "r-2"),
        "unknown_service",
        &why,
    ));
    let mut fixed = verified(
        record(&prepare, ago(180), "r-3"),
        82154,
        KEY_82154,
        0,
        200,
        Some(answer("0", "Success", Some("5001"), None)),
    );
    fixed.generation = 2;
    ledger.keep(fixed);
    let mut done = verified(
        record(&complete, ago(120), "r-4"),
        82154,
        KEY_82154,
        0,
        200,
        Some(answer("0", "Success", Some("5001"), Some("7001"))),
    );
    done.generation = 2;
    done.path = "/click/complete/".into();
    ledger.keep(done);
    within(ledger.flush()).await.unwrap();
    let cfg = d.config.path();
    let payments = |extra: &[&str]| {
        let (code, out, err) = run_with_stdin(
            bin()
                .args([
                    "payments",
                    "--merchant-trans-id",
                    "order-1001",
                    "--since",
                    "1h",
                ])
                .args(extra)
                .arg("-c")
                .arg(&cfg),
            "",
        );
        assert_eq!(code, 0, "{err}");
        out
    };
    // The rows, without the title and the `why:` lines below them.
    let rows = |out: &str| -> Vec<String> {
        out.lines()
            .skip(1)
            .filter(|l| !l.starts_with("    why: "))
            .map(str::to_owned)
            .collect()
    };

    let out = payments(&[]);
    let table = rows(&out);
    assert_eq!(table.len(), 5, "{out}");
    assert_eq!(
        table[0],
        "TIME (UTC)            ACTION           CLICK_TRANS_ID  AMOUNT   ERROR  VERDICT   REASON           BACKEND"
    );
    let actions: Vec<&str> = table[1..].iter().map(|r| &r[22..39]).collect();
    assert_eq!(
        actions,
        [
            "prepare          ",
            "prepare (retry)  ",
            "prepare (retry)  ",
            "complete         "
        ],
        "{out}"
    );
    for line in &table {
        assert!(
            line.chars().count() <= 120,
            "{} columns: {line}",
            line.len()
        );
    }
    assert_eq!(
        out.matches(&format!("    why: {why}\n")).count(),
        2,
        "{out}"
    );

    let out = payments(&["--wide"]);
    let table = rows(&out);
    for column in [
        "SERVICE",
        "MERCHANT_TRANS_ID",
        "KEY",
        "GEN",
        "PREPARE_ID",
        "CONFIRM_ID",
        "REQUEST_ID",
    ] {
        assert!(table[0].contains(column), "{column} missing: {}", table[0]);
    }
    assert!(
        table[2].contains(" prepare (retry) ") && table[2].ends_with(" r-2"),
        "{out}"
    );
    assert!(
        table[3].contains(" prepare (retry) ") && table[3].ends_with(" r-3"),
        "{out}"
    );
    assert!(
        table[3].contains(&format!(" {}/0 ", fp(KEY_82154))),
        "{out}"
    );

    let out = payments(&["--format", "json"]);
    let retry: Vec<(String, bool)> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["request_id"].as_str().unwrap().to_owned(),
                v["retry"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        retry,
        [
            ("r-1".to_owned(), false),
            ("r-2".to_owned(), true),
            ("r-3".to_owned(), true),
            ("r-4".to_owned(), false)
        ]
    );
}
