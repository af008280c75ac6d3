//! The real `rkt` binary on real bundles (a busybox root filesystem). Needs root: namespaces,
//! mounts and pivot_root are what is being tested.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use test_support::eventually;

mod common;
use common::*;

#[test]
fn run_forwards_exit_code_with_hostname_env_and_private_root() {
    let b = Bundle::new(&["sh", "-c", "echo $(hostname) $FOO; ls /; exit 3"], |v| {
        v["hostname"] = json!("box1");
        v["process"]["env"]
            .as_array_mut()
            .expect("env")
            .push(json!("FOO=bar"));
    });
    let (code, out, err) = b.run("r1");
    assert_eq!(code, 3, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "box1 bar");
    assert!(
        lines.contains(&"bin") && lines.contains(&"proc") && !lines.contains(&"home"),
        "{out}"
    );
    b.assert_gone("r1");
}

#[test]
fn lifecycle_create_start_state_kill_delete() {
    let b = Bundle::new(&["sleep", "60"], |_| {});
    let pidfile = b.path().join("pid");
    let out = b.rkt(&[
        "create",
        "--bundle",
        b.path().to_str().expect("utf-8"),
        "--pid-file",
        pidfile.to_str().expect("utf-8"),
        "c1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = b.state("c1");
    assert_eq!(st["status"], "created");
    assert_eq!(st["ociVersion"], "1.0.2");
    assert_eq!(
        st["pid"].to_string(),
        std::fs::read_to_string(&pidfile).expect("pid file")
    );
    assert_eq!(st["bundle"], json!(b.path().canonicalize().expect("abs")));
    // A second container with the same id is refused and the first is untouched.
    let dup = b.rkt(&["create", "--bundle", ".", "c1"]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("container with id c1 already exists"));
    assert_eq!(b.state("c1")["status"], "created");
    assert!(b.rkt(&["start", "c1"]).status.success());
    assert_eq!(b.state("c1")["status"], "running");
    let list = String::from_utf8_lossy(&b.rkt(&["list", "--format", "json"]).stdout).into_owned();
    assert!(list.contains("\"id\":\"c1\""), "{list}");
    let del = b.rkt(&["delete", "c1"]);
    assert!(
        !del.status.success(),
        "a running container is not deleted without --force"
    );
    assert!(b.rkt(&["kill", "c1", "KILL"]).status.success());
    eventually(Duration::from_secs(5), "container to stop", || {
        b.state("c1")["status"] == "stopped"
    });
    assert!(
        !b.rkt(&["kill", "c1"]).status.success(),
        "a stopped container cannot be signalled"
    );
    assert!(b.rkt(&["delete", "c1"]).status.success());
    b.assert_gone("c1");
    let gone = b.rkt(&["state", "c1"]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("container c1 does not exist"));
    // delete --force of a running container
    assert!(b
        .rkt(&["run", "-d", "--bundle", ".", "c2"])
        .status
        .success());
    assert_eq!(b.state("c2")["status"], "running");
    assert!(b.rkt(&["delete", "--force", "c2"]).status.success());
    b.assert_gone("c2");
}

#[test]
fn credentials_capabilities_rlimits_and_no_new_privs() {
    let script = "id -u; id -g; ulimit -n; grep NoNewPrivs /proc/self/status; hostname x 2>/dev/null && echo renamed || echo refused";
    let b = Bundle::new(&["sh", "-c", script], |v| {
        v["process"]["user"] = json!({"uid": 1000, "gid": 1001});
        v["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 321, "soft": 321}]);
        v["process"]["noNewPrivileges"] = json!(true);
    });
    let (code, out, err) = b.run("u1");
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[..3], ["1000", "1001", "321"], "{out}");
    assert!(lines[3].ends_with('1'), "{out}");
    assert_eq!(
        lines[4], "refused",
        "an unprivileged process cannot set the hostname"
    );
    // The same as root with CAP_SYS_ADMIN kept: the operation works; without it, it fails.
    let with_cap = |caps: &[&str]| {
        Bundle::new(
            &[
                "sh",
                "-c",
                "hostname x 2>/dev/null && echo renamed || echo refused",
            ],
            |v| {
                v["hostname"] = json!("h");
                for set in ["bounding", "effective", "permitted"] {
                    v["process"]["capabilities"][set] = json!(caps);
                }
                v["process"]["capabilities"]["inheritable"] = json!([]);
                v["process"]["capabilities"]["ambient"] = json!([]);
            },
        )
    };
    let (_, out, err) = with_cap(&["CAP_SYS_ADMIN"]).run("cap1");
    assert_eq!(out.trim(), "renamed", "{err}");
    let (_, out, _) = with_cap(&["CAP_KILL"]).run("cap2");
    assert_eq!(out.trim(), "refused");
}

#[test]
fn readonly_root_masked_and_readonly_paths() {
    let b = Bundle::new(&["sh", "-c", "touch /x 2>/dev/null && echo wrote || echo ro; cat /proc/kcore | wc -c; echo 1 > /proc/sys/kernel/hostname 2>/dev/null && echo rw || echo ro"], |v| {
        v["root"]["readonly"] = json!(true);
    });
    let (code, out, err) = b.run("ro1");
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines, ["ro", "0", "ro"], "{out}");
    assert!(!b.path().join("rootfs/x").exists());
}

#[test]
fn sigterm_to_rkt_run_stops_the_container() {
    // The process is pid 1 of its namespace: like any init, it only dies of signals it handles.
    let b = Bundle::new(&["sh", "-c", "trap 'exit 7' TERM; sleep 60 & wait"], |_| {});
    let child = Command::new(RKT)
        .arg("--root")
        .arg(b.state_root())
        .args(["run", "--bundle"])
        .arg(b.path())
        .arg("t1")
        .stdout(Stdio::null())
        .spawn()
        .expect("rkt run");
    eventually(Duration::from_secs(5), "container running", || {
        b.state_root().join("t1").join("state.json").exists()
            && !b.state_root().join("t1/exec.fifo").exists()
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal rkt");
    let status = child.wait_with_output().expect("wait").status;
    assert_eq!(
        status.code(),
        Some(7),
        "the forwarded SIGTERM ran the container's trap"
    );
    b.assert_gone("t1");
}

#[test]
fn bad_bundles_fail_clearly_and_leave_nothing() {
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "version",
            Box::new(|v| v["ociVersion"] = json!("2.0.0")),
            "is not a 1.x runtime spec",
        ),
        (
            "rootfs",
            Box::new(|v| v["root"]["path"] = json!("nowhere")),
            "is not a directory",
        ),
        (
            "nsname",
            Box::new(|v| v["linux"]["namespaces"] = json!([{"type": "bogus"}])),
            "invalid bundle config",
        ),
        (
            "mountopt",
            Box::new(|v| {
                v["mounts"].as_array_mut().expect("mounts").push(json!({"destination": "/data", "type": "tmpfs", "source": "tmpfs", "options": ["readonly"]}))
            }),
            "invalid mount option \"readonly\" for /data",
        ),
        (
            "seccomp",
            Box::new(|v| {
                v["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]})
            }),
            "seccomp: argument index 9",
        ),
        (
            "seccompaction",
            Box::new(|v| v["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_NOPE"})),
            "invalid bundle config",
        ),
        (
            "limits",
            Box::new(|v| v["linux"]["resources"] = json!({"cpu": {"cpus": "4096"}})),
            "cpuset.cpus",
        ),
        (
            "hugepages",
            Box::new(|v| {
                v["linux"]["resources"] =
                    json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 1}]})
            }),
            "unsupported by rkt: hugepage limits",
        ),
        (
            "failinghook",
            Box::new(|v| v["hooks"] = json!({"prestart": [{"path": "/bin/false"}]})),
            "hook /bin/false failed",
        ),
        (
            "tty",
            Box::new(|v| v["process"]["terminal"] = json!(true)),
            "needs --console-socket",
        ),
        (
            "noargs",
            Box::new(|v| v["process"]["args"] = json!([])),
            "process.args must name the program",
        ),
    ];
    for (name, edit, want) in cases {
        let b = Bundle::new(&["true"], edit);
        let name = &uid(name);
        let (code, _, err) = b.run(name);
        assert_ne!(code, 0, "{name} must fail");
        assert!(err.contains(want), "{name}: {err}");
        b.assert_gone(name);
    }
    let b = Bundle::new(&["true"], |_| {});
    std::fs::write(b.path().join("config.json"), "{ not json").expect("write");
    let (code, _, err) = b.run("malformed");
    assert_ne!(code, 0);
    assert!(err.contains("invalid bundle config"), "{err}");
    let (code, _, err) = b.run("bad/id");
    assert_ne!(code, 0);
    assert!(err.contains("invalid container id"), "{err}");
    assert!(
        !b.state_root().exists()
            || std::fs::read_dir(b.state_root())
                .map(|d| d.count())
                .unwrap_or(0)
                == 0
    );
}
