//! The lifecycle: create, start, run, state, kill, delete, list, on top of [`crate::linux`] and
//! [`crate::state`].

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::bundle::Bundle;
use crate::error::{Result, RuntimeError};
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
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Options of `create` (and `run`).
#[derive(Debug, Default)]
pub struct CreateOptions {
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
}

/// Removes a half-made container directory unless disarmed.
struct Cleanup<'a> {
    dir: &'a Path,
    armed: bool,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_dir_all(self.dir);
        }
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

/// `create`: set up the container and leave it waiting for `start`.
pub fn create(root: &Root, id: &str, opts: &CreateOptions) -> Result<Saved> {
    check_id(id)?;
    if opts.console_socket.is_some() {
        return Err(RuntimeError::Unsupported(
            "--console-socket (terminals) is not implemented yet".into(),
        ));
    }
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
        armed: true,
    };
    let fifo = root.fifo(id);
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o622))
        .map_err(|e| RuntimeError::sys("creating exec.fifo", e))?;
    // Orphaned container processes are re-parented to us, so `run` can reap its init.
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| RuntimeError::sys("becoming a subreaper", e))?;
    let pid = crate::linux::spawn_init(&bundle, &fifo)?;
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
        annotations: bundle.spec.annotations().clone().unwrap_or_default(),
    };
    if let Err(e) = root.save(&saved) {
        let _ = kill(pid, Signal::SIGKILL);
        return Err(e);
    }
    if let Some(p) = &opts.pid_file {
        let write = std::fs::write(p, pid.as_raw().to_string());
        if let Err(e) = write {
            let _ = kill(pid, Signal::SIGKILL);
            return Err(RuntimeError::io(p, e));
        }
    }
    cleanup.armed = false;
    Ok(saved)
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
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .map_err(|e| RuntimeError::io(&fifo, e))?;
    f.write_all(&[0]).map_err(|e| RuntimeError::io(&fifo, e))?;
    std::fs::remove_file(&fifo).map_err(|e| RuntimeError::io(&fifo, e))
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

/// `kill`: signal the container's init.
pub fn kill_container(root: &Root, id: &str, sig: Signal) -> Result<()> {
    let s = root.load(id)?;
    let status = root.status(&s);
    if status == Status::Stopped {
        return Err(RuntimeError::WrongState {
            id: id.to_string(),
            status: status.to_string(),
            wanted: "cannot signal a stopped container",
        });
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
        Status::Running if force => {
            let _ = kill(Pid::from_raw(s.pid), Signal::SIGKILL);
            if !wait_gone(root, &s) {
                return Err(RuntimeError::Init(format!(
                    "container {id} did not die after SIGKILL"
                )));
            }
        }
        Status::Running => {
            return Err(RuntimeError::WrongState {
                id: id.to_string(),
                status: status.to_string(),
                wanted: "cannot delete a running container (stop it or use --force)",
            })
        }
    }
    let dir = root.container_dir(id);
    std::fs::remove_dir_all(&dir).map_err(|e| RuntimeError::io(&dir, e))
}

/// `run`: create, start, wait; forwards signals; returns the exit code to exit with.
pub fn run(root: &Root, id: &str, opts: &CreateOptions, detach: bool) -> Result<i32> {
    let set = block_signals()?;
    let s = create(root, id, opts)?;
    if let Err(e) = start(root, id) {
        let _ = delete(root, id, true);
        return Err(e);
    }
    if detach {
        return Ok(0);
    }
    let pid = Pid::from_raw(s.pid);
    let code = loop {
        match waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, c)) => break c,
            Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
            Ok(_) => {}
            Err(nix::Error::ECHILD) => break 0,
            Err(e) => return Err(RuntimeError::sys("waiting for the container", e)),
        }
        match set.wait() {
            Ok(Signal::SIGCHLD) => {
                // Reap other orphans that were re-parented to us; init is handled above.
                loop {
                    match waitpid(
                        Pid::from_raw(-1),
                        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                    ) {
                        Ok(WaitStatus::Exited(p, c)) if p == pid => {
                            let _ = delete(root, id, true);
                            return Ok(c);
                        }
                        Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => {
                            let _ = delete(root, id, true);
                            return Ok(128 + sig as i32);
                        }
                        Ok(WaitStatus::StillAlive) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            }
            Ok(sig) => {
                let _ = kill(pid, sig);
            }
            Err(e) => return Err(RuntimeError::sys("waiting for signals", e)),
        }
    };
    let _ = delete(root, id, true);
    Ok(code)
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
