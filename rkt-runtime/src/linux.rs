//! The syscall layer: namespaces, mounts, pivot_root, credentials and exec. The only module of
//! the runtime that calls them.
//!
//! Process shape (like runc's): `rkt create` forks a helper, which joins or creates the
//! namespaces and forks the container's init; init sets up the root filesystem, reports "ready"
//! over a pipe, then waits on the container's `exec.fifo` until `rkt start` writes to it, and
//! execs the process. The helper reports init's pid and exits; `rkt` stays the child subreaper
//! so that `rkt run` can wait for init itself.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::sys::stat::Mode;
use nix::unistd::{chdir, fork, pivot_root, ForkResult, Pid};
use oci_spec::runtime::{LinuxNamespaceType, LinuxSeccomp, Mount, Process, Spec};

use crate::bundle::Bundle;
use crate::cgroup::Cgroup;
use crate::error::{Result, RuntimeError};
use crate::hooks::{self, HookState};
use crate::{mounts, seccomp};

/// Devices every container gets, bind-mounted from the host (as the spec's defaults require).
const DEFAULT_DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Writes one report line with a single write(2): the helper and init share the pipe, and
/// writes below PIPE_BUF are atomic, so lines never interleave.
fn report(out: &mut std::fs::File, line: &str) -> std::io::Result<()> {
    let mut buf = line.replace('\n', " ");
    let mut cut = buf.len().min(libc::PIPE_BUF - 1);
    while !buf.is_char_boundary(cut) {
        cut -= 1;
    }
    buf.truncate(cut);
    buf.push('\n');
    out.write_all(buf.as_bytes())
}

/// Ends a forked child: exit 0 on success, else report the error over `out` and exit 1.
fn exit_child(out: &mut std::fs::File, res: Result<()>) -> ! {
    let code = match res {
        Ok(()) => 0,
        Err(e) => {
            let _ = report(out, &format!("error {e}"));
            1
        }
    };
    // SAFETY: a forked child leaves with _exit, skipping destructors and atexit handlers that
    // belong to the parent.
    unsafe { libc::_exit(code) }
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> RuntimeError {
    let what = what.into();
    move |e| RuntimeError::sys(what, e)
}

/// What the container's init needs to know.
pub struct InitArgs<'a> {
    pub id: &'a str,
    pub bundle: &'a Bundle,
    /// The `exec.fifo` that `rkt start` writes to.
    pub fifo: &'a Path,
    /// The cgroup to join before any namespace is made (so a cgroup namespace is rooted there).
    pub cgroup: Option<&'a Cgroup>,
    /// Where to send the master of the container's terminal (when process.terminal is set).
    pub console_socket: Option<&'a Path>,
    /// Descriptors 3..3+N to pass on to the process.
    pub preserve_fds: u32,
    /// chroot instead of pivot_root.
    pub no_pivot: bool,
}

/// Starts the container's init for `bundle`, held before exec until the fifo at `fifo` is
/// written. Returns init's pid once the root filesystem is ready.
///
/// When the spec has prestart or createRuntime hooks, init stops once the mounts are made and
/// before createContainer hooks and pivot_root; `runtime_hooks` runs them (given init's pid)
/// and init goes on only if they succeed, so hooks run in the order the spec gives.
pub fn spawn_init(
    args: &InitArgs,
    runtime_hooks: &mut dyn FnMut(i32) -> Result<()>,
) -> Result<Pid> {
    let (rd, wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("creating a pipe"))?;
    let (go_rd, go_wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("creating a pipe"))?;
    // SAFETY: rkt is single-threaded here (no runtime, no helper threads), so the child may
    // keep running Rust code after fork.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(rd);
            drop(go_wr);
            let mut out = std::fs::File::from(wr);
            let res = helper(args, &mut out, go_rd);
            exit_child(&mut out, res)
        }
        ForkResult::Parent { child } => {
            drop(wr);
            drop(go_rd);
            let res = read_report(rd, go_wr, &IdMaps::of(&args.bundle.spec), runtime_hooks);
            let _ = nix::sys::wait::waitpid(child, None);
            res
        }
    }
}

/// A user namespace's uid and gid maps, as /proc/PID/{uid,gid}_map text.
struct IdMaps {
    uid: String,
    gid: String,
}

impl IdMaps {
    fn of(spec: &Spec) -> Self {
        let text = |m: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| {
            m.into_iter()
                .flatten()
                .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
                .collect::<String>()
        };
        let linux = spec.linux().as_ref();
        IdMaps {
            uid: text(linux.and_then(|l| l.uid_mappings().as_ref())),
            gid: text(linux.and_then(|l| l.gid_mappings().as_ref())),
        }
    }
}

fn write_id_maps(pid: i32, maps: &IdMaps) -> Result<()> {
    for (file, text) in [("uid_map", &maps.uid), ("gid_map", &maps.gid)] {
        let p = PathBuf::from(format!("/proc/{pid}/{file}"));
        std::fs::write(&p, text).map_err(|e| RuntimeError::BadConfig {
            path: p.clone(),
            reason: format!("writing {file} {:?}: {e}", text.trim()),
        })?;
    }
    Ok(())
}

