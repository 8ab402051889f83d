//! What the replay guard ([`crate::guard`]) binds, and what it finds: a signature bound to the
//! first message it came with, or the fields a later message changed; and, for a Complete,
//! whether an earlier forwarded Complete of the same transaction said otherwise. On SQLite the
//! guard's index answers ([`super::index`]); on PostgreSQL the statement that writes the
//! callback's row ([`super::postgres`]).

/// A verified callback's claim on its signature. Its `Debug` leaves out the signature and the
/// fields (which hold it too): a genuine signature is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Binding {
    /// Decimal text: a `u64` does not fit every database's signed 64-bit integer.
    pub service_id: String,
    /// `sign_string` in lowercase (Click compares it case-insensitively).
    pub sign: String,
    /// SHA-256 of every decoded field, signed and unsigned ([`crate::click::digest`]).
    pub digest: [u8; 32],
    /// The fields themselves, `name → value` sorted by name, as JSON: what a later message is
    /// compared with to name the fields it changed.
    pub fields: String,
    /// The request's id, to find the first message of a signature in the ledger.
    pub request_id: String,
    /// Unique to this binding attempt, made by the gateway (never the client's request id,
    /// which a client chooses): the store tells "this one was first" by finding it back.
    pub token: String,
    /// Unix microseconds.
    pub time_us: i64,
    /// Rule 1 is enforced: a message that changed a bound one will be refused, so it must not
    /// become its transaction's first forwarded Complete.
    pub enforce_signature: bool,
    /// For a Complete: its transaction, for rule 2.
    pub complete: Option<CompleteClaim>,
}

impl Binding {
    /// Rule 1's verdict from the row the store's statement returned for this binding: this
    /// binding's own (its `token`: first), or an earlier one with the same digest (a retry) or
    /// another (the fields that differ).
    pub fn seen(&self, digest: &[u8], fields: &str, token: &str) -> Seen {
        if token == self.token {
            Seen::First
        } else if digest == self.digest {
            Seen::Same
        } else {
            Seen::Changed(crate::click::digest::differing(fields, &self.fields))
        }
    }
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding")
            .field("service_id", &self.service_id)
            .field("request_id", &self.request_id)
            .field("time_us", &self.time_us)
            .field("complete", &self.complete)
            .finish_non_exhaustive()
    }
}

/// A Complete's outcome for its transaction: Click's `error` field, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompleteClaim {
    pub click_trans_id: String,
    pub error: String,
}

/// What the store found for a [`Binding`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindOutcome {
    pub signature: Seen,
    /// For a Complete: the error of the first Complete of its transaction that was forwarded,
    /// when an earlier one was (`None` for the first, or for a Prepare).
    pub earlier_complete_error: Option<String>,
}

/// Rule 1: the signature's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Never seen: now bound to this message.
    First,
    /// Seen with exactly these fields: a retry.
    Same,
    /// Seen with other fields; these differ (added, removed or changed), by name.
    Changed(Vec<String>),
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_output_never_shows_the_signature() {
        let b = super::Binding {
            service_id: "12345".into(),
            sign: "4c30b2304e2d17ef17eec7d8710e914c".into(),
            digest: [7; 32],
            fields: r#"{"amount":"1000.00"}"#.into(),
            request_id: "r1".into(),
            token: "t".into(),
            time_us: 1,
            enforce_signature: true,
            complete: None,
        };
        let shown = format!("{b:?}");
        assert!(shown.contains("r1"), "{shown}");
        assert!(
            !shown.contains("4c30") && !shown.contains("amount"),
            "{shown}"
        );
    }
}
