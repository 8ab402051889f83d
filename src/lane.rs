//! Two lanes through the gateway: callbacks, and everything else. Each lane has resources of
//! its own, so no amount of general traffic can make a payment callback wait:
//!
//! - **body memory**: callback bodies take theirs from `server.callback_body_memory`, everything
//!   else from `server.body_buffer_memory` ([`Budgets`]), as their bytes arrive ([`LaneMeter`]):
//!   a body declared and never sent holds nothing;
//! - **per connection**: an HTTP/1 connection reads one request at a time (hyper reads the next
//!   request head only once the previous response is done), so it holds at most one body.
//!   An HTTP/2 connection has up to `server.http2_max_concurrent_streams` streams;
//!   what its general streams hold together is capped by `server.connection_body_memory`,
//!   what its callback streams hold by [`CONNECTION_CALLBACK_MEMORY`] ([`ConnectionShare`]),
//!   so one connection cannot take a whole budget with many streams;
//! - **per address**: the bodies of one client address (its connections together) hold at
//!   most a sixteenth of each lane's budget, and never less than one body of the largest size
//!   ([`crate::server::admission`]; a trusted proxy's connections are exempt), so a few
//!   addresses trickling bodies cannot take a budget either;
//! - **backend connections**: `upstream.callback_connections` of `upstream.max_connections` are
//!   for callbacks only (see [`crate::proxy::pool`]).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::body::{BodyBudget, BodyError, Meter};
use crate::click::MAX_CALLBACK_BODY;
use crate::config::ServerSettings;
use crate::server::admission::Address;

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

    fn index(self) -> usize {
        match self {
            Lane::Callback => 0,
            Lane::General => 1,
        }
    }
}

/// What the callback streams of one HTTP/2 connection may hold together: four bodies of the
/// largest callback size, or many of the usual sub-KiB ones.
pub const CONNECTION_CALLBACK_MEMORY: u64 = 4 * MAX_CALLBACK_BODY as u64;

/// The share of a lane's budget one address may hold: a sixteenth.
const ADDRESS_SHARE: u64 = 16;

/// The process-wide body budgets of the two lanes, shared by every worker.
#[derive(Debug, Clone)]
pub struct Budgets {
    pub general: BodyBudget,
    pub callback: BodyBudget,
    /// Bytes of one HTTP/2 connection's share of `general` (`server.connection_body_memory`).
    connection_general: u64,
    /// KiB one address may hold, by [`Lane::index`].
    address_kib: [u64; 2],
}

/// One connection's share of the budgets, created the first time an HTTP/2 stream of the
/// connection reserves anything (HTTP/1 connections never need one).
#[derive(Debug, Default)]
pub struct ConnectionShare(OnceLock<[Arc<Semaphore>; 2]>);

/// Memory held for one body until it is dropped (with the request's answer).
#[derive(Debug, Default)]
pub struct Reservation {
    budget: Option<OwnedSemaphorePermit>,
    connection: Option<OwnedSemaphorePermit>,
    /// The address, the lane's index and the KiB counted against it.
    address: Option<(Arc<Address>, usize, u64)>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some((address, lane, kib)) = self.address.take() {
            address.release_body(lane, kib);
        }
    }
}

/// Takes a body's memory from its lane's budgets as its bytes arrive (see [`Meter`]).
pub struct LaneMeter<'a> {
    budgets: &'a Budgets,
    lane: Lane,
    share: Option<&'a ConnectionShare>,
    address: Option<&'a Arc<Address>>,
    deadline: Instant,
    timeout: Duration,
    bytes: u64,
    held: Reservation,
}

impl Budgets {
    pub fn new(s: &ServerSettings) -> Budgets {
        let share =
            |budget: u64, largest: u64| (budget / ADDRESS_SHARE).max(largest).div_ceil(1024);
        Budgets {
            general: BodyBudget::new(s.body_buffer_memory.0),
            callback: BodyBudget::new(s.callback_body_memory.0),
            connection_general: s.connection_body_memory.0,
            address_kib: [
                share(s.callback_body_memory.0, MAX_CALLBACK_BODY as u64),
                share(s.body_buffer_memory.0, s.max_body.0),
            ],
        }
    }

    /// A meter for one body of `lane`: `share` is its HTTP/2 connection's, `address` its
    /// client's (none for a trusted proxy); waits for memory end at `deadline` (`timeout` is
    /// the span it stands for, for the error).
    pub fn meter<'a>(
        &'a self,
        lane: Lane,
        share: Option<&'a ConnectionShare>,
        address: Option<&'a Arc<Address>>,
        deadline: Instant,
        timeout: Duration,
    ) -> LaneMeter<'a> {
        LaneMeter {
            budgets: self,
            lane,
            share,
            address,
            deadline,
            timeout,
            bytes: 0,
            held: Reservation::default(),
        }
    }
}

