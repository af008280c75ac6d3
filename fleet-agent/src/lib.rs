//! fleet for corelite: a cluster of machines running systemd units, coordinated through an etcd
//! v3 store (etcd-lite or a real etcd).
//!
//! - [`unit`]: unit files, names, templates and `[X-Fleet]` requirements.
//! - [`model`]: the API's JSON shapes and the store's keys.
//! - [`scheduler`] and [`reconcile`]: the engine's and the agent's decisions, pure functions.
//! - [`mirror`]: a watched local copy of fleet's keys.
//! - [`agent`], [`engine`]: the loops of `fleetd` that act on those decisions.
//! - [`systemd`]: systemd over D-Bus (zbus), or simulated.
//! - [`api`]: fleet's HTTP API v1; [`client`]: the HTTP client `fleetctl` uses; [`tls`]: the
//!   TCP API's TLS with client certificates.

pub mod agent;
pub mod api;
pub mod client;
pub mod engine;
pub mod metrics;
pub mod mirror;
pub mod model;
pub mod reconcile;
pub mod scheduler;
pub mod systemd;
pub mod tls;
pub mod unit;