/// Reads the helper's and init's report: "pid N", maybe "hooks N", then "ready" or "error MSG".
/// The helper and init write to the same pipe, so init's "ready" or "error" may come before the
/// helper's "pid": the outcome is returned once both are known.
fn read_report(
    rd: OwnedFd,
    go: OwnedFd,
    id_maps: &IdMaps,
    runtime_hooks: &mut dyn FnMut(i32) -> Result<()>,
) -> Result<Pid> {
    let mut pid = None;
    let mut go = Some(std::fs::File::from(go));
    let kill_init = |pid: Option<Pid>| {
        if let Some(p) = pid {
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
        }
    };
    let mut ready = false;
    let mut failed: Option<String> = None;
    for line in BufReader::new(std::fs::File::from(rd)).lines() {
        let line = line.map_err(|e| RuntimeError::Init(e.to_string()))?;
        if let Some(p) = line.strip_prefix("pid ") {
            pid = p.parse::<i32>().ok().map(Pid::from_raw);
            if let Some(msg) = failed.take() {
                kill_init(pid);
                return Err(RuntimeError::Init(msg));
            }
            if ready {
                return pid.ok_or_else(|| RuntimeError::Init(format!("bad init pid {p:?}")));
            }
        } else if let Some(p) = line.strip_prefix("userns ") {
            let helper = p.parse::<i32>().unwrap_or(0);
            // On failure the pipe closes without a byte and the helper gives up.
            write_id_maps(helper, id_maps)?;
            if let Some(g) = go.as_mut() {
                g.write_all(&[1])
                    .map_err(|e| RuntimeError::Init(e.to_string()))?;
            }
        } else if let Some(p) = line.strip_prefix("hooks ") {
            let init = p.parse::<i32>().unwrap_or(0);
            if let Err(e) = runtime_hooks(init) {
                // Closing the pipe without a byte tells init to give up.
                drop(go.take());
                kill_init(pid.or(Some(Pid::from_raw(init))));
                return Err(e);
            }
            if let Some(g) = go.as_mut() {
                g.write_all(&[1])
                    .map_err(|e| RuntimeError::Init(e.to_string()))?;
            }
        } else if line == "ready" {
            match pid {
                Some(p) => return Ok(p),
                None => ready = true,
            }
        } else if let Some(msg) = line.strip_prefix("error ") {
            if pid.is_some() {
                kill_init(pid);
                return Err(RuntimeError::Init(msg.to_string()));
            }
            failed = Some(msg.to_string());
        }
    }
    Err(RuntimeError::Init(failed.unwrap_or_else(|| {
        let what = if ready {
            "reported ready but its helper died"
        } else {
            "exited during setup"
        };
        format!("container init {what}")
    })))
}

fn ns_flag(t: LinuxNamespaceType) -> Option<CloneFlags> {
    Some(match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Time => return None,
    })
}

/// The helper: join the cgroup, join/create namespaces, fork init, report its pid.
fn helper(args: &InitArgs, out: &mut std::fs::File, go: OwnedFd) -> Result<()> {
    let bundle = args.bundle;
    if let Some(cg) = args.cgroup {
        cg.add(0)?;
    }
    let namespaces = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let mut new = CloneFlags::empty();
    // A user namespace is joined first: the others are then joined with its privileges.
    let mut ordered: Vec<_> = namespaces.iter().collect();
    ordered.sort_by_key(|n| n.typ() != LinuxNamespaceType::User);
    for ns in ordered {
        let flag = ns_flag(ns.typ())
            .ok_or_else(|| RuntimeError::Unsupported(format!("{:?} namespace", ns.typ())))?;
        match ns.path() {
            Some(p) => {
                let f = std::fs::File::open(p).map_err(|e| RuntimeError::io(p, e))?;
                setns(f, flag).map_err(sys(format!("joining namespace {}", p.display())))?;
            }
            None => new |= flag,
        }
    }
    if !new.contains(CloneFlags::CLONE_NEWNS)
        && !namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Mount)
    {
        return Err(RuntimeError::Unsupported(
            "a container without its own mount namespace".into(),
        ));
    }
    // Opened while still root on the host: a new user namespace's root may not open them.
    // Held open read-write: `rkt start` can open the fifo for writing whenever init is alive.
    let fifo_fd = open(args.fifo, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(sys("opening exec.fifo"))?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    let fifo_fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fifo_fd) };
    let terminal = bundle
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let console = match (terminal, args.console_socket) {
        (true, Some(p)) => Some(connect_console(p)?),
        (true, None) => {
            return Err(RuntimeError::Unsupported(
                "process.terminal needs --console-socket to send the terminal to".into(),
            ))
        }
        (false, _) => None,
    };
    let mut go = std::fs::File::from(go);
    if new.contains(CloneFlags::CLONE_NEWUSER) {
        // A new user namespace: its id maps are written by `rkt create` (root outside it);
        // wait for that, then become its root so that the namespaces made next belong to it.
        unshare(CloneFlags::CLONE_NEWUSER).map_err(sys("creating the user namespace"))?;
        report(out, &format!("userns {}", nix::unistd::getpid()))
            .map_err(|e| RuntimeError::Init(e.to_string()))?;
        let mut byte = [0u8; 1];
        go.read_exact(&mut byte)
            .map_err(|_| RuntimeError::Init("uid/gid maps were not written".into()))?;
        let root_gid = nix::unistd::Gid::from_raw(0);
        let root_uid = nix::unistd::Uid::from_raw(0);
        nix::unistd::setresgid(root_gid, root_gid, root_gid).map_err(sys(
            "becoming root in the user namespace (no mapping for gid 0?)",
        ))?;
        nix::unistd::setresuid(root_uid, root_uid, root_uid).map_err(sys(
            "becoming root in the user namespace (no mapping for uid 0?)",
        ))?;
        new -= CloneFlags::CLONE_NEWUSER;
    }
    let go = OwnedFd::from(go);
    unshare(new).map_err(sys("creating namespaces"))?;
    // SAFETY: still single-threaded.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            let res = init(args, out, go, fifo_fd, console).map(|never| match never {});
            exit_child(out, res)
        }
        ForkResult::Parent { child } => {
            report(out, &format!("pid {child}")).map_err(|e| RuntimeError::Init(e.to_string()))?;
            Ok(())
        }
    }
}

