//! The in-memory key index: for every key, the revisions at which it changed. Values live in
//! sled, addressed by revision; this index answers "which revision of key K is visible at R".

use std::collections::BTreeMap;
use std::ops::Bound;

use smallvec::SmallVec;

use super::revision::Revision;

/// One change of one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub rev: Revision,
    pub tombstone: bool,
}

/// What a live key's newest put made it: enough for the next put of the key to write its
/// record without reading the previous one (etcd keeps the same in its key index).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Live {
    pub rev: Revision,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// One key's history and, when its newest change is a put, what that put made it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct History {
    /// Most keys have one change between compactions: it is kept inline, without an allocation.
    changes: SmallVec<[Change; 1]>,
    /// Meaningful only while the newest change is not a tombstone.
    create_revision: i64,
    version: i64,
    lease: i64,
}

/// The key space's history. Invariant: every key's changes are in ascending revision order and a
/// key with no changes is not in the map.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct KeyIndex {
    keys: BTreeMap<Vec<u8>, History>,
}

/// A key range as etcd defines it: `end` empty means the single key `start`; `end == [0]` means
/// every key `>= start`; otherwise the half-open `[start, end)`.
#[derive(Clone, Debug)]
pub struct KeyRange<'a> {
    pub start: &'a [u8],
    pub end: &'a [u8],
}

impl<'a> KeyRange<'a> {
    pub fn new(start: &'a [u8], end: &'a [u8]) -> Self {
        KeyRange { start, end }
    }

    pub fn is_single(&self) -> bool {
        self.end.is_empty()
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        if self.end.is_empty() {
            key == self.start
        } else if self.end == [0] {
            key >= self.start
        } else {
            key >= self.start && key < self.end
        }
    }

    fn bounds(&self) -> Option<Bounds<'a>> {
        if self.end.is_empty() {
            Some((Bound::Included(self.start), Bound::Included(self.start)))
        } else if self.end == [0] {
            Some((Bound::Included(self.start), Bound::Unbounded))
        } else if self.end <= self.start {
            None
        } else {
            Some((Bound::Included(self.start), Bound::Excluded(self.end)))
        }
    }
}

type Bounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

fn visible(changes: &[Change], at: i64) -> Option<Change> {
    let n = changes.partition_point(|c| c.rev.main <= at);
    let c = *changes.get(n.checked_sub(1)?)?;
    (!c.tombstone).then_some(c)
}

impl KeyIndex {
    /// The live revision of `key` at main revision `at`, if the key existed then.
    pub fn get(&self, key: &[u8], at: i64) -> Option<Revision> {
        visible(&self.keys.get(key)?.changes, at).map(|c| c.rev)
    }

    /// The key's newest change, if it is a put (the key exists now).
    pub fn latest(&self, key: &[u8]) -> Option<Live> {
        let h = self.keys.get(key)?;
        let c = h.changes.last()?;
        (!c.tombstone).then_some(Live {
            rev: c.rev,
            create_revision: h.create_revision,
            version: h.version,
            lease: h.lease,
        })
    }

    /// Live keys of `range` at `at`, in key order, with their revisions.
    pub fn range(&self, range: &KeyRange<'_>, at: i64) -> Vec<(&[u8], Revision)> {
        let Some(bounds) = range.bounds() else {
            return Vec::new();
        };
        self.keys
            .range::<[u8], _>(bounds)
            .filter_map(|(k, h)| visible(&h.changes, at).map(|c| (k.as_slice(), c.rev)))
            .collect()
    }

    /// Number of live keys of `range` at `at`.
    pub fn count(&self, range: &KeyRange<'_>, at: i64) -> usize {
        let Some(bounds) = range.bounds() else {
            return 0;
        };
        self.keys
            .range::<[u8], _>(bounds)
            .filter(|(_, h)| visible(&h.changes, at).is_some())
            .count()
    }

    /// The change of `key` just before `rev`, if any (used for a watch event's previous value).
    pub fn before(&self, key: &[u8], rev: Revision) -> Option<Change> {
        let ch = &self.keys.get(key)?.changes;
        let n = ch.partition_point(|c| c.rev < rev);
        ch.get(n.checked_sub(1)?).copied()
    }

