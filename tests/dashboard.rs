//! The Grafana dashboard in `config/grafana/click-gateway.json`: a JSON model with its
//! variables, rows in order and a description on every panel; every query parses as PromQL
//! (`promtool check rules`, each query a recording rule); and every metric, label and label
//! value its queries name is one a real gateway exports after real traffic, so no panel stays
//! empty because of a typo or a renamed metric.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dashboard() -> Value {
    let path = repo().join("config/grafana/click-gateway.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The panels, rows included, with those inside collapsed rows.
fn panels(d: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        all.push(p);
        if let Some(inner) = p["panels"].as_array() {
            all.extend(inner);
        }
    }
    all
}

/// One query of a panel.
struct Query {
    /// `panel 12 "Title" A`, for messages.
    at: String,
    expr: String,
    legend: String,
}

fn queries(d: &Value) -> Vec<Query> {
    panels(d)
        .into_iter()
        .filter(|p| p["type"] != "row")
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| Query {
                    at: format!("panel {} {} {}", p["id"], p["title"], t["refId"]),
                    expr: t["expr"].as_str().unwrap_or_default().to_owned(),
                    legend: t["legendFormat"].as_str().unwrap_or_default().to_owned(),
                })
        })
        .collect()
}

/// The series selectors of the query variables: `label_values(<selector>, <label>)`.
fn variable_selectors(d: &Value) -> Vec<(String, String)> {
    d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .unwrap();
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .unwrap_or_else(|| panic!("variable {}: not label_values(...): {q}", v["name"]));
            let (selector, _label) = inner.rsplit_once(',').unwrap();
            (
                format!("variable {}", v["name"]),
                selector.trim().to_owned(),
            )
        })
        .collect()
}

/// Grafana's own variables the queries may use.
const BUILTIN: &[&str] = &["__rate_interval", "__interval", "__range"];

/// The `$name` and `${name}` in `text`.
fn variables(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let name = if let Some(braced) = rest.strip_prefix('{') {
            braced.split('}').next().unwrap().to_owned()
        } else {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        out.push(name);
    }
    out
}

/// The query as Prometheus would get it, with a value for each variable.
fn substitute(expr: &str) -> String {
    let mut e = expr.to_owned();
    for (var, value) in [
        ("__rate_interval", "5m"),
        ("__interval", "1m"),
        ("__range", "1h"),
        ("instance", "127.0.0.1:9901"),
        ("job", "click-gateway"),
    ] {
        e = e
            .replace(&format!("${{{var}}}"), value)
            .replace(&format!("${var}"), value);
    }
    assert!(!e.contains('$'), "a variable left in {e}");
    e
}

#[test]
fn the_dashboard_has_its_variables_rows_and_a_description_on_every_panel() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36, "schemaVersion");
    assert_eq!(d["uid"], "click-gateway");
    let vars = d["templating"]["list"].as_array().unwrap();
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(
        var("job")["query"],
        "click-gateway",
        "the job of alerts.yml"
    );
    let instance = var("instance");
    assert_eq!(instance["type"], "query");
    assert_eq!(instance["datasource"]["uid"], "${datasource}");
    assert!(instance["definition"]
        .as_str()
        .unwrap()
        .starts_with("label_values(click_gateway_build_info"));
    let defined: BTreeSet<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();

    let all = panels(&d);
    let rows: Vec<&str> = all
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            "Callbacks: verdicts and refusals",
            "Backend: status and latency",
            "Ledger and replay guard",
            "Connections and pressure",
            "Keys and reloads",
        ]
    );
    assert_eq!(all[0]["type"], "row", "every panel sits in a row");

    let mut ids = BTreeSet::new();
    for p in &all {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "id {} twice",
            p["id"]
        );
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.trim().is_empty(), "a panel without a title: {p}");
        if p["type"] == "row" {
            continue;
        }
        let description = p["description"].as_str().unwrap_or_default();
        assert!(
            description.trim().len() > 40,
            "{title}: no description saying what to do"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert!(!t["expr"].as_str().unwrap().trim().is_empty(), "{title}");
        }
    }
    for q in queries(&d) {
        for v in variables(&q.expr) {
            assert!(
                BUILTIN.contains(&v.as_str()) || defined.contains(v.as_str()),
                "{}: ${v} is not a variable of the dashboard",
                q.at
            );
        }
        // Rates over Grafana's interval, never a fixed window that a long time range skips.
        if q.expr.contains("rate(") {
            assert!(q.expr.contains("[$__rate_interval]"), "{}", q.at);
        }
    }

    // No two panels overlap on the grid (24 columns).
    let boxes: Vec<(u64, u64, u64, u64, &str)> = all
        .iter()
        .map(|p| {
            let g = &p["gridPos"];
            let n = |k: &str| g[k].as_u64().unwrap();
            (n("x"), n("y"), n("w"), n("h"), p["title"].as_str().unwrap())
        })
        .collect();
    for (i, a) in boxes.iter().enumerate() {
        assert!(a.0 + a.2 <= 24, "{} is wider than the grid", a.4);
        for b in &boxes[i + 1..] {
            let apart =
                a.0 + a.2 <= b.0 || b.0 + b.2 <= a.0 || a.1 + a.3 <= b.1 || b.1 + b.3 <= a.1;
            assert!(apart, "{} and {} overlap", a.4, b.4);
        }
    }
}