/// Joins `dest` (absolute inside the container) under `root`, refusing to climb out of it.
fn in_root(root: &Path, dest: &Path) -> Result<PathBuf> {
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

/// A v1 host's cgroup view: a tmpfs with the container's own directory of each hierarchy
/// bound under its usual name, as runc gives it.
fn mount_cgroup_v1(dest: &Path, views: &[(String, PathBuf)], flags: MsFlags) -> Result<()> {
    let dest_s = dest.display().to_string();
    let base = flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    mount(Some("tmpfs"), dest, Some("tmpfs"), base, Some("mode=755"))
        .map_err(sys(format!("mounting tmpfs on {dest_s}")))?;
    for (name, host) in views {
        let d = dest.join(name);
        std::fs::create_dir_all(&d).map_err(|e| RuntimeError::io(&d, e))?;
        mount(
            Some(host.as_path()),
            &d,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys(format!(
            "binding {} on {}",
            host.display(),
            d.display()
        )))?;
        mount(
            None::<&str>,
            &d,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | (flags & !MsFlags::MS_REC),
            None::<&str>,
        )
        .map_err(sys(format!("remounting {}", d.display())))?;
        // "cpu,cpuacct" is also reachable as "cpu" and "cpuacct".
        if name.contains(',') {
            for part in name.split(',') {
                let l = dest.join(part);
                if l.symlink_metadata().is_err() {
                    std::os::unix::fs::symlink(name, &l).map_err(|e| RuntimeError::io(&l, e))?;
                }
            }
        }
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        mount(
            None::<&str>,
            dest,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | base,
            None::<&str>,
        )
        .map_err(sys(format!("making {dest_s} read-only")))?;
    }
    Ok(())
}

fn mount_one(rootfs: &Path, m: &Mount, has_netns: bool, cgroup: Option<&Cgroup>) -> Result<()> {
    let dest = in_root(rootfs, m.destination())?;
    let options = m.options().clone().unwrap_or_default();
    let dest_s = m.destination().display().to_string();
    let plan = mounts::plan(&dest_s, &options)?;
    let typ = m.typ().clone().unwrap_or_default();
    let source = m.source().clone();
    if plan.bind {
        let src = source.ok_or_else(|| RuntimeError::BadConfig {
            path: dest.clone(),
            reason: "bind mount without source".into(),
        })?;
        if src.is_dir() {
            std::fs::create_dir_all(&dest).map_err(|e| RuntimeError::io(&dest, e))?;
        } else {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| RuntimeError::io(parent, e))?;
            }
            if !dest.exists() {
                std::fs::File::create(&dest).map_err(|e| RuntimeError::io(&dest, e))?;
            }
        }
        let bind_flags = plan.flags & (MsFlags::MS_BIND | MsFlags::MS_REC);
        mount(Some(&src), &dest, None::<&str>, bind_flags, None::<&str>)
            .map_err(sys(format!("bind mounting {} on {dest_s}", src.display())))?;
        // Bind mounts take their other flags only through a remount.
        let rest = plan.flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
        if !rest.is_empty() {
            mount(
                None::<&str>,
                &dest,
                None::<&str>,
                rest | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                None::<&str>,
            )
            .map_err(sys(format!("remounting {dest_s}")))?;
        }
    } else {
        std::fs::create_dir_all(&dest).map_err(|e| RuntimeError::io(&dest, e))?;
        let data = (!plan.data.is_empty()).then_some(plan.data.as_str());
        let views = cgroup.map(|c| c.v1_views()).unwrap_or_default();
        let res = match typ.as_str() {
            "cgroup" if !views.is_empty() => {
                return mount_cgroup_v1(&dest, &views, plan.flags);
            }
            // The cgroup v1 "cgroup" type needs a controller; give the container the unified
            // hierarchy, read-only as asked.
            "cgroup" | "cgroup2" => mount(
                Some("cgroup2"),
                &dest,
                Some("cgroup2"),
                plan.flags,
                None::<&str>,
            ),
            // sysfs shows the mounter's network namespace. Root may mount it from the host's
            // namespace too; where that is refused (a user namespace), the host's /sys is bound.
            "sysfs" => match mount(
                Some("sysfs"),
                &dest,
                Some("sysfs"),
                plan.flags,
                None::<&str>,
            ) {
                Err(nix::errno::Errno::EPERM) if !has_netns => mount(
                    Some(Path::new("/sys")),
                    &dest,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                ),
                r => r,
            },
            _ => mount(
                source.as_deref().or(Some(Path::new(&typ))),
                &dest,
                Some(typ.as_str()),
                plan.flags,
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
    if !plan.propagation.is_empty() {
        mount(
            None::<&str>,
            &dest,
            None::<&str>,
            plan.propagation,
            None::<&str>,
        )
        .map_err(sys(format!("setting propagation of {dest_s}")))?;
    }
    Ok(())
}

fn setup_devices(rootfs: &Path, spec: &Spec) -> Result<()> {
    let dev = rootfs.join("dev");
    std::fs::create_dir_all(&dev).map_err(|e| RuntimeError::io(&dev, e))?;
    let mut paths: Vec<PathBuf> = DEFAULT_DEVICES
        .iter()
        .map(|d| PathBuf::from("/dev").join(d))
        .collect();
    if let Some(devs) = spec.linux().as_ref().and_then(|l| l.devices().clone()) {
        paths.extend(devs.iter().map(|d| d.path().clone()));
    }
    for p in paths {
        let dest = in_root(rootfs, &p)?;
        if !p.exists() {
            return Err(RuntimeError::Unsupported(format!(
                "device {} does not exist on the host",
                p.display()
            )));
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| RuntimeError::io(parent, e))?;
        }
        if !dest.exists() {
            std::fs::File::create(&dest).map_err(|e| RuntimeError::io(&dest, e))?;
        }
        mount(
            Some(&p),
            &dest,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys(format!("binding device {}", p.display())))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let l = dev.join(link);
        if l.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(target, &l).map_err(|e| RuntimeError::io(&l, e))?;
        }
    }
    Ok(())
}

