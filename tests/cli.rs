//! The real binary: `check`, `sign`, `verify`, and `serve` driven by real curl.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::binary::{bin, run_with_stdin};
use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    common::binary::run_with_stdin(cmd, "")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// As [`write`], with the file's mode set to `mode` (whatever the umask made it).
fn write_mode(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let p = write(dir, name, text);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// `sign --action prepare` of vector V1's fields, the key from wherever `key_args` say.
fn sign_v1(key_args: &[&str]) -> Command {
    let mut cmd = bin();
    cmd.args([
        "sign",
        "--action",
        "prepare",
        "--service-id",
        "12345",
        "--click-trans-id",
        "2103045678",
        "--click-paydoc-id",
        "3302114455",
        "--merchant-trans-id",
        "order-1001",
        "--amount",
        "1000.00",
        "--sign-time",
        "2024-05-01 12:30:45",
    ])
    .args(key_args);
    cmd
}

#[test]
fn check_lists_the_services_of_the_shipped_config_from_any_directory() {
    let elsewhere = tempfile::tempdir().unwrap();
    let (code, out, err) = run(bin()
        .args(["check", "--config"])
        .arg(repo().join("config/gateway.toml"))
        .current_dir(elsewhere.path())
        .env_remove("CLICK_SERVICE_12345_SECRET_KEY"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("configuration ok"), "{out}");
    assert!(out.contains("service 12345: 1 key"), "{out}");
    // printf '%s' TEST_SECRET_aB3dE5 | md5sum | cut -c1-8
    assert!(out.contains("slot 0  fp d3b738e5  from keys_file"), "{out}");
    assert!(
        !out.contains(KEY_12345) && !out.contains(KEY_70001),
        "{out}"
    );
}

#[test]
fn check_reports_every_problem_and_never_a_key() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "keys.toml", "[services.12345]\nsecret_keys = [\" padded-sekrit \", \"\"]\n[services.x1]\nsecret_keys = [\"other-sekrit\"]\n");
    write(
        d.path(),
        ".env",
        "CLICK_SERVICE_70001_SECRET_KEY=env-sekrit \n",
    );
    let cfg = write(
        d.path(),
        "gateway.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n[click]\nkeys_file = \"keys.toml\"\nenv_file = \".env\"\n",
    );
    let (code, out, err) = run(bin().arg("check").arg("-c").arg(&cfg));
    assert_eq!(code, 1, "{out}{err}");
    for want in [
        "services.12345.secret_keys[0]: the key has surrounding whitespace",
        "services.12345.secret_keys[1]: the key is empty",
        "services.x1: service id must be decimal digits",
        "line 1 (CLICK_SERVICE_70001_SECRET_KEY): the key ends with a space: keys are used byte for byte, so remove it",
        "4 problem(s)",
    ] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }
    assert!(!err.contains("sekrit") && !out.contains("sekrit"), "{err}");
}

#[test]
fn keys_from_the_environment_are_taken_byte_for_byte() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write(
        d.path(),
        "gateway.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n",
    );
    let (code, out, err) = run(bin()
        .arg("check")
        .arg("-c")
        .arg(&cfg)
        .env("CLICK_SERVICE_82154_SECRET_KEY", "0012345")
        .env("CLICK_GATEWAY_UPSTREAM__URL", "http://127.0.0.1:9"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("http://127.0.0.1:9"), "{out}");
    assert!(out.contains("service 82154: 1 key"), "{out}");
    assert!(
        out.contains("environment variable CLICK_SERVICE_82154_SECRET_KEY"),
        "{out}"
    );

    // Sign with the same text from another variable, verify against the configured key.
    let (code, body, err) = run(bin()
        .args([
            "sign",
            "--action",
            "prepare",
            "--service-id",
            "82154",
            "--click-trans-id",
            "1",
            "--merchant-trans-id",
            "o-1",
            "--amount",
            "500",
            "--secret-env",
            "SIGNING_KEY",
        ])
        .env("SIGNING_KEY", "0012345"));
    assert_eq!(code, 0, "{err}");
    let mut verify = bin()
        .args(["verify", "-c"])
        .arg(&cfg)
        .env("CLICK_SERVICE_82154_SECRET_KEY", "0012345")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    verify
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = verify.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("verified: prepare for service 82154, key slot 0"),
        "{text}"
    );
}

