//! The etcd v3 wire API: messages and gRPC services of the `etcdserverpb` and `mvccpb` packages,
//! generated from corelite's own `.proto` files (etcd's names and field numbers, so real etcd
//! clients interoperate), plus serde impls that follow etcd's JSON gateway (snake_case names,
//! int64 as strings, bytes as base64).
//!
//! This crate holds no hand-written logic: servers live in `etcd-lite`, clients elsewhere.

#![allow(clippy::all, clippy::unwrap_used, missing_docs)]

/// `mvccpb`: key-values and watch events.
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// `authpb`: users' options and roles' permissions.
pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// `leasepb`: a lease as etcd's backend (and so its snapshots) stores it.
pub mod leasepb {
    include!(concat!(env!("OUT_DIR"), "/leasepb.rs"));
}

/// `etcdserverpb`: requests, responses and the KV, Watch, Lease, Cluster, Maintenance and Auth services.
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// `v3lockpb`: the server-side Lock service.
pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// `v3electionpb`: the server-side Election service.
pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// `raftpeer`: corelite's member-to-member transport for raft messages (not part of etcd's API).
pub mod raftpeer {
    include!(concat!(env!("OUT_DIR"), "/raftpeer.rs"));
}
