//! Fuzzes what an attacker controls on a callback path: the body bytes and the content type.
//! Nothing may panic, and the gateway's callback fast path must judge every body exactly as
//! the general parser does (the same error, or the same verdict and echo).
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use click_gateway::click::keys::{KeyEntry, KeySet, KeySource, ServiceKeys};
use click_gateway::click::{self, Form, FormKind, Parsed, Secret};
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut map = BTreeMap::new();
        for (id, key) in [(12345, "TEST_SECRET_aB3dE5"), (70001, "fake+key/with=chars&x")] {
            let entry = KeyEntry::new(Secret::new(key), KeySource::ProcessEnv("FUZZ".into()));
            map.insert(id, ServiceKeys { keys: vec![entry] });
        }
        KeySet::new(map)
    })
}

fuzz_target!(|data: &[u8]| {
    // First byte picks the content type; the rest is the body.
    let Some((&selector, body)) = data.split_first() else { return };
    let content_type = match selector % 4 {
        0 | 1 => "application/x-www-form-urlencoded".to_owned(),
        2 => "multipart/form-data; boundary=XX".to_owned(),
        _ => format!("multipart/form-data; boundary={}", String::from_utf8_lossy(&body[..body.len().min(8)])),
    };
    let Ok(kind) = FormKind::from_content_type(&content_type) else { return };
    // The gateway's path (the callback fast path where the body allows it) and the general
    // parser must read every body alike: the same error, or the same verdict.
    let parsed = Parsed::parse(&kind, body);
    let form = Form::parse(&kind, body);
    let (parsed, form) = match (parsed, form) {
        (Ok(parsed), Ok(form)) => (parsed, form),
        (Err(a), Err(b)) => return assert_eq!(a, b),
        (a, b) => panic!("fast path {:?}, general path {:?}", a.is_ok(), b.is_ok()),
    };
    let (fast, general) = (parsed.judge(keys()), click::judge(&form, keys()));
    assert_eq!(fast.outcome, general.outcome);
    assert_eq!(fast.echo, general.echo);
});
