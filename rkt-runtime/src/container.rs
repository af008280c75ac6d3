//! The lifecycle: create, start, run, state, kill, delete, list, on top of [`crate::linux`] and
//! [`crate::state`].

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::bundle::Bundle;
use crate::cgroup::{self, Cgroup};
use crate::error::{Result, RuntimeError};
use crate::hooks::{self, HookState};
use crate::state::{check_id, proc_stat, Root, Saved, StateJson, Status, OCI_VERSION};

/// How long `delete --force` and `kill` wait for a killed container to go.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Signals `rkt run` forwards to the container instead of dying of them.
const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

fn now_rfc3339() -> String {
    oci_image::now_rfc3339()
}

/// Options of `create` (and `run`).
#[derive(Debug, Default)]
pub struct CreateOptions {
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    /// Descriptors 3..3+N the container's process inherits.
    pub preserve_fds: u32,
    /// chroot instead of pivot_root.
    pub no_pivot: bool,
}

/// Removes a half-made container (directory, cgroup) unless disarmed.
struct Cleanup<'a> {
    dir: &'a Path,
    cgroup: Option<Cgroup>,
    armed: bool,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Some(cg) = &self.cgroup {
                kill_all(cg, Signal::SIGKILL);
                cg.destroy();
            }
            let _ = std::fs::remove_dir_all(self.dir);
        }
    }
}

/// Signals every process in a cgroup.
fn kill_all(cg: &Cgroup, sig: Signal) {
    for p in cg.pids() {
        let _ = kill(Pid::from_raw(p), sig);
    }
}

/// Blocks the forwarded signals and SIGCHLD (so `run` can wait for them); returns the set.
fn block_signals() -> Result<SigSet> {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    set.add(Signal::SIGCHLD);
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(|e| RuntimeError::sys("blocking signals", e))?;
    Ok(set)
}

fn hook_json(s: &Saved, status: &str) -> String {
    HookState {
        oci_version: OCI_VERSION,
        id: &s.id,
        status,
        pid: s.pid,
        bundle: &s.bundle,
        annotations: &s.annotations,
    }
    .json()
}

/// The spec's hooks, read again from the bundle (poststart, poststop).
fn bundle_hooks(s: &Saved) -> Option<oci_spec::runtime::Hooks> {
    let text = std::fs::read_to_string(s.bundle.join("config.json")).ok()?;
    let spec: oci_spec::runtime::Spec = serde_json::from_str(&text).ok()?;
    spec.hooks().clone()
}

/// The resources with an allow rule for each device in `linux.devices` after the config's own
/// rules (as runc does): a listed device is usable even when the rules deny all.
fn with_listed_devices(
    linux: &oci_spec::runtime::Linux,
) -> Option<oci_spec::runtime::LinuxResources> {
    let mut r = linux.resources().clone()?;
    let Some(rules) = r.devices().clone() else {
        return Some(r);
    };
    let mut rules = rules;
    for d in linux.devices().iter().flatten() {
        let typ = match d.typ() {
            oci_spec::runtime::LinuxDeviceType::B => "b",
            oci_spec::runtime::LinuxDeviceType::P => continue,
            _ => "c",
        };
        let rule = serde_json::json!({
            "allow": true, "type": typ, "major": d.major(), "minor": d.minor(), "access": "rwm"
        });
        if let Ok(rule) = serde_json::from_value(rule) {
            rules.push(rule);
        }
    }
    r.set_devices(Some(rules));
    Some(r)
}

