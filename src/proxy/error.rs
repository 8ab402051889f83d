//! Why a request could not be forwarded, for every part of the proxy: its own module, below
//! [`super::pool`], [`super::upstream`] and [`super::forward`], so each of them names it without
//! going through `proxy/mod.rs`, which re-exports them all (a circle otherwise).

use http::StatusCode;

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
