//! Reading request bodies whole, bounded in size and in time, before anything is sent to the
//! backend.
//!
//! Buffering (as nginx does by default) means a slow client costs the gateway a little memory
//! instead of costing the backend one of its few gunicorn sync workers for as long as the
//! client cares to trickle. Memory is bounded per body (`server.max_body`, 16 KiB for
//! callbacks), in time (`server.body_read_timeout`), and by budgets each body reserves before it
//! is read ([`BodyBudget`]; which budget is [`crate::lane`]'s business).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the body did not arrive within {0:?}")]
    Timeout(Duration),
    #[error("the client broke off the body: {0}")]
    Aborted(#[source] hyper::Error),
    #[error("no buffer memory became free within {0:?}")]
    Busy(Duration),
}

impl BodyError {
    /// Bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            BodyError::TooLarge(_) => "body_too_large",
            BodyError::Timeout(_) => "body_timeout",
            BodyError::Aborted(_) => "body_aborted",
            BodyError::Busy(_) => "busy",
        }
    }
}

/// Reads `body` whole: at most `limit` bytes, by `deadline` (`timeout` is the span it stands
/// for, for the error). A body that arrives in one piece (a callback, usually) is returned as
/// that piece, without a copy.
pub async fn read_bounded(
    body: Incoming,
    limit: usize,
    deadline: Instant,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    match tokio::time::timeout_at(deadline, collect(body, limit)).await {
        Err(_) => Err(BodyError::Timeout(timeout)),
        Ok(result) => result,
    }
}

async fn collect(mut body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Aborted)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers: not forwarded, nothing to verify in them
        };
        len += data.len();
        if len > limit {
            return Err(BodyError::TooLarge(limit));
        }
        match (&first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(head), None) => {
                let mut buf = BytesMut::with_capacity(len.max(head.len() * 2));
                buf.extend_from_slice(head);
                buf.extend_from_slice(&data);
                rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&data),
        }
    }
    Ok(match (first, rest) {
        (_, Some(buf)) => buf.freeze(),
        (Some(only), None) => only,
        (None, None) => Bytes::new(),
    })
}

/// A memory budget for buffered bodies, in KiB permits: process-wide (shared by the workers)
/// or one connection's share.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    total_kib: u32,
}

impl BodyBudget {
    pub fn new(bytes: u64) -> BodyBudget {
        let total_kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .max(1);
        BodyBudget {
            permits: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// Reserves room for `bytes` (at most the whole budget), waiting until `deadline` for
    /// other bodies to be released; `timeout` is the span the deadline stands for.
    pub async fn reserve(
        &self,
        bytes: u64,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<OwnedSemaphorePermit, BodyError> {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_kib);
        let acquire = self.permits.clone().acquire_many_owned(kib);
        match tokio::time::timeout_at(deadline, acquire).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(BodyError::Busy(timeout)),
        }
    }

    /// KiB currently free (for metrics and tests).
    pub fn available_kib(&self) -> usize {
        self.permits.available_permits()
    }
}
