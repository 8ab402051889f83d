//! Refusals, bounded per client address: what a flood of forged or broken callbacks may cost
//! the log and the ledger.
//!
//! Every refusal is counted in `/metrics` whatever happens here. Beyond that, one place decides
//! for each refusal whether it gets a log line of its own and a ledger row, so that the two
//! tell the same story:
//!
//! - **the log**: an address's first [`LINES_PER_ADDRESS`] refusals of each [`INTERVAL`] are
//!   logged in full (so a real outage shows real examples at once), at most
//!   [`LINES_PER_INTERVAL`] over all addresses; the rest are counted and summarised when the
//!   interval ends, a line per address and reason (the [`SUMMARY_LINES`] addresses that
//!   refused most, then one line for all the others), like the ledger's report of lost rows;
//! - **the ledger**: refused callbacks are recorded up to `ledger.refused_per_second` per
//!   address, with a burst of [`BURST`] of it kept whole (a token bucket, HAProxy's
//!   `http_req_rate` in a stick table): an outage in which Click's every callback is refused
//!   at Click's own pace (tens a second from a handful of addresses) is recorded in full for
//!   `recheck`, a flood is not. What is not recorded is counted
//!   (`ledger_unrecorded_total{reason="rate"}`) and summarised in the same line.
//!
//! Verified callbacks never come here: they are never throttled, never summarised and always
//! recorded.
//!
//! "Address" is the client the request came from: behind `server.trusted_proxies`, the client
//! the proxy reports. The table is bounded ([`MAX_ADDRESSES`]); an address idle for a whole
//! burst's time is forgotten (its bucket would be full again by then anyway).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use crate::metrics::{Metrics, ReasonLabels};
use crate::server::admission::AddressKey;

/// How often the summaries are written.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Refusals of one address logged in full per interval.
pub const LINES_PER_ADDRESS: u32 = 3;
/// Refusals logged in full per interval, over all addresses.
pub const LINES_PER_INTERVAL: u32 = 50;
/// Addresses summarised a line each per interval; the others share one line.
pub const SUMMARY_LINES: usize = 10;
/// Seconds' worth of `ledger.refused_per_second` an address may spend at once.
pub const BURST: u32 = 10;
/// Addresses tracked at most; refusals from addresses beyond are neither logged one by one
/// nor recorded (counted, and summarised as "other addresses").
pub const MAX_ADDRESSES: usize = 65_536;

const SHARDS: usize = 16;

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Note {
    /// Log its own line.
    pub log: bool,
    /// Record its ledger row.
    pub record: bool,
}

