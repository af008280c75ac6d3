//! Consensus: the raft log in sled ([`storage`]) and the node that drives tikv's raft-rs over
//! it ([`node`]).

pub mod node;
pub mod storage;
pub mod transport;
