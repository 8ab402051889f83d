//! One client cannot stop payments. Each test plays one attack on the callback URL, which is
//! public, against the real gateway on real sockets, from addresses of 127.0.0.0/8 that stand
//! in for other machines, and shows a valid callback from an address that is not attacking
//! served while the attack holds. The only timing check is a generous bound on that
//! callback's answer ([`SERVED_WITHIN`]): Click retries a callback only a few times.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Either, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;

/// How long a valid callback may take while an attack holds (the goal is a second).
const SERVED_WITHIN: Duration = Duration::from_secs(5);

/// One attack at a time: the tests of this file share two cores, and a callback's answer
/// should measure its own test's attack, not a neighbour's.
static ONE_ATTACK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

type Body = Either<Full<Bytes>, ChannelBody>;

/// A forged Prepare (signed with a key the gateway does not have for the service).
fn forged(n: u64) -> String {
    prepare_signed_with("not-the-key", "12345", n)
}

/// A valid callback from `ip` is answered by the backend within [`SERVED_WITHIN`].
async fn valid_callback_served(ip: &str, gw: &TestGateway, up: &mut TestUpstream, n: u64) {
    let body = signed_prepare(n, &format!("order-{n}"), "1000.00");
    let resp = tokio::time::timeout(
        SERVED_WITHIN,
        callback_from(ip, gw.addr, "/click/prepare/", &body),
    )
    .await
    .expect("a valid callback was held up by the attack");
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    loop {
        let got = up.next().await;
        if got.body == body.as_bytes() {
            break;
        }
    }
}

/// An HTTP/1.1 keep-alive connection from `ip` that has had one forged callback answered;
/// `None` when the gateway closed it instead.
async fn keep_alive_from(
    ip: &str,
    addr: std::net::SocketAddr,
    n: u64,
) -> Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = connect_from(ip, addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(callback_request("/click/prepare/", &forged(n)))
        .await
        .ok()?;
    resp.into_body().collect().await.ok()?;
    Some(sender)
}

/// An HTTP/2 connection from `ip` with one request answered, then idle; `None` when the
/// gateway closed it instead.
async fn idle_h2_from(
    ip: &str,
    addr: std::net::SocketAddr,
) -> Option<hyper::client::conn::http2::SendRequest<Body>> {
    let stream = connect_from(ip, addr).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let req = hyper::Request::get("http://shop.example/idle")
        .body(Either::Left(Full::new(Bytes::new())))
        .ok()?;
    let resp = sender.send_request(req).await.ok()?;
    resp.into_body().collect().await.ok()?;
    Some(sender)
}

