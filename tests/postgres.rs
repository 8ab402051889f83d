//! PostgreSQL as the shared store, on a real server: each test starts a private cluster
//! (tests/common/postgres.rs), and the gateways are the real binary, two instances with their
//! own configuration directories naming the same URL, in front of one recording upstream. The
//! URL carries a password that no log or output may show.

mod common;

use std::sync::Arc;
use std::time::SystemTime;

use click_gateway::click::sign::{CallbackBody, SignedFields};
use click_gateway::click::{digest, Secret};
use click_gateway::config::LedgerSettings;
use click_gateway::ledger::{
    Admitted, Binding, Filter, Inspection, Ledger, Location, Seen, Store, SCHEMA_VERSION,
};
use click_gateway::metrics::Metrics;
use common::binary::{bin, run_with_stdin, GatewayProcess};
use common::ledger::{metric, record, rejected, verified, Keep, GUARD_WINDOW};
use common::postgres::{ledger_section, PgCluster, PG_PASSWORD};
use common::*;

const T1: &str = "2024-05-01 12:30:45";

/// A signed Complete of service 12345.
fn complete(trans: u64, prepare_id: &str, amount: &str, error: &str) -> String {
    let id = trans.to_string();
    CallbackBody {
        signed: SignedFields {
            click_trans_id: &id,
            service_id: "12345",
            merchant_trans_id: "order-pg",
            merchant_prepare_id: Some(prepare_id),
            amount,
            action: "1",
            sign_time: T1,
        },
        click_paydoc_id: "1",
        error,
        error_note: if error == "0" {
            "Success"
        } else {
            "Payment failed"
        },
    }
    .encode(&Secret::new(KEY_12345))
}

fn config(up: &TestUpstream, url: &str, guard: &str) -> ConfigDir {
    ConfigDir::with_click(
        up.addr,
        KEYS_TOML,
        "workers = 2",
        "",
        &format!("{}[guard]\n{guard}\n", ledger_section(url, "")),
    )
}

fn settings(url: &str) -> LedgerSettings {
    LedgerSettings {
        database: Some(url.into()),
        ..LedgerSettings::default()
    }
}

fn location(url: &str) -> Location {
    Location::from_settings(&settings(url)).unwrap()
}

/// Runs a command of the binary; its exit code, stdout and stderr, checked for secrets.
fn run(args: &[&str], config: &ConfigDir) -> (i32, String, String) {
    let (code, stdout, stderr) =
        run_with_stdin(bin().args(args).arg("--config").arg(config.path()), "");
    assert_no_secrets(&stdout);
    assert_no_secrets(&stderr);
    (code, stdout, stderr)
}

