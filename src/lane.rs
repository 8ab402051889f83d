//! Two lanes through the gateway: callbacks, and everything else. Each lane has resources of
//! its own, so no amount of general traffic can make a payment callback wait:
//!
//! - **body memory**: callback bodies reserve from `server.callback_body_memory`, everything
//!   else from `server.body_buffer_memory` ([`Budgets`]);
//! - **per connection**: an HTTP/1 connection reads one request at a time (hyper reads the next
//!   request head only once the previous response is done), so it holds at most one body
//!   reservation. An HTTP/2 connection has up to `server.http2_max_concurrent_streams` streams;
//!   what its general streams reserve together is capped by `server.connection_body_memory`,
//!   what its callback streams reserve by [`CONNECTION_CALLBACK_MEMORY`] ([`ConnectionShare`]),
//!   so one connection cannot take a whole budget with many streams;
//! - **backend connections**: `upstream.callback_connections` of `upstream.max_connections` are
//!   for callbacks only (see [`crate::proxy::pool`]).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::click::MAX_CALLBACK_BODY;
use crate::config::ServerSettings;
use crate::proxy::body::{BodyBudget, BodyError};

/// Which lane a request travels in, decided by its path alone (before its body is read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// A request to a callback path: judged by the checkpoint.
    Callback,
    /// Everything else: forwarded as it is.
    General,
}

impl Lane {
    /// The `route` label of metrics.
    pub fn label(self) -> &'static str {
        match self {
            Lane::Callback => "callback",
            Lane::General => "proxy",
        }
    }
}

/// What the callback streams of one HTTP/2 connection may reserve together: four bodies of the
/// largest callback size, or many of the usual sub-KiB ones.
pub const CONNECTION_CALLBACK_MEMORY: u64 = 4 * MAX_CALLBACK_BODY as u64;

/// The process-wide body budgets of the two lanes, shared by every worker.
#[derive(Debug, Clone)]
pub struct Budgets {
    pub general: BodyBudget,
    pub callback: BodyBudget,
    /// Bytes of one HTTP/2 connection's share of `general` (`server.connection_body_memory`).
    connection_general: u64,
}

/// One connection's share of the budgets, created the first time an HTTP/2 stream of the
/// connection reserves anything (HTTP/1 connections never need one).
#[derive(Debug, Default)]
pub struct ConnectionShare(OnceLock<[Arc<Semaphore>; 2]>);

/// Memory held for one body until it is dropped (with the request's answer).
#[derive(Debug)]
pub struct Reservation {
    _budget: OwnedSemaphorePermit,
    _connection: Option<OwnedSemaphorePermit>,
}

impl Budgets {
    pub fn new(s: &ServerSettings) -> Budgets {
        Budgets {
            general: BodyBudget::new(s.body_buffer_memory.0),
            callback: BodyBudget::new(s.callback_body_memory.0),
            connection_general: s.connection_body_memory.0,
        }
    }

    /// Reserves `bytes` for a body of `lane`, waiting until `deadline` for room: first in the
    /// connection's own share when it is multiplexed (so a connection at its cap waits on
    /// itself without holding anything of the shared budget), then in the lane's budget.
    pub async fn reserve(
        &self,
        lane: Lane,
        share: Option<&ConnectionShare>,
        bytes: u64,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Reservation, BodyError> {
        let connection = match share {
            None => None,
            Some(share) => {
                let [general, callback] = share.0.get_or_init(|| {
                    [
                        Arc::new(Semaphore::new(kib(self.connection_general))),
                        Arc::new(Semaphore::new(kib(CONNECTION_CALLBACK_MEMORY))),
                    ]
                });
                let (pool, cap) = match lane {
                    Lane::General => (general, self.connection_general),
                    Lane::Callback => (callback, CONNECTION_CALLBACK_MEMORY),
                };
                let need = u32::try_from(kib(bytes.min(cap)))
                    .unwrap_or(u32::MAX)
                    .max(1);
                match tokio::time::timeout_at(deadline, pool.clone().acquire_many_owned(need)).await
                {
                    Ok(Ok(permit)) => Some(permit),
                    _ => return Err(BodyError::Busy(timeout)),
                }
            }
        };
        let budget = match lane {
            Lane::General => &self.general,
            Lane::Callback => &self.callback,
        };
        Ok(Reservation {
            _budget: budget.reserve(bytes, deadline, timeout).await?,
            _connection: connection,
        })
    }
}

/// Bytes as KiB permits, rounded up.
fn kib(bytes: u64) -> usize {
    usize::try_from(bytes.div_ceil(1024)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;

    fn budgets() -> Budgets {
        Budgets::new(&ServerSettings {
            body_buffer_memory: ByteSize::kib(64),
            connection_body_memory: ByteSize::kib(32),
            callback_body_memory: ByteSize::kib(128),
            ..ServerSettings::default()
        })
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(50)
    }

    #[tokio::test]
    async fn the_lanes_draw_on_separate_budgets() {
        let b = budgets();
        let t = Duration::from_millis(50);
        let _all = b
            .reserve(Lane::General, None, 64 * 1024, soon(), t)
            .await
            .unwrap();
        assert!(matches!(
            b.reserve(Lane::General, None, 1, soon(), t).await,
            Err(BodyError::Busy(_))
        ));
        // The general budget is gone; callbacks do not notice.
        let _cb = b
            .reserve(Lane::Callback, None, 16 * 1024, soon(), t)
            .await
            .unwrap();
        assert_eq!(b.callback.available_kib(), 112);
    }

    #[tokio::test]
    async fn one_multiplexed_connection_cannot_take_a_whole_budget() {
        let b = budgets();
        let t = Duration::from_millis(50);
        let share = ConnectionShare::default();
        let _first = b
            .reserve(Lane::General, Some(&share), 32 * 1024, soon(), t)
            .await
            .unwrap();
        // The connection's share is used up: its next stream waits, the budget keeps half.
        assert!(b
            .reserve(Lane::General, Some(&share), 1024, soon(), t)
            .await
            .is_err());
        assert_eq!(b.general.available_kib(), 32);
        // Another connection still gets its share.
        let other = ConnectionShare::default();
        assert!(b
            .reserve(Lane::General, Some(&other), 1024, soon(), t)
            .await
            .is_ok());
        // Callback streams of a connection are capped on their own.
        let held: Vec<_> = hold_four_callbacks(&b, &share).await;
        assert_eq!(held.len(), 4);
        assert!(b
            .reserve(Lane::Callback, Some(&share), 16 * 1024, soon(), t)
            .await
            .is_err());
    }

    async fn hold_four_callbacks(b: &Budgets, share: &ConnectionShare) -> Vec<Reservation> {
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(
                b.reserve(
                    Lane::Callback,
                    Some(share),
                    16 * 1024,
                    soon(),
                    Duration::from_millis(50),
                )
                .await
                .unwrap(),
            );
        }
        held
    }
}
