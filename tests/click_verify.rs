//! Callbacks through the real gateway on real sockets: verified ones reach the upstream byte
//! for byte with the trust header; every malformed or forged one gets its exact Click answer
//! and never reaches the upstream.

mod common;

use common::*;

const PREPARE: &str = "/click/prepare/";
const COMPLETE: &str = "/click/complete/";

/// Asserts a Click error answer, exactly as a merchant's server would give it.
fn assert_click_error(resp: &RawResponse, expected_json: &str) {
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.text(), expected_json);
}

const SIGN_FAILED_V1: &str = r#"{"click_trans_id":2103045678,"merchant_trans_id":"order-1001","error":-1,"error_note":"SIGN CHECK FAILED!"}"#;

#[tokio::test]
async fn verified_callbacks_reach_the_upstream_byte_for_byte_with_the_trust_header() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    let vectors: Vec<serde_json::Value> =
        serde_json::from_str(include_str!("data/click-vectors.json")).unwrap();
    for (i, v) in vectors.iter().enumerate() {
        let body = v["body"].as_str().unwrap();
        let path = if i % 2 == 0 { PREPARE } else { COMPLETE };
        let resp = callback(gw.addr, path, body).await;
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.text(),
            r#"{"error":0,"upstream":true}"#,
            "the backend's answer passes through"
        );
        let got = up.next().await;
        assert_eq!(got.method, "POST");
        assert_eq!(got.uri, path);
        assert_eq!(got.body, body.as_bytes(), "{}", v["name"]);
        let service = if body.contains("service_id=70001") {
            "70001"
        } else {
            "12345"
        };
        assert_eq!(got.all("x-click-signature-verified"), [service]);
        assert_eq!(got.header("host"), Some("shop.example"));
        assert_eq!(
            got.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_forged_trust_header_is_replaced_on_callbacks_and_removed_elsewhere() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    let req = format!(
        "POST {PREPARE} HTTP/1.1\r\nHost: shop.example\r\nX-Click-Signature-Verified: 70001\r\nx-click-signature-verified: 1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{V1}",
        V1.len()
    );
    assert_eq!(raw(gw.addr, req.as_bytes()).await.status, 200);
    assert_eq!(up.next().await.all("x-click-signature-verified"), ["12345"]);

    let req = "GET /orders/ HTTP/1.1\r\nHost: shop.example\r\nX-Click-Signature-Verified: 12345\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(gw.addr, req.as_bytes()).await.status, 200);
    assert!(up.next().await.all("x-click-signature-verified").is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn signature_failures_answer_minus_1_and_stop_at_the_gateway() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    // Reformatted amount, same signature.
    let resp = callback(
        gw.addr,
        PREPARE,
        &V1.replace("amount=1000.00", "amount=1000"),
    )
    .await;
    assert_click_error(&resp, SIGN_FAILED_V1);
    // Forged digest.
    let resp = callback(
        gw.addr,
        PREPARE,
        &V1.replace("sign_string=4c30", "sign_string=0000"),
    )
    .await;
    assert_click_error(&resp, SIGN_FAILED_V1);
    // Unknown service.
    let resp = callback(
        gw.addr,
        COMPLETE,
        &V2.replace("service_id=12345", "service_id=99999"),
    )
    .await;
    assert_click_error(&resp, SIGN_FAILED_V1);
    // Not hex.
    let resp = callback(
        gw.addr,
        PREPARE,
        &V1.replace(
            "sign_string=4c30b2304e2d17ef17eec7d8710e914c",
            "sign_string=zz",
        ),
    )
    .await;
    assert_click_error(&resp, SIGN_FAILED_V1);
    // A percent-encoded spelling of a callback path is still a callback path.
    let resp = callback(
        gw.addr,
        "/click/%70repare/",
        &V1.replace("sign_string=4c30", "sign_string=0000"),
    )
    .await;
    assert_click_error(&resp, SIGN_FAILED_V1);
    assert!(
        up.try_next().is_none(),
        "a rejected callback reached the upstream"
    );
    gw.stop().await;
}

#[tokio::test]
async fn unknown_action_answers_minus_3() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    let resp = callback(gw.addr, PREPARE, &V1.replace("action=0", "action=2")).await;
    assert_click_error(
        &resp,
        r#"{"click_trans_id":2103045678,"merchant_trans_id":"order-1001","error":-3,"error_note":"Action not found"}"#,
    );
    assert!(up.try_next().is_none());
    gw.stop().await;
}

