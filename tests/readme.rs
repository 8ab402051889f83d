//! The README runs as shown (issue 24, item 6), and the docs name what exists.
//!
//! **Runnable blocks.** A fenced block whose info string is `sh runnable` is run: every such
//! block of README.md, in order, in one `bash` with `set -euo pipefail` (so the "Try it"
//! section's gateway still runs for the outage story after it), in a scratch directory holding
//! a copy of `config/` and `target/debug/click-gateway` (this build's binary), with real
//! processes: python's http.server, the gateway, curl. The README's ports (8000, 8080, 9901) are
//! replaced by free ones, in the blocks and through the gateway's environment overrides, so the
//! test runs beside anything that holds them.
//!
//! A block is a list of steps: a step is one or more command lines, and the `#` lines right
//! under them (no blank line between) are what they print on standard output, each `# ` line
//! one line of output. `...` stands for any text within a line, and a line that is only `...`
//! for any number of lines; `# (exit status N)` says the step exits with N (any other non-zero
//! status fails the test, as `set -e` would). A step with no `#` lines must print nothing.
//! Comments after a blank line, or at the top of a block, are prose. Whatever the blocks start
//! in the background is stopped by pid when the shell exits (a trap on `jobs -p`).
//!
//! **The two commands at the top** are not runnable blocks (`cargo test` inside `cargo test`):
//! the test command must be the one `.ci/run` ends with, and the serve command's arguments are
//! run on a fresh copy of `config/` until the gateway is ready, then stopped with SIGTERM.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The README's size bound (issue 24: "at most about 25 KB").
const MAX_README_BYTES: usize = 25 * 1024;
/// How long all the runnable blocks together may take.
const PATIENCE: Duration = Duration::from_secs(120);
/// The README's ports: the backend stand-in, the gateway, its admin listener.
const PORTS: [&str; 3] = ["8000", "8080", "9901"];
/// The keys of `config/keys.example.toml`, which no log may contain.
const EXAMPLE_KEYS: [&str; 2] = ["TEST_SECRET_aB3dE5", "fake+key/with=chars&x"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn readme() -> String {
    fs::read_to_string(repo().join("README.md")).unwrap()
}

/// A fenced code block: its info string, the line of its opening fence (1-based), its lines.
#[derive(Debug)]
struct Fence {
    info: String,
    line: usize,
    body: Vec<String>,
}

fn fences(text: &str) -> Vec<Fence> {
    let mut out = Vec::new();
    let mut open: Option<Fence> = None;
    for (i, line) in text.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Fence {
                    info: info.trim().to_owned(),
                    line: i + 1,
                    body: Vec::new(),
                })
            }
            (Some(_), Some(rest)) if rest.trim().is_empty() => out.extend(open.take()),
            (Some(f), _) => f.body.push(line.to_owned()),
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "README.md: a code block is never closed");
    out
}

/// One step of a runnable block (see the module docs).
#[derive(Debug, Default)]
struct Step {
    /// README.md line of its first command.
    line: usize,
    command: Vec<String>,
    expected: Vec<String>,
    status: i32,
}

impl Step {
    fn has_output(&self) -> bool {
        !self.expected.is_empty() || self.status != 0
    }
}

