//! The container's root filesystem, made in its mount namespace through [`Syscall`]: the
//! propagation of the tree, the root bind mount, the spec's mounts, the device nodes, the
//! switch of root (pivot_root, or a move and chroot), and what comes after it (the root's
//! propagation, sysctls, masked and read-only paths, a read-only root, the hostname).
//!
//! Every step is a call on the trait, so `tests` check the order on a recording fake.

use std::path::{Component, Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::{LinuxDeviceType, Mount, Spec};

use crate::error::{failed, Result, RuntimeError};
use crate::mounts;
use crate::syscall::{FileKind, Syscall};

/// Devices every container gets (the spec's defaults), bound from the host.
pub const DEFAULT_DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// What the root filesystem is made from.
pub struct RootPlan<'a> {
    pub rootfs: &'a Path,
    pub spec: &'a Spec,
    /// The container has its own network namespace (sysfs may then be mounted afresh).
    pub has_netns: bool,
    /// The container has its own user namespace: device nodes cannot be made, only bound.
    pub in_userns: bool,
    /// cgroup v1 hierarchies to show under a "cgroup" mount: (name, host path).
    pub cgroup_views: Vec<(String, PathBuf)>,
    /// chroot instead of pivot_root.
    pub no_pivot: bool,
}

/// `linux.rootfsPropagation` as mount flags (None: not set).
pub fn root_propagation(spec: &Spec) -> Result<Option<MsFlags>> {
    let asked = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().clone());
    let Some(asked) = asked.filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let (rec, name) = match asked.strip_prefix('r') {
        Some(rest) => (MsFlags::MS_REC, rest),
        None => (MsFlags::empty(), asked.as_str()),
    };
    let flag = match name {
        "shared" => MsFlags::MS_SHARED,
        "slave" => MsFlags::MS_SLAVE,
        "private" => MsFlags::MS_PRIVATE,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        _ => {
            return Err(RuntimeError::BadConfig {
                path: PathBuf::from("config.json"),
                reason: format!(
                    "linux.rootfsPropagation {asked:?}: use shared, slave, private or \
                     unbindable (or their r- forms)"
                ),
            })
        }
    };
    Ok(Some(flag | rec))
}

