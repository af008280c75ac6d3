//! What the OCI runtime-tools validation suite found (issue 19), each as a test of our own on
//! busybox bundles: device nodes made from linux.devices, containers without namespaces,
//! oomScoreAdj, shared root propagation, `start` returning only once the process was exec'd,
//! and every failure of init failing `create` (non-zero, the reason, nothing left). Needs root.

use std::time::Duration;

use serde_json::{json, Value};

mod common;
use common::*;

fn create(b: &Bundle, id: &str) -> std::process::Output {
    b.rkt(&["create", "--bundle", b.path().to_str().expect("utf-8"), id])
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn devices_in_the_config_are_made_with_their_type_numbers_mode_and_owner() {
    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "stat -c '%F %t:%T %a %u:%g' /dev/test1 /dev/sub/test2 /dev/fifo1",
        ],
        |v| {
            v["linux"]["devices"] = json!([
                {"path": "/dev/test1", "type": "c", "major": 10, "minor": 229,
                 "fileMode": 432, "uid": 1, "gid": 2},
                {"path": "/dev/sub/test2", "type": "b", "major": 7, "minor": 3,
                 "fileMode": 384},
                {"path": "/dev/fifo1", "type": "p"}
            ]);
        },
    );
    let (code, out, err) = b.run(&uid("devices"));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec![
            "character special file a:e5 660 1:2",
            "block special file 7:3 600 0:0",
            "fifo 0:0 666 0:0",
        ],
        "{err}"
    );
}

fn ns_inode(pid: &str, ns: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| panic!("ns {ns} of {pid}: {e}"))
}

#[test]
fn a_container_without_namespaces_shares_every_one_of_the_runtime() {
    let b = Bundle::new(&["sleep", "30"], |v| {
        v["linux"]["namespaces"] = json!([]);
        v["linux"]["maskedPaths"] = json!([]);
        v["linux"]["readonlyPaths"] = json!([]);
        v["root"]["readonly"] = json!(false);
        v.as_object_mut().expect("config").remove("hostname");
    });
    let id = uid("nons");
    let out = create(&b, &id);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid = b.state(&id)["pid"].to_string();
    for ns in ["mnt", "net", "pid", "ipc", "uts", "cgroup"] {
        assert_eq!(
            ns_inode(&pid, ns),
            ns_inode("self", ns),
            "{ns} namespace of the container"
        );
    }
    // Confined to its root all the same.
    let root = std::fs::read_link(format!("/proc/{pid}/root")).expect("root");
    assert_eq!(
        root,
        b.path().join("rootfs").canonicalize().expect("rootfs")
    );
    assert!(b.rkt(&["delete", "--force", &id]).status.success());
    b.assert_gone(&id);
    // Masking paths needs a mount namespace: refused by name, nothing left.
    let b = Bundle::new(&["true"], |v| v["linux"]["namespaces"] = json!([]));
    let id = uid("nonsmask");
    let out = create(&b, &id);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("need a mount namespace"),
        "{}",
        stderr(&out)
    );
    b.assert_gone(&id);
}

#[test]
fn oom_score_adj_is_set() {
    let b = Bundle::new(&["cat", "/proc/self/oom_score_adj"], |v| {
        v["process"]["oomScoreAdj"] = json!(500);
    });
    let (code, out, err) = b.run(&uid("oom"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "500");
}

/// Bind the root at /t, then mount something at /m: a shared root shows it at /t/m too.
const PROPAGATION_PROBE: &str = "mkdir -p /t /m /s && touch /s/f && mount -o rbind / /t && \
     mount -o bind /s /m && if [ -e /t/m/f ]; then echo exposed; else echo hidden; fi";

fn propagation(mode: &str) -> (i32, String, String) {
    let b = Bundle::new(&["sh", "-c", PROPAGATION_PROBE], |v| {
        v["linux"]["rootfsPropagation"] = json!(mode);
        v["root"]["readonly"] = json!(false);
        v["linux"].as_object_mut().expect("linux").remove("seccomp");
        for set in ["bounding", "effective", "permitted"] {
            if let Some(list) = v["process"]["capabilities"][set].as_array_mut() {
                list.push(json!("CAP_SYS_ADMIN"));
            }
        }
    });
    b.run(&uid(&format!("prop{mode}")))
}

#[test]
fn root_propagation_shared_slave_private_and_unbindable() {
    let (code, out, err) = propagation("shared");
    assert_eq!(code, 0, "shared: {err}");
    assert_eq!(out.trim(), "exposed", "shared: {err}");
    for mode in ["slave", "private"] {
        let (code, out, err) = propagation(mode);
        assert_eq!(code, 0, "{mode}: {err}");
        assert_eq!(out.trim(), "hidden", "{mode}: {err}");
    }
    // An unbindable root cannot be bound.
    let (code, _, err) = propagation("unbindable");
    assert_ne!(code, 0, "binding an unbindable root must fail");
    assert!(err.contains("Invalid argument"), "{err}");
    // Not a propagation: refused at create.
    let (code, _, err) = propagation("sideways");
    assert_ne!(code, 0);
    assert!(err.contains("linux.rootfsPropagation"), "{err}");
}

#[test]
fn start_returns_once_the_process_was_executed() {
    let comm = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .expect("comm")
            .trim()
            .to_string()
    };
    let b = Bundle::new(&["sleep", "30"], |_| {});
    for round in 0..5 {
        let id = uid(&format!("started{round}"));
        let out = create(&b, &id);
        assert!(out.status.success(), "{}", stderr(&out));
        let pid = b.state(&id)["pid"].to_string();
        assert_eq!(comm(&pid), "rkt", "a created container waits in rkt's init");
        let out = b.rkt(&["start", &id]);
        assert!(out.status.success(), "{}", stderr(&out));
        // No waiting: when start returns, the process is the container's program.
        assert_eq!(
            comm(&pid),
            "sleep",
            "start returned before exec (round {round})"
        );
        assert_eq!(b.state(&id)["status"], "running");
        assert!(b.rkt(&["delete", "--force", &id]).status.success());
        b.assert_gone(&id);
    }
}

