//! Shared by the integration tests: a real HTTP upstream that records what it receives, the
//! gateway started in-process on `127.0.0.1:0`, and a raw HTTP/1.1 client that sends exactly
//! the bytes it is given.
#![allow(dead_code)]

pub mod binary;
pub mod django;
pub mod ledger;
pub mod postgres;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use click_gateway::config::{self, Environment};
use click_gateway::server::{self, ConnSettings};
use click_gateway::Gateway;

/// The made-up key of the protocol's test vectors V1, V2, V4 (service 12345).
pub const KEY_12345: &str = "TEST_SECRET_aB3dE5";
/// The made-up key of vector V3 (service 70001).
pub const KEY_70001: &str = "fake+key/with=chars&x";

pub const V1: &str = "click_trans_id=2103045678&service_id=12345&click_paydoc_id=3302114455&merchant_trans_id=order-1001&amount=1000.00&action=0&error=0&error_note=Success&sign_time=2024-05-01+12%3A30%3A45&sign_string=4c30b2304e2d17ef17eec7d8710e914c";
pub const V2: &str = "click_trans_id=2103045678&service_id=12345&click_paydoc_id=3302114455&merchant_trans_id=order-1001&merchant_prepare_id=5001&amount=1000.00&action=1&error=0&error_note=Success&sign_time=2024-05-01+12%3A31%3A02&sign_string=4b240e5966f8ea8ce6b654c14de08f7a";

pub const KEYS_TOML: &str = "[services.12345]\nsecret_keys = [\"TEST_SECRET_aB3dE5\"]\n[services.70001]\nsecret_keys = [\"fake+key/with=chars&x\"]\n";

/// Every secret any test configures. Each test that runs a gateway scans the logs it
/// produced (in-process through [`captured_logs`], or the binary's stderr) for all of them.
pub const TEST_SECRETS: &[&str] = &[
    KEY_12345,
    KEY_70001,
    "key-A-old",
    "key-B-new",
    "key-C-final",
    "sekrit",
    postgres::PG_PASSWORD,
];

/// Fails the test if `log` contains a configured secret.
pub fn assert_no_secrets(log: &str) {
    for secret in TEST_SECRETS {
        if let Some(line) = log.lines().find(|l| l.contains(secret)) {
            panic!("a secret reached the log: {line}");
        }
    }
}

/// The in-process gateway's log lines of this test binary so far (all tests share it).
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap()).into_owned()
}

static LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends the gateway's tracing output (debug and up) to [`captured_logs`], once per binary.
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use tracing_subscriber::prelude::*;
        let filter: tracing_subscriber::filter::Targets = "click_gateway=debug".parse().unwrap();
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(|| LogSink),
            )
            .try_init();
    });
}

/// Upper bound on any single wait in a test, so a bug fails the test instead of hanging it.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Waits until `condition` holds (checked every few milliseconds), for state the gateway
/// exposes only as a value (a metric, a budget); fails the test after [`PATIENCE`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The gateway's end of the connection the request came on.
    pub peer: SocketAddr,
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    /// In arrival order, repeated names kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A real HTTP/1.1 server on 127.0.0.1:0 that records every request and answers by path:
/// - `/hop`: a response carrying hop-by-hop headers;
/// - `/stream`: sends a first chunk, then the rest once the test releases it;
/// - `/slow`: answers only once the test releases it;
/// - `/big-head`: a response with 20 KB of headers;
/// - `/big`: a 64 MiB body, streamed in 64 KiB pieces (more than any socket buffer holds);
/// - anything else: `200 application/json` `{"error":0,"upstream":true}`.
pub struct TestUpstream {
    pub addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<Recorded>,
    release: mpsc::UnboundedSender<()>,
}

