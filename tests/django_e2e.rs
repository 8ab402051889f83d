//! End to end with the real thing: a Django app under gunicorn (installed by `tests/setup.sh`)
//! behind the gateway. Django verifies the signature itself and also insists on the gateway's
//! trust header, like a backend that has adopted the gateway would.

mod common;

use common::django::{django_saw, Bind, Gunicorn};
use common::*;

fn signed(action: &str, prepare_id: Option<&str>, click_trans_id: &str) -> String {
    use click_gateway::click::sign::{CallbackBody, SignedFields};
    CallbackBody {
        signed: SignedFields {
            click_trans_id,
            service_id: "12345",
            merchant_trans_id: "заказ 77",
            merchant_prepare_id: prepare_id,
            amount: "25000.00",
            action,
            sign_time: "2024-05-01 12:30:45",
        },
        click_paydoc_id: "99",
        error: "0",
        error_note: "Success",
    }
    .encode(&click_gateway::click::Secret::new(KEY_12345))
}

#[tokio::test]
async fn prepare_and_complete_through_the_gateway_to_django() {
    let django = Gunicorn::start(&["--worker-class", "sync", "--workers", "2"]).await;
    let gw = TestGateway::start(django.addr).await;

    let prepare = signed("0", None, "2103040001");
    let resp = callback(gw.addr, "/click/prepare/", &prepare).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let answer = resp.json();
    assert_eq!(answer["error"], 0, "{answer}");
    assert_eq!(answer["merchant_trans_id"], "заказ 77");
    let prepare_id = answer["merchant_prepare_id"].to_string();

    let complete = signed("1", Some(&prepare_id), "2103040001");
    let answer = callback(gw.addr, "/click/complete/", &complete)
        .await
        .json();
    assert_eq!(answer["error"], 0, "{answer}");
    assert_eq!(answer["merchant_confirm_id"], 7001);

    // Forged: answered by the gateway, Django never sees it.
    let forged = prepare.replace("25000.00", "1.00");
    let answer = callback(gw.addr, "/click/prepare/", &forged).await.json();
    assert_eq!(answer["error"], -1);
    assert_eq!(answer["error_note"], "SIGN CHECK FAILED!");

    let seen = django_saw(&django);
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (entry, body) in seen.iter().zip([&prepare, &complete]) {
        assert_eq!(entry["verdict"], "ok", "{entry}");
        assert_eq!(entry["verified_header"], "12345");
        assert_eq!(entry["body"], body.as_str(), "Django got the exact bytes");
        assert_eq!(entry["host"], "shop.example");
        assert_eq!(entry["forwarded_for"], "127.0.0.1");
    }
    gw.stop().await;
}

#[tokio::test]
async fn django_on_a_unix_socket_gets_verified_callbacks_with_the_clients_host() {
    let django =
        Gunicorn::start_on(Bind::Unix, &["--worker-class", "sync", "--workers", "2"]).await;
    let gw = TestGateway::start_with(ConfigDir::with_url(
        &django.upstream_url(),
        KEYS_TOML,
        "",
        "",
        "",
    ))
    .await;
    let prepare = signed("0", None, "2103040101");
    let answer = callback(gw.addr, "/click/prepare/", &prepare).await.json();
    assert_eq!(answer["error"], 0, "{answer}");
    let echo = raw(
        gw.addr,
        b"GET /echo/ HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    )
    .await
    .json();
    assert_eq!(echo["host"], "shop.example");
    // HTTP/1.0 without a Host: the gateway names the backend, on a socket `localhost`.
    let echo = raw(gw.addr, b"GET /echo/ HTTP/1.0\r\n\r\n").await.json();
    assert_eq!(echo["host"], "localhost");
    let seen = django_saw(&django);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["verdict"], "ok");
    assert_eq!(seen[0]["host"], "shop.example");
    assert_eq!(seen[0]["verified_header"], "12345");
    gw.stop().await;
}

#[tokio::test]
async fn other_traffic_reaches_django_unchanged() {
    let django = Gunicorn::start(&["--worker-class", "sync", "--workers", "2"]).await;
    let gw = TestGateway::start(django.addr).await;
    let req = "GET /echo/?order=42&q=a+b HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 6.6.6.6\r\nX-Click-Signature-Verified: 12345\r\nConnection: close\r\n\r\n";
    let resp = raw(gw.addr, req.as_bytes()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo = resp.json();
    assert_eq!(echo["host"], "shop.example");
    assert_eq!(
        echo["query"],
        serde_json::json!({"order": "42", "q": "a b"})
    );
    assert_eq!(echo["forwarded_for"], "127.0.0.1");
    assert_eq!(echo["forwarded_proto"], "http");
    assert_eq!(echo["verified_header"], serde_json::Value::Null);

    let body = vec![b'z'; 300_000];
    let resp = post(gw.addr, "/echo/", "application/octet-stream", &body).await;
    assert_eq!(resp.json()["body_length"], 300_000);
    gw.stop().await;
}

/// The same fields as multipart/form-data, one part per field.
fn multipart(body: &str, boundary: &str) -> String {
    let form = click_gateway::click::form::parse_urlencoded(body.as_bytes()).unwrap();
    let mut out = String::new();
    for f in &form.fields {
        out.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"\r\n\r\n{}\r\n",
            f.name, f.value
        ));
    }
    out.push_str(&format!("--{boundary}--\r\n"));
    out
}

#[tokio::test]
async fn multipart_callbacks_mean_the_same_to_django_or_are_refused() {
    let django = Gunicorn::start(&["--worker-class", "sync", "--workers", "2"]).await;
    let gw = TestGateway::start(django.addr).await;
    let ct = "multipart/form-data; boundary=XXbound";
    // A valid one: Django checks the signature itself over what it parsed, and agrees.
    let body = multipart(&signed("0", None, "2103040009"), "XXbound");
    let answer = post(gw.addr, "/click/prepare/", ct, body.as_bytes())
        .await
        .json();
    assert_eq!(answer["error"], 0, "{answer}");
    // A field smuggled inside another by repeating the boundary after a bare LF: Django would
    // split there and read amount=1; the gateway refuses the body instead.
    let smuggled = body.replace(
        "name=\"error_note\"\r\n\r\nSuccess",
        "name=\"error_note\"\r\n\r\nSuccess\n--XXbound\r\nContent-Disposition: form-data; name=\"amount\"\r\n\r\n1",
    );
    assert_ne!(smuggled, body);
    let answer = post(gw.addr, "/click/prepare/", ct, smuggled.as_bytes())
        .await
        .json();
    assert_eq!(answer["error"], -8, "{answer}");
    // A name Django strips to a signed field's.
    let renamed = body.replacen("name=\"error_note\"", "name=\" amount\"", 1);
    let answer = post(gw.addr, "/click/prepare/", ct, renamed.as_bytes())
        .await
        .json();
    assert_eq!(answer["error"], -8, "{answer}");
    let seen = django_saw(&django);
    assert_eq!(
        seen.len(),
        1,
        "only the valid callback reached Django: {seen:?}"
    );
    assert_eq!(seen[0]["verdict"], "ok");
    gw.stop().await;
}
