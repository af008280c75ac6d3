//! rkt-runtime: corelite's OCI runtime. `rkt` implements the OCI runtime-spec lifecycle (create,
//! start, run, state, kill, delete, list, spec) on a bundle, with a runc-compatible command line,
//! so that engines that drive runc can drive it.
//!
//! What it is not (yet): cgroup limits, seccomp filters, user namespaces, hooks, exec into a
//! running container, terminals (`--console-socket`), pause/resume. Specs asking for those are
//! refused with a clear error rather than silently half-applied.
//!
//! Layout: [`bundle`] loads and validates config.json; [`mounts`] parses mount options (pure);
//! [`state`] keeps each container's state directory; [`linux`] is the only module that makes
//! namespace, mount and process syscalls; [`container`] drives the lifecycle.

pub mod bundle;
pub mod cgroup;
pub mod container;
pub mod error;
pub mod hooks;
pub mod linux;
pub mod mounts;
pub mod seccomp;
pub mod state;
