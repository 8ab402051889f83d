//! One text per message, and its digest: what the replay guard binds a signature to.
//!
//! Click's `sign_string` covers only some fields (not `error`, `error_note` nor
//! `click_paydoc_id`: see the formulas in [`super::sign`]), so the guard compares whole
//! messages: every decoded field but the signature, in one canonical text ([`canonical`]),
//! hashed ([`digest`]). The same fields give the same text whatever order or encoding the body
//! used; any other fields give another.

use super::Parsed;

/// The canonical text of a parsed message (see [`canonical`]).
pub fn of(parsed: &Parsed<'_>) -> String {
    canonical(&parsed.fields())
}

/// The fields as one JSON object, `(name, value)` pairs in the order given (sorted by name,
/// each name once: [`Parsed::fields`]): a canonical text of the message, the same for the
/// same fields and different for any other, since JSON's escaping is one to one. It is what
/// the store keeps to name the fields a later message changed, and what [`digest`] hashes.
pub fn canonical(fields: &[(&str, &str)]) -> String {
    let size: usize = fields.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
    let mut out = String::with_capacity(size + 2);
    out.push('{');
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(&mut out, name);
        out.push(':');
        json_string(&mut out, value);
    }
    out.push('}');
    out
}

/// Appends `text` as a JSON string (RFC 8259 §7: `"` and `\` escaped, control characters as
/// `\u00XX`, everything else as it is).
fn json_string(out: &mut String, text: &str) {
    out.push('"');
    let mut plain = 0;
    for (i, b) in text.bytes().enumerate() {
        if b == b'"' || b == b'\\' || b < 0x20 {
            out.push_str(&text[plain..i]);
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                _ => {
                    let [hi, lo] = super::hex::lower(b);
                    out.push_str("\\u00");
                    out.push(char::from(hi));
                    out.push(char::from(lo));
                }
            }
            plain = i + 1;
        }
    }
    out.push_str(&text[plain..]);
    out.push('"');
}

/// SHA-256 of the canonical text: what rule 1 compares (one pass over a few hundred bytes).
pub fn digest(canonical: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref());
    out
}

/// The names of the fields that differ between two canonical texts (see [`canonical`]); a
/// field that is in one and not the other differs too. Anything that is not such an object
/// reads as no fields.
pub fn differing(first: &str, now: &str) -> Vec<String> {
    let read = |text: &str| -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(text).unwrap_or_default()
    };
    let (a, b) = (read(first), read(now));
    let mut names: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_text_tells_re_split_fields_apart_and_is_json() {
        let a = canonical(&[("amount", "1000.00"), ("merchant_prepare_id", "5001")]);
        let b = canonical(&[("amount", "11000.00"), ("merchant_prepare_id", "500")]);
        assert_ne!(digest(&a), digest(&b));
        assert_eq!(a, r#"{"amount":"1000.00","merchant_prepare_id":"5001"}"#);
        // Nor can a value borrow from its name, or escaping make two lists alike.
        assert_ne!(canonical(&[("ab", "c")]), canonical(&[("a", "bc")]));
        let odd = canonical(&[("n", "a\"b\\c\n\u{1}é")]);
        let parsed: serde_json::Value = serde_json::from_str(&odd).unwrap();
        assert_eq!(parsed["n"], "a\"b\\c\n\u{1}é");
        assert_eq!(differing(&a, &b), ["amount", "merchant_prepare_id"]);
    }

    #[test]
    fn differing_names_changed_added_and_removed_fields() {
        let first = r#"{"amount":"1000.00","error":"-5017","merchant_prepare_id":"5001"}"#;
        let now = r#"{"amount":"11000.00","error":"-5017","merchant_prepare_id":"500","x":"1"}"#;
        assert_eq!(
            differing(first, now),
            ["amount", "merchant_prepare_id", "x"]
        );
        assert!(differing(first, first).is_empty());
    }
}
