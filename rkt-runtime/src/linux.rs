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
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::sys::stat::Mode;
use nix::unistd::{chdir, fork, ForkResult, Pid};
use oci_spec::runtime::{LinuxNamespaceType, LinuxSeccomp, Process, Spec};

use crate::bundle::Bundle;
use crate::cgroup::Cgroup;
use crate::error::{failed as sys, Result, RuntimeError};
use crate::hooks::{self, HookState};
use crate::syscall::Linux;
use crate::{process, rootfs, seccomp};

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
    // Still root of the host (lowering the score needs CAP_SYS_RESOURCE there); init inherits it.
    if let Some(p) = bundle.spec.process() {
        process::set_oom_score(&Linux, p)?;
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
    // Opened while still root on the host: a new user namespace's root may not open them.
    let fifo = FifoHandle::open(args.fifo)?;
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
            let res = init(args, out, go, fifo, console).map(|never| match never {});
            exit_child(out, res)
        }
        ForkResult::Parent { child } => {
            report(out, &format!("pid {child}")).map_err(|e| RuntimeError::Init(e.to_string()))?;
            Ok(())
        }
    }
}

fn cstrings(v: &[String]) -> Result<Vec<CString>> {
    v.iter()
        .map(|s| {
            CString::new(s.as_str()).map_err(|_| RuntimeError::Init(format!("NUL byte in {s:?}")))
        })
        .collect()
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

/// Finds the program in the container's PATH (from the process env), as the spec asks; a
/// program that is not there fails `create`, as in runc.
fn find_program(arg0: &str, env: &[String]) -> Result<PathBuf> {
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        return match p.metadata() {
            Ok(_) => Ok(p),
            Err(e) => Err(RuntimeError::Init(format!("exec {arg0}: {e}"))),
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|d| Path::new(d).join(arg0))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            RuntimeError::Init(format!(
                "exec {arg0:?}: executable file not found in $PATH ({path})"
            ))
        })
}

/// The container's init: everything up to exec. What can fail is done before "ready" is
/// reported, so that it fails `create`; after it, init only waits for `start`, runs the
/// startContainer hooks and execs, and a failure there is written to the exec fifo, where
/// `start` reads it.
fn init(
    args: &InitArgs,
    out: &mut std::fs::File,
    go: OwnedFd,
    fifo: FifoHandle,
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
    let os = Linux;
    let plan = rootfs::RootPlan {
        rootfs: &bundle.rootfs,
        spec,
        has_netns: has(LinuxNamespaceType::Network),
        in_userns: has(LinuxNamespaceType::User),
        cgroup_views: args.cgroup.map(|c| c.v1_views()).unwrap_or_default(),
        no_pivot: args.no_pivot,
    };
    let mut go = Some(go);
    let mut before_switch = || -> Result<()> {
        let Some(h) = spec.hooks() else {
            return Ok(());
        };
        let runtime = [h.prestart(), h.create_runtime()];
        if runtime
            .iter()
            .any(|x| x.as_ref().is_some_and(|v| !v.is_empty()))
        {
            report(out, &format!("hooks {pid}")).map_err(|e| RuntimeError::Init(e.to_string()))?;
            let mut byte = [0u8; 1];
            std::fs::File::from(go.take().expect("hooks run once"))
                .read_exact(&mut byte)
                .map_err(|_| RuntimeError::Init("runtime hooks failed".into()))?;
        }
        hooks::run_all(
            h.create_container().as_ref(),
            &hook_state(args, "creating", pid),
        )
    };
    if has(LinuxNamespaceType::Mount) {
        rootfs::prepare(&os, &plan, &mut before_switch)?;
        rootfs::finish(&os, spec, has(LinuxNamespaceType::Uts))?;
    } else {
        before_switch()?;
        // Nothing that needs a mount is asked for here (refused); the hostname may be.
        rootfs::enter_without_mount_namespace(&os, &plan)?;
        if let (Some(h), true) = (spec.hostname(), has(LinuxNamespaceType::Uts)) {
            nix::unistd::sethostname(h).map_err(sys("sethostname"))?;
        }
    }
    process::set_rlimits(&os, process)?;
    if process.apparmor_profile().is_some() || process.selinux_label().is_some() {
        tracing::warn!("AppArmor/SELinux labels are not applied by rkt (ignored)");
    }
    let filter = linux.seccomp().as_ref().map(seccomp::build).transpose()?;
    let terminal = console.as_ref().map(send_pty).transpose()?;
    drop(console);
    let env = process.env().clone().unwrap_or_default();
    let argv = process.args().clone().unwrap_or_default();
    prepare_exec(process, args.preserve_fds, terminal, filter.as_ref())?;
    let program = find_program(&argv[0], &env)?;
    let (argv_c, envp_c) = (cstrings(&argv)?, cstrings(&env)?);
    report(out, "ready").map_err(|e| RuntimeError::Init(e.to_string()))?;
    // From here on nobody reads the report pipe: `start` reads the fifo.
    let mut started = match fifo.wait_for_start() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("rkt: {e}");
            // SAFETY: leaving the container's init without the parent's destructors.
            unsafe { libc::_exit(127) }
        }
    };
    let e = match (|| {
        if let Some(h) = spec.hooks() {
            hooks::run_all(
                h.start_container().as_ref(),
                &hook_state(args, "created", pid),
            )?;
        }
        exec_now(process, filter.as_ref(), &program, &argv_c, &envp_c)
    })() {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = started.write_all(format!("{e}").as_bytes());
    eprintln!("rkt: {e}");
    // SAFETY: leaving the container's init without the parent's destructors.
    unsafe { libc::_exit(127) }
}