/// Refusals counted by reason.
type ByReason = Vec<(&'static str, u64)>;

/// One address's refusals in the current interval, and its ledger bucket.
#[derive(Debug)]
struct Tally {
    logged: u32,
    /// Refusals not logged this interval, by reason.
    unlogged: ByReason,
    /// Rows not recorded this interval.
    unrecorded: u64,
    tokens: f64,
    refilled: Instant,
}

/// The refusal budgets of every address (see the module docs).
#[derive(Debug)]
pub struct Refusals {
    shards: Box<[Mutex<HashMap<AddressKey, Tally>>]>,
    hasher: RandomState,
    /// Rows per second per address (`ledger.refused_per_second`).
    rate: f64,
    /// Addresses in the table.
    tracked: AtomicUsize,
    lines: AtomicU32,
    /// Refusals from addresses beyond [`MAX_ADDRESSES`] this interval.
    overflow: Mutex<(u64, u64)>,
    unlogged_total: Counter,
    unrecorded_total: Counter,
}

impl Refusals {
    pub fn new(refused_per_second: u32, metrics: &Metrics) -> Arc<Refusals> {
        Arc::new(Refusals {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            rate: f64::from(refused_per_second),
            tracked: AtomicUsize::new(0),
            lines: AtomicU32::new(0),
            overflow: Mutex::new((0, 0)),
            unlogged_total: metrics.refusals_unlogged.clone(),
            unrecorded_total: metrics
                .ledger_unrecorded
                .get_or_create(&ReasonLabels { reason: "rate" })
                .clone(),
        })
    }

    fn burst(&self) -> f64 {
        self.rate * f64::from(BURST)
    }

    fn shard(&self, key: &AddressKey) -> MutexGuard<'_, HashMap<AddressKey, Tally>> {
        let i = (self.hasher.hash_one(key) as usize) % self.shards.len();
        lock(&self.shards[i])
    }

    /// Notes one refusal from `client` for `reason`; `wants_record`: it has a ledger row to
    /// record (a ledger is configured and the refusal is a callback's).
    pub fn note(&self, client: IpAddr, reason: &'static str, wants_record: bool) -> Note {
        self.note_at(client, reason, wants_record, Instant::now())
    }

    fn note_at(
        &self,
        client: IpAddr,
        reason: &'static str,
        wants_record: bool,
        now: Instant,
    ) -> Note {
        let key = AddressKey::of(client);
        let mut shard = self.shard(&key);
        if !shard.contains_key(&key) && self.tracked.load(Ordering::Relaxed) >= MAX_ADDRESSES {
            drop(shard);
            let mut overflow = lock(&self.overflow);
            overflow.0 += 1;
            overflow.1 += u64::from(wants_record);
            self.unlogged_total.inc();
            if wants_record {
                self.unrecorded_total.inc();
            }
            return Note {
                log: false,
                record: false,
            };
        }
        let burst = self.burst();
        let tally = shard.entry(key).or_insert_with(|| {
            self.tracked.fetch_add(1, Ordering::Relaxed);
            Tally {
                logged: 0,
                unlogged: Vec::new(),
                unrecorded: 0,
                tokens: burst,
                refilled: now,
            }
        });
        let log = tally.logged < LINES_PER_ADDRESS
            && self
                .lines
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < LINES_PER_INTERVAL).then_some(n + 1)
                })
                .is_ok();
        if log {
            tally.logged += 1;
        } else {
            match tally.unlogged.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, n)) => *n += 1,
                None => tally.unlogged.push((reason, 1)),
            }
            self.unlogged_total.inc();
        }
        let mut record = false;
        if wants_record {
            let elapsed = now.saturating_duration_since(tally.refilled).as_secs_f64();
            tally.tokens = (tally.tokens + elapsed * self.rate).min(burst);
            tally.refilled = now;
            if tally.tokens >= 1.0 {
                tally.tokens -= 1.0;
                record = true;
            } else {
                tally.unrecorded += 1;
                self.unrecorded_total.inc();
            }
        }
        Note { log, record }
    }

    /// Ends the interval: logs the summaries of what was not logged or recorded one by one,
    /// and forgets the addresses that have been quiet long enough for their bucket to be full.
    pub fn report(&self) {
        self.report_at(Instant::now());
    }

    fn report_at(&self, now: Instant) {
        // Each address that had something summarised: its refusals by reason, its unrecorded.
        let mut rows: Vec<(AddressKey, ByReason, u64)> = Vec::new();
        let forget_after = Duration::from_secs(u64::from(BURST)).max(INTERVAL);
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            shard.retain(|key, tally| {
                let quiet = tally.logged == 0 && tally.unlogged.is_empty();
                if !tally.unlogged.is_empty() || tally.unrecorded > 0 {
                    rows.push((*key, std::mem::take(&mut tally.unlogged), tally.unrecorded));
                }
                tally.logged = 0;
                tally.unrecorded = 0;
                let keep =
                    !(quiet && now.saturating_duration_since(tally.refilled) >= forget_after);
                if !keep {
                    self.tracked.fetch_sub(1, Ordering::Relaxed);
                }
                keep
            });
        }
        self.lines.store(0, Ordering::Relaxed);
        let overflow = std::mem::take(&mut *lock(&self.overflow));
        rows.sort_by_key(|(_, reasons, unrecorded)| {
            std::cmp::Reverse(reasons.iter().map(|(_, n)| n).sum::<u64>() + unrecorded)
        });
        let secs = INTERVAL.as_secs();
        let (mut other_addresses, mut other_refused, mut other_unrecorded) =
            (0u64, overflow.0, overflow.1);
        for (i, (key, reasons, unrecorded)) in rows.into_iter().enumerate() {
            let refused: u64 = reasons.iter().map(|(_, n)| n).sum();
            if i >= SUMMARY_LINES {
                other_addresses += 1;
                other_refused += refused;
                other_unrecorded += unrecorded;
                continue;
            }
            let by_reason = reasons
                .iter()
                .map(|(r, n)| format!("{r}={n}"))
                .collect::<Vec<_>>()
                .join(" ");
            tracing::warn!(
                client = %key,
                unlogged = refused,
                reasons = %by_reason,
                unrecorded,
                "refusals from one address in the last {secs}s, summarised instead of a line each: a flood, or a misconfigured sender. The counts are in /metrics; unrecorded ones are not in the ledger (ledger.refused_per_second)"
            );
        }
        if other_refused > 0 || other_unrecorded > 0 {
            tracing::warn!(
                addresses = other_addresses,
                unlogged = other_refused,
                unrecorded = other_unrecorded,
                "refusals from other addresses in the last {secs}s, summarised together"
            );
        }
    }

    /// Writes the summaries every [`INTERVAL`] until dropped (run it as a task).
    pub async fn run_reports(self: Arc<Self>) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.report();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_gets_a_few_lines_each_interval_and_a_summary_for_the_rest() {
        let m = Metrics::new();
        let r = Refusals::new(50, &m);
        let now = Instant::now();
        let logged = (0..100)
            .filter(|_| r.note_at(ip("192.0.2.1"), "key_mismatch", false, now).log)
            .count();
        assert_eq!(logged, LINES_PER_ADDRESS as usize);
        assert!(r.note_at(ip("192.0.2.2"), "key_mismatch", false, now).log);
        assert_eq!(
            m.refusals_unlogged.get(),
            100 - u64::from(LINES_PER_ADDRESS)
        );
        r.report_at(now + INTERVAL);
        assert!(
            r.note_at(ip("192.0.2.1"), "key_mismatch", false, now + INTERVAL)
                .log,
            "a new interval, new lines"
        );
    }

    #[test]
    fn all_addresses_together_get_a_bounded_number_of_lines() {
        let r = Refusals::new(50, &Metrics::new());
        let now = Instant::now();
        let logged = (0..1000u32)
            .filter(|i| {
                let a = IpAddr::from([198, 51, (i / 256) as u8, (i % 256) as u8]);
                r.note_at(a, "unknown_service", false, now).log
            })
            .count();
        assert_eq!(logged, LINES_PER_INTERVAL as usize);
    }

    #[test]
    fn rows_are_recorded_at_the_rate_with_a_burst_and_clicks_pace_is_kept_whole() {
        let m = Metrics::new();
        let r = Refusals::new(50, &m);
        let start = Instant::now();
        // A flood: 2,000 at once gets the burst, then the rate.
        let recorded = (0..2000)
            .filter(|_| {
                r.note_at(ip("192.0.2.9"), "key_mismatch", true, start)
                    .record
            })
            .count();
        assert_eq!(recorded, 500);
        let later = start + Duration::from_secs(1);
        let recorded = (0..2000)
            .filter(|_| {
                r.note_at(ip("192.0.2.9"), "key_mismatch", true, later)
                    .record
            })
            .count();
        assert_eq!(recorded, 50);
        // An outage at Click's pace: 30 a second for 10 s, from another address, all recorded.
        let all = (0..300).all(|i| {
            let t = start + Duration::from_millis(i * 1000 / 30);
            r.note_at(ip("203.0.113.5"), "unknown_service", true, t)
                .record
        });
        assert!(all);
        let unrecorded = m
            .ledger_unrecorded
            .get_or_create(&ReasonLabels { reason: "rate" })
            .get();
        assert_eq!(unrecorded, 1500 + 1950);
    }

    #[test]
    fn quiet_addresses_are_forgotten() {
        let r = Refusals::new(50, &Metrics::new());
        let now = Instant::now();
        r.note_at(ip("192.0.2.1"), "key_mismatch", true, now);
        r.report_at(now + INTERVAL);
        assert_eq!(
            r.tracked.load(Ordering::Relaxed),
            1,
            "it refused something this interval"
        );
        r.report_at(now + INTERVAL * 2);
        assert_eq!(r.tracked.load(Ordering::Relaxed), 0);
    }
}
