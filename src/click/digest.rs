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

/// The key of [`keyed`]: 128 random bits a ledger keeps (its `meta` table) from its creation,
/// so that digests stay comparable across restarts. Never shown: `Debug` prints nothing of it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DigestKey([u8; 16]);

impl DigestKey {
    pub fn from_halves(a: i64, b: i64) -> DigestKey {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&a.to_le_bytes());
        key[8..].copy_from_slice(&b.to_le_bytes());
        DigestKey(key)
    }

    /// The two halves [`DigestKey::from_halves`] takes.
    pub fn halves(&self) -> (i64, i64) {
        let half = |h: &[u8]| i64::from_le_bytes(h.try_into().unwrap_or([0; 8]));
        (half(&self.0[..8]), half(&self.0[8..]))
    }

    /// A new random key, as two halves for the ledger's `meta` table.
    pub fn random_halves() -> (i64, i64) {
        use ring::rand::{SecureRandom, SystemRandom};
        let mut bytes = [0u8; 16];
        // The system's generator does not fail on Linux once it is seeded; if it ever did,
        // a key of the time still differs per ledger (the digest's secret is a second line:
        // forging needs a genuine signature first).
        if SystemRandom::new().fill(&mut bytes).is_err() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            bytes = now.to_le_bytes();
        }
        let (a, b) = bytes.split_at(8);
        let half = |h: &[u8]| i64::from_le_bytes(h.try_into().unwrap_or([0; 8]));
        (half(a), half(b))
    }
}

impl std::fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestKey(..)")
    }
}

/// Rule 1's digest of a message on SQLite: SipHash-1-3 under the ledger's [`DigestKey`] of
/// the same fields as [`canonical`], each name and value preceded by its length (so that no
/// two lists of fields feed it the same bytes), without building the text. A keyed hash: a
/// changed message with the digest of a genuine one cannot be searched for without the key
/// (SipHash is a pseudo-random function; its output is never shown), at a fifth of the cost
/// of SHA-256 over the canonical text (callgrind).
pub fn keyed(key: &DigestKey, fields: &[(&str, &str)]) -> i64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_key(&key.0);
    for (name, value) in fields {
        h.write(&(name.len() as u64).to_le_bytes());
        h.write(name.as_bytes());
        h.write(&(value.len() as u64).to_le_bytes());
        h.write(value.as_bytes());
    }
    h.finish() as i64
}

/// SHA-256 of the canonical text: what rule 1 compares on PostgreSQL, where several gateways
/// share the bindings and no key is shared (one pass over a few hundred bytes).
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
    fn the_keyed_digest_tells_fields_apart_and_depends_on_the_key() {
        let k = DigestKey::from_halves(1, 2);
        let d = keyed(&k, &[("a", "bc")]);
        assert_eq!(d, keyed(&k, &[("a", "bc")]));
        // The same bytes split otherwise, or one more empty field: another digest.
        assert_ne!(d, keyed(&k, &[("ab", "c")]));
        assert_ne!(d, keyed(&k, &[("a", "bc"), ("", "")]));
        assert_ne!(d, keyed(&DigestKey::from_halves(1, 3), &[("a", "bc")]));
        assert_eq!(format!("{k:?}"), "DigestKey(..)");
    }

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