fn steps(fence: &Fence) -> Vec<Step> {
    let mut out = Vec::new();
    let mut cur = Step::default();
    for (i, line) in fence.body.iter().enumerate() {
        let readme_line = fence.line + 1 + i;
        if line.trim().is_empty() {
            if !cur.command.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else if let Some(comment) = line.strip_prefix('#') {
            if cur.command.is_empty() {
                continue; // prose
            }
            let text = comment.strip_prefix(' ').unwrap_or(comment);
            match text
                .strip_prefix("(exit status ")
                .and_then(|s| s.strip_suffix(')'))
            {
                Some(n) => cur.status = n.parse().expect("(exit status N)"),
                None => cur.expected.push(text.to_owned()),
            }
        } else {
            if cur.has_output() {
                out.push(std::mem::take(&mut cur));
            }
            if cur.command.is_empty() {
                cur.line = readme_line;
            }
            cur.command.push(line.clone());
        }
    }
    if !cur.command.is_empty() {
        out.push(cur);
    }
    out
}

/// `text` with each of the README's ports (a number not touching other digits) replaced.
fn with_ports(text: &str, ports: &[u16; 3]) -> String {
    let mut out = text.to_owned();
    for (from, to) in PORTS.iter().zip(ports) {
        let mut replaced = String::new();
        let mut rest = out.as_str();
        while let Some(at) = rest.find(from) {
            let before = rest[..at].chars().last();
            let after = rest[at + from.len()..].chars().next();
            replaced.push_str(&rest[..at]);
            if before.is_some_and(|c| c.is_ascii_digit())
                || after.is_some_and(|c| c.is_ascii_digit())
            {
                replaced.push_str(from);
            } else {
                replaced.push_str(&to.to_string());
            }
            rest = &rest[at + from.len()..];
        }
        replaced.push_str(rest);
        out = replaced;
    }
    out
}

/// Held by a test from [`free_ports`] until its script has ended: the ports are free when
/// found, and another test of this file must not be handed them before they are bound.
static PORTS_IN_USE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn free_ports() -> [u16; 3] {
    let listeners: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    [ports[0], ports[1], ports[2]]
}

/// Whether `actual` matches the pattern line `pattern` (`...`: any text).
fn line_matches(pattern: &str, actual: &str) -> bool {
    let parts: Vec<&str> = pattern.split("...").collect();
    if parts.len() == 1 {
        return pattern == actual;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !actual.starts_with(first) || actual.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &actual[first.len()..];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// Whether the output lines match the pattern lines (a `...` line: any number of lines).
fn lines_match(patterns: &[String], actual: &[&str]) -> bool {
    match patterns.split_first() {
        None => actual.is_empty(),
        Some((p, rest)) if p == "..." => {
            (0..=actual.len()).any(|k| lines_match(rest, &actual[k..]))
        }
        Some((p, rest)) => actual
            .split_first()
            .is_some_and(|(a, more)| line_matches(p, a) && lines_match(rest, more)),
    }
}

/// A scratch directory laid out as a checkout after `cargo build`: `config/` (without any
/// ledger) and `target/debug/click-gateway`.
fn scratch() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            let text = name.to_string_lossy();
            if text.contains(".db") || text.ends_with(".log") {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &to.join(&name));
            } else {
                fs::copy(entry.path(), to.join(&name)).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&repo().join("config"), &dir.path().join("config"));
    let bin = dir.path().join("target/debug");
    fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_click-gateway"),
        bin.join("click-gateway"),
    )
    .unwrap();
    dir
}

/// What a script run left: its exit status (None: killed at the deadline) and stderr.
struct Ran {
    status: Option<i32>,
    stderr: String,
}

/// Runs `script` with bash in `dir`, the README's ports redirected to `ports`, in a process
/// group of its own that is killed if it outlives [`PATIENCE`].
fn run_script(dir: &Path, script: &str, ports: &[u16; 3]) -> Ran {
    let path = dir.join(".readme-test.sh");
    fs::write(&path, script).unwrap();
    let stderr_path = dir.join(".readme-test.err");
    let mut cmd = Command::new("bash");
    cmd.arg(&path)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            fs::File::create(dir.join(".readme-test.out")).unwrap(),
        ))
        .stderr(Stdio::from(fs::File::create(&stderr_path).unwrap()));
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if ["CLICK_GATEWAY_", "CLICK_SERVICE_", "RUST_LOG"]
            .iter()
            .any(|p| text.starts_with(p))
        {
            cmd.env_remove(&name);
        }
    }
    cmd.env(
        "CLICK_GATEWAY_UPSTREAM__URL",
        format!("http://127.0.0.1:{}", ports[0]),
    )
    .env(
        "CLICK_GATEWAY_SERVER__LISTEN",
        format!("127.0.0.1:{}", ports[1]),
    )
    .env(
        "CLICK_GATEWAY_ADMIN__LISTEN",
        format!("127.0.0.1:{}", ports[2]),
    );
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait().map(|s| s.code()));
    });
    let status = match rx.recv_timeout(PATIENCE) {
        Ok(status) => status.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on the process group this test created (its leader's pid).
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            None
        }
    };
    waiter.join().unwrap();
    Ran {
        status,
        stderr: fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}

/// The shell the steps run in: strict, the tools checked, background jobs stopped on exit.
const PRELUDE: &str = r#"set -euo pipefail
for tool in python3 curl openssl; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: run tests/setup.sh" >&2; exit 3; }
done
stop() { local pids; pids=$(jobs -p); if [ -n "$pids" ]; then kill $pids 2>/dev/null || true; wait 2>/dev/null || true; fi; }
trap stop EXIT
"#;

