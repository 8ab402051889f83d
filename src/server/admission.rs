//! Admission by client address: how many connections, HTTP/2 streams and bytes of buffered
//! body one address may hold (nginx's `limit_conn`, HAProxy's stick tables keyed by source).
//!
//! One address opening thousands of connections would otherwise fill the gateway's cap and
//! keep every valid callback out, so a connection over `server.max_connections_per_address` is
//! closed at once, before it costs anything more (`connections_refused_total{reason=
//! "address_cap"}`); it never waits behind the attacker in the kernel's queue, because the
//! gateway accepts everything and sorts afterwards. An IPv6 client is its /64: one subscriber's
//! allotment, from which a host can pick new addresses at will.
//!
//! Peers in `server.trusted_proxies` (a TLS edge in front of the gateway) are exempt: every
//! client behind the edge shares its address, and the edge enforces its own limits.
//!
//! The table holds an entry only while its address has a connection open, so it is bounded by
//! the open connections themselves; entries are shared by the address's connections (an
//! [`Address`] each), and its counters are atomics, so a request touches no lock.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Shards of the table: accepts on different workers rarely meet on one lock.
const SHARDS: usize = 16;

/// An address as admission counts it: IPv4 (an IPv4-mapped IPv6 address included) whole,
/// IPv6 by its /64 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressKey(IpAddr);

impl AddressKey {
    pub fn of(ip: IpAddr) -> AddressKey {
        AddressKey(match ip.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)))),
            v4 => v4,
        })
    }
}

impl std::fmt::Display for AddressKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
            v4 => write!(f, "{v4}"),
        }
    }
}

/// What one address holds, shared by its connections.
#[derive(Debug)]
pub struct Address {
    pub key: AddressKey,
    connections: AtomicU32,
    streams: AtomicU32,
    /// Buffered body bytes, in KiB, of the callback lane and the general lane.
    body_kib: [AtomicU64; 2],
}

/// Why an address was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over `server.max_connections_per_address`.
    Connections,
}

type Shard = HashMap<AddressKey, Arc<Address>>;

/// The table of addresses with open connections.
#[derive(Debug)]
pub struct Admission {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// `server.max_connections_per_address`.
    connections: u32,
}

/// A connection's hold on its address, released when dropped; `address` is `None` for a
/// trusted proxy, which nothing is counted against.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    pub address: Option<Arc<Address>>,
}

impl Admission {
    pub fn new(connections_per_address: u32) -> Arc<Admission> {
        Arc::new(Admission {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            connections: connections_per_address,
        })
    }

    fn shard(&self, key: &AddressKey) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) as usize) % self.shards.len();
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a new connection from `ip` against its address, or refuses it; a `trusted`
    /// peer (`server.trusted_proxies`) is counted against nothing.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, trusted: bool) -> Result<Ticket, Refusal> {
        if trusted {
            return Ok(Ticket {
                admission: self.clone(),
                address: None,
            });
        }
        let key = AddressKey::of(ip);
        let mut shard = self.shard(&key);
        let address = shard.entry(key).or_insert_with(|| {
            Arc::new(Address {
                key,
                connections: AtomicU32::new(0),
                streams: AtomicU32::new(0),
                body_kib: Default::default(),
            })
        });
        // Changed only under the shard's lock, so the check and the count are one step.
        if address.connections.load(Ordering::Relaxed) >= self.connections {
            return Err(Refusal::Connections);
        }
        address.connections.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket {
            admission: self.clone(),
            address: Some(address.clone()),
        })
    }

    /// Addresses with a connection open.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some(address) = self.address.take() else {
            return;
        };
        let mut shard = self.admission.shard(&address.key);
        if address.connections.fetch_sub(1, Ordering::Relaxed) == 1 {
            shard.remove(&address.key);
        }
    }
}

impl Address {
    /// Takes one HTTP/2 stream of the address's allowance; `None` when it is used up.
    pub fn stream(self: &Arc<Self>, limit: u32) -> Option<StreamHold> {
        let before = self.streams.fetch_add(1, Ordering::Relaxed);
        if before >= limit {
            self.streams.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(StreamHold(self.clone()))
    }

    /// Adds `kib` to what the address's bodies of lane `lane` (0: callbacks, 1: the rest) hold,
    /// if that stays within `cap_kib`.
    pub fn take_body(&self, lane: usize, kib: u64, cap_kib: u64) -> bool {
        let Some(held) = self.body_kib.get(lane) else {
            return false;
        };
        let before = held.fetch_add(kib, Ordering::Relaxed);
        if before + kib > cap_kib {
            held.fetch_sub(kib, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub fn release_body(&self, lane: usize, kib: u64) {
        if let Some(held) = self.body_kib.get(lane) {
            held.fetch_sub(kib, Ordering::Relaxed);
        }
    }
}

/// An HTTP/2 stream counted against its address until dropped (with its response).
#[derive(Debug)]
pub struct StreamHold(Arc<Address>);

impl Drop for StreamHold {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cidr::{any_contains, Cidr};

    fn admission(connections: u32) -> Arc<Admission> {
        Admission::new(connections)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A peer as the accept loop sees it: 10.0.0.0/8 is a trusted proxy here.
    fn admit(a: &Arc<Admission>, s: &str) -> Result<Ticket, Refusal> {
        let trusted = any_contains(&[Cidr::parse("10.0.0.0/8").unwrap()], ip(s));
        a.admit(ip(s), trusted)
    }

    #[test]
    fn one_address_is_capped_and_others_are_not_affected() {
        let a = admission(2);
        let held: Vec<_> = (0..2).map(|_| admit(&a, "192.0.2.1").unwrap()).collect();
        assert_eq!(admit(&a, "192.0.2.1").unwrap_err(), Refusal::Connections);
        assert!(admit(&a, "192.0.2.2").is_ok());
        drop(held);
        assert_eq!(
            a.addresses(),
            0,
            "an address leaves the table with its last connection"
        );
        assert!(admit(&a, "192.0.2.1").is_ok());
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64_and_a_trusted_proxy_is_exempt() {
        let a = admission(1);
        let _first = admit(&a, "2001:db8:1:2::1").unwrap();
        assert!(admit(&a, "2001:db8:1:2:ffff::9").is_err(), "same /64");
        assert!(admit(&a, "2001:db8:1:3::1").is_ok(), "another /64");
        let _v4 = admit(&a, "192.0.2.7").unwrap();
        assert!(
            admit(&a, "::ffff:192.0.2.7").is_err(),
            "an IPv4-mapped address is the IPv4 address"
        );
        let edge: Vec<_> = (0..5).map(|_| admit(&a, "10.1.2.3").unwrap()).collect();
        assert!(edge.iter().all(|t| t.address.is_none()));
        assert_eq!(
            AddressKey::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn streams_and_body_memory_are_counted_per_address() {
        let a = admission(8);
        let t1 = admit(&a, "192.0.2.1").unwrap();
        let t2 = admit(&a, "192.0.2.1").unwrap();
        let (x, y) = (t1.address.clone().unwrap(), t2.address.clone().unwrap());
        let s1 = x.stream(2).unwrap();
        let _s2 = y.stream(2).unwrap();
        assert!(x.stream(2).is_none(), "two streams across both connections");
        drop(s1);
        assert!(y.stream(2).is_some());
        assert!(x.take_body(0, 12, 16));
        assert!(
            !y.take_body(0, 8, 16),
            "the address's bodies are over 16 KiB"
        );
        assert!(y.take_body(1, 8, 16), "the other lane is counted apart");
        x.release_body(0, 12);
        assert!(y.take_body(0, 8, 16));
    }
}
