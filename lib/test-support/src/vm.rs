//! qemu nodes for the image tests: a private network (a bridge with taps inside a network
//! namespace of the test's own; the host's network is never touched) and VMs booted under TCG
//! with their serial console captured (and writable, for the root shell).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The bridge's address inside the namespace: the test reaches the nodes from there.
pub const HOST_IP: &str = "10.219.0.1";
pub const PREFIX: u8 = 24;

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("running ip");
    assert!(st.success(), "ip {args:?} failed");
}

/// A network namespace with a bridge (`br0`, 10.219.0.1/24) for VMs' taps.
pub struct VmNet {
    pub ns: String,
}

impl VmNet {
    pub fn new(tag: &str) -> VmNet {
        let ns = format!("clvm-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{HOST_IP}/{PREFIX}"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &ns, "link", "set", "br0", "up"]);
        VmNet { ns }
    }

    /// A tap on the bridge for one VM.
    pub fn tap(&self, name: &str) {
        ip(&["-n", &self.ns, "tuntap", "add", name, "mode", "tap"]);
        ip(&["-n", &self.ns, "link", "set", name, "master", "br0", "up"]);
    }

    /// A command that runs inside the namespace (nsenter keeps the host's /sys mounts).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns))
            .arg("--")
            .arg(program);
        c
    }

    pub fn output(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running a command in the VM network")
    }
}

impl Drop for VmNet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// How to boot one VM.
pub struct Boot {
    pub name: String,
    /// The node's own disk (a qcow2 overlay of the image).
    pub disk: PathBuf,
    /// Direct boot: (kernel, initrd, command line). None boots the disk's bootloader.
    pub kernel: Option<(PathBuf, PathBuf, String)>,
    /// A config drive (raw image) attached read-only.
    pub config_drive: Option<PathBuf>,
    /// A tap in the VmNet, and the MAC to use on it.
    pub tap: Option<(String, String)>,
    pub memory_mb: u32,
}

/// A running VM; killed on drop.
pub struct Vm {
    pub name: String,
    child: Child,
    stdin: ChildStdin,
    console: Arc<Mutex<String>>,
}

impl Vm {
    pub fn boot(net: &VmNet, b: Boot, log_dir: &Path) -> Vm {
        let mut c = net.command("qemu-system-x86_64");
        c.args(["-accel", "tcg", "-smp", "1", "-m", &b.memory_mb.to_string()]);
        c.args([
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
        ]);
        c.arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", b.disk.display()));
        if let Some(d) = &b.config_drive {
            c.arg("-drive").arg(format!(
                "file={},if=virtio,format=raw,readonly=on",
                d.display()
            ));
        }
        match &b.tap {
            Some((tap, mac)) => {
                c.args([
                    "-netdev",
                    &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
                ]);
                c.args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac}")]);
            }
            None => {
                c.args(["-nic", "none"]);
            }
        }
        if let Some((k, i, append)) = &b.kernel {
            c.arg("-kernel")
                .arg(k)
                .arg("-initrd")
                .arg(i)
                .arg("-append")
                .arg(append);
        }
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting qemu-system-x86_64 (make deps)");
        // A refused command line (a kernel command line over 2048 bytes, a bad drive) ends
        // qemu at once: say so now, not after a boot timeout.
        for _ in 0..10 {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "qemu for {} exited at once ({st}); its error is above",
                    b.name
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let stdin = child.stdin.take().expect("qemu's stdin");
        let out = child.stdout.take().expect("qemu's stdout");
        let console = Arc::new(Mutex::new(String::new()));
        let c2 = console.clone();
        std::fs::create_dir_all(log_dir).expect("the log dir");
        let log_path = log_dir.join(format!("{}.console.log", b.name));
        std::thread::spawn(move || {
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log_path)
                .ok();
            let mut r = out;
            // Chunks, not lines: a shell prompt does not end with a newline.
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Some(l) = log.as_mut() {
                    let _ = l.write_all(&buf[..n]);
                }
                c2.lock()
                    .expect("the console buffer")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Vm {
            name: b.name,
            child,
            stdin,
            console,
        }
    }

    pub fn console(&self) -> String {
        self.console.lock().expect("the console buffer").clone()
    }

    /// Waits until the console shows `needle`.
    pub fn wait_console(&self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.console().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// Types a line on the serial console.
    pub fn type_line(&mut self, line: &str) {
        let _ = self.stdin.write_all(format!("{line}\n").as_bytes());
        let _ = self.stdin.flush();
    }

    /// Pulls the plug (SIGKILL to qemu).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A qcow2 overlay of `base` for one node.
/// The backing file may be the raw disk (cheaper to read under emulation: nothing to
/// decompress) or the compressed qcow2.
pub fn overlay(base: &Path, path: &Path) {
    let format = if base.extension().is_some_and(|e| e == "raw") {
        "raw"
    } else {
        "qcow2"
    };
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(base)
        .arg(path)
        .status()
        .expect("running qemu-img");
    assert!(st.success(), "qemu-img create failed");
}

/// A config drive: a FAT image labelled CORELITE with `config.json`.
pub fn config_drive(path: &Path, json: &str) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, json).expect("writing config.json");
    let _ = std::fs::remove_file(path);
    let st = Command::new("mkfs.vfat")
        .args(["-C", "-n", "CORELITE"])
        .arg(path)
        .arg("1440")
        .stdout(Stdio::null())
        .status()
        .expect("running mkfs.vfat (make deps: dosfstools)");
    assert!(st.success());
    let st = Command::new("mcopy")
        .arg("-i")
        .arg(path)
        .arg(&cfg)
        .arg("::config.json")
        .status()
        .expect("running mcopy (make deps: mtools)");
    assert!(st.success());
}