#[test]
fn the_readme_s_runnable_blocks_run_as_shown() {
    let text = readme();
    let blocks: Vec<Fence> = fences(&text)
        .into_iter()
        .filter(|f| f.info == "sh runnable")
        .collect();
    let steps: Vec<Step> = blocks.iter().flat_map(steps).collect();
    // The story is there to be run: every command of the table but serve's flags is in it.
    let all: String = steps
        .iter()
        .flat_map(|s| s.command.iter())
        .cloned()
        .collect();
    for command in ["serve", "sign", "verify", "check", "payments", "recheck"] {
        assert!(
            all.contains(&format!("click-gateway {command}")),
            "no runnable block of README.md runs click-gateway {command}"
        );
    }
    assert!(
        steps.len() >= 10,
        "README.md has {} runnable steps",
        steps.len()
    );

    let dir = scratch();
    let _ports = PORTS_IN_USE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let ports = free_ports();
    let out = dir.path().join(".readme-steps");
    fs::create_dir_all(&out).unwrap();
    let mut script = String::from(PRELUDE);
    for (n, step) in steps.iter().enumerate() {
        let command = with_ports(&step.command.join("\n"), &ports);
        let files = format!(">\"{0}/{n}.out\" 2>\"{0}/{n}.err\"", out.display());
        script.push_str(&format!("# README.md:{}\n", step.line));
        if step.status == 0 {
            script.push_str(&format!("{{\n{command}\n}} {files}\n"));
        } else {
            script.push_str(&format!(
                "set +e\n{{\n{command}\n}} {files}\nstatus=$?\nset -e\n\
                 [ \"$status\" -eq {0} ] || {{ echo \"exit status $status, README.md says {0}\" >>\"{1}/{n}.err\"; exit 1; }}\n",
                step.status,
                out.display()
            ));
        }
        script.push_str(&format!(": >\"{}/{n}.done\"\n", out.display()));
    }
    let ran = run_script(dir.path(), &script, &ports);
    let gateway_log = fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default();

    let mut failures = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        let read = |ext: &str| fs::read_to_string(out.join(format!("{n}.{ext}")));
        let stdout = read("out").unwrap_or_default();
        let stderr = read("err").unwrap_or_default();
        let describe = |why: &str| {
            format!(
                "README.md:{}: {why}\n$ {}\n--- stdout:\n{stdout}--- stderr:\n{stderr}",
                step.line,
                step.command.join("\n  ")
            )
        };
        if read("done").is_err() {
            failures.push(describe("this step failed (set -e), or did not finish"));
            break;
        }
        let expected: Vec<String> = step
            .expected
            .iter()
            .map(|l| with_ports(l, &ports))
            .collect();
        let actual: Vec<&str> = stdout.lines().map(str::trim_end).collect();
        if !lines_match(&expected, &actual) {
            failures.push(describe(&format!(
                "the output is not what the README shows:\n{}",
                expected.join("\n")
            )));
        }
    }
    if ran.status != Some(0) && failures.is_empty() {
        failures.push(format!("the script ended with {:?}", ran.status));
    }
    assert!(
        failures.is_empty(),
        "{}\n--- the shell's stderr:\n{}\n--- gateway.log:\n{gateway_log}",
        failures.join("\n\n"),
        ran.stderr
    );

    // Keys never appear in a log: the example keys, nor the one the outage story made up.
    let made_up = fs::read_to_string(dir.path().join("click-82154.key")).unwrap();
    let made_up = made_up.trim();
    assert!(!made_up.is_empty());
    for key in EXAMPLE_KEYS.iter().copied().chain([made_up]) {
        assert!(!gateway_log.contains(key), "a key reached gateway.log");
    }
    assert!(
        gateway_log.contains("reload ok: generation 2"),
        "{gateway_log}"
    );
}