    /// Records a put of `key` at `rev` with `lease`; returns what it makes the key (a put of a
    /// live key keeps its create revision and counts up its version, as in etcd). `rev` must be
    /// newer than every change already recorded for `key`.
    pub fn record_put(&mut self, key: &[u8], rev: Revision, lease: i64) -> Live {
        let (create_revision, version) = match self.latest(key) {
            Some(l) => (l.create_revision, l.version + 1),
            None => (rev.main, 1),
        };
        let live = Live {
            rev,
            create_revision,
            version,
            lease,
        };
        self.record(key, rev, Some(live));
        live
    }

    /// Records a deletion (tombstone) of `key` at `rev`.
    pub fn record_delete(&mut self, key: &[u8], rev: Revision) {
        self.record(key, rev, None);
    }

    /// Records a change read back from the store: a put (`live`, as its record says) or a
    /// tombstone (`None`).
    pub fn record(&mut self, key: &[u8], rev: Revision, live: Option<Live>) {
        let h = self.keys.entry(key.to_vec()).or_default();
        assert!(
            h.changes.last().is_none_or(|l| l.rev < rev),
            "index changes are recorded in revision order"
        );
        h.changes.push(Change {
            rev,
            tombstone: live.is_none(),
        });
        let l = live.unwrap_or_default();
        (h.create_revision, h.version, h.lease) = (l.create_revision, l.version, l.lease);
    }

    /// Forgets history older than `at` as etcd's compaction does: for every key, the newest change
    /// at or before `at` is kept unless it is a tombstone; older changes go. Returns what was
    /// dropped so that the caller can delete the stored records.
    pub fn compact(&mut self, at: i64) -> Vec<Change> {
        let mut dropped = Vec::new();
        self.keys.retain(|_, h| {
            let ch = &mut h.changes;
            let n = ch.partition_point(|c| c.rev.main <= at);
            if n == 0 {
                return true;
            }
            let keep_from = if ch[n - 1].tombstone { n } else { n - 1 };
            dropped.extend(ch.drain(..keep_from));
            !ch.is_empty()
        });
        dropped
    }

    /// Number of keys with any retained history.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The live keys that are attached to a lease, with it.
    pub fn attached(&self) -> Vec<(Vec<u8>, i64)> {
        self.keys
            .iter()
            .filter(|(_, h)| h.lease != 0 && h.changes.last().is_some_and(|c| !c.tombstone))
            .map(|(k, h)| (k.clone(), h.lease))
            .collect()
    }

