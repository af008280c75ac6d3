//! rkt-runtime: corelite's OCI runtime. `rkt` implements the OCI runtime-spec lifecycle (create,
//! start, run, state, kill, delete, list, exec, ps, pause/resume, events, update, spec) on a
//! bundle, with a runc-compatible command line, so that engines that drive runc (podman) drive it.
//!
//! What it refuses with a clear error rather than half-applying: time namespaces, hugepage,
//! network and rdma limits, seccomp notify.
//!
//! Layout: [`bundle`] loads and validates config.json; [`mounts`] parses mount options (pure);
//! [`state`] keeps each container's state directory; [`cgroup`] finds the layout and applies
//! limits; [`seccomp`] compiles filters; [`hooks`] runs the spec's hooks; [`syscall`] is the
//! seam for the calls that build a container ([`rootfs`]: mounts, devices, the switch of root;
//! [`process`]: OOM score, rlimits, credentials), so their order is tested on a recording
//! fake; [`linux`] forks, makes the namespaces and runs init up to exec; [`container`] drives
//! the lifecycle.
//! [`pod`] runs images (from the `oci-image` store) as pods: overlay root, config.json from the
//! image config, the default bridge network, and pod records for list/status/stop/rm/gc.

pub mod bundle;
pub mod cgroup;
pub mod container;
pub mod devfilter;
pub mod error;
pub mod hooks;
pub mod linux;
pub mod mounts;
pub mod pod;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod state;
pub mod syscall;
