//! The ledger end to end, with the real binary, real signals, real SQLite files and the Django
//! app under real gunicorn: the case that started the project (no key for service 82154, every
//! payment refused) from refusal to `recheck` to the fix to the whole timeline in `payments`;
//! and what must never cost a callback (a `kill -9` under load, a deleted or unusable
//! database file, commands reading while the gateway writes).

mod common;

use std::path::Path;

use click_gateway::click::sign::{CallbackBody, SignedFields};
use click_gateway::click::Secret;
use common::binary::{bin, run_with_stdin, GatewayProcess};
use common::django::{django_saw, Bind, Gunicorn};
use common::*;

const KEY_82154: &str = "sekrit-82154-from-click-support";
const TRUST: &str = "gateway-backend-secret-0123456789abcdef";
const SYNC: &[&str] = &["--worker-class", "sync", "--workers", "2"];

fn signed(service: &str, key: &str, action: &str, trans_id: u64, order: &str) -> String {
    let id = trans_id.to_string();
    CallbackBody {
        signed: SignedFields {
            click_trans_id: &id,
            service_id: service,
            merchant_trans_id: order,
            merchant_prepare_id: (action == "1").then_some("5001"),
            amount: "15000.00",
            action,
            sign_time: "2024-05-01 12:30:45",
        },
        click_paydoc_id: "1",
        error: "0",
        error_note: "Success",
    }
    .encode(&Secret::new(key))
}

