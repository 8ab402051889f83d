//! Callbacks first: no other traffic can make a payment callback wait, neither for body memory
//! nor for a backend connection, and a client that stops reading is cut loose with its backend
//! connection. Each test is named by the attack it plays, against the real gateway on real
//! sockets; deadlines that would hide a starved callback are set far beyond the test's patience,
//! so a callback that had to wait for them fails the test instead of passing late.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{Either, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type H2Body = Either<Full<Bytes>, ChannelBody>;

/// Reads whatever arrives until the gateway closes the connection (or resets it).
async fn drain_until_closed(s: &mut TcpStream) -> usize {
    let mut total = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(PATIENCE, s.read(&mut chunk)).await {
            Err(_) => panic!("the connection was never closed"),
            Ok(Ok(0)) | Ok(Err(_)) => return total,
            Ok(Ok(n)) => total += n,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_uploads_holding_all_body_memory_do_not_delay_a_callback() {
    let mut up = TestUpstream::start().await;
    // The shipped defaults (64 MiB of body memory, 1 MiB bodies), with a body deadline no test
    // waits for.
    let gw = TestGateway::start_with(ConfigDir::new(
        up.addr,
        KEYS_TOML,
        "body_read_timeout = \"1h\"",
        "",
    ))
    .await;
    // Uploads from 70 addresses (one address's bodies may hold a sixteenth of the budget),
    // each sending all of its 1 MiB body but the last byte: memory is taken as bytes arrive.
    let mut uploads = Vec::new();
    for i in 0..70 {
        let mut s = connect_from(&format!("127.0.3.{}", i + 1), gw.addr)
            .await
            .unwrap();
        uploads.push(tokio::spawn(async move {
            s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n")
                .await
                .unwrap();
            // The last uploads wait for memory: their bytes stay in the socket buffers.
            let _ = s.write_all(&vec![b'u'; 1048575]).await;
            s
        }));
    }
    let general = gw.gateway.budgets.general.clone();
    eventually("the uploads hold all of body_buffer_memory", || {
        general.available_kib() == 0
    })
    .await;
    let resp = callback(gw.addr, "/click/prepare/", V1).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    assert_eq!(up.next().await.uri, "/click/prepare/");
    assert_eq!(general.available_kib(), 0, "the uploads still hold it all");
    for u in uploads {
        u.abort();
    }
    gw.stop().await;
}

/// An HTTP/2 connection whose requests may have bodies that never arrive.
async fn h2_uploads(
    addr: std::net::SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<H2Body>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    (sender, tokio::spawn(conn))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_http2_connection_with_many_idle_uploads_holds_only_its_share() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start_with(ConfigDir::new(
        up.addr,
        KEYS_TOML,
        "body_read_timeout = \"1h\"\nbody_buffer_memory = \"64MiB\"\nconnection_body_memory = \"2MiB\"\nhttp2_max_concurrent_streams = 32",
        "",
    ))
    .await;
    let (mut h2, conn) = h2_uploads(gw.addr).await;
    // 30 streams, each declaring a 1 MiB upload and sending 100 KiB of it.
    let mut held = Vec::new();
    for _ in 0..30 {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let req = hyper::Request::post("http://shop.example/upload")
            .header("content-length", "1048576")
            .body(Either::Right(ChannelBody::new(rx)))
            .unwrap();
        h2.ready().await.unwrap();
        let _ = tx.try_send(Bytes::from(vec![b'u'; 100 * 1024]));
        held.push((tx, tokio::spawn(h2.send_request(req))));
    }
    let general = gw.gateway.budgets.general.clone();
    // Its 2 MiB share, to within one 16 KiB frame (a frame takes its KiB whole or waits).
    let holds_its_share = |available: usize| (62 * 1024..=62 * 1024 + 16).contains(&available);
    eventually("the connection takes its share", || {
        holds_its_share(general.available_kib())
    })
    .await;
    // The rest of the budget serves other clients...
    let resp = post(gw.addr, "/upload", "application/octet-stream", &[7u8; 1000]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(up.next().await.uri, "/upload");
    // ...and a callback on the very same connection is forwarded at once.
    let req = hyper::Request::post("http://shop.example/click/prepare/")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Either::Left(Full::new(Bytes::from_static(V1.as_bytes()))))
        .unwrap();
    let resp = tokio::time::timeout(PATIENCE, h2.send_request(req))
        .await
        .expect("the callback waited")
        .unwrap();
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(verdict(status, &body), Verdict::Forwarded);
    assert_eq!(up.next().await.uri, "/click/prepare/");
    assert!(
        holds_its_share(general.available_kib()),
        "still only its share: {} KiB free",
        general.available_kib()
    );
    drop(held);
    drop(h2);
    let _ = tokio::time::timeout(PATIENCE, conn).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_api_requests_filling_the_backend_leave_callbacks_their_connections() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start_with(ConfigDir::new(
        up.addr,
        KEYS_TOML,
        "",
        "max_connections = 4\ncallback_connections = 1",
    ))
    .await;
    // Three slow API requests take every backend connection but the callbacks' one.
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
    // One more API request waits for a connection...
    let queued = tokio::spawn(raw(
        addr,
        b"GET /queued HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ));
    // ...while a callback reaches the backend at once (the slow ones are held until released).
    let resp = callback(gw.addr, "/click/prepare/", V1).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    assert_eq!(up.next().await.uri, "/click/prepare/");
    // The callback's connection, idle now, is still not the API request's to take.
    assert!(
        up.try_next().is_none(),
        "the queued request used the reserve"
    );
    assert!(!queued.is_finished());
    for _ in 0..3 {
        up.release();
    }
    for s in slow {
        assert_eq!(s.await.unwrap().status, 200);
    }
    assert_eq!(queued.await.unwrap().status, 200);
    assert_eq!(up.next().await.uri, "/queued");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn beyond_the_backend_ceiling_other_requests_get_503_and_callbacks_still_pass() {
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start_with(ConfigDir::new(
        up.addr,
        KEYS_TOML,
        "send_timeout = \"1h\"",
        "max_connections = 2\ncallback_connections = 1\nresponse_timeout = \"1s\"",
    ))
    .await;
    // A client that asks for a large response and never reads it holds the one shared
    // backend connection (its body cannot move, so it never stalls the backend's clock).
    let mut hog = TcpStream::connect(gw.addr).await.unwrap();
    hog.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(up.next().await.uri, "/big");
    let resp = raw(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.text(), "503 Service Unavailable\n");
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        m.get("click_gateway_upstream_errors_total{route=\"proxy\",kind=\"busy\"}"),
        Some(&1.0)
    );
    let resp = callback(gw.addr, "/click/prepare/", V1).await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    assert_eq!(up.next().await.uri, "/click/prepare/");
    assert!(up.try_next().is_none(), "/x never reached the backend");
    drop(hog);
    gw.stop().await;
}

/// Waits until the gateway has no client connection and no backend connection open.
async fn all_released(gw: &TestGateway) {
    let m = gw.gateway.metrics.clone();
    eventually("client and backend connections are released", || {
        m.open_connections.get() == 0 && m.upstream_open_connections.get() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_reading_is_cut_after_send_timeout_http1() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_with(ConfigDir::new(
        up.addr,
        KEYS_TOML,
        "send_timeout = \"500ms\"",
        "",
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The client reads nothing: its TCP window closes, the gateway's writes block.
    let m = gw.gateway.metrics.clone();
    eventually("the connection is cut for send_timeout", || {
        m.send_timeouts.get() == 1
    })
    .await;
    all_released(&gw).await;
    let got = drain_until_closed(&mut s).await;
    assert!(got < BIG_PIECES * 64 * 1024, "the whole body arrived");
    let scraped = scrape(gw.admin_addr).await;
    assert_eq!(
        scraped.get("click_gateway_connections_closed_total{reason=\"send_timeout\"}"),
        Some(&1.0)
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_never_opens_its_http2_window_is_cut_after_send_timeout() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_with(ConfigDir::new(
        up.addr,
        KEYS_TOML,
        "send_timeout = \"500ms\"",
        "",
    ))
    .await;
    let (mut h2, conn) = h2_connect(gw.addr).await;
    // The response headers arrive; its body is never read, so the client never sends a
    // WINDOW_UPDATE for it, while its connection stays healthy (the socket is read).
    let resp = h2
        .send_request(get_request("http://shop.example/big"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let m = gw.gateway.metrics.clone();
    eventually("the connection is cut for send_timeout", || {
        m.send_timeouts.get() == 1
    })
    .await;
    all_released(&gw).await;
    let ended = tokio::time::timeout(PATIENCE, conn)
        .await
        .expect("the client's connection was never closed");
    assert!(ended.is_ok());
    drop(resp);
    gw.stop().await;
}
