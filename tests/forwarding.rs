//! Everything that is not a callback passes through unchanged, minus hop-by-hop headers, with
//! forwarding headers the gateway vouches for; upstream failures become 502/504.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn get_with_query_keeps_host_path_and_query_and_replaces_forwarding_headers() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    let req = "GET /api/orders/?id=42&q=a%20b+c&empty= HTTP/1.1\r\nHost: shop.example:8443\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nForwarded: for=6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nX-Custom: kept\r\nCookie: a=1\r\nConnection: close\r\n\r\n";
    let resp = raw(gw.addr, req.as_bytes()).await;
    assert_eq!(resp.status, 200);
    let got = up.next().await;
    assert_eq!(got.method, "GET");
    assert_eq!(got.uri, "/api/orders/?id=42&q=a%20b+c&empty=");
    assert_eq!(got.header("host"), Some("shop.example:8443"));
    assert_eq!(got.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(got.all("x-forwarded-proto"), ["http"]);
    assert_eq!(got.header("forwarded"), None);
    assert_eq!(got.header("x-forwarded-host"), None);
    assert_eq!(got.header("x-custom"), Some("kept"));
    assert_eq!(got.header("cookie"), Some("a=1"));
    gw.stop().await;
}

#[tokio::test]
async fn methods_and_callback_path_lookalikes_pass_through() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    for (method, path) in [
        ("PUT", "/api/x"),
        ("DELETE", "/api/x"),
        ("PATCH", "/api/x"),
        ("OPTIONS", "/click/"),
        // (`/click/prepare` without its slash is a spelling of a callback path: judged.)
        ("POST", "/click/preparex"),
        ("POST", "/click/prepare/extra"),
    ] {
        let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc");
        let resp = raw(gw.addr, req.as_bytes()).await;
        assert_eq!(
            resp.text(),
            r#"{"error":0,"upstream":true}"#,
            "{method} {path}"
        );
        let got = up.next().await;
        assert_eq!((got.method.as_str(), got.uri.as_str()), (method, path));
        assert_eq!(got.body, b"abc");
        assert!(got.header("x-click-signature-verified").is_none());
    }
    gw.stop().await;
}

#[tokio::test]
async fn large_bodies_pass_intact_with_content_length_and_chunked() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    // Just under the default max_body of 1 MiB.
    let body: Vec<u8> = (0..1024 * 1024u32 - 1).map(|i| (i % 251) as u8).collect();
    let resp = post(gw.addr, "/upload/", "application/octet-stream", &body).await;
    assert_eq!(resp.status, 200);
    let got = up.next().await;
    assert_eq!(got.body.len(), body.len());
    assert!(got.body == body, "body changed in transit");
    assert_eq!(got.header("content-length"), Some("1048575"));

    let mut req = b"POST /upload/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for chunk in body.chunks(100_003) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw(gw.addr, &req).await.status, 200);
    assert!(
        up.next().await.body == body,
        "chunked body changed in transit"
    );
    gw.stop().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    let req = "GET /hop HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nConnection: x-secret-hop, close\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\nUpgrade: websocket\r\nX-End-To-End: 2\r\n\r\n";
    let resp = raw(gw.addr, req.as_bytes()).await;
    assert_eq!(resp.status, 200);
    let got = up.next().await;
    for gone in [
        "x-secret-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "upgrade",
    ] {
        assert_eq!(got.header(gone), None, "request kept {gone}");
    }
    assert!(got
        .all("connection")
        .iter()
        .all(|v| !v.contains("x-secret-hop")));
    assert_eq!(got.header("x-end-to-end"), Some("2"));
    // The upstream answered with `Connection: x-hop-a` and `Connection: x-hop-b` lines.
    for gone in ["x-hop-a", "x-hop-b", "keep-alive"] {
        assert_eq!(resp.header(gone), None, "response kept {gone}");
    }
    assert_eq!(resp.header("x-kept"), Some("3"));
    assert_eq!(resp.text(), "hop");

    // A Connection line naming the request id cannot take it from the backend.
    let req = "GET /hop HTTP/1.1\r\nHost: x\r\nConnection: x-request-id, close\r\nX-Request-Id: trace-7\r\n\r\n";
    let resp = raw(gw.addr, req.as_bytes()).await;
    assert_eq!(resp.header("x-request-id"), Some("trace-7"));
    assert_eq!(up.next().await.header("x-request-id"), Some("trace-7"));
    gw.stop().await;
}

