//! Mount options as the OCI spec writes them ("ro", "nosuid", "rbind", "rprivate", "mode=755"),
//! turned into mount flags, propagation changes and filesystem data. Pure, so it is unit-tested.

use nix::mount::MsFlags;

use crate::error::{Result, RuntimeError};

/// What one mount entry asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct MountPlan {
    /// Flags for the mount(2) call itself.
    pub flags: MsFlags,
    /// Propagation to apply afterwards (MS_PRIVATE, MS_SHARED, ... possibly with MS_REC).
    pub propagation: MsFlags,
    /// Filesystem-specific options joined with commas.
    pub data: String,
    /// A bind mount that must be remounted to apply flags like ro.
    pub bind: bool,
}

/// Parses a mount's options. Unknown key=value options are passed to the filesystem; unknown
/// bare words are refused, since silently ignoring e.g. a misspelt "ro" would be unsafe.
pub fn plan(destination: &str, options: &[String]) -> Result<MountPlan> {
    let mut p = MountPlan {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: String::new(),
        bind: false,
    };
    let mut data = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "defaults" | "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "bind" => {
                p.bind = true;
                (MsFlags::MS_BIND, MsFlags::empty())
            }
            "rbind" => {
                p.bind = true;
                (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())
            }
            "private" => {
                p.propagation = MsFlags::MS_PRIVATE;
                continue;
            }
            "rprivate" => {
                p.propagation = MsFlags::MS_PRIVATE | MsFlags::MS_REC;
                continue;
            }
            "shared" => {
                p.propagation = MsFlags::MS_SHARED;
                continue;
            }
            "rshared" => {
                p.propagation = MsFlags::MS_SHARED | MsFlags::MS_REC;
                continue;
            }
            "slave" => {
                p.propagation = MsFlags::MS_SLAVE;
                continue;
            }
            "rslave" => {
                p.propagation = MsFlags::MS_SLAVE | MsFlags::MS_REC;
                continue;
            }
            "unbindable" => {
                p.propagation = MsFlags::MS_UNBINDABLE;
                continue;
            }
            "runbindable" => {
                p.propagation = MsFlags::MS_UNBINDABLE | MsFlags::MS_REC;
                continue;
            }
            other if other.contains('=') => {
                data.push(other.to_string());
                continue;
            }
            // Filesystem words without a value that the kernel understands per filesystem.
            "newinstance" | "nouser_xattr" | "user_xattr" => {
                data.push(o.clone());
                continue;
            }
            _ => {
                return Err(RuntimeError::BadMountOption {
                    destination: destination.to_string(),
                    option: o.clone(),
                })
            }
        };
        p.flags.insert(set);
        p.flags.remove(clear);
    }
    p.data = data.join(",");
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn flags_data_and_propagation() {
        let p = plan(
            "/dev",
            &s(&["nosuid", "strictatime", "mode=755", "size=65536k"]),
        )
        .expect("plan");
        assert_eq!(p.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(p.data, "mode=755,size=65536k");
        let p = plan("/x", &s(&["rbind", "ro", "rprivate"])).expect("plan");
        assert!(
            p.bind
                && p.flags
                    .contains(MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC)
        );
        assert_eq!(p.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        let p = plan("/x", &s(&["ro", "rw"])).expect("plan");
        assert!(!p.flags.contains(MsFlags::MS_RDONLY), "later options win");
    }

    #[test]
    fn unknown_words_are_refused() {
        let e = plan("/x", &s(&["nosuid", "readonly"])).expect_err("bad option");
        assert_eq!(e.to_string(), "invalid mount option \"readonly\" for /x");
    }
}