/// `create`: set up the container and leave it waiting for `start`.
pub fn create(root: &Root, id: &str, opts: &CreateOptions) -> Result<Saved> {
    check_id(id)?;
    let bundle = Bundle::load(&opts.bundle)?;
    std::fs::create_dir_all(&root.dir).map_err(|e| RuntimeError::io(&root.dir, e))?;
    let dir = root.container_dir(id);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(RuntimeError::Exists(id.to_string()))
        }
        Err(e) => return Err(RuntimeError::io(&dir, e)),
    }
    let mut cleanup = Cleanup {
        dir: &dir,
        cgroup: None,
        armed: true,
    };
    let linux = bundle.spec.linux().clone().unwrap_or_default();
    let rel = cgroup::container_path(linux.cgroups_path().as_deref(), id)?;
    let cg = Cgroup::new(Cgroup::detect_layout()?, rel);
    cg.create(with_listed_devices(&linux).as_ref())?;
    cleanup.cgroup = Some(cg.clone());
    let fifo = root.fifo(id);
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o622))
        .map_err(|e| RuntimeError::sys("creating exec.fifo", e))?;
    // Writable by anyone (the umask took that away): init reopens it as the container's user,
    // perhaps in a user namespace. Only `start` reads it, and only root reaches the directory.
    std::fs::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o622))
        .map_err(|e| RuntimeError::io(&fifo, e))?;
    // Orphaned container processes are re-parented to us, so `run` can reap its init.
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| RuntimeError::sys("becoming a subreaper", e))?;
    let annotations = bundle.spec.annotations().clone().unwrap_or_default();
    let mut runtime_hooks = |pid: i32| -> Result<()> {
        let Some(h) = bundle.spec.hooks() else {
            return Ok(());
        };
        let state = HookState {
            oci_version: OCI_VERSION,
            id,
            status: "creating",
            pid,
            bundle: &bundle.dir,
            annotations: &annotations,
        }
        .json();
        hooks::run_all(h.prestart().as_ref(), &state)?;
        hooks::run_all(h.create_runtime().as_ref(), &state)
    };
    let pid = crate::linux::spawn_init(
        &crate::linux::InitArgs {
            id,
            bundle: &bundle,
            fifo: &fifo,
            cgroup: Some(&cg),
            console_socket: opts.console_socket.as_deref(),
            preserve_fds: opts.preserve_fds,
            no_pivot: opts.no_pivot,
        },
        &mut runtime_hooks,
    )?;
    let pid_start = proc_stat(pid.as_raw())
        .map(|(_, s)| s)
        .ok_or_else(|| RuntimeError::Init("container init vanished".into()))?;
    let saved = Saved {
        id: id.to_string(),
        pid: pid.as_raw(),
        pid_start,
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        created: now_rfc3339(),
        annotations,
        cgroup: Some(cg.rel().to_path_buf()),
    };
    root.save(&saved)?;
    if let Some(p) = &opts.pid_file {
        write_pid_file(p, pid.as_raw())?;
    }
    cleanup.armed = false;
    Ok(saved)
}

/// Writes a pid file atomically, as engines read it as soon as rkt exits.
fn write_pid_file(p: &Path, pid: i32) -> Result<()> {
    let tmp = p.with_extension("rkt-tmp");
    std::fs::write(&tmp, pid.to_string()).map_err(|e| RuntimeError::io(&tmp, e))?;
    std::fs::rename(&tmp, p).map_err(|e| RuntimeError::io(p, e))
}

/// `start`: release a created container's process.
pub fn start(root: &Root, id: &str) -> Result<()> {
    let s = root.load(id)?;
    let status = root.status(&s);
    if status != Status::Created {
        return Err(RuntimeError::WrongState {
            id: id.to_string(),
            status: status.to_string(),
            wanted: "cannot start a container that is not created",
        });
    }
    let fifo = root.fifo(id);
    let outcome = wait_exec(&fifo, &s);
    std::fs::remove_file(&fifo).map_err(|e| RuntimeError::io(&fifo, e))?;
    outcome?;
    if let Some(h) = bundle_hooks(&s) {
        hooks::run_all_logged(
            "poststart",
            h.poststart().as_ref(),
            &hook_json(&s, "running"),
        );
    }
    Ok(())
}

/// Releases the container's init and returns once its process runs (runc's exec fifo): init
/// opens the fifo for writing when it is ready, blocking until we open it for reading,
/// writes one byte, and the fifo closes when it execs. Anything else it writes is why it
/// could not (a failed startContainer hook, exec). Init gone before it writes: an error.
fn wait_exec(fifo: &Path, s: &Saved) -> Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::io::Read;
    use std::os::fd::AsFd;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(fifo)
        .map_err(|e| RuntimeError::io(fifo, e))?;
    let mut got = Vec::new();
    loop {
        let ready = {
            let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::from(100u16))
                .map_err(|e| RuntimeError::sys("waiting on exec.fifo", e))?;
            fds[0].revents().unwrap_or(PollFlags::empty())
        };
        if ready.is_empty() {
            // No writer yet: init may have died before it got there.
            if !crate::state::process_alive(s.pid, s.pid_start) {
                return Err(RuntimeError::Init(
                    "the container's init exited before it was started".into(),
                ));
            }
            continue;
        }
        let mut buf = [0u8; 4096];
        match f.read(&mut buf) {
            // No writer left: it execed (or died).
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(RuntimeError::io(fifo, e)),
        }
    }
    match got.split_first() {
        Some((b'0', [])) => Ok(()),
        Some((b'0', why)) => Err(RuntimeError::Init(
            String::from_utf8_lossy(why).trim().to_string(),
        )),
        _ => Err(RuntimeError::Init(
            "the container's init exited before it was started".into(),
        )),
    }
}

