//! cgroups, seccomp, exec, terminals, pause/resume, hooks: the real `rkt` on busybox bundles,
//! checked from the host (cgroup files, /proc) and from inside the container. Needs root.
// Receiving a terminal over SCM_RIGHTS hands us a raw descriptor to own.
#![allow(unsafe_code)]

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use serde_json::{json, Value};
use test_support::eventually;

mod common;
use common::*;

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(b: &Bundle, args: &[&str]) -> String {
    let out = b.rkt(args);
    let (o, e) = text(&out);
    assert!(out.status.success(), "rkt {args:?}: {e}");
    o
}

#[test]
fn memory_limit_oom_kills_and_pids_limit_stops_forks() {
    let b = Bundle::new(
        // dd holds a 64 MiB buffer: over a 16 MiB limit it is OOM-killed.
        &["sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max; dd if=/dev/zero of=/dev/null bs=64M count=1; echo dd=$?"],
        |v| {
            v["linux"]["resources"] = json!({"memory": {"limit": 16 << 20}, "pids": {"limit": 20}});
            v["linux"]["cgroupsPath"] = json!(format!("/rkt-test/oom-{}", std::process::id()));
        },
    );
    let id = uid("oom");
    let (code, out, err) = b.run(&id);
    assert_eq!(out.lines().next(), Some("16777216"), "{out} {err}");
    assert_eq!(out.lines().nth(1), Some("20"), "{out}");
    // The shell reports its child's death by SIGKILL (the OOM killer's signal).
    assert!(out.contains("dd=137"), "dd was not OOM-killed: {out} {err}");
    assert_eq!(code, 0, "{out} {err}");
    for d in cgroup_dirs(&format!("/rkt-test/oom-{}", std::process::id())) {
        assert!(!d.exists(), "cgroup {} left behind", d.display());
    }

    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 5 & done 2>&1; wait; echo done",
        ],
        |v| v["linux"]["resources"] = json!({"pids": {"limit": 5}}),
    );
    let id = uid("pids");
    let (_, out, err) = b.run(&id);
    let all = format!("{out}{err}");
    assert!(
        all.contains("can't fork") || all.contains("Resource temporarily unavailable"),
        "forks past pids.max must fail: {all}"
    );
    b.assert_gone(&id);
}

#[test]
fn seccomp_filter_blocks_a_syscall_with_its_errno() {
    let b = Bundle::new(
        &["sh", "-c", "mkdir /tmp/a; echo mkdir=$?; grep Seccomp: /proc/self/status; touch /tmp/f && echo touched"],
        |v| {
            v["root"]["readonly"] = json!(false);
            v["process"]["noNewPrivileges"] = json!(true);
            v["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
            });
        },
    );
    std::fs::create_dir_all(b.path().join("rootfs/tmp")).expect("tmp");
    let id = uid("seccomp");
    let (code, out, err) = b.run(&id);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("mkdir=1"), "{out}");
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(out.contains("Seccomp:\t2"), "filter mode expected: {out}");
    assert!(out.contains("touched"), "other syscalls still work: {out}");
    b.assert_gone(&id);

    // Without no_new_privs the filter is loaded while rkt still holds CAP_SYS_ADMIN.
    let b = Bundle::new(&["sh", "-c", "mkdir /m; echo mkdir=$?"], |v| {
        v["root"]["readonly"] = json!(false);
        v["process"]["noNewPrivileges"] = json!(false);
        v["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]});
    });
    let (code, out, _) = b.run(&uid("seccomp-nnp"));
    assert_eq!(code, 0);
    assert!(out.contains("mkdir=1"), "{out}");
}

