//! Forwarding to the backend: the one place that talks to it ([`forward`]), over a bounded pool
//! of connections ([`pool`]), with the request headers made fit for it ([`headers`]) and each
//! response body watched for stalls ([`stall`]). Request bodies are read whole before they
//! get here ([`crate::body`]).

pub mod error;
pub mod forward;
pub mod headers;
pub mod pool;
pub mod stall;
pub mod upstream;

pub use error::ProxyError;
pub use forward::{Forwarder, ProxyBody};
pub use headers::Scheme;
pub use upstream::Upstream;