#[test]
fn promtool_parses_every_query() {
    let d = dashboard();
    let mut rules = Vec::new();
    let mut exprs: Vec<(String, String)> =
        queries(&d).into_iter().map(|q| (q.at, q.expr)).collect();
    exprs.extend(variable_selectors(&d));
    for (i, (at, expr)) in exprs.iter().enumerate() {
        rules.push(serde_json::json!({
            "record": format!("dashboard:query_{i}"),
            "expr": substitute(expr),
            "labels": { "query": at },
        }));
    }
    assert!(rules.len() >= 30, "{} queries", rules.len());
    // JSON is YAML: promtool reads it as a rules file.
    let file = tempfile::Builder::new().suffix(".yml").tempfile().unwrap();
    let groups = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    std::fs::write(file.path(), serde_json::to_string_pretty(&groups).unwrap()).unwrap();
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(file.path())
        .output()
        .expect("promtool is installed (tests/setup.sh installs Debian's prometheus package)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "promtool check rules failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "{stdout}"
    );
}

/// A sample's labels, from `name{a="x",b="y"}`.
fn parse_labels(series: &str) -> (String, BTreeMap<String, String>) {
    let Some((name, rest)) = series.split_once('{') else {
        return (series.to_owned(), BTreeMap::new());
    };
    let body = rest.strip_suffix('}').unwrap();
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "{series}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.push(chars.next().unwrap()),
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    (name.to_owned(), labels)
}

/// A label matcher of a query: `name op "value"`.
#[derive(Debug)]
struct Matcher {
    metric: String,
    label: String,
    op: String,
    value: String,
}

/// What a query names: metrics (`click_gateway_*`), matchers on them, and the labels of its
/// groupings (`by`, `without`, `on`, `ignoring`, `group_left`, `group_right`).
#[derive(Debug, Default)]
struct Named {
    metrics: BTreeSet<String>,
    matchers: Vec<Matcher>,
    grouping: BTreeSet<String>,
}

