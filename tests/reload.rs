//! Key reload on SIGHUP with the real binary and real signals: nothing in flight fails, a bad
//! file keeps the old keys, the last SIGHUP's file is what gets served, SIGTERM drains.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use click_gateway::click::Secret;
use common::binary::GatewayProcess;
use common::*;

const A: &str = "key-A-old";
const B: &str = "key-B-new";
const C: &str = "key-C-final";

fn keys(key_12345: &[&str]) -> String {
    let list: Vec<String> = key_12345.iter().map(|k| format!("{k:?}")).collect();
    format!(
        "[services.12345]\nsecret_keys = [{}]\n[services.70001]\nsecret_keys = [\"{KEY_70001}\"]\n",
        list.join(", ")
    )
}

fn fp(key: &str) -> String {
    Secret::new(key).fingerprint().to_string()
}

struct Setup {
    up: TestUpstream,
    config: ConfigDir,
    gw: GatewayProcess,
}

impl Setup {
    async fn new(initial: &[&str]) -> Setup {
        let up = TestUpstream::start().await;
        let config = ConfigDir::new(up.addr, &keys(initial), "", "");
        // Every callback's line: the refusals beyond their sender's share of the log (all of
        // these come from one address) are logged at debug.
        let gw = GatewayProcess::start_with_env(
            &config,
            &[("RUST_LOG", "info,click_gateway::outcome=debug")],
        )
        .await;
        Setup { up, config, gw }
    }

    fn keys_path(&self) -> std::path::PathBuf {
        self.config.dir.path().join("keys.toml")
    }

    async fn verdict_for(&self, key: &str, id: u64) -> Verdict {
        let resp = callback(
            self.gw.addr,
            "/click/prepare/",
            &prepare_signed_with(key, "12345", id),
        )
        .await;
        verdict(resp.status, &resp.body)
    }

    /// SIGHUP, then wait until the reload that installs `key` as slot 0 of 12345 is logged.
    async fn reload_to(&mut self, key: &str) {
        self.gw.signal(libc::SIGHUP);
        let want = format!("-> {}", fp(key));
        self.gw
            .wait_log(|l| l.contains("reload ok") && l.contains(&want))
            .await;
    }
}

/// Sends a callback with its own request id and classifies the answer.
async fn send_traced(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    id: &str,
    body: &str,
) -> Verdict {
    use http_body_util::BodyExt;
    sender.ready().await.expect("connection closed");
    let mut req = callback_request("/click/prepare/", body);
    req.headers_mut()
        .insert("x-request-id", id.parse().unwrap());
    let resp = tokio::time::timeout(PATIENCE, sender.send_request(req))
        .await
        .expect("no answer in time")
        .expect("request failed");
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body failed")
        .to_bytes();
    verdict(status, &body)
}