fn enter_root(rootfs: &Path, no_pivot: bool) -> Result<()> {
    chdir(rootfs).map_err(sys("entering the root filesystem"))?;
    if no_pivot {
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(sys("moving the root filesystem over /"))?;
        nix::unistd::chroot(".").map_err(sys("chroot"))?;
        return chdir("/").map_err(sys("chdir /"));
    }
    pivot_root(".", ".").map_err(sys("pivot_root"))?;
    // The old root now sits under the new one at "."; detach it.
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detaching the old root"))?;
    chdir("/").map_err(sys("chdir /"))
}

fn mask_and_protect(spec: &Spec) -> Result<()> {
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    for p in linux.masked_paths().as_deref().unwrap_or_default() {
        let path = Path::new(p);
        let res = if path.is_dir() {
            mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else if path.exists() {
            mount(
                Some("/dev/null"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        } else {
            Ok(())
        };
        res.map_err(sys(format!("masking {p}")))?;
    }
    for p in linux.readonly_paths().as_deref().unwrap_or_default() {
        let path = Path::new(p);
        if !path.exists() {
            continue;
        }
        mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(sys(format!("binding {p}")))?;
        mount(
            None::<&str>,
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(sys(format!("making {p} read-only")))?;
    }
    Ok(())
}

fn rlimit_resource(name: &str) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    Some(match name {
        "RLIMIT_AS" => R::RLIMIT_AS,
        "RLIMIT_CORE" => R::RLIMIT_CORE,
        "RLIMIT_CPU" => R::RLIMIT_CPU,
        "RLIMIT_DATA" => R::RLIMIT_DATA,
        "RLIMIT_FSIZE" => R::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => R::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => R::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => R::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => R::RLIMIT_NICE,
        "RLIMIT_NOFILE" => R::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => R::RLIMIT_NPROC,
        "RLIMIT_RSS" => R::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => R::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => R::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => R::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => R::RLIMIT_STACK,
        _ => return None,
    })
}

fn cap_set(list: &Option<oci_spec::runtime::Capabilities>) -> Result<caps::CapsHashSet> {
    let mut out = caps::CapsHashSet::new();
    for c in list.iter().flatten() {
        let name = serde_json::to_value(c)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        match name.parse::<caps::Capability>() {
            Ok(cap) => {
                out.insert(cap);
            }
            // A capability this kernel or caps crate does not know cannot be granted anyway.
            Err(_) => eprintln!("rkt: warning: unknown capability {name}, skipped"),
        }
    }
    Ok(out)
}

fn capsys(e: caps::errors::CapsError) -> RuntimeError {
    RuntimeError::Init(format!("setting capabilities: {e}"))
}

/// Credentials, capabilities and no_new_privs, in the order the kernel needs them.
fn set_credentials(process: &Process) -> Result<()> {
    use caps::CapSet;
    let wanted = process.capabilities().clone().unwrap_or_default();
    let bounding = cap_set(wanted.bounding())?;
    for cap in caps::all() {
        if !bounding.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap).map_err(capsys)?;
        }
    }
    let user = process.user();
    nix::sys::prctl::set_keepcaps(true).map_err(sys("keeping capabilities across setuid"))?;
    let gids: Vec<nix::unistd::Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&gids).map_err(sys("setgroups"))?;
    nix::unistd::setgid(nix::unistd::Gid::from_raw(user.gid())).map_err(sys("setgid"))?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(user.uid())).map_err(sys("setuid"))?;
    // capset(2) wants effective ⊆ permitted at every step, and inheritable changes need
    // CAP_SETPCAP while we still have it: inheritable, effective, permitted, then ambient.
    caps::set(None, CapSet::Inheritable, &cap_set(wanted.inheritable())?).map_err(capsys)?;
    caps::set(None, CapSet::Effective, &cap_set(wanted.effective())?).map_err(capsys)?;
    caps::set(None, CapSet::Permitted, &cap_set(wanted.permitted())?).map_err(capsys)?;
    caps::set(None, CapSet::Ambient, &cap_set(wanted.ambient())?).map_err(capsys)?;
    if process.no_new_privileges().unwrap_or(false) {
        nix::sys::prctl::set_no_new_privs().map_err(sys("no_new_privs"))?;
    }
    Ok(())
}

