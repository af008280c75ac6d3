//! Failpoints for fault tests: named places where the process fails on purpose when the
//! `ETCD_LITE_FAILPOINTS` environment variable (comma-separated names) lists them. Read once; a
//! member started without the variable pays one load per check.
//!
//! - `panic-on-compact`: the raft node's thread panics when it applies a compaction.
//! - `slow-defragment`: a defragmentation waits 2 s between copying the store and switching to
//!   the copy (tests show that reads and writes go on meanwhile).

use std::sync::OnceLock;

static ACTIVE: OnceLock<Vec<String>> = OnceLock::new();

/// Whether the failpoint `name` is on.
pub fn on(name: &str) -> bool {
    ACTIVE
        .get_or_init(|| {
            std::env::var("ETCD_LITE_FAILPOINTS")
                .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
                .unwrap_or_default()
        })
        .iter()
        .any(|a| a == name)
}