#[tokio::test]
async fn responses_stream_before_the_upstream_finishes() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    // The first part arrives while the upstream still holds the rest.
    while !String::from_utf8_lossy(&buf).contains("first;") {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the first chunk");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(!String::from_utf8_lossy(&buf).contains("rest"));
    up.release();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parse_response(&buf).text(), "first;rest");
    gw.stop().await;
}

#[tokio::test]
async fn upstream_down_is_502_for_callbacks_too() {
    let down = closed_port().await;
    let gw = TestGateway::start(down).await;
    let resp = raw(
        gw.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 502);
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(resp.text(), "502 Bad Gateway\n");
    // A verified callback is not answered with a made-up Click code: Click must retry.
    let resp = callback(gw.addr, "/click/prepare/", V1).await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.text(), "502 Bad Gateway\n");
    gw.stop().await;
}

#[tokio::test]
async fn upstream_that_never_answers_is_504_at_the_response_timeout() {
    let (silent, _task) = silent_upstream().await;
    let gw = TestGateway::start_with(ConfigDir::new(
        silent,
        KEYS_TOML,
        "",
        "response_timeout = \"300ms\"",
    ))
    .await;
    let resp = raw(
        gw.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 504);
    assert_eq!(resp.text(), "504 Gateway Timeout\n");
    let resp = callback(gw.addr, "/click/complete/", V2).await;
    assert_eq!(resp.status, 504);
    gw.stop().await;
}

#[tokio::test]
async fn a_unix_socket_backend_that_is_missing_is_502_and_one_that_never_answers_504() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let gw = TestGateway::start_with(ConfigDir::with_url(
        &format!("unix:{}", missing.display()),
        KEYS_TOML,
        "",
        "",
        "",
    ))
    .await;
    let resp = callback(gw.addr, "/click/prepare/", V1).await;
    assert_eq!(resp.status, 502);
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        m.get("click_gateway_upstream_errors_total{route=\"callback\",kind=\"connect\"}"),
        Some(&1.0)
    );
    gw.stop().await;

    let socket = dir.path().join("silent.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let gw = TestGateway::start_with(ConfigDir::with_url(
        &format!("unix:{}", socket.display()),
        KEYS_TOML,
        "",
        "response_timeout = \"300ms\"",
        "",
    ))
    .await;
    let resp = callback(gw.addr, "/click/prepare/", V1).await;
    assert_eq!(resp.status, 504);
    assert_eq!(resp.text(), "504 Gateway Timeout\n");
    gw.stop().await;
}