/// Finds the program in the container's PATH (from the process env), as the spec asks.
fn find_program(arg0: &str, env: &[String]) -> PathBuf {
    if arg0.contains('/') {
        return PathBuf::from(arg0);
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|d| Path::new(d).join(arg0))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(arg0))
}

fn cstrings(v: &[String]) -> Result<Vec<CString>> {
    v.iter()
        .map(|s| {
            CString::new(s.as_str()).map_err(|_| RuntimeError::Init(format!("NUL byte in {s:?}")))
        })
        .collect()
}

fn set_rlimits(process: &Process) -> Result<()> {
    for r in process.rlimits().iter().flatten() {
        let name = serde_json::to_value(r.typ())
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let res = rlimit_resource(&name)
            .ok_or_else(|| RuntimeError::Unsupported(format!("rlimit {name}")))?;
        nix::sys::resource::setrlimit(res, r.soft(), r.hard())
            .map_err(sys(format!("setrlimit {name}")))?;
    }
    Ok(())
}

/// Our pid as the host sees it (/proc is still the host's before pivot_root).
fn host_pid() -> i32 {
    std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

/// Connects to the console socket (before pivot_root hides the host's paths).
fn connect_console(path: &Path) -> Result<std::os::unix::net::UnixStream> {
    std::os::unix::net::UnixStream::connect(path).map_err(|e| RuntimeError::io(path, e))
}

/// Makes a pseudo-terminal in the current mount namespace, sends its master over `sock` (with
/// the slave's path as the message, as runc does) and returns the slave.
fn send_pty(sock: &std::os::unix::net::UnixStream) -> Result<OwnedFd> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let pty = nix::pty::openpty(None, None).map_err(sys("allocating a terminal"))?;
    let name = nix::unistd::ttyname(&pty.slave)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "/dev/pts/?".into());
    let fds = [pty.master.as_raw_fd()];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[std::io::IoSlice::new(name.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(sys("sending the terminal to the console socket"))?;
    Ok(pty.slave)
}

/// Makes `slave` the controlling terminal and stdio of a new session.
fn attach_terminal(slave: OwnedFd) -> Result<()> {
    use std::os::fd::AsRawFd;
    nix::unistd::setsid().map_err(sys("setsid"))?;
    for fd in 0..3 {
        nix::unistd::dup2(slave.as_raw_fd(), fd).map_err(sys("attaching the terminal"))?;
    }
    // SAFETY: TIOCSCTTY on our own stdin with an integer argument.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(RuntimeError::sys(
            "making the terminal controlling",
            nix::Error::last(),
        ));
    }
    Ok(())
}

fn hook_state<'a>(args: &'a InitArgs, status: &'a str, pid: i32) -> String {
    HookState {
        oci_version: crate::state::OCI_VERSION,
        id: args.id,
        status,
        pid,
        bundle: &args.bundle.dir,
        annotations: args.bundle.spec.annotations().as_ref().unwrap_or(&EMPTY),
    }
    .json()
}

