//! etcd-lite: an etcd-compatible key-value store in one binary.
//!
//! It serves etcd's v3 gRPC API (KV, Watch, Lease, Cluster, Maintenance, Auth), etcd's v3 JSON gateway
//! and the v2 keys API on one port, over a single MVCC store kept in sled. It is what corelite
//! nodes share their state through, and the default store of fleetd; anything that speaks to etcd
//! speaks to it. Members replicate every write with raft ([`consensus`]); one member alone is a
//! cluster of one.
//!
//! Layers, from the wire down: [`grpc`] / [`http`] / [`http_v2`] (transports) → [`server`]
//! (validation, headers, ReadIndex, membership, leases' expiry) → [`consensus`] (the raft node,
//! its sled log and the peer transport) → [`machine`] (the state machine) → [`applier`] (how
//! one command applies) → [`mvcc`] (the revisioned store) and [`lease`] (lease bookkeeping).
//! [`watch`] reads the committed revisions the machine publishes and the store's history.
//! [`durable`] makes sled's flushes survive power loss (both the log and the store use it).
//! [`auth`] holds users, roles and permissions (replicated through the log like any write) and
//! [`auth_api`] answers etcd's Auth API over them; every transport asks [`server`] who a
//! request comes from and whether it may do what it asks.

pub mod applier;
pub mod auth;
pub mod auth_api;
pub mod authority;
pub mod backup;
pub mod concurrency;
pub mod config;
pub mod consensus;
pub mod deadline;
pub mod discovery;
pub mod durable;
pub mod error;
pub mod failpoint;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod http_v2;
pub mod lease;
pub mod machine;
pub mod metrics;
pub mod mvcc;
pub mod serve;
pub mod server;
pub mod srv;
pub mod tls;
pub mod v2_admin;
pub mod v2store;
pub mod wal;
pub mod watch;