#[test]
fn sign_prints_the_vector_body_and_verify_explains_failures() {
    let d = tempfile::tempdir().unwrap();
    let key_file = write(d.path(), "key", &format!("{KEY_12345}\n"));
    let (code, body, err) = run(bin()
        .args([
            "sign",
            "--action",
            "prepare",
            "--service-id",
            "12345",
            "--click-trans-id",
            "2103045678",
        ])
        .args([
            "--click-paydoc-id",
            "3302114455",
            "--merchant-trans-id",
            "order-1001",
            "--amount",
            "1000.00",
        ])
        .args(["--sign-time", "2024-05-01 12:30:45", "--secret-file"])
        .arg(&key_file));
    assert_eq!(code, 0, "{err}");
    assert_eq!(body.trim_end(), V1);

    let config = repo().join("config/gateway.toml");
    let good = write(d.path(), "good.txt", &body);
    let (code, out, _) = run(bin().arg("verify").arg("-c").arg(&config).arg(&good));
    assert_eq!(code, 0, "{out}");

    let reformatted = write(
        d.path(),
        "bad.txt",
        &V1.replace("amount=1000.00", "amount=1000"),
    );
    let (code, out, _) = run(bin().arg("verify").arg("-c").arg(&config).arg(&reformatted));
    assert_eq!(code, 1);
    assert!(
        out.contains("rejected: error -1 (SIGN CHECK FAILED!), reason key_mismatch"),
        "{out}"
    );
    assert!(
        out.contains("amount were hashed as \"1000.00\" instead of \"1000\""),
        "{out}"
    );

    let unknown = write(
        d.path(),
        "unknown.txt",
        &V1.replace("service_id=12345", "service_id=82154"),
    );
    let (code, out, _) = run(bin().arg("verify").arg("-c").arg(&config).arg(&unknown));
    assert_eq!(code, 1);
    // Where the key goes, with the files this configuration names, and the command that
    // tries a key first (the shipped config keeps a ledger).
    let keys_file = repo().join("config/keys.example.toml");
    assert!(
        out.contains(&format!(
            "why: no key is configured for service 82154: put it in click.keys_file ({}) as [services.82154] secret_keys or in click.env_file (not set) as CLICK_SERVICE_82154_SECRET_KEY and reload (SIGHUP), or in the gateway's environment as CLICK_SERVICE_82154_SECRET_KEY and restart; to try a key on the refused callbacks first: click-gateway recheck --config {} --service-id 82154 --secret-file <file>\n",
            keys_file.display(),
            config.display()
        )),
        "{out}"
    );
    assert!(!out.contains(KEY_12345), "{out}");
}