#[tokio::test]
async fn http_1_0_without_host_is_forwarded() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    let resp = raw(gw.addr, b"GET /legacy HTTP/1.0\r\n\r\n").await;
    assert_eq!(resp.status, 200);
    let got = up.next().await;
    assert_eq!(got.uri, "/legacy");
    assert_eq!(got.version, http::Version::HTTP_11);
    gw.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_edge_forwarding_headers_are_extended_not_replaced() {
    let mut up = TestUpstream::start().await;
    let config = ConfigDir::new(
        up.addr,
        KEYS_TOML,
        "trusted_proxies = [\"127.0.0.0/8\"]",
        "",
    );
    let gw = TestGateway::start_with(config).await;
    let req = "GET /api/ HTTP/1.1\r\nHost: api.shop.uz\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: api.shop.uz\r\nX-Click-Signature-Verified: 12345\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(gw.addr, req.as_bytes()).await.status, 200);
    let got = up.next().await;
    assert_eq!(got.all("x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
    assert_eq!(
        got.all("x-forwarded-proto"),
        ["https"],
        "the edge terminated TLS"
    );
    assert_eq!(got.header("x-forwarded-host"), Some("api.shop.uz"));
    assert_eq!(
        got.header("x-click-signature-verified"),
        None,
        "never trusted from anyone"
    );
    gw.stop().await;
}

/// An upstream that answers the first request on each connection (keeping it alive) and then
/// closes the connection on the second without answering: the race of a pooled connection the
/// backend closes just as a request is written to it.
async fn closing_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use std::sync::{Arc, Mutex};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                for n in 0.. {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if s.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let text = String::from_utf8_lossy(&head).to_string();
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    let mut body = vec![0u8; len];
                    s.read_exact(&mut body).await.unwrap();
                    log.lock()
                        .unwrap()
                        .push(text.lines().next().unwrap().to_owned());
                    if n == 0 {
                        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await
                            .unwrap();
                    } else {
                        return; // closes without an answer
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_reused_connection_closed_under_a_get_is_retried_but_a_callback_never_is() {
    let (addr, seen) = closing_upstream().await;
    let gw = TestGateway::start(addr).await;
    let mut client = h1_connect(gw.addr).await;
    let get = || get_request("/page");
    for _ in 0..3 {
        let resp = client.send_request(get()).await.unwrap();
        assert_eq!(
            resp.status(),
            200,
            "an idempotent request must not fail on a stale connection"
        );
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap();
    }
    // Warm the pool with a connection, then a callback meets the closing connection.
    let resp = client.send_request(get()).await.unwrap();
    http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap();
    let before = seen.lock().unwrap().len();
    let resp = client
        .send_request(callback_request("/click/prepare/", V1))
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        502,
        "a callback that reached the backend is never resent"
    );
    let after: Vec<String> = seen.lock().unwrap()[before..].to_vec();
    assert_eq!(
        after,
        ["POST /click/prepare/ HTTP/1.1"],
        "sent exactly once"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_response_body_that_stalls_is_cut_at_the_response_timeout() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_with(ConfigDir::new(
        up.addr,
        KEYS_TOML,
        "",
        "response_timeout = \"300ms\"",
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // /stream sends a first chunk, then nothing until released (never, here).
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // Ends in EOF or a reset; either way the gateway let go of it.
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf))
        .await
        .expect("the stalled response was never cut");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("first;"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "an incomplete body must not look complete: {text:?}"
    );
    drop(up);
    gw.stop().await;
}

#[tokio::test]
async fn upstream_connections_are_reused_then_retired_at_the_idle_timeout() {
    let mut up = TestUpstream::start().await;
    let config = ConfigDir::new(up.addr, KEYS_TOML, "", "pool_idle_timeout = \"300ms\"");
    let gw = TestGateway::start_with(config).await;
    let mut client = h1_connect(gw.addr).await;
    let get = || get_request("/page");
    let mut peers = Vec::new();
    for _ in 0..5 {
        let resp = client.send_request(get()).await.unwrap();
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap();
        peers.push(up.next().await.peer);
    }
    assert!(
        peers.iter().all(|p| *p == peers[0]),
        "keep-alive to the backend: {peers:?}"
    );
    // Idle past the timeout, the connection is retired (by the pool's sweeper): wait for it.
    tokio::time::timeout(PATIENCE, async {
        loop {
            let m = scrape(gw.admin_addr).await;
            if m.get("click_gateway_upstream_open_connections") == Some(&0.0) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the idle backend connection was never retired");
    let resp = client.send_request(get()).await.unwrap();
    http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap();
    assert_ne!(
        up.next().await.peer,
        peers[0],
        "an expired connection was reused"
    );
    gw.stop().await;
}

#[tokio::test]
async fn large_response_heads_pass() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    let resp = raw(
        gw.addr,
        b"GET /big-head HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.header("content-security-policy").map(str::len),
        Some(20_000)
    );
    up.next().await;
    gw.stop().await;
}
