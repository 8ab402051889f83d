//! The callback path without sockets, in nanoseconds per callback:
//!
//! - `verify`: parse the body, check the fields, pick the service's keys, md5, constant-time
//!   compare (what every callback costs);
//! - `verify+forward`: the same, then the request the backend would get: headers rewritten,
//!   trust header set, origin-form target;
//! - `forged`: a callback that fails, diagnosis included (what a forger costs us).
//!
//! `cargo bench --bench callback`

use std::collections::BTreeMap;
use std::hint::black_box;

use click_gateway::click::keys::{KeyEntry, KeySet, KeySource, ServiceKeys};
use click_gateway::click::{FormKind, Parsed, Secret};
use click_gateway::config::UpstreamSettings;
use click_gateway::proxy::headers::{self, Scheme};
use click_gateway::proxy::Upstream;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Uri};

const V1: &str = "click_trans_id=2103045678&service_id=12345&click_paydoc_id=3302114455&merchant_trans_id=order-1001&amount=1000.00&action=0&error=0&error_note=Success&sign_time=2024-05-01+12%3A30%3A45&sign_string=4c30b2304e2d17ef17eec7d8710e914c";

fn keys() -> KeySet {
    let mut map = BTreeMap::new();
    for (id, key) in [
        (12345, "TEST_SECRET_aB3dE5"),
        (70001, "fake+key/with=chars&x"),
        (82154, "third-service-key"),
    ] {
        let entry = KeyEntry::new(Secret::new(key), KeySource::ProcessEnv("BENCH".into()));
        map.insert(id, ServiceKeys { keys: vec![entry] });
    }
    KeySet::new(map)
}

/// The headers a callback from Click arrives with.
fn click_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "shop.example"),
        ("user-agent", "Click/1.0"),
        ("accept", "*/*"),
        ("content-type", "application/x-www-form-urlencoded"),
        ("content-length", "214"),
        ("x-request-id", "0123456789abcdef"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn bench(c: &mut Criterion) {
    let keys = keys();
    let body = V1.as_bytes();
    c.bench_function("verify", |b| {
        b.iter(|| {
            let parsed = Parsed::parse(&FormKind::UrlEncoded, black_box(body)).unwrap();
            let verdict = parsed.judge(&keys);
            assert!(verdict.outcome.is_ok());
        })
    });

    let upstream = Upstream::new(
        &UpstreamSettings {
            url: "http://127.0.0.1:8000".to_owned().try_into().unwrap(),
            connect_timeout: click_gateway::config::Span::secs(2),
            response_timeout: click_gateway::config::Span::secs(30),
            pool_idle_timeout: click_gateway::config::Span::secs(1),
            pool_max_idle: 32,
            max_connections: 256,
            callback_connections: 16,
        },
        Default::default(),
    );
    let template = click_headers();
    let xff = headers::peer_value("203.0.113.7".parse().unwrap());
    let uri: Uri = "/click/prepare/".parse().unwrap();
    c.bench_function("verify+forward", |b| {
        b.iter(|| {
            let parsed = Parsed::parse(&FormKind::UrlEncoded, black_box(body)).unwrap();
            let verdict = parsed.judge(&keys);
            let verified = verdict.outcome.unwrap();
            let mut h = template.clone();
            headers::for_upstream(&mut h, &xff, Scheme::Https, false);
            headers::mark_verified(&mut h, HeaderValue::from(verified.service_id), None);
            black_box((upstream.uri_for(&uri).unwrap(), h));
        })
    });

    let forged = V1.replace("amount=1000.00", "amount=1000");
    c.bench_function("forged", |b| {
        b.iter(|| {
            let parsed =
                Parsed::parse(&FormKind::UrlEncoded, black_box(forged.as_bytes())).unwrap();
            let verdict = parsed.judge(&keys);
            assert!(verdict.outcome.is_err());
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
