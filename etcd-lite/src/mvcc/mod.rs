//! The MVCC key space as etcd v3 defines it: a global revision bumped once per write transaction,
//! per-key create/mod revision and version, tombstones, history kept until compaction.
//!
//! Invariant: this module knows nothing of leases' lifetimes, watchers or the network; it stores
//! a lease id on a key and a lease record when told to.

pub mod answer;
pub mod image;
pub mod index;
pub mod revision;
pub mod store;
pub mod txn;

pub use index::KeyRange;
pub use revision::Revision;
pub use store::{Committed, KvRead, LeaseMove, MvccStore, ReadView, WriteTxn};