static EMPTY: std::sync::LazyLock<std::collections::HashMap<String, String>> =
    std::sync::LazyLock::new(std::collections::HashMap::new);

/// The container's init: everything up to exec.
fn init(
    args: &InitArgs,
    out: &mut std::fs::File,
    go: OwnedFd,
    fifo_fd: OwnedFd,
    console: Option<std::os::unix::net::UnixStream>,
) -> Result<std::convert::Infallible> {
    let bundle = args.bundle;
    let spec = &bundle.spec;
    let linux = spec.linux().clone().unwrap_or_default();
    let has = |t: LinuxNamespaceType| linux.namespaces().iter().flatten().any(|n| n.typ() == t);
    let process = spec
        .process()
        .as_ref()
        .expect("bundle checks a process exists");
    let pid = host_pid();
    let propagation = match linux.rootfs_propagation().as_deref() {
        Some("shared") => MsFlags::MS_SHARED,
        Some("slave") => MsFlags::MS_SLAVE,
        Some("unbindable") => MsFlags::MS_UNBINDABLE,
        _ => MsFlags::MS_PRIVATE,
    };
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | propagation,
        None::<&str>,
    )
    .map_err(sys("making / private in the container"))?;
    let rootfs = &bundle.rootfs;
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("binding the root filesystem"))?;
    for m in spec.mounts().iter().flatten() {
        mount_one(rootfs, m, has(LinuxNamespaceType::Network), args.cgroup)?;
    }
    setup_devices(rootfs, spec)?;
    if let Some(h) = spec.hooks() {
        let runtime = [h.prestart(), h.create_runtime()];
        if runtime
            .iter()
            .any(|x| x.as_ref().is_some_and(|v| !v.is_empty()))
        {
            report(out, &format!("hooks {pid}")).map_err(|e| RuntimeError::Init(e.to_string()))?;
            let mut byte = [0u8; 1];
            std::fs::File::from(go)
                .read_exact(&mut byte)
                .map_err(|_| RuntimeError::Init("runtime hooks failed".into()))?;
        }
        hooks::run_all(
            h.create_container().as_ref(),
            &hook_state(args, "creating", pid),
        )?;
    }
    enter_root(rootfs, args.no_pivot)?;
    // Before readonlyPaths makes /proc/sys read-only.
    for (k, v) in linux.sysctl().clone().unwrap_or_default() {
        let p = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        std::fs::write(&p, v).map_err(|e| RuntimeError::io(&p, e))?;
    }
    mask_and_protect(spec)?;
    if spec
        .root()
        .as_ref()
        .is_some_and(|r| r.readonly().unwrap_or(false))
    {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(sys("making / read-only"))?;
    }
    if let Some(h) = spec.hostname() {
        if has(LinuxNamespaceType::Uts) {
            nix::unistd::sethostname(h).map_err(sys("sethostname"))?;
        }
    }
    set_rlimits(process)?;
    if process.apparmor_profile().is_some() || process.selinux_label().is_some() {
        tracing::warn!("AppArmor/SELinux labels are not applied by rkt (ignored)");
    }
    let filter = linux.seccomp().as_ref().map(seccomp::build).transpose()?;
    let terminal = console.as_ref().map(send_pty).transpose()?;
    drop(console);
    let env = process.env().clone().unwrap_or_default();
    let argv = process.args().clone().unwrap_or_default();
    let program = find_program(&argv[0], &env);
    report(out, "ready").map_err(|e| RuntimeError::Init(e.to_string()))?;
    // From here on nobody reads the report pipe: failures go to the container's stderr.
    let mut byte = [0u8; 1];
    let waited = std::fs::File::from(fifo_fd)
        .read_exact(&mut byte)
        .map_err(|e| RuntimeError::Init(format!("waiting for start: {e}")));
    let e = match waited.and_then(|()| {
        if let Some(h) = spec.hooks() {
            hooks::run_all(
                h.start_container().as_ref(),
                &hook_state(args, "created", pid),
            )?;
        }
        exec_process(
            process,
            args.preserve_fds,
            terminal,
            filter.as_ref(),
            &program,
            &argv,
            &env,
        )
    }) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    eprintln!("rkt: {e}");
    // SAFETY: exiting the container's init without running the parent's destructors.
    unsafe { libc::_exit(127) }
}

