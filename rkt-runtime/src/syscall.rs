//! The system calls that prepare a container's root filesystem and process, behind one trait
//! (youki's shape): [`Linux`] makes them; [`Recorder`] (tests only) writes each down and can fail
//! any of them, so that the order init takes them in, the part that breaks, is unit-tested
//! without root. Callers add the context to errors; this layer only reports errno.

use std::path::Path;

use caps::{CapSet, Capability, CapsHashSet};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::resource::Resource;
use nix::sys::stat::{Mode, SFlag};

/// What is at a path (symlinks not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Dir,
    /// Anything else: a file, a device, a fifo, a socket, a symlink.
    Other,
    Missing,
}

/// The calls init makes between fork and exec, bar the namespace and descriptor plumbing.
pub trait Syscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    /// umount2(MNT_DETACH).
    fn detach(&self, target: &Path) -> nix::Result<()>;
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()>;
    fn chroot(&self, path: &Path) -> nix::Result<()>;
    fn chdir(&self, path: &Path) -> nix::Result<()>;
    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> nix::Result<()>;
    fn chmod(&self, path: &Path, perm: Mode) -> nix::Result<()>;
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> nix::Result<()>;
    fn sethostname(&self, name: &str) -> nix::Result<()>;
    fn setrlimit(&self, res: Resource, soft: u64, hard: u64) -> nix::Result<()>;
    /// Writes a whole small file: a sysctl, oom_score_adj.
    fn write_file(&self, path: &Path, data: &str) -> std::io::Result<()>;
    fn mkdir_all(&self, path: &Path) -> std::io::Result<()>;
    /// Creates an empty file unless something is there already (a bind mount target).
    fn touch(&self, path: &Path) -> std::io::Result<()>;
    fn symlink(&self, target: &Path, link: &Path) -> std::io::Result<()>;
    fn kind(&self, path: &Path) -> FileKind;
    fn drop_bounding(&self, cap: Capability) -> Result<(), String>;
    fn has_bounding(&self, cap: Capability) -> bool;
    fn set_caps(&self, set: CapSet, caps: &CapsHashSet) -> Result<(), String>;
    fn set_keepcaps(&self) -> nix::Result<()>;
    fn setgroups(&self, gids: &[u32]) -> nix::Result<()>;
    fn setgid(&self, gid: u32) -> nix::Result<()>;
    fn setuid(&self, uid: u32) -> nix::Result<()>;
    fn set_no_new_privs(&self) -> nix::Result<()>;
}

/// The real calls.
pub struct Linux;

impl Syscall for Linux {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }
    fn detach(&self, target: &Path) -> nix::Result<()> {
        nix::mount::umount2(target, MntFlags::MNT_DETACH)
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
        nix::unistd::pivot_root(new_root, put_old)
    }
    fn chroot(&self, path: &Path) -> nix::Result<()> {
        nix::unistd::chroot(path)
    }
    fn chdir(&self, path: &Path) -> nix::Result<()> {
        nix::unistd::chdir(path)
    }
    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> nix::Result<()> {
        nix::sys::stat::mknod(path, kind, perm, dev)
    }
    fn chmod(&self, path: &Path, perm: Mode) -> nix::Result<()> {
        nix::sys::stat::fchmodat(
            None,
            path,
            perm,
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
    }
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> nix::Result<()> {
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
    }
    fn sethostname(&self, name: &str) -> nix::Result<()> {
        nix::unistd::sethostname(name)
    }
    fn setrlimit(&self, res: Resource, soft: u64, hard: u64) -> nix::Result<()> {
        nix::sys::resource::setrlimit(res, soft, hard)
    }
    fn write_file(&self, path: &Path, data: &str) -> std::io::Result<()> {
        std::fs::write(path, data)
    }
    fn mkdir_all(&self, path: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn touch(&self, path: &Path) -> std::io::Result<()> {
        if path.symlink_metadata().is_ok() {
            return Ok(());
        }
        std::fs::File::create(path).map(drop)
    }
    fn symlink(&self, target: &Path, link: &Path) -> std::io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }
    fn kind(&self, path: &Path) -> FileKind {
        match path.symlink_metadata() {
            Ok(m) if m.is_dir() => FileKind::Dir,
            Ok(_) => FileKind::Other,
            Err(_) => FileKind::Missing,
        }
    }
    fn drop_bounding(&self, cap: Capability) -> Result<(), String> {
        caps::drop(None, CapSet::Bounding, cap).map_err(|e| e.to_string())
    }
    fn has_bounding(&self, cap: Capability) -> bool {
        caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false)
    }
    fn set_caps(&self, set: CapSet, caps: &CapsHashSet) -> Result<(), String> {
        caps::set(None, set, caps).map_err(|e| e.to_string())
    }
    fn set_keepcaps(&self) -> nix::Result<()> {
        nix::sys::prctl::set_keepcaps(true)
    }
    fn setgroups(&self, gids: &[u32]) -> nix::Result<()> {
        let gids: Vec<nix::unistd::Gid> = gids
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&gids)
    }
    fn setgid(&self, gid: u32) -> nix::Result<()> {
        nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))
    }
    fn setuid(&self, uid: u32) -> nix::Result<()> {
        nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))
    }
    fn set_no_new_privs(&self) -> nix::Result<()> {
        nix::sys::prctl::set_no_new_privs()
    }
}

#[cfg(test)]
pub use fake::Recorder;

#[cfg(test)]
mod fake {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::path::PathBuf;

