//! Forwarding to the backend: the one place that talks to it ([`forward`]), over a bounded pool
//! of connections ([`pool`]), with the request headers made fit for it ([`headers`]) and each
//! response body watched for stalls ([`stall`]). Request bodies are read whole before they
//! get here ([`crate::body`]).

pub mod forward;
pub mod headers;
pub mod pool;
pub mod stall;
pub mod upstream;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{Either, Full};

pub use forward::Forwarder;
pub use headers::Scheme;
pub use upstream::Upstream;

/// A response body: the backend's stream (with a deadline between frames), or an answer the
/// gateway wrote itself.
pub type ProxyBody = Either<stall::StallGuard, Full<Bytes>>;

/// Why a request could not be forwarded. Each is answered with a status and a short plain
/// body (see [`crate::answer`]), for callbacks too: Click treats a non-200 as no answer and
/// retries, whereas a made-up Click error code could cancel a real payment.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("connecting to the backend timed out")]
    ConnectTimeout,
    #[error("cannot connect to the backend: {0}")]
    Connect(#[source] std::io::Error),
    #[error("the backend refused the HTTP handshake: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("the backend did not answer within the response timeout")]
    Timeout,
    #[error("the backend closed or broke the connection: {0}")]
    Upstream(#[source] hyper::Error),
    /// Every backend connection this request may use (`upstream.max_connections`, less the
    /// callbacks' reserve for other traffic) stayed busy until its deadline.
    #[error("no backend connection became free within the response timeout")]
    Busy,
    #[error("request URI cannot be forwarded")]
    BadUri,
}

impl ProxyError {
    /// 504 for timeouts, 503 when no backend connection was free, 400 for a target that cannot
    /// be forwarded, 502 for everything else (as nginx answers).
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::ConnectTimeout | ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadUri => StatusCode::BAD_REQUEST,
            ProxyError::Connect(_) | ProxyError::Handshake(_) | ProxyError::Upstream(_) => {
                StatusCode::BAD_GATEWAY
            }
        }
    }

    /// Bounded label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ProxyError::ConnectTimeout => "connect_timeout",
            ProxyError::Connect(_) | ProxyError::Handshake(_) => "connect",
            ProxyError::Timeout => "timeout",
            ProxyError::Upstream(_) => "closed",
            ProxyError::Busy => "busy",
            ProxyError::BadUri => "bad_uri",
        }
    }
}