/// Makes the root filesystem in a new mount namespace, up to and including the switch of
/// root. `before_switch` runs once the mounts and devices exist and before the switch (the
/// runtime's hooks, createContainer hooks).
///
/// pivot_root refuses a root whose mount, or the mount above it, is shared; so the whole tree
/// is made a slave (shared or slave asked: the host's mounts still reach the container) or
/// private first, and the asked propagation is given to the new root after the switch.
pub fn prepare(
    sys: &dyn Syscall,
    plan: &RootPlan,
    before_switch: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    let asked = root_propagation(plan.spec)?;
    let first = match asked {
        Some(f) if f.intersects(MsFlags::MS_SHARED | MsFlags::MS_SLAVE) => MsFlags::MS_SLAVE,
        _ => MsFlags::MS_PRIVATE,
    };
    let root = Path::new("/");
    sys.mount(None, root, None, MsFlags::MS_REC | first, None)
        .map_err(failed("making the mount tree private to the container"))?;
    let rootfs = plan.rootfs;
    sys.mount(
        Some(rootfs),
        rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(failed("binding the root filesystem"))?;
    for m in plan.spec.mounts().iter().flatten() {
        mount_one(sys, plan, m)?;
    }
    make_devices(sys, plan)?;
    before_switch()?;
    switch_root(sys, rootfs, plan.no_pivot)?;
    if let Some(f) = asked {
        sys.mount(None, root, None, f, None).map_err(failed(
            "setting the root's propagation (linux.rootfsPropagation)",
        ))?;
    }
    Ok(())
}

/// Without a mount namespace (the runtime's is shared, as the spec allows): no mount is made,
/// since it would be the host's; the process is only confined to the root filesystem by
/// chroot. Masked and read-only paths need mounts: refused, as runc does.
pub fn enter_without_mount_namespace(sys: &dyn Syscall, plan: &RootPlan) -> Result<()> {
    let linux = plan.spec.linux().clone().unwrap_or_default();
    let restricts = linux.masked_paths().as_ref().is_some_and(|v| !v.is_empty())
        || linux
            .readonly_paths()
            .as_ref()
            .is_some_and(|v| !v.is_empty())
        || linux.sysctl().as_ref().is_some_and(|v| !v.is_empty())
        || plan
            .spec
            .root()
            .as_ref()
            .is_some_and(|r| r.readonly().unwrap_or(false));
    if restricts {
        return Err(RuntimeError::BadConfig {
            path: PathBuf::from("config.json"),
            reason: "linux.maskedPaths, linux.readonlyPaths, linux.sysctl and root.readonly \
                     need a mount namespace (add {\"type\": \"mount\"} to linux.namespaces)"
                .into(),
        });
    }
    if plan.spec.mounts().as_ref().is_some_and(|m| !m.is_empty()) {
        eprintln!(
            "rkt: warning: no mount namespace: the config's mounts are not made (they would \
             be the host's)"
        );
    }
    sys.chdir(plan.rootfs)
        .map_err(failed("entering the root filesystem"))?;
    sys.chroot(Path::new(".")).map_err(failed("chroot"))?;
    sys.chdir(Path::new("/")).map_err(failed("chdir /"))
}

/// Joins `dest` (absolute inside the container) under `root`, refusing to climb out of it.
pub fn in_root(root: &Path, dest: &Path) -> Result<PathBuf> {
    let mut p = root.to_path_buf();
    for c in dest.components() {
        match c {
            Component::Normal(n) => p.push(n),
            Component::ParentDir => {
                return Err(RuntimeError::Unsupported(format!(
                    "mount destination with '..': {}",
                    dest.display()
                )))
            }
            _ => {}
        }
    }
    Ok(p)
}

fn mkdir(sys: &dyn Syscall, p: &Path) -> Result<()> {
    sys.mkdir_all(p).map_err(|e| RuntimeError::io(p, e))
}

fn mount_one(sys: &dyn Syscall, plan: &RootPlan, m: &Mount) -> Result<()> {
    let dest = in_root(plan.rootfs, m.destination())?;
    let options = m.options().clone().unwrap_or_default();
    let dest_s = m.destination().display().to_string();
    let mp = mounts::plan(&dest_s, &options)?;
    let typ = m.typ().clone().unwrap_or_default();
    let source = m.source().clone();
    if mp.bind {
        let src = source.ok_or_else(|| RuntimeError::BadConfig {
            path: dest.clone(),
            reason: "bind mount without source".into(),
        })?;
        if sys.kind(&src) == FileKind::Dir {
            mkdir(sys, &dest)?;
        } else {
            if let Some(parent) = dest.parent() {
                mkdir(sys, parent)?;
            }
            sys.touch(&dest).map_err(|e| RuntimeError::io(&dest, e))?;
        }
        let bind_flags = mp.flags & (MsFlags::MS_BIND | MsFlags::MS_REC);
        sys.mount(Some(&src), &dest, None, bind_flags, None)
            .map_err(failed(format!(
                "bind mounting {} on {dest_s}",
                src.display()
            )))?;
        // Bind mounts take their other flags only through a remount.
        let rest = mp.flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
        if !rest.is_empty() {
            sys.mount(
                None,
                &dest,
                None,
                rest | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                None,
            )
            .map_err(failed(format!("remounting {dest_s}")))?;
        }
    } else {
        mkdir(sys, &dest)?;
        let data = (!mp.data.is_empty()).then_some(mp.data.as_str());
        let res = match typ.as_str() {
            "cgroup" if !plan.cgroup_views.is_empty() => {
                return mount_cgroup_v1(sys, &dest, &plan.cgroup_views, mp.flags);
            }
            // The cgroup v1 "cgroup" type needs a controller; give the container the unified
            // hierarchy, read-only as asked.
            "cgroup" | "cgroup2" => sys.mount(
                Some(Path::new("cgroup2")),
                &dest,
                Some("cgroup2"),
                mp.flags,
                None,
            ),
            // sysfs shows the mounter's network namespace. Root may mount it from the host's
            // namespace too; where that is refused (a user namespace), the host's /sys is bound.
            "sysfs" => match sys.mount(
                Some(Path::new("sysfs")),
                &dest,
                Some("sysfs"),
                mp.flags,
                None,
            ) {
                Err(nix::errno::Errno::EPERM) if !plan.has_netns => sys.mount(
                    Some(Path::new("/sys")),
                    &dest,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                ),
                r => r,
            },
            _ => sys.mount(
                Some(source.as_deref().unwrap_or(Path::new(&typ))),
                &dest,
                Some(typ.as_str()),
                mp.flags,
                data,
            ),
        };
        match res {
            Ok(()) => {}
            Err(e) if typ == "cgroup" || typ == "cgroup2" => {
                eprintln!("rkt: warning: no cgroup filesystem at {dest_s} ({e})");
            }
            Err(e) => return Err(RuntimeError::sys(format!("mounting {typ} on {dest_s}"), e)),
        }
    }
    if !mp.propagation.is_empty() {
        sys.mount(None, &dest, None, mp.propagation, None)
            .map_err(failed(format!("setting propagation of {dest_s}")))?;
    }
    Ok(())
}

fn mount_cgroup_v1(
    sys: &dyn Syscall,
    dest: &Path,
    views: &[(String, PathBuf)],
    flags: MsFlags,
) -> Result<()> {
    let dest_s = dest.display().to_string();
    let base = flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    sys.mount(
        Some(Path::new("tmpfs")),
        dest,
        Some("tmpfs"),
        base,
        Some("mode=755"),
    )
    .map_err(failed(format!("mounting tmpfs on {dest_s}")))?;
    for (name, host) in views {
        let d = dest.join(name);
        mkdir(sys, &d)?;
        sys.mount(Some(host.as_path()), &d, None, MsFlags::MS_BIND, None)
            .map_err(failed(format!(
                "binding {} on {}",
                host.display(),
                d.display()
            )))?;
        sys.mount(
            None,
            &d,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | (flags & !MsFlags::MS_REC),
            None,
        )
        .map_err(failed(format!("remounting {}", d.display())))?;
        // "cpu,cpuacct" is also reachable as "cpu" and "cpuacct".
        if name.contains(',') {
            for part in name.split(',') {
                let l = dest.join(part);
                if sys.kind(&l) == FileKind::Missing {
                    sys.symlink(Path::new(name), &l)
                        .map_err(|e| RuntimeError::io(&l, e))?;
                }
            }
        }
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        sys.mount(
            None,
            dest,
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | base,
            None,
        )
        .map_err(failed(format!("making {dest_s} read-only")))?;
    }
    Ok(())
}

/// The default devices, bound from the host, then `linux.devices`: made with mknod (type,
/// major/minor, mode, owner), or bound from the host's node of the same path inside a user
/// namespace, where mknod is not allowed. Then the /dev symlinks.
fn make_devices(sys: &dyn Syscall, plan: &RootPlan) -> Result<()> {
    let dev = plan.rootfs.join("dev");
    mkdir(sys, &dev)?;
    let asked = plan
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default();
    for name in DEFAULT_DEVICES {
        let host = Path::new("/dev").join(name);
        if asked.iter().any(|d| d.path() == &host) {
            continue;
        }
        bind_device(sys, plan.rootfs, &host)?;
    }
    for d in &asked {
        let dest = in_root(plan.rootfs, d.path())?;
        if plan.in_userns {
            bind_device(sys, plan.rootfs, d.path())?;
            continue;
        }
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(RuntimeError::BadConfig {
                    path: d.path().clone(),
                    reason: "linux.devices: type \"a\" is for cgroup rules, not a node".into(),
                })
            }
        };
        if let Some(parent) = dest.parent() {
            mkdir(sys, parent)?;
        }
        let perm = Mode::from_bits_truncate(d.file_mode().unwrap_or(0o666));
        let num = nix::sys::stat::makedev(d.major() as u64, d.minor() as u64);
        let what = d.path().display().to_string();
        match sys.mknod(&dest, kind, perm, num) {
            Ok(()) => {}
            // Already there (the image has it): the spec's node replaces it.
            Err(nix::errno::Errno::EEXIST) => {
                let _ = std::fs::remove_file(&dest);
                sys.mknod(&dest, kind, perm, num)
                    .map_err(failed(format!("making device {what}")))?;
            }
            Err(e) => return Err(RuntimeError::sys(format!("making device {what}"), e)),
        }
        // mknod's mode is cut by the umask.
        sys.chmod(&dest, perm)
            .map_err(failed(format!("setting the mode of device {what}")))?;
        sys.chown(&dest, d.uid().unwrap_or(0), d.gid().unwrap_or(0))
            .map_err(failed(format!("setting the owner of device {what}")))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let l = dev.join(link);
        if sys.kind(&l) == FileKind::Missing {
            sys.symlink(Path::new(target), &l)
                .map_err(|e| RuntimeError::io(&l, e))?;
        }
    }
    Ok(())
}

