//! The ledger's view of a forwarded callback's answer: the backend's response body is read for
//! its Click fields as it streams to Click, unchanged and never held back, and the answer is
//! queued when the body ends (or is dropped), beside the callback's row written before it was
//! forwarded. Only the first [`MAX_BACKEND_ANSWER`] bytes are kept: a Click answer is a few
//! dozen.

use std::time::Duration;

use super::handle::Ledger;
use super::record::{Answer, Backend, BackendAnswer, MAX_BACKEND_ANSWER};
use crate::proxy::stall::BodyObserver;

/// Appends a forwarded callback's [`Answer`] once its body has streamed.
pub struct AnswerTap {
    ledger: Ledger,
    callback: i64,
    status: u16,
    upstream: Option<Duration>,
    total: Duration,
    seen: Vec<u8>,
    /// The body outgrew [`MAX_BACKEND_ANSWER`]: not a Click answer.
    too_long: bool,
}

impl AnswerTap {
    /// The answer of row `callback`: the backend's `status`, after `upstream` (from sending to
    /// its response headers) and `total` (from the request's arrival).
    pub fn new(
        ledger: Ledger,
        callback: i64,
        status: u16,
        upstream: Option<Duration>,
        total: Duration,
    ) -> Box<AnswerTap> {
        Box::new(AnswerTap {
            ledger,
            callback,
            status,
            upstream,
            total,
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
        let answer = (complete && !self.too_long)
            .then(|| BackendAnswer::parse(&self.seen))
            .flatten();
        self.ledger.answer(Answer {
            callback: self.callback,
            backend: Backend {
                status: self.status,
                answer,
            },
            upstream: self.upstream,
            total: self.total,
        });
    }
}
