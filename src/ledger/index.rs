//! The replay guard's index over a SQLite ledger's rows, in memory: what rule 1 and rule 2 of
//! [`crate::guard`] look up, checked and updated in one step under a lock (so two workers
//! racing two messages under one signature cannot both be first), before the callback's row is
//! appended. It is not a second store: every entry is a column of a forwarded callback's row
//! ([`super::Bound`]), and the index is rebuilt from those rows at start ([`Index::rebuild`]).
//!
//! - rule 1: the signature's key (64 bits of `sign_string` mixed with the service id) → the
//!   message's digest (a SipHash of its fields under the ledger's secret key,
//!   [`crate::click::digest::keyed`]) and the first row's id (to name the fields a changed
//!   message differs in);
//! - rule 2: `(service_id, click_trans_id)` → the first forwarded Complete's `error`.
//!
//! **The window** (`guard.window`): entries live in three generations, a hash map taking the
//! new ones and two sorted arrays (binary search; 24 and 24 bytes an entry, no spare
//! capacity); every half window the youngest array becomes the oldest, the map becomes the
//! youngest array, and the oldest is dropped (both arrays, when a shard saw no callback for a
//! whole window). So an entry is kept at least one window and at most one and a half, two for
//! the rows a start rebuilds from (they all go in the youngest array); a signature older than
//! the window is the guard's to refuse by its `sign_time` ([`crate::guard`]).
//!
//! 64-bit keys and digests: two genuine messages of one window colliding is a chance of about
//! one in 2^64 / n per callback (n entries); forging a changed message with the same digest
//! under a genuine signature means guessing a keyed pseudo-random function whose key and
//! outputs never leave the ledger file.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::binding::Seen;
use super::record::Bound;
use crate::click::digest::DigestKey;

/// A Complete's `error` that is not a number (Click's are; a number stands for itself).
pub const UNREADABLE_ERROR: i64 = i64::MIN;

const SHARDS: usize = 16;

/// Rule 1's entry: the first message's digest and row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed {
    pub digest: i64,
    pub row: i64,
}

/// What the index found for one callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Rule 1. `Changed` carries no field names here: the caller names them from the first
    /// row ([`Found::first_row`]).
    pub signature: Seen,
    /// The row the signature was first bound with, when it is another.
    pub first_row: Option<i64>,
    /// Rule 2: the first forwarded Complete's `error`, when another Complete was first.
    pub earlier_complete_error: Option<i64>,
}

/// One callback's claim: its signature's key and entry, and, for a Complete, its transaction
/// and `error`.
#[derive(Debug, Clone, Copy)]
pub struct Claim {
    pub key: i64,
    pub signed: Signed,
    /// `(service_id, click_trans_id, error)` of a Complete.
    pub complete: Option<(u64, u64, i64)>,
    /// Rule 1 is enforced: a message it refuses does not become its transaction's first
    /// Complete.
    pub enforce_signature: bool,
}

/// Rule 2's key: `(service_id, click_trans_id)`.
type Transaction = (u64, u64);

/// An index's shards, each behind its lock.
type Shards<K, V> = Box<[Mutex<Generations<K, V>>]>;

/// One row as the index is rebuilt from it: its id, service, Click transaction (when it is a
/// number) and guard entry.
pub type GuardRow = (i64, u64, Option<u64>, Bound);

/// The index (see the module docs).
#[derive(Debug)]
pub struct Index {
    signatures: Shards<i64, Signed>,
    completes: Shards<Transaction, i64>,
    half_window: Duration,
    digest_key: DigestKey,
}

impl Index {
    /// `digest_key`: the ledger's, which its rows' digests were computed with.
    pub fn new(window: Duration, digest_key: DigestKey) -> Index {
        let now = Instant::now();
        Index {
            digest_key,
            signatures: (0..SHARDS)
                .map(|_| Mutex::new(Generations::new(now)))
                .collect(),
            completes: (0..SHARDS)
                .map(|_| Mutex::new(Generations::new(now)))
                .collect(),
            half_window: window / 2,
        }
    }

    /// Checks a verified callback against the index and binds it when it is first, in one
    /// step per rule.
    pub fn bind(&self, claim: &Claim) -> Found {
        self.bind_at(claim, Instant::now())
    }