/// How init reaches the exec fifo after its root changed: an O_PATH descriptor of the fifo
/// and one of the host's /proc, both opened in the helper (before any namespace, as root
/// of the host), so the fifo is reopened through /proc/self/fd whatever the container has.
struct FifoHandle {
    proc_dir: OwnedFd,
    fifo: OwnedFd,
}

impl FifoHandle {
    fn open(fifo: &Path) -> Result<Self> {
        let path_fd = |p: &Path, extra: OFlag| -> Result<OwnedFd> {
            let fd = open(p, OFlag::O_PATH | OFlag::O_CLOEXEC | extra, Mode::empty())
                .map_err(sys(format!("opening {}", p.display())))?;
            // SAFETY: `open` just returned this descriptor and nothing else owns it.
            Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
        };
        Ok(FifoHandle {
            proc_dir: path_fd(Path::new("/proc"), OFlag::O_DIRECTORY)?,
            fifo: path_fd(fifo, OFlag::empty())?,
        })
    }

    /// Blocks until `rkt start` opens the fifo for reading, tells it init got there (one
    /// byte), and returns the writing end: it closes at exec (start then returns), or
    /// carries the error if the startContainer hooks or exec fail.
    fn wait_for_start(self) -> Result<std::fs::File> {
        use std::os::fd::AsRawFd;
        let name = format!("self/fd/{}", self.fifo.as_raw_fd());
        let fd = nix::fcntl::openat(
            Some(self.proc_dir.as_raw_fd()),
            name.as_str(),
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys("reopening exec.fifo to wait for start"))?;
        // SAFETY: `openat` just returned this descriptor and nothing else owns it.
        let mut f =
            std::fs::File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        f.write_all(b"0")
            .map_err(|e| RuntimeError::Init(format!("writing exec.fifo: {e}")))?;
        Ok(f)
    }
}

/// Everything before exec that may fail: the terminal, the descriptors the process keeps,
/// the seccomp filter (when it may be loaded with privileges), credentials, the working
/// directory.
fn prepare_exec(
    process: &Process,
    preserve_fds: u32,
    terminal: Option<OwnedFd>,
    filter: Option<&libseccomp::ScmpFilterContext>,
) -> Result<()> {
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
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: do it before dropping it.
    if let (Some(f), false) = (filter, process.no_new_privileges().unwrap_or(false)) {
        seccomp::load(f)?;
    }
    process::set_credentials(&Linux, process)?;
    let cwd = process.cwd();
    chdir(cwd).map_err(sys(format!("chdir {}", cwd.display())))
}