impl TestUpstream {
    pub async fn start() -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = mpsc::unbounded_channel();
        let (release, release_rx) = mpsc::unbounded_channel::<()>();
        let release_rx = Arc::new(tokio::sync::Mutex::new(release_rx));
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                let release_rx = release_rx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let tx = tx.clone();
                        let release_rx = release_rx.clone();
                        async move { Ok::<_, Infallible>(answer(peer, req, tx, release_rx).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TestUpstream {
            addr,
            requests,
            release,
        }
    }

    /// The next request the upstream received.
    pub async fn next(&mut self) -> Recorded {
        tokio::time::timeout(PATIENCE, self.requests.recv())
            .await
            .expect("upstream received nothing")
            .expect("upstream stopped")
    }

    /// A request already received, if any (use after the gateway has answered).
    pub fn try_next(&mut self) -> Option<Recorded> {
        self.requests.try_recv().ok()
    }

    /// Lets a `/stream` response finish.
    pub fn release(&self) {
        let _ = self.release.send(());
    }
}

type Release = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>>;
type TestBody = http_body_util::Either<Full<Bytes>, ChannelBody>;

async fn answer(
    peer: SocketAddr,
    req: Request<Incoming>,
    tx: mpsc::UnboundedSender<Recorded>,
    release: Release,
) -> Response<TestBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let _ = tx.send(Recorded {
        peer,
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: parts.version,
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    });
    match path.as_str() {
        "/hop" => Response::builder()
            .header("connection", "x-hop-a")
            .header("connection", "x-hop-b")
            .header("x-hop-a", "1")
            .header("x-hop-b", "2")
            .header("keep-alive", "timeout=5")
            .header("x-kept", "3")
            .body(http_body_util::Either::Left(Full::new(Bytes::from_static(
                b"hop",
            ))))
            .unwrap(),
        "/big-head" => Response::builder()
            .header("content-security-policy", "x".repeat(20_000))
            .body(http_body_util::Either::Left(Full::new(Bytes::from_static(
                b"big",
            ))))
            .unwrap(),
        "/big" => {
            let (tx, rx) = mpsc::channel::<Bytes>(2);
            tokio::spawn(async move {
                let piece = Bytes::from(vec![b'b'; 64 * 1024]);
                for _ in 0..BIG_PIECES {
                    if tx.send(piece.clone()).await.is_err() {
                        return;
                    }
                }
            });
            Response::builder()
                .header("content-length", (BIG_PIECES * 64 * 1024).to_string())
                .body(http_body_util::Either::Right(ChannelBody(rx)))
                .unwrap()
        }
        "/slow" => {
            let _ = release.lock().await.recv().await;
            Response::builder()
                .body(http_body_util::Either::Left(Full::new(Bytes::from_static(
                    b"slow done",
                ))))
                .unwrap()
        }
        "/stream" => {
            let (tx, rx) = mpsc::channel::<Bytes>(2);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first;")).await;
                let _ = release.lock().await.recv().await;
                let _ = tx.send(Bytes::from_static(b"rest")).await;
            });
            Response::builder()
                .body(http_body_util::Either::Right(ChannelBody(rx)))
                .unwrap()
        }
        _ => Response::builder()
            .header("content-type", "application/json")
            .body(http_body_util::Either::Left(Full::new(Bytes::from_static(
                b"{\"error\":0,\"upstream\":true}",
            ))))
            .unwrap(),
    }
}

/// Pieces of 64 KiB in a `/big` response.
pub const BIG_PIECES: usize = 1024;

/// A body fed frame by frame from a channel (a request body that never arrives, when the
/// sender is kept and never used).
pub struct ChannelBody(mpsc::Receiver<Bytes>);

impl ChannelBody {
    pub fn new(rx: mpsc::Receiver<Bytes>) -> ChannelBody {
        ChannelBody(rx)
    }
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// A listener that accepts connections and never answers.
pub async fn silent_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

/// An address nothing listens on (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A configuration directory with `gateway.toml` and `keys.toml`.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
}

impl ConfigDir {
    /// The `*_extra` strings are settings added to their sections of gateway.toml.
    pub fn new(
        upstream: SocketAddr,
        keys_toml: &str,
        server_extra: &str,
        upstream_extra: &str,
    ) -> ConfigDir {
        Self::with_click(upstream, keys_toml, server_extra, upstream_extra, "")
    }

    /// The test keys and a SQLite ledger at `ledger.db` beside the config, defaults elsewhere.
    pub fn with_ledger(upstream: SocketAddr) -> ConfigDir {
        Self::with_click(
            upstream,
            KEYS_TOML,
            "",
            "",
            "[ledger]\ndatabase = \"ledger.db\"\n",
        )
    }

    /// As [`ConfigDir::new`], with settings for the `[click]` section too.
    pub fn with_click(
        upstream: SocketAddr,
        keys_toml: &str,
        server_extra: &str,
        upstream_extra: &str,
        click_extra: &str,
    ) -> ConfigDir {
        Self::with_url(
            &format!("http://{upstream}"),
            keys_toml,
            server_extra,
            upstream_extra,
            click_extra,
        )
    }

