//! The shipped systemd unit is valid for systemd (`systemd-analyze verify`, with the unit
//! pointing at the freshly built binary) and keeps the settings the reload contract relies on.

use std::process::Command;

const UNIT: &str = include_str!("../config/click-gateway.service");

#[test]
fn unit_has_notify_reload_and_hardening() {
    let lines: Vec<&str> = UNIT.lines().filter(|l| !l.starts_with('#')).collect();
    for want in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadOnlyPaths=/etc/click-gateway",
        "User=click-gateway",
        "KillSignal=SIGTERM",
    ] {
        assert!(lines.contains(&want), "missing {want}");
    }
}

#[test]
fn systemd_analyze_accepts_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("click-gateway.service");
    std::fs::write(
        &unit,
        UNIT.replace(
            "/usr/local/bin/click-gateway",
            env!("CARGO_BIN_EXE_click-gateway"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze is installed (tests/setup.sh)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
