//! Shared by the runtime's integration tests: busybox bundles and a way to run `rkt` on them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

pub const RKT: &str = env!("CARGO_BIN_EXE_rkt");

pub struct Bundle {
    pub dir: tempfile::TempDir,
}

pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the runtime tests need root (namespaces, mounts, pivot_root)"
    );
}

impl Bundle {
    /// A bundle with a busybox root filesystem and rkt's default config, adjusted by `edit`.
    pub fn new(args: &[&str], edit: impl FnOnce(&mut Value)) -> Self {
        require_root();
        let busybox = Path::new("/bin/busybox");
        assert!(
            busybox.is_file(),
            "/bin/busybox is missing: run `make deps` (busybox-static)"
        );
        let dir = tempfile::Builder::new()
            .prefix("rkt-bundle")
            .tempdir()
            .expect("tempdir");
        let bin = dir.path().join("rootfs/bin");
        std::fs::create_dir_all(&bin).expect("rootfs/bin");
        std::fs::copy(busybox, bin.join("busybox")).expect("copy busybox");
        for app in [
            "sh", "echo", "cat", "id", "hostname", "sleep", "touch", "ls", "grep", "ulimit", "dd",
            "mkdir", "tty", "true", "wc", "head", "stat", "mount", "false",
        ] {
            std::os::unix::fs::symlink("busybox", bin.join(app)).expect("applet link");
        }
        let st = Command::new(RKT)
            .args(["spec", "--bundle"])
            .arg(dir.path())
            .status()
            .expect("rkt spec");
        assert!(st.success());
        let cfg = dir.path().join("config.json");
        let mut v: Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg).expect("config")).expect("json");
        v["process"]["args"] = json!(args);
        edit(&mut v);
        std::fs::write(&cfg, serde_json::to_vec_pretty(&v).expect("json")).expect("write config");
        Bundle { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Runs rkt with stdout/stderr in files: a created container inherits them and outlives
    /// `rkt create`, so pipes would never reach end-of-file.
    pub fn rkt(&self, args: &[&str]) -> Output {
        let (o, e) = (self.path().join("out.txt"), self.path().join("err.txt"));
        let status = Command::new(RKT)
            .arg("--root")
            .arg(self.state_root())
            .args(args)
            .current_dir(self.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&o).expect("stdout file"))
            .stderr(std::fs::File::create(&e).expect("stderr file"))
            .status()
            .expect("running rkt");
        Output {
            status,
            stdout: std::fs::read(&o).unwrap_or_default(),
            stderr: std::fs::read(&e).unwrap_or_default(),
        }
    }

    pub fn run(&self, id: &str) -> (i32, String, String) {
        let out = self.rkt(&["run", "--bundle", self.path().to_str().expect("utf-8"), id]);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn state(&self, id: &str) -> Value {
        let out = self.rkt(&["state", id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("state json")
    }

    /// Nothing left in the state root for `id`.
    /// Nothing left for `id`: no state directory, no cgroup (default path /rkt/ID).
    pub fn assert_gone(&self, id: &str) {
        assert!(
            !self.state_root().join(id).exists(),
            "state of {id} left behind"
        );
        for d in cgroup_dirs(&format!("/rkt/{id}")) {
            assert!(!d.exists(), "cgroup {} left behind", d.display());
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let bundle = self.path().to_string_lossy().into_owned();
        assert!(
            !mounts.lines().any(|l| l.contains(&bundle)),
            "a mount under {bundle} is left on the host"
        );
    }
}

/// Unique container ids: the default cgroup path (/rkt/ID) is shared by every state root.
pub fn uid(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// The container's cgroup directories on this host (memory and pids hierarchies, or v2).
pub fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let rel = rel.trim_start_matches('/');
    ["memory", "pids", "unified", ""]
        .iter()
        .map(|h| Path::new("/sys/fs/cgroup").join(h).join(rel))
        .collect()
}
