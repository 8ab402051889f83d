//! HTTPS with certificates generated in the test (rcgen): HTTP/1.1 and HTTP/2 by ALPN, real
//! curl against the real binary, certificate reload on SIGHUP, and the handshake deadline.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::binary::GatewayProcess;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

/// A test CA that issues server certificates.
struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A server certificate (PEM chain) and its key (PEM).
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "click-gateway test CA");
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf_valid_for(&self, days: i64) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        // Half a day more, so "expires in N days" does not depend on when the test runs.
        params.not_after = now + time::Duration::days(days) + time::Duration::hours(12);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn leaf(&self) -> Leaf {
        self.leaf_valid_for(90)
    }

    fn client(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

fn write_pair(dir: &Path, leaf: &Leaf) {
    std::fs::write(dir.join("cert.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &leaf.key_pem).unwrap();
}

fn tls_config(upstream: SocketAddr, pki_leaf: &Leaf, extra: &str) -> ConfigDir {
    let config = ConfigDir::new(
        upstream,
        KEYS_TOML,
        &format!(
            "tls_listen = \"127.0.0.1:0\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n{extra}"
        ),
        "",
    );
    write_pair(config.dir.path(), pki_leaf);
    config
}

async fn tls_connect(
    pki: &Pki,
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    pki.client(alpn)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

fn peer_leaf(stream: &TlsStream<tokio::net::TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

#[tokio::test]
async fn callbacks_over_https_with_http1_and_http2() {
    let pki = Pki::new();
    let mut up = TestUpstream::start().await;
    let gw = TestGateway::start_with(tls_config(up.addr, &pki.leaf(), "")).await;
    let tls_addr = gw.tls_addr.unwrap();

    // HTTP/1.1 chosen by ALPN.
    let stream = tls_connect(&pki, tls_addr, &[b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(send_callback(&mut h1, V1).await, Verdict::Forwarded);
    let got = up.next().await;
    assert_eq!(got.body, V1.as_bytes());
    assert_eq!(got.header("x-forwarded-proto"), Some("https"));
    assert_eq!(got.all("x-click-signature-verified"), ["12345"]);
    assert_eq!(got.header("host"), Some("shop.example"));

    // HTTP/2 chosen by ALPN; the host travels as :authority, not as a Host header.
    let stream = tls_connect(&pki, tls_addr, &[b"h2", b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) = hyper::client::conn::http2::handshake(executor(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for (body, want) in [
        (V2, Verdict::Forwarded),
        (
            &*V1.replace("sign_string=4c", "sign_string=00"),
            Verdict::SignRejected,
        ),
    ] {
        let req = hyper::Request::post("https://shop.example/click/complete/")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let resp = h2.send_request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(verdict(status, &bytes), want);
    }
    let got = up.next().await;
    assert_eq!(got.body, V2.as_bytes());
    assert_eq!(
        got.header("host"),
        Some("shop.example"),
        "Host taken from :authority"
    );
    assert_eq!(got.header("x-forwarded-proto"), Some("https"));
    assert_eq!(got.all("x-click-signature-verified"), ["12345"]);
    assert!(up.try_next().is_none());
    gw.stop().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_dropped() {
    let pki = Pki::new();
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_with(tls_config(
        up.addr,
        &pki.leaf(),
        "tls_handshake_timeout = \"200ms\"\n",
    ))
    .await;
    let tls_addr = gw.tls_addr.unwrap();
    for opening in [
        &b""[..],
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
    ] {
        let mut s = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
        s.write_all(opening).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .expect("the gateway kept a stalled handshake open")
            .unwrap_or(0);
        assert_eq!(n, 0, "expected the connection to be closed");
    }
    let m = scrape(gw.admin_addr).await;
    assert_eq!(
        m.get("click_gateway_tls_handshake_failures_total{reason=\"timeout\"}"),
        Some(&2.0)
    );
    // Meanwhile a real client still gets through.
    let stream = tls_connect(&pki, tls_addr, &[b"http/1.1"]).await;
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(send_callback(&mut h1, V1).await, Verdict::Forwarded);
    gw.stop().await;
}

#[tokio::test]
async fn curl_with_cacert_against_the_binary_and_certificate_reload() {
    let pki = Pki::new();
    let mut up = TestUpstream::start().await;
    let first = pki.leaf();
    let config = tls_config(up.addr, &first, "");
    let ca = config.dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let mut gw = GatewayProcess::start(&config).await;
    let tls_addr = gw.tls_addr.expect("an https listener");

    let port = tls_addr.port();
    let curl = |extra: &[&str]| {
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args(["-sS", "--cacert"])
            .arg(&ca)
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(extra)
            .arg(format!("https://localhost:{port}/click/prepare/"));
        cmd.output()
    };
    let out = curl(&["--http2", "-w", "\n%{http_version}", "--data-binary", V1])
        .await
        .expect("curl installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text, "{\"error\":0,\"upstream\":true}\n2",
        "verified over HTTP/2"
    );
    assert_eq!(up.next().await.header("x-forwarded-proto"), Some("https"));
    let out = curl(&["--http1.1", "--data-binary", V1]).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"error\":0,\"upstream\":true}"
    );
    up.next().await;

    // A connection opened before the swap.
    let old = tls_connect(&pki, tls_addr, &[b"http/1.1"]).await;
    assert_eq!(peer_leaf(&old), first.der);
    let (mut old_conn, conn) = hyper::client::conn::http1::handshake(TokioIo::new(old))
        .await
        .unwrap();
    tokio::spawn(conn);

    let second = pki.leaf();
    write_pair(config.dir.path(), &second);
    gw.signal(libc::SIGHUP);
    let line = gw.wait_log(|l| l.contains("reload ok")).await;
    assert!(line.contains("certificate: localhost, 127.0.0.1"), "{line}");
    let fresh = tls_connect(&pki, tls_addr, &[b"http/1.1"]).await;
    assert_eq!(
        peer_leaf(&fresh),
        second.der,
        "new handshakes get the new certificate"
    );
    assert_eq!(
        send_callback(&mut old_conn, V1).await,
        Verdict::Forwarded,
        "the open connection keeps working"
    );
    up.next().await;

    // A key that does not match the certificate: the reload fails, the current one stays.
    let third = pki.leaf();
    std::fs::write(config.dir.path().join("cert.pem"), &third.cert_pem).unwrap();
    gw.signal(libc::SIGHUP);
    let line = gw
        .wait_log(|l| l.contains("key.pem") && l.contains("reload"))
        .await;
    assert!(
        line.contains("the private key does not match the certificate"),
        "{line}"
    );
    gw.wait_log(|l| l.contains("reload failed")).await;
    let fresh = tls_connect(&pki, tls_addr, &[b"http/1.1"]).await;
    assert_eq!(peer_leaf(&fresh), second.der);

    // An expired certificate is refused the same way.
    let expired = pki.leaf_valid_for(-1);
    write_pair(config.dir.path(), &expired);
    gw.signal(libc::SIGHUP);
    let line = gw
        .wait_log(|l| l.contains("cert.pem") && l.contains("expired"))
        .await;
    assert!(line.contains("the certificate expired on"), "{line}");
    gw.wait_log(|l| l.contains("reload failed")).await;
    let fresh = tls_connect(&pki, tls_addr, &[b"http/1.1"]).await;
    assert_eq!(peer_leaf(&fresh), second.der);
    assert!(
        !gw.log_text().contains("PRIVATE KEY"),
        "key material in the log"
    );
}

#[test]
fn check_reports_the_certificate_and_its_problems() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let leaf = pki.leaf_valid_for(5);
    write_pair(dir.path(), &leaf);
    std::fs::write(dir.path().join("keys.toml"), KEYS_TOML).unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        "[server]\ntls_listen = \"127.0.0.1:0\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n[click]\nkeys_file = \"keys.toml\"\n",
    )
    .unwrap();
    let check = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_click-gateway"))
            .args(["check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let out = check();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(
            "listen (https)  127.0.0.1:0, certificate localhost, 127.0.0.1 (chain of 1), expires"
        ),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning:") && stderr.contains("the certificate expires in 5 day(s)"),
        "{stderr}"
    );

    // Mismatched key, then a missing key file.
    std::fs::write(dir.path().join("key.pem"), pki.leaf().key_pem).unwrap();
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("key.pem: the private key does not match the certificate"),
        "{stderr}"
    );
    std::fs::remove_file(dir.path().join("key.pem")).unwrap();
    let stderr = String::from_utf8_lossy(&check().stderr).into_owned();
    assert!(
        stderr.contains("key.pem: cannot read the private key"),
        "{stderr}"
    );
}

#[test]
fn certs_generate_script_makes_a_pair_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("generate.sh");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/certs/generate.sh"),
        &script,
    )
    .unwrap();
    let out = std::process::Command::new("bash")
        .arg(&script)
        .args(["localhost", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = dir.path().join("server.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o077,
        0,
        "key readable by others"
    );
    let (material, warnings) =
        click_gateway::config::tls::load(&dir.path().join("server.pem"), &key)
            .expect("a valid pair");
    assert_eq!(material.names, ["localhost", "127.0.0.1"]);
    assert_eq!(material.chain_len, 2);
    assert!(warnings.is_empty(), "{warnings:?}");
}
