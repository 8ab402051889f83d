//! The checkpoint judges exactly the message the backend will read: each test plays one way of
//! making the gateway verify one message and forward another (or forward one it never judged),
//! against the real gateway and a recording upstream.

mod common;

use common::*;

/// A callback POST with extra header lines (each ending in CRLF).
async fn callback_with(
    addr: std::net::SocketAddr,
    target: &str,
    content_type: &str,
    extra: &str,
    body: &str,
) -> RawResponse {
    let req = format!(
        "POST {target} HTTP/1.1\r\nHost: shop.example\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw(addr, req.as_bytes()).await
}

const FORM: &str = "application/x-www-form-urlencoded";

fn assert_click_error(resp: &RawResponse, code: i64) {
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.json()["error"], code, "{}", resp.text());
}

#[tokio::test]
async fn connection_naming_content_type_is_judged_without_it() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    // Hop-by-hop removal strips Content-Type before the verdict, as it would before the
    // forward: Django would get no form at all.
    let resp = callback_with(
        gw.addr,
        "/click/prepare/",
        FORM,
        "Connection: content-type\r\n",
        V1,
    )
    .await;
    assert_click_error(&resp, -8);
    assert!(up.try_next().is_none(), "it reached the backend");
    // A field a client names hop-by-hop is gone from what is judged and forwarded alike.
    let resp = callback_with(
        gw.addr,
        "/click/prepare/",
        FORM,
        "Connection: x-hop, content-length\r\nX-Hop: 1\r\n",
        V1,
    )
    .await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    let got = up.next().await;
    assert!(got.header("x-hop").is_none());
    assert_eq!(got.body, V1.as_bytes());
    assert_eq!(got.all("x-click-signature-verified"), ["12345"]);
    gw.stop().await;
}

#[tokio::test]
async fn both_spellings_of_a_callback_path_are_judged() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start_with(ConfigDir::with_click(
        up.addr,
        KEYS_TOML,
        "",
        "",
        "paths = [\"/click/prepare/\", \"/pay\"]",
    ))
    .await;
    let forged = V1.replace("sign_string=4c30", "sign_string=0000");
    for path in [
        "/click/prepare/",
        "/click/prepare",
        "/pay",
        "/pay/",
        "/click/%70repare",
    ] {
        assert_click_error(&callback(gw.addr, path, &forged).await, -1);
        let resp = callback(gw.addr, path, V1).await;
        assert_eq!(
            verdict(resp.status, &resp.body),
            Verdict::Forwarded,
            "{path}"
        );
        let got = up.next().await;
        assert_eq!(got.uri, path);
        assert_eq!(got.all("x-click-signature-verified"), ["12345"], "{path}");
    }
    // Not a spelling of a callback path: forwarded as ordinary traffic, never vouched for.
    let resp = callback(gw.addr, "/click/prepare/x", &forged).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    assert!(up
        .next()
        .await
        .header("x-click-signature-verified")
        .is_none());
    gw.stop().await;
}

#[tokio::test]
async fn query_strings_carrying_click_fields_are_refused_and_others_pass() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    for query in [
        "?amount=1",
        "?sign_string=4c30b2304e2d17ef17eec7d8710e914c",
        "?%61mount=1",
        "?token=abc&AMOUNT=1",
        "?error=0",
        "?sign.time=x",
        "?merchant_trans_id[]=x",
    ] {
        let resp = callback(gw.addr, &format!("/click/prepare/{query}"), V1).await;
        assert_click_error(&resp, -8);
        assert_eq!(
            resp.json()["click_trans_id"],
            serde_json::Value::Null,
            "{query}"
        );
    }
    assert!(
        up.try_next().is_none(),
        "a refused callback reached the backend"
    );
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        m.get("click_gateway_callbacks_total{service_id=\"none\",action=\"unknown\",outcome=\"rejected\",reason=\"query_field\",hint=\"none\"}"),
        Some(&7.0)
    );
    // The merchant's own parameters stay, and reach the backend unchanged.
    let resp = callback(gw.addr, "/click/prepare/?token=abc&lang=uz", V1).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    let got = up.next().await;
    assert_eq!(got.uri, "/click/prepare/?token=abc&lang=uz");
    assert_eq!(got.all("x-click-signature-verified"), ["12345"]);
    gw.stop().await;
}

#[tokio::test]
async fn media_types_compare_case_insensitively() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    for content_type in [
        "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
        "APPLICATION/X-WWW-FORM-URLENCODED",
        "application/x-www-form-urlencoded; Charset=Utf-8",
    ] {
        let resp = callback_with(gw.addr, "/click/prepare/", content_type, "", V1).await;
        assert_eq!(
            verdict(resp.status, &resp.body),
            Verdict::Forwarded,
            "{content_type}"
        );
        let got = up.next().await;
        assert_eq!(got.header("content-type"), Some(content_type));
        assert_eq!(got.all("x-click-signature-verified"), ["12345"]);
    }
    // Still a form or nothing: a look-alike type is refused.
    let resp = callback_with(
        gw.addr,
        "/click/prepare/",
        "application/x-www-form-urlencodedx",
        "",
        V1,
    )
    .await;
    assert_click_error(&resp, -8);
    gw.stop().await;
}

#[tokio::test]
async fn no_log_line_carries_any_part_of_a_signature() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start_with(ConfigDir::with_click(
        up.addr,
        KEYS_TOML,
        "",
        "",
        "max_sign_age = \"1m\"\nsign_age_mode = \"enforce\"",
    ))
    .await;
    let bodies = [
        // Genuine, and refused for its sign_time (V1 was signed in 2024).
        V1.to_owned(),
        // Genuine for amount 1000.00: refused with the amount_format hint.
        V1.replace("amount=1000.00", "amount=1000"),
        // Genuine, with a key the gateway does not have (unknown_service).
        prepare_signed_with("the-real-key-of-82154", "82154", 41),
        // Signed with a wrong key (key_mismatch, no hint).
        prepare_signed_with("a-wrong-key", "12345", 42),
    ];
    let mut request_ids = Vec::new();
    for body in &bodies {
        let resp = callback(gw.addr, "/click/prepare/", body).await;
        assert_click_error(&resp, -1);
        request_ids.push(resp.header("x-request-id").unwrap().to_owned());
    }
    assert!(up.try_next().is_none());
    let log = captured_logs();
    for id in &request_ids {
        assert!(log.contains(id.as_str()), "no log line for request {id}");
    }
    for body in &bodies {
        let sign = body
            .rsplit("sign_string=")
            .next()
            .unwrap()
            .to_ascii_lowercase();
        assert_eq!(sign.len(), 32);
        for window in 0..=(32 - 8) {
            let part = &sign[window..window + 8];
            assert!(
                !log.to_ascii_lowercase().contains(part),
                "the log carries {part}, part of a signature"
            );
        }
    }
    gw.stop().await;
}
