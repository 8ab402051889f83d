//! Every answer the gateway writes itself, in one place: plain HTTP statuses for transport
//! failures (a body that never arrived, a backend that failed), and Click's JSON for callbacks
//! the checkpoint refused.
//!
//! The split is deliberate. A transport failure is not a Click error: a callback that gets a
//! plain `408`/`502`/`503`/`504` looks to Click exactly like a merchant's server that did not
//! answer, and Click retries it. Only the content of a callback earns a Click error code,
//! since a made-up `-8` or `-1` could cancel a real payment.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::body::BodyError;
use crate::click::{self, ClickError, Echo};
use crate::proxy::{ProxyBody, ProxyError};

/// Why the gateway answers a request itself instead of the backend (transport reasons only;
/// Click errors are [`click`]).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("request body: {0}")]
    Body(#[from] BodyError),
    #[error("{0}")]
    Upstream(#[from] ProxyError),
    /// A callback's ledger row could not be written and `guard.on_store_error = "refuse"`.
    #[error("the ledger cannot record the callback")]
    StoreUnavailable,
    /// The client's address has `server.http2_max_streams_per_address` streams in flight.
    #[error("the client's address has its whole allowance of HTTP/2 streams in flight")]
    AddressStreams,
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Body(BodyError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Body(BodyError::Timeout(_)) => StatusCode::REQUEST_TIMEOUT,
            Refusal::Body(BodyError::Busy(_) | BodyError::AddressShare)
            | Refusal::StoreUnavailable
            | Refusal::AddressStreams => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Body(BodyError::Aborted(_)) => StatusCode::BAD_REQUEST,
            Refusal::Upstream(e) => e.status(),
        }
    }

    /// A refused body was not (wholly) read, so the connection cannot be trusted to stand at a
    /// request boundary: it is closed after the answer.
    fn closes(&self) -> bool {
        matches!(self, Refusal::Body(_))
    }
}

/// The plain-text answer to a refusal.
pub fn refusal(r: &Refusal) -> Response<ProxyBody> {
    let status = r.status();
    let text: &'static str = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "413 Payload Too Large\n",
        StatusCode::REQUEST_TIMEOUT => "408 Request Timeout\n",
        StatusCode::SERVICE_UNAVAILABLE => "503 Service Unavailable\n",
        StatusCode::BAD_REQUEST => "400 Bad Request\n",
        StatusCode::GATEWAY_TIMEOUT => "504 Gateway Timeout\n",
        _ => "502 Bad Gateway\n",
    };
    let mut resp = plain(status, text);
    if r.closes() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The answer a merchant's server would give to a callback it refuses: HTTP 200, JSON, the
/// Click error code and its exact note (see [`click::respond`]).
pub fn click_error(error: ClickError, echo: &Echo<'_>) -> Response<ProxyBody> {
    let body = click::respond::error_body(error, echo);
    let mut resp = Response::new(Either::Right(Full::new(body)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A refused callback whose body was not read: the Click answer, and the connection closed.
pub fn click_error_closing(error: ClickError, echo: &Echo<'_>) -> Response<ProxyBody> {
    let mut resp = click_error(error, echo);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn transport_refusals_are_plain_statuses_and_close_after_unread_bodies() {
        let cases: [(Refusal, u16, bool); 6] = [
            (Refusal::StoreUnavailable, 503, false),
            (BodyError::TooLarge(1).into(), 413, true),
            (BodyError::Timeout(Duration::ZERO).into(), 408, true),
            (BodyError::Busy(Duration::ZERO).into(), 503, true),
            (ProxyError::Busy.into(), 503, false),
            (ProxyError::Timeout.into(), 504, false),
        ];
        for (r, status, closes) in cases {
            let resp = refusal(&r);
            assert_eq!(resp.status().as_u16(), status, "{r}");
            assert_eq!(
                resp.headers().contains_key(header::CONNECTION),
                closes,
                "{r}"
            );
            assert_eq!(
                resp.headers()[header::CONTENT_TYPE],
                "text/plain; charset=utf-8"
            );
        }
    }
}
