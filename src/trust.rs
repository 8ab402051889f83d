//! The gateway's attestation to the backend: every verified callback it forwards carries
//! `X-Click-Gateway-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`, the HMAC keyed with a
//! secret the gateway and the backend share (`[trust] secret_file`) over `<t>.<service_id>.<body>`,
//! the body being the exact bytes forwarded.
//!
//! `X-Click-Signature-Verified` alone is safe only while nothing but the gateway can reach the
//! backend; with the attestation a backend on a shared network can still tell the gateway's
//! verdict from a forgery, and so hold no Click key at all (`config/django/click_gateway.py`
//! checks it). The shape is Stripe's and Standard Webhooks' (`t=`, `v1=`, the timestamp under
//! the MAC against replays), so a backend team recognises it.
//!
//! HMAC-SHA256 comes from ring, which rustls already brings: no new crate.

use std::fmt;

use http::HeaderValue;
use ring::hmac;

use crate::click::hex;

/// One gateway↔backend secret. No `Display`; `Debug` shows the fingerprint only.
#[derive(Clone)]
pub struct TrustSecret {
    key: hmac::Key,
    fingerprint: [u8; 8],
}

impl TrustSecret {
    pub fn new(secret: &str) -> TrustSecret {
        let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        let mut fingerprint = [0u8; 8];
        hex::encode_into(&digest.as_ref()[..4], &mut fingerprint);
        TrustSecret {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            fingerprint,
        }
    }

    /// The first 8 hex characters of the secret's SHA-256:
    /// `printf '%s' "$SECRET" | sha256sum | cut -c1-8`.
    pub fn fingerprint(&self) -> &str {
        std::str::from_utf8(&self.fingerprint).unwrap_or("????????")
    }
}

impl fmt::Debug for TrustSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustSecret(fp={})", self.fingerprint())
    }
}

/// The secrets of `[trust] secret_file`, in order: the first signs, the others are listed so
/// the same file can serve the backend while it rotates (it accepts any of them).
#[derive(Clone, Debug)]
pub struct Trust {
    pub secrets: Vec<TrustSecret>,
}

impl Trust {
    /// The secrets' fingerprints, the signing one first.
    pub fn fingerprints(&self) -> Vec<String> {
        self.secrets
            .iter()
            .map(|s| s.fingerprint().to_owned())
            .collect()
    }

    /// The header value attesting that `body` verified for `service_id`, at unix time `t`;
    /// `None` without a secret (the configuration refuses an empty file).
    pub fn attest(&self, t: i64, service_id: u64, body: &[u8]) -> Option<HeaderValue> {
        let secret = self.secrets.first()?;
        let mut ctx = hmac::Context::with_key(&secret.key);
        ctx.update(format!("{t}.{service_id}.").as_bytes());
        ctx.update(body);
        let tag = ctx.sign();
        let mut value = format!("t={t},v1=").into_bytes();
        let at = value.len();
        value.resize(at + 2 * tag.as_ref().len(), 0);
        hex::encode_into(tag.as_ref(), &mut value[at..]);
        HeaderValue::from_bytes(&value).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attestation_is_hmac_sha256_over_time_service_and_body() {
        let trust = Trust {
            secrets: vec![TrustSecret::new(
                "s3cret-shared-with-the-backend-0123456789",
            )],
        };
        let value = trust.attest(1_714_548_645, 12345, b"a=1&b=2").unwrap();
        // python3 -c 'import hmac,hashlib; print(hmac.new(b"s3cret-shared-with-the-backend-0123456789", b"1714548645.12345.a=1&b=2", hashlib.sha256).hexdigest())'
        let want = ring::hmac::sign(
            &ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                b"s3cret-shared-with-the-backend-0123456789",
            ),
            b"1714548645.12345.a=1&b=2",
        );
        let mut hexed = [0u8; 64];
        hex::encode_into(want.as_ref(), &mut hexed);
        assert_eq!(
            value.to_str().unwrap(),
            format!("t=1714548645,v1={}", std::str::from_utf8(&hexed).unwrap())
        );
    }

    #[test]
    fn debug_shows_the_fingerprint_only() {
        let s = TrustSecret::new("do-not-print-me-0123456789abcdef");
        let shown = format!("{s:?}");
        assert!(!shown.contains("do-not-print"), "{shown}");
        assert_eq!(shown, format!("TrustSecret(fp={})", s.fingerprint()));
        assert_eq!(s.fingerprint().len(), 8);
    }
}