fn is_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn names_in(expr: &str) -> Named {
    let mut named = Named::default();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < expr.len() {
        let c = b[i] as char;
        if c == '"' {
            // A string: skip it.
            i += 1;
            while i < expr.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if !is_name(c) || (i > 0 && is_name(b[i - 1] as char)) {
            i += 1;
            continue;
        }
        let end = expr[i..]
            .find(|c| !is_name(c))
            .map_or(expr.len(), |n| i + n);
        let word = &expr[i..end];
        let after = expr[end..].trim_start();
        if word.starts_with("click_gateway") {
            assert!(
                !word.contains(':'),
                "{word}: a recording rule; the dashboard must work without config/alerts.yml"
            );
            named.metrics.insert(word.to_owned());
            if let Some(inside) = after.strip_prefix('{') {
                let close = inside.find('}').unwrap();
                for m in inside[..close].split(',').filter(|m| !m.trim().is_empty()) {
                    let m = m.trim();
                    let at = m.find(['=', '!']).unwrap();
                    let (label, rest) = m.split_at(at);
                    let op_len = rest.find('"').unwrap();
                    named.matchers.push(Matcher {
                        metric: word.to_owned(),
                        label: label.trim().to_owned(),
                        op: rest[..op_len].trim().to_owned(),
                        value: rest[op_len + 1..rest.len() - 1].to_owned(),
                    });
                }
            }
        } else if [
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
        ]
        .contains(&word)
        {
            if let Some(inside) = after.strip_prefix('(') {
                let close = inside.find(')').unwrap();
                named.grouping.extend(
                    inside[..close]
                        .split(',')
                        .map(|l| l.trim().to_owned())
                        .filter(|l| !l.is_empty()),
                );
            }
        }
        i = end;
    }
    named
}

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// What the dashboard reads, checked against what a real gateway's `/metrics` shows after
/// real traffic of every kind the panels are about: every metric is there under the exact
/// name queried, every label queried is one of its labels, and every label value matched is
/// one it takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_label_and_value_the_dashboard_reads_is_exported_after_real_traffic() {
    let d = dashboard();
    let mut up = TestUpstream::start().await;
    // Service 70001 in shadow mode (would_reject); at most 2 connections per address
    // (connections_refused_total); an HTTPS listener (tls_handshake_failures_total); a ledger
    // (ledger_*, guard_checks_total).
    let config = ConfigDir::with_click(
        up.addr,
        KEYS_TOML,
        "max_connections_per_address = 2\ntls_listen = \"127.0.0.1:0\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n",
        "",
        "service_modes = { \"70001\" = \"shadow\" }\n[ledger]\ndatabase = \"ledger.db\"\n",
    );
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(config.dir.path().join("cert.pem"), pair.cert.pem()).unwrap();
    std::fs::write(
        config.dir.path().join("key.pem"),
        pair.signing_key.serialize_pem(),
    )
    .unwrap();
    let config_path = config.path();
    let gw = TestGateway::start_with(config).await;

    // A verified Prepare, and Click's resend of it (the replay guard: first, retry).
    for _ in 0..2 {
        let resp = callback(gw.addr, "/click/prepare/", V1).await;
        assert_eq!(resp.text(), r#"{"error":0,"upstream":true}"#);
        assert_eq!(up.next().await.body, V1.as_bytes());
    }
    // A forgery for a configured service (key_mismatch), one for a service without a key
    // (unknown_service), a malformed body (no service_id): refused, never forwarded.
    let forged = V1.replace("4c30b2304e2d17ef17eec7d8710e914c", &"0".repeat(32));
    let unknown = prepare_signed_with("some-key", "99999", 7);
    for body in [forged.as_str(), unknown.as_str(), "garbage"] {
        let resp = callback(gw.addr, "/click/prepare/", body).await;
        assert_eq!(resp.status, 200);
        assert_ne!(resp.json()["error"], 0, "{body}");
    }
    assert!(up.try_next().is_none(), "a refused callback was forwarded");
    // A forgery for the shadowed service: would_reject, forwarded anyway.
    let shadowed = prepare_signed_with("not-the-key", "70001", 8);
    let resp = callback(gw.addr, "/click/prepare/", &shadowed).await;
    assert_eq!(resp.text(), r#"{"error":0,"upstream":true}"#);
    up.next().await;
    // A plain GET through the proxy route.
    let resp = raw(
        gw.addr,
        b"GET /api/orders HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    up.next().await;
    // A body declared over server.max_body (1 MiB): 413, requests_refused_total.
    let resp = raw(
        gw.addr,
        b"POST /upload HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 2000000\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 413);
    // Three connections from one address allowed two: one is refused as it is accepted,
    // reset at once (even before connect() returns). The others are held until it shows.
    let mut held = Vec::new();
    for _ in 0..3 {
        if let Ok(s) = connect_from("127.0.0.5", gw.addr).await {
            held.push(s);
        }
    }
    // Plain HTTP on the HTTPS listener: a failed handshake.
    let mut tls = tokio::net::TcpStream::connect(gw.tls_addr.unwrap())
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tls.read_to_end(&mut sink))
        .await
        .expect("the gateway kept a failed handshake open");
    // A reload, as SIGHUP runs it (reloads_total, config_generation).
    let started =
        click_gateway::config::load(&config_path, &click_gateway::config::Environment::default())
            .unwrap();
    let reloader = click_gateway::reload::Reloader::new(
        config_path.clone(),
        gw.gateway.runtime.clone(),
        started.settings,
        None,
        gw.gateway.metrics.clone(),
    );
    let report = reloader
        .reload(&click_gateway::config::Environment::default())
        .unwrap();
    assert_eq!(report.generation, 2);
    // Every queued ledger row committed (ledger_rows_written_total, the commit histogram).
    gw.gateway.ledger.clone().unwrap().flush().await.unwrap();

    // The counters move with the traffic after the gateway has answered; wait for the last
    // ones (the refused connection, the failed handshake) to show.
    let mut m = scrape(gw.admin_addr).await;
    for series in [
        "click_gateway_connections_refused_total{reason=\"address_cap\"}",
        "click_gateway_tls_handshake_failures_total{reason=\"error\"}",
    ] {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !m.contains_key(series) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never exported: {series}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            m = scrape(gw.admin_addr).await;
        }
    }
    drop(held);

    // Each exported name with the label sets of its samples.
    let mut exported: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for series in m.keys() {
        let (name, labels) = parse_labels(series);
        exported.entry(name).or_default().push(labels);
    }

    let mut checked = BTreeSet::new();
    let mut all: Vec<(String, String, String)> = queries(&d)
        .into_iter()
        .map(|q| (q.at, q.expr, q.legend))
        .collect();
    all.extend(
        variable_selectors(&d)
            .into_iter()
            .map(|(at, s)| (at, s, String::new())),
    );
    for (at, expr, legend) in &all {
        let named = names_in(&substitute(expr));
        assert!(!named.metrics.is_empty(), "{at}: no click_gateway_ metric");
        for metric in &named.metrics {
            assert!(
                exported.contains_key(metric),
                "{at} reads {metric}, which /metrics does not show after the traffic; it shows:\n{}",
                exported.keys().cloned().collect::<Vec<_>>().join("\n")
            );
            checked.insert(metric.clone());
        }
        let has_label = |label: &str| {
            TARGET_LABELS.contains(&label)
                || named
                    .metrics
                    .iter()
                    .any(|n| exported[n].iter().any(|s| s.contains_key(label)))
        };
        let legend_labels = legend
            .split("{{")
            .skip(1)
            .map(|l| l.split("}}").next().unwrap().trim().to_owned());
        for label in named.grouping.iter().cloned().chain(legend_labels) {
            assert!(
                has_label(&label),
                "{at} uses the label {label}, which none of {:?} has",
                named.metrics
            );
        }
        for m in &named.matchers {
            assert!(has_label(&m.label), "{at}: {m:?}: no such label");
            if TARGET_LABELS.contains(&m.label.as_str()) {
                continue;
            }
            // Equality, and regexes that are a plain list of values: each value must occur.
            let values: Vec<&str> = match m.op.as_str() {
                "=" => vec![m.value.as_str()],
                "=~" if m
                    .value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '|') =>
                {
                    m.value.split('|').collect()
                }
                _ => continue,
            };
            for v in values {
                assert!(
                    exported[&m.metric]
                        .iter()
                        .any(|s| s.get(&m.label).map(String::as_str) == Some(v)),
                    "{at}: {}{{{}=\"{v}\"}} never occurs in /metrics",
                    m.metric,
                    m.label
                );
            }
        }
    }
    // The families of issue 24's list, each read by some panel.
    for family in [
        "click_gateway_callbacks_total",
        "click_gateway_upstream_responses_total",
        "click_gateway_upstream_errors_total",
        "click_gateway_upstream_duration_seconds_bucket",
        "click_gateway_gateway_duration_seconds_bucket",
        "click_gateway_ledger_rows_written_total",
        "click_gateway_ledger_dropped_total",
        "click_gateway_ledger_unrecorded_total",
        "click_gateway_ledger_queue_depth",
        "click_gateway_ledger_commit_duration_seconds_bucket",
        "click_gateway_guard_checks_total",
        "click_gateway_open_connections",
        "click_gateway_under_pressure",
        "click_gateway_connections_refused_total",
        "click_gateway_connections_closed_total",
        "click_gateway_requests_refused_total",
        "click_gateway_refusals_unlogged_total",
        "click_gateway_tls_handshake_failures_total",
        "click_gateway_config_generation",
        "click_gateway_reloads_total",
        "click_gateway_last_reload_success_timestamp_seconds",
        "click_gateway_verifications_total",
        "click_gateway_sign_time_skew_seconds_bucket",
        "click_gateway_build_info",
    ] {
        assert!(checked.contains(family), "no panel reads {family}");
    }
    gw.stop().await;
}