#[tokio::test]
async fn malformed_requests_answer_minus_8() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    let echoed = r#"{"click_trans_id":2103045678,"merchant_trans_id":"order-1001","error":-8,"error_note":"Error in request from click"}"#;
    let bare = r#"{"error":-8,"error_note":"Error in request from click"}"#;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "missing field",
            V1.replace("&sign_time=2024-05-01+12%3A30%3A45", ""),
            echoed,
        ),
        (
            "empty field",
            V1.replace("amount=1000.00", "amount="),
            echoed,
        ),
        ("repeated key", format!("{V1}&amount=1"), echoed),
        (
            "repeated key, encoded name",
            format!("{V1}&%61mount=1"),
            echoed,
        ),
        (
            "overflowing id",
            V1.replace(
                "click_trans_id=2103045678",
                "click_trans_id=18446744073709551616",
            ),
            r#"{"merchant_trans_id":"order-1001","error":-8,"error_note":"Error in request from click"}"#,
        ),
        (
            "malformed amount",
            V1.replace("amount=1000.00", "amount=1e3"),
            echoed,
        ),
        (
            "complete without prepare id",
            V1.replace("action=0", "action=1"),
            echoed,
        ),
        (
            "bad percent escape",
            V1.replace("order-1001", "order%zz"),
            bare,
        ),
        ("not UTF-8", V1.replace("order-1001", "order%FF"), bare),
    ];
    for (name, body, expected) in cases {
        let resp = callback(gw.addr, PREPARE, &body).await;
        assert_eq!(resp.text(), expected, "{name}");
        assert_click_error(&resp, expected);
    }
    assert!(
        up.try_next().is_none(),
        "a rejected callback reached the upstream"
    );
    gw.stop().await;
}

#[tokio::test]
async fn wrong_method_encoding_type_or_size_answer_minus_8() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    let bare = r#"{"error":-8,"error_note":"Error in request from click"}"#;

    let get =
        format!("GET {PREPARE}?{V1} HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n");
    assert_click_error(&raw(gw.addr, get.as_bytes()).await, bare);

    let gz = format!(
        "POST {PREPARE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{V1}",
        V1.len()
    );
    assert_click_error(&raw(gw.addr, gz.as_bytes()).await, bare);

    assert_click_error(
        &post(gw.addr, PREPARE, "application/json", V1.as_bytes()).await,
        bare,
    );
    assert_click_error(
        &post(gw.addr, PREPARE, "text/plain", V1.as_bytes()).await,
        bare,
    );
    let latin = post(
        gw.addr,
        PREPARE,
        "application/x-www-form-urlencoded; charset=latin-1",
        V1.as_bytes(),
    )
    .await;
    assert_click_error(&latin, bare);
    let no_type = format!(
        "POST {PREPARE} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{V1}",
        V1.len()
    );
    assert_click_error(&raw(gw.addr, no_type.as_bytes()).await, bare);

    // Over 16 KiB, declared by Content-Length and sent chunked (no length to check up front).
    let big = format!("{V1}&pad={}", "x".repeat(16 * 1024));
    assert_click_error(&callback(gw.addr, PREPARE, &big).await, bare);
    let mut chunked = format!(
        "POST {PREPARE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("400\r\n{}\r\n", "y".repeat(1024)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_click_error(&raw(gw.addr, &chunked).await, bare);
    assert!(up.try_next().is_none());
    gw.stop().await;
}

#[tokio::test]
async fn chunked_and_multipart_callbacks_are_verified_and_forwarded_unchanged() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;

    let (a, b) = V1.split_at(100);
    let chunked = format!(
        "POST {PREPARE} HTTP/1.1\r\nHost: shop.example\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    assert_eq!(raw(gw.addr, chunked.as_bytes()).await.status, 200);
    let got = up.next().await;
    assert_eq!(got.body, V1.as_bytes());
    assert_eq!(got.all("x-click-signature-verified"), ["12345"]);

    let mut multipart = String::new();
    for kv in V1.split('&') {
        let (k, v) = kv.split_once('=').unwrap();
        let v = v.replace('+', " ").replace("%3A", ":");
        multipart.push_str(&format!(
            "--BOUNDARY\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    multipart.push_str("--BOUNDARY--\r\n");
    let resp = post(
        gw.addr,
        PREPARE,
        "multipart/form-data; boundary=BOUNDARY",
        multipart.as_bytes(),
    )
    .await;
    assert_eq!(resp.text(), r#"{"error":0,"upstream":true}"#);
    let got = up.next().await;
    assert_eq!(got.body, multipart.as_bytes());
    assert_eq!(got.all("x-click-signature-verified"), ["12345"]);

    let forged = multipart.replace("order-1001", "order-1002");
    let resp = post(
        gw.addr,
        PREPARE,
        "multipart/form-data; boundary=BOUNDARY",
        forged.as_bytes(),
    )
    .await;
    assert_click_error(
        &resp,
        r#"{"click_trans_id":2103045678,"merchant_trans_id":"order-1002","error":-1,"error_note":"SIGN CHECK FAILED!"}"#,
    );
    assert!(up.try_next().is_none());
    gw.stop().await;
}

#[tokio::test]
async fn a_keep_alive_connection_survives_rejections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let forged = V1.replace("sign_string=4c30", "sign_string=0000");
    for body in [forged.as_str(), V1] {
        let req = format!(
            "POST {PREPARE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
    }
    s.write_all(b"GET /done HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
    assert!(text.contains("SIGN CHECK FAILED!"), "{text}");
    assert_eq!(up.next().await.body, V1.as_bytes());
    assert_eq!(up.next().await.uri, "/done");
    gw.stop().await;
}