    /// As [`ConfigDir::with_click`], with the backend given as its `upstream.url`
    /// (`unix:/path` included). Settings of other sections may follow `click_extra` after
    /// their own `[section]` line.
    pub fn with_url(
        upstream_url: &str,
        keys_toml: &str,
        server_extra: &str,
        upstream_extra: &str,
        click_extra: &str,
    ) -> ConfigDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keys.toml"), keys_toml).unwrap();
        std::fs::write(
            dir.path().join("gateway.toml"),
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n[upstream]\nurl = \"{upstream_url}\"\n{upstream_extra}\n[admin]\nlisten = \"127.0.0.1:0\"\n[click]\nkeys_file = \"keys.toml\"\n{click_extra}"
            ),
        )
        .unwrap();
        ConfigDir { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }
}

/// The real gateway, in-process, on an ephemeral port.
pub struct TestGateway {
    pub addr: SocketAddr,
    /// The admin listener (`/live`, `/ready`, `/metrics`).
    pub admin_addr: SocketAddr,
    /// The HTTPS listener, when the configuration has one.
    pub tls_addr: Option<SocketAddr>,
    pub gateway: Arc<Gateway>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _config: ConfigDir,
}

impl TestGateway {
    pub async fn start(upstream: SocketAddr) -> TestGateway {
        Self::start_with(ConfigDir::new(upstream, KEYS_TOML, "", "")).await
    }

    pub async fn start_with(config: ConfigDir) -> TestGateway {
        capture_logs();
        let loaded =
            config::load(&config.path(), &Environment::default()).expect("test config loads");
        let srv = &loaded.settings.server;
        let listener =
            server::bind("server.listen", srv.listen.unwrap(), srv.listen_backlog).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut listeners = vec![server::Listener::plain(listener)];
        let mut tls_addr = None;
        if let (Some(at), Some(tls)) = (srv.tls_listen, &loaded.tls) {
            let resolver = server::tls::CertResolver::new(tls.certified.clone());
            let acceptor = server::tls::acceptor(resolver).unwrap();
            let tcp = server::bind("server.tls_listen", at, srv.listen_backlog).unwrap();
            tls_addr = Some(tcp.local_addr().unwrap());
            let tls = server::TlsListener::new(
                acceptor,
                srv.tls_handshake_timeout.0,
                srv.max_tls_handshakes,
            );
            listeners.push(server::Listener::tls(tcp, tls));
        }
        let gateway = Arc::new(Gateway::new(&loaded).expect("the ledger opens"));
        let admin = server::bind(
            "admin.listen",
            loaded.settings.admin.listen,
            server::DEFAULT_BACKLOG,
        )
        .unwrap();
        let admin_addr = admin.local_addr().unwrap();
        // Serves until the test's runtime ends, so /ready can be read during a drain.
        tokio::spawn(click_gateway::admin::run(
            admin,
            gateway.clone(),
            std::future::pending(),
        ));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(
            listeners,
            gateway.clone(),
            ConnSettings::from(&loaded.settings.server),
            async move {
                let _ = rx.await;
            },
        ));
        TestGateway {
            addr,
            admin_addr,
            tls_addr,
            gateway,
            shutdown: Some(tx),
            task: Some(task),
            _config: config,
        }
    }

    /// Stops accepting and waits for the drain to finish; then checks the logs for secrets.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
        }
    }

    /// Starts the drain without waiting for it.
    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_no_secrets(&captured_logs());
        }
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A TCP connection to `addr` from `ip`: every 127.0.0.0/8 address is this machine, so each
/// stands in for another client machine.
pub async fn connect_from(ip: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip.parse().unwrap(), 0))?;
    socket.connect(addr).await
}

/// Writes `request` verbatim on a fresh connection and reads one response (the request should
/// carry `Connection: close`, or the server must close after answering).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    raw_from("127.0.0.1", addr, request).await
}

/// [`raw`], from another address (see [`connect_from`]).
pub async fn raw_from(ip: &str, addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = connect_from(ip, addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf))
        .await
        .expect("no answer in time")
        .unwrap();
    parse_response(&buf)
}

/// A POST with the given body and content type, `Connection: close`.
pub async fn post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> RawResponse {
    post_from("127.0.0.1", addr, path, content_type, body).await
}

