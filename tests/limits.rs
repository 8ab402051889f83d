//! Slow, oversized and malformed traffic against the real gateway with short deadlines: each
//! gets its documented answer or is closed at its deadline, and a normal client keeps being
//! served throughout.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Short deadlines so the test does not wait long; the assertions are about what happens at
/// the deadline, never about how long it took.
const FAST: &str = "header_read_timeout = \"400ms\"\nbody_read_timeout = \"400ms\"\nidle_timeout = \"400ms\"\nmax_body = \"64KiB\"\nbody_buffer_memory = \"1MiB\"";

async fn fast_gateway(up: &TestUpstream) -> TestGateway {
    TestGateway::start_with(ConfigDir::new(up.addr, KEYS_TOML, FAST, "")).await
}

/// Reads until the peer closes; returns what arrived.
async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, s.read(&mut chunk)).await {
            Err(_) => panic!(
                "the gateway kept the connection open; got {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return buf,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Writes `opening`, then one more byte-sized piece every `every` until the write fails.
fn trickle(
    mut s: TcpStream,
    opening: Vec<u8>,
    piece: &'static [u8],
    every: Duration,
) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let _ = s.write_all(&opening).await;
        let (mut rd, mut wr) = s.split();
        let writer = async {
            loop {
                tokio::time::sleep(every).await;
                if wr.write_all(piece).await.is_err() {
                    return;
                }
            }
        };
        let mut buf = Vec::new();
        let reader = async {
            let mut chunk = [0u8; 1024];
            loop {
                match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        };
        tokio::select! {
            () = reader => {}
            () = async { writer.await; std::future::pending::<()>().await } => {}
        }
        buf
    })
}