fn bind_device(sys: &dyn Syscall, rootfs: &Path, host: &Path) -> Result<()> {
    if sys.kind(host) == FileKind::Missing {
        return Err(RuntimeError::BadConfig {
            path: host.to_path_buf(),
            reason: "no such device on the host to bind (a user namespace cannot make nodes)"
                .into(),
        });
    }
    let dest = in_root(rootfs, host)?;
    if let Some(parent) = dest.parent() {
        mkdir(sys, parent)?;
    }
    sys.touch(&dest).map_err(|e| RuntimeError::io(&dest, e))?;
    sys.mount(Some(host), &dest, None, MsFlags::MS_BIND, None)
        .map_err(failed(format!("binding device {}", host.display())))
}

fn switch_root(sys: &dyn Syscall, rootfs: &Path, no_pivot: bool) -> Result<()> {
    sys.chdir(rootfs)
        .map_err(failed("entering the root filesystem"))?;
    let here = Path::new(".");
    if no_pivot {
        sys.mount(Some(here), Path::new("/"), None, MsFlags::MS_MOVE, None)
            .map_err(failed("moving the root filesystem over /"))?;
        sys.chroot(here).map_err(failed("chroot"))?;
        return sys.chdir(Path::new("/")).map_err(failed("chdir /"));
    }
    sys.pivot_root(here, here).map_err(failed("pivot_root"))?;
    // The old root now sits under the new one at "."; detach it.
    sys.detach(here).map_err(failed("detaching the old root"))?;
    sys.chdir(Path::new("/")).map_err(failed("chdir /"))
}

