//! Forwarding to the backend: the upstream client, header rewriting, and how upstream failures
//! are answered.

pub mod body;
pub mod headers;
pub mod pool;
pub mod stall;
pub mod upstream;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{Either, Full};

pub use headers::Scheme;
pub use upstream::Upstream;

/// A response body: the backend's stream (with a deadline between frames), or an answer the
/// gateway wrote itself.
pub type ProxyBody = Either<stall::StallGuard, Full<Bytes>>;

/// Why a request could not be forwarded. Each is answered with a status and a short plain
/// body, for callbacks too: Click treats a non-200 as no answer and retries, whereas a made-up
/// Click error code could cancel a real payment.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("connecting to the backend timed out")]
    ConnectTimeout,
    #[error("cannot connect to the backend: {0}")]
    Connect(String),
    #[error("the backend did not answer within the response timeout")]
    Timeout,
    #[error("the backend closed or broke the connection: {0}")]
    Upstream(String),
    #[error("request URI cannot be forwarded")]
    BadUri,
}

impl ProxyError {
    /// 504 for timeouts, 502 for everything else (as nginx answers).
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::ConnectTimeout | ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadUri => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// Bounded label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ProxyError::ConnectTimeout => "connect_timeout",
            ProxyError::Connect(_) => "connect",
            ProxyError::Timeout => "timeout",
            ProxyError::Upstream(_) => "closed",
            ProxyError::BadUri => "bad_uri",
        }
    }
}

/// A short plain-text answer written by the gateway itself.
pub fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Adds `Connection: close`: after refusing a body the gateway did not read, the connection
/// cannot be trusted to be at a request boundary.
pub fn closing(mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    resp.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    resp
}

/// The answer to a failed forward.
pub fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    match e.status() {
        StatusCode::GATEWAY_TIMEOUT => plain(StatusCode::GATEWAY_TIMEOUT, "504 Gateway Timeout\n"),
        StatusCode::BAD_REQUEST => plain(StatusCode::BAD_REQUEST, "400 Bad Request\n"),
        _ => plain(StatusCode::BAD_GATEWAY, "502 Bad Gateway\n"),
    }
}