async fn normal_request_works(addr: std::net::SocketAddr) {
    let resp = raw(
        addr,
        b"GET /alive HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_connections_are_closed_while_normal_clients_are_served() {
    let up = TestUpstream::start().await;
    let gw = fast_gateway(&up).await;
    let mut slow = Vec::new();
    for i in 0..40 {
        let s = TcpStream::connect(gw.addr).await.unwrap();
        slow.push(match i % 4 {
            // Headers that never end.
            0 => trickle(s, b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec(), b"X-a: b\r\n", Duration::from_millis(100)),
            // A body that never ends, on an ordinary path and on a callback path.
            1 => trickle(s, b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n".to_vec(), b"z", Duration::from_millis(100)),
            2 => trickle(
                s,
                b"POST /click/prepare/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 5000\r\n\r\n".to_vec(),
                b"a",
                Duration::from_millis(100),
            ),
            // One byte of the HTTP/2 preface, then silence: the protocol sniff hyper does not time.
            _ => trickle(s, b"P".to_vec(), b"", Duration::from_millis(100)),
        });
    }
    for _ in 0..20 {
        normal_request_works(gw.addr).await;
    }
    for (i, task) in slow.into_iter().enumerate() {
        let got = tokio::time::timeout(PATIENCE, task)
            .await
            .expect("a slow connection was never closed")
            .unwrap();
        let text = String::from_utf8_lossy(&got);
        match i % 4 {
            1 | 2 => assert!(
                text.starts_with("HTTP/1.1 408"),
                "slow body #{i} got {text:?}"
            ),
            _ => assert!(!text.contains("200 OK"), "#{i} got {text:?}"),
        }
    }
    normal_request_works(gw.addr).await;
    gw.stop().await;
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed_http1_and_http2() {
    let up = TestUpstream::start().await;
    let gw = fast_gateway(&up).await;
    // Connects and says nothing.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    assert!(until_closed(&mut s).await.is_empty());
    // HTTP/2 preface and SETTINGS, then no request.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    until_closed(&mut s).await;
    // HTTP/2 with one request, then idle: the gateway ends the connection (GOAWAY).
    let (mut h2, conn) = h2_connect(gw.addr).await;
    let req = get_request("http://shop.example/h2");
    assert_eq!(h2.send_request(req).await.unwrap().status(), 200);
    tokio::time::timeout(PATIENCE, conn)
        .await
        .expect("idle HTTP/2 connection kept open")
        .unwrap()
        .unwrap();
    // HTTP/1 keep-alive, idle after a response.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /h1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = until_closed(&mut s).await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    let m = scrape(gw.admin_addr).await;
    let closed = |reason: &str| {
        m.get(&format!(
            "click_gateway_connections_closed_total{{reason=\"{reason}\"}}"
        ))
        .copied()
    };
    assert_eq!(
        closed("first_request_timeout"),
        Some(2.0),
        "the silent and the preface-only connections"
    );
    assert!(
        closed("idle").unwrap_or(0.0) >= 1.0,
        "the idle HTTP/2 connection"
    );
    gw.stop().await;
}

#[tokio::test]
async fn oversized_and_malformed_requests_get_their_status_and_nothing_reaches_the_upstream() {
    let mut up = TestUpstream::start().await;
    let gw = fast_gateway(&up).await;
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(20_000)
    );
    assert_eq!(raw(gw.addr, big_header.as_bytes()).await.status, 431);
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n");
    assert_eq!(raw(gw.addr, many.as_bytes()).await.status, 431);

    // Declared too large: refused before the body is read or the upstream contacted.
    let resp = raw(
        gw.addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 413);
    assert_eq!(resp.header("connection"), Some("close"));
    // Chunked past the limit.
    let mut chunked =
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("1000\r\n{}\r\n", "q".repeat(4096)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw(gw.addr, &chunked).await.status, 413);

    for bad in [
        &b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"[..],
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
        b"NOT-HTTP\r\n\r\n",
    ] {
        let resp = raw(gw.addr, bad).await;
        assert_eq!(resp.status, 400, "{:?}", String::from_utf8_lossy(bad));
    }
    assert!(
        up.try_next().is_none(),
        "a refused request reached the upstream"
    );
    normal_request_works(gw.addr).await;
    gw.stop().await;
}

#[tokio::test]
async fn underscored_headers_never_reach_the_backend() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    let body = V1;
    let req = format!(
        "POST /click/prepare/ HTTP/1.1\r\nHost: x\r\nX_Click_Signature_Verified: 99\r\nX_Forwarded_For: 6.6.6.6\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(raw(gw.addr, req.as_bytes()).await.status, 200);
    let got = up.next().await;
    assert!(
        got.headers.iter().all(|(k, _)| !k.contains('_')),
        "{:?}",
        got.headers
    );
    assert_eq!(got.all("x-click-signature-verified"), ["12345"]);
    assert_eq!(got.all("x-forwarded-for"), ["127.0.0.1"]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_max_connections_idle_connections_make_room_and_busy_ones_never_do() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start_with(ConfigDir::new(
        up.addr,
        KEYS_TOML,
        "max_connections = 3",
        "",
    ))
    .await;
    // Three keep-alive connections take every place, idle after one callback each.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = h1_connect(gw.addr).await;
        assert_eq!(send_callback(&mut c, V1).await, Verdict::Forwarded);
        up.next().await;
        held.push(c);
    }
    let m = scrape(gw.admin_addr).await;
    assert_eq!(m.get("click_gateway_open_connections"), Some(&3.0));
    // New clients are served at once: the idle ones are closed to make room (they never wait
    // in the kernel's queue behind the connections they cannot see).
    for _ in 0..10 {
        let resp = raw(
            gw.addr,
            b"GET /new HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(resp.status, 200);
        assert_eq!(up.next().await.uri, "/new");
    }
    for mut c in held {
        let closed = tokio::time::timeout(PATIENCE, c.ready()).await.unwrap();
        assert!(closed.is_err(), "an idle connection was kept at the cap");
    }
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        m.get("click_gateway_connections_closed_total{reason=\"pressure_idle\"}"),
        Some(&3.0)
    );
    // Three requests in flight: nothing can give way, and a fourth client is closed at once.
    let addr = gw.addr;
    let slow: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(raw(
                addr,
                b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            ))
        })
        .collect();
    for _ in 0..3 {
        assert_eq!(up.next().await.uri, "/slow");
    }
    // Reset at once: the connect itself may already see it.
    if let Ok(mut refused) = TcpStream::connect(gw.addr).await {
        let _ = refused
            .write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        assert!(until_closed(&mut refused).await.is_empty(), "no answer");
    }
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        m.get("click_gateway_connections_refused_total{reason=\"global_cap\"}"),
        Some(&1.0)
    );
    for _ in 0..3 {
        up.release();
    }
    for s in slow {
        assert_eq!(s.await.unwrap().status, 200);
    }
    assert!(
        up.try_next().is_none(),
        "the refused request never reached the backend"
    );
    gw.stop().await;
}

