//! Property tests of the form parser and the verifier: for any field values a body signed
//! with the key verifies, any single-byte change to a signed field or the digest fails, the
//! parsers never panic on arbitrary bytes, the word-at-a-time urlencoded scanner reads bodies
//! as a plain byte-by-byte parser does, and the callback fast path judges every body exactly
//! as the general path does.

use std::collections::BTreeMap;

use click_gateway::click::form::{parse_urlencoded, FormError, MAX_FIELDS};
use click_gateway::click::keys::{KeyEntry, KeySet, KeySource, ServiceKeys};
use click_gateway::click::sign::{CallbackBody, SignedFields};
use click_gateway::click::{self, Form, FormKind, Parsed, Secret};
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

/// Judged the way the gateway judges a callback (the fast path when the body allows it).
fn verifies(body: &[u8], keys: &KeySet) -> bool {
    match Parsed::parse(&FormKind::UrlEncoded, body) {
        Ok(parsed) => parsed.judge(keys).outcome.is_ok(),
        Err(_) => false,
    }
}

/// `parse_qsl` as the Python documentation describes it, one byte at a time: split on `&`,
/// skip empty segments, split at the first `=`, `+` is a space, `%XX` a byte; plus this
/// gateway's refusals (a bad escape, a non-UTF-8 body or value, too many fields). Each field
/// is (name, value, raw value).
fn reference_parse(body: &[u8]) -> Result<Vec<(String, String, String)>, ()> {
    fn decode(raw: &str) -> Result<String, ()> {
        let bytes = raw.as_bytes();
        let (mut out, mut i) = (Vec::new(), 0);
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = bytes.get(i + 1..i + 3).ok_or(())?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return Err(());
                    }
                    let hex = std::str::from_utf8(hex).map_err(|_| ())?;
                    out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).map_err(|_| ())
    }
    let text = std::str::from_utf8(body).map_err(|_| ())?;
    let segments: Vec<&str> = text.split('&').filter(|s| !s.is_empty()).collect();
    if segments.len() > MAX_FIELDS {
        return Err(());
    }
    segments
        .into_iter()
        .map(|seg| {
            let (name, raw) = seg.split_once('=').unwrap_or((seg, ""));
            Ok((decode(name)?, decode(raw)?, raw.to_owned()))
        })
        .collect()
}

/// A body drawn from pieces that matter to the scanner and the callback fields: the names
/// Click sends (plain, escaped, repeated), unknown names, escapes good and bad, `+`, multi-byte
/// UTF-8 and empty segments.
fn callback_like_body() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        4 => prop::sample::select(vec![
            "click_trans_id", "service_id", "click_paydoc_id", "merchant_trans_id", "amount",
            "action", "error", "error_note", "sign_time", "sign_string", "merchant_prepare_id",
        ]).prop_map(str::to_owned),
        1 => prop::sample::select(vec!["service%5Fid", "amount+", "x", "", "sign_time%", "%E2%82%AC"])
            .prop_map(str::to_owned),
    ];
    let value = "([0-9a-zA-Z.:-]|%3A|%20|%2|%ZZ|%e2%82%ac|%C3|\\+|=|€){0,12}";
    proptest::collection::vec((name, value, any::<bool>()), 0..16).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v, with_eq)| if with_eq { format!("{k}={v}") } else { k })
            .collect::<Vec<_>>()
            .join("&")
    })
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
    fn signed_bodies_take_the_fast_path(f in fields()) {
        let body = f.body(&f.key);
        let parsed = Parsed::parse(&FormKind::UrlEncoded, body.as_bytes()).unwrap();
        prop_assert!(matches!(parsed, Parsed::Slotted(_)));
        prop_assert!(parsed.judge(&keys(f.service_id, &f.key)).outcome.is_ok());
    }

    #[test]
    fn fast_path_judges_as_the_general_path(body in callback_like_body(), signed in fields(), splice in any::<prop::sample::Index>()) {
        // Judged with the signer's own key, so verified callbacks, wrong keys and known services
        // are compared too; each case also takes the signed callback alone and with a random
        // piece spliced in.
        let keys = keys(signed.service_id, &signed.key);
        let signed = signed.body(&signed.key);
        let at = splice.index(signed.len() + 1);
        let spliced = format!("{}&{body}&{}", &signed[..at.min(signed.len())], &signed[at.min(signed.len())..]);
        for body in [body, signed.clone(), spliced] {
            let general = Form::parse(&FormKind::UrlEncoded, body.as_bytes());
            let fast = Parsed::parse(&FormKind::UrlEncoded, body.as_bytes());
            match (&general, &fast) {
                (Ok(form), Ok(parsed)) => {
                    let (g, f) = (click::judge(form, &keys), parsed.judge(&keys));
                    prop_assert_eq!(g.echo, f.echo, "{}", body);
                    prop_assert_eq!(&g.outcome, &f.outcome, "{}", body);
                    prop_assert_eq!(format!("{:?}", g.callback), format!("{:?}", f.callback), "{}", body);
                }
                (Err(g), Err(f)) => prop_assert_eq!(g, f),
                _ => prop_assert!(false, "{body:?}: general {general:?}, fast {}", fast.is_ok()),
            }
        }
    }

    #[test]
    fn urlencoded_parser_matches_a_byte_by_byte_reference(
        bytes in prop_oneof![
            callback_like_body().prop_map(String::into_bytes),
            // Multi-byte UTF-8 drawn whole, so most bodies get past the UTF-8 check.
            proptest::collection::vec(
                prop::sample::select(vec!["&", "=", "%", "+", "a", "0", "F", "é", " ", "%C3", "%A9"]),
                0..200,
            ).prop_map(|pieces| pieces.concat().into_bytes()),
            // Around the field cap.
            (60usize..70).prop_map(|n| "a=1&".repeat(n).into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..64),
        ]
    ) {
        let ours = parse_urlencoded(&bytes).map(|form| {
            form.fields
                .into_iter()
                .map(|f| (f.name.into_owned(), f.value.into_owned(), f.raw_value.to_owned()))
                .collect::<Vec<_>>()
        });
        let expected = reference_parse(&bytes);
        prop_assert_eq!(ours.map_err(|_: FormError| ()), expected, "{:?}", String::from_utf8_lossy(&bytes));
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
        if let Ok(parsed) = Parsed::parse(&FormKind::UrlEncoded, &bytes) {
            let _ = parsed.judge(&keys);
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