/// Attaches the terminal, drops privileges as the process says, loads the seccomp filter as
/// late as it can, and execs.
fn exec_process(
    process: &Process,
    preserve_fds: u32,
    terminal: Option<OwnedFd>,
    filter: Option<&libseccomp::ScmpFilterContext>,
    program: &Path,
    args: &[String],
    env: &[String],
) -> Result<std::convert::Infallible> {
    if let Some(t) = terminal {
        attach_terminal(t)?;
    }
    // Whatever rkt's caller left open stays out of the container, but for the preserved ones.
    let first_closed = 3 + preserve_fds;
    // SAFETY: close_range only flips close-on-exec flags on descriptors of this process.
    if unsafe { libc::close_range(first_closed, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) } != 0 {
        return Err(RuntimeError::sys(
            "marking inherited descriptors close-on-exec",
            nix::Error::last(),
        ));
    }
    for fd in 3..first_closed as i32 {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))
            .map_err(sys(format!("passing on descriptor {fd}")))?;
    }
    let nnp = process.no_new_privileges().unwrap_or(false);
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: do it before dropping it.
    if let (Some(f), false) = (filter, nnp) {
        seccomp::load(f)?;
    }
    set_credentials(process)?;
    let cwd = process.cwd();
    chdir(cwd).map_err(sys(format!("chdir {}", cwd.display())))?;
    // Rust ignores SIGPIPE; the container's process must get the default disposition back.
    // SAFETY: resetting a signal disposition to its default has no handler to be unsafe about.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    }
    .map_err(sys("restoring SIGPIPE"))?;
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(sys("sigprocmask"))?;
    let prog = CString::new(program.as_os_str().as_encoded_bytes())
        .map_err(|_| RuntimeError::Init("NUL byte in program path".into()))?;
    let (argv, envp) = (cstrings(args)?, cstrings(env)?);
    if let (Some(f), true) = (filter, nnp) {
        seccomp::load(f)?;
    }
    let e = match nix::unistd::execve(&prog, &argv, &envp) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    Err(RuntimeError::sys(format!("exec {}", program.display()), e))
}

/// What `rkt exec` needs to start a process in a running container.
pub struct ExecArgs<'a> {
    /// Host pid of the container's init, whose namespaces are joined.
    pub init_pid: i32,
    pub process: &'a Process,
    pub seccomp: Option<&'a LinuxSeccomp>,
    pub cgroup: Option<&'a Cgroup>,
    pub console_socket: Option<&'a Path>,
    pub preserve_fds: u32,
}

/// Namespaces in the order they are joined (the mount namespace last: it changes our root).
const EXEC_NAMESPACES: &[(&str, CloneFlags)] = &[
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Starts a process inside a running container; returns its pid once it has exec'd.
pub fn spawn_exec(args: &ExecArgs) -> Result<Pid> {
    let (rd, wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("creating a pipe"))?;
    // SAFETY: single-threaded, as in spawn_init.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(rd);
            let mut out = std::fs::File::from(wr);
            let res = exec_helper(args, &mut out);
            exit_child(&mut out, res)
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut pid = None;
            // EOF comes when the helper has exited and the process has exec'd (CLOEXEC).
            for line in BufReader::new(std::fs::File::from(rd)).lines() {
                let line = line.map_err(|e| RuntimeError::Init(e.to_string()))?;
                if let Some(p) = line.strip_prefix("pid ") {
                    pid = p.parse::<i32>().ok().map(Pid::from_raw);
                } else if let Some(msg) = line.strip_prefix("error ") {
                    let _ = nix::sys::wait::waitpid(child, None);
                    return Err(RuntimeError::Init(msg.to_string()));
                }
            }
            let _ = nix::sys::wait::waitpid(child, None);
            pid.ok_or_else(|| RuntimeError::Init("exec helper died before starting".into()))
        }
    }
}

fn exec_helper(args: &ExecArgs, out: &mut std::fs::File) -> Result<()> {
    if let Some(cg) = args.cgroup {
        cg.add(0)?;
    }
    let process = args.process;
    let console = match (process.terminal().unwrap_or(false), args.console_socket) {
        (true, Some(p)) => Some(connect_console(p)?),
        (true, None) => {
            return Err(RuntimeError::Unsupported(
                "--tty needs --console-socket to send the terminal to".into(),
            ))
        }
        (false, _) => None,
    };
    let filter = args.seccomp.map(seccomp::build).transpose()?;
    let env = process.env().clone().unwrap_or_default();
    let argv = process.args().clone().unwrap_or_default();
    if argv.is_empty() {
        return Err(RuntimeError::Unsupported("exec needs a command".into()));
    }
    for (name, flag) in EXEC_NAMESPACES {
        let theirs = format!("/proc/{}/ns/{name}", args.init_pid);
        let same = match (
            std::fs::metadata(&theirs),
            std::fs::metadata(format!("/proc/self/ns/{name}")),
        ) {
            (Ok(a), Ok(b)) => {
                use std::os::unix::fs::MetadataExt;
                a.ino() == b.ino() && a.dev() == b.dev()
            }
            (Err(e), _) => return Err(RuntimeError::io(&theirs, e)),
            _ => false,
        };
        if !same {
            let f = std::fs::File::open(&theirs).map_err(|e| RuntimeError::io(&theirs, e))?;
            setns(f, *flag).map_err(sys(format!("joining the container's {name} namespace")))?;
        }
    }
    // SAFETY: single-threaded.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            let res = (|| {
                let terminal = console.as_ref().map(send_pty).transpose()?;
                drop(console);
                set_rlimits(process)?;
                let program = find_program(&argv[0], &env);
                exec_process(
                    process,
                    args.preserve_fds,
                    terminal,
                    filter.as_ref(),
                    &program,
                    &argv,
                    &env,
                )
            })();
            exit_child(out, res.map(|never| match never {}))
        }
        ForkResult::Parent { child } => {
            report(out, &format!("pid {child}")).map_err(|e| RuntimeError::Init(e.to_string()))
        }
    }
}