/// `state`: the OCI state document.
pub fn state_json(root: &Root, id: &str) -> Result<String> {
    let s = root.load(id)?;
    let status = root.status(&s);
    let doc = StateJson {
        oci_version: OCI_VERSION,
        id: &s.id,
        pid: if status == Status::Stopped { 0 } else { s.pid },
        status: status.to_string(),
        bundle: &s.bundle,
        rootfs: &s.rootfs,
        created: &s.created,
        annotations: &s.annotations,
    };
    serde_json::to_string_pretty(&doc).map_err(|e| RuntimeError::Init(e.to_string()))
}

/// Parses a signal as runc does: a number, "KILL", or "SIGKILL".
pub fn parse_signal(s: &str) -> Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| RuntimeError::Unsupported(format!("signal {s}")));
    }
    let name = if s.starts_with("SIG") {
        s.to_string()
    } else {
        format!("SIG{s}")
    };
    name.parse::<Signal>()
        .map_err(|_| RuntimeError::Unsupported(format!("unknown signal {s:?}")))
}

/// `kill`: signal the container's init (every process in it with `all`).
pub fn kill_container(root: &Root, id: &str, sig: Signal, all: bool) -> Result<()> {
    let s = root.load(id)?;
    let status = root.status(&s);
    if status == Status::Stopped && !all {
        return Err(RuntimeError::WrongState {
            id: id.to_string(),
            status: status.to_string(),
            wanted: "cannot signal a stopped container",
        });
    }
    if all {
        if let Some(cg) = root.cgroup(&s) {
            kill_all(&cg, sig);
            // Frozen processes only act on signals once thawed.
            if status == Status::Paused && matches!(sig, Signal::SIGKILL | Signal::SIGTERM) {
                let _ = cg.freeze(false);
            }
            return Ok(());
        }
    }
    kill(Pid::from_raw(s.pid), sig).map_err(|e| RuntimeError::sys(format!("signalling {id}"), e))
}

