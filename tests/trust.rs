//! The backend trusts the gateway, and holds no Click key at all: the whole story with the real
//! binary, real SIGHUPs and the Django app of `tests/django` under real gunicorn, importing the
//! shipped `config/django/click_gateway.py`. And the module's refusals, each a way of getting a
//! callback past a backend that trusts the gateway without going through the gateway.

mod common;

use click_gateway::click::sign::{CallbackBody, SignedFields};
use click_gateway::click::Secret;
use click_gateway::trust::{Trust, TrustSecret};
use common::binary::GatewayProcess;
use common::django::{django_saw, Bind, Gunicorn};
use common::*;

/// The key of service 82154, which the gateway lacks at first (the case that started it all).
const KEY_82154: &str = "sekrit-82154-from-click-support";
const SECRET_OLD: &str = "0ld-gateway-backend-secret-0123456789abcdef";
const SECRET_NEW: &str = "n3w-gateway-backend-secret-fedcba9876543210";

fn signed(service_id: &str, key: &str, action: &str, click_trans_id: &str) -> String {
    CallbackBody {
        signed: SignedFields {
            click_trans_id,
            service_id,
            merchant_trans_id: "order-77",
            merchant_prepare_id: (action == "1").then_some("5001"),
            amount: "15000.00",
            action,
            sign_time: "2024-05-01 12:30:45",
        },
        click_paydoc_id: "1",
        error: "0",
        error_note: "Success",
    }
    .encode(&Secret::new(key))
}

const SYNC: &[&str] = &["--worker-class", "sync", "--workers", "2"];

/// A gateway config for `django` with `[trust] secret_file = "trust.secrets"` holding `secrets`.
fn trusting_config(django: &Gunicorn, keys: &str, secrets: &[&str]) -> ConfigDir {
    let config = ConfigDir::with_url(
        &django.upstream_url(),
        keys,
        "",
        "",
        "\n[trust]\nsecret_file = \"trust.secrets\"\n",
    );
    write_secrets(&config.dir.path().join("trust.secrets"), secrets);
    config
}

