//! A linearizability checker for histories of a key-value store (Wing & Gong's search with
//! memoization, as Knossos and Porcupine do it). Linearizability is local, so each key's history
//! is checked on its own against a register model: put, get, delete and compare-and-set.
//!
//! Operations whose outcome is unknown (a timeout, a broken connection) may have taken effect at
//! any point after they were invoked, or never; the search treats them so.

use std::collections::{BTreeMap, HashSet};

/// An operation on one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Write a value.
    Put(u64),
    /// Read the value.
    Get,
    /// Write `new` if the value is `expect` (None: the key is absent).
    Cas {
        /// The value compared with.
        expect: Option<u64>,
        /// The value written on success.
        new: u64,
    },
    /// Remove the key.
    Delete,
}

/// What an operation returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    /// A write was acknowledged.
    Ok,
    /// A read returned this (None: absent).
    Value(Option<u64>),
    /// A compare-and-set succeeded or not.
    Cas(bool),
    /// No answer: it may or may not have happened.
    Unknown,
}

/// One operation of the history, with its invocation and response times (any monotonic unit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The key.
    pub key: u64,
    /// The operation.
    pub op: Op,
    /// Its result.
    pub ret: Ret,
    /// When it was invoked.
    pub call: u64,
    /// When it returned (ignored for [`Ret::Unknown`]).
    pub done: u64,
}

/// The register model: the state after applying `op` returning `ret` to `state`, if that is
/// possible at all.
fn step(state: Option<u64>, op: Op, ret: Ret) -> Option<Option<u64>> {
    match (op, ret) {
        (Op::Put(v), Ret::Ok | Ret::Unknown) => Some(Some(v)),
        (Op::Delete, Ret::Ok | Ret::Unknown) => Some(None),
        (Op::Get, Ret::Value(v)) => (v == state).then_some(state),
        (Op::Get, Ret::Unknown) => Some(state),
        (Op::Cas { expect, new }, Ret::Cas(true)) => (state == expect).then_some(Some(new)),
        (Op::Cas { expect, .. }, Ret::Cas(false)) => (state != expect).then_some(state),
        (Op::Cas { expect, new }, Ret::Unknown) => {
            Some(if state == expect { Some(new) } else { state })
        }
        _ => None,
    }
}

/// How many search states one key's check may visit before it gives up (an error, never a pass).
pub const MAX_STATES: usize = 5_000_000;

/// Checks a whole history (all keys, every key starting absent). On failure, says which key's
/// history has no linearization and shows it; a search too large to finish is an error too.
pub fn check(history: &[Event]) -> Result<(), String> {
    let mut by_key: BTreeMap<u64, Vec<&Event>> = BTreeMap::new();
    for e in history {
        // A read without an answer has no effect and constrains nothing.
        if e.op == Op::Get && e.ret == Ret::Unknown {
            continue;
        }
        by_key.entry(e.key).or_default().push(e);
    }
    for (key, events) in by_key {
        let found = linearizable(&events).ok_or_else(|| {
            format!(
                "key {key}: search gave up after {MAX_STATES} states ({} operations)",
                events.len()
            )
        })?;
        if !found {
            let mut lines: Vec<String> = events
                .iter()
                .map(|e| {
                    let done = if e.ret == Ret::Unknown {
                        "?".into()
                    } else {
                        e.done.to_string()
                    };
                    format!("  [{} .. {}] {:?} -> {:?}", e.call, done, e.op, e.ret)
                })
                .collect();
            lines.sort();
            return Err(format!(
                "key {key}: no linearization of\n{}",
                lines.join("\n")
            ));
        }
    }
    Ok(())
}

/// Whether a linearization exists; None when the search grew past [`MAX_STATES`].
fn linearizable(events: &[&Event]) -> Option<bool> {
    let n = events.len();
    let words = n.div_ceil(64);
    let mut seen: HashSet<(Option<u64>, Vec<u64>)> = HashSet::new();
    let definite: Vec<usize> = (0..n).filter(|i| events[*i].ret != Ret::Unknown).collect();
    // Depth-first search over orders, with an explicit stack of (state, done set).
    let mut stack: Vec<(Option<u64>, Vec<u64>)> = vec![(None, vec![0; words])];
    while let Some((state, done)) = stack.pop() {
        let is_done = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        if definite.iter().all(|i| is_done(*i)) {
            return Some(true);
        }
        if !seen.insert((state, done.clone())) {
            continue;
        }
        if seen.len() > MAX_STATES {
            return None;
        }
        // Only operations invoked before the earliest pending response can come next.
        let horizon = definite
            .iter()
            .filter(|i| !is_done(**i))
            .map(|i| events[*i].done)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..n {
            if is_done(i) || events[i].call > horizon {
                continue;
            }
            if let Some(next) = step(state, events[i].op, events[i].ret) {
                let mut d = done.clone();
                d[i / 64] |= 1 << (i % 64);
                stack.push((next, d));
            }
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(op: Op, ret: Ret, call: u64, done: u64) -> Event {
        Event {
            key: 1,
            op,
            ret,
            call,
            done,
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            ev(Op::Put(1), Ret::Ok, 0, 1),
            ev(Op::Get, Ret::Value(Some(1)), 2, 3),
            ev(
                Op::Cas {
                    expect: Some(1),
                    new: 2,
                },
                Ret::Cas(true),
                4,
                5,
            ),
            ev(
                Op::Cas {
                    expect: Some(1),
                    new: 3,
                },
                Ret::Cas(false),
                6,
                7,
            ),
            ev(Op::Delete, Ret::Ok, 8, 9),
            ev(Op::Get, Ret::Value(None), 10, 11),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_caught() {
        let h = [
            ev(Op::Put(1), Ret::Ok, 0, 1),
            ev(Op::Put(2), Ret::Ok, 2, 3),
            ev(Op::Get, Ret::Value(Some(1)), 4, 5),
        ];
        let err = check(&h).unwrap_err();
        assert!(err.contains("key 1"), "{err}");
    }

    #[test]
    fn concurrent_operations_may_order_either_way() {
        let h = [
            ev(Op::Put(1), Ret::Ok, 0, 10),
            ev(Op::Put(2), Ret::Ok, 1, 9),
            ev(Op::Get, Ret::Value(Some(1)), 11, 12),
        ];
        assert!(check(&h).is_ok());
        // Reads can't go back once a later read saw the newer value.
        let h = [
            ev(Op::Put(1), Ret::Ok, 0, 1),
            ev(Op::Put(2), Ret::Ok, 2, 10),
            ev(Op::Get, Ret::Value(Some(2)), 3, 4),
            ev(Op::Get, Ret::Value(Some(1)), 5, 6),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn unknown_writes_may_or_may_not_have_happened() {
        let took = [
            ev(Op::Put(1), Ret::Unknown, 0, 0),
            ev(Op::Get, Ret::Value(Some(1)), 5, 6),
        ];
        assert!(check(&took).is_ok());
        let never = [
            ev(Op::Put(1), Ret::Unknown, 0, 0),
            ev(Op::Get, Ret::Value(None), 5, 6),
        ];
        assert!(check(&never).is_ok());
        // But not before it was invoked.
        let early = [
            ev(Op::Get, Ret::Value(Some(1)), 0, 1),
            ev(Op::Put(1), Ret::Unknown, 2, 0),
        ];
        assert!(check(&early).is_err());
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let h = [
            ev(Op::Put(1), Ret::Ok, 0, 1),
            ev(
                Op::Cas {
                    expect: None,
                    new: 5,
                },
                Ret::Cas(true),
                2,
                3,
            ),
        ];
        assert!(check(&h).is_err());
    }
}
