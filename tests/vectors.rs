//! The protocol's test vectors (`tests/data/click-vectors.json`, a copy of the shared
//! `click-vectors.json`) and their near-misses, through the library's verifier and diagnosis.

use std::collections::BTreeMap;

use click_gateway::click::diagnose::{Diagnosis, Hint};
use click_gateway::click::keys::{KeyEntry, KeySet, KeySource, ServiceKeys};
use click_gateway::click::sign::{sign, SignedFields};
use click_gateway::click::{self, Form, FormKind, Parsed, RejectReason, Secret};

#[derive(serde::Deserialize)]
struct Vector {
    name: String,
    secret: String,
    body: String,
    hashed: String,
    md5: String,
}

fn vectors() -> Vec<Vector> {
    serde_json::from_str(include_str!("data/click-vectors.json")).unwrap()
}

fn keyset(services: &[(u64, &[&str])]) -> KeySet {
    let mut map = BTreeMap::new();
    for (id, keys) in services {
        let keys = keys
            .iter()
            .map(|k| KeyEntry::new(Secret::new(*k), KeySource::ProcessEnv(format!("K{id}"))))
            .collect();
        map.insert(*id, ServiceKeys { keys });
    }
    KeySet::new(map)
}

/// Judged as the gateway judges a callback: the fast path where the body allows it, and the
/// general path must agree.
fn judge(body: &str, keys: &KeySet) -> Result<click::Verified, RejectReason> {
    let parsed = Parsed::parse(&FormKind::UrlEncoded, body.as_bytes()).unwrap();
    let form = Form::parse(&FormKind::UrlEncoded, body.as_bytes()).unwrap();
    let outcome = parsed.judge(keys).outcome;
    assert_eq!(outcome, click::judge(&form, keys).outcome, "{body}");
    outcome
}

fn diagnosis(body: &str, keys: &KeySet) -> Diagnosis {
    match judge(body, keys) {
        Err(RejectReason::Signature(d)) => d,
        other => panic!("expected a signature failure, got {other:?}"),
    }
}

fn service_of(body: &str) -> u64 {
    let form = Form::parse(&FormKind::UrlEncoded, body.as_bytes()).unwrap();
    let id = form
        .values("service_id")
        .next()
        .unwrap()
        .value
        .parse()
        .unwrap();
    id
}

#[test]
fn every_vector_verifies_with_its_key_and_hashes_the_documented_string() {
    for v in vectors() {
        let id = service_of(&v.body);
        let keys = keyset(&[(id, &[&v.secret])]);
        let verified = judge(&v.body, &keys).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!((verified.service_id, verified.slot), (id, 0), "{}", v.name);
        // The documented string, hashed, is the documented digest: our field order is Click's.
        let digest = format!(
            "{:x}",
            <md5::Md5 as md5::Digest>::digest(v.hashed.as_bytes())
        );
        assert_eq!(digest, v.md5, "{}", v.name);
    }
}

#[test]
fn the_matching_slot_is_reported() {
    let v = &vectors()[0];
    let keys = keyset(&[(12345, &["new-key", &v.secret])]);
    assert_eq!(judge(&v.body, &keys).unwrap().slot, 1);
}

#[test]
fn uppercase_digest_verifies() {
    let v = &vectors()[0];
    let body = v.body.replace(&v.md5, &v.md5.to_uppercase());
    assert!(judge(&body, &keyset(&[(12345, &[&v.secret])])).is_ok());
}

#[test]
fn near_misses_from_the_protocol_are_rejected_with_minus_1() {
    let v = &vectors()[0];
    let keys = keyset(&[(12345, &[&v.secret])]);
    for wrong in [
        "98bccec0b93a8c704d1daef634aeecb4", // amount hashed as 1000
        "8ec41dc0f1a8c1cb8955d2dced13e809", // amount hashed as 1000.0
        "1fe497622140d77fe18c1bcc7614b5fe", // sign_time with '+' left in
    ] {
        let body = v.body.replace(&v.md5, wrong);
        let err = judge(&body, &keys).unwrap_err();
        assert_eq!(err.click_error().code(), -1, "{wrong}");
    }
}

