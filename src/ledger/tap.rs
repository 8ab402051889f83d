//! The ledger's view of a forwarded callback's answer: the backend's response body is read
//! for its Click fields as it streams to Click, unchanged and never held back, and the row is
//! queued when the body ends (or is dropped). Only the first [`MAX_BACKEND_ANSWER`] bytes are
//! kept: a Click answer is a few dozen.

use super::{Backend, BackendAnswer, Ledger, Record, MAX_BACKEND_ANSWER};
use crate::proxy::stall::BodyObserver;

/// Completes a callback's [`Record`] with the backend's answer, then records it.
pub struct AnswerTap {
    ledger: Ledger,
    record: Record,
    status: u16,
    seen: Vec<u8>,
    /// The body outgrew [`MAX_BACKEND_ANSWER`]: not a Click answer.
    too_long: bool,
}

impl AnswerTap {
    pub fn new(ledger: Ledger, record: Record, status: u16) -> Box<AnswerTap> {
        Box::new(AnswerTap {
            ledger,
            record,
            status,
            seen: Vec::new(),
            too_long: false,
        })
    }
}

impl BodyObserver for AnswerTap {
    fn data(&mut self, chunk: &[u8]) {
        if self.too_long || self.seen.len() + chunk.len() > MAX_BACKEND_ANSWER {
            self.too_long = true;
            self.seen = Vec::new();
            return;
        }
        self.seen.extend_from_slice(chunk);
    }

    fn finish(self: Box<Self>, complete: bool) {
        let AnswerTap {
            ledger,
            mut record,
            status,
            seen,
            too_long,
        } = *self;
        let answer = (complete && !too_long)
            .then(|| BackendAnswer::parse(&seen))
            .flatten();
        record.backend = Some(Backend { status, answer });
        ledger.record(record);
    }
}