#[test]
fn the_two_commands_at_the_top_run_the_gateway_and_the_ci_s_tests() {
    let text = readme();
    let first = fences(&text).into_iter().next().unwrap();
    let opening = text
        .lines()
        .skip(1)
        .position(|l| !l.trim().is_empty())
        .unwrap()
        + 2;
    assert_eq!(
        (text.lines().next(), first.line),
        (Some("# click-gateway"), opening),
        "the README starts with its two commands, right under the title"
    );
    let commands: Vec<&str> = first
        .body
        .iter()
        .map(|l| l.split(" #").next().unwrap().trim())
        .collect();
    assert_eq!(commands.len(), 2, "{commands:?}");
    let ci = fs::read_to_string(repo().join(".ci/run")).unwrap();
    let last = ci.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert_eq!(
        commands[1], last,
        "the README's test command is the one .ci/run ends with"
    );

    let args = commands[0]
        .strip_prefix("cargo run --release -- ")
        .expect("the first command is `cargo run --release -- <args>`");
    assert!(args.contains("config/gateway.toml"), "{args}");
    let dir = scratch();
    let _ports = PORTS_IN_USE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let ports = free_ports();
    let script = format!(
        "{PRELUDE}target/debug/click-gateway {args} 2>serve.log &\n\
         gateway=$!\n\
         until curl -sf http://127.0.0.1:{}/ready; do sleep 0.1; done\n\
         kill $gateway && wait $gateway\n",
        ports[2]
    );
    let ran = run_script(dir.path(), &script, &ports);
    let log = fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
    let stdout = fs::read_to_string(dir.path().join(".readme-test.out")).unwrap();
    assert_eq!(
        (ran.status, stdout.as_str()),
        (Some(0), "ready: generation 1\n"),
        "{}\n{log}",
        ran.stderr
    );
    assert!(log.contains("stopped"), "{log}");
}

#[test]
fn the_readme_stays_small_and_names_files_that_exist() {
    let text = readme();
    assert!(
        text.len() <= MAX_README_BYTES,
        "README.md is {} bytes; it is for the person on call (issue 24: about 25 KB): move \
         design to the crate docs, figures to benches/README.md, files' notes to config/",
        text.len()
    );
    // Paths in backticks that look like the repository's must be in it (the crate docs name
    // the files of src/ from there). Ledger files are made by running the gateway.
    let docs = fs::read_to_string(repo().join("src/lib.rs")).unwrap();
    let mut missing = BTreeSet::new();
    for (name, text, bases) in [
        ("README.md", &text, vec![repo()]),
        ("src/lib.rs", &docs, vec![repo(), repo().join("src")]),
    ] {
        for token in text.split('`').skip(1).step_by(2) {
            let path = token.trim_end_matches(['.', ',', ':', ')']);
            let ours = ["config/", "src/", "tests/", "benches/", "certs/", ".ci/"]
                .iter()
                .any(|p| path.starts_with(p));
            if ours
                && !path.contains(['*', '<', ' ', '$'])
                && !path.ends_with(".db")
                && !bases.iter().any(|b| b.join(path).exists())
            {
                missing.insert(format!("{name}: {path}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "named but not in the repository: {missing:?}"
    );
}

#[test]
fn the_crate_docs_map_every_file_of_src() {
    fn files(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files(&path, base, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(base).unwrap();
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let src = repo().join("src");
    let mut all = Vec::new();
    files(&src, &src, &mut all);
    let docs: String = fs::read_to_string(src.join("lib.rs"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    let unnamed: Vec<&String> = all
        .iter()
        .filter(|f| !docs.contains(&format!("`{f}`")))
        .collect();
    assert!(
        unnamed.is_empty(),
        "src/lib.rs's crate docs (\"The files\") do not name {unnamed:?}"
    );
}

#[test]
fn steps_and_patterns_read_as_the_module_docs_say() {
    let fence = Fence {
        info: "sh runnable".into(),
        line: 10,
        body: [
            "# prose",
            "a=1",
            "echo $a",
            "# 1",
            "false",
            "# (exit status 1)",
            "",
            "# prose again",
            "for x in 1 2; do",
            "  echo $x",
            "done",
            "# 1",
            "# ...",
            "true",
        ]
        .map(String::from)
        .to_vec(),
    };
    let steps = steps(&fence);
    let shape: Vec<(usize, usize, usize, i32)> = steps
        .iter()
        .map(|s| (s.line, s.command.len(), s.expected.len(), s.status))
        .collect();
    assert_eq!(
        shape,
        [(12, 2, 1, 0), (15, 1, 0, 1), (19, 3, 2, 0), (24, 1, 0, 0)]
    );
    assert!(line_matches("a ... c", "a b c"));
    assert!(line_matches("...", ""));
    assert!(!line_matches("a ... c", "a b d"));
    assert!(!line_matches("ab...ba", "aba"));
    let pats: Vec<String> = ["x", "...", "z"].map(String::from).to_vec();
    assert!(lines_match(&pats, &["x", "z"]));
    assert!(lines_match(&pats, &["x", "y", "y", "z"]));
    assert!(!lines_match(&pats, &["x", "y"]));
    assert_eq!(
        with_ports("curl 127.0.0.1:8080 18080 8000x 80800", &[1, 2, 3]),
        "curl 127.0.0.1:2 18080 1x 80800"
    );
}
