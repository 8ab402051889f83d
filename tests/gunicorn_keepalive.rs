//! A real gunicorn behind the gateway, with sync workers (a new connection per request) and
//! with gthread workers keeping connections alive for 2 s: thousands of requests, with pauses
//! on both sides of the keep-alive boundary, and not one 502. The pauses are the scenario
//! (idle pooled connections meeting gunicorn's keep-alive), not synchronisation.

mod common;

use std::time::Duration;

use common::django::{Bind, Gunicorn};
use common::*;
use http_body_util::BodyExt;

/// Pauses (ms) between bursts: below, at and past the pool's 1 s idle timeout and gunicorn's
/// 2 s keep-alive.
const PAUSES_MS: [u64; 10] = [0, 500, 900, 1000, 1100, 1500, 1900, 2000, 2100, 2500];
const CLIENTS: usize = 4;
const PER_CLIENT: usize = 40;

async fn hammer(bind: Bind, gunicorn_args: &[&str]) {
    let django = Gunicorn::start_on(bind, gunicorn_args).await;
    let gw = TestGateway::start_with(ConfigDir::with_url(
        &django.upstream_url(),
        KEYS_TOML,
        "",
        "",
        "",
    ))
    .await;
    let mut answered = 0;
    for pause in PAUSES_MS {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let burst: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let addr = gw.addr;
                tokio::spawn(async move {
                    let mut conn = h1_connect(addr).await;
                    let mut answered = 0;
                    for i in 0..PER_CLIENT {
                        let req = if i % 4 == 0 {
                            let id = (pause * 1000 + (c * PER_CLIENT + i) as u64) + 1;
                            callback_request(
                                "/click/prepare/",
                                &signed_prepare(id, "o-1", "1000.00"),
                            )
                        } else {
                            http::Request::get(format!("/echo/?i={i}"))
                                .header("host", "shop.example")
                                .body(http_body_util::Full::new(bytes::Bytes::new()))
                                .unwrap()
                        };
                        conn.ready().await.expect("client connection closed");
                        let resp = conn.send_request(req).await.expect("request failed");
                        let status = resp.status().as_u16();
                        let body = resp.into_body().collect().await.unwrap().to_bytes();
                        assert_eq!(
                            status,
                            200,
                            "after a {pause} ms pause: {}",
                            String::from_utf8_lossy(&body)
                        );
                        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        if i % 4 == 0 {
                            assert_eq!(json["error"], 0, "{json}");
                        }
                        answered += 1;
                    }
                    answered
                })
            })
            .collect();
        for task in burst {
            answered += task.await.unwrap();
        }
    }
    // Every request of every burst was answered 200 (a task that stopped early answers less).
    assert_eq!(answered, PAUSES_MS.len() * CLIENTS * PER_CLIENT);
    // Not one request met a backend connection closing under it (which the gateway would
    // have hidden for GETs by resending them).
    let m = scrape(gw.admin_addr).await;
    let failures: Vec<_> = m
        .iter()
        .filter(|(k, v)| k.starts_with("click_gateway_upstream_errors_total") && **v > 0.0)
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_workers_no_502() {
    hammer(Bind::Tcp, &["--worker-class", "sync", "--workers", "3"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gthread_workers_with_2s_keepalive_no_502() {
    hammer(Bind::Tcp, GTHREAD).await;
}

/// The usual deployment: gunicorn on a unix socket, the same pooling, keep-alive boundary and
/// retries as over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gthread_workers_on_a_unix_socket_no_502() {
    hammer(Bind::Unix, GTHREAD).await;
}

const GTHREAD: &[&str] = &[
    "--worker-class",
    "gthread",
    "--workers",
    "2",
    "--threads",
    "4",
    "--keep-alive",
    "2",
];
