//! Signature verification against the keys of the callback's own `service_id`.

use super::callback::Callback;
use super::diagnose::{self, Diagnosis};
use super::keys::{Fingerprint, KeySet};
use super::sign::{sign, Signature};

/// A callback that verified: which service, and which of its keys (its slot) matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub service_id: u64,
    pub slot: usize,
    pub fingerprint: Fingerprint,
}

/// Verifies `cb` with the keys of its service: any key may match, the first that does is
/// reported. On failure the diagnosis explains why (see [`diagnose`]), computed against the
/// same key set, so the log line describes the keys that actually judged the request.
pub fn verify(cb: &Callback<'_>, keys: &KeySet) -> Result<Verified, Diagnosis> {
    let Some(expected) = Signature::parse(cb.sign_string) else {
        return Err(Diagnosis::MalformedDigest);
    };
    if let Some(service) = keys.get(cb.service_id) {
        for (slot, entry) in service.keys.iter().enumerate() {
            if sign(&cb.signed, &entry.secret).ct_eq(&expected) {
                return Ok(Verified {
                    service_id: cb.service_id,
                    slot,
                    fingerprint: entry.fingerprint,
                });
            }
        }
    }
    Err(diagnose::diagnose(cb, &expected, keys))
}