fn metric(m: &std::collections::BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

/// Drains what the upstream received so far (the attacks' own requests).
fn drain(up: &mut TestUpstream) {
    while up.try_next().is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_keep_alive_connections_from_one_address_get_that_address_s_share() {
    let _attack = ONE_ATTACK.lock().await;
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    // 4,096 keep-alive connections from one address, each with a forged Prepare answered.
    let attempts: Vec<_> = (0..4096)
        .map(|i| tokio::spawn(keep_alive_from("127.0.4.1", gw.addr, i)))
        .collect();
    let mut held = Vec::new();
    for a in attempts {
        if let Some(c) = a.await.unwrap() {
            held.push(c);
        }
    }
    // The default cap: 256 per address; the rest were closed as they came.
    assert_eq!(held.len(), 256);
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        metric(
            &m,
            "click_gateway_connections_refused_total{reason=\"address_cap\"}"
        ),
        3840.0
    );
    valid_callback_served("127.0.4.2", &gw, &mut up, 1).await;
    drop(held);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_idle_http2_connections_from_one_address_get_that_address_s_share() {
    let _attack = ONE_ATTACK.lock().await;
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start(up.addr).await;
    let attempts: Vec<_> = (0..4096)
        .map(|_| tokio::spawn(idle_h2_from("127.0.5.1", gw.addr)))
        .collect();
    let mut held = Vec::new();
    for a in attempts {
        if let Some(c) = a.await.unwrap() {
            held.push(c);
        }
    }
    assert_eq!(held.len(), 256);
    drain(&mut up);
    valid_callback_served("127.0.5.2", &gw, &mut up, 2).await;
    drop(held);
    gw.stop().await;
}

/// A gateway with `max_connections` places, attacked from 64 addresses. Tests of making room
/// pass `pressure_timeout = "1h"`, so that only making room closes an idle connection however
/// long the attack takes to set up.
async fn small_gateway(up: &TestUpstream, server_extra: &str) -> TestGateway {
    TestGateway::start_with(ConfigDir::new(
        up.addr,
        KEYS_TOML,
        &format!("max_connections = 1024\n{server_extra}"),
        "",
    ))
    .await
}

/// The 64 attacking addresses: 127.0.6.1 ..= 127.0.6.64.
fn attackers() -> impl Iterator<Item = String> {
    (1..=64).map(|i| format!("127.0.6.{i}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_addresses_holding_every_keep_alive_connection_make_room_for_a_callback() {
    let _attack = ONE_ATTACK.lock().await;
    let mut up = TestUpstream::start().await;
    let gw = small_gateway(&up, "pressure_timeout = \"1h\"").await;
    let mut tasks = Vec::new();
    for ip in attackers() {
        for i in 0..16 {
            let addr = gw.addr;
            let ip = ip.clone();
            tasks.push(tokio::spawn(
                async move { keep_alive_from(&ip, addr, i).await },
            ));
        }
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap().expect("within the cap"));
    }
    let m = scrape(gw.admin_addr).await;
    assert_eq!(metric(&m, "click_gateway_open_connections"), 1024.0);
    assert_eq!(metric(&m, "click_gateway_under_pressure"), 1.0);
    valid_callback_served("127.0.7.1", &gw, &mut up, 3).await;
    let m = scrape(gw.admin_addr).await;
    assert!(
        metric(
            &m,
            "click_gateway_connections_closed_total{reason=\"pressure_idle\"}"
        ) >= 1.0,
        "an idle connection made room"
    );
    drop(held);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_addresses_holding_every_idle_http2_connection_make_room_for_a_callback() {
    let _attack = ONE_ATTACK.lock().await;
    let mut up = TestUpstream::start().await;
    let gw = small_gateway(&up, "pressure_timeout = \"1h\"").await;
    let mut tasks = Vec::new();
    for ip in attackers() {
        for _ in 0..16 {
            let addr = gw.addr;
            let ip = ip.clone();
            tasks.push(tokio::spawn(async move { idle_h2_from(&ip, addr).await }));
        }
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap().expect("within the cap"));
    }
    drain(&mut up);
    valid_callback_served("127.0.7.2", &gw, &mut up, 4).await;
    drop(held);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_addresses_holding_silent_connections_make_room_and_are_cut_short() {
    let _attack = ONE_ATTACK.lock().await;
    let mut up = TestUpstream::start().await;
    // Without pressure a silent connection would be given an hour.
    let gw = small_gateway(
        &up,
        "header_read_timeout = \"1h\"\npressure_timeout = \"1s\"",
    )
    .await;
    let mut silent = Vec::new();
    for ip in attackers() {
        for _ in 0..16 {
            silent.push(connect_from(&ip, gw.addr).await.unwrap());
        }
    }
    let m = &gw.gateway.metrics;
    let cut = m
        .connections_closed
        .get_or_create(&click_gateway::metrics::ReasonLabels {
            reason: "first_request_timeout",
        })
        .clone();
    // Accepted, whether still open or already cut (a slow start may see the first ones cut
    // before the last are in).
    eventually("every silent connection is accepted", || {
        m.open_connections.get() as u64 + cut.get() == 1024
    })
    .await;
    valid_callback_served("127.0.7.3", &gw, &mut up, 5).await;
    // Under pressure (from 90 % of the cap), a connection that sends no request head is
    // closed after pressure_timeout, until the pressure is relieved (below 80 %).
    eventually(
        "the silent connections are cut until the pressure is relieved",
        || m.open_connections.get() < 1024 * 8 / 10 && m.under_pressure.get() == 0,
    )
    .await;
    assert!(cut.get() >= 1024 - 1024 * 8 / 10, "{} cut", cut.get());
    drop(silent);
    gw.stop().await;
}

/// A gateway that would wait an hour for a body: only the memory it holds is under test.
async fn patient_gateway(up: &TestUpstream) -> TestGateway {
    TestGateway::start_with(ConfigDir::new(
        up.addr,
        KEYS_TOML,
        "body_read_timeout = \"1h\"",
        "",
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callbacks_declaring_bodies_and_sending_none_hold_no_memory_http1() {
    let _attack = ONE_ATTACK.lock().await;
    let mut up = TestUpstream::start().await;
    let gw = patient_gateway(&up).await;
    // 1,024 callbacks from 64 addresses, each declaring 16 KiB and sending none of it.
    let mut held = Vec::new();
    for ip in attackers() {
        for _ in 0..16 {
            let mut s = connect_from(&ip, gw.addr).await.unwrap();
            s.write_all(b"POST /click/prepare/ HTTP/1.1\r\nHost: shop.example\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 16384\r\n\r\n")
                .await
                .unwrap();
            held.push(s);
        }
    }
    let m = &gw.gateway.metrics;
    eventually("every declared callback is in", || {
        m.open_connections.get() == 1024
    })
    .await;
    let callbacks = &gw.gateway.budgets.callback;
    assert_eq!(callbacks.available_kib(), 16 * 1024, "nothing is held");
    valid_callback_served("127.0.7.4", &gw, &mut up, 6).await;
    drop(held);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callbacks_declaring_bodies_and_sending_none_hold_no_memory_http2() {
    let _attack = ONE_ATTACK.lock().await;
    let mut up = TestUpstream::start().await;
    let gw = patient_gateway(&up).await;
    // 64 addresses × 4 connections × 4 streams, each declaring 16 KiB and sending nothing.
    let (mut bodies, mut streams, mut connections) = (Vec::new(), Vec::new(), Vec::new());
    for ip in attackers() {
        for _ in 0..4 {
            let stream = connect_from(&ip, gw.addr).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            for _ in 0..4 {
                let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
                let req = hyper::Request::post("http://shop.example/click/prepare/")
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("content-length", "16384")
                    .body(Body::Right(ChannelBody::new(rx)))
                    .unwrap();
                sender.ready().await.unwrap();
                bodies.push(tx);
                streams.push(tokio::spawn(sender.send_request(req)));
            }
            connections.push(sender);
        }
    }
    let m = &gw.gateway.metrics;
    eventually("every connection is in", || m.open_connections.get() == 256).await;
    let callbacks = &gw.gateway.budgets.callback;
    assert_eq!(callbacks.available_kib(), 16 * 1024, "nothing is held");
    valid_callback_served("127.0.7.5", &gw, &mut up, 7).await;
    for s in streams {
        s.abort();
    }
    drop((bodies, connections));
    gw.stop().await;
}

/// Forged callbacks from `ip` on `connections` keep-alive connections, as fast as the gateway
/// answers, until `stop`; `sent` counts those answered. The task returns when every
/// connection has stopped.
fn flood(
    ip: &'static str,
    addr: std::net::SocketAddr,
    connections: usize,
    body: impl Fn(u64) -> String + Send + Sync + 'static,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<u64> {
    let body = Arc::new(body);
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let (stop, sent, body) = (stop.clone(), sent.clone(), body.clone());
            tokio::spawn(async move {
                let stream = connect_from(ip, addr).await.unwrap();
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let mut n = c as u64 * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    if sender.ready().await.is_err() {
                        return;
                    }
                    let Ok(resp) = sender
                        .send_request(callback_request("/click/prepare/", &body(n)))
                        .await
                    else {
                        return;
                    };
                    let _ = resp.into_body().collect().await;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::spawn(async move {
        for t in tasks {
            t.await.expect("a flooding connection failed");
        }
        sent.load(Ordering::Relaxed)
    })
}

/// Rows of the ledger at `db` from `client`.
fn rows_from(db: &std::path::Path, client: &str) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row(
        "SELECT count(*) FROM callbacks WHERE client = ?1",
        [client],
        |r| r.get(0),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_forged_callbacks_from_one_address_costs_bounded_log_and_ledger() {
    let _attack = ONE_ATTACK.lock().await;
    let mut up = TestUpstream::start().await;
    let config = ConfigDir::with_ledger(up.addr);
    let db = config.dir.path().join("ledger.db");
    let gw = TestGateway::start_with(config).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let flooding = flood("127.0.8.1", gw.addr, 16, forged, stop.clone(), sent.clone());
    // Valid callbacks from another address, while the flood goes on (well past the burst the
    // ledger takes at once): each one served.
    let mut valid = 0;
    while sent.load(Ordering::Relaxed) < 3000 && !flooding.is_finished() {
        valid_callback_served("127.0.8.2", &gw, &mut up, 100 + valid as u64).await;
        valid += 1;
    }
    assert!(
        sent.load(Ordering::Relaxed) >= 3000,
        "the flood stopped early: {} sent",
        sent.load(Ordering::Relaxed)
    );
    stop.store(true, Ordering::Relaxed);
    let forged_sent = flooding.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let ledger = gw.gateway.ledger.clone().unwrap();
    ledger.flush().await.unwrap();
    // Every valid callback is recorded; of the forged ones, a burst of ten seconds' worth of
    // ledger.refused_per_second and that rate since.
    assert_eq!(rows_from(&db, "127.0.8.2"), valid);
    let forged_rows = rows_from(&db, "127.0.8.1");
    let bound = 500.0 + 50.0 * (elapsed + 1.0);
    assert!(
        forged_rows as f64 <= bound && forged_sent > forged_rows as u64,
        "{forged_rows} rows of {forged_sent} forged callbacks in {elapsed:.1}s"
    );
    // The log: a few lines of the attacker's own, then a summary with the count.
    gw.gateway.refusals.report();
    let log = captured_logs();
    let own_lines = log
        .lines()
        .filter(|l| {
            l.contains("WARN") && l.contains("client=127.0.8.1 ") && l.contains("callback rejected")
        })
        .count();
    let intervals = (elapsed / 10.0).ceil() as usize + 1;
    assert!(
        own_lines <= 3 * intervals,
        "{own_lines} lines for the flood"
    );
    assert!(
        log.lines().any(|l| l.contains("client=127.0.8.1 ")
            && l.contains("summarised")
            && l.contains("key_mismatch=")),
        "no summary of the flood"
    );
    let m = scrape(gw.admin_addr).await;
    assert!(metric(&m, "click_gateway_refusals_unlogged_total") > 0.0);
    assert!(metric(&m, "click_gateway_ledger_unrecorded_total{reason=\"rate\"}") > 0.0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_at_click_s_pace_is_recorded_in_full_and_rechecked() {
    let _attack = ONE_ATTACK.lock().await;
    let up = TestUpstream::start().await;
    let config = ConfigDir::with_ledger(up.addr);
    let db = config.dir.path().join("ledger.db");
    let path = config.path();
    let gw = TestGateway::start_with(config).await;
    // Every callback of service 82154 is refused (no key): 300 from Click's address.
    for n in 0..300 {
        let body = prepare_signed_with("the-key-of-82154", "82154", 5000 + n);
        let resp = callback_from("127.0.9.1", gw.addr, "/click/prepare/", &body).await;
        assert_eq!(resp.json()["error"], -1);
    }
    gw.gateway.ledger.clone().unwrap().flush().await.unwrap();
    assert_eq!(rows_from(&db, "127.0.9.1"), 300);
    let (code, out, err) = common::binary::run_with_stdin(
        common::binary::bin().args([
            "recheck",
            "--config",
            path.to_str().unwrap(),
            "--service-id",
            "82154",
            "--secret-file",
            "-",
        ]),
        "the-key-of-82154\n",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("300 of 300 refused callbacks of service 82154"),
        "{out}"
    );
    gw.stop().await;
}

/// A tmpfs of `mib` MiB mounted on a new directory, unmounted when dropped (the tests run as
/// root, as CI does).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(mib: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs (this test needs root, as CI has)"
        );
        SmallDisk { dir }
    }

    fn free(&self) -> u64 {
        let vfs = rustix::fs::statvfs(self.dir.path()).unwrap();
        vfs.f_bavail * vfs.f_frsize
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_large_forged_callbacks_cannot_fill_the_ledger_s_disk() {
    let _attack = ONE_ATTACK.lock().await;
    let mut up = TestUpstream::start().await;
    let disk = SmallDisk::new(64);
    let config = ConfigDir::with_click(
        up.addr,
        KEYS_TOML,
        "",
        "",
        &format!(
            "[ledger]\ndatabase = \"{}\"\nmin_free = \"24MiB\"\n",
            disk.dir.path().join("ledger.db").display()
        ),
    );
    let gw = TestGateway::start_with(config).await;
    // Forged callbacks of nearly 16 KiB each, from 16 addresses at once: each address's burst
    // alone is 8 MiB of rows.
    let big = |n: u64| {
        let body = forged(n);
        let pad = 16 * 1024 - body.len() - 16;
        format!("{body}&pad={}", "x".repeat(pad))
    };
    let stop = Arc::new(AtomicBool::new(false));
    const FLOODERS: [&str; 16] = [
        "127.0.10.1",
        "127.0.10.2",
        "127.0.10.3",
        "127.0.10.4",
        "127.0.10.5",
        "127.0.10.6",
        "127.0.10.7",
        "127.0.10.8",
        "127.0.10.9",
        "127.0.10.10",
        "127.0.10.11",
        "127.0.10.12",
        "127.0.10.13",
        "127.0.10.14",
        "127.0.10.15",
        "127.0.10.16",
    ];
    let sent = Arc::new(AtomicU64::new(0));
    let floods: Vec<_> = FLOODERS
        .iter()
        .map(|ip| flood(ip, gw.addr, 2, big, stop.clone(), sent.clone()))
        .collect();
    let m = gw.gateway.metrics.clone();
    let size = m
        .ledger_unrecorded
        .get_or_create(&click_gateway::metrics::ReasonLabels { reason: "size" })
        .clone();
    eventually("the ledger stops recording refusals at its bound", || {
        size.get() > 0
    })
    .await;
    // Valid callbacks are still served, and recorded (as is the guard's binding of each,
    // whose file shares the disk), while the flood goes on.
    for n in 200..210 {
        valid_callback_served("127.0.10.100", &gw, &mut up, n).await;
    }
    stop.store(true, Ordering::Relaxed);
    for f in floods {
        f.await.unwrap();
    }
    let ledger = gw.gateway.ledger.clone().unwrap();
    ledger.flush().await.unwrap();
    assert_eq!(
        rows_from(&disk.dir.path().join("ledger.db"), "127.0.10.100"),
        10
    );
    assert!(
        disk.free() > 8 * 1024 * 1024,
        "the disk was filled: {} bytes free",
        disk.free()
    );
    drain(&mut up);
    gw.stop().await;
}