fn write_secrets(path: &std::path::Path, secrets: &[&str]) {
    write_atomic(
        path,
        &format!("# first one signs\n{}\n", secrets.join("\n")),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_key_is_fixed_by_a_gateway_reload_and_the_backend_is_never_touched() {
    let backend_dir = tempfile::tempdir().unwrap();
    let backend_secrets = backend_dir.path().join("backend.secrets");
    write_secrets(&backend_secrets, &[SECRET_OLD]);
    // The backend holds no Click key, only the gateway's secret; it is bound to a unix
    // socket as gunicorn usually is.
    let django = Gunicorn::keyless(Bind::Unix, SYNC, &backend_secrets).await;
    let config = trusting_config(&django, KEYS_TOML, &[SECRET_OLD]);
    let mut gw = GatewayProcess::start(&config).await;

    // No key for 82154 yet: Click's callbacks are refused by the gateway and reach nobody.
    let prepare = signed("82154", KEY_82154, "0", "3001");
    let answer = callback(gw.addr, "/click/prepare/", &prepare).await.json();
    assert_eq!(answer["error"], -1, "{answer}");
    assert!(django_saw(&django).is_empty());

    // Ops add the key Click support sent, to the gateway alone, and reload it.
    write_atomic(
        &config.dir.path().join("keys.toml"),
        &format!("{KEYS_TOML}[services.82154]\nsecret_keys = [\"{KEY_82154}\"]\n"),
    );
    gw.signal(libc::SIGHUP);
    gw.wait_log(|l| l.contains("reload ok") && l.contains("service 82154 added"))
        .await;

    // Click retries: Prepare and Complete go through, and the backend answers them as paid.
    let answer = callback(gw.addr, "/click/prepare/", &prepare).await.json();
    assert_eq!(answer["error"], 0, "{answer}");
    assert_eq!(answer["merchant_prepare_id"], 5001);
    let complete = signed("82154", KEY_82154, "1", "3001");
    let answer = callback(gw.addr, "/click/complete/", &complete)
        .await
        .json();
    assert_eq!(answer["error"], 0, "{answer}");
    assert_eq!(answer["merchant_confirm_id"], 7001);

    let seen = django_saw(&django);
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (entry, body) in seen.iter().zip([&prepare, &complete]) {
        assert_eq!(entry["verdict"], "attested", "{entry}");
        assert_eq!(entry["verified_header"], "82154");
        assert_eq!(entry["body"], body.as_str());
    }
}

/// A callback POSTed straight to the backend, as an attacker on its network would.
async fn straight(django: &Gunicorn, body: &str, headers: &str) -> serde_json::Value {
    let req = format!(
        "POST /click/prepare/ HTTP/1.1\r\nHost: shop.example\r\nContent-Type: application/x-www-form-urlencoded\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw(django.addr, req.as_bytes()).await.json()
}

fn attestation(secret: &str, t: i64, service_id: u64, body: &str) -> String {
    let trust = Trust {
        secrets: vec![TrustSecret::new(secret)],
    };
    let value = trust.attest(t, service_id, body.as_bytes()).unwrap();
    value.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_module_refuses_what_did_not_come_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("backend.secrets");
    write_secrets(&secrets, &[SECRET_OLD]);
    let django = Gunicorn::keyless(Bind::Tcp, SYNC, &secrets).await;
    let body = signed("12345", KEY_12345, "0", "4001");
    let now = click_gateway::clock::unix_now();
    let attested = |t| attestation(SECRET_OLD, t, 12345, &body);

    // A forged plain header: the backend has no key to fall back on, and refuses.
    let answer = straight(&django, &body, "X-Click-Signature-Verified: 12345\r\n").await;
    assert_eq!(answer["error"], -1, "{answer}");
    // A forged attestation.
    let forged = format!("t={now},v1={}", "0".repeat(64));
    let answer = straight(
        &django,
        &body,
        &format!("X-Click-Signature-Verified: 12345\r\nX-Click-Gateway-Signature: {forged}\r\n"),
    )
    .await;
    assert_eq!(answer["error"], -1, "{answer}");
    // A genuine attestation ten minutes old (a replay): beyond the 5-minute tolerance.
    let stale = attested(now - 600);
    let answer = straight(
        &django,
        &body,
        &format!("X-Click-Signature-Verified: 12345\r\nX-Click-Gateway-Signature: {stale}\r\n"),
    )
    .await;
    assert_eq!(answer["error"], -1, "{answer}");
    // A genuine attestation for another service than the body names.
    let other = attestation(SECRET_OLD, now, 70001, &body);
    let answer = straight(
        &django,
        &body,
        &format!("X-Click-Signature-Verified: 70001\r\nX-Click-Gateway-Signature: {other}\r\n"),
    )
    .await;
    assert_eq!(answer["error"], -1, "{answer}");
    // A genuine, fresh one passes (so the refusals above were about what they changed).
    let fresh = attested(now);
    let answer = straight(
        &django,
        &body,
        &format!("X-Click-Signature-Verified: 12345\r\nX-Click-Gateway-Signature: {fresh}\r\n"),
    )
    .await;
    assert_eq!(answer["error"], 0, "{answer}");
    let verdicts: Vec<_> = django_saw(&django)
        .iter()
        .map(|e| e["verdict"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        verdicts,
        [
            "no key, not attested",
            "no key, not attested",
            "no key, not attested",
            "not through the gateway",
            "attested"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_secret_works_without_restarting_either_side() {
    let dir = tempfile::tempdir().unwrap();
    let backend_secrets = dir.path().join("backend.secrets");
    write_secrets(&backend_secrets, &[SECRET_OLD]);
    let django = Gunicorn::keyless(Bind::Tcp, SYNC, &backend_secrets).await;
    let config = trusting_config(&django, KEYS_TOML, &[SECRET_OLD]);
    let gateway_secrets = config.dir.path().join("trust.secrets");
    let mut gw = GatewayProcess::start(&config).await;
    let mut n = 5000;
    let mut pay = |gw_addr| {
        n += 1;
        let body = signed("12345", KEY_12345, "0", &n.to_string());
        async move { callback(gw_addr, "/click/prepare/", &body).await.json()["error"].clone() }
    };
    assert_eq!(pay(gw.addr).await, 0);
    // 1. The backend learns the new secret (its file is re-read when it changes).
    write_secrets(&backend_secrets, &[SECRET_NEW, SECRET_OLD]);
    assert_eq!(pay(gw.addr).await, 0);
    // 2. The gateway signs with it.
    write_secrets(&gateway_secrets, &[SECRET_NEW, SECRET_OLD]);
    gw.signal(libc::SIGHUP);
    gw.wait_log(|l| l.contains("reload ok")).await;
    assert_eq!(pay(gw.addr).await, 0);
    // 3. The old one is gone from the backend: still fine, the gateway signs with the new one.
    write_secrets(&backend_secrets, &[SECRET_NEW]);
    assert_eq!(pay(gw.addr).await, 0);
    // A gateway still signing with the retired secret would be refused.
    write_secrets(&gateway_secrets, &[SECRET_OLD]);
    gw.signal(libc::SIGHUP);
    gw.wait_log(|l| l.contains("reload ok")).await;
    assert_eq!(pay(gw.addr).await, -1);
    let log = gw.log_text();
    for secret in [SECRET_OLD, SECRET_NEW] {
        assert!(!log.contains(secret), "a trust secret reached the log");
    }
}
