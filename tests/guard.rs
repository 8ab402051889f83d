//! One signature, one message, on SQLite with one gateway and its worker threads: each test
//! plays a replay Click's unsigned fields allow, against the real gateway, a real ledger file and
//! a recording upstream.

mod common;

use click_gateway::click::sign::{CallbackBody, SignedFields};
use click_gateway::click::Secret;
use common::*;

const LEDGER: &str = "[ledger]\ndatabase = \"ledger.db\"\n";

/// A signed callback of service 12345 (Complete when `prepare_id` is given).
fn callback_body(
    trans: u64,
    prepare_id: Option<&str>,
    amount: &str,
    error: &str,
    sign_time: &str,
) -> String {
    let id = trans.to_string();
    CallbackBody {
        signed: SignedFields {
            click_trans_id: &id,
            service_id: "12345",
            merchant_trans_id: "order-9",
            merchant_prepare_id: prepare_id,
            amount,
            action: if prepare_id.is_some() { "1" } else { "0" },
            sign_time,
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

const T1: &str = "2024-05-01 12:30:45";
const T2: &str = "2024-05-01 12:31:02";

async fn gateway(up: &TestUpstream, guard: &str) -> TestGateway {
    TestGateway::start_with(ConfigDir::with_click(
        up.addr,
        KEYS_TOML,
        "",
        "",
        &format!("{LEDGER}[guard]\n{guard}\n"),
    ))
    .await
}

/// Turns the ledger's database (where each callback's record and binding go before it is
/// forwarded) into a directory, so that nothing can be written or read there; returns its path
/// (remove the directory to bring the store back).
fn break_guard_store(gw: &TestGateway) -> std::path::PathBuf {
    let store = gw.gateway.ledger.clone().unwrap();
    let db = store.location().path().to_owned();
    assert_eq!(db.file_name().unwrap(), "ledger.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::create_dir(&db).unwrap();
    db
}

fn guard_count(m: &std::collections::BTreeMap<String, f64>, rule: &str, outcome: &str) -> f64 {
    m.get(&format!(
        "click_gateway_guard_checks_total{{rule=\"{rule}\",outcome=\"{outcome}\"}}"
    ))
    .copied()
    .unwrap_or(0.0)
}

#[tokio::test]
async fn a_failed_complete_replayed_as_paid_is_refused_and_its_retry_passes() {
    let mut up = TestUpstream::start().await;
    let gw = gateway(&up, "").await;
    let failed = callback_body(501, Some("5001"), "1000.00", "-5017", T1);
    let flipped = failed
        .replace("error=-5017", "error=0")
        .replace("error_note=Payment+failed", "error_note=Success");
    assert_ne!(failed, flipped);
    // Click's own: forwarded; Click's retry of it, byte for byte: forwarded too.
    for _ in 0..2 {
        let resp = callback(gw.addr, "/click/complete/", &failed).await;
        assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
        assert_eq!(up.next().await.body, failed.as_bytes());
    }
    // The signature in upper case is the same signature (Click's comparison ignores case):
    // still a retry.
    let sign = failed.rsplit("sign_string=").next().unwrap();
    let upper = failed.replace(sign, &sign.to_ascii_uppercase());
    assert_ne!(upper, failed);
    let resp = callback(gw.addr, "/click/complete/", &upper).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    up.next().await;
    // The same signature claiming the payment went through: refused, never forwarded.
    let resp = callback(gw.addr, "/click/complete/", &flipped).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::SignRejected);
    assert!(up.try_next().is_none());
    let id = resp.header("x-request-id").unwrap().to_owned();
    let log = captured_logs();
    let line = log
        .lines()
        .find(|l| l.contains(&id) && l.contains("callback rejected"))
        .unwrap_or_else(|| panic!("no log line for {id}"));
    assert!(line.contains("reason=\"replayed_with_changes\""), "{line}");
    assert!(line.contains("error, error_note differ"), "{line}");
    let m = scrape(gw.admin_addr).await;
    assert_eq!(guard_count(&m, "signature", "first"), 1.0);
    assert_eq!(guard_count(&m, "signature", "retry"), 2.0);
    assert_eq!(guard_count(&m, "signature", "replayed_with_changes"), 1.0);
    assert_eq!(
        m.get("click_gateway_callbacks_total{service_id=\"12345\",action=\"complete\",outcome=\"rejected\",reason=\"replayed_with_changes\",hint=\"none\"}"),
        Some(&1.0)
    );
    // And the ledger says so.
    let ledger = gw.gateway.ledger.clone().unwrap();
    ledger.flush().await.unwrap();
    let db = rusqlite::Connection::open(ledger.location().path()).unwrap();
    let (reason, detail): (String, String) = db
        .query_row(
            "SELECT reason, detail FROM callbacks WHERE request_id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(reason, "replayed_with_changes");
    assert!(detail.contains("error, error_note"), "{detail}");
    gw.stop().await;
}

#[tokio::test]
async fn re_split_prepare_id_and_amount_verify_alike_and_the_second_is_refused() {
    let mut up = TestUpstream::start().await;
    let gw = gateway(&up, "").await;
    let first = callback_body(502, Some("5001"), "1000.00", "0", T1);
    // merchant_prepare_id + amount are hashed joined: "5001" + "1000.00" == "500" + "11000.00".
    let resplit = first
        .replace("merchant_prepare_id=5001", "merchant_prepare_id=500")
        .replace("amount=1000.00", "amount=11000.00");
    let verify = |body: &str| {
        let parsed = click_gateway::click::Parsed::parse(
            &click_gateway::click::FormKind::UrlEncoded,
            body.as_bytes(),
        )
        .unwrap();
        let keys = click_gateway::config::load(
            &ConfigDir::new(up.addr, KEYS_TOML, "", "").path(),
            &click_gateway::config::Environment::default(),
        )
        .unwrap()
        .keys;
        parsed.judge(&keys).outcome.is_ok()
    };
    assert!(
        verify(&first) && verify(&resplit),
        "both verify with the real key"
    );
    let resp = callback(gw.addr, "/click/complete/", &first).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    up.next().await;
    let resp = callback(gw.addr, "/click/complete/", &resplit).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::SignRejected);
    assert!(up.try_next().is_none());
    let id = resp.header("x-request-id").unwrap().to_owned();
    let log = captured_logs();
    assert!(
        log.lines()
            .any(|l| l.contains(&id) && l.contains("amount, merchant_prepare_id differ")),
        "{log}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_copies_with_different_fields_at_once_never_both_reach_the_backend() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start_with(ConfigDir::with_click(
        up.addr,
        KEYS_TOML,
        "workers = 2",
        "",
        LEDGER,
    ))
    .await;
    for round in 0..40u64 {
        let a = callback_body(10_000 + round, Some("5001"), "1000.00", "-5017", T1);
        let b = a.replace("error=-5017", "error=0");
        let (ra, rb) = tokio::join!(
            callback(gw.addr, "/click/complete/", &a),
            callback(gw.addr, "/click/complete/", &b)
        );
        exactly_one_forwarded(&mut up, (&a, &ra), (&b, &rb), round).await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_complete_contradicting_an_earlier_one_is_reported_then_refused_when_enforced() {
    let mut up = TestUpstream::start().await;
    // Rule 2 shadows by default: logged and counted, forwarded.
    let gw = gateway(&up, "").await;
    let cancelled = callback_body(503, Some("5001"), "1000.00", "-5017", T1);
    // A new signature (another sign_time), so rule 1 has nothing to say.
    let paid = callback_body(503, Some("5001"), "1000.00", "0", T2);
    for body in [&cancelled, &paid] {
        let resp = callback(gw.addr, "/click/complete/", body).await;
        assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
        up.next().await;
    }
    let m = scrape(gw.admin_addr).await;
    assert_eq!(guard_count(&m, "transaction", "first"), 1.0);
    assert_eq!(guard_count(&m, "transaction", "contradicts"), 1.0);
    assert_eq!(
        m.get("click_gateway_callbacks_total{service_id=\"12345\",action=\"complete\",outcome=\"would_reject\",reason=\"complete_contradicts_earlier\",hint=\"none\"}"),
        Some(&1.0)
    );
    gw.stop().await;

    let gw = gateway(&up, "transaction_mode = \"enforce\"").await;
    let cancelled = callback_body(504, Some("5001"), "1000.00", "-5017", T1);
    let paid = callback_body(504, Some("5001"), "1000.00", "0", T2);
    let resp = callback(gw.addr, "/click/complete/", &cancelled).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    up.next().await;
    let answer = callback(gw.addr, "/click/complete/", &paid).await.json();
    assert_eq!(answer["error"], -8, "{answer}");
    assert!(up.try_next().is_none());
    // A second cancel, newly signed, is consistent with the first.
    let again = callback_body(504, Some("5001"), "1000.00", "-5017", "2024-05-01 12:32:10");
    let resp = callback(gw.addr, "/click/complete/", &again).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    up.next().await;
    gw.stop().await;
}

#[tokio::test]
async fn shadow_and_off_forward_a_replay_and_shadow_counts_it() {
    let mut up = TestUpstream::start().await;
    let first = callback_body(505, Some("5001"), "1000.00", "-5017", T1);
    let flipped = first.replace("error=-5017", "error=0");
    for (mode, counted) in [("shadow", 1.0), ("off", 0.0)] {
        let gw = gateway(&up, &format!("mode = \"{mode}\"")).await;
        for body in [&first, &flipped] {
            let resp = callback(gw.addr, "/click/complete/", body).await;
            assert_eq!(
                verdict(resp.status, &resp.body),
                Verdict::Forwarded,
                "{mode}"
            );
            // Forwarded as before the guard: vouched for, its signature verified.
            assert_eq!(up.next().await.all("x-click-signature-verified"), ["12345"]);
        }
        let m = scrape(gw.admin_addr).await;
        assert_eq!(
            guard_count(&m, "signature", "replayed_with_changes"),
            counted,
            "{mode}"
        );
        gw.stop().await;
    }
}

#[tokio::test]
async fn a_replay_flipped_to_paid_is_refused_by_an_enforced_rule_2_while_rule_1_shadows() {
    let mut up = TestUpstream::start().await;
    let gw = gateway(&up, "mode = \"shadow\"\ntransaction_mode = \"enforce\"").await;
    let cancelled = callback_body(506, Some("5001"), "1000.00", "-5017", T1);
    let resp = callback(gw.addr, "/click/complete/", &cancelled).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    up.next().await;
    // The same signature with error flipped: rule 1 only reports it, rule 2 refuses it.
    let flipped = cancelled.replace("error=-5017", "error=0");
    let answer = callback(gw.addr, "/click/complete/", &flipped).await.json();
    assert_eq!(answer["error"], -8, "{answer}");
    assert!(up.try_next().is_none());
    let m = scrape(gw.admin_addr).await;
    assert_eq!(guard_count(&m, "signature", "replayed_with_changes"), 1.0);
    assert_eq!(guard_count(&m, "transaction", "contradicts"), 1.0);
    assert_eq!(
        m.get("click_gateway_callbacks_total{service_id=\"12345\",action=\"complete\",outcome=\"rejected\",reason=\"complete_contradicts_earlier\",hint=\"none\"}"),
        Some(&1.0)
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_old_complete_replayed_as_paid_is_refused_though_its_stale_sign_time_only_shadows() {
    let mut up = TestUpstream::start().await;
    // sign_age_mode shadows by default, and T1 is in 2024: every replay of an old callback
    // fails max_sign_age in shadow. The guard's enforced refusal must still win.
    let gw = TestGateway::start_with(ConfigDir::with_click(
        up.addr,
        KEYS_TOML,
        "",
        "",
        &format!("max_sign_age = \"1h\"\n{LEDGER}"),
    ))
    .await;
    let cancelled = callback_body(507, Some("5001"), "1000.00", "-5017", T1);
    let resp = callback(gw.addr, "/click/complete/", &cancelled).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    up.next().await;
    let flipped = cancelled.replace("error=-5017", "error=0");
    let answer = callback(gw.addr, "/click/complete/", &flipped).await.json();
    assert_eq!(answer["error"], -1, "{answer}");
    assert!(up.try_next().is_none());
    gw.stop().await;
}

#[tokio::test]
async fn a_failing_store_refuses_callbacks_with_503_or_lets_them_through_unguarded() {
    let mut up = TestUpstream::start().await;
    for (policy, want) in [("refuse", 503), ("allow", 200)] {
        let gw = gateway(
            &up,
            &format!("on_store_error = \"{policy}\"\ntimeout = \"500ms\""),
        )
        .await;
        let db = break_guard_store(&gw);
        let body = callback_body(600 + want as u64, None, "1000.00", "0", T1);
        let resp = callback(gw.addr, "/click/prepare/", &body).await;
        assert_eq!(resp.status, want, "{policy}: {}", resp.text());
        if want == 503 {
            assert_eq!(resp.text(), "503 Service Unavailable\n");
            assert!(up.try_next().is_none());
        } else {
            assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
            up.next().await;
        }
        // Other traffic never notices.
        let get = raw(
            gw.addr,
            b"GET /api HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(get.status, 200);
        assert_eq!(up.next().await.uri, "/api");
        let m = scrape(gw.admin_addr).await;
        assert_eq!(guard_count(&m, "signature", "store_error"), 1.0, "{policy}");
        // The store comes back: callbacks flow with no restart.
        std::fs::remove_dir(&db).unwrap();
        let next = callback_body(700 + want as u64, None, "1000.00", "0", T1);
        let resp = tokio::time::timeout(PATIENCE, async {
            loop {
                let resp = callback(gw.addr, "/click/prepare/", &next).await;
                if resp.status == 200 {
                    return resp;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("callbacks never flowed again");
        assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
        while up.try_next().is_some() {}
        gw.stop().await;
    }
}

#[tokio::test]
async fn a_failing_store_never_refuses_a_service_in_shadow_mode() {
    let mut up = TestUpstream::start().await;
    // on_store_error = "refuse" (the default), but the service only shadows: never refused.
    let gw = TestGateway::start_with(ConfigDir::with_click(
        up.addr,
        KEYS_TOML,
        "",
        "",
        &format!("mode = \"shadow\"\n{LEDGER}[guard]\ntimeout = \"500ms\"\n"),
    ))
    .await;
    let db = break_guard_store(&gw);
    let body = callback_body(801, None, "1000.00", "0", T1);
    let resp = callback(gw.addr, "/click/prepare/", &body).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    assert_eq!(up.next().await.all("x-click-signature-verified"), ["12345"]);
    let m = scrape(gw.admin_addr).await;
    assert_eq!(guard_count(&m, "signature", "store_error"), 1.0);
    std::fs::remove_dir(&db).unwrap();
    gw.stop().await;
}

/// One `finish` for every way a callback can end: each one moves `callbacks_total` by exactly
/// one, under the label of how it ended, including the two exits that once went uncounted (a
/// body that stopped arriving, a record that could not be written).
#[tokio::test]
async fn every_exit_of_a_callback_is_counted_once_in_callbacks_total() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut up = TestUpstream::start().await;
    let gw = gateway(&up, "timeout = \"500ms\"").await;
    let counted =
        |m: &std::collections::BTreeMap<String, f64>| -> std::collections::BTreeMap<String, f64> {
            m.iter()
                .filter(|(k, _)| k.starts_with("click_gateway_callbacks_total"))
                .map(|(k, v)| (k.clone(), *v))
                .collect()
        };
    let before = counted(&scrape(gw.admin_addr).await);

    // Verified and forwarded.
    let body = callback_body(900, None, "1000.00", "0", T1);
    let resp = callback(gw.addr, "/click/prepare/", &body).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    up.next().await;
    // Forged.
    let forged = body.replace("amount=1000.00", "amount=1.00");
    let resp = callback(gw.addr, "/click/prepare/", &forged).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::SignRejected);
    // Replayed with changes (the guard's rule 1).
    let replay = body.replace("click_paydoc_id=", "click_paydoc_id=9");
    assert_ne!(replay, body);
    let resp = callback(gw.addr, "/click/prepare/", &replay).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::SignRejected);
    // Too large.
    let resp = callback(gw.addr, "/click/prepare/", &"a=1&".repeat(5000)).await;
    assert_eq!(resp.json()["error"], -8, "{}", resp.text());
    // A body that stops arriving: its client closes after 10 of 200 bytes.
    let mut s = connect_from("127.0.0.1", gw.addr).await.unwrap();
    s.write_all(b"POST /click/prepare/ HTTP/1.1\r\nHost: shop.example\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\nclick_tran")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut rest))
        .await
        .expect("the connection stayed open")
        .unwrap();
    // A record that cannot be written: 503 (on_store_error = "refuse").
    let db = break_guard_store(&gw);
    let resp = callback(
        gw.addr,
        "/click/prepare/",
        &callback_body(901, None, "1000.00", "0", T1),
    )
    .await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert!(up.try_next().is_none());
    std::fs::remove_dir(&db).unwrap();

    let after = counted(&scrape(gw.admin_addr).await);
    let moved: std::collections::BTreeMap<&str, f64> = after
        .iter()
        .map(|(k, v)| (k.as_str(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d != 0.0)
        .collect();
    let label = |service: &str, action: &str, outcome: &str, reason: &str| {
        format!("click_gateway_callbacks_total{{service_id=\"{service}\",action=\"{action}\",outcome=\"{outcome}\",reason=\"{reason}\",hint=\"none\"}}")
    };
    let want = [
        label("12345", "prepare", "verified", "none"),
        label("12345", "prepare", "rejected", "replayed_with_changes"),
        label("none", "unknown", "rejected", "body_too_large"),
        label("none", "unknown", "refused", "body_aborted"),
        label("12345", "prepare", "refused", "store_unavailable"),
    ];
    for key in &want {
        assert_eq!(moved.get(key.as_str()), Some(&1.0), "{key} in {moved:#?}");
    }
    // The forged one, under whatever hint its diagnosis gave.
    let forged_counted: f64 = moved
        .iter()
        .filter(|(k, _)| {
            k.contains("service_id=\"12345\",action=\"prepare\",outcome=\"rejected\"")
                && !k.contains("replayed_with_changes")
        })
        .map(|(_, v)| v)
        .sum();
    assert_eq!(forged_counted, 1.0, "{moved:#?}");
    assert_eq!(
        moved.values().sum::<f64>(),
        6.0,
        "six callbacks, six counts: {moved:#?}"
    );
    gw.stop().await;
}