#[test]
fn exec_pause_resume_ps_events_update_and_kill_all() {
    let b = Bundle::new(&["sleep", "300"], |v| {
        v["process"]["env"]
            .as_array_mut()
            .expect("env")
            .push(json!("FROM_SPEC=yes"));
    });
    let id = uid("exec");
    ok(
        &b,
        &["create", "--bundle", b.path().to_str().expect("utf-8"), &id],
    );
    let out = b.rkt(&["exec", &id, "true"]);
    assert!(
        out.status.success(),
        "exec in a created container works as in runc"
    );
    ok(&b, &["start", &id]);
    let init = b.state(&id)["pid"].as_i64().expect("pid");

    // exec: joins the namespaces, keeps the spec's env, adds -e, forwards the exit code.
    let out = b.rkt(&[
        "exec",
        "-e",
        "EXTRA=1",
        &id,
        "sh",
        "-c",
        "echo $FROM_SPEC $EXTRA; readlink /proc/1/exe; exit 5",
    ]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(5), "{o} {e}");
    assert!(o.starts_with("yes 1\n"), "{o}");
    assert!(
        o.contains("busybox"),
        "pid 1 of the container's pid namespace: {o}"
    );
    // exec with a process.json, detached, with a pid file.
    let pj = b.path().join("process.json");
    std::fs::write(
        &pj,
        json!({"args": ["sleep", "200"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"]}).to_string(),
    )
    .expect("process.json");
    let pidf = b.path().join("exec.pid");
    ok(
        &b,
        &[
            "exec",
            "--detach",
            "--pid-file",
            pidf.to_str().expect("utf-8"),
            "--process",
            pj.to_str().expect("utf-8"),
            &id,
        ],
    );
    let exec_pid: i64 = std::fs::read_to_string(&pidf)
        .expect("pid file")
        .parse()
        .expect("pid");
    let ps: Vec<i64> =
        serde_json::from_str(&ok(&b, &["ps", "--format", "json", &id])).expect("ps json");
    assert!(
        ps.contains(&init) && ps.contains(&exec_pid),
        "{ps:?} {init} {exec_pid}"
    );
    let table = ok(&b, &["ps", &id]);
    assert!(
        table.lines().next().is_some_and(|h| h.contains("PID")),
        "{table}"
    );
    assert!(table.contains("sleep 200"), "{table}");

    // pause/resume through the freezer: state says so, exec is refused while paused.
    ok(&b, &["pause", &id]);
    assert_eq!(b.state(&id)["status"], "paused");
    let out = b.rkt(&["exec", &id, "true"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("is paused"), "{}", text(&out).1);
    let out = b.rkt(&["start", &id]);
    assert!(!out.status.success());
    ok(&b, &["resume", &id]);
    assert_eq!(b.state(&id)["status"], "running");
    let out = b.rkt(&["resume", &id]);
    assert!(text(&out).1.contains("not paused"), "{}", text(&out).1);

    // events --stats and update.
    let ev: Value = serde_json::from_str(&ok(&b, &["events", "--stats", &id])).expect("event");
    assert_eq!(ev["type"], "stats");
    assert_eq!(ev["data"]["pids_current"], 2, "{ev}");
    assert!(
        ev["data"]["memory_usage_bytes"].as_u64().unwrap_or(0) > 0,
        "{ev}"
    );
    ok(&b, &["update", "--pids-limit", "7", "--memory", "48m", &id]);
    let ev: Value = serde_json::from_str(&ok(&b, &["events", "--stats", &id])).expect("event");
    assert_eq!(ev["data"]["pids_limit"], 7, "{ev}");
    assert_eq!(ev["data"]["memory_limit_bytes"], 48 << 20, "{ev}");
    let out = b.rkt(&["update", "--memory", "lots", &id]);
    assert!(text(&out).1.contains("is not a size"), "{}", text(&out).1);

    // kill --all reaches the exec'd process too; delete removes the cgroup.
    ok(&b, &["kill", "--all", &id, "KILL"]);
    eventually(Duration::from_secs(5), "container stopped", || {
        b.state(&id)["status"] == "stopped"
    });
    let out = b.rkt(&["exec", &id, "true"]);
    assert!(text(&out).1.contains("is stopped"), "{}", text(&out).1);
    ok(&b, &["delete", &id]);
    b.assert_gone(&id);
}

/// Accepts one connection on a console socket and returns the terminal master sent over it.
fn receive_master(listener: UnixListener) -> std::thread::JoinHandle<(String, OwnedFd)> {
    std::thread::spawn(move || {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::os::fd::AsRawFd;
        let (conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 256];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .expect("recvmsg");
        let mut fd = None;
        for c in msg.cmsgs().expect("cmsgs") {
            if let ControlMessageOwned::ScmRights(fds) = c {
                fd = fds.first().copied();
            }
        }
        let n = msg.bytes;
        let name = String::from_utf8_lossy(&buf[..n]).into_owned();
        // SAFETY: the kernel just installed this descriptor for us.
        (name, unsafe {
            OwnedFd::from_raw_fd(fd.expect("an fd was sent"))
        })
    })
}

fn read_all(master: OwnedFd) -> String {
    let mut f = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    // EIO once the last slave is closed: that is the end of the terminal's output.
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn terminal_goes_to_the_console_socket_for_run_and_exec() {
    let b = Bundle::new(
        &["sh", "-c", "tty; [ -t 0 ] && echo stdin-is-tty; exit 4"],
        |v| {
            v["process"]["terminal"] = json!(true);
        },
    );
    let sock = b.path().join("console.sock");
    let rx = receive_master(UnixListener::bind(&sock).expect("bind"));
    let id = uid("tty");
    let out = b.rkt(&[
        "run",
        "--console-socket",
        sock.to_str().expect("utf-8"),
        "--bundle",
        b.path().to_str().expect("utf-8"),
        &id,
    ]);
    let (name, master) = rx.join().expect("receiver");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out).1);
    assert!(name.starts_with("/dev/pts/"), "{name}");
    let seen = read_all(master);
    assert!(
        seen.contains("/dev/pts/0\r\n") && seen.contains("stdin-is-tty"),
        "{seen:?}"
    );
    b.assert_gone(&id);

    // exec -t into a running container without a terminal of its own.
    let b = Bundle::new(&["sleep", "100"], |_| {});
    let id = uid("exectty");
    ok(
        &b,
        &[
            "run",
            "-d",
            "--bundle",
            b.path().to_str().expect("utf-8"),
            &id,
        ],
    );
    let sock = b.path().join("exec.sock");
    let rx = receive_master(UnixListener::bind(&sock).expect("bind"));
    let out = b.rkt(&[
        "exec",
        "-t",
        "--console-socket",
        sock.to_str().expect("utf-8"),
        &id,
        "sh",
        "-c",
        "tty; exit 6",
    ]);
    let (_, master) = rx.join().expect("receiver");
    assert_eq!(out.status.code(), Some(6), "{}", text(&out).1);
    assert!(read_all(master).contains("/dev/pts/"));
    let out = b.rkt(&["exec", "-t", &id, "true"]);
    assert!(
        text(&out).1.contains("needs --console-socket"),
        "{}",
        text(&out).1
    );
    ok(&b, &["delete", "--force", &id]);
    b.assert_gone(&id);
}

#[test]
fn hooks_run_in_order_with_the_state_on_stdin() {
    let log = tempfile::NamedTempFile::new().expect("log");
    let logp = log.path().to_str().expect("utf-8").to_string();
    let hook = |kind: &str| json!([{"path": "/bin/sh", "args": ["sh", "-c", format!("printf '{kind} ' >> {logp}; cat >> {logp}; echo >> {logp}")]}]);
    let b = Bundle::new(&["true"], |v| {
        v["hooks"] = json!({
            "prestart": hook("prestart"),
            "createRuntime": hook("createRuntime"),
            "createContainer": hook("createContainer"),
            "poststart": hook("poststart"),
            "poststop": hook("poststop"),
        });
        // startContainer runs inside the container: busybox sh is there, the log is not.
        v["hooks"]["startContainer"] = json!([{"path": "/bin/sh", "args": ["sh", "-c", "cat > /dev/null; echo start-hook-ran"]}]);
    });
    let id = uid("hooks");
    let (code, out, err) = b.run(&id);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("start-hook-ran"), "{out}");
    let text = std::fs::read_to_string(log.path()).expect("log");
    let kinds: Vec<&str> = text.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(
        kinds,
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "poststart",
            "poststop"
        ],
        "{text}"
    );
    for line in text.lines() {
        let state: Value =
            serde_json::from_str(line.split_once(' ').expect("kind state").1).expect("state json");
        assert_eq!(state["id"], id.as_str(), "{line}");
        assert!(state["pid"].as_i64().unwrap_or(0) > 0, "{line}");
        assert_eq!(
            state["bundle"],
            b.path()
                .canonicalize()
                .expect("canon")
                .to_str()
                .expect("utf-8")
        );
    }
    assert!(
        text.contains("poststop {") && text.contains("\"status\":\"stopped\""),
        "{text}"
    );
    b.assert_gone(&id);
}

#[test]
fn user_namespace_maps_root_to_an_unprivileged_host_uid() {
    let b = Bundle::new(&["sleep", "100"], |v| {
        v["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces")
            .push(json!({"type": "user"}));
        v["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
        v["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    });
    // The container's root is host uid 200000: it must reach the bundle and, as with any
    // user-namespaced container, own its root filesystem.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(b.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let rootfs = b.path().join("rootfs");
    let mut todo = vec![rootfs];
    while let Some(p) = todo.pop() {
        std::os::unix::fs::lchown(&p, Some(200000), Some(200000)).expect("chown");
        if p.is_dir() && !p.is_symlink() {
            todo.extend(
                std::fs::read_dir(&p)
                    .expect("dir")
                    .map(|e| e.expect("entry").path()),
            );
        }
    }
    let id = uid("userns");
    ok(
        &b,
        &[
            "run",
            "-d",
            "--bundle",
            b.path().to_str().expect("utf-8"),
            &id,
        ],
    );
    let pid = b.state(&id)["pid"].as_i64().expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uids = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    assert_eq!(uids.split_whitespace().nth(1), Some("200000"), "{uids}");
    // exec joins the user namespace too.
    let out = b.rkt(&["exec", &id, "sh", "-c", "id -u; cat /proc/self/uid_map"]);
    let (o, e) = text(&out);
    assert!(out.status.success(), "{e}");
    let mut lines = o.lines();
    assert_eq!(lines.next(), Some("0"), "{o}");
    assert_eq!(
        lines
            .next()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["0", "200000", "65536"]),
        "{o}"
    );
    ok(&b, &["delete", "--force", &id]);
    b.assert_gone(&id);

    let b = Bundle::new(&["true"], |v| {
        v["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces")
            .push(json!({"type": "user"}));
    });
    let id = uid("nomaps");
    let (code, _, err) = b.run(&id);
    assert_ne!(code, 0);
    assert!(err.contains("needs linux.uidMappings"), "{err}");
    b.assert_gone(&id);
}

#[test]
fn preserved_fds_reach_the_process_and_no_pivot_chroots() {
    let b = Bundle::new(&["sh", "-c", "echo via-fd3 >&3; ls /bin/busybox"], |_| {});
    let id = uid("fds");
    let got = b.path().join("fd3.txt");
    let script = format!(
        "exec 3>{}; exec {RKT} --root {} run --preserve-fds 1 --no-pivot --bundle {} {id}",
        got.display(),
        b.state_root().display(),
        b.path().display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("sh");
    let (o, e) = text(&out);
    assert!(out.status.success(), "{o} {e}");
    assert_eq!(o, "/bin/busybox\n");
    assert_eq!(
        std::fs::read_to_string(&got).expect("fd3 file"),
        "via-fd3\n"
    );
    b.assert_gone(&id);

    // Without --preserve-fds the descriptor is not inherited.
    let script = format!(
        "exec 3>{}; exec {RKT} --root {} run --bundle {} {id}",
        got.display(),
        b.state_root().display(),
        b.path().display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("sh");
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(
        text(&out).1.contains("Bad file descriptor"),
        "{:?}",
        text(&out)
    );
    assert_eq!(std::fs::read_to_string(&got).unwrap_or_default(), "");
}

/// This host's controllers all live in v1 hierarchies, so v2 limits cannot be tried here (the
/// qemu image tests do). The v2 code paths that need no controller can: in a private mount
/// namespace, /sys/fs/cgroup is replaced by the unified hierarchy alone.
#[test]
fn unified_cgroup_layout_create_freeze_kill_and_remove() {
    let b = Bundle::new(&["sleep", "100"], |_| {});
    let id = uid("v2");
    let root = b.state_root();
    let script = format!(
        r#"set -e
umount -R /sys/fs/cgroup
mount -t cgroup2 none /sys/fs/cgroup
R="{RKT} --root {root}"
$R run -d --bundle {bundle} {id}
test -d /sys/fs/cgroup/rkt/{id}
echo procs=$(cat /sys/fs/cgroup/rkt/{id}/cgroup.procs | wc -l)
$R pause {id}
echo frozen=$(grep frozen /sys/fs/cgroup/rkt/{id}/cgroup.events)
$R state {id} | grep -q '"paused"'
$R resume {id}
$R exec {id} true
$R kill --all {id} KILL
for i in $(seq 50); do $R state {id} | grep -q stopped && break; sleep 0.1; done
$R delete {id}
test ! -e /sys/fs/cgroup/rkt/{id} && echo removed
"#,
        root = root.display(),
        bundle = b.path().display(),
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("unshare");
    let (o, e) = text(&out);
    assert!(out.status.success(), "{o}\n{e}");
    assert!(
        o.contains("procs=1") && o.contains("frozen=frozen 1") && o.contains("removed"),
        "{o}"
    );

    // A limit whose controller the hierarchy lacks is a clear error, and nothing is left.
    let b = Bundle::new(&["true"], |v| {
        v["linux"]["resources"] = json!({"pids": {"limit": 10}})
    });
    let id = uid("v2limit");
    let script = format!(
        "umount -R /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && {RKT} --root {} run --bundle {} {id}; echo rc=$?; test -e /sys/fs/cgroup/rkt/{id} || echo clean",
        b.state_root().display(),
        b.path().display()
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    let (o, e) = text(&out);
    assert!(o.contains("rc=1") && o.contains("clean"), "{o} {e}");
    assert!(e.contains("pids.max"), "{e}");
    b.assert_gone(&id);
}
