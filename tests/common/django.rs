//! A real Django app (tests/django) under real gunicorn, installed by `tests/setup.sh`.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncBufReadExt;

use super::{KEY_12345, PATIENCE};

pub struct Gunicorn {
    /// The TCP address (0.0.0.0:0 when bound to a unix socket).
    pub addr: std::net::SocketAddr,
    /// The unix socket, when bound to one.
    pub socket: Option<PathBuf>,
    pub log: PathBuf,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Gunicorn {
    /// Stops the master with SIGINT, gunicorn's quick shutdown (it stops its workers, then
    /// itself), and waits for it to exit: a SIGKILL to the master alone would leave its workers
    /// orphaned, still serving the old port. `kill_on_drop` remains the last resort.
    fn drop(&mut self) {
        let Some(pid) = self.child.id() else { return };
        // SAFETY: kill(2) on our own child's pid, not yet reaped (`id` is Some).
        let _ = unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
        // The master's exit is not an event a synchronous drop can await: poll it, bounded.
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::time::Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(10)),
                _ => return,
            }
        }
    }
}

/// Where gunicorn listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// 127.0.0.1:0
    Tcp,
    /// A unix socket in a temporary directory (`--bind unix:...`, as deployments usually do).
    Unix,
}

impl Gunicorn {
    /// Starts gunicorn with `args` (worker class and friends) on 127.0.0.1:0 and waits for its
    /// "Listening at" line.
    pub async fn start(args: &[&str]) -> Gunicorn {
        Self::start_on(Bind::Tcp, args).await
    }

    /// The gateway's `upstream.url` for this gunicorn.
    pub fn upstream_url(&self) -> String {
        match &self.socket {
            Some(path) => format!("unix:{}", path.display()),
            None => format!("http://{}", self.addr),
        }
    }

    /// As [`Gunicorn::start`], bound as `bind` says.
    pub async fn start_on(bind: Bind, args: &[&str]) -> Gunicorn {
        Self::launch(bind, args, Some(KEY_12345), None).await
    }

    /// A backend that holds no Click key at all and trusts the gateway's attestation, with
    /// the secrets of `trust_file` (read by `config/django/click_gateway.py`).
    pub async fn keyless(bind: Bind, args: &[&str], trust_file: &std::path::Path) -> Gunicorn {
        Self::launch(bind, args, None, Some(trust_file)).await
    }

    async fn launch(
        bind: Bind,
        args: &[&str],
        key_12345: Option<&str>,
        trust_file: Option<&std::path::Path>,
    ) -> Gunicorn {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let venv = std::env::var_os("CLICK_GATEWAY_TEST_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("target/test-venv"));
        let bin = venv.join("bin/gunicorn");
        assert!(
            bin.exists(),
            "{} is missing: run tests/setup.sh first",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("django.jsonl");
        let socket = dir.path().join("gunicorn.sock");
        let bind_arg = match bind {
            Bind::Tcp => "127.0.0.1:0".to_owned(),
            Bind::Unix => format!("unix:{}", socket.display()),
        };
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["--chdir", "tests/django", "--bind", &bind_arg])
            .args(args)
            .arg("clickshop.wsgi:application")
            .current_dir(&repo)
            .env("CLICKSHOP_LOG", &log)
            .env_remove("CLICK_SERVICE_12345_SECRET_KEY");
        if let Some(key) = key_12345 {
            cmd.env("CLICK_SERVICE_12345_SECRET_KEY", key);
        }
        if let Some(file) = trust_file {
            cmd.env("CLICKSHOP_TRUST_FILE", file);
        }
        let mut child = cmd
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("Listening at: http://").nth(1) {
                    return rest.split(' ').next().unwrap().parse().unwrap();
                }
                if line.contains("Listening at: unix:") {
                    return "0.0.0.0:0".parse().unwrap();
                }
            }
            panic!("gunicorn exited before listening");
        })
        .await
        .expect("gunicorn did not start");
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Gunicorn {
            addr,
            socket: (bind == Bind::Unix).then_some(socket),
            log,
            child,
            _dir: dir,
        }
    }
}

pub fn django_saw(g: &Gunicorn) -> Vec<serde_json::Value> {
    std::fs::read_to_string(&g.log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
