//! The in-memory key index: for every key, the revisions at which it changed. Values live in
//! sled, addressed by revision; this index answers "which revision of key K is visible at R".

use std::collections::BTreeMap;
use std::ops::Bound;

use super::revision::Revision;

/// One change of one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub rev: Revision,
    pub tombstone: bool,
}

/// The key space's history. Invariant: every key's changes are in ascending revision order and a
/// key with no changes is not in the map.
#[derive(Default, Debug, Clone)]
pub struct KeyIndex {
    keys: BTreeMap<Vec<u8>, Vec<Change>>,
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
        visible(self.keys.get(key)?, at).map(|c| c.rev)
    }

    /// Live keys of `range` at `at`, in key order, with their revisions.
    pub fn range(&self, range: &KeyRange<'_>, at: i64) -> Vec<(&[u8], Revision)> {
        let Some(bounds) = range.bounds() else {
            return Vec::new();
        };
        self.keys
            .range::<[u8], _>(bounds)
            .filter_map(|(k, ch)| visible(ch, at).map(|c| (k.as_slice(), c.rev)))
            .collect()
    }

    /// Number of live keys of `range` at `at`.
    pub fn count(&self, range: &KeyRange<'_>, at: i64) -> usize {
        let Some(bounds) = range.bounds() else {
            return 0;
        };
        self.keys
            .range::<[u8], _>(bounds)
            .filter(|(_, ch)| visible(ch, at).is_some())
            .count()
    }

    /// The change of `key` just before `rev`, if any (used for a watch event's previous value).
    pub fn before(&self, key: &[u8], rev: Revision) -> Option<Change> {
        let ch = self.keys.get(key)?;
        let n = ch.partition_point(|c| c.rev < rev);
        ch.get(n.checked_sub(1)?).copied()
    }

    /// Records a change. `rev` must be newer than every change already recorded for `key`.
    pub fn record(&mut self, key: &[u8], rev: Revision, tombstone: bool) {
        // Most keys change rarely: start with room for one change, not Vec's default four.
        let ch = self
            .keys
            .entry(key.to_vec())
            .or_insert_with(|| Vec::with_capacity(1));
        assert!(
            ch.last().is_none_or(|l| l.rev < rev),
            "index changes are recorded in revision order"
        );
        ch.push(Change { rev, tombstone });
    }

    /// Forgets history older than `at` as etcd's compaction does: for every key, the newest change
    /// at or before `at` is kept unless it is a tombstone; older changes go. Returns what was
    /// dropped so that the caller can delete the stored records.
    pub fn compact(&mut self, at: i64) -> Vec<Change> {
        let mut dropped = Vec::new();
        self.keys.retain(|_, ch| {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    #[test]
    fn visibility_follows_history() {
        let mut ix = KeyIndex::default();
        ix.record(b"a", r(2), false);
        ix.record(b"a", r(4), true);
        ix.record(b"a", r(6), false);
        assert_eq!(ix.get(b"a", 1), None);
        assert_eq!(ix.get(b"a", 3), Some(r(2)));
        assert_eq!(ix.get(b"a", 5), None);
        assert_eq!(ix.get(b"a", 9), Some(r(6)));
    }

    #[test]
    fn compaction_keeps_newest_live_change() {
        let mut ix = KeyIndex::default();
        ix.record(b"a", r(2), false);
        ix.record(b"a", r(3), false);
        ix.record(b"b", r(4), false);
        ix.record(b"b", r(5), true);
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
            ix.record(*k, r(i as i64 + 2), false);
        }
        assert_eq!(ix.range(&KeyRange::new(b"b", b""), 9).len(), 1);
        assert_eq!(ix.range(&KeyRange::new(b"b", b"\0"), 9).len(), 2);
        assert_eq!(ix.range(&KeyRange::new(b"a", b"c"), 9).len(), 2);
        assert_eq!(ix.range(&KeyRange::new(b"c", b"a"), 9).len(), 0);
        assert_eq!(ix.count(&KeyRange::new(b"\0", b"\0"), 3), 2);
    }
}
