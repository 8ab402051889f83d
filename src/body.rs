//! Reading request bodies whole, bounded in size, in time and in memory, before anything is
//! sent to the backend.
//!
//! Buffering (as nginx does by default) means a slow client costs the gateway a little memory
//! instead of costing the backend one of its few gunicorn sync workers for as long as the
//! client cares to trickle. Memory is bounded per body (`server.max_body`, 16 KiB for
//! callbacks), in time (`server.body_read_timeout`), and by budgets ([`BodyBudget`]) from which
//! each body takes its memory *as its bytes arrive* ([`Meter`]): a request that declares a body
//! and sends nothing holds nothing, so no number of them can keep a callback that sends its
//! bytes from being read. Which budgets a body draws on is [`crate::lane`]'s business.

use std::future::Future;
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
    /// The client's address already holds its share of the lane's body memory (see
    /// [`crate::lane`]).
    #[error("the client's address holds its whole share of buffer memory already")]
    AddressShare,
}

impl BodyError {
    /// Bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            BodyError::TooLarge(_) => "body_too_large",
            BodyError::Timeout(_) => "body_timeout",
            BodyError::Aborted(_) => "body_aborted",
            BodyError::Busy(_) => "busy",
            BodyError::AddressShare => "address_memory",
        }
    }
}

/// Takes memory for a body's bytes as they arrive; the memory is held until the meter (or
/// what it turns into) is dropped.
pub trait Meter {
    /// Takes room for `bytes` more bytes, waiting no later than the body's deadline.
    fn take(&mut self, bytes: usize) -> impl Future<Output = Result<(), BodyError>> + Send;
}

/// Reads `body` whole: at most `limit` bytes, by `deadline` (`timeout` is the span it stands
/// for, for the error), each piece paid for with `meter` before it is kept. A body that
/// arrives in one piece (a callback, usually) is returned as that piece, without a copy.
pub async fn read_bounded(
    body: Incoming,
    limit: usize,
    deadline: Instant,
    timeout: Duration,
    meter: &mut (impl Meter + Send),
) -> Result<Bytes, BodyError> {
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    match tokio::time::timeout_at(deadline, collect(body, limit, meter)).await {
        Err(_) => Err(BodyError::Timeout(timeout)),
        Ok(result) => result,
    }
}

async fn collect(
    mut body: Incoming,
    limit: usize,
    meter: &mut (impl Meter + Send),
) -> Result<Bytes, BodyError> {
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
        meter.take(data.len()).await?;
        // Once a second piece comes, the first is copied and let go: a slice of hyper's read
        // buffer would keep that whole buffer for as long as the body takes to arrive.
        match (first.take(), rest.as_mut()) {
            (_, Some(buf)) => buf.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (Some(head), None) => {
                let mut buf = BytesMut::with_capacity(len.max(head.len() * 2));
                buf.extend_from_slice(&head);
                buf.extend_from_slice(&data);
                rest = Some(buf);
            }
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

    /// Takes `kib` more KiB (the budget's whole at most, counting what `held` has), adding
    /// them to `held`; waits until `deadline` for other bodies to be released (`timeout` is the
    /// span the deadline stands for).
    pub async fn take(
        &self,
        held: &mut Option<OwnedSemaphorePermit>,
        kib: u32,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), BodyError> {
        let have = held.as_ref().map_or(0, |p| p.num_permits() as u32);
        let kib = kib.min(self.total_kib.saturating_sub(have));
        if kib == 0 {
            return Ok(());
        }
        let permit = match self.permits.clone().try_acquire_many_owned(kib) {
            Ok(permit) => permit,
            Err(_) => match tokio::time::timeout_at(
                deadline,
                self.permits.clone().acquire_many_owned(kib),
            )
            .await
            {
                Ok(Ok(permit)) => permit,
                _ => return Err(BodyError::Busy(timeout)),
            },
        };
        match held {
            Some(p) => p.merge(permit),
            None => *held = Some(permit),
        }
        Ok(())
    }

    /// KiB currently free (for metrics and tests).
    pub fn available_kib(&self) -> usize {
        self.permits.available_permits()
    }
}