/// Runs a subcommand of the real binary with `stdin`; returns (exit code, stdout, stderr).
fn run(args: &[&str], config: &Path, stdin: &str) -> (i32, String, String) {
    run_with_stdin(bin().args(args).arg("--config").arg(config), stdin)
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Waits until the gateway has committed at least `rows` ledger rows.
async fn committed(admin: std::net::SocketAddr, rows: f64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let m = scrape(admin).await;
        if m.get("click_gateway_ledger_rows_written_total")
            .copied()
            .unwrap_or(0.0)
            >= rows
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than {rows} rows committed: {m:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// `payments --format json` of an order once every forwarded callback of it has its
/// backend's answer recorded (answers are appended without waiting: a moment after).
async fn answered(config: &Path, order: &str) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (code, out, err) = run(
            &["payments", "--merchant-trans-id", order, "--format", "json"],
            config,
            "",
        );
        assert_eq!(code, 0, "{err}");
        let timeline = json_lines(&out);
        if timeline
            .iter()
            .all(|r| r["verdict"] != "verified" || !r["backend_status"].is_null())
        {
            return timeline;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "answers never recorded: {out}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_for_a_missing_key_rechecked_fixed_and_shown_as_a_timeline() {
    let backend = tempfile::tempdir().unwrap();
    let secrets = backend.path().join("trust.secrets");
    std::fs::write(&secrets, format!("{TRUST}\n")).unwrap();
    let django = Gunicorn::keyless(Bind::Tcp, SYNC, &secrets).await;
    let config = ConfigDir::with_url(
        &django.upstream_url(),
        KEYS_TOML,
        "",
        "",
        "\n[trust]\nsecret_file = \"trust.secrets\"\n[ledger]\ndatabase = \"ledger.db\"\n",
    );
    std::fs::write(
        config.dir.path().join("trust.secrets"),
        format!("{TRUST}\n"),
    )
    .unwrap();
    let mut gw = GatewayProcess::start(&config).await;
    let admin = gw.admin_addr.unwrap();
    let cfg = config.path();

    // This morning: every payment of 82154 is refused, and recorded.
    let orders = ["order-81", "order-82", "order-83"];
    for (i, order) in orders.iter().enumerate() {
        let body = signed("82154", KEY_82154, "0", 9001 + i as u64, order);
        let answer = callback(gw.addr, "/click/prepare/", &body).await.json();
        assert_eq!(answer["error"], -1, "{answer}");
    }
    committed(admin, 3.0).await;
    assert!(django_saw(&django).is_empty());

    // Click support sends a key. A wrong one verifies none of them...
    let (code, out, err) = run(
        &["recheck", "--service-id", "82154", "--secret-file", "-"],
        &cfg,
        "not-the-key\n",
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("0 of 3 refused callbacks of service 82154 since"),
        "{out}"
    );
    // ...the right one verifies every one, and names the orders.
    let fp = Secret::new(KEY_82154).fingerprint().to_string();
    let (code, out, err) = run(
        &["recheck", "--service-id", "82154", "--secret-file", "-"],
        &cfg,
        &format!("{KEY_82154}\n"),
    );
    assert_eq!(code, 0, "{out}{err}");
    let summary = out
        .lines()
        .find(|l| l.starts_with("3 of 3 refused callbacks of service 82154 since"))
        .unwrap_or_else(|| panic!("no summary in {out}"));
    assert!(
        summary.ends_with(&format!(
            "verify with fp {fp}; orders: order-81, order-82, order-83"
        )),
        "{summary}"
    );
    let (_, out, _) = run(
        &[
            "recheck",
            "--service-id",
            "82154",
            "--secret-file",
            "-",
            "--format",
            "json",
        ],
        &cfg,
        &format!("{KEY_82154}\n"),
    );
    let rows = json_lines(&out);
    assert_eq!(rows.len(), 3, "{out}");
    for row in &rows {
        assert_eq!(row["would_verify"], true, "{row}");
        assert_eq!(row["fp"], fp.as_str());
    }
    assert!(!out.contains(KEY_82154) && !gw.log_text().contains(KEY_82154));

    // The key goes into the gateway's keys file; SIGHUP; Click's next tries go through.
    write_atomic(
        &config.dir.path().join("keys.toml"),
        &format!("{KEYS_TOML}[services.82154]\nsecret_keys = [\"{KEY_82154}\"]\n"),
    );
    gw.signal(libc::SIGHUP);
    gw.wait_log(|l| l.contains("reload ok") && l.contains("service 82154 added"))
        .await;
    let prepare = signed("82154", KEY_82154, "0", 9002, "order-82");
    assert_eq!(
        callback(gw.addr, "/click/prepare/", &prepare).await.json()["error"],
        0
    );
    let complete = signed("82154", KEY_82154, "1", 9002, "order-82");
    assert_eq!(
        callback(gw.addr, "/click/complete/", &complete)
            .await
            .json()["error"],
        0
    );
    committed(admin, 5.0).await;

    // What happened to order 82, oldest first, with the backend's answers (appended without
    // waiting: read once they are in).
    let timeline = answered(&cfg, "order-82").await;
    assert_eq!(timeline.len(), 3, "{timeline:?}");
    let pick = |row: &serde_json::Value, keys: &[&str]| -> Vec<serde_json::Value> {
        keys.iter().map(|k| row[*k].clone()).collect()
    };
    let keys = [
        "action",
        "service_id",
        "click_trans_id",
        "amount",
        "verdict",
        "reason",
        "generation",
        "backend_status",
        "backend_error",
    ];
    use serde_json::json;
    assert_eq!(
        pick(&timeline[0], &keys),
        [
            json!("prepare"),
            json!("82154"),
            json!("9002"),
            json!("15000.00"),
            json!("rejected"),
            json!("unknown_service"),
            json!(1),
            json!(null),
            json!(null)
        ]
    );
    assert_eq!(
        pick(&timeline[1], &keys),
        [
            json!("prepare"),
            json!("82154"),
            json!("9002"),
            json!("15000.00"),
            json!("verified"),
            json!(null),
            json!(2),
            json!(200),
            json!("0")
        ]
    );
    assert_eq!(timeline[1]["merchant_prepare_id"], "5001");
    assert_eq!(timeline[1]["fp"], fp.as_str());
    assert_eq!(timeline[2]["action"], "complete");
    assert_eq!(timeline[2]["verdict"], "verified");
    assert_eq!(timeline[2]["merchant_confirm_id"], "7001");
    for row in &timeline {
        assert!(row["time"].as_str().unwrap().ends_with('Z'), "{row}");
    }
    // The same at a glance.
    let (_, text, _) = run(&["payments", "--merchant-trans-id", "order-82"], &cfg, "");
    let rows = text
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()));
    assert_eq!(rows.count(), 3, "{text}");
    assert!(text.contains("unknown_service"), "{text}");
    let rows_before_restart = timeline.len();

    // A restart keeps every record.
    gw.signal(libc::SIGTERM);
    assert_eq!(gw.wait_exit().await, Some(0));
    let gw = GatewayProcess::start(&config).await;
    let (_, out, _) = run(
        &[
            "payments",
            "--merchant-trans-id",
            "order-82",
            "--format",
            "json",
        ],
        &cfg,
        "",
    );
    assert_eq!(json_lines(&out).len(), rows_before_restart);
    drop(gw);
}

/// The `click_trans_id` of a form-encoded callback body.
fn click_trans_id(body: &[u8]) -> Option<String> {
    std::str::from_utf8(body)
        .ok()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("click_trans_id="))
        .map(str::to_owned)
}