#[test]
fn command_line_errors_are_messages_not_panics() {
    let (code, _, err) = run(bin().args(["sign", "--action", "refund"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid value 'refund'"), "{err}");
    let (code, _, err) = run(bin().args(["check", "--config", "/nonexistent/gateway.toml"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/gateway.toml: cannot read config file"),
        "{err}"
    );
    let (code, _, err) = run(bin().args(["serve", "--config", "/nonexistent/gateway.toml"]));
    assert_eq!(code, 1);
    assert!(err.contains("not starting"), "{err}");
    let (code, _, err) = run(bin()
        .args([
            "sign",
            "--action",
            "complete",
            "--service-id",
            "1",
            "--click-trans-id",
            "1",
            "--merchant-trans-id",
            "o",
            "--amount",
            "1",
            "--secret-env",
            "K",
        ])
        .env("K", "k"));
    assert_eq!(code, 1);
    assert!(
        err.contains("a complete needs --merchant-prepare-id"),
        "{err}"
    );
}

/// The real binary serving real curl: a verified callback reaches the upstream, a forged one
/// gets Click's answer, and SIGTERM ends the process with status 0.
#[tokio::test]
async fn serve_answers_curl_and_stops_on_sigterm() {
    let mut up = TestUpstream::start().await;
    let config = ConfigDir::new(up.addr, KEYS_TOML, "", "");
    let mut gw = common::binary::GatewayProcess::start(&config).await;
    let curl = |body: String, path: &str| {
        let url = format!("http://{}{path}", gw.addr);
        tokio::process::Command::new("curl")
            .args([
                "-sS",
                "-H",
                "Host: shop.example",
                "--data-binary",
                &body,
                &url,
            ])
            .output()
    };
    let out = curl(V1.to_owned(), "/click/prepare/")
        .await
        .expect("curl is installed (tests/setup.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        r#"{"error":0,"upstream":true}"#
    );
    let got = up.next().await;
    assert_eq!(got.body, V1.as_bytes());
    assert_eq!(
        got.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(got.all("x-click-signature-verified"), ["12345"]);

    let forged = V1.replace("amount=1000.00", "amount=1.00");
    let out = curl(forged, "/click/prepare/").await.unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["error"], -1);
    assert_eq!(answer["error_note"], "SIGN CHECK FAILED!");
    let unknown = V1.replace("service_id=12345", "service_id=82154");
    let out = curl(unknown, "/click/prepare/").await.unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["error"], -1);

    gw.signal(libc::SIGTERM);
    assert_eq!(gw.wait_exit().await, Some(0));
    let all = gw.log_text();
    assert!(all.contains("callback verified and forwarded"), "{all}");
    assert!(all.contains("reason=\"key_mismatch\""), "{all}");
    // The log line of a missing key says where it goes (by setting: the request path has no
    // paths at hand) and how to try one.
    assert!(
        all.contains("why=no key is configured for service 82154: put it in click.keys_file as [services.82154] secret_keys or in click.env_file as CLICK_SERVICE_82154_SECRET_KEY and reload (SIGHUP), or in the gateway's environment as CLICK_SERVICE_82154_SECRET_KEY and restart; to try a key on the refused callbacks first: click-gateway recheck --service-id 82154 --secret-file <file>"),
        "{all}"
    );
    assert!(!all.contains(KEY_12345), "a secret reached the log:\n{all}");
    assert!(
        !all.contains("4c30b2304e2d17ef17eec7d8710e914c"),
        "a full signature reached the log:\n{all}"
    );
}

/// A key pasted from an email with a space after it, or wrapped onto two lines, is refused by
/// `sign` and `recheck` in the words `check` uses for the same key in keys.toml, instead of
/// being used byte for byte (a different fingerprint, "0 of 3 verify", and Click blamed).
#[test]
fn a_pasted_key_with_whitespace_is_refused_by_the_commands_as_by_the_key_files() {
    let d = tempfile::tempdir().unwrap();
    let pasted = write_mode(d.path(), "pasted.key", &format!("{KEY_12345} \n"), 0o600);
    let (code, out, err) = run(&mut sign_v1(&["--secret-file", pasted.to_str().unwrap()]));
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(out, "", "nothing is signed with a key that is refused");
    assert_eq!(
        err,
        format!(
            "click-gateway: the key in {} ends with a space: keys are used byte for byte, so remove it\n",
            pasted.display()
        )
    );
    assert_no_secrets(&err);

    // The same key in keys.toml: the same words, from the same check.
    write(
        d.path(),
        "keys.toml",
        &format!("[services.12345]\nsecret_keys = [\"{KEY_12345} \"]\n"),
    );
    let cfg = write(
        d.path(),
        "gateway.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n[click]\nkeys_file = \"keys.toml\"\n[ledger]\ndatabase = \"ledger.db\"\n",
    );
    let (code, _, err) = run(bin().arg("check").arg("-c").arg(&cfg));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("services.12345.secret_keys[0]: the key ends with a space: keys are used byte for byte, so remove it"),
        "{err}"
    );
    assert_no_secrets(&err);

    // recheck, the key wrapped by a mail client, on standard input.
    let (code, out, err) = run_with_stdin(
        bin()
            .args([
                "recheck",
                "--service-id",
                "12345",
                "--secret-file",
                "-",
                "-c",
            ])
            .arg(&cfg),
        "TEST_SECRET\n_aB3dE5\n",
    );
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert_eq!(
        err,
        "click-gateway: the key on standard input has a line break inside it: a key is one line (a mail client may have wrapped it): join the lines\n"
    );
    let empty = write_mode(d.path(), "empty.key", "\n", 0o600);
    let (code, _, err) = run(bin()
        .args(["recheck", "--secret-file"])
        .arg(&empty)
        .arg("-c")
        .arg(&cfg));
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!(
            "click-gateway: the key in {} is empty: put the key there\n",
            empty.display()
        )
    );
    let (code, _, err) =
        run(sign_v1(&["--secret-env", "PASTED"]).env("PASTED", format!("\t{KEY_12345}")));
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "click-gateway: the key in environment variable PASTED starts with a tab: keys are used byte for byte, so remove it\n"
    );

    // What `echo KEY > file` or a Windows editor leaves (one line end) is still fine.
    let saved = write_mode(d.path(), "saved.key", &format!("{KEY_12345}\r\n"), 0o600);
    let (code, body, err) = run(&mut sign_v1(&["--secret-file", saved.to_str().unwrap()]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(body.trim_end(), V1);
}

/// `check` names the files a new service's key goes in, and the command to try one.
#[test]
fn check_says_where_a_new_services_key_goes() {
    let d = tempfile::tempdir().unwrap();
    write_mode(d.path(), "keys.toml", KEYS_TOML, 0o600);
    let env_file = write_mode(d.path(), ".env", "DEBUG=0\n", 0o600);
    let cfg = write(
        d.path(),
        "gateway.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n[click]\nkeys_file = \"keys.toml\"\nenv_file = \".env\"\n",
    );
    let (code, out, err) = run(bin().arg("check").arg("-c").arg(&cfg));
    assert_eq!(code, 0, "{err}");
    // No ledger: nothing recorded to recheck, so no recheck suggested.
    assert!(
        out.contains(&format!(
            "  a new service's key: put it in click.keys_file ({}) as [services.<id>] secret_keys or in click.env_file ({}) as CLICK_SERVICE_<id>_SECRET_KEY and reload (SIGHUP), or in the gateway's environment as CLICK_SERVICE_<id>_SECRET_KEY and restart\n",
            d.path().join("keys.toml").display(),
            env_file.display()
        )),
        "{out}"
    );
    assert_eq!(err, "", "0600 files, no warning");
}

/// `check` warns, with the chmod to run, when users other than the owner and the gateway can
/// read a file that holds secrets: every user (the umask's 0644), or a group that is not the
/// gateway's. A file its group reads is quiet when the group is the one `check` runs with
/// (systemd runs it as the unit's user), and the advice keeps that group's read bit.
#[test]
fn check_warns_when_other_users_can_read_the_secret_files() {
    use std::os::unix::fs::MetadataExt;
    let d = tempfile::tempdir().unwrap();
    let keys = write_mode(d.path(), "keys.toml", KEYS_TOML, 0o644);
    let env = write_mode(
        d.path(),
        ".env",
        "CLICK_SERVICE_82154_SECRET_KEY=key-B-new\n",
        0o640,
    );
    let trust = write_mode(
        d.path(),
        "trust.secrets",
        "gateway-backend-secret-0123456789abcdef\n",
        0o604,
    );
    let cfg = write(
        d.path(),
        "gateway.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n[click]\nkeys_file = \"keys.toml\"\nenv_file = \".env\"\n[trust]\nsecret_file = \"trust.secrets\"\n",
    );
    // The .env of another group (root can give it one: a group `check` does not run with).
    let nogroup = 65534;
    let foreign = std::os::unix::fs::chown(&env, None, Some(nogroup)).is_ok();
    let (code, out, err) = run(bin().arg("check").arg("-c").arg(&cfg));
    assert_eq!(code, 0, "{out}{err}");
    for (setting, path, mode, what) in [
        ("click.keys_file", &keys, "0644", "the Click secret keys"),
        (
            "trust.secret_file",
            &trust,
            "0604",
            "the secrets that attest callbacks to the backend",
        ),
    ] {
        let want = format!(
            "warning: {setting}: {p} has mode {mode}: other users can read {what} (chmod 640 {p})\n",
            p = path.display()
        );
        assert!(err.contains(&want), "missing {want:?} in\n{err}");
    }
    if foreign {
        let group = std::fs::read_to_string("/etc/group")
            .unwrap()
            .lines()
            .find(|l| l.split(':').nth(2) == Some("65534"))
            .map_or("65534".to_owned(), |l| {
                l.split(':').next().unwrap().to_owned()
            });
        let want = format!(
            "warning: click.env_file: {p} has mode 0640: the members of group {group} can read the Click secret keys (chmod 600 {p})\n",
            p = env.display()
        );
        assert!(err.contains(&want), "missing {want:?} in\n{err}");
    } else {
        assert!(!err.contains("click.env_file"), "{err}");
    }
    assert_no_secrets(&err);

    // Readable by the owner and the group check runs with only: quiet.
    let own = std::fs::metadata(&keys).unwrap().gid();
    for p in [&keys, &env, &trust] {
        std::os::unix::fs::chown(p, None, Some(own)).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    let (code, _, err) = run(bin().arg("check").arg("-c").arg(&cfg));
    assert_eq!(code, 0);
    assert_eq!(err, "", "0640 files of check's own group, no warning");
}

/// The mistakes of a first configuration, each answered with what to write instead: an unknown
/// name in keys.toml, a duration without its unit, a misspelt setting.
#[test]
fn configuration_mistakes_say_how_to_fix_them() {
    let d = tempfile::tempdir().unwrap();
    write_mode(
        d.path(),
        "keys.toml",
        "[service.12345]\nsecret_keys = [\"sekrit-1\"]\n[services.70001]\nsecret_key = [\"sekrit-2\"]\nsecret_keys = [\"sekrit-3\"]\n",
        0o600,
    );
    let cfg = write(
        d.path(),
        "gateway.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\nconnect_timeout = 2\n[click]\nkeys_file = \"keys.toml\"\n",
    );
    let (code, _, err) = run(bin().arg("check").arg("-c").arg(&cfg));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("upstream.connect_timeout: 2 is a bare number: write a duration with its unit, in quotes: \"2s\" (units: ms, s, m, h, d)"),
        "{err}"
    );
    // The file is read section by section: fix the duration to see the keys file's problems.
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:0\"\nidle_timout = \"5s\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\nconnect_timeout = \"2s\"\n[click]\nkeys_file = \"keys.toml\"\n",
    )
    .unwrap();
    let (code, _, err) = run(bin().arg("check").arg("-c").arg(&cfg));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("server.idle_timout: unknown setting `idle_timout`, expected one of `listen`, `tls_listen`,"),
        "{err}"
    );
    assert!(!err.contains("``"), "{err}");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n[click]\nkeys_file = \"keys.toml\"\n",
    )
    .unwrap();
    let (code, _, err) = run(bin().arg("check").arg("-c").arg(&cfg));
    assert_eq!(code, 1, "{err}");
    let keys = d.path().join("keys.toml");
    for want in [
        format!(
            "error: {}: unknown top-level setting \"service\" (the file holds only [services.<id>] tables)\n",
            keys.display()
        ),
        format!(
            "error: {}: services.70001: unknown setting \"secret_key\" (the only setting is secret_keys)\n",
            keys.display()
        ),
    ] {
        assert!(err.contains(&want), "missing {want:?} in\n{err}");
    }
    assert!(!err.contains("sekrit"), "{err}");
}