/// [`post`], from another address (see [`connect_from`]).
pub async fn post_from(
    ip: &str,
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> RawResponse {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: shop.example\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    raw_from(ip, addr, &req).await
}

/// A urlencoded callback POST.
pub async fn callback(addr: SocketAddr, path: &str, body: &str) -> RawResponse {
    callback_from("127.0.0.1", addr, path, body).await
}

/// [`callback`], from another address (see [`connect_from`]).
pub async fn callback_from(ip: &str, addr: SocketAddr, path: &str, body: &str) -> RawResponse {
    post_from(
        ip,
        addr,
        path,
        "application/x-www-form-urlencoded",
        body.as_bytes(),
    )
    .await
}

pub fn parse_response(buf: &[u8]) -> RawResponse {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let raw_body = &buf[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(raw_body)
    } else {
        raw_body.to_vec()
    };
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Signs a prepare body for service 12345 with its test key.
pub fn signed_prepare(click_trans_id: u64, merchant_trans_id: &str, amount: &str) -> String {
    use click_gateway::click::sign::{CallbackBody, SignedFields};
    let id = click_trans_id.to_string();
    CallbackBody {
        signed: SignedFields {
            click_trans_id: &id,
            service_id: "12345",
            merchant_trans_id,
            merchant_prepare_id: None,
            amount,
            action: "0",
            sign_time: "2024-05-01 12:30:45",
        },
        click_paydoc_id: "1",
        error: "0",
        error_note: "Success",
    }
    .encode(&click_gateway::click::Secret::new(KEY_12345))
}

pub fn executor() -> TokioExecutor {
    TokioExecutor::new()
}

/// Signs a prepare body for `service_id` with `key`.
pub fn prepare_signed_with(key: &str, service_id: &str, click_trans_id: u64) -> String {
    use click_gateway::click::sign::{CallbackBody, SignedFields};
    let id = click_trans_id.to_string();
    CallbackBody {
        signed: SignedFields {
            click_trans_id: &id,
            service_id,
            merchant_trans_id: "order-7",
            merchant_prepare_id: None,
            amount: "1000.00",
            action: "0",
            sign_time: "2024-05-01 12:30:45",
        },
        click_paydoc_id: "1",
        error: "0",
        error_note: "Success",
    }
    .encode(&click_gateway::click::Secret::new(key))
}

/// Replaces a file the way editors and config managers do: write a temp file, rename it over.
pub fn write_atomic(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// An HTTP/1.1 client connection (hyper's), kept alive across requests.
pub async fn h1_connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// A GET for a hyper client (`uri` absolute for HTTP/2, a path for HTTP/1 with Host: x).
pub fn get_request(uri: &str) -> Request<Full<Bytes>> {
    let mut req = Request::get(uri);
    if uri.starts_with('/') {
        req = req.header("host", "x");
    }
    req.body(Full::new(Bytes::new())).unwrap()
}

/// An HTTP/2 client connection over plain TCP (prior knowledge); the connection task's
/// handle ends when the gateway closes the connection.
pub async fn h2_connect(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    (sender, tokio::spawn(conn))
}

/// A urlencoded callback request for a hyper client.
pub fn callback_request(path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "shop.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

/// The two answers a callback may get from the gateway in front of `TestUpstream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Verified and answered by the upstream.
    Forwarded,
    /// Refused by the gateway with `-1 SIGN CHECK FAILED!`.
    SignRejected,
}

/// Classifies an answer; anything but the two expected shapes is a test failure.
pub fn verdict(status: u16, body: &[u8]) -> Verdict {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status, 200, "unexpected status {status}: {text}");
    if text == r#"{"error":0,"upstream":true}"# {
        return Verdict::Forwarded;
    }
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    assert_eq!(v["error"], -1, "{text}");
    Verdict::SignRejected
}

/// Of two different messages raced under one signature, exactly one may reach the backend:
/// checks that exactly one answer is the backend's and the other a refusal, and that the one
/// message the backend got is the one whose answer was its own (and nothing more came).
pub async fn exactly_one_forwarded(
    up: &mut TestUpstream,
    (a, ra): (&str, &RawResponse),
    (b, rb): (&str, &RawResponse),
    round: u64,
) {
    let verdicts = [verdict(ra.status, &ra.body), verdict(rb.status, &rb.body)];
    assert_eq!(
        verdicts
            .iter()
            .filter(|v| **v == Verdict::Forwarded)
            .count(),
        1,
        "round {round}: {verdicts:?}"
    );
    let winner = if verdicts[0] == Verdict::Forwarded {
        a
    } else {
        b
    };
    assert_eq!(up.next().await.body, winner.as_bytes(), "round {round}");
    assert!(
        up.try_next().is_none(),
        "round {round}: both reached the backend"
    );
}

/// Sends a callback on a hyper connection and classifies the answer.
pub async fn send_callback(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    body: &str,
) -> Verdict {
    sender.ready().await.expect("connection closed");
    let resp = tokio::time::timeout(
        PATIENCE,
        sender.send_request(callback_request("/click/prepare/", body)),
    )
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

/// Scrapes `/metrics`: every sample line as `name{labels}` → value.
pub async fn scrape(admin: std::net::SocketAddr) -> std::collections::BTreeMap<String, f64> {
    let resp = raw(
        admin,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    resp.text()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}