    /// Appends the index to `out` in the form [`KeyIndex::decode`] reads: per key, in key
    /// order, its length and bytes, its create revision, version and lease, then its changes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.keys.len() as u64).to_le_bytes());
        for (k, h) in &self.keys {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
            for n in [h.create_revision, h.version, h.lease] {
                out.extend_from_slice(&n.to_le_bytes());
            }
            out.extend_from_slice(&(h.changes.len() as u32).to_le_bytes());
            for c in &h.changes {
                out.extend_from_slice(&c.rev.main.to_le_bytes());
                out.extend_from_slice(&c.rev.sub.to_le_bytes());
                out.push(u8::from(c.tombstone));
            }
        }
    }

    /// Reads what [`KeyIndex::encode`] wrote; `None` unless it is exactly that (keys in strict
    /// order, every key with changes in strict revision order, nothing left over).
    pub fn decode(mut b: &[u8]) -> Option<KeyIndex> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, rest) = b.split_at_checked(n)?;
            *b = rest;
            Some(head)
        }
        fn u32_(b: &mut &[u8]) -> Option<usize> {
            Some(u32::from_le_bytes(take(b, 4)?.try_into().ok()?) as usize)
        }
        fn i64_(b: &mut &[u8]) -> Option<i64> {
            Some(i64::from_le_bytes(take(b, 8)?.try_into().ok()?))
        }
        let n = u64::from_le_bytes(take(&mut b, 8)?.try_into().ok()?) as usize;
        let mut entries: Vec<(Vec<u8>, History)> = Vec::with_capacity(n.min(b.len() / 40));
        for _ in 0..n {
            let klen = u32_(&mut b)?;
            let key = take(&mut b, klen)?.to_vec();
            if entries.last().is_some_and(|(prev, _)| *prev >= key) {
                return None;
            }
            let (create_revision, version, lease) = (i64_(&mut b)?, i64_(&mut b)?, i64_(&mut b)?);
            let count = u32_(&mut b)?;
            let mut changes: SmallVec<[Change; 1]> = SmallVec::with_capacity(count);
            for _ in 0..count {
                let rev = Revision::new(i64_(&mut b)?, i64_(&mut b)?);
                let tombstone = match take(&mut b, 1)?[0] {
                    0 => false,
                    1 => true,
                    _ => return None,
                };
                if changes.last().is_some_and(|c: &Change| c.rev >= rev) {
                    return None;
                }
                changes.push(Change { rev, tombstone });
            }
            if changes.is_empty() {
                return None;
            }
            entries.push((
                key,
                History {
                    changes,
                    create_revision,
                    version,
                    lease,
                },
            ));
        }
        if !b.is_empty() {
            return None;
        }
        // In key order already: the map is built in one pass.
        Some(KeyIndex {
            keys: entries.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    #[test]
    fn the_index_reads_back_what_it_wrote_and_refuses_anything_else() {
        let mut ix = KeyIndex::default();
        for i in 0..50i64 {
            let key = format!("k{}", i % 17).into_bytes();
            if i % 5 == 4 {
                ix.record_delete(&key, Revision::new(i + 2, 0));
            } else {
                ix.record_put(&key, Revision::new(i + 2, i % 3), i % 4);
            }
        }
        ix.compact(20);
        let mut b = Vec::new();
        ix.encode(&mut b);
        assert_eq!(KeyIndex::decode(&b).as_ref(), Some(&ix));
        let mut attached = ix.attached();
        attached.sort();
        assert!(!attached.is_empty());
        for (k, lease) in &attached {
            assert_eq!(ix.latest(k).map(|l| l.lease), Some(*lease));
        }
        // Cut short, or with a byte more: refused.
        assert_eq!(KeyIndex::decode(&b[..b.len() - 1]), None);
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(KeyIndex::decode(&longer), None);
        let empty = KeyIndex::default();
        let mut e = Vec::new();
        empty.encode(&mut e);
        assert_eq!(KeyIndex::decode(&e), Some(empty));
    }

    #[test]
    fn visibility_follows_history() {
        let mut ix = KeyIndex::default();
        ix.record_put(b"a", r(2), 0);
        ix.record_delete(b"a", r(4));
        ix.record_put(b"a", r(6), 0);
        assert_eq!(ix.get(b"a", 1), None);
        assert_eq!(ix.get(b"a", 3), Some(r(2)));
        assert_eq!(ix.get(b"a", 5), None);
        assert_eq!(ix.get(b"a", 9), Some(r(6)));
    }

    #[test]
    fn compaction_keeps_newest_live_change() {
        let mut ix = KeyIndex::default();
        ix.record_put(b"a", r(2), 0);
        ix.record_put(b"a", r(3), 0);
        ix.record_put(b"b", r(4), 0);
        ix.record_delete(b"b", r(5));
        let dropped = ix.compact(5);
        assert_eq!(dropped.len(), 3);
        assert_eq!(ix.get(b"a", 5), Some(r(3)));
        assert_eq!(ix.get(b"b", 5), None);
        assert_eq!(ix.len(), 1);
    }

    #[test]
    fn ranges_follow_etcd_conventions() {
        let mut ix = KeyIndex::default();
        for (i, k) in [b"a", b"b", b"c"].iter().enumerate() {
            ix.record_put(*k, r(i as i64 + 2), 0);
        }
        assert_eq!(ix.range(&KeyRange::new(b"b", b""), 9).len(), 1);
        assert_eq!(ix.range(&KeyRange::new(b"b", b"\0"), 9).len(), 2);
        assert_eq!(ix.range(&KeyRange::new(b"a", b"c"), 9).len(), 2);
        assert_eq!(ix.range(&KeyRange::new(b"c", b"a"), 9).len(), 0);
        assert_eq!(ix.count(&KeyRange::new(b"\0", b"\0"), 3), 2);
    }

    #[test]
    fn puts_count_versions_within_a_generation() {
        let mut ix = KeyIndex::default();
        assert_eq!(ix.record_put(b"a", r(2), 7).version, 1);
        let l = ix.record_put(b"a", r(3), 0);
        assert_eq!((l.create_revision, l.version, l.lease), (2, 2, 0));
        ix.record_delete(b"a", r(4));
        assert_eq!(ix.latest(b"a"), None);
        // A put after a deletion starts a new generation.
        let l = ix.record_put(b"a", r(5), 9);
        assert_eq!((l.create_revision, l.version, l.lease), (5, 1, 9));
        assert_eq!(ix.latest(b"a"), Some(l));
        // Compaction drops history, not what the newest put made the key.
        ix.record_put(b"a", r(6), 9);
        ix.compact(6);
        let l = ix.latest(b"a").expect("live");
        assert_eq!((l.rev, l.create_revision, l.version), (r(6), 5, 2));
    }
}
