//! Hex digits, read with one table load each: `%XX` escapes in form bodies and the 32-digit
//! `sign_string`. Both accept either case, as Python's `unquote` and Click's signature
//! comparison do.
//!
//! And written: the crate's one hex encoder, lowercase for digests, fingerprints, the backend
//! attestation and request ids, uppercase for `%XX` escapes. One table each, so every hex
//! string the gateway writes is spelled the same way.

/// The value of each hex digit (either case), `0xff` for every other byte. Or-ing the values
/// of several digits and testing `< 16` checks them all at once.
pub const DIGIT: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// The byte written by the two hex digits `hi` and `lo`, if both are hex digits.
pub fn byte(hi: u8, lo: u8) -> Option<u8> {
    let (hi, lo) = (DIGIT[usize::from(hi)], DIGIT[usize::from(lo)]);
    (hi | lo < 16).then_some(hi << 4 | lo)
}

/// Lowercase: what Click sends `sign_string` in, and what `sha256sum`, `md5sum` and Python's
/// `hexdigest()` print (fingerprints and attestations are checked against those).
const LOWER: &[u8; 16] = b"0123456789abcdef";

/// Uppercase: how `%XX` escapes are written (RFC 3986 §2.1, WHATWG URL percent-encoding).
const UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn digits(b: u8, table: &[u8; 16]) -> [u8; 2] {
    [table[usize::from(b >> 4)], table[usize::from(b & 0x0f)]]
}

/// The two lowercase hex digits of `b`, the high one first.
pub fn lower(b: u8) -> [u8; 2] {
    digits(b, LOWER)
}

/// The two uppercase hex digits of `b`, the high one first.
pub fn upper(b: u8) -> [u8; 2] {
    digits(b, UPPER)
}

/// Writes `bytes` as lowercase hex into `out`, two digits a byte (as far as `out` reaches).
pub fn encode_into(bytes: &[u8], out: &mut [u8]) {
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&lower(b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_lowercase() {
        let mut out = [0u8; 6];
        encode_into(&[0x00, 0xab, 0x7f], &mut out);
        assert_eq!(&out, b"00ab7f");
    }

    #[test]
    fn every_byte_is_written_as_the_standard_library_writes_it() {
        for b in 0..=255u8 {
            assert_eq!(lower(b).as_slice(), format!("{b:02x}").as_bytes());
            assert_eq!(upper(b).as_slice(), format!("{b:02X}").as_bytes());
            assert_eq!(byte(lower(b)[0], lower(b)[1]), Some(b));
            assert_eq!(byte(upper(b)[0], upper(b)[1]), Some(b));
        }
    }

    #[test]
    fn every_byte_pair_agrees_with_the_standard_library() {
        for hi in 0..=255u8 {
            for lo in 0..=255u8 {
                let text = [hi, lo];
                let expected = std::str::from_utf8(&text)
                    .ok()
                    .filter(|t| t.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|t| u8::from_str_radix(t, 16).ok());
                assert_eq!(byte(hi, lo), expected, "{hi:#x} {lo:#x}");
            }
        }
    }
}