/// The fingerprints of service 12345's keys in each generation, from the `reload ok` lines
/// (generation 1 is the startup's).
fn generations(log: &str, initial: &str) -> std::collections::BTreeMap<u64, String> {
    let mut by_generation = std::collections::BTreeMap::from([(1, fp(initial))]);
    let mut current = fp(initial);
    for line in log.lines().filter(|l| l.contains("reload ok: generation ")) {
        let generation: u64 = line
            .split("reload ok: generation ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .expect("a reload line names its generation");
        if let Some(change) = line.split("service 12345: ").nth(1) {
            let to = change.split(" -> ").nth(1).expect("old -> new");
            current = to.split('"').next().unwrap().to_owned();
        }
        by_generation.insert(generation, current.clone());
    }
    by_generation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundreds_of_reloads_under_load_lose_nothing() {
    let mut s = Setup::new(&[A]).await;
    let addr = s.gw.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..4u64 {
        let (stop, sent) = (stop.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            let keep_alive = c % 2 == 0;
            let mut conn = h1_connect(addr).await;
            let mut i = 0u64;
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let key = if i.is_multiple_of(2) { A } else { B };
                if !keep_alive {
                    conn = h1_connect(addr).await;
                }
                let id = format!("storm-{c}-{i}");
                // Panics (failing the test) on any error, reset, 5xx or unexpected answer.
                let v = send_traced(
                    &mut conn,
                    &id,
                    &prepare_signed_with(key, "12345", c * 1_000_000 + i),
                )
                .await;
                seen.push((id, key, v));
                sent.fetch_add(1, Ordering::Relaxed);
            }
            seen
        }));
    }
    // Flip the service between key sets with atomic replacements: first one reload per SIGHUP
    // (waiting for READY=1 each time), then a burst that tokio coalesces.
    for round in 0..200 {
        write_atomic(
            &s.keys_path(),
            &keys(if round % 2 == 0 { &[B] } else { &[A] }),
        );
        s.gw.signal(libc::SIGHUP);
        assert!(s.gw.next_notify().await.starts_with("RELOADING=1"));
        assert!(s
            .gw
            .next_notify()
            .await
            .starts_with("READY=1\nSTATUS=serving generation"));
    }
    for round in 0..200 {
        write_atomic(
            &s.keys_path(),
            &keys(if round % 2 == 0 { &[B] } else { &[A] }),
        );
        s.gw.signal(libc::SIGHUP);
    }
    // The final state: a key never used before, so its reload line is unambiguous.
    write_atomic(&s.keys_path(), &keys(&[C]));
    s.reload_to(C).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for c in clients {
        seen.extend(c.await.expect("a client saw an error, a reset or a 5xx"));
    }
    assert_eq!(seen.len() as u64, sent.load(Ordering::Relaxed));
    // The last lines may still be in the pipe from the process: wait for every callback's.
    let ids_logged = |log: &str| -> std::collections::HashSet<String> {
        log.lines()
            .filter_map(|l| {
                Some(
                    l.split("request_id=\"")
                        .nth(1)?
                        .split('"')
                        .next()?
                        .to_owned(),
                )
            })
            .collect()
    };
    let logged = ids_logged(&s.gw.log_text());
    for (id, _, _) in &seen {
        if !logged.contains(id) {
            s.gw.wait_logged(&format!("request_id=\"{id}\"")).await;
        }
    }
    let log = s.gw.log_text();
    assert!(!log.contains("reload failed"), "{log}");
    // Every verdict is the one the keys of the generation that judged it give: the log line
    // of each callback names its generation, the reload lines say what each one held.
    let keys_of = generations(&log, A);
    let judged_by: std::collections::HashMap<&str, u64> = log
        .lines()
        .filter(|l| l.contains("callback "))
        .filter_map(|l| {
            let id = l.split("request_id=\"").nth(1)?.split('"').next()?;
            let generation = l
                .split("generation=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            Some((id, generation))
        })
        .collect();
    let mut generations_seen = std::collections::BTreeSet::new();
    for (id, key, v) in &seen {
        let generation = judged_by[id.as_str()];
        generations_seen.insert(generation);
        let fp_in_force = &keys_of[&generation];
        let want = if *fp_in_force == fp(key) {
            Verdict::Forwarded
        } else {
            Verdict::SignRejected
        };
        assert_eq!(
            *v, want,
            "{id} signed with {key} under generation {generation} ({fp_in_force})"
        );
    }
    // The load really overlapped the reloads: callbacks were judged by many key generations.
    assert!(
        generations_seen.len() >= 5,
        "callbacks saw only generations {generations_seen:?}"
    );
    // After the last reload only the final key verifies.
    assert_eq!(s.verdict_for(C, 1).await, Verdict::Forwarded);
    assert_eq!(s.verdict_for(A, 2).await, Verdict::SignRejected);
    assert_eq!(s.verdict_for(B, 3).await, Verdict::SignRejected);
    while s.up.try_next().is_some() {}
}

