//! The real `click-gateway serve` process, with its log and its sd_notify messages captured, so
//! tests synchronise on what the process says (a log line, `READY=1`) instead of sleeping.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncBufReadExt;
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;

use super::{ConfigDir, PATIENCE};

/// The binary as a command, without keys or overrides from the developer's shell.
pub fn bin() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_click-gateway"));
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("CLICK_GATEWAY_") || text.starts_with("CLICK_SERVICE_") {
            cmd.env_remove(&name);
        }
    }
    cmd
}

/// Runs `cmd` with `stdin` written to it; its exit code, stdout and stderr (UTF-8, or the test
/// fails), failing the test if it panicked, or if it is still running after [`PATIENCE`] (it
/// is killed then: a command that should have stopped fails its test instead of hanging the
/// suite).
pub fn run_with_stdin(cmd: &mut std::process::Command, stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let pid = child.id().to_string();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let late =
            finished.recv_timeout(PATIENCE) == Err(std::sync::mpsc::RecvTimeoutError::Timeout);
        if late {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid])
                .status();
        }
        late
    });
    let out = child.wait_with_output().unwrap();
    drop(done);
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(
        !watchdog.join().unwrap(),
        "still running after {PATIENCE:?}, killed:\n{stdout}{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

pub struct GatewayProcess {
    /// The plain listener (0.0.0.0:0 when there is none).
    pub addr: std::net::SocketAddr,
    pub tls_addr: Option<std::net::SocketAddr>,
    pub admin_addr: Option<std::net::SocketAddr>,
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    log: Arc<Mutex<Vec<String>>>,
    notify: mpsc::UnboundedReceiver<String>,
    reader: Option<tokio::task::JoinHandle<()>>,
    _notify_dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Starts `serve --config <dir>/gateway.toml` and waits for `READY=1`.
    pub async fn start(config: &ConfigDir) -> GatewayProcess {
        Self::start_with_env(config, &[]).await
    }

    pub async fn start_with_env(config: &ConfigDir, env: &[(&str, &str)]) -> GatewayProcess {
        let notify_dir = tempfile::tempdir().unwrap();
        let notify_path: PathBuf = notify_dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&notify_path).unwrap();
        // Read continuously: a full socket buffer would block the gateway's sd_notify calls.
        let (notify_tx, notify) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf).await {
                let _ = notify_tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_click-gateway"));
        // Only what the test sets: no keys or overrides from the developer's shell.
        for (name, _) in std::env::vars_os() {
            let name_text = name.to_string_lossy();
            if ["CLICK_GATEWAY_", "CLICK_SERVICE_", "RUST_LOG"]
                .iter()
                .any(|p| name_text.starts_with(p))
            {
                cmd.env_remove(&name);
            }
        }
        let mut child = cmd
            .arg("serve")
            .arg("--config")
            .arg(config.path())
            .env("NOTIFY_SOCKET", &notify_path)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let all = log.clone();
        let reader = tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                all.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut p = GatewayProcess {
            addr: "0.0.0.0:0".parse().unwrap(),
            tls_addr: None,
            admin_addr: None,
            child,
            lines,
            log,
            notify,
            reader: Some(reader),
            _notify_dir: notify_dir,
        };
        let ready = p.wait_log(|l| l.contains(" ready ")).await;
        let listen = ready
            .split("listen=")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or("");
        for url in listen.split(',') {
            if let Some(a) = url.strip_prefix("http://") {
                p.addr = a.parse().unwrap();
            }
            if let Some(a) = url.strip_prefix("https://") {
                p.tls_addr = Some(a.parse().unwrap());
            }
            if let Some(a) = url.strip_prefix("admin=http://") {
                p.admin_addr = Some(a.parse().unwrap());
            }
        }
        assert_eq!(
            p.next_notify().await,
            "READY=1\nSTATUS=serving generation 1\n"
        );
        p
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("process already reaped") as i32
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// The next sd_notify datagram.
    pub async fn next_notify(&mut self) -> String {
        tokio::time::timeout(PATIENCE, self.notify.recv())
            .await
            .expect("no sd_notify message in time")
            .expect("notify socket closed")
    }

    /// Waits for the next log line (from now on) that satisfies `pred`.
    pub async fn wait_log(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let log = self.log.clone();
        tokio::time::timeout(PATIENCE, async {
            loop {
                match self.lines.recv().await {
                    Some(line) if pred(&line) => return line,
                    Some(_) => {}
                    None => panic!(
                        "the gateway exited; log:\n{}",
                        log.lock().unwrap().join("\n")
                    ),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("log line not seen in time; log:\n{}", self.log_text()))
    }

    /// Waits until a line containing `text` has been logged (now or earlier): for lines the
    /// process wrote before the test looked, still in the pipe.
    pub async fn wait_logged(&mut self, text: &str) {
        if self.log_text().contains(text) {
            return;
        }
        self.wait_log(|l| l.contains(text)).await;
    }

    /// Everything logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for the process to exit and for its last log line to be read; returns its exit
    /// code.
    pub async fn wait_exit(&mut self) -> Option<i32> {
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("the gateway did not exit")
            .unwrap();
        if let Some(reader) = self.reader.take() {
            tokio::time::timeout(PATIENCE, reader)
                .await
                .expect("stderr never closed")
                .unwrap();
        }
        status.code()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            super::assert_no_secrets(&self.log_text());
        }
    }
}
