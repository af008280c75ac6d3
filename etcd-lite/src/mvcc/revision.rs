//! Revisions and how they are laid out as sled keys.

/// A point in the store's history: `main` is bumped once per write transaction, `sub` numbers the
/// changes inside that transaction (etcd's `revision{main, sub}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

/// Prefix of revision records (`k` + main + sub + kind) in the sled tree.
pub const KV_PREFIX: u8 = b'k';
/// Prefix of lease records (`l` + id).
pub const LEASE_PREFIX: u8 = b'l';
/// Prefix of metadata records (`m` + name).
pub const META_PREFIX: u8 = b'm';

/// Length of an encoded revision key.
pub const REV_KEY_LEN: usize = 18;

impl Revision {
    pub fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// The sled key of this revision's record. Big-endian so that byte order is revision order;
    /// the last byte marks tombstones like etcd's `markTombstone`.
    pub fn to_key(self, tombstone: bool) -> [u8; REV_KEY_LEN] {
        let mut k = [0u8; REV_KEY_LEN];
        k[0] = KV_PREFIX;
        k[1..9].copy_from_slice(&(self.main as u64).to_be_bytes());
        k[9..17].copy_from_slice(&(self.sub as u64).to_be_bytes());
        k[17] = u8::from(tombstone);
        k
    }

    /// Decodes a sled key made by [`Revision::to_key`]; `None` for anything else.
    pub fn from_key(k: &[u8]) -> Option<(Revision, bool)> {
        if k.len() != REV_KEY_LEN || k[0] != KV_PREFIX {
            return None;
        }
        let main = u64::from_be_bytes(k[1..9].try_into().ok()?) as i64;
        let sub = u64::from_be_bytes(k[9..17].try_into().ok()?) as i64;
        Some((Revision { main, sub }, k[17] == 1))
    }

    /// The smallest sled key of any record with this main revision or later.
    pub fn lower_bound(main: i64) -> [u8; 9] {
        let mut k = [0u8; 9];
        k[0] = KV_PREFIX;
        k[1..9].copy_from_slice(&(main.max(0) as u64).to_be_bytes());
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn key_roundtrip_preserves_order(a in 0i64..i64::MAX, b in 0i64..1000, c in 0i64..i64::MAX, d in 0i64..1000, t in any::<bool>()) {
            let (ra, rb) = (Revision::new(a, b), Revision::new(c, d));
            prop_assert_eq!(Revision::from_key(&ra.to_key(t)), Some((ra, t)));
            prop_assert_eq!(ra.cmp(&rb), ra.to_key(false).cmp(&rb.to_key(false)));
        }
    }
}