/// A listener's port already taken stops `serve` with the setting that names it, before the
/// ledger is opened (nor created).
#[test]
fn a_port_in_use_names_its_setting_before_the_ledger_is_opened() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for (server, admin, setting) in [
        (
            format!("127.0.0.1:{port}"),
            "127.0.0.1:0".to_owned(),
            "server.listen",
        ),
        (
            "127.0.0.1:0".to_owned(),
            format!("127.0.0.1:{port}"),
            "admin.listen",
        ),
    ] {
        let d = tempfile::tempdir().unwrap();
        write_mode(d.path(), "keys.toml", KEYS_TOML, 0o600);
        let cfg = write(
            d.path(),
            "gateway.toml",
            &format!("[server]\nlisten = \"{server}\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n[admin]\nlisten = \"{admin}\"\n[click]\nkeys_file = \"keys.toml\"\n[ledger]\ndatabase = \"ledger.db\"\n"),
        );
        let (code, _, err) = run(bin().args(["serve", "--config"]).arg(&cfg));
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(&format!(
                "click-gateway: {setting}: cannot listen on 127.0.0.1:{port}: "
            )) && err.contains("(another process listens there: `ss -ltnp` shows which)"),
            "{err}"
        );
        assert!(
            !d.path().join("ledger.db").exists(),
            "{setting}: the ledger was created before the listeners were bound"
        );
    }
}