#[test]
fn any_single_byte_change_to_a_signed_field_fails() {
    let v = &vectors()[1]; // complete: every signed field present
    let keys = keyset(&[(12345, &[&v.secret])]);
    for (field, from, to) in [
        (
            "click_trans_id",
            "click_trans_id=2103045678",
            "click_trans_id=2103045679",
        ),
        (
            "merchant_trans_id",
            "merchant_trans_id=order-1001",
            "merchant_trans_id=order-1002",
        ),
        (
            "merchant_prepare_id",
            "merchant_prepare_id=5001",
            "merchant_prepare_id=5002",
        ),
        ("amount", "amount=1000.00", "amount=1000.01"),
        ("sign_time", "12%3A31%3A02", "12%3A31%3A03"),
        ("sign_string", "sign_string=4b24", "sign_string=4b25"),
    ] {
        let body = v.body.replace(from, to);
        assert_ne!(body, v.body);
        assert!(judge(&body, &keys).is_err(), "{field}");
    }
    // Unsigned fields may change: error and error_note are not part of the signature.
    let body = v
        .body
        .replace("error=0&error_note=Success", "error=-5017&error_note=x");
    assert!(judge(&body, &keys).is_ok());
}

#[test]
fn diagnosis_unknown_service() {
    let v = &vectors()[0];
    let d = diagnosis(&v.body, &keyset(&[(70001, &["other"])]));
    assert_eq!(
        d,
        Diagnosis::UnknownService {
            service_id: 12345,
            other: None
        }
    );
    // What the request path logs: the settings by name (the paths are not at hand there),
    // and the command that tries a key once one is.
    assert_eq!(
        d.to_string(),
        "no key is configured for service 12345: put it in click.keys_file as [services.12345] secret_keys or in click.env_file as CLICK_SERVICE_12345_SECRET_KEY and reload (SIGHUP), or in the gateway's environment as CLICK_SERVICE_12345_SECRET_KEY and restart; to try a key on the refused callbacks first: click-gateway recheck --service-id 12345 --secret-file <file>"
    );
}

#[test]
fn diagnosis_key_filed_under_another_service() {
    let v = &vectors()[0];
    // No 12345 at all: its key sits under 70001.
    let d = diagnosis(&v.body, &keyset(&[(70001, &[&v.secret])]));
    assert!(
        matches!(d, Diagnosis::UnknownService { other: Some(m), .. } if m.service_id == 70001),
        "{d:?}"
    );
    assert!(
        d.to_string().contains(
            "that key is probably filed under the wrong service id; otherwise put the key of service 12345 in click.keys_file as [services.12345] secret_keys or in click.env_file"
        ),
        "{d}"
    );
    // 12345 has a wrong key, 70001 has 12345's key: swapped keys.
    let d = diagnosis(
        &v.body,
        &keyset(&[(12345, &["wrong"]), (70001, &[&v.secret])]),
    );
    assert!(
        matches!(
            d,
            Diagnosis::KeyMismatch {
                hint: Some(Hint::OtherService(_)),
                ..
            }
        ),
        "{d:?}"
    );
    assert!(d.to_string().contains("service 70001"), "{d}");
}

#[test]
fn diagnosis_wrong_key_names_fingerprints_never_keys() {
    let v = &vectors()[0];
    let d = diagnosis(&v.body, &keyset(&[(12345, &["wrong-one", "wrong-two"])]));
    let text = d.to_string();
    assert_eq!(d.hint_label(), None);
    for k in ["wrong-one", "wrong-two"] {
        assert!(!text.contains(k), "{text}");
        assert!(
            text.contains(Secret::new(k).fingerprint().as_str()),
            "{text}"
        );
    }
}

