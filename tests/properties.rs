//! Property tests of the form parser and the verifier: for any field values a body signed
//! with the key verifies, any single-byte change to a signed field or the digest fails, and the
//! parsers never panic on arbitrary bytes.

use std::collections::BTreeMap;

use click_gateway::click::keys::{KeyEntry, KeySet, KeySource, ServiceKeys};
use click_gateway::click::sign::{CallbackBody, SignedFields};
use click_gateway::click::{self, Form, FormKind, Secret};
use proptest::prelude::*;

fn keys(service: u64, key: &str) -> KeySet {
    let mut map = BTreeMap::new();
    map.insert(
        service,
        ServiceKeys {
            keys: vec![KeyEntry::new(
                Secret::new(key),
                KeySource::ProcessEnv("K".into()),
            )],
        },
    );
    KeySet::new(map)
}

fn verifies(body: &[u8], keys: &KeySet) -> bool {
    match Form::parse(&FormKind::UrlEncoded, body) {
        Ok(form) => click::judge(&form, keys).outcome.is_ok(),
        Err(_) => false,
    }
}

#[derive(Debug, Clone)]
struct Fields {
    click_trans_id: u64,
    service_id: u64,
    merchant_trans_id: String,
    prepare_id: Option<u64>,
    amount: String,
    sign_time: String,
    key: String,
}

fn fields() -> impl Strategy<Value = Fields> {
    (
        any::<u64>(),
        any::<u64>(),
        "\\PC{1,40}",
        proptest::option::of(any::<u64>()),
        (any::<u32>(), proptest::option::of(0u8..100)),
        "\\PC{1,25}",
        "[!-~]{1,40}",
    )
        .prop_map(|(cti, sid, mti, pid, (whole, cents), st, key)| Fields {
            click_trans_id: cti,
            service_id: sid,
            merchant_trans_id: mti,
            prepare_id: pid,
            amount: match cents {
                Some(c) => format!("{whole}.{c:02}"),
                None => whole.to_string(),
            },
            sign_time: st,
            key,
        })
}

impl Fields {
    fn body(&self, key: &str) -> String {
        let (cti, sid) = (self.click_trans_id.to_string(), self.service_id.to_string());
        let pid = self.prepare_id.map(|p| p.to_string());
        CallbackBody {
            signed: SignedFields {
                click_trans_id: &cti,
                service_id: &sid,
                merchant_trans_id: &self.merchant_trans_id,
                merchant_prepare_id: pid.as_deref(),
                amount: &self.amount,
                action: if pid.is_some() { "1" } else { "0" },
                sign_time: &self.sign_time,
            },
            click_paydoc_id: "1",
            error: "0",
            error_note: "Success",
        }
        .encode(&Secret::new(key.to_owned()))
    }
}

/// Replaces the value of `name` in an encoded body with `value` (encoded).
fn with_field(body: &str, name: &str, value: &str) -> String {
    body.split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k == name => {
                let mut out = format!("{k}=");
                click_gateway::click::sign::encode_component(value, &mut out);
                out
            }
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn decoded(body: &str, name: &str) -> String {
    let form = Form::parse(&FormKind::UrlEncoded, body.as_bytes()).unwrap();
    let v = form.values(name).next().unwrap().value.to_string();
    v
}

/// Changes the byte at `at` (mod len) of `s` to another byte, keeping the text UTF-8 where
/// possible by changing whole characters.
fn mutate(s: &str, at: usize, to: char) -> Option<String> {
    let chars: Vec<char> = s.chars().collect();
    let i = at % chars.len();
    (chars[i] != to).then(|| {
        let mut c = chars.clone();
        c[i] = to;
        c.into_iter().collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn signed_bodies_verify(f in fields()) {
        let body = f.body(&f.key);
        prop_assert!(verifies(body.as_bytes(), &keys(f.service_id, &f.key)), "{}", body);
    }

    #[test]
    fn another_key_never_verifies(f in fields(), other in "[!-~]{1,40}") {
        prop_assume!(other != f.key);
        let body = f.body(&other);
        prop_assert!(!verifies(body.as_bytes(), &keys(f.service_id, &f.key)));
    }

    #[test]
    fn any_change_to_a_signed_field_fails_the_signature(f in fields(), field in 0usize..6, at in any::<usize>(), to in any::<char>(), digit in 0u32..10) {
        let body = f.body(&f.key);
        let name = ["click_trans_id", "service_id", "merchant_trans_id", "merchant_prepare_id", "amount", "sign_time"][field];
        prop_assume!(name != "merchant_prepare_id" || f.prepare_id.is_some());
        // Numeric fields change to another digit, so the field stays well-formed and only the
        // signature can catch the change.
        let numeric = !matches!(name, "merchant_trans_id" | "sign_time");
        let to = if numeric { char::from_digit(digit, 10).unwrap() } else { to };
        let original = decoded(&body, name);
        let Some(changed) = mutate(&original, at, to) else { return Ok(()); };
        prop_assume!(name == "amount" || !numeric || changed.parse::<u64>().is_ok());
        let tampered = with_field(&body, name, &changed);
        let form = Form::parse(&FormKind::UrlEncoded, tampered.as_bytes()).unwrap();
        let outcome = click::judge(&form, &keys(f.service_id, &f.key)).outcome;
        // (A changed service_id names a service without keys: a signature failure too.)
        prop_assert!(matches!(outcome, Err(click::RejectReason::Signature(_))), "{} -> {}: {:?}", body, tampered, outcome);
    }

    #[test]
    fn any_change_to_the_digest_fails(f in fields(), at in 0usize..32, to in 0u8..16) {
        let body = f.body(&f.key);
        let digest = decoded(&body, "sign_string");
        let hex = char::from_digit(u32::from(to), 16).unwrap();
        let old = digest.as_bytes()[at] as char;
        prop_assume!(old.to_ascii_lowercase() != hex);
        let mut d = digest.clone().into_bytes();
        d[at] = hex as u8;
        let tampered = body.replace(&digest, std::str::from_utf8(&d).unwrap());
        prop_assert!(!verifies(tampered.as_bytes(), &keys(f.service_id, &f.key)));
    }

    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), boundary in "[ -~]{1,70}") {
        let _ = Form::parse(&FormKind::UrlEncoded, &bytes);
        let kind = FormKind::Multipart { boundary: boundary.clone() };
        let _ = Form::parse(&kind, &bytes);
        // And multipart bodies that do start with the boundary.
        let mut framed = format!("--{boundary}\r\n").into_bytes();
        framed.extend_from_slice(&bytes);
        let _ = Form::parse(&kind, &framed);
        let keys = keys(12345, "k");
        if let Ok(form) = Form::parse(&FormKind::UrlEncoded, &bytes) {
            let _ = click::judge(&form, &keys);
        }
    }

    #[test]
    fn structured_garbage_never_panics(pairs in proptest::collection::vec(("[a-z_%+]{0,12}", "[ -~]{0,30}"), 0..20)) {
        let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let body = body.join("&");
        if let Ok(form) = Form::parse(&FormKind::UrlEncoded, body.as_bytes()) {
            let _ = click::judge(&form, &keys(1, "k"));
        }
    }
}
