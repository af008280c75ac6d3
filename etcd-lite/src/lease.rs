//! Lease bookkeeping: TTLs, deadlines and the keys attached to each lease. Pure: the caller passes
//! the current time in, so expiry is tested deterministically.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::error::{EtcdError, Result};

/// Longest TTL a lease may have, in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// Shortest TTL granted, in seconds; shorter requests are raised to it, as etcd does with its
/// election-timeout-derived minimum.
pub const MIN_LEASE_TTL: i64 = 2;

#[derive(Debug, Clone)]
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
    pub deadline: Instant,
    pub keys: BTreeSet<Vec<u8>>,
}

impl Lease {
    /// Whole seconds left, -1 once expired (what TimeToLive reports).
    pub fn remaining(&self, now: Instant) -> i64 {
        if now >= self.deadline {
            -1
        } else {
            // etcd rounds up remaining time (ceil) so a fresh lease reports its full TTL.
            let left = self.deadline - now;
            let secs = left.as_secs() as i64;
            if left.subsec_nanos() > 0 {
                secs + 1
            } else {
                secs
            }
        }
    }
}

/// All live leases.
#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: HashMap<i64, Lease>,
    next_id: i64,
}

impl LeaseTable {
    /// Normalises a requested TTL the way etcd does.
    pub fn effective_ttl(ttl: i64) -> Result<i64> {
        if ttl > MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTtlTooLarge);
        }
        Ok(ttl.max(MIN_LEASE_TTL))
    }

    /// Picks an unused id for a grant that asked for none. Seeded from the clock like etcd's id
    /// generator so ids differ across restarts; always positive.
    pub fn new_id(&mut self, seed: i64) -> i64 {
        if self.next_id == 0 {
            self.next_id = (seed & 0x0000_7fff_ffff_ffff) << 16 | 1;
        }
        loop {
            let id = self.next_id & i64::MAX;
            self.next_id = self.next_id.wrapping_add(1);
            if id > 0 && !self.leases.contains_key(&id) {
                return id;
            }
        }
    }

    /// Picks an unused id from `seed` alone, for ids chosen while a committed entry is applied
    /// (a v2 key's TTL): every member applies the same entries to the same table, so every
    /// member picks the same id. Never uses the clock; always positive.
    pub fn id_for_entry(&self, seed: u64) -> i64 {
        // splitmix64, so ids of consecutive revisions are spread over the id space and do not
        // run into the ids clients ask for (small numbers).
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let mut id = (z & i64::MAX as u64) as i64;
        while id <= 0 || self.leases.contains_key(&id) {
            id = id.wrapping_add(1) & i64::MAX;
        }
        id
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn insert(&mut self, id: i64, ttl: i64, now: Instant) {
        self.leases.insert(
            id,
            Lease {
                id,
                ttl,
                deadline: now + Duration::from_secs(ttl as u64),
                keys: BTreeSet::new(),
            },
        );
    }

    pub fn remove(&mut self, id: i64) -> Option<Lease> {
        self.leases.remove(&id)
    }

    /// Restarts the lease's countdown; returns its TTL.
    pub fn renew(&mut self, id: i64, now: Instant) -> Result<i64> {
        let l = self.leases.get_mut(&id).ok_or(EtcdError::LeaseNotFound)?;
        l.deadline = now + Duration::from_secs(l.ttl as u64);
        Ok(l.ttl)
    }

    /// Gives every lease its full TTL again (a new leader does this, as etcd's does).
    pub fn renew_all(&mut self, now: Instant) {
        for l in self.leases.values_mut() {
            l.deadline = now + Duration::from_secs(l.ttl as u64);
        }
    }

    pub fn attach(&mut self, id: i64, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.keys.insert(key.to_vec());
        }
    }

    pub fn detach(&mut self, id: i64, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.keys.remove(key);
        }
    }

    /// Ids of leases whose deadline has passed.
    pub fn expired(&self, now: Instant) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .leases
            .values()
            .filter(|l| l.deadline <= now)
            .map(|l| l.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_and_renewal_follow_the_clock() {
        let t0 = Instant::now();
        let mut t = LeaseTable::default();
        t.insert(7, 5, t0);
        assert_eq!(t.get(7).map(|l| l.remaining(t0)), Some(5));
        assert!(t.expired(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(t.renew(7, t0 + Duration::from_secs(4)), Ok(5));
        assert!(t.expired(t0 + Duration::from_secs(8)).is_empty());
        assert_eq!(t.expired(t0 + Duration::from_secs(9)), vec![7]);
        assert_eq!(
            t.get(7).map(|l| l.remaining(t0 + Duration::from_secs(9))),
            Some(-1)
        );
        assert_eq!(t.renew(8, t0), Err(EtcdError::LeaseNotFound));
    }

    #[test]
    fn ttl_limits_match_etcd() {
        assert_eq!(LeaseTable::effective_ttl(1), Ok(MIN_LEASE_TTL));
        assert_eq!(LeaseTable::effective_ttl(60), Ok(60));
        assert_eq!(
            LeaseTable::effective_ttl(MAX_LEASE_TTL + 1),
            Err(EtcdError::LeaseTtlTooLarge)
        );
    }

    #[test]
    fn generated_ids_are_positive_and_unique() {
        let mut t = LeaseTable::default();
        let a = t.new_id(i64::MAX);
        t.insert(a, 10, Instant::now());
        let b = t.new_id(i64::MAX);
        assert!(a > 0 && b > 0 && a != b);
    }

    #[test]
    fn ids_for_entries_depend_on_the_entry_only() {
        let mut t = LeaseTable::default();
        let a = t.id_for_entry(42);
        assert!(a > 0);
        assert_eq!(LeaseTable::default().id_for_entry(42), a);
        assert_ne!(t.id_for_entry(43), a);
        // A taken id is passed over, the same way on every member.
        t.insert(a, 10, Instant::now());
        let b = t.id_for_entry(42);
        assert!(b > 0 && b != a);
        assert_eq!(t.id_for_entry(42), b);
    }
}