impl LaneMeter<'_> {
    /// What the body holds, to keep until its request is answered.
    pub fn into_reservation(self) -> Reservation {
        self.held
    }

    async fn take_kib(&mut self, kib: u32) -> Result<(), BodyError> {
        let lane = self.lane;
        // An HTTP/2 connection's own share first, so that a connection at its cap waits on
        // itself without holding anything of the shared budget.
        if let Some(share) = self.share {
            let budgets = self.budgets;
            let [general, callback] = share.0.get_or_init(|| {
                [
                    Arc::new(Semaphore::new(kib_of(budgets.connection_general))),
                    Arc::new(Semaphore::new(kib_of(CONNECTION_CALLBACK_MEMORY))),
                ]
            });
            let pool = match lane {
                Lane::General => general,
                Lane::Callback => callback,
            };
            let permit = match pool.clone().try_acquire_many_owned(kib) {
                Ok(p) => p,
                Err(_) => match tokio::time::timeout_at(
                    self.deadline,
                    pool.clone().acquire_many_owned(kib),
                )
                .await
                {
                    Ok(Ok(p)) => p,
                    _ => return Err(BodyError::Busy(self.timeout)),
                },
            };
            match &mut self.held.connection {
                Some(p) => p.merge(permit),
                None => self.held.connection = Some(permit),
            }
        }
        if let Some(address) = self.address {
            let i = lane.index();
            if !address.take_body(i, u64::from(kib), self.budgets.address_kib[i]) {
                return Err(BodyError::AddressShare);
            }
            match &mut self.held.address {
                Some((_, _, held)) => *held += u64::from(kib),
                None => self.held.address = Some((address.clone(), i, u64::from(kib))),
            }
        }
        let budget = match lane {
            Lane::General => &self.budgets.general,
            Lane::Callback => &self.budgets.callback,
        };
        budget
            .take(&mut self.held.budget, kib, self.deadline, self.timeout)
            .await
    }
}

impl Meter for LaneMeter<'_> {
    async fn take(&mut self, bytes: usize) -> Result<(), BodyError> {
        let before = self.bytes.div_ceil(1024);
        self.bytes += bytes as u64;
        let more = self.bytes.div_ceil(1024) - before;
        if more == 0 {
            return Ok(());
        }
        self.take_kib(u32::try_from(more).unwrap_or(u32::MAX)).await
    }
}

/// Bytes as KiB permits, rounded up.
fn kib_of(bytes: u64) -> usize {
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
            max_body: ByteSize::kib(32),
            ..ServerSettings::default()
        })
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(50)
    }

    const T: Duration = Duration::from_millis(50);

    /// A body of `bytes` metered in one piece.
    async fn hold(
        b: &Budgets,
        lane: Lane,
        share: Option<&ConnectionShare>,
        address: Option<&Arc<Address>>,
        bytes: usize,
    ) -> Result<Reservation, BodyError> {
        let mut m = b.meter(lane, share, address, soon(), T);
        m.take(bytes).await?;
        Ok(m.into_reservation())
    }

    #[tokio::test]
    async fn memory_is_taken_as_bytes_arrive_and_the_lanes_draw_on_separate_budgets() {
        let b = budgets();
        let mut m = b.meter(Lane::General, None, None, soon(), T);
        assert_eq!(
            b.general.available_kib(),
            64,
            "a meter holds nothing before bytes arrive"
        );
        m.take(1000).await.unwrap();
        m.take(100).await.unwrap();
        assert_eq!(b.general.available_kib(), 62, "1,100 bytes: two KiB");
        drop(m);
        assert_eq!(b.general.available_kib(), 64);
        let _all = hold(&b, Lane::General, None, None, 64 * 1024)
            .await
            .unwrap();
        assert!(matches!(
            hold(&b, Lane::General, None, None, 1).await,
            Err(BodyError::Busy(_))
        ));
        // The general budget is gone; callbacks do not notice.
        let _cb = hold(&b, Lane::Callback, None, None, 16 * 1024)
            .await
            .unwrap();
        assert_eq!(b.callback.available_kib(), 112);
    }

    #[tokio::test]
    async fn one_multiplexed_connection_cannot_take_a_whole_budget() {
        let b = budgets();
        let share = ConnectionShare::default();
        let _first = hold(&b, Lane::General, Some(&share), None, 32 * 1024)
            .await
            .unwrap();
        // The connection's share is used up: its next stream waits, the budget keeps half.
        assert!(hold(&b, Lane::General, Some(&share), None, 1024)
            .await
            .is_err());
        assert_eq!(b.general.available_kib(), 32);
        // Another connection still gets its share.
        let other = ConnectionShare::default();
        assert!(hold(&b, Lane::General, Some(&other), None, 1024)
            .await
            .is_ok());
        // Callback streams of a connection are capped on their own.
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(
                hold(&b, Lane::Callback, Some(&share), None, 16 * 1024)
                    .await
                    .unwrap(),
            );
        }
        assert!(hold(&b, Lane::Callback, Some(&share), None, 16 * 1024)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn one_address_holds_a_sixteenth_of_a_lane_and_gives_it_back() {
        use crate::server::admission::Admission;
        let b = budgets();
        let admission = Admission::new(100);
        let ticket = admission
            .admit("192.0.2.1".parse().unwrap(), false)
            .unwrap();
        let address = ticket.address.clone().unwrap();
        // 128 KiB / 16 = 8 KiB, but never less than one 16 KiB callback.
        let one = hold(&b, Lane::Callback, None, Some(&address), 16 * 1024)
            .await
            .unwrap();
        assert!(matches!(
            hold(&b, Lane::Callback, None, Some(&address), 1).await,
            Err(BodyError::AddressShare)
        ));
        let other = admission
            .admit("192.0.2.2".parse().unwrap(), false)
            .unwrap();
        assert!(hold(&b, Lane::Callback, None, other.address.as_ref(), 1)
            .await
            .is_ok());
        drop(one);
        assert!(hold(&b, Lane::Callback, None, Some(&address), 1024)
            .await
            .is_ok());
    }
}