#[test]
fn whatever_init_cannot_do_fails_create_with_the_reason_and_leaves_nothing() {
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            // runc's own default config had ambient capabilities without inheritable ones.
            "ambient",
            Box::new(|v| {
                v["process"]["capabilities"] = json!({
                    "bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                    "permitted": ["CAP_KILL"], "ambient": ["CAP_KILL"]})
            }),
            "ambient CAP_KILL is not in both permitted and inheritable",
        ),
        (
            "program",
            Box::new(|v| v["process"]["args"] = json!(["no-such-program"])),
            "executable file not found in $PATH",
        ),
        (
            "cwd",
            Box::new(|v| v["process"]["cwd"] = json!("/no/such/dir")),
            "chdir /no/such/dir",
        ),
        (
            "rlimit",
            Box::new(|v| {
                v["process"]["rlimits"] =
                    json!([{"type": "RLIMIT_NOFILE", "soft": 4096, "hard": 1024}])
            }),
            "setrlimit RLIMIT_NOFILE",
        ),
    ];
    for (name, edit, want) in cases {
        let b = Bundle::new(&["true"], edit);
        let id = uid(name);
        let out = create(&b, &id);
        assert!(!out.status.success(), "{name}: create must fail");
        assert!(stderr(&out).contains(want), "{name}: {}", stderr(&out));
        b.assert_gone(&id);
    }
    // A startContainer hook fails after create: start fails with it.
    let b = Bundle::new(&["true"], |v| {
        v["hooks"] = json!({"startContainer": [{"path": "/bin/false"}]})
    });
    let id = uid("starthook");
    let out = create(&b, &id);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = b.rkt(&["start", &id]);
    assert!(!out.status.success(), "start must fail with its hook");
    assert!(
        stderr(&out).contains("hook /bin/false failed"),
        "{}",
        stderr(&out)
    );
    test_support::eventually(Duration::from_secs(5), "container to stop", || {
        b.state(&id)["status"] == "stopped"
    });
    assert!(b.rkt(&["delete", &id]).status.success());
    b.assert_gone(&id);
}

/// The cgroup v2 mount on this host (the unified hierarchy of a hybrid layout, or all of it).
fn cgroup2_mount() -> std::path::PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            (right.split(' ').next() == Some("cgroup2")).then(|| std::path::PathBuf::from(point))
        })
        .expect("no cgroup2 filesystem mounted: the device program needs one")
}

#[test]
fn device_rules_on_cgroup_v2_are_an_ebpf_program_the_kernel_enforces() {
    require_root();
    let dir = cgroup2_mount().join(uid("rkt-devcg-test"));
    std::fs::create_dir(&dir).expect("cgroup dir");
    let rules: Vec<oci_spec::runtime::LinuxDeviceCgroup> = serde_json::from_value(json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "r"}
    ]))
    .expect("rules");
    rkt_runtime::linux::attach_device_program(&dir, &rkt_runtime::devfilter::program(&rules))
        .expect("load and attach");
    let probe = |cmd: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > {}/cgroup.procs && {cmd}", dir.display()))
            .output()
            .expect("sh");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (read_null, err) = probe("cat /dev/null");
    assert!(read_null, "reading /dev/null is allowed: {err}");
    let (write_null, err) = probe("echo x > /dev/null");
    assert!(!write_null, "writing /dev/null is not");
    assert!(err.contains("Operation not permitted"), "{err}");
    let (zero, _) = probe("head -c 1 /dev/zero >/dev/null");
    assert!(!zero, "/dev/zero is not listed");
    std::fs::remove_dir(&dir).expect("remove the cgroup");
}

#[test]
fn a_listed_device_is_usable_when_the_cgroup_rules_deny_all() {
    // /dev/net/tun's numbers (opening it makes nothing until an ioctl); /unlisted is a node
    // with /dev/fuse's numbers that only the root filesystem has: the rules still deny it.
    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "exec 3</dev/test1 && echo opened; (exec 4</unlisted) || echo refused",
        ],
        |v| {
            v["linux"]["devices"] = json!([
                {"path": "/dev/test1", "type": "c", "major": 10, "minor": 200, "fileMode": 384}
            ]);
            v["linux"]["resources"] = json!({"devices": [{"allow": false, "access": "rwm"}]});
        },
    );
    nix::sys::stat::mknod(
        &b.path().join("rootfs/unlisted"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(10, 229),
    )
    .expect("mknod in the bundle");
    let (code, out, err) = b.run(&uid("listeddev"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["opened", "refused"],
        "{err}"
    );
    assert!(err.contains("Operation not permitted"), "{err}");
}