/// After the switch: sysctls (before /proc/sys becomes read-only), masked and read-only
/// paths, a read-only root, the hostname (own UTS namespace only).
pub fn finish(sys: &dyn Syscall, spec: &Spec, own_uts: bool) -> Result<()> {
    let linux = spec.linux().clone().unwrap_or_default();
    for (k, v) in linux.sysctl().clone().unwrap_or_default() {
        let p = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        sys.write_file(&p, &v)
            .map_err(|e| RuntimeError::io(&p, e))?;
    }
    for p in linux.masked_paths().as_deref().unwrap_or_default() {
        let path = Path::new(p);
        let res = match sys.kind(path) {
            FileKind::Dir => sys.mount(
                Some(Path::new("tmpfs")),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
            ),
            FileKind::Other => sys.mount(
                Some(Path::new("/dev/null")),
                path,
                None,
                MsFlags::MS_BIND,
                None,
            ),
            FileKind::Missing => Ok(()),
        };
        res.map_err(failed(format!("masking {p}")))?;
    }
    for p in linux.readonly_paths().as_deref().unwrap_or_default() {
        let path = Path::new(p);
        if sys.kind(path) == FileKind::Missing {
            continue;
        }
        sys.mount(
            Some(path),
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .map_err(failed(format!("binding {p}")))?;
        sys.mount(
            None,
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None,
        )
        .map_err(failed(format!("making {p} read-only")))?;
    }
    if spec
        .root()
        .as_ref()
        .is_some_and(|r| r.readonly().unwrap_or(false))
    {
        sys.mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )
        .map_err(failed("making / read-only"))?;
    }
    if let Some(h) = spec.hostname() {
        if own_uts {
            sys.sethostname(h).map_err(failed("sethostname"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::Recorder;

    fn spec(json: serde_json::Value) -> Spec {
        let mut base = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"namespaces": [{"type": "mount"}]}
        });
        for (k, v) in json.as_object().expect("object") {
            if k == "linux" {
                for (lk, lv) in v.as_object().expect("linux object") {
                    base["linux"][lk] = lv.clone();
                }
            } else {
                base[k] = v.clone();
            }
        }
        serde_json::from_value(base).expect("spec")
    }

    fn plan(spec: &Spec) -> RootPlan<'_> {
        RootPlan {
            rootfs: Path::new("/b/rootfs"),
            spec,
            has_netns: true,
            in_userns: false,
            cgroup_views: Vec::new(),
            no_pivot: false,
        }
    }

    fn run(sys: &Recorder, spec: &Spec) -> Result<Vec<String>> {
        let mut hooks_at = None;
        prepare(sys, &plan(spec), &mut || {
            hooks_at = Some(sys.lines().len());
            Ok(())
        })?;
        let mut lines = sys.lines();
        lines.insert(hooks_at.expect("hooks ran"), "<hooks>".into());
        Ok(lines)
    }

    fn host_devices(sys: &Recorder) {
        for d in DEFAULT_DEVICES {
            sys.has(&format!("/dev/{d}"), FileKind::Other);
        }
    }

    #[test]
    fn shared_root_propagation_is_given_after_pivot_root_over_a_slave_tree() {
        let s = spec(serde_json::json!({"linux": {"rootfsPropagation": "shared"}}));
        let sys = Recorder::default();
        host_devices(&sys);
        let lines = run(&sys, &s).expect("prepare");
        // A shared tree (or a shared mount above the new root) makes pivot_root fail with
        // EINVAL: the tree is a slave of the host's until the root is switched.
        assert_eq!(lines[0], "mount - / - MS_REC|MS_SLAVE -");
        assert_eq!(lines[1], "mount /b/rootfs /b/rootfs - MS_BIND|MS_REC -");
        let pivot = sys.at("pivot_root . .");
        assert!(sys.at("mount proc /b/rootfs/proc proc") < pivot);
        assert!(lines.iter().position(|l| l == "<hooks>").expect("hooks") < pivot + 1);
        assert_eq!(
            lines.last().map(String::as_str),
            Some("mount - / - MS_SHARED -")
        );
    }

    #[test]
    fn without_a_root_propagation_the_tree_is_private_and_left_so() {
        let s = spec(serde_json::json!({}));
        let sys = Recorder::default();
        host_devices(&sys);
        let lines = run(&sys, &s).expect("prepare");
        assert_eq!(lines[0], "mount - / - MS_REC|MS_PRIVATE -");
        assert_eq!(lines.last().map(String::as_str), Some("chdir /"));
        for (asked, last) in [
            ("rslave", "mount - / - MS_REC|MS_SLAVE -"),
            ("private", "mount - / - MS_PRIVATE -"),
            ("unbindable", "mount - / - MS_UNBINDABLE -"),
        ] {
            let s = spec(serde_json::json!({"linux": {"rootfsPropagation": asked}}));
            let sys = Recorder::default();
            host_devices(&sys);
            let lines = run(&sys, &s).expect("prepare");
            assert_eq!(lines.last().map(String::as_str), Some(last), "{asked}");
        }
        let s = spec(serde_json::json!({"linux": {"rootfsPropagation": "sideways"}}));
        let err = run(&Recorder::default(), &s).expect_err("bad propagation");
        assert!(err.to_string().contains("rootfsPropagation"), "{err}");
    }

    #[test]
    fn spec_devices_are_made_with_mknod_mode_and_owner_not_looked_up_on_the_host() {
        let s = spec(serde_json::json!({"linux": {"devices": [
            {"path": "/dev/test1", "type": "c", "major": 10, "minor": 666,
             "fileMode": 432, "uid": 1, "gid": 2},
            {"path": "/dev/sub/test2", "type": "b", "major": 8, "minor": 3},
            {"path": "/dev/fifo", "type": "p", "major": 0, "minor": 0}
        ]}}));
        let sys = Recorder::default();
        host_devices(&sys);
        let lines = run(&sys, &s).expect("prepare");
        let i = sys.at("mknod /b/rootfs/dev/test1 char 660 10:666");
        assert_eq!(lines[i + 1], "chmod /b/rootfs/dev/test1 660");
        assert_eq!(lines[i + 2], "chown /b/rootfs/dev/test1 1:2");
        sys.at("mkdir /b/rootfs/dev/sub");
        sys.at("mknod /b/rootfs/dev/sub/test2 block 666 8:3");
        sys.at("chown /b/rootfs/dev/sub/test2 0:0");
        sys.at("mknod /b/rootfs/dev/fifo fifo 666 0:0");
        sys.at("mount /dev/null /b/rootfs/dev/null - MS_BIND -");
        assert!(sys.at("mknod") < sys.at("pivot_root"));
    }

    #[test]
    fn in_a_user_namespace_devices_are_bound_and_a_missing_one_is_an_error() {
        let s = spec(serde_json::json!({"linux": {"devices": [
            {"path": "/dev/test1", "type": "c", "major": 10, "minor": 666}
        ]}}));
        let sys = Recorder::default();
        host_devices(&sys);
        let mut p = plan(&s);
        p.in_userns = true;
        let err = prepare(&sys, &p, &mut || Ok(())).expect_err("no host node");
        assert!(err.to_string().contains("/dev/test1"), "{err}");
        let sys = Recorder::default();
        host_devices(&sys);
        sys.has("/dev/test1", FileKind::Other);
        prepare(&sys, &p, &mut || Ok(())).expect("bound");
        sys.at("mount /dev/test1 /b/rootfs/dev/test1 - MS_BIND -");
        assert!(!sys.lines().iter().any(|l| l.starts_with("mknod")));
    }

    #[test]
    fn a_failed_step_stops_before_the_root_is_switched() {
        let s = spec(serde_json::json!({}));
        let sys = Recorder::default();
        host_devices(&sys);
        sys.fail("mount proc", nix::errno::Errno::EPERM);
        let err = run(&sys, &s).expect_err("mount fails");
        assert!(err.to_string().contains("mounting proc on /proc"), "{err}");
        assert!(!sys.lines().iter().any(|l| l.starts_with("pivot_root")));
    }

    #[test]
    fn without_a_mount_namespace_nothing_is_mounted_and_restrictions_are_refused() {
        let s = spec(serde_json::json!({}));
        let sys = Recorder::default();
        enter_without_mount_namespace(&sys, &plan(&s)).expect("chroot");
        assert_eq!(sys.lines(), vec!["chdir /b/rootfs", "chroot .", "chdir /"]);
        let s = spec(serde_json::json!({"linux": {"maskedPaths": ["/proc/kcore"]}}));
        let err = enter_without_mount_namespace(&Recorder::default(), &plan(&s))
            .expect_err("masks need a mount namespace");
        assert!(err.to_string().contains("mount namespace"), "{err}");
    }
}
