//! A real Django app (tests/django) under real gunicorn, installed by `tests/setup.sh`.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncBufReadExt;

use super::{KEY_12345, PATIENCE};

pub struct Gunicorn {
    pub addr: std::net::SocketAddr,
    pub log: PathBuf,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Gunicorn {
    /// Starts gunicorn with `args` (worker class and friends) on 127.0.0.1:0 and waits for its
    /// "Listening at" line.
    pub async fn start(args: &[&str]) -> Gunicorn {
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
        let mut child = tokio::process::Command::new(bin)
            .args(["--chdir", "tests/django", "--bind", "127.0.0.1:0"])
            .args(args)
            .arg("clickshop.wsgi:application")
            .current_dir(&repo)
            .env("CLICKSHOP_LOG", &log)
            .env("CLICK_SERVICE_12345_SECRET_KEY", KEY_12345)
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
            }
            panic!("gunicorn exited before listening");
        })
        .await
        .expect("gunicorn did not start");
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Gunicorn {
            addr,
            log,
            _child: child,
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
