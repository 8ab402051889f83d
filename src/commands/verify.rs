//! `click-gateway verify`: judges a captured callback body against the configured keys and
//! explains a failure the same way the gateway's log line does, naming the configured files
//! where the log line can only name the settings.

use std::io::{self, Write};

use crate::click::keys::KeyFiles;
use crate::click::{FormKind, KeySet, Parsed, RejectReason};

/// Writes the verdict on `body`; returns whether it verifies. `files`: where `keys` came
/// from, named when a key is missing.
pub fn run(
    body: &[u8],
    kind: &FormKind,
    keys: &KeySet,
    files: KeyFiles<'_>,
    out: &mut dyn Write,
) -> io::Result<bool> {
    let parsed = match Parsed::parse(kind, body) {
        Ok(f) => f,
        Err(e) => return rejected(&RejectReason::Form(e), files, out),
    };
    let verdict = parsed.judge(keys);
    match verdict.outcome {
        Ok(v) => {
            let action = verdict.callback.as_ref().map_or("?", |c| c.action.as_str());
            writeln!(
                out,
                "verified: {action} for service {}, key slot {} (fp {})",
                v.service_id, v.slot, v.fingerprint
            )?;
            Ok(true)
        }
        Err(reason) => rejected(&reason, files, out),
    }
}

fn rejected(reason: &RejectReason, files: KeyFiles<'_>, out: &mut dyn Write) -> io::Result<bool> {
    let e = reason.click_error();
    writeln!(
        out,
        "rejected: error {} ({}), reason {}",
        e.code(),
        e.note(),
        reason.label()
    )?;
    match reason {
        RejectReason::Signature(d) => writeln!(out, "why: {}", d.explain(Some(files)))?,
        _ => writeln!(out, "why: {reason}")?,
    }
    Ok(false)
}
