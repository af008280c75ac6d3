//! Images and pods end to end, as root: images made with umoci from a busybox rootfs
//! (tests/images/busybox-image.sh), pushed with skopeo to a real registry (Debian's
//! docker-registry) on loopback, fetched and run by `rkt`; pods networked inside a network
//! namespace of the test's own.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use test_support::{eventually, free_port, require_tool};

const RKT: &str = env!("CARGO_BIN_EXE_rkt");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A busybox image layout built once per test run (per variant) and cached under target/.
fn layout(big_mb: u32) -> PathBuf {
    static SMALL: OnceLock<PathBuf> = OnceLock::new();
    static BIG: OnceLock<PathBuf> = OnceLock::new();
    let cell = if big_mb == 0 { &SMALL } else { &BIG };
    cell.get_or_init(|| {
        require_tool("umoci");
        let dir = repo_root().join(format!("target/test-cache/busybox-oci-{big_mb}"));
        let st = Command::new(repo_root().join("tests/images/busybox-image.sh"))
            .arg(&dir)
            .env("BIG_MB", big_mb.to_string())
            .status()
            .expect("running busybox-image.sh");
        assert!(st.success(), "building the busybox image failed");
        dir
    })
    .clone()
}

/// Whether a distribution registry answers `GET /v2/` on this loopback port.
fn registry_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    if c.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = c.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.")
        && reply
            .to_ascii_lowercase()
            .contains("docker-distribution-api-version: registry/2.0")
}

