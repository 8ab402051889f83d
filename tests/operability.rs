//! What ops see: `/metrics` counters that move exactly as the traffic says, bounded series,
//! `/live` and `/ready`, shadow mode, the sign_time skew check, JSON logs and request ids.

mod common;

use std::collections::BTreeMap;

use common::binary::GatewayProcess;
use common::*;

fn callbacks(service: &str, action: &str, outcome: &str, reason: &str, hint: &str) -> String {
    format!(
        "click_gateway_callbacks_total{{service_id=\"{service}\",action=\"{action}\",outcome=\"{outcome}\",reason=\"{reason}\",hint=\"{hint}\"}}"
    )
}

fn value(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn each_counter_moves_exactly_as_the_traffic_says() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    let before = scrape(gw.admin_addr).await;
    let forged = V1.replace("sign_string=4c30", "sign_string=0000");
    let script: Vec<(&str, String)> = vec![
        ("/click/prepare/", V1.to_owned()),
        ("/click/prepare/", V1.to_owned()),
        ("/click/complete/", V2.to_owned()),
        ("/click/prepare/", forged.clone()),
        ("/click/prepare/", forged.clone()),
        ("/click/prepare/", forged),
        (
            "/click/prepare/",
            V1.replace("amount=1000.00", "amount=1000"),
        ),
        (
            "/click/prepare/",
            V1.replace("service_id=12345", "service_id=999"),
        ),
        (
            "/click/complete/",
            V2.replace("service_id=12345", "service_id=31337"),
        ),
        ("/click/prepare/", format!("{V1}&amount=1")),
        (
            "/click/prepare/",
            V1.replace("&sign_time=2024-05-01+12%3A30%3A45", ""),
        ),
        ("/click/prepare/", V1.replace("action=0", "action=7")),
    ];
    for (path, body) in &script {
        assert_eq!(callback(gw.addr, path, body).await.status, 200);
    }
    let get = raw(
        gw.addr,
        b"GET /click/prepare/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(get.status, 200);
    let after = scrape(gw.admin_addr).await;
    let moved = |series: String| value(&after, &series) - value(&before, &series);
    assert_eq!(
        moved(callbacks("12345", "prepare", "verified", "none", "none")),
        2.0
    );
    assert_eq!(
        moved(callbacks("12345", "complete", "verified", "none", "none")),
        1.0
    );
    assert_eq!(
        moved(callbacks(
            "12345",
            "prepare",
            "rejected",
            "key_mismatch",
            "none"
        )),
        3.0
    );
    assert_eq!(
        moved(callbacks(
            "12345",
            "prepare",
            "rejected",
            "key_mismatch",
            "amount_format"
        )),
        1.0
    );
    assert_eq!(
        moved(callbacks(
            "unknown",
            "prepare",
            "rejected",
            "unknown_service",
            "none"
        )),
        1.0
    );
    assert_eq!(
        moved(callbacks(
            "unknown",
            "complete",
            "rejected",
            "unknown_service",
            "none"
        )),
        1.0
    );
    assert_eq!(
        moved(callbacks(
            "none",
            "unknown",
            "rejected",
            "duplicate_field",
            "none"
        )),
        1.0
    );
    assert_eq!(
        moved(callbacks(
            "none",
            "unknown",
            "rejected",
            "missing_field",
            "none"
        )),
        1.0
    );
    assert_eq!(
        moved(callbacks(
            "none",
            "unknown",
            "rejected",
            "bad_action",
            "none"
        )),
        1.0
    );
    assert_eq!(
        moved(callbacks("none", "unknown", "rejected", "method", "none")),
        1.0
    );
    let total: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("click_gateway_callbacks_total"))
        .map(|(k, v)| v - value(&before, k))
        .sum();
    assert_eq!(total, 13.0, "every callback counted once");
    assert_eq!(
        moved("click_gateway_verifications_total{service_id=\"12345\",slot=\"0\"}".into()),
        3.0
    );
    assert_eq!(
        moved("click_gateway_upstream_responses_total{route=\"callback\",class=\"2xx\"}".into()),
        3.0
    );
    assert_eq!(
        moved("click_gateway_gateway_duration_seconds_count{route=\"callback\"}".into()),
        13.0
    );
    assert_eq!(
        moved("click_gateway_upstream_duration_seconds_count{route=\"callback\"}".into()),
        3.0
    );
    assert!(after.contains_key("click_gateway_open_connections"));
    assert_eq!(value(&after, "click_gateway_config_generation"), 1.0);
    assert_eq!(
        value(
            &after,
            &format!(
                "click_gateway_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    for _ in 0..3 {
        up.next().await;
    }
    assert!(up.try_next().is_none());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn series_stay_bounded_under_random_service_ids() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    callback(
        gw.addr,
        "/click/prepare/",
        &V1.replace("service_id=12345", "service_id=1"),
    )
    .await;
    let count =
        |m: &BTreeMap<String, f64>| m.keys().filter(|k| k.starts_with("click_gateway_")).count();
    let before = count(&scrape(gw.admin_addr).await);
    let tasks: Vec<_> = (0..4u64)
        .map(|t| {
            let addr = gw.addr;
            tokio::spawn(async move {
                let mut conn = h1_connect(addr).await;
                let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for _ in 0..2500 {
                    // xorshift: a different service id every time.
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let body = V1.replace(
                        "service_id=12345",
                        &format!("service_id={}", x % 10_000_000_000),
                    );
                    assert_eq!(send_callback(&mut conn, &body).await, Verdict::SignRejected);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let after = scrape(gw.admin_addr).await;
    assert_eq!(
        count(&after),
        before,
        "10,000 random service ids added series"
    );
    assert!(
        value(
            &after,
            &callbacks("unknown", "prepare", "rejected", "unknown_service", "none")
        ) >= 10_000.0
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_malformed_callback_is_judged_in_the_mode_of_the_service_it_names() {
    let mut up = TestUpstream::start().await;
    // The README's rollout: everything shadowed, one service enforced.
    let config = ConfigDir::with_click(
        up.addr,
        KEYS_TOML,
        "",
        "",
        "mode = \"shadow\"\nservice_modes = { \"12345\" = \"enforce\" }",
    );
    let gw = TestGateway::start_with(config).await;
    let unsigned = V1
        .split('&')
        .filter(|f| !f.starts_with("sign_string="))
        .collect::<Vec<_>>()
        .join("&");
    assert_ne!(unsigned, V1);
    let answer = callback(gw.addr, "/click/prepare/", &unsigned).await.json();
    assert_eq!(answer["error"], -8, "{answer}");
    assert!(up.try_next().is_none(), "12345 is enforced");
    // Another service, shadowed with everything else: forwarded.
    let other = unsigned.replace("service_id=12345", "service_id=70001");
    let resp = callback(gw.addr, "/click/prepare/", &other).await;
    assert_eq!(resp.text(), r#"{"error":0,"upstream":true}"#);
    assert_eq!(up.next().await.body, other.as_bytes());
    gw.stop().await;
}

#[tokio::test]
async fn shadow_mode_forwards_what_it_would_reject_and_counts_it() {
    let mut up = TestUpstream::start().await;
    let config = ConfigDir::with_click(
        up.addr,
        KEYS_TOML,
        "",
        "",
        "mode = \"enforce\"\nservice_modes = { \"70001\" = \"shadow\" }",
    );
    let gw = TestGateway::start_with(config).await;
    // 70001 is in shadow: a forged callback reaches the backend, without the trust header.
    let v3: serde_json::Value =
        serde_json::from_str(include_str!("data/click-vectors.json")).unwrap();
    let v3 = v3[2]["body"].as_str().unwrap().to_owned();
    let forged = v3.replace("amount=15000", "amount=15");
    let resp = callback(gw.addr, "/click/prepare/", &forged).await;
    assert_eq!(
        resp.text(),
        r#"{"error":0,"upstream":true}"#,
        "the backend answers, not the gateway"
    );
    let got = up.next().await;
    assert_eq!(got.body, forged.as_bytes());
    assert_eq!(got.header("x-click-signature-verified"), None);
    // A valid one in shadow still carries it.
    callback(gw.addr, "/click/prepare/", &v3).await;
    assert_eq!(
        up.next().await.header("x-click-signature-verified"),
        Some("70001")
    );
    // 12345 stays enforced.
    let forged = V1.replace("sign_string=4c30", "sign_string=0000");
    assert_eq!(
        callback(gw.addr, "/click/prepare/", &forged).await.json()["error"],
        -1
    );
    assert!(up.try_next().is_none());
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        value(
            &m,
            &callbacks("70001", "prepare", "would_reject", "key_mismatch", "none")
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            &callbacks("70001", "prepare", "verified", "none", "none")
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            &callbacks("12345", "prepare", "rejected", "key_mismatch", "none")
        ),
        1.0
    );
    // This test's shadowed callback (service 70001; the logs are shared by the whole binary,
    // and other tests shadow callbacks of 12345).
    assert!(captured_logs().lines().any(|l| {
        l.contains("callback would be rejected (shadow mode): forwarded")
            && l.contains("service_id=70001")
    }));
    gw.stop().await;
}

#[tokio::test]
async fn sign_time_skew_is_measured_and_enforced_when_asked() {
    let mut up = TestUpstream::start().await;
    let config = ConfigDir::with_click(
        up.addr,
        KEYS_TOML,
        "",
        "",
        "max_sign_age = \"1h\"\nsign_age_mode = \"enforce\"\nsign_time_zone = \"+05:00\"",
    );
    let gw = TestGateway::start_with(config).await;
    // Signed now, in Tashkent time: verified.
    let fresh = {
        use click_gateway::click::sign::{CallbackBody, SignedFields};
        let now = click_gateway::clock::tashkent_now();
        CallbackBody {
            signed: SignedFields {
                click_trans_id: "77",
                service_id: "12345",
                merchant_trans_id: "o-77",
                merchant_prepare_id: None,
                amount: "500",
                action: "0",
                sign_time: &now,
            },
            click_paydoc_id: "1",
            error: "0",
            error_note: "Success",
        }
        .encode(&click_gateway::click::Secret::new(KEY_12345))
    };
    assert_eq!(
        callback(gw.addr, "/click/prepare/", &fresh).await.text(),
        r#"{"error":0,"upstream":true}"#
    );
    up.next().await;
    // V1 was signed in 2024: verified signature, stale time.
    let req = format!(
        "POST /click/prepare/ HTTP/1.1\r\nHost: x\r\nX-Request-Id: stale-sign-time-1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{V1}",
        V1.len()
    );
    let resp = raw(gw.addr, req.as_bytes()).await;
    assert_eq!(resp.json()["error"], -1);
    assert!(up.try_next().is_none());
    let m = scrape(gw.admin_addr).await;
    assert_eq!(value(&m, "click_gateway_sign_time_skew_seconds_count"), 2.0);
    assert_eq!(
        value(
            &m,
            &callbacks("12345", "prepare", "rejected", "stale_sign_time", "none")
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "click_gateway_verifications_total{service_id=\"12345\",slot=\"0\"}"
        ),
        2.0
    );
    // Its own log line says why, and carries no part of its signature: a genuine one.
    let logs = captured_logs();
    let line = logs
        .lines()
        .find(|l| l.contains("stale-sign-time-1"))
        .expect("the stale callback's log line");
    assert!(line.contains("beyond max_sign_age (3600 s)"), "{line}");
    assert!(!line.contains("4c30b230"), "{line}");
    gw.stop().await;
}

#[tokio::test]
async fn a_stale_sign_time_in_the_default_shadow_mode_is_forwarded_and_counted() {
    let mut up = TestUpstream::start().await;
    let config = ConfigDir::with_click(up.addr, KEYS_TOML, "", "", "max_sign_age = \"1h\"");
    let gw = TestGateway::start_with(config).await;
    // V1 was signed in 2024: a valid signature, a stale time; sign_age_mode defaults to shadow.
    let resp = callback(gw.addr, "/click/prepare/", V1).await;
    assert_eq!(resp.text(), r#"{"error":0,"upstream":true}"#);
    assert_eq!(
        up.next().await.header("x-click-signature-verified"),
        Some("12345"),
        "the signature did verify"
    );
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        value(
            &m,
            &callbacks(
                "12345",
                "prepare",
                "would_reject",
                "stale_sign_time",
                "none"
            )
        ),
        1.0
    );
    gw.stop().await;
}

#[tokio::test]
async fn live_ready_and_ready_flips_during_drain() {
    let mut up = TestUpstream::start().await;
    let config = ConfigDir::new(up.addr, KEYS_TOML, "", "");
    let mut gw = GatewayProcess::start(&config).await;
    let admin = gw.admin_addr.expect("admin listener");
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(raw(admin, get("/live").as_bytes()).await.status, 200);
    let ready = raw(admin, get("/ready").as_bytes()).await;
    assert_eq!(
        (ready.status, ready.text().as_str()),
        (200, "ready: generation 1\n")
    );
    assert_eq!(raw(admin, get("/nope").as_bytes()).await.status, 404);

    let addr = gw.addr;
    let slow = tokio::spawn(async move {
        raw(
            addr,
            b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    assert_eq!(up.next().await.uri, "/slow");
    gw.signal(libc::SIGTERM);
    gw.wait_log(|l| l.contains("draining connections=")).await;
    assert_eq!(
        raw(admin, get("/ready").as_bytes()).await.status,
        503,
        "draining is not ready"
    );
    assert_eq!(
        raw(admin, get("/live").as_bytes()).await.status,
        200,
        "but it is alive"
    );
    up.release();
    assert_eq!(slow.await.unwrap().status, 200);
    assert_eq!(gw.wait_exit().await, Some(0));
}

type StderrLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>;

async fn next_json(lines: &mut StderrLines) -> serde_json::Value {
    let line = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_no_secrets(&line);
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[tokio::test]
async fn json_logs_one_line_per_callback_with_request_ids() {
    let mut up = TestUpstream::start().await;
    let config = ConfigDir::new(up.addr, KEYS_TOML, "", "");
    let dir = config.dir.path().to_owned();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_click-gateway"))
        .args(["serve", "--log-format", "json", "--config"])
        .arg(dir.join("gateway.toml"))
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = loop {
        let v = next_json(&mut lines).await;
        if v["message"].as_str().is_some_and(|m| m.contains("ready")) {
            break v;
        }
    };
    let addr: std::net::SocketAddr = ready["listen"]
        .as_str()
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();

    let req = format!(
        "POST /click/prepare/ HTTP/1.1\r\nHost: x\r\nX-Request-Id: ops-trace-1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{V1}",
        V1.len()
    );
    let resp = raw(addr, req.as_bytes()).await;
    assert_eq!(resp.header("x-request-id"), Some("ops-trace-1"));
    assert_eq!(up.next().await.header("x-request-id"), Some("ops-trace-1"));
    let line = next_json(&mut lines).await;
    assert_eq!(line["message"], "callback verified and forwarded", "{line}");
    assert_eq!(line["level"], "INFO");
    for (field, want) in [
        ("request_id", serde_json::json!("ops-trace-1")),
        ("verdict", serde_json::json!("verified")),
        ("service_id", serde_json::json!(12345)),
        ("click_trans_id", serde_json::json!(2103045678u64)),
        ("action", serde_json::json!("prepare")),
        ("slot", serde_json::json!(0)),
        ("upstream_status", serde_json::json!(200)),
        ("mode", serde_json::json!("enforce")),
    ] {
        assert_eq!(line[field], want, "{field} in {line}");
    }
    assert!(line["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(line["total_ms"].is_u64() && line["upstream_ms"].is_u64());

    // A rejection: generated request id, reason, hint, and nothing of its signature (which is
    // genuine: the hint says it verifies with the amount as the signer wrote it).
    let resp = callback(
        addr,
        "/click/prepare/",
        &V1.replace("amount=1000.00", "amount=1000"),
    )
    .await;
    let id = resp.header("x-request-id").unwrap().to_owned();
    assert_eq!(id.len(), 16);
    let line = next_json(&mut lines).await;
    assert_eq!(line["message"], "callback rejected", "{line}");
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["request_id"], id.as_str());
    assert_eq!(line["reason"], "key_mismatch");
    assert_eq!(line["hint"], "amount_format");
    assert_eq!(line["error"], -1);
    assert!(line.get("sign_string").is_none(), "{line}");
    assert!(!line.to_string().contains("4c30b230"), "{line}");
    assert!(line["why"]
        .as_str()
        .unwrap()
        .contains("re-formats the amount"));
}

#[test]
fn a_non_loopback_admin_listener_needs_allow_remote() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keys.toml"), KEYS_TOML).unwrap();
    let write = |admin: &str| {
        std::fs::write(
            dir.path().join("gateway.toml"),
            format!("[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n[click]\nkeys_file = \"keys.toml\"\n[admin]\n{admin}\n"),
        )
        .unwrap();
    };
    let check = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_click-gateway"))
            .args(["check", "--config"])
            .arg(dir.path().join("gateway.toml"))
            .output()
            .unwrap()
    };
    write("listen = \"0.0.0.0:9901\"");
    let out = check();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin.listen: not a loopback address"));
    write("listen = \"0.0.0.0:9901\"\nallow_remote = true");
    assert!(check().status.success());
}