/// `payments` until it lists `want` callbacks (each gateway's writer commits its rows a
/// moment after the answer), at most [`PATIENCE`].
async fn payments_until(config: &ConfigDir, want: usize) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (code, out, err) = run(
            &[
                "payments",
                "--merchant-trans-id",
                "order-pg",
                "--format",
                "json",
            ],
            config,
        );
        assert_eq!(code, 0, "{out}{err}");
        if out.lines().count() >= want {
            return out;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "payments never showed {want} callbacks:\n{out}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_postgres_share_the_guard_and_the_ledger() {
    let pg = PgCluster::start().await;
    let mut up = TestUpstream::start().await;
    let (dir_a, dir_b) = (config(&up, &pg.url(), ""), config(&up, &pg.url(), ""));
    let mut a = GatewayProcess::start(&dir_a).await;
    let mut b = GatewayProcess::start(&dir_b).await;
    for g in [&mut a, &mut b] {
        g.wait_logged(&format!(
            "ledger: recording callbacks ledger={}",
            pg.shown()
        ))
        .await;
    }

    // A failed Complete, first seen through A.
    let failed = complete(801, "5001", "1000.00", "-5017");
    let resp = callback(a.addr, "/click/complete/", &failed).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    assert_eq!(up.next().await.body, failed.as_bytes());
    // Replayed through B claiming it was paid: refused.
    let flipped = failed
        .replace("error=-5017", "error=0")
        .replace("error_note=Payment+failed", "error_note=Success");
    let resp = callback(b.addr, "/click/complete/", &flipped).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::SignRejected);
    assert!(up.try_next().is_none());
    let id = resp.header("x-request-id").unwrap().to_owned();
    b.wait_logged("replayed_with_changes").await;
    let line = b
        .log_text()
        .lines()
        .find(|l| l.contains(&id))
        .unwrap()
        .to_owned();
    assert!(line.contains("error, error_note differ"), "{line}");
    // Click's retry, byte for byte, through B: forwarded.
    let resp = callback(b.addr, "/click/complete/", &failed).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    assert_eq!(up.next().await.body, failed.as_bytes());
    // The re-split prepare id and amount (the same signed string) through B: refused.
    let resplit = failed
        .replace("merchant_prepare_id=5001", "merchant_prepare_id=500")
        .replace("amount=1000.00", "amount=11000.00");
    let resp = callback(b.addr, "/click/complete/", &resplit).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::SignRejected);
    assert!(up.try_next().is_none());
    b.wait_logged("amount, merchant_prepare_id differ").await;

    // `payments` through either configuration: all four, from both gateways.
    let ids: Vec<String> = [&a, &b]
        .iter()
        .flat_map(|g| {
            g.log_text()
                .lines()
                .filter(|l| l.contains("callback "))
                .filter_map(|l| l.split("request_id=\"").nth(1))
                .filter_map(|r| r.split('"').next())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    for dir in [&dir_a, &dir_b] {
        let out = payments_until(dir, 4).await;
        for id in &ids {
            assert!(out.contains(id), "{id} missing from\n{out}");
        }
        assert_eq!(out.matches("\"replayed_with_changes\"").count(), 2, "{out}");
    }
    let (code, out, _) = run(&["payments", "--merchant-trans-id", "order-pg"], &dir_b);
    assert_eq!(code, 0);
    assert!(out.contains("4 callbacks"), "{out}");

    // A callback of a service with no key, refused at A; `recheck` through B's configuration,
    // with the key Click support would send, finds that it verifies.
    let unknown = prepare_signed_with("sekrit", "55555", 4242);
    let resp = callback(a.addr, "/click/prepare/", &unknown).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::SignRejected);
    let key_file = dir_b.dir.path().join("candidate.key");
    std::fs::write(&key_file, "sekrit\n").unwrap();
    let key_arg = key_file.to_str().unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let out = loop {
        let (code, out, err) = run(
            &["recheck", "--service-id", "55555", "--secret-file", key_arg],
            &dir_b,
        );
        if code == 0 {
            break out;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "recheck never found the refused callback: {out}{err}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        out.contains("unknown_service  verifies (slot 0 fp ") && out.contains("4242"),
        "{out}"
    );
    for g in [&a, &b] {
        assert!(!g.log_text().contains(PG_PASSWORD));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_signature_with_other_fields_at_two_gateways_at_once_is_forwarded_once() {
    let pg = PgCluster::start().await;
    let mut up = TestUpstream::start().await;
    let (dir_a, dir_b) = (config(&up, &pg.url(), ""), config(&up, &pg.url(), ""));
    let a = GatewayProcess::start(&dir_a).await;
    let b = GatewayProcess::start(&dir_b).await;
    for round in 0..40u64 {
        let first = complete(20_000 + round, "5001", "1000.00", "-5017");
        let second = first.replace("error=-5017", "error=0");
        let (ra, rb) = tokio::join!(
            callback(a.addr, "/click/complete/", &first),
            callback(b.addr, "/click/complete/", &second)
        );
        exactly_one_forwarded(&mut up, (&first, &ra), (&second, &rb), round).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_down_callbacks_get_503_and_flow_again_once_it_is_back() {
    let mut pg = PgCluster::start().await;
    let mut up = TestUpstream::start().await;
    let dir = config(&up, &pg.url(), "timeout = \"1s\"");
    let gw = GatewayProcess::start(&dir).await;
    let before = complete(900, "5001", "1000.00", "0");
    let resp = callback(gw.addr, "/click/complete/", &before).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    up.next().await;
    // Its row is in before PostgreSQL goes.
    payments_until(&dir, 1).await;

    pg.stop();
    let down = complete(901, "5001", "1000.00", "0");
    let resp = callback(gw.addr, "/click/complete/", &down).await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.text(), "503 Service Unavailable\n");
    assert!(up.try_next().is_none());
    // Other traffic never notices.
    let get = raw(
        gw.addr,
        b"GET /api/orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(get.status, 200);
    assert_eq!(up.next().await.uri, "/api/orders");
    let admin = gw.admin_addr.unwrap();
    let m = scrape(admin).await;
    assert_eq!(
        m.get("click_gateway_guard_checks_total{rule=\"signature\",outcome=\"store_error\"}"),
        Some(&1.0)
    );
    assert_eq!(
        m.get("click_gateway_requests_refused_total{reason=\"store_unavailable\"}"),
        Some(&1.0)
    );
    // The refused callback's row cannot be written either: counted, as with SQLite.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let m = scrape(admin).await;
        if m.get("click_gateway_ledger_dropped_total{reason=\"write_failed\"}")
            .is_some_and(|n| *n >= 1.0)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lost row was never counted: {}",
            gw.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // PostgreSQL back on the same port: callbacks flow, with no gateway restart.
    pg.start_again();
    let again = complete(902, "5001", "1000.00", "0");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let resp = callback(gw.addr, "/click/complete/", &again).await;
        if resp.status == 200 {
            assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
            break;
        }
        assert_eq!(resp.status, 503, "{}", resp.text());
        assert!(
            tokio::time::Instant::now() < deadline,
            "callbacks never flowed again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(up.next().await.body, again.as_bytes());
    // And the ledger records again.
    let out = payments_until(&dir, 2).await;
    assert!(out.contains("\"click_trans_id\":\"902\""), "{out}");
    assert_no_secrets(&gw.log_text());
}

#[tokio::test]
async fn check_creates_the_schema_says_so_and_never_shows_the_password() {
    let pg = PgCluster::start().await;
    let up = TestUpstream::start().await;
    let dir = config(&up, &pg.url(), "");
    let (code, out, err) = run(&["check"], &dir);
    assert_eq!(code, 0, "{out}{err}");
    // The test's gateway.toml is 0644, like the packaged one.
    assert!(
        err.contains("warning: ledger.database: the PostgreSQL URL carries a password and"),
        "{err}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("  ledger          "))
        .unwrap_or_else(|| panic!("no ledger line in {out}"));
    assert!(line.contains(&pg.shown()), "{line}");
    let version: String = pg
        .admin()
        .await
        .query_one("SHOW server_version", &[])
        .await
        .unwrap()
        .get(0);
    let major = version.split('.').next().unwrap_or_default();
    assert!(line.contains(&format!("PostgreSQL {major}")), "{line}");
    assert!(
        line.contains(&format!(
            "schema v{SCHEMA_VERSION}, created now by check, 0 rows"
        )),
        "{line}"
    );
    // The schema is there, versioned.
    let db = pg.ledger_db().await;
    let version: i64 = db
        .query_one("SELECT version FROM click_gateway_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, SCHEMA_VERSION);
    // Again: nothing to do.
    let (code, out, _) = run(&["check"], &dir);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("shared; schema v{SCHEMA_VERSION}, 0 rows")),
        "{out}"
    );

    // A wrong password: a problem naming the store redacted, and no password of either kind.
    let wrong = pg.url().replace(PG_PASSWORD, "not-the-pw-4242");
    let bad = config(&up, &wrong, "");
    let (code, out, err) = run(&["check"], &bad);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains(&pg.shown()), "{err}");
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains("not-the-pw-4242"), "{err}");
    // serve refuses to start on it, saying the same.
    let (code, _, err) = run(&["payments", "--service-id", "12345"], &bad);
    assert_eq!(code, 1);
    assert!(!err.contains("not-the-pw-4242"), "{err}");
    let out = bin()
        .args(["serve", "--config"])
        .arg(bad.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains(&pg.shown()), "{log}");
    assert!(!log.contains("not-the-pw-4242"), "{log}");
}

#[tokio::test]
async fn tables_the_gateway_did_not_create_are_refused_and_left_alone() {
    let pg = PgCluster::start().await;
    let db = pg.ledger_db().await;
    db.batch_execute("CREATE TABLE callbacks (x int); INSERT INTO callbacks VALUES (7);")
        .await
        .unwrap();
    let err = Store::open_writer(&location(&pg.url()), Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("did not create"), "{err}");
    assert!(!err.contains(PG_PASSWORD), "{err}");
    let n: i64 = db
        .query_one("SELECT count(*) FROM callbacks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn concurrent_starts_migrate_once_and_a_v1_schema_keeps_its_rows() {
    let pg = PgCluster::start().await;
    let url = pg.url();
    // Four gateways starting at once on an empty database.
    let opened: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| Store::open_writer(&location(&url), Default::default()).map(|_| ()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in &opened {
        assert!(o.is_ok(), "{o:?}");
    }
    let store = Store::open_reader(&location(&url)).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    drop(store);

    // A v1 schema (callbacks only) with a row: migrated to the current one, the row kept.
    let old = PgCluster::start().await;
    let db = old.ledger_db().await;
    db.batch_execute(click_gateway::ledger::postgres::LEGACY_MIGRATIONS[0])
        .await
        .unwrap();
    db.batch_execute(
        "CREATE TABLE click_gateway_schema (id INTEGER PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL, migrated_at TIMESTAMPTZ NOT NULL DEFAULT now());
         INSERT INTO click_gateway_schema (id, version) VALUES (1, 1);
         INSERT INTO callbacks (time, request_id, peer, client, path, body, verdict, generation, mode, gateway_us, total_us)
         VALUES (1, 'old-row', 'p', 'c', '/', '', 'verified', 1, 'enforce', 0, 0);",
    )
    .await
    .unwrap();
    let err = Store::open_reader(&location(&old.url()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("start the gateway once to migrate it"),
        "{err}"
    );
    match Store::inspect(&location(&old.url())).unwrap() {
        Inspection::Shared {
            from: 1,
            version: SCHEMA_VERSION,
            rows: 1,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    let store = Store::open_reader(&location(&old.url())).unwrap();
    let rows = store.callbacks(&Filter::default()).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].request_id, "old-row");
}

fn binding(sign: &str, fields: &str, token: &str) -> Binding {
    Binding {
        service_id: "12345".into(),
        sign: sign.into(),
        digest: digest::digest(&digest::canonical(&[("f", fields)])),
        fields: format!("{{\"f\":\"{fields}\"}}"),
        request_id: format!("r-{token}"),
        token: token.into(),
        time_us: click_gateway::ledger::unix_micros(SystemTime::now()),
        enforce_signature: true,
        complete: Some(click_gateway::ledger::CompleteClaim {
            click_trans_id: "77".into(),
            error: if fields == "paid" { "0" } else { "-5017" }.into(),
        }),
    }
}

/// The write-ahead record of a callback with its binding, in one statement.
async fn admitted(ledger: &Ledger, b: Binding) -> Admitted {
    let body = complete(1002, "5001", "1000.00", "0");
    let rec = record(&body, SystemTime::now(), &b.request_id);
    ledger.write_ahead(rec, Some(b)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_records_binds_prunes_and_answers_the_commands_on_postgres() {
    // Its log lines are scanned for secrets at the end.
    capture_logs();
    let pg = PgCluster::start().await;
    let metrics = Arc::new(Metrics::new());
    let ledger = Ledger::open(&settings(&pg.url()), GUARD_WINDOW, metrics.clone()).unwrap();
    assert_eq!(ledger.location().to_string(), pg.shown());
    assert!(!format!("{ledger:?}").contains(PG_PASSWORD));

    // Rows, with a NUL in a decoded field (PostgreSQL TEXT cannot hold one).
    let body = complete(1001, "5001", "1000.00", "0");
    ledger.keep(verified(
        record(&body, SystemTime::now(), "pg-1"),
        12345,
        KEY_12345,
        0,
        200,
        None,
    ));
    let odd = body.replace("error_note=Success", "error_note=a%00b");
    ledger.keep(rejected(
        record(&odd, SystemTime::now(), "pg-2"),
        "key_mismatch",
        "the key(s) of service 12345 do not match",
    ));
    let awaited = ledger
        .write_ahead(record(&body, SystemTime::now(), "pg-3"), None)
        .await
        .unwrap();
    assert!(awaited.id.is_some_and(|id| id > 0), "{awaited:?}");
    ledger.flush().await.unwrap();
    let store = Store::open_reader(ledger.location()).unwrap();
    let rows = store
        .callbacks(&Filter {
            merchant_trans_id: Some("order-pg".into()),
            ..Filter::default()
        })
        .unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids, ["pg-1", "pg-2", "pg-3"]);
    // Fields are read from the body as received, NUL and all; only the ids the queries select
    // on are stored as TEXT (with U+FFFD for a NUL).
    assert_eq!(rows[1].fields.error_note.as_deref(), Some("a\0b"));
    assert_eq!(rows[0].body, body.as_bytes());
    assert_eq!(rows[0].backend_status, None, "no answer recorded");
    let refused = store.refused_signatures(Some("12345"), 0).unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].body, odd.as_bytes(), "the body as received");

    // The row and the guard's binding in one statement, straight on the pool.
    let first = admitted(&ledger, binding("aa", "failed", "t1")).await;
    let outcome = first.outcome.unwrap();
    assert_eq!(outcome.signature, Seen::First);
    assert_eq!(outcome.earlier_complete_error, None);
    assert!(first.id.is_some());
    let retry = admitted(&ledger, binding("aa", "failed", "t2")).await;
    let outcome = retry.outcome.unwrap();
    assert_eq!(outcome.signature, Seen::Same);
    assert_eq!(outcome.earlier_complete_error.as_deref(), Some("-5017"));
    assert!(retry.id.is_some(), "a retry is recorded too");
    let changed = admitted(&ledger, binding("aa", "paid", "t3")).await;
    let outcome = changed.outcome.unwrap();
    assert_eq!(outcome.signature, Seen::Changed(vec!["f".into()]));
    assert_eq!(outcome.earlier_complete_error.as_deref(), Some("-5017"));
    assert_eq!(changed.id, None, "rule 1 refuses it: its row is left out");
    // The refused one did not become its transaction's Complete.
    let db = pg.ledger_db().await;
    let claims: Vec<String> = db
        .query("SELECT token FROM completes", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(claims, ["t1"]);

    // Pruning: rows and bindings older than the retention go; the last row is not due.
    assert!(ledger.close(std::time::Duration::from_secs(5)).await);
    db.batch_execute(
        "UPDATE callbacks SET time = 1 WHERE id < (SELECT max(id) FROM callbacks);
         UPDATE bindings SET time = 1;",
    )
    .await
    .unwrap();
    // A batch goes as the ledger opens (and every minute after).
    let metrics = Arc::new(Metrics::new());
    let ledger = Ledger::open(&settings(&pg.url()), GUARD_WINDOW, metrics.clone()).unwrap();
    assert_eq!(
        metric(&metrics, "click_gateway_ledger_pruned_rows_total"),
        4.0,
        "pg-1, pg-2, pg-3 and the first admitted row"
    );
    for (table, left_over) in [
        ("callbacks", 1),
        ("bindings", 0),
        (
            "answers WHERE callback < (SELECT max(id) FROM callbacks)",
            0,
        ),
    ] {
        let left: i64 = db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, left_over, "{table}");
    }
    assert!(ledger.close(std::time::Duration::from_secs(5)).await);
    let logs = captured_logs();
    assert!(logs.contains("ledger: recording callbacks"), "{logs}");
    assert_no_secrets(&logs);
}

#[tokio::test]
async fn tls_verify_full_and_require_reach_a_tls_server_through_rustls() {
    let pg = PgCluster::start_tls().await;
    let ca = pg.ca.clone().unwrap();
    let on_localhost = pg.url().replace("127.0.0.1", "localhost");
    for url in [
        format!(
            "{on_localhost}?sslmode=verify-full&sslrootcert={}",
            ca.display()
        ),
        format!(
            "{}?sslmode=verify-ca&sslrootcert={}",
            pg.url(),
            ca.display()
        ),
        format!("{}?sslmode=require", pg.url()),
    ] {
        let store = Store::open_writer(&location(&url), Default::default())
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        // The server saw a TLS connection from the gateway.
        let admin = pg.admin().await;
        let ssl: Vec<bool> = admin
            .query(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.application_name = 'click-gateway'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(!ssl.is_empty() && ssl.iter().all(|s| *s), "{url}: {ssl:?}");
        drop(store);
    }
    // verify-full for a name the certificate does not have: refused.
    let other_name = pg.url().replace("127.0.0.1", "db.example");
    let err = Store::open_writer(
        &location(&format!(
            "{other_name}?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
            ca.display()
        )),
        Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("certificate"), "{err}");
    assert!(!err.contains(PG_PASSWORD), "{err}");
    // But verify-ca takes it: the chain is the CA's.
    Store::open_writer(
        &location(&format!(
            "{other_name}?hostaddr=127.0.0.1&sslmode=verify-ca&sslrootcert={}",
            ca.display()
        )),
        Default::default(),
    )
    .unwrap();

    // A plain server and sslmode=require: no connection.
    let plain = PgCluster::start().await;
    let err = Store::open_writer(
        &location(&format!("{}?sslmode=require", plain.url())),
        Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(&plain.shown()), "{err}");
}