/// A docker-registry on a loopback port, stopped on drop.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry; a port taken between choosing it and the registry binding it (tests
    /// run in parallel) means another try on another port, never a test talking to a stranger.
    fn start() -> Registry {
        for _ in 0..5 {
            if let Some(r) = Registry::try_start() {
                return r;
            }
        }
        panic!("docker-registry did not start on any of 5 ports");
    }

    fn try_start() -> Option<Registry> {
        let bin = require_tool("docker-registry");
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = free_port();
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("writing the registry config");
        let mut child = Command::new(bin)
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting docker-registry");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return None; // could not bind its port
            }
            // Ours answers the distribution API's version check.
            if registry_answers(port) {
                return Some(Registry {
                    child,
                    port,
                    _dir: dir,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Pushes `layout:latest` as `name:latest`.
    fn push(&self, layout: &Path, name: &str) -> String {
        let skopeo = require_tool("skopeo");
        let reference = format!("127.0.0.1:{}/{name}:latest", self.port);
        let out = Command::new(skopeo)
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("docker://{reference}"))
            .output()
            .expect("running skopeo");
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        reference
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// rkt with its own data dir and state root, optionally inside a network namespace.
struct Rkt {
    dir: tempfile::TempDir,
    netns: Option<String>,
}

impl Rkt {
    fn new() -> Rkt {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the image tests need root"
        );
        Rkt {
            dir: tempfile::Builder::new()
                .prefix("rkt-images")
                .tempdir()
                .expect("a temp dir"),
            netns: None,
        }
    }

    /// The same, with pods networked in a new network namespace (deleted on drop).
    fn in_netns(tag: &str) -> Rkt {
        let mut r = Rkt::new();
        let name = format!("rktimg-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(st.success());
        let st = Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .status()
            .expect("ip link set lo up");
        assert!(st.success());
        r.netns = Some(name);
        r
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, args: &[&str]) -> Command {
        self.command_in(args, true)
    }

    /// `in_netns` false: on the host's network (to reach the loopback registry).
    fn command_in(&self, args: &[&str], in_netns: bool) -> Command {
        let netns = self.netns.as_ref().filter(|_| in_netns);
        let mut c = match netns {
            // nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup hierarchies.
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(RKT);
                c
            }
            None => Command::new(RKT),
        };
        c.arg("--dir")
            .arg(self.data())
            .arg("--root")
            .arg(self.dir.path().join("state"))
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running rkt")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "rkt {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "rkt {args:?} succeeded: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// A command run in the pod network's namespace (curl, iptables).
    fn in_ns(&self, program: &str, args: &[&str]) -> Output {
        let ns = self.netns.as_ref().expect("a netns");
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(program)
            .args(args)
            .output()
            .expect("running a command in the netns")
    }

    fn blobs(&self) -> usize {
        std::fs::read_dir(self.data().join("images/blobs/sha256"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Rkt {
    fn drop(&mut self) {
        // Leave no pods, mounts or namespaces behind, whatever the test did.
        let _ = self.run(&["gc", "--grace-period", "0s"]);
        if let Some(ns) = &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn curl(r: &Rkt, url: &str) -> (u16, String) {
    let o = r.in_ns(
        "curl",
        &["-s", "-m", "5", "-o", "-", "-w", "\n%{http_code}", url],
    );
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn pull_run_serve_http_stop_rm_gc() {
    let reg = Registry::start();
    let image = reg.push(&layout(0), "busybox");
    let r = Rkt::in_netns("http");
    let o = r
        .command_in(&["fetch", &image], false)
        .output()
        .expect("rkt fetch");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(id.trim().starts_with("sha256:"), "{id}");
    let list = r.ok(&["image", "list"]);
    assert!(list.contains(&image), "{list}");
    let mut pod = r
        .command(&[
            "run", "--name", "web", "--port", "8080:80", &image, "--", "httpd", "-f", "-p", "80",
            "-h", "/srv",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rkt run");
    eventually(
        Duration::from_secs(20),
        "the pod serves on the forwarded port",
        || curl(&r, "http://127.0.0.1:8080/index.html").0 == 200,
    );
    let (code, body) = curl(&r, "http://127.0.0.1:8080/index.html");
    assert_eq!((code, body.trim()), (200, "hello from an rkt pod"));
    // Layers: a file the top layer deleted is gone (whiteout), a file it added is there.
    assert_eq!(curl(&r, "http://127.0.0.1:8080/gone.txt").0, 404);
    assert_eq!(curl(&r, "http://127.0.0.1:8080/kept.txt").1.trim(), "kept");
    let status = r.ok(&["status", "web"]);
    assert!(status.contains("state=running"), "{status}");
    let ip = status
        .lines()
        .find_map(|l| l.strip_prefix("networks=default:ip4="))
        .expect("the pod's address")
        .to_string();
    assert_eq!(curl(&r, &format!("http://{ip}:80/kept.txt")).0, 200);
    let inside = r.ok(&[
        "enter",
        "web",
        "--",
        "sh",
        "-c",
        "hostname; cat /etc/hostname; id -u",
    ]);
    assert_eq!(inside.lines().collect::<Vec<_>>(), vec!["web", "web", "0"]);
    let listed = r.ok(&["list"]);
    assert!(
        listed.contains("web") && listed.contains("running") && listed.contains(&ip),
        "{listed}"
    );
    // A second pod under the same name is refused while the first runs.
    let err = r.fails(&["run", "--name", "web", &image, "--", "true"]);
    assert!(err.contains("already exists"), "{err}");
    let err = r.fails(&["rm", "web"]);
    assert!(err.contains("stop it first"), "{err}");
    // httpd as pid 1 ignores SIGTERM: stop kills it after the timeout.
    r.ok(&["stop", "--timeout", "2s", "web"]);
    let st = pod.wait().expect("rkt run exits");
    assert_eq!(st.code(), Some(137), "exit of a pod killed by SIGKILL");
    let status = r.ok(&["status", "web"]);
    assert!(
        status.contains("state=exited") && status.contains("exit-code=137"),
        "{status}"
    );
    assert_ne!(curl(&r, "http://127.0.0.1:8080/index.html").0, 200);
    let nat =
        String::from_utf8_lossy(&r.in_ns("iptables", &["-t", "nat", "-S"]).stdout).into_owned();
    assert!(
        !nat.contains("8080"),
        "the port forward outlived the pod: {nat}"
    );
    // An image a pod uses stays until the pod goes; gc then frees every blob.
    r.ok(&["rm", "web"]);
    assert!(r.fails(&["status", "web"]).contains("does not exist"));
    r.ok(&["image", "rm", &image]);
    assert!(r.blobs() > 0);
    let gc = r.ok(&["gc", "--grace-period", "0s"]);
    assert!(gc.contains("blobs"), "{gc}");
    assert_eq!(r.blobs(), 0, "gc left blobs behind");
    let leftovers = std::fs::read_dir(r.data().join("pods"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leftovers, 0);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&r.data().display().to_string()),
        "a pod's overlay is still mounted"
    );
}

#[test]
fn pod_as_a_service_ready_sigterm_exit_code_and_output() {
    let r = Rkt::new();
    r.ok(&["fetch", &format!("oci:{}:latest", layout(0).display())]);
    let sock_dir = tempfile::tempdir().expect("a temp dir");
    let sock_path = sock_dir.path().join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("a notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a timeout");
    let script = "echo started; trap 'echo got TERM; exit 7' TERM; while true; do sleep 0.1; done";
    let mut child = r
        .command(&[
            "run",
            "--net=none",
            "--set-env",
            "MODE=svc",
            "localhost/busybox-oci-0",
            "--",
            "sh",
            "-c",
            script,
        ])
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rkt run");
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 from rkt");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        msg.contains("READY=1") && msg.contains(&format!("MAINPID={}", child.id())),
        "{msg}"
    );
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM to rkt run");
    let st = child.wait().expect("rkt run exits");
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("reading stdout");
    assert_eq!(st.code(), Some(7), "the pod's exit code is rkt's");
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["started", "got TERM"]);
    let list = r.ok(&["list"]);
    assert!(list.contains("exited(7)"), "{list}");
}

#[test]
fn corrupted_blobs_are_detected_and_refused() {
    let r = Rkt::new();
    let src = format!("oci:{}:latest", layout(0).display());
    r.ok(&["fetch", &src]);
    let manifest: serde_json::Value =
        serde_json::from_str(&r.ok(&["image", "cat-manifest", "localhost/busybox-oci-0"]))
            .expect("manifest JSON");
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .expect("a layer digest")
        .to_string();
    let blob = r
        .data()
        .join("images/blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).expect("the layer blob");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, &bytes).expect("corrupting the blob");
    let err = r.fails(&["image", "verify"]);
    assert!(err.contains("corrupt") && err.contains(&layer), "{err}");
    let err = r.fails(&["run", "--net=none", "localhost/busybox-oci-0", "--", "true"]);
    assert!(err.contains("corrupt"), "{err}");
    assert!(
        !r.ok(&["list"]).contains("busybox-oci"),
        "a pod was left from a refused run"
    );
    let err = r.fails(&["image", "export", "localhost/busybox-oci-0", "-"]);
    assert!(err.contains("corrupt"), "{err}");

    // A corrupt blob in a layout being fetched: refused, nothing listed.
    let copy = tempfile::tempdir().expect("a temp dir");
    let st = Command::new("cp")
        .arg("-a")
        .arg(layout(0))
        .arg(copy.path().join("l"))
        .status()
        .expect("cp");
    assert!(st.success());
    let blob = copy
        .path()
        .join("l/blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    std::fs::write(&blob, &bytes).expect("corrupting the copy");
    let fresh = Rkt::new();
    let err = fresh.fails(&[
        "fetch",
        &format!("oci:{}:latest", copy.path().join("l").display()),
    ]);
    assert!(err.contains("corrupt"), "{err}");
    assert_eq!(fresh.ok(&["image", "list", "-q"]).trim(), "");
}

/// A proxy to the registry that forces one request per connection, records request heads,
/// and cuts the download of `cut` (a blob path) after `budget` bytes unless it is a ranged GET.
fn cutting_proxy(upstream: u16, cut: String, budget: usize) -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
    let port = l.local_addr().expect("proxy address").port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for client in l.incoming().flatten() {
            let log = log2.clone();
            let cut = cut.clone();
            std::thread::spawn(move || {
                let mut client = client;
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match client.read(&mut b) {
                        Ok(1) => head.push(b[0]),
                        _ => return,
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let ranged = text.to_ascii_lowercase().contains("\r\nrange:");
                let limit = if text.contains(&cut) && !ranged {
                    budget
                } else {
                    usize::MAX
                };
                let rewritten: String = text
                    .trim_end()
                    .lines()
                    .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                    .map(|l| format!("{l}\r\n"))
                    .collect::<String>()
                    + "Connection: close\r\n\r\n";
                log.lock().expect("the proxy log").push(text);
                let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                if up.write_all(rewritten.as_bytes()).is_err() {
                    return;
                }
                let mut sent = 0usize;
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match up.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n.min(limit - sent),
                    };
                    if client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n;
                    if sent >= limit {
                        break;
                    }
                }
                let _ = client.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (port, log)
}

#[test]
fn interrupted_pull_leaves_nothing_listed_and_resumes() {
    let reg = Registry::start();
    let big = layout(4);
    reg.push(&big, "big");
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(big.join("index.json")).expect("index.json"))
            .expect("JSON");
    let m = idx["manifests"][0]["digest"]
        .as_str()
        .expect("manifest digest")
        .trim_start_matches("sha256:")
        .to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(big.join("blobs/sha256").join(m)).expect("manifest"))
            .expect("JSON");
    let layers = manifest["layers"].as_array().expect("layers");
    let top = layers.last().expect("the big layer");
    let (digest, size) = (
        top["digest"].as_str().expect("digest").to_string(),
        top["size"].as_u64().expect("size"),
    );
    assert!(size > 3 << 20, "the big layer is only {size} bytes");
    let (port, log) = cutting_proxy(reg.port, format!("/blobs/{digest}"), 1 << 20);
    let image = format!("127.0.0.1:{port}/big:latest");
    let r = Rkt::new();
    let err = r.fails(&["fetch", "--no-progress", &image]);
    assert!(err.contains("fetch again to resume"), "{err}");
    assert_eq!(
        r.ok(&["image", "list", "-q"]).trim(),
        "",
        "a half-fetched image is listed"
    );
    let partial = r
        .data()
        .join("images/tmp")
        .join(format!("{}.partial", digest.trim_start_matches("sha256:")));
    let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(have > 0 && have < size, "partial download of {have} bytes");
    r.ok(&["fetch", "--no-progress", &image]);
    let heads = log.lock().expect("the proxy log").clone();
    let resumed = heads.iter().any(|h| {
        h.contains(&digest)
            && h.to_ascii_lowercase()
                .contains(&format!("range: bytes={have}-"))
    });
    assert!(
        resumed,
        "the second fetch did not resume from byte {have}: {heads:?}"
    );
    assert!(!partial.exists());
    r.ok(&["image", "verify"]);
    let out = r.ok(&[
        "run",
        "--net=none",
        &image,
        "--",
        "sh",
        "-c",
        "wc -c < /big.bin",
    ]);
    assert_eq!(out.trim(), (4u64 << 20).to_string());
}

#[test]
fn concurrent_fetches_of_one_image_are_safe() {
    let reg = Registry::start();
    let image = reg.push(&layout(4), "both");
    let r = Rkt::new();
    let children: Vec<Child> = (0..3)
        .map(|_| {
            r.command(&["fetch", "--no-progress", &image])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("rkt fetch")
        })
        .collect();
    let ids: Vec<String> = children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().expect("rkt fetch exits");
            assert!(
                o.status.success(),
                "a concurrent fetch failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    assert_eq!(r.ok(&["image", "list", "-q"]).lines().count(), 1);
    r.ok(&["image", "verify"]);
    let tmp: Vec<_> = std::fs::read_dir(r.data().join("images/tmp"))
        .expect("tmp dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(tmp.is_empty(), "leftovers in tmp/: {tmp:?}");
}

/// A tar with one entry whose raw name and type are set by hand.
fn evil_tar(path: &Path, name: &str, kind: tar::EntryType) {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(kind);
    h.set_size(0);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    let mut b = tar::Builder::new(std::fs::File::create(path).expect("creating a tar"));
    b.append(&h, &[][..]).expect("appending");
    b.finish().expect("finishing the tar");
}

#[test]
fn bad_input_is_refused_clearly() {
    let reg = Registry::start();
    let r = Rkt::new();
    let err = r.fails(&["fetch", "Not/A:Valid:Ref"]);
    assert!(err.contains("invalid image reference"), "{err}");
    let err = r.fails(&["fetch", &format!("127.0.0.1:{}/nope:latest", reg.port)]);
    assert!(
        err.contains("not found") && err.contains("MANIFEST_UNKNOWN"),
        "{err}"
    );
    let err = r.fails(&["run", "--net=none", "./no/such/image"]);
    assert!(err.contains("no such file"), "{err}");
    let err = r.fails(&["image", "rm", "localhost/nothing"]);
    assert!(err.contains("not in the store"), "{err}");
    let err = r.fails(&["run", "--net=bridge", "busybox"]);
    assert!(err.contains("--net=bridge"), "{err}");

    // An image for another architecture.
    let other = tempfile::tempdir().expect("a temp dir");
    let arm = other.path().join("arm");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(layout(0))
        .arg(&arm)
        .status()
        .expect("cp")
        .success());
    let st = Command::new(require_tool("umoci"))
        .args(["config", "--image"])
        .arg(format!("{}:latest", arm.display()))
        .args(["--architecture", "arm64"])
        .stdout(Stdio::null())
        .status()
        .expect("umoci config");
    assert!(st.success());
    let err = r.fails(&["fetch", &format!("oci:{}:latest", arm.display())]);
    assert!(
        err.contains("linux/arm64") && err.contains("linux/amd64"),
        "{err}"
    );
    let arm_ref = reg.push(&arm, "armonly");
    let err = r.fails(&["fetch", &arm_ref]);
    assert!(err.contains("linux/arm64"), "{err}");

    // Archives that would write outside their directory or carry devices.
    let up = other.path().join("up.tar");
    evil_tar(&up, "../../escaped", tar::EntryType::Regular);
    let err = r.fails(&["fetch", &format!("oci-archive:{}", up.display())]);
    assert!(err.contains("climbs out"), "{err}");
    assert!(!other.path().join("escaped").exists());
    let dev = other.path().join("dev.tar");
    evil_tar(&dev, "dev/sda", tar::EntryType::Block);
    let err = r.fails(&["fetch", &dev.display().to_string()]);
    assert!(err.contains("device node"), "{err}");
    let bad_ports = r.fails(&["run", "--port", "80:99999", "busybox"]);
    assert!(bad_ports.contains("--port"), "{bad_ports}");
    let err = r.fails(&["run", "--volume", "/no/such/dir:/data", "busybox"]);
    assert!(
        err.contains("volume source /no/such/dir does not exist"),
        "{err}"
    );
    let err = r.fails(&["run", "--volume", "relative:/data", "busybox"]);
    assert!(err.contains("absolute"), "{err}");
    let err = r.fails(&["run", "--name", "bad/name", "busybox"]);
    assert!(err.contains("invalid container id"), "{err}");
    let err = r.fails(&["run", "--detach", "busybox"]);
    assert!(err.contains("--detach is for bundles"), "{err}");
    let err = r.fails(&["run", "--net=host", "--port", "80:80", "busybox"]);
    assert!(err.contains("--port needs --net=default"), "{err}");
    assert_eq!(r.ok(&["image", "list", "-q"]).trim(), "");
}

#[test]
fn archives_export_and_extract() {
    let r = Rkt::new();
    let work = tempfile::tempdir().expect("a temp dir");
    // docker-archive, as `docker save` / `podman save` write it (made by skopeo).
    let archive = work.path().join("bb.tar");
    let out = Command::new(require_tool("skopeo"))
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:latest", layout(0).display()))
        .arg(format!("docker-archive:{}:team/bb:v1", archive.display()))
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = r.ok(&["fetch", &format!("docker-archive:{}", archive.display())]);
    let list = r.ok(&["image", "list"]);
    assert!(list.contains("docker.io/team/bb:v1"), "{list}");
    let out = r.ok(&[
        "run",
        "--net=none",
        "team/bb:v1",
        "--",
        "sh",
        "-c",
        "cat /srv/kept.txt; echo $GREETING",
    ]);
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["kept", "hello"]);
    // --net=host: the host's interfaces (the test's netns has a loopback), a sysfs of its own
    // with a cgroup filesystem under it, and no warnings.
    let o = r.run(&[
        "run",
        "--net=host",
        "team/bb:v1",
        "--",
        "sh",
        "-c",
        "ls /sys/class/net; grep -c ' /sys/fs/cgroup' /proc/self/mountinfo",
    ]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}{err}");
    assert!(out.lines().any(|l| l == "lo"), "{out}");
    assert!(!err.contains("warning"), "{err}");
    let cgroup_mounts: u32 = out.lines().last().unwrap_or("").parse().unwrap_or(0);
    assert!(cgroup_mounts >= 1, "no cgroup mount in the pod: {out}");
    // Export as an OCI archive, fetch it into another store: the same image.
    let exported = work.path().join("exported.tar");
    r.ok(&[
        "image",
        "export",
        "team/bb:v1",
        &exported.display().to_string(),
    ]);
    let other = Rkt::new();
    let id2 = other.ok(&["fetch", &format!("oci-archive:{}", exported.display())]);
    assert_eq!(id.trim(), id2.trim());
    assert!(other
        .ok(&["image", "list"])
        .contains("docker.io/team/bb:v1"));
    // Extract: the layers applied with their whiteouts.
    let root = work.path().join("rootfs");
    r.ok(&[
        "image",
        "extract",
        "team/bb:v1",
        &root.display().to_string(),
    ]);
    assert!(root.join("bin/busybox").is_file());
    assert!(root.join("srv/kept.txt").is_file());
    assert!(!root.join("srv/gone.txt").exists());
    let err = r.fails(&[
        "image",
        "extract",
        "team/bb:v1",
        &root.display().to_string(),
    ]);
    assert!(err.contains("not empty"), "{err}");
}