    fn bind_at(&self, claim: &Claim, now: Instant) -> Found {
        let (signature, first_row) = {
            let mut shard = lock(&self.signatures[shard_of(claim.key as u64)]);
            shard.rotate(now, self.half_window);
            match shard.get(&claim.key) {
                None => {
                    shard.insert(claim.key, claim.signed);
                    (Seen::First, None)
                }
                Some(first) if first.digest == claim.signed.digest => (Seen::Same, None),
                Some(first) => (Seen::Changed(Vec::new()), Some(first.row)),
            }
        };
        let mut earlier_complete_error = None;
        if let Some((service, trans, error)) = claim.complete {
            let mut shard = lock(&self.completes[shard_of(service ^ trans.rotate_left(32))]);
            shard.rotate(now, self.half_window);
            let refused = claim.enforce_signature && matches!(signature, Seen::Changed(_));
            match shard.get(&(service, trans)) {
                Some(earlier) => earlier_complete_error = Some(earlier),
                None if !refused => shard.insert((service, trans), error),
                None => {}
            }
        }
        Found {
            signature,
            first_row,
            earlier_complete_error,
        }
    }

    /// Fills the index from the rows of the window, oldest first (a key's first row is its
    /// entry): each row's id, service, Click transaction and guard entry.
    pub fn rebuild(&self, rows: impl IntoIterator<Item = GuardRow>) {
        let mut signatures: Vec<Vec<(i64, Signed, i64)>> = vec![Vec::new(); SHARDS];
        let mut completes: Vec<Vec<(Transaction, i64, i64)>> = vec![Vec::new(); SHARDS];
        for (row, service, trans, bound) in rows {
            let signed = Signed {
                digest: bound.digest,
                row,
            };
            signatures[shard_of(bound.key as u64)].push((bound.key, signed, row));
            if let (Some(trans), Some(error)) = (trans, bound.complete_error) {
                completes[shard_of(service ^ trans.rotate_left(32))].push((
                    (service, trans),
                    error,
                    row,
                ));
            }
        }
        for (shard, entries) in self.signatures.iter().zip(signatures) {
            lock(shard).young = Frozen::first_of(entries);
        }
        for (shard, entries) in self.completes.iter().zip(completes) {
            lock(shard).young = Frozen::first_of(entries);
        }
    }

    /// A verified callback's entry ([`bound_of`], under this index's digest key).
    pub fn bound_of(
        &self,
        parsed: &crate::click::Parsed<'_>,
        cb: &crate::click::Callback<'_>,
    ) -> Option<Bound> {
        bound_of(&self.digest_key, parsed, cb)
    }

    /// Entries held, rule 1's and rule 2's.
    pub fn len(&self) -> (usize, usize) {
        (
            self.signatures.iter().map(|s| lock(s).len()).sum(),
            self.completes.iter().map(|s| lock(s).len()).sum(),
        )
    }

    /// Bytes the entries take (the arrays and the maps' tables).
    pub fn bytes(&self) -> usize {
        self.signatures
            .iter()
            .map(|s| lock(s).bytes())
            .sum::<usize>()
            + self
                .completes
                .iter()
                .map(|s| lock(s).bytes())
                .sum::<usize>()
    }
}

