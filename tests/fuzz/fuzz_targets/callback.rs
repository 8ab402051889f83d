//! Fuzzes what an attacker controls on a callback path: the body bytes and the content type.
//! Nothing may panic, and a body that verifies must verify again after a round trip through
//! the parser (the verdict is a function of the bytes alone).
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use click_gateway::click::keys::{KeyEntry, KeySet, KeySource, ServiceKeys};
use click_gateway::click::{self, Form, FormKind, Secret};
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
    let Ok(form) = Form::parse(&kind, body) else { return };
    let first = click::judge(&form, keys()).outcome.is_ok();
    let again = Form::parse(&kind, body).map(|f| click::judge(&f, keys()).outcome.is_ok());
    assert_eq!(Ok(first), again);
});
