//! The real podman drives rkt through its OCI runtime interface (conmon calls `rkt create`,
//! `start`, `exec`, `kill`, `delete`, with a console socket for -t). Every scenario runs with
//! runc too, as the control: a difference is rkt's bug. Needs root, podman and runc (`make
//! deps`). Each run has its own podman storage and no network, so the host is not touched.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::*;

struct Podman {
    dir: tempfile::TempDir,
    runtime: PathBuf,
}

fn which(tool: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .expect("sh");
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !p.is_empty(),
        "{tool} is not installed: run `make deps` (podman, runc)"
    );
    PathBuf::from(p)
}

impl Podman {
    fn new(runtime: PathBuf) -> Self {
        require_root();
        which("podman");
        let dir = tempfile::Builder::new()
            .prefix("rkt-podman")
            .tempdir()
            .expect("tempdir");
        let p = Podman { dir, runtime };
        // An image from a busybox root filesystem, without any registry.
        let rootfs = p.dir.path().join("rootfs");
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin).expect("rootfs");
        std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox");
        for app in [
            "sh", "echo", "cat", "sleep", "dd", "tty", "id", "hostname", "grep",
        ] {
            std::os::unix::fs::symlink("busybox", bin.join(app)).expect("link");
        }
        let tar = p.dir.path().join("rootfs.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("tar");
        assert!(st.success());
        let out = p.podman(&[
            "import",
            tar.to_str().expect("utf-8"),
            "localhost/rkt-bb:test",
        ]);
        assert!(out.status.success(), "import: {}", err(&out));
        p
    }

    fn base_args(&self) -> Vec<String> {
        let d = self.dir.path();
        vec![
            format!("--root={}", d.join("storage").display()),
            format!("--runroot={}", d.join("run").display()),
            format!("--tmpdir={}", d.join("tmp").display()),
            "--cgroup-manager=cgroupfs".into(),
            "--events-backend=file".into(),
            format!("--runtime={}", self.runtime.display()),
        ]
    }

    fn podman(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .args(self.base_args())
            .args(args)
            .output()
            .expect("podman")
    }

    /// `podman run --rm` with the flags this host needs (no network, rlimits it allows).
    fn run(&self, flags: &[&str], cmd: &[&str]) -> Output {
        let mut a = vec![
            "run",
            "--rm",
            "--network=none",
            "--ulimit=nofile=1024:1024",
            "--ulimit=nproc=1024:1024",
        ];
        a.extend_from_slice(flags);
        a.push("localhost/rkt-bb:test");
        a.extend_from_slice(cmd);
        self.podman(&a)
    }