fn shard_of(hash: u64) -> usize {
    (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The key of a signature: the first 64 bits of `sign_string` (hex, either case) mixed with
/// the service id; `None` for a `sign_string` that is not 32 hex digits (never a verified
/// one).
pub fn key(service_id: u64, sign: &str) -> Option<i64> {
    let hex = sign.as_bytes().get(..16)?;
    let mut bits = 0u64;
    for &c in hex {
        let v = (c as char).to_digit(16)?;
        bits = bits << 4 | u64::from(v);
    }
    Some((bits ^ service_id.wrapping_mul(0x9E37_79B9_7F4A_7C15)) as i64)
}

/// A Complete's `error` as the index keeps it.
pub fn error_code(error: &str) -> i64 {
    error.parse().unwrap_or(UNREADABLE_ERROR)
}

/// Three generations of entries (see the module docs).
#[derive(Debug)]
struct Generations<K, V> {
    live: HashMap<K, V>,
    young: Frozen<K, V>,
    old: Frozen<K, V>,
    rotated: Instant,
}

impl<K: Copy + Ord + Hash, V: Copy> Generations<K, V> {
    fn new(now: Instant) -> Self {
        Generations {
            live: HashMap::new(),
            young: Frozen::default(),
            old: Frozen::default(),
            rotated: now,
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        self.live
            .get(key)
            .copied()
            .or_else(|| self.young.get(key))
            .or_else(|| self.old.get(key))
    }

    fn insert(&mut self, key: K, value: V) {
        self.live.insert(key, value);
    }

    fn rotate(&mut self, now: Instant, half_window: Duration) {
        let since = now.saturating_duration_since(self.rotated);
        if since < half_window {
            return;
        }
        self.rotated = now;
        let live: Vec<(K, V, i64)> = std::mem::take(&mut self.live)
            .into_iter()
            .map(|(k, v)| (k, v, 0))
            .collect();
        let young = std::mem::replace(&mut self.young, Frozen::first_of(live));
        // A shard nobody touched for a whole window: its young entries are a window old too.
        self.old = if since < half_window * 2 {
            young
        } else {
            Frozen::default()
        };
    }

    fn len(&self) -> usize {
        self.live.len() + self.young.keys.len() + self.old.keys.len()
    }

    fn bytes(&self) -> usize {
        let entry = std::mem::size_of::<(K, V)>() + 1;
        self.live.capacity() * entry + self.young.bytes() + self.old.bytes()
    }
}

/// Entries sorted by key, for binary search; nothing spare.
#[derive(Debug)]
struct Frozen<K, V> {
    keys: Box<[K]>,
    values: Box<[V]>,
}

impl<K, V> Default for Frozen<K, V> {
    fn default() -> Self {
        Frozen {
            keys: Box::new([]),
            values: Box::new([]),
        }
    }
}

impl<K: Copy + Ord, V: Copy> Frozen<K, V> {
    /// From `(key, value, order)` entries: the one of lowest order wins a key.
    fn first_of(mut entries: Vec<(K, V, i64)>) -> Frozen<K, V> {
        entries.sort_unstable_by_key(|(k, _, order)| (*k, *order));
        entries.dedup_by_key(|(k, _, _)| *k);
        Frozen {
            keys: entries.iter().map(|(k, _, _)| *k).collect(),
            values: entries.iter().map(|(_, v, _)| *v).collect(),
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        let i = self.keys.binary_search(key).ok()?;
        self.values.get(i).copied()
    }

    fn bytes(&self) -> usize {
        self.keys.len() * (std::mem::size_of::<K>() + std::mem::size_of::<V>())
    }
}

/// The guard's entry of a verified callback, under the ledger's digest key: its signature's
/// key, its message's digest ([`crate::click::digest::keyed`] of every decoded field), and a
/// Complete's `error` (`None` for a `sign_string` that is not hex, which never verifies).
pub fn bound_of(
    digest_key: &DigestKey,
    parsed: &crate::click::Parsed<'_>,
    cb: &crate::click::Callback<'_>,
) -> Option<Bound> {
    Some(Bound {
        key: key(cb.service_id, cb.sign_string)?,
        digest: crate::click::digest::keyed(digest_key, &parsed.fields()),
        complete_error: (cb.action == crate::click::Action::Complete).then(|| error_code(cb.error)),
    })
}

/// [`bound_of`] for a stored body (a migration's): parsed and read as the data path does.
pub fn bound_of_body(
    digest_key: &DigestKey,
    content_type: Option<&str>,
    body: &[u8],
) -> Option<Bound> {
    use crate::click::{FormKind, KeySet, Parsed};
    let kind = FormKind::of_stored(content_type);
    let parsed = Parsed::parse(&kind, body).ok()?;
    let keys = KeySet::default();
    let verdict = parsed.judge(&keys);
    let cb = verdict.callback?;
    bound_of(digest_key, &parsed, &cb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_a_window_to_a_window_and_a_half_and_an_idle_shard_forgets_at_once() {
        let start = Instant::now();
        let half = Duration::from_secs(30);
        let mut g: Generations<i64, i64> = Generations::new(start);
        g.insert(1, 10);
        g.rotate(start + half, half);
        g.insert(2, 20);
        g.rotate(start + half * 2, half);
        assert_eq!((g.get(&1), g.get(&2)), (Some(10), Some(20)));
        g.rotate(start + half * 3, half);
        assert_eq!((g.get(&1), g.get(&2)), (None, Some(20)));
        // Nothing for a whole window: what was young is a window old as well.
        g.insert(3, 30);
        g.rotate(start + half * 4, half);
        assert_eq!((g.get(&2), g.get(&3)), (None, Some(30)));
        g.rotate(start + half * 6, half);
        assert_eq!(g.get(&3), None, "{} left", g.len());
    }
}