/// The write-ahead promise: a callback's row is committed before the backend sees a byte of
/// it, so `kill -9` under load loses none that the backend received; the next start says how
/// many of them have no recorded answer, and `payments` shows each as forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_callback_the_backend_received() {
    let mut up = TestUpstream::start().await;
    let config = ConfigDir::with_click(
        up.addr,
        KEYS_TOML,
        "workers = 2",
        "",
        "[ledger]\ndatabase = \"ledger.db\"\n",
    );
    let cfg = config.path();
    let mut gw = GatewayProcess::start(&config).await;
    let admin = gw.admin_addr.unwrap();
    let addr = gw.addr;
    // Eight keep-alive clients sending distinct valid Prepares of one order, without pause...
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
    let mut load = Vec::new();
    for _ in 0..8 {
        let next = next.clone();
        load.push(tokio::spawn(async move {
            let mut conn = h1_connect(addr).await;
            loop {
                if conn.ready().await.is_err() {
                    return;
                }
                let id = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let req = callback_request(
                    "/click/prepare/",
                    &signed_prepare(1_000_000 + id, "o-kill", "1000.00"),
                );
                if conn.send_request(req).await.is_err() {
                    return;
                }
            }
        }));
    }
    // ...and SIGKILL in the middle of it.
    committed(admin, 600.0).await;
    gw.signal(libc::SIGKILL);
    gw.wait_exit().await;
    for task in load {
        task.await.unwrap();
    }

    // The next start counts the forwarded callbacks whose answer was never recorded.
    let mut gw = GatewayProcess::start(&config).await;
    // Logged before the gateway is ready.
    let log = gw.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("the last run did not end cleanly"))
        .unwrap_or_else(|| panic!("no crash report in {log}"));
    let unanswered: usize = line
        .split_once("unanswered")
        .map(|(_, rest)| rest.trim_start_matches(|c: char| !c.is_ascii_digit()))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line}"));
    let (code, out, err) = run(
        &[
            "payments",
            "--merchant-trans-id",
            "o-kill",
            "--format",
            "json",
        ],
        &cfg,
        "",
    );
    assert_eq!(code, 0, "{err}");
    let timeline = json_lines(&out);
    let recorded: std::collections::HashSet<String> = timeline
        .iter()
        .filter(|row| row["verdict"] == "verified")
        .filter_map(|row| row["click_trans_id"].as_str().map(str::to_owned))
        .collect();
    let without_answer = timeline
        .iter()
        .filter(|row| row["backend_status"].is_null())
        .count();
    assert_eq!(
        without_answer, unanswered,
        "the start's count is the rows that payments shows without an answer"
    );
    // Everything the backend ever received (the gateway is dead: nothing more comes).
    let mut received = Vec::new();
    while let Some(r) = up.try_next() {
        received.push(click_trans_id(&r.body).expect("a callback body"));
    }
    // 600 rows were committed before the kill; all but the last few in flight reached it.
    assert!(received.len() >= 500, "{} received", received.len());
    let missing: Vec<&String> = received
        .iter()
        .filter(|id| !recorded.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} callbacks the backend received are not in the ledger: {missing:?}",
        missing.len(),
        received.len()
    );
    gw.signal(libc::SIGTERM);
    assert_eq!(gw.wait_exit().await, Some(0));
}