/// Routes this process's stdout and stderr through pipes that a forked child copies to the
/// original ones. The child stays in the caller's cgroup while the container runs in its own:
/// journald files a systemd service's output by where the writer sits, so a pod's output
/// written through the relay is the service's (conmon does the same for podman). The relay
/// ignores termination signals and leaves when both pipes are closed, so nothing written
/// before the container exits is lost. Called before any thread exists (it forks).
pub fn relay_output() -> Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::{AsFd, AsRawFd};
    let (r_out, w_out) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("creating a pipe"))?;
    let (r_err, w_err) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("creating a pipe"))?;
    // SAFETY: rkt is single-threaded here; the child only reads, writes and exits.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(w_out);
            drop(w_err);
            for sig in [
                nix::sys::signal::Signal::SIGTERM,
                nix::sys::signal::Signal::SIGINT,
                nix::sys::signal::Signal::SIGHUP,
            ] {
                // SAFETY: SIG_IGN installs no handler code.
                let _ =
                    unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn) };
            }
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
            let mut open = [Some((r_out, 1)), Some((r_err, 2))];
            let mut buf = [0u8; 16 * 1024];
            while open.iter().any(Option::is_some) {
                let mut fds: Vec<PollFd> = open
                    .iter()
                    .flatten()
                    .map(|(fd, _)| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
                    .collect();
                if poll(&mut fds, PollTimeout::NONE).is_err() {
                    continue;
                }
                let ready: Vec<bool> = fds
                    .iter()
                    .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                    .collect();
                drop(fds);
                let mut k = 0;
                for slot in open.iter_mut() {
                    let Some((fd, target)) = slot.as_ref() else {
                        continue;
                    };
                    let is_ready = ready[k];
                    k += 1;
                    if !is_ready {
                        continue;
                    }
                    match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                        Ok(0) | Err(_) => *slot = None,
                        Ok(n) => {
                            let mut data = &buf[..n];
                            while !data.is_empty() {
                                // SAFETY: writing to the inherited descriptor 1 or 2.
                                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(*target) };
                                match nix::unistd::write(fd, data) {
                                    Ok(w) => data = &data[w..],
                                    Err(nix::Error::EINTR) => {}
                                    Err(_) => break,
                                }
                            }
                        }
                    }
                }
            }
            // SAFETY: a forked child leaves with _exit.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { .. } => {
            drop(r_out);
            drop(r_err);
            nix::unistd::dup2(w_out.as_raw_fd(), 1).map_err(sys("redirecting stdout"))?;
            nix::unistd::dup2(w_err.as_raw_fd(), 2).map_err(sys("redirecting stderr"))?;
            Ok(())
        }
    }
}

/// Mounts an overlay of `lowers` (top first) with `upper` and `work` on `target`: a pod's root.
pub fn mount_overlay(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    let join = |p: &Path| -> Result<String> {
        let s = p.display().to_string();
        if s.contains([',', ':']) {
            return Err(RuntimeError::Unsupported(format!(
                "overlay path with ',' or ':': {s}"
            )));
        }
        Ok(s)
    };
    let lower = lowers
        .iter()
        .map(|p| join(p))
        .collect::<Result<Vec<_>>>()?
        .join(":");
    let data = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        join(upper)?,
        join(work)?
    );
    // The kernel takes one page of mount data.
    if data.len() >= 4000 {
        return Err(RuntimeError::Unsupported(format!(
            "an image of {} layers is more than overlayfs's mount options can name",
            lowers.len()
        )));
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(sys(format!(
        "mounting the pod's overlay on {}",
        target.display()
    )))
}

/// Lazily unmounts `target` (nothing mounted there is not an error).
pub fn unmount(target: &Path) -> Result<()> {
    match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(RuntimeError::sys(
            format!("unmounting {}", target.display()),
            e,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_stay_inside_the_root() {
        let r = Path::new("/b/rootfs");
        assert_eq!(
            in_root(r, Path::new("/proc")).ok(),
            Some(PathBuf::from("/b/rootfs/proc"))
        );
        assert!(in_root(r, Path::new("/../etc")).is_err());
    }

    #[test]
    fn program_lookup_uses_the_container_path() {
        let env = vec!["PATH=/nonexistent:/bin".to_string()];
        assert_eq!(find_program("/x/y", &env), PathBuf::from("/x/y"));
        assert_eq!(find_program("sh", &env), PathBuf::from("/bin/sh"));
    }
}