/// Re-signs vector V1's fields with one thing changed, as a faulty signer would.
fn v1_signed_with(
    f: impl Fn(SignedFields<'_>) -> String,
    body_edit: impl Fn(&str) -> String,
) -> String {
    let v = &vectors()[0];
    let fields = SignedFields {
        click_trans_id: "2103045678",
        service_id: "12345",
        merchant_trans_id: "order-1001",
        merchant_prepare_id: None,
        amount: "1000.00",
        action: "0",
        sign_time: "2024-05-01 12:30:45",
    };
    body_edit(&v.body).replace(&v.md5, &f(fields))
}

#[test]
fn diagnosis_amount_reformatted() {
    let key = Secret::new(vectors()[0].secret.clone());
    let keys = keyset(&[(12345, &[&vectors()[0].secret])]);
    // The signer hashed 1000 while the body says 1000.00.
    let body = v1_signed_with(
        |f| {
            sign(
                &SignedFields {
                    amount: "1000",
                    ..f
                },
                &key,
            )
            .to_string()
        },
        str::to_owned,
    );
    let d = diagnosis(&body, &keys);
    assert_eq!(d.hint_label(), Some("amount_format"));
    assert!(
        d.to_string().contains("\"1000\" instead of \"1000.00\""),
        "{d}"
    );
}

#[test]
fn diagnosis_trimmed_field() {
    let key = Secret::new(vectors()[0].secret.clone());
    let keys = keyset(&[(12345, &[&vectors()[0].secret])]);
    let body = v1_signed_with(
        |f| sign(&f, &key).to_string(),
        |b| {
            b.replace(
                "merchant_trans_id=order-1001",
                "merchant_trans_id=order-1001+",
            )
        },
    );
    let d = diagnosis(&body, &keys);
    assert_eq!(d.hint_label(), Some("trimmed_field"), "{d}");
    assert!(d.to_string().contains("merchant_trans_id"), "{d}");
}

#[test]
fn diagnosis_encoding_mistakes() {
    let key = Secret::new(vectors()[0].secret.clone());
    let keys = keyset(&[(12345, &[&vectors()[0].secret])]);
    let raw = v1_signed_with(
        |f| {
            sign(
                &SignedFields {
                    sign_time: "2024-05-01+12%3A30%3A45",
                    ..f
                },
                &key,
            )
            .to_string()
        },
        str::to_owned,
    );
    assert_eq!(
        diagnosis(&raw, &keys).hint_label(),
        Some("undecoded_values")
    );
    let plus = v1_signed_with(
        |f| {
            sign(
                &SignedFields {
                    sign_time: "2024-05-01+12:30:45",
                    ..f
                },
                &key,
            )
            .to_string()
        },
        str::to_owned,
    );
    assert_eq!(
        diagnosis(&plus, &keys).hint_label(),
        Some("plus_not_decoded")
    );
}

#[test]
fn diagnosis_complete_signed_with_the_prepare_formula() {
    let v = &vectors()[1];
    let key = Secret::new(v.secret.clone());
    let keys = keyset(&[(12345, &[&v.secret])]);
    let prepare_shaped = SignedFields {
        click_trans_id: "2103045678",
        service_id: "12345",
        merchant_trans_id: "order-1001",
        merchant_prepare_id: None,
        amount: "1000.00",
        action: "1",
        sign_time: "2024-05-01 12:31:02",
    };
    let body = v
        .body
        .replace(&v.md5, &sign(&prepare_shaped, &key).to_string());
    assert_eq!(diagnosis(&body, &keys).hint_label(), Some("wrong_formula"));
}

#[test]
fn malformed_sign_string() {
    let v = &vectors()[0];
    let keys = keyset(&[(12345, &[&v.secret])]);
    for bad in [
        "xyz",
        "4c30b2304e2d17ef17eec7d8710e914",
        "4c30b2304e2d17ef17eec7d8710e914cc",
    ] {
        let body = v.body.replace(&v.md5, bad);
        assert_eq!(diagnosis(&body, &keys), Diagnosis::MalformedDigest);
    }
}