#[tokio::test]
async fn a_broken_file_keeps_the_old_keys_and_the_process_alive() {
    let mut s = Setup::new(&[A]).await;
    for broken in [
        "[services.12345]\nsecret_keys = [\"unterminated\n",
        "",
        "[services.12345]\nsecret_keys = [\"\"]\n",
        "[services.12345]\nsecret_keys = [\" padded \"]\n",
    ] {
        write_atomic(&s.keys_path(), broken);
        s.gw.signal(libc::SIGHUP);
        assert!(s
            .gw
            .next_notify()
            .await
            .starts_with("RELOADING=1\nMONOTONIC_USEC="));
        assert_eq!(
            s.gw.next_notify().await,
            "READY=1\nSTATUS=last reload failed; previous configuration in force\n"
        );
        let line = s.gw.wait_log(|l| l.contains("reload failed")).await;
        assert!(
            line.contains("previous keys and settings stay in force"),
            "{line}"
        );
        assert_eq!(
            s.verdict_for(A, 1).await,
            Verdict::Forwarded,
            "after {broken:?}"
        );
    }
    let log = s.gw.log_text();
    assert!(log.contains("keys.toml: line 2, column"), "{log}");
    assert!(log.contains("defines no [services.<id>]"), "{log}");
    assert!(
        log.contains("services.12345.secret_keys[0]: the key is empty"),
        "{log}"
    );
    assert!(
        !log.contains("padded") && !log.contains("unterminated"),
        "a key reached the log:\n{log}"
    );

    let admin = s.gw.admin_addr.unwrap();
    let m = scrape(admin).await;
    assert_eq!(
        m.get("click_gateway_reloads_total{result=\"failure\"}"),
        Some(&4.0)
    );
    assert_eq!(m.get("click_gateway_config_generation"), Some(&1.0));

    write_atomic(&s.keys_path(), &keys(&[B]));
    s.reload_to(B).await;
    assert_eq!(s.verdict_for(B, 2).await, Verdict::Forwarded);
    assert_eq!(s.verdict_for(A, 3).await, Verdict::SignRejected);
    let m = scrape(admin).await;
    assert_eq!(
        m.get("click_gateway_reloads_total{result=\"success\"}"),
        Some(&1.0)
    );
    assert_eq!(m.get("click_gateway_config_generation"), Some(&2.0));
    assert!(m["click_gateway_last_reload_success_timestamp_seconds"] > 1.7e9);
}

#[tokio::test]
async fn atomic_replacement_and_in_place_edits_both_reload() {
    let mut s = Setup::new(&[A]).await;
    write_atomic(&s.keys_path(), &keys(&[B, A]));
    s.reload_to(B).await;
    assert_eq!(s.verdict_for(B, 1).await, Verdict::Forwarded);
    assert_eq!(
        s.verdict_for(A, 2).await,
        Verdict::Forwarded,
        "slot 1 still verifies"
    );
    let line = s.gw.wait_log(|l| l.contains("callback verified")).await;
    assert!(line.contains("slot=0"), "{line}");
    let line = s.gw.wait_log(|l| l.contains("callback verified")).await;
    assert!(line.contains("slot=1"), "{line}");

    // In place: truncate and rewrite the same inode.
    std::fs::write(s.keys_path(), keys(&[C])).unwrap();
    s.reload_to(C).await;
    assert_eq!(s.verdict_for(C, 3).await, Verdict::Forwarded);
    assert_eq!(s.verdict_for(B, 4).await, Verdict::SignRejected);
    let log = s.gw.log_text();
    assert!(
        log.contains(&format!("service 12345: {},{} -> {}", fp(B), fp(A), fp(C))),
        "{log}"
    );
}

#[tokio::test]
async fn a_keep_alive_connection_opened_before_a_reload_keeps_working() {
    let mut s = Setup::new(&[A]).await;
    let mut conn = h1_connect(s.gw.addr).await;
    assert_eq!(
        send_callback(&mut conn, &prepare_signed_with(A, "12345", 1)).await,
        Verdict::Forwarded
    );
    write_atomic(&s.keys_path(), &keys(&[B]));
    s.reload_to(B).await;
    assert_eq!(
        send_callback(&mut conn, &prepare_signed_with(B, "12345", 2)).await,
        Verdict::Forwarded
    );
    assert_eq!(
        send_callback(&mut conn, &prepare_signed_with(A, "12345", 3)).await,
        Verdict::SignRejected
    );
}