/// A Prepare bound before: `flipped` (its signature over other unsigned fields) is refused and
/// never reaches the backend; `original` again (Click's retry) is forwarded.
async fn replay_refused_and_retry_forwarded(
    gw: std::net::SocketAddr,
    up: &mut TestUpstream,
    original: &str,
    flipped: &str,
) {
    let resp = callback(gw, "/click/prepare/", flipped).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::SignRejected);
    assert!(
        up.try_next().is_none(),
        "the flipped replay reached the backend"
    );
    let resp = callback(gw, "/click/prepare/", original).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    assert_eq!(up.next().await.body, original.as_bytes());
}

/// The guard's index is rebuilt from the rows at start: a binding made just before a
/// `kill -9` still holds. The flipped replay is refused, the identical retry forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_survives_kill_9_the_flipped_replay_is_refused_and_the_retry_forwarded() {
    let mut up = TestUpstream::start().await;
    let config = ConfigDir::with_ledger(up.addr);
    let mut gw = GatewayProcess::start(&config).await;
    let original = signed_prepare(4242, "o-bind", "1000.00");
    let resp = callback(gw.addr, "/click/prepare/", &original).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    assert_eq!(up.next().await.body, original.as_bytes());
    gw.signal(libc::SIGKILL);
    gw.wait_exit().await;

    let gw = GatewayProcess::start(&config).await;
    // The same signature over other unsigned fields (click_paydoc_id is not signed).
    let flipped = original.replace("click_paydoc_id=1", "click_paydoc_id=999");
    assert_ne!(
        flipped, original,
        "the body has a click_paydoc_id to change"
    );
    replay_refused_and_retry_forwarded(gw.addr, &mut up, &original, &flipped).await;
    // One database file and its WAL: no guard file beside it.
    let mut files: Vec<String> = std::fs::read_dir(config.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("ledger"))
        .collect();
    files.sort();
    assert_eq!(files, ["ledger.db", "ledger.db-shm", "ledger.db-wal"]);
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_database_is_recreated_and_an_unusable_one_costs_what_on_store_error_says() {
    let mut up = TestUpstream::start().await;
    // Callbacks whose record cannot be written are forwarded unrecorded (`allow`; the default,
    // `refuse`, answers 503: tests/guard.rs).
    let gw = TestGateway::start_with(ConfigDir::with_click(
        up.addr,
        KEYS_TOML,
        "",
        "",
        "[ledger]\ndatabase = \"ledger.db\"\n[guard]\non_store_error = \"allow\"\ntimeout = \"500ms\"\n",
    ))
    .await;
    let ledger = gw.gateway.ledger.clone().unwrap();
    let db = ledger.location().path().to_owned();
    let mut n = 0u64;
    let mut pay = || {
        n += 1;
        signed_prepare(n, "o-1", "1000.00")
    };
    let resp = callback(gw.addr, "/click/prepare/", &pay()).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    ledger.flush().await.unwrap();

    // Deleted, with its -wal and -shm, under the running gateway.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let resp = callback(gw.addr, "/click/prepare/", &pay()).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    ledger.flush().await.unwrap();
    assert!(db.exists(), "the deleted ledger was not recreated");
    let m = &gw.gateway.metrics;
    assert!(m.ledger_reopens.get() >= 1);

    // A directory where the database should be: nothing can be written, every callback is
    // still served (on_store_error = "allow"), the loss is counted.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::create_dir(&db).unwrap();
    for _ in 0..5 {
        let resp = callback(gw.addr, "/click/prepare/", &pay()).await;
        assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    }
    assert!(
        ledger.flush().await.is_err(),
        "a write into a directory succeeded"
    );
    let m = scrape(gw.admin_addr).await;
    let lost = m
        .get("click_gateway_ledger_unrecorded_total{reason=\"store_error\"}")
        .copied()
        .unwrap_or(0.0);
    assert_eq!(lost, 5.0, "{m:?}");

    // The directory goes: writing resumes by itself.
    std::fs::remove_dir(&db).unwrap();
    let resp = callback(gw.addr, "/click/prepare/", &pay()).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    let resumed = tokio::time::timeout(PATIENCE, async {
        loop {
            if ledger.flush().await.is_ok() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(resumed.is_ok(), "writing never resumed");
    let rows: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM callbacks", [], |r| r.get(0))
        .unwrap();
    assert!(rows >= 1);
    while up.try_next().is_some() {}
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payments_and_recheck_run_while_the_gateway_writes() {
    let mut up = TestUpstream::start().await;
    let config = ConfigDir::with_ledger(up.addr);
    let gw = GatewayProcess::start(&config).await;
    let admin = gw.admin_addr.unwrap();
    let addr = gw.addr;
    let load = tokio::spawn(async move {
        let mut conn = h1_connect(addr).await;
        for i in 0..600u64 {
            // Half of them refused (service 999 has no key), half verified.
            let body = if i % 2 == 0 {
                signed_prepare(i + 1, "o-load", "1000.00")
            } else {
                prepare_signed_with("k", "999", i + 1)
            };
            let v = send_callback(&mut conn, &body).await;
            assert_eq!(
                v,
                if i % 2 == 0 {
                    Verdict::Forwarded
                } else {
                    Verdict::SignRejected
                }
            );
        }
    });
    let cfg = config.path();
    let mut runs = 0;
    while !load.is_finished() {
        let (code, _, err) = run(
            &["payments", "--service-id", "12345", "--format", "json"],
            &cfg,
            "",
        );
        assert_eq!(code, 0, "{err}");
        let (code, out, err) = run(
            &["recheck", "--service-id", "999", "--format", "json"],
            &cfg,
            "",
        );
        assert!(code == 0 || code == 1, "{out}{err}");
        runs += 1;
    }
    load.await.unwrap();
    assert!(runs > 0);
    committed(admin, 600.0).await;
    let (_, out, _) = run(
        &["payments", "--service-id", "12345", "--format", "json"],
        &cfg,
        "",
    );
    assert_eq!(json_lines(&out).len(), 300);
    while up.try_next().is_some() {}
}

/// A SQLite file made from one of `tests/data`'s dumps, its times moved so that its newest row
/// is a moment ago (the dump's rows must stay inside the guard's window and the retention).
fn database_from_dump(path: &Path, dump: &str, shift_tables: &[&str]) {
    let db = rusqlite::Connection::open(path).unwrap();
    db.execute_batch(dump).unwrap();
    let _: String = db
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    for table in shift_tables {
        db.execute(
            &format!("UPDATE {table} SET time = time + (?1 - (SELECT max(time) FROM {table}))"),
            [now - 1_000_000],
        )
        .unwrap();
    }
}

/// The start's log line that says the ledger was migrated to v3.
fn migration_line(log: &str) -> &str {
    log.lines()
        .find(|l| l.contains("migrated to schema v3"))
        .unwrap_or_else(|| panic!("no migration in {log}"))
}

/// The upgrade of a ledger of thousands of verified rows: converted a thousand rows at a time,
/// every one of them bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_release_s_ledger_of_thousands_of_rows_is_converted_in_full() {
    let up = TestUpstream::start().await;
    let config = ConfigDir::with_ledger(up.addr);
    let db = config.dir.path().join("ledger.db");
    database_from_dump(&db, include_str!("data/ledger-v2.sql"), &["callbacks"]);
    {
        // The dump's two verified rows, 1,251 times each.
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TEMP TABLE verified AS SELECT * FROM callbacks WHERE verdict = 'verified';",
        )
        .unwrap();
        for _ in 0..1250 {
            conn.execute_batch(
                "UPDATE verified SET id = id + 100; INSERT INTO callbacks SELECT * FROM verified;",
            )
            .unwrap();
        }
    }
    let mut gw = GatewayProcess::start(&config).await;
    let log = gw.log_text();
    let migrated = migration_line(&log);
    assert!(migrated.contains("rows_bound=2502"), "{migrated}");
    gw.signal(libc::SIGTERM);
    assert_eq!(gw.wait_exit().await, Some(0));
}

/// The upgrade: a ledger and its guard file written by the release before the write-ahead
/// ledger (fb60095, schema v2: `tests/data/ledger-v2*.sql`) open under this one. The ledger is
/// migrated in place, its rows kept for `payments` and `recheck`, its bindings kept (computed
/// again from the rows' bodies); the old guard file is left alone, with a word in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_and_guard_file_of_the_previous_release_open_with_their_rows_and_bindings() {
    use serde_json::json;
    let mut up = TestUpstream::start().await;
    let config = ConfigDir::with_ledger(up.addr);
    let cfg = config.path();
    let dir = config.dir.path();
    database_from_dump(
        &dir.join("ledger.db"),
        include_str!("data/ledger-v2.sql"),
        &["callbacks"],
    );
    database_from_dump(
        &dir.join("ledger.guard.db"),
        include_str!("data/ledger-v2.guard.sql"),
        &["bindings", "completes"],
    );
    let guard_file = std::fs::read(dir.join("ledger.guard.db")).unwrap();

    let mut gw = GatewayProcess::start(&config).await;
    // Logged before the gateway is ready.
    let log = gw.log_text();
    let migrated = migration_line(&log);
    assert!(migrated.contains("rows_bound=2"), "{migrated}");
    assert!(log.contains("is no longer used"), "{log}");

    // The rows, for the commands.
    let (code, out, err) = run(
        &[
            "payments",
            "--merchant-trans-id",
            "order-v2",
            "--format",
            "json",
        ],
        &cfg,
        "",
    );
    assert_eq!(code, 0, "{err}");
    let timeline = json_lines(&out);
    let summary: Vec<_> = timeline
        .iter()
        .map(|r| {
            (
                r["action"].clone(),
                r["verdict"].clone(),
                r["backend_status"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (json!("prepare"), json!("verified"), json!(200)),
            (json!("complete"), json!("verified"), json!(200)),
        ]
    );
    assert_eq!(timeline[1]["merchant_confirm_id"], "7001");
    let (code, out, err) = run(
        &["recheck", "--service-id", "82154", "--secret-file", "-"],
        &cfg,
        &format!("{KEY_12345}\n"),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("1 of 1 refused callback of service 82154 since"),
        "{out}"
    );

    // The bindings: the old Prepare's signature over another click_paydoc_id is refused, the
    // same message again (Click's retry) is forwarded.
    let old_prepare = timeline[0]["request_id"].as_str().unwrap().to_owned();
    let db = rusqlite::Connection::open(dir.join("ledger.db")).unwrap();
    let body: Vec<u8> = db
        .query_row(
            "SELECT body FROM callbacks WHERE request_id = ?1",
            [&old_prepare],
            |r| r.get(0),
        )
        .unwrap();
    let original = String::from_utf8(body).unwrap();
    let flipped = original.replace("click_paydoc_id=77", "click_paydoc_id=78");
    assert_ne!(flipped, original);
    replay_refused_and_retry_forwarded(gw.addr, &mut up, &original, &flipped).await;

    // The old guard file is as it was.
    gw.signal(libc::SIGTERM);
    assert_eq!(gw.wait_exit().await, Some(0));
    assert_eq!(
        std::fs::read(dir.join("ledger.guard.db")).unwrap(),
        guard_file
    );
}