#[tokio::test]
async fn body_buffer_memory_is_shared_and_bounded() {
    let mut up = TestUpstream::start().await;
    // Room for one 64 KiB body at a time.
    let gw = TestGateway::start_with(ConfigDir::new(
        up.addr,
        KEYS_TOML,
        "max_body = \"64KiB\"\nbody_buffer_memory = \"64KiB\"\nbody_read_timeout = \"400ms\"",
        "",
    ))
    .await;
    // A body that fills the budget and stays reserved until its backend answers (/slow waits
    // for the test to release it).
    let addr = gw.addr;
    let big = tokio::spawn(async move {
        post(addr, "/slow", "application/octet-stream", &[1u8; 65_536]).await
    });
    assert_eq!(up.next().await.uri, "/slow");
    // No memory for another body (from another address: the first one's share is used up
    // too): 503 once body_read_timeout has passed waiting for it.
    let resp = post_from(
        "127.0.0.2",
        gw.addr,
        "/upload",
        "application/octet-stream",
        &[7u8; 1000],
    )
    .await;
    assert_eq!(resp.status, 503);
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        m.get("click_gateway_requests_refused_total{reason=\"busy\"}"),
        Some(&1.0)
    );
    up.release();
    assert_eq!(big.await.unwrap().status, 200);
    // The budget is whole again.
    assert_eq!(
        post(gw.addr, "/upload", "application/octet-stream", &[7u8; 1000])
            .await
            .status,
        200
    );
    assert_eq!(gw.gateway.budgets.general.available_kib(), 64);
    while up.try_next().is_some() {}
    gw.stop().await;
}

#[tokio::test]
async fn a_callback_declaring_a_huge_body_holds_only_the_bytes_it_sent() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start_with(ConfigDir::new(
        up.addr,
        KEYS_TOML,
        "max_body = \"64KiB\"\nbody_buffer_memory = \"64KiB\"\ncallback_body_memory = \"64KiB\"\nbody_read_timeout = \"1h\"",
        "",
    ))
    .await;
    // A GET to a callback path (refused once read: a POST declaring so much is refused from
    // its head) that declares 10 GB and sends 3,000 bytes of it.
    let mut stalled = TcpStream::connect(gw.addr).await.unwrap();
    stalled
        .write_all(b"GET /click/prepare/ HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 10000000000\r\n\r\n")
        .await
        .unwrap();
    stalled.write_all(&[b'a'; 3000]).await.unwrap();
    // It holds the 3 KiB it sent, not what it declared, and nothing of the general budget...
    let callbacks = &gw.gateway.budgets.callback;
    eventually("the callback's bytes take their memory", || {
        callbacks.available_kib() == 64 - 3
    })
    .await;
    assert_eq!(gw.gateway.budgets.general.available_kib(), 64);
    // ...and other bodies are still buffered and forwarded, callbacks included.
    let resp = post(gw.addr, "/upload", "application/octet-stream", &[7u8; 1000]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(up.next().await.uri, "/upload");
    let cb = callback(gw.addr, "/click/prepare/", V1).await;
    assert_eq!(verdict(cb.status, &cb.body), Verdict::Forwarded);
    drop(stalled);
    eventually("the memory is given back", || {
        callbacks.available_kib() == 64
    })
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn an_http2_connection_still_goes_idle_after_a_request_that_outlived_a_deadline() {
    let mut up = TestUpstream::start().await;
    let gw = fast_gateway(&up).await;
    let (mut h2, conn) = h2_connect(gw.addr).await;
    let req = get_request("http://shop.example/slow");
    let pending = h2.send_request(req);
    let answer = tokio::spawn(pending);
    assert_eq!(up.next().await.uri, "/slow");
    // The scenario needs the request to be in flight when the connection's first deadline
    // (400 ms) passes; then it ends, and the idle deadline must still close the connection.
    tokio::time::sleep(Duration::from_millis(800)).await;
    up.release();
    assert_eq!(answer.await.unwrap().unwrap().status(), 200);
    tokio::time::timeout(PATIENCE, conn)
        .await
        .expect("the idle HTTP/2 connection was kept open")
        .unwrap()
        .unwrap();
    gw.stop().await;
}
