//! The Prometheus alerting rules in `config/alerts.yml` are valid (`promtool check rules`),
//! pass their unit tests in `config/alerts.test.yml` (`promtool test rules`), and name only
//! metrics the gateway registers. promtool comes with Debian's `prometheus` package
//! (`tests/setup.sh` installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .output()
        .expect("promtool is installed (tests/setup.sh installs Debian's prometheus package)");
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules() {
    promtool(&["check", "rules", "config/alerts.yml"]);
}

#[test]
fn promtool_rule_tests_pass() {
    promtool(&["test", "rules", "config/alerts.test.yml"]);
}

fn rust_sources(dir: &Path, text: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_sources(&path, text);
        } else if path.extension().is_some_and(|e| e == "rs") {
            text.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// A metric renamed in the code would leave its alert silently empty: every
/// `click_gateway_*` name in the rules must be registered (as `"name"`, without the prefix
/// and, for counters, without `_total`).
#[test]
fn the_rules_name_registered_metrics() {
    let rules = std::fs::read_to_string(repo().join("config/alerts.yml")).unwrap();
    let mut src = String::new();
    rust_sources(&repo().join("src"), &mut src);
    let mut names: Vec<&str> = rules
        .match_indices("click_gateway_")
        .map(|(at, _)| {
            let rest = &rules[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(
        names.contains(&"click_gateway_callbacks_total"),
        "{names:?}"
    );
    for name in names {
        let base = &name["click_gateway_".len()..];
        let registered = [Some(base), base.strip_suffix("_total")]
            .into_iter()
            .flatten()
            .any(|n| src.contains(&format!("\"{n}\"")));
        assert!(
            registered,
            "config/alerts.yml uses {name}, which no registry.register(...) in src/ names"
        );
    }
}