    /// Writes every call down as one line; fails the calls whose line starts with a prefix
    /// given to [`Recorder::fail`]; answers `kind` from the paths it was told about.
    #[derive(Default)]
    pub struct Recorder {
        pub calls: RefCell<Vec<String>>,
        fail: RefCell<Vec<(String, nix::errno::Errno)>>,
        kinds: RefCell<HashMap<PathBuf, FileKind>>,
    }

    impl Recorder {
        pub fn fail(&self, prefix: &str, errno: nix::errno::Errno) {
            self.fail.borrow_mut().push((prefix.to_string(), errno));
        }
        pub fn has(&self, path: &str, kind: FileKind) {
            self.kinds.borrow_mut().insert(PathBuf::from(path), kind);
        }
        pub fn lines(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }
        /// The position of the first call that starts with `prefix`.
        pub fn at(&self, prefix: &str) -> usize {
            let calls = self.calls.borrow();
            calls
                .iter()
                .position(|c| c.starts_with(prefix))
                .unwrap_or_else(|| panic!("no call {prefix:?} in {calls:#?}"))
        }
        fn call(&self, line: String) -> nix::Result<()> {
            let failed = self
                .fail
                .borrow()
                .iter()
                .find(|(p, _)| line.starts_with(p.as_str()))
                .map(|(_, e)| *e);
            self.calls.borrow_mut().push(line);
            failed.map_or(Ok(()), Err)
        }
        fn io(&self, line: String) -> std::io::Result<()> {
            self.call(line).map_err(std::io::Error::from)
        }
    }

    fn flags(f: MsFlags) -> String {
        f.iter_names().map(|(n, _)| n).collect::<Vec<_>>().join("|")
    }

    impl Syscall for Recorder {
        fn mount(
            &self,
            source: Option<&Path>,
            target: &Path,
            fstype: Option<&str>,
            flags_: MsFlags,
            data: Option<&str>,
        ) -> nix::Result<()> {
            self.call(format!(
                "mount {} {} {} {} {}",
                source.map_or("-".into(), |s| s.display().to_string()),
                target.display(),
                fstype.unwrap_or("-"),
                flags(flags_),
                data.unwrap_or("-")
            ))
        }
        fn detach(&self, target: &Path) -> nix::Result<()> {
            self.call(format!("detach {}", target.display()))
        }
        fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
            self.call(format!(
                "pivot_root {} {}",
                new_root.display(),
                put_old.display()
            ))
        }
        fn chroot(&self, path: &Path) -> nix::Result<()> {
            self.call(format!("chroot {}", path.display()))
        }
        fn chdir(&self, path: &Path) -> nix::Result<()> {
            self.call(format!("chdir {}", path.display()))
        }
        fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> nix::Result<()> {
            let kind = match kind {
                k if k == SFlag::S_IFCHR => "char",
                k if k == SFlag::S_IFBLK => "block",
                k if k == SFlag::S_IFIFO => "fifo",
                _ => "other",
            };
            self.call(format!(
                "mknod {} {kind} {:o} {}:{}",
                path.display(),
                perm.bits(),
                nix::sys::stat::major(dev),
                nix::sys::stat::minor(dev)
            ))
        }
        fn chmod(&self, path: &Path, perm: Mode) -> nix::Result<()> {
            self.call(format!("chmod {} {:o}", path.display(), perm.bits()))
        }
        fn chown(&self, path: &Path, uid: u32, gid: u32) -> nix::Result<()> {
            self.call(format!("chown {} {uid}:{gid}", path.display()))
        }
        fn sethostname(&self, name: &str) -> nix::Result<()> {
            self.call(format!("sethostname {name}"))
        }
        fn setrlimit(&self, res: Resource, soft: u64, hard: u64) -> nix::Result<()> {
            self.call(format!("setrlimit {res:?} {soft} {hard}"))
        }
        fn write_file(&self, path: &Path, data: &str) -> std::io::Result<()> {
            self.io(format!("write {} {data}", path.display()))
        }
        fn mkdir_all(&self, path: &Path) -> std::io::Result<()> {
            self.io(format!("mkdir {}", path.display()))
        }
        fn touch(&self, path: &Path) -> std::io::Result<()> {
            self.io(format!("touch {}", path.display()))
        }
        fn symlink(&self, target: &Path, link: &Path) -> std::io::Result<()> {
            self.io(format!("symlink {} {}", link.display(), target.display()))
        }
        fn kind(&self, path: &Path) -> FileKind {
            self.kinds
                .borrow()
                .get(path)
                .copied()
                .unwrap_or(FileKind::Missing)
        }
        fn drop_bounding(&self, cap: Capability) -> Result<(), String> {
            self.call(format!("drop_bounding {cap}"))
                .map_err(|e| e.to_string())
        }
        fn has_bounding(&self, _cap: Capability) -> bool {
            true
        }
        fn set_caps(&self, set: CapSet, caps: &CapsHashSet) -> Result<(), String> {
            let mut names: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
            names.sort();
            self.call(format!("set_caps {set:?} {}", names.join(",")))
                .map_err(|e| e.to_string())
        }
        fn set_keepcaps(&self) -> nix::Result<()> {
            self.call("set_keepcaps".into())
        }
        fn setgroups(&self, gids: &[u32]) -> nix::Result<()> {
            self.call(format!("setgroups {gids:?}"))
        }
        fn setgid(&self, gid: u32) -> nix::Result<()> {
            self.call(format!("setgid {gid}"))
        }
        fn setuid(&self, uid: u32) -> nix::Result<()> {
            self.call(format!("setuid {uid}"))
        }
        fn set_no_new_privs(&self) -> nix::Result<()> {
            self.call("set_no_new_privs".into())
        }
    }
}