/// The last steps and exec: signals back to their defaults, the seccomp filter under
/// no_new_privs (as late as it can be, so that it need not allow rkt's own calls).
fn exec_now(
    process: &Process,
    filter: Option<&libseccomp::ScmpFilterContext>,
    program: &Path,
    argv: &[CString],
    envp: &[CString],
) -> Result<std::convert::Infallible> {
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
    if let (Some(f), true) = (filter, process.no_new_privileges().unwrap_or(false)) {
        seccomp::load(f)?;
    }
    let e = match nix::unistd::execve(&prog, argv, envp) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    Err(RuntimeError::sys(format!("exec {}", program.display()), e))
}

/// Attaches the terminal, drops privileges as the process says, loads the seccomp filter as
/// late as it can, and execs (`rkt exec`).
fn exec_process(
    process: &Process,
    preserve_fds: u32,
    terminal: Option<OwnedFd>,
    filter: Option<&libseccomp::ScmpFilterContext>,
    program: &Path,
    args: &[String],
    env: &[String],
) -> Result<std::convert::Infallible> {
    prepare_exec(process, preserve_fds, terminal, filter)?;
    let (argv, envp) = (cstrings(args)?, cstrings(env)?);
    exec_now(process, filter, program, &argv, &envp)
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
                process::set_rlimits(&Linux, process)?;
                let program = find_program(&argv[0], &env)?;
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

/// Loads `prog` as a cgroup device program and attaches it to the cgroup v2 directory `dir`
/// (BPF_F_ALLOW_MULTI, beside whatever the engine attached: every program must allow).
pub fn attach_device_program(dir: &Path, prog: &[crate::devfilter::Insn]) -> Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd};
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_ATTACH: libc::c_long = 8;
    const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
    const BPF_CGROUP_DEVICE: u32 = 6;
    const BPF_F_ALLOW_MULTI: u32 = 2;
    /// The first fields of union bpf_attr for BPF_PROG_LOAD; the kernel takes the rest as 0.
    #[repr(C)]
    #[derive(Default)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }
    #[repr(C)]
    #[derive(Default)]
    struct ProgAttach {
        target_fd: u32,
        attach_bpf_fd: u32,
        attach_type: u32,
        attach_flags: u32,
    }
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 64 * 1024];
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"rkt_devcg");
    let load = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    // SAFETY: bpf(2) reads `load` (and the instructions and license it points to, alive for
    // the call) and writes at most log_size bytes into `log`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &load as *const ProgLoad,
            std::mem::size_of::<ProgLoad>(),
        )
    };
    if fd < 0 {
        let e = nix::Error::last();
        let verifier =
            String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(0)])
                .trim()
                .to_string();
        return Err(RuntimeError::Init(format!(
            "loading the device cgroup program: {e}{}",
            if verifier.is_empty() {
                String::new()
            } else {
                format!(" ({verifier})")
            }
        )));
    }
    // SAFETY: bpf(2) just returned this descriptor and nothing else owns it.
    let prog_fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let cg = std::fs::File::open(dir).map_err(|e| RuntimeError::io(dir, e))?;
    let attach = ProgAttach {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog_fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    // SAFETY: bpf(2) only reads `attach`; both descriptors are open for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attach as *const ProgAttach,
            std::mem::size_of::<ProgAttach>(),
        )
    };
    if rc < 0 {
        return Err(RuntimeError::sys(
            format!("attaching the device program to {}", dir.display()),
            nix::Error::last(),
        ));
    }
    Ok(())
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
            rootfs::in_root(r, Path::new("/proc")).ok(),
            Some(PathBuf::from("/b/rootfs/proc"))
        );
        assert!(rootfs::in_root(r, Path::new("/../etc")).is_err());
    }

    #[test]
    fn program_lookup_uses_the_container_path() {
        let env = vec!["PATH=/nonexistent:/bin".to_string()];
        assert_eq!(
            find_program("/bin/sh", &env).ok(),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            find_program("sh", &env).ok(),
            Some(PathBuf::from("/bin/sh"))
        );
        let missing = find_program("no-such-program", &env).expect_err("not found");
        assert!(
            missing.to_string().contains("not found in $PATH"),
            "{missing}"
        );
        assert!(find_program("/x/y", &env).is_err());
    }
}