#[tokio::test]
async fn sd_notify_reports_ready_reloading_and_stopping() {
    let mut s = Setup::new(&[A]).await;
    write_atomic(&s.keys_path(), &keys(&[B]));
    s.gw.signal(libc::SIGHUP);
    let reloading = s.gw.next_notify().await;
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|r| r.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("{reloading:?}"));
    assert!(usec > 0);
    assert_eq!(
        s.gw.next_notify().await,
        "READY=1\nSTATUS=serving generation 2\n"
    );
    s.gw.signal(libc::SIGTERM);
    assert_eq!(s.gw.next_notify().await, "STOPPING=1\nSTATUS=draining\n");
    assert_eq!(s.gw.wait_exit().await, Some(0));
}

#[tokio::test]
async fn sigterm_lets_a_slow_request_finish_then_exits_0() {
    let mut s = Setup::new(&[A]).await;
    let addr = s.gw.addr;
    let slow = tokio::spawn(async move {
        raw(
            addr,
            b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    assert_eq!(
        s.up.next().await.uri,
        "/slow",
        "the slow request is in flight"
    );
    s.gw.signal(libc::SIGTERM);
    s.gw.wait_log(|l| l.contains("draining connections=1"))
        .await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after the drain began"
    );
    s.up.release();
    let resp = slow.await.unwrap();
    assert_eq!((resp.status, resp.text().as_str()), (200, "slow done"));
    assert_eq!(s.gw.wait_exit().await, Some(0));
    assert!(s.gw.log_text().contains("all connections drained"));
}

#[tokio::test]
async fn a_reload_applies_click_settings_and_says_which_need_a_restart() {
    let mut s = Setup::new(&[A]).await;
    let path = s.config.path();
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = text
        .replace("[click]\n", "[click]\npaths = [\"/pay/click/\"]\n")
        .replace("[server]\n", "[server]\nheader_read_timeout = \"9s\"\n");
    assert_ne!(changed, text);
    write_atomic(&path, &changed);
    s.gw.signal(libc::SIGHUP);
    let line = s.gw.wait_log(|l| l.contains("reload ok")).await;
    assert!(
        line.contains("click.paths: /click/prepare/ /click/complete/ -> /pay/click/"),
        "{line}"
    );
    s.gw.wait_log(|l| l.contains("[server] settings changed: they apply only after a restart"))
        .await;
    // The guard's window (its index is built at start) says so too.
    let windowed = format!("{changed}\n[guard]\nwindow = \"1d\"\n");
    write_atomic(&path, &windowed);
    s.gw.signal(libc::SIGHUP);
    s.gw.wait_log(|l| l.contains("guard.window changed: it applies only after a restart"))
        .await;
    // The new path is a callback path; the old one is now ordinary traffic.
    let resp = callback(
        s.gw.addr,
        "/pay/click/",
        &prepare_signed_with(B, "12345", 1),
    )
    .await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::SignRejected);
    let resp = callback(
        s.gw.addr,
        "/click/prepare/",
        &prepare_signed_with(B, "12345", 2),
    )
    .await;
    assert_eq!(verdict(resp.status, &resp.body), Verdict::Forwarded);
    let got = s.up.next().await;
    assert_eq!(got.uri, "/click/prepare/");
    assert_eq!(
        got.header("x-click-signature-verified"),
        None,
        "not verified, only proxied"
    );
}

#[tokio::test]
async fn sigterm_closes_what_outlives_the_drain_deadline_and_exits_0() {
    let mut up = TestUpstream::start().await;
    let config = ConfigDir::new(up.addr, &keys(&[A]), "drain_timeout = \"300ms\"", "");
    let mut gw = GatewayProcess::start(&config).await;
    let addr = gw.addr;
    let stuck = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        buf
    });
    assert_eq!(up.next().await.uri, "/slow");
    gw.signal(libc::SIGTERM);
    assert_eq!(gw.wait_exit().await, Some(0));
    assert!(gw
        .log_text()
        .contains("drain deadline passed; closing remaining connections"));
    let got = tokio::time::timeout(PATIENCE, stuck)
        .await
        .unwrap()
        .unwrap();
    assert!(
        got.is_empty(),
        "the request never finished, so nothing was answered"
    );
}