fn wait_gone(root: &Root, s: &Saved) -> bool {
    let deadline = Instant::now() + KILL_WAIT;
    while Instant::now() < deadline {
        if root.status(s) == Status::Stopped {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// `delete`: remove a stopped (or, with force, any) container.
pub fn delete(root: &Root, id: &str, force: bool) -> Result<()> {
    let s = match root.load(id) {
        Ok(s) => s,
        Err(RuntimeError::NotFound(_)) if force => return Ok(()),
        Err(e) => return Err(e),
    };
    let status = root.status(&s);
    match status {
        Status::Stopped => {}
        // A created container has not run anything yet: deleting it kills its waiting init.
        Status::Created => {
            let _ = kill(Pid::from_raw(s.pid), Signal::SIGKILL);
            wait_gone(root, &s);
        }
        Status::Running | Status::Paused if force => {
            let _ = kill(Pid::from_raw(s.pid), Signal::SIGKILL);
            if let Some(cg) = root.cgroup(&s) {
                kill_all(&cg, Signal::SIGKILL);
                let _ = cg.freeze(false);
            }
            if !wait_gone(root, &s) {
                return Err(RuntimeError::Init(format!(
                    "container {id} did not die after SIGKILL"
                )));
            }
        }
        Status::Running | Status::Paused => {
            return Err(RuntimeError::WrongState {
                id: id.to_string(),
                status: status.to_string(),
                wanted: "cannot delete a running container (stop it or use --force)",
            })
        }
    }
    if let Some(cg) = root.cgroup(&s) {
        // Without a pid namespace, processes may outlive init: the cgroup knows them all.
        kill_all(&cg, Signal::SIGKILL);
        cg.destroy();
    }
    let dir = root.container_dir(id);
    std::fs::remove_dir_all(&dir).map_err(|e| RuntimeError::io(&dir, e))?;
    if let Some(h) = bundle_hooks(&s) {
        hooks::run_all_logged("poststop", h.poststop().as_ref(), &hook_json(&s, "stopped"));
    }
    Ok(())
}

fn running(root: &Root, id: &str, action: &'static str) -> Result<(Saved, Cgroup)> {
    let s = root.load(id)?;
    let status = root.status(&s);
    if matches!(status, Status::Stopped | Status::Created) {
        return Err(RuntimeError::WrongState {
            id: id.to_string(),
            status: status.to_string(),
            wanted: action,
        });
    }
    let cg = root
        .cgroup(&s)
        .ok_or_else(|| RuntimeError::Unsupported(format!("container {id} has no cgroup")))?;
    Ok((s, cg))
}

/// `pause`: freeze every process of a running container.
pub fn pause(root: &Root, id: &str) -> Result<()> {
    running(root, id, "cannot pause a container that is not running")?
        .1
        .freeze(true)
}

/// `resume`: thaw a paused container.
pub fn resume(root: &Root, id: &str) -> Result<()> {
    let (s, cg) = running(root, id, "cannot resume a container that is not paused")?;
    if root.status(&s) != Status::Paused {
        return Err(RuntimeError::WrongState {
            id: id.to_string(),
            status: root.status(&s).to_string(),
            wanted: "cannot resume a container that is not paused",
        });
    }
    cg.freeze(false)
}

/// `ps`: host pids of the container's processes.
pub fn pids(root: &Root, id: &str) -> Result<Vec<i32>> {
    let s = root.load(id)?;
    Ok(root.cgroup(&s).map(|c| c.pids()).unwrap_or_default())
}

/// `events --stats`: one stats sample.
pub fn stats(root: &Root, id: &str) -> Result<cgroup::Stats> {
    let (_, cg) = running(
        root,
        id,
        "cannot read stats of a container that is not running",
    )?;
    Ok(cg.stats())
}

/// `update`: apply new resource limits to a container's cgroup.
pub fn update(root: &Root, id: &str, r: &oci_spec::runtime::LinuxResources) -> Result<()> {
    let s = root.load(id)?;
    if root.status(&s) == Status::Stopped {
        return Err(RuntimeError::WrongState {
            id: id.to_string(),
            status: "stopped".into(),
            wanted: "cannot update a stopped container",
        });
    }
    let cg = root
        .cgroup(&s)
        .ok_or_else(|| RuntimeError::Unsupported(format!("container {id} has no cgroup")))?;
    cg.update(r)
}

/// What `rkt exec COMMAND` changes in the container's own process to make the new one.
#[derive(Debug, Default)]
pub struct ExecOverrides {
    pub args: Vec<String>,
    pub tty: bool,
    pub cwd: Option<PathBuf>,
    pub env: Vec<String>,
    pub user: Option<(u32, u32)>,
    pub additional_gids: Vec<u32>,
    pub caps: Vec<String>,
    pub no_new_privs: bool,
}

/// The process `rkt exec COMMAND` runs: the container's process with these changes (as runc).
pub fn exec_process_for(
    root: &Root,
    id: &str,
    o: &ExecOverrides,
) -> Result<oci_spec::runtime::Process> {
    let s = root.load(id)?;
    let spec = Bundle::load(&s.bundle)?.spec;
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(o.args.clone()));
    p.set_terminal(Some(o.tty));
    if let Some(c) = &o.cwd {
        p.set_cwd(c.clone());
    }
    let mut env = p.env().clone().unwrap_or_default();
    for kv in &o.env {
        let key = kv.split('=').next().unwrap_or(kv);
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    p.set_env(Some(env));
    if let Some((uid, gid)) = o.user {
        let mut u = p.user().clone();
        u.set_uid(uid).set_gid(gid);
        p.set_user(u);
    }
    if !o.additional_gids.is_empty() {
        let mut u = p.user().clone();
        u.set_additional_gids(Some(o.additional_gids.clone()));
        p.set_user(u);
    }
    if !o.caps.is_empty() {
        let mut c = p.capabilities().clone().unwrap_or_default();
        for name in &o.caps {
            let cap: oci_spec::runtime::Capability =
                serde_json::from_value(serde_json::Value::String(name.clone()))
                    .map_err(|_| RuntimeError::Unsupported(format!("unknown capability {name}")))?;
            let add = |v: Option<oci_spec::runtime::Capabilities>| {
                let mut v = v.unwrap_or_default();
                v.insert(cap);
                Some(v)
            };
            c.set_bounding(add(c.bounding().clone()));
            c.set_effective(add(c.effective().clone()));
            c.set_permitted(add(c.permitted().clone()));
        }
        p.set_capabilities(Some(c));
    }
    if o.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    Ok(p)
}

/// Options of `exec`.
#[derive(Debug, Default)]
pub struct ExecOptions {
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub detach: bool,
    pub preserve_fds: u32,
}

/// `exec`: run `process` in a running container; returns its exit code (0 with detach).
pub fn exec(
    root: &Root,
    id: &str,
    process: &oci_spec::runtime::Process,
    opts: &ExecOptions,
) -> Result<i32> {
    let s = root.load(id)?;
    let status = root.status(&s);
    if matches!(status, Status::Stopped | Status::Paused) {
        return Err(RuntimeError::WrongState {
            id: id.to_string(),
            status: status.to_string(),
            wanted: "cannot exec in a container that is not running",
        });
    }
    let spec_path = s.bundle.join("config.json");
    let text = std::fs::read_to_string(&spec_path).map_err(|e| RuntimeError::io(&spec_path, e))?;
    let spec: oci_spec::runtime::Spec =
        serde_json::from_str(&text).map_err(|e| RuntimeError::BadConfig {
            path: spec_path.clone(),
            reason: e.to_string(),
        })?;
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    let cg = root.cgroup(&s);
    let set = if opts.detach {
        None
    } else {
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| RuntimeError::sys("becoming a subreaper", e))?;
        Some(block_signals()?)
    };
    let pid = crate::linux::spawn_exec(&crate::linux::ExecArgs {
        init_pid: s.pid,
        process,
        seccomp: seccomp.as_ref(),
        cgroup: cg.as_ref(),
        console_socket: opts.console_socket.as_deref(),
        preserve_fds: opts.preserve_fds,
    })?;
    if let Some(p) = &opts.pid_file {
        write_pid_file(p, pid.as_raw())?;
    }
    match set {
        None => Ok(0),
        Some(set) => wait_forwarding(pid, &set),
    }
}

/// Waits for `pid` (re-parented to us as subreaper), forwarding signals; its exit code.
fn wait_forwarding(pid: Pid, set: &SigSet) -> Result<i32> {
    loop {
        loop {
            match waitpid(
                Pid::from_raw(-1),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            ) {
                Ok(WaitStatus::Exited(p, c)) if p == pid => return Ok(c),
                Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => return Ok(128 + sig as i32),
                Ok(WaitStatus::StillAlive) => break,
                Err(nix::Error::ECHILD) => return Ok(0),
                Err(_) => break,
                Ok(_) => {}
            }
        }
        match set.wait() {
            Ok(Signal::SIGCHLD) => {}
            Ok(sig) => {
                let _ = kill(pid, sig);
            }
            Err(e) => return Err(RuntimeError::sys("waiting for signals", e)),
        }
    }
}

/// `run`: create, start, wait; forwards signals; returns the exit code to exit with.
pub fn run(root: &Root, id: &str, opts: &CreateOptions, detach: bool) -> Result<i32> {
    run_with(root, id, opts, detach, &mut |_| Ok(()), &mut |_| {})
}

/// `run` with steps between: `created` runs once the container exists and before its process
/// starts (a failure deletes it), `started` once it runs (pods set up networking and tell
/// systemd they are ready there).
pub fn run_with(
    root: &Root,
    id: &str,
    opts: &CreateOptions,
    detach: bool,
    created: &mut dyn FnMut(&Saved) -> Result<()>,
    started: &mut dyn FnMut(&Saved),
) -> Result<i32> {
    let set = block_signals()?;
    let s = create(root, id, opts)?;
    if let Err(e) = created(&s).and_then(|_| start(root, id)) {
        let _ = delete(root, id, true);
        return Err(e);
    }
    started(&s);
    if detach {
        return Ok(0);
    }
    let code = wait_forwarding(Pid::from_raw(s.pid), &set);
    let _ = delete(root, id, true);
    code
}

/// `list`: (id, pid, status, bundle, created) of every container.
pub fn list(root: &Root) -> Vec<(String, i32, Status, PathBuf, String)> {
    root.ids()
        .into_iter()
        .filter_map(|id| root.load(&id).ok())
        .map(|s| {
            let st = root.status(&s);
            let pid = if st == Status::Stopped { 0 } else { s.pid };
            (s.id, pid, st, s.bundle, s.created)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_like_runc() {
        assert_eq!(parse_signal("9").ok(), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("TERM").ok(), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("SIGHUP").ok(), Some(Signal::SIGHUP));
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = now_rfc3339();
        assert_eq!(t.len(), "2026-11-22T19:00:00.000000000Z".len());
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T');
    }
}

#[cfg(test)]
mod listed_devices_tests {
    use super::*;

    #[test]
    fn listed_devices_are_allowed_after_the_rules() {
        let linux: oci_spec::runtime::Linux = serde_json::from_value(serde_json::json!({
            "devices": [{"path": "/dev/test1", "type": "c", "major": 1, "minor": 11}],
            "resources": {"devices": [{"allow": false, "access": "rwm"}]}
        }))
        .expect("linux");
        let r = with_listed_devices(&linux).expect("resources");
        let rules = serde_json::to_value(r.devices()).expect("json");
        assert_eq!(
            rules,
            serde_json::json!([
                {"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 1, "minor": 11, "access": "rwm"}
            ])
        );
    }
}