    /// The same through a pseudo-terminal (podman -it needs one on our side too).
    /// Runs `cmd` under `podman run -it` on a fresh pseudo-terminal (`script`), returning what
    /// the terminal showed and podman's exit status.
    fn run_tty(&self, cmd: &str) -> (String, Option<i32>) {
        let mut line: Vec<String> = vec!["podman".into()];
        line.extend(self.base_args());
        line.extend(
            [
                "run",
                "-it",
                "--rm",
                "--network=none",
                "--ulimit=nofile=1024:1024",
                "--ulimit=nproc=1024:1024",
                "localhost/rkt-bb:test",
                "sh",
                "-c",
            ]
            .map(String::from),
        );
        let quoted: Vec<String> = line
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .chain([format!("'{cmd}'")])
            .collect();
        let out = Command::new("script")
            .args(["-qec", &quoted.join(" "), "/dev/null"])
            .output()
            .expect("script");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.code(),
        )
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "--all", "--force", "--time=0"]);
        let _ = self.podman(&["rmi", "--all", "--force"]);
        // The storage driver keeps its own mount of the layer store until told to let go.
        let storage = self.dir.path().join("storage");
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let mut ours: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(1))
                .filter(|m| {
                    Path::new(m).starts_with(&storage) || Path::new(m).starts_with(self.dir.path())
                })
                .collect();
            ours.reverse();
            for m in ours {
                let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn libpod_cgroup(id: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup/memory/libpod_parent").join(format!("libpod-{id}"))
}

fn scenario(runtime: PathBuf) {
    let name = runtime.display().to_string();
    let p = Podman::new(runtime);

    let o = p.run(&[], &["echo", "hello"]);
    assert_eq!(out(&o), "hello\n", "{name}: {}", err(&o));

    let o = p.run(&[], &["sh", "-c", "exit 42"]);
    assert_eq!(o.status.code(), Some(42), "{name}: exit code forwarded");

    // Limits reach the kernel, seen from inside the container as on this (v1) host.
    let o = p.run(
        &["--memory=32m", "--pids-limit=30"],
        &[
            "cat",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/pids/pids.max",
        ],
    );
    assert_eq!(out(&o), "33554432\n30\n", "{name}: {}", err(&o));
    let o = p.run(
        &["--memory=16m"],
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    assert_eq!(o.status.code(), Some(137), "{name}: OOM kill: {}", err(&o));
    // The limit leaves room for the runtime's own start in the container's cgroup (runc's
    // Go init needs a few threads there; at 4 it sometimes failed with pthread_create EAGAIN
    // before the shell ran), and the shell's 16 children go past it.
    let o = p.run(
        &["--pids-limit=12"],
        &["sh", "-c", "for i in $(seq 16); do sleep 2 & done; wait"],
    );
    assert!(err(&o).contains("can't fork"), "{name}: {}", err(&o));

    // Podman's default seccomp profile is loaded (mode 2 = filter).
    let o = p.run(&[], &["grep", "Seccomp:", "/proc/self/status"]);
    assert!(out(&o).contains("Seccomp:\t2"), "{name}: {}", out(&o));

    // -d, exec, pause/unpause, stop, rm.
    let o = p.podman(&[
        "run",
        "-d",
        "--name=web",
        "--network=none",
        "--ulimit=nofile=1024:1024",
        "--ulimit=nproc=1024:1024",
        "localhost/rkt-bb:test",
        "sleep",
        "300",
    ]);
    assert!(o.status.success(), "{name}: {}", err(&o));
    let id = out(&o).trim().to_string();
    let o = p.podman(&["exec", "web", "sh", "-c", "echo $((40+2)); hostname"]);
    assert!(
        out(&o).starts_with("42\n"),
        "{name}: {} {}",
        out(&o),
        err(&o)
    );
    let o = p.podman(&["exec", "web", "sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{name}");
    assert!(p.podman(&["pause", "web"]).status.success(), "{name} pause");
    let o = p.podman(&["inspect", "--format={{.State.Status}}", "web"]);
    assert_eq!(out(&o).trim(), "paused", "{name}");
    assert!(
        p.podman(&["unpause", "web"]).status.success(),
        "{name} unpause"
    );
    assert!(libpod_cgroup(&id).exists(), "{name}: container cgroup");
    let o = p.podman(&["stop", "--time=1", "web"]);
    assert!(o.status.success(), "{name}: {}", err(&o));
    let o = p.podman(&["rm", "web"]);
    assert!(o.status.success(), "{name}: {}", err(&o));
    assert!(!libpod_cgroup(&id).exists(), "{name}: cgroup left behind");

    // -it: the terminal arrives over conmon's console socket. The container stays a moment
    // after printing: podman 4.3's attach can lose the console output of a container that is
    // already gone when it connects (seen once with runc in CI), which is not what this checks.
    let (t, code) = p.run_tty("tty; echo on-a-tty; sleep 1");
    assert!(
        t.contains("/dev/pts/0") && t.contains("on-a-tty"),
        "{name}: terminal showed {t:?}, podman exited {code:?}"
    );
    assert_eq!(code, Some(0), "{name}: {t:?}");
}

#[test]
fn podman_drives_rkt() {
    scenario(PathBuf::from(RKT));
}

#[test]
fn podman_drives_runc_as_the_control() {
    scenario(which("runc"));
}
