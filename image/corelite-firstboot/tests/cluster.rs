//! The image end to end, as root: three nodes booted under qemu (TCG) from the image `make image`
//! built (two from the disk with a config drive, one by direct kernel boot with the config on
//! the command line) on a bridge inside a network namespace of the test's own, from the configs
//! `corelite-config new-cluster` writes. The cluster must form from them alone, with TLS and
//! client certificates on every port and nothing else reachable but SSH (keys only, no root);
//! a container unit started through fleetctl runs and its output is read; a killed node's unit
//! moves and the store keeps serving; the node boots again and rejoins. A node whose config has
//! someone else's certificate says why on its console and offers a root shell.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use test_support::vm::{config_drive, overlay, Boot, Vm, VmNet};

const BOOT_TIMEOUT: Duration = Duration::from_secs(420);
const MEMORY_MB: u32 = 512;

fn image_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/image");
    for f in ["corelite.qcow2", "corelite.raw", "vmlinuz", "initrd.img"] {
        assert!(
            d.join(f).is_file(),
            "{} is missing: `make image` builds it (`make test` does)",
            d.join(f).display()
        );
    }
    d
}

/// fleetctl from the same build (`cargo test --workspace` builds every package's binaries).
fn fleetctl_bin() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/fleetctl");
    assert!(p.is_file(), "{} is missing: make build", p.display());
    p.display().to_string()
}

fn log_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-logs/image")
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    false
}

fn wait_for(timeout: Duration, what: &str, f: impl FnMut() -> bool) {
    assert!(
        wait_until(timeout, f),
        "timed out after {timeout:?} waiting for {what}"
    );
}

fn node_ip(i: usize) -> String {
    format!("10.219.0.{}", 10 + i)
}

/// The cluster's files from `corelite-config new-cluster` (in `dir/cluster`), with the test's
/// SSH key (`dir/id_ed25519`); each node's config gets fleet metadata and a short agent TTL, as
/// an operator may add.
fn generate_cluster(dir: &Path) -> PathBuf {
    let key = dir.join("id_ed25519");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "image-test", "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen (make deps installs openssh-client)");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    let cluster = dir.join("cluster");
    let nodes: Vec<String> = (1..=3).map(|i| format!("node{i}={}", node_ip(i))).collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corelite-config"))
        .args(["new-cluster", "--nodes", &nodes.join(",")])
        .args([
            "--gateway",
            test_support::vm::HOST_IP,
            "--token",
            "image-test",
            "--etcd-auth",
        ])
        .arg("--ssh-key")
        .arg(key.with_extension("pub"))
        .arg("--out")
        .arg(&cluster)
        .output()
        .expect("corelite-config");
    assert!(out.status.success(), "corelite-config: {out:?}");
    for i in 1..=3 {
        let p = cluster.join(format!("nodes/node{i}.json"));
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).expect("node config"))
                .expect("node config JSON");
        c["fleet"] = serde_json::json!({"metadata": {"node": format!("n{i}")}, "agent_ttl": 10});
        std::fs::write(&p, c.to_string()).expect("writing the node config");
    }
    cluster
}

/// A config for the kernel command line (2048 bytes on x86): gzipped, then base64.
fn gz64(json: &str) -> String {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(json.as_bytes()).expect("gzip");
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz.finish().expect("gzip"));
    assert!(
        b64.len() < 1900,
        "a {} byte config does not fit the command line",
        b64.len()
    );
    b64
}

struct Cluster {
    net: VmNet,
    dir: tempfile::TempDir,
    /// What corelite-config wrote.
    files: PathBuf,
    image: PathBuf,
    vms: Vec<Option<Vm>>,
}

impl Cluster {
    fn boot(&mut self, i: usize) {
        let disk = self.dir.path().join(format!("node{i}.qcow2"));
        if !disk.exists() {
            // Both disks the build makes: node 1 boots the compressed qcow2, the others the raw
            // disk (node 3 through direct kernel boot).
            let base = if i == 1 {
                "corelite.qcow2"
            } else {
                "corelite.raw"
            };
            overlay(&self.image.join(base), &disk);
        }
        let tap = format!("tap{i}");
        if self.net.output("ip", &["link", "show", &tap]).status.code() != Some(0) {
            self.net.tap(&tap);
        }
        let cfg = std::fs::read_to_string(self.files.join(format!("nodes/node{i}.json")))
            .expect("the node's config");
        let (kernel, config_drive_path) = if i == 3 {
            let append = format!(
                "root=LABEL=corelite-root rw console=ttyS0,115200 corelite.config=gz64:{}",
                gz64(&cfg)
            );
            (
                Some((
                    self.image.join("vmlinuz"),
                    self.image.join("initrd.img"),
                    append,
                )),
                None,
            )
        } else {
            let p = self.dir.path().join(format!("node{i}-config.img"));
            config_drive(&p, &cfg);
            (None, Some(p))
        };
        let vm = Vm::boot(
            &self.net,
            Boot {
                name: format!("node{i}"),
                disk,
                kernel,
                config_drive: config_drive_path,
                tap: Some((tap, format!("52:54:00:19:00:{i:02x}"))),
                memory_mb: MEMORY_MB,
            },
            &log_dir(),
        );
        self.vms[i] = Some(vm);
    }

    fn pki(&self, file: &str) -> String {
        self.files.join("pki").join(file).display().to_string()
    }

    /// etcdctl 3.4 over TLS with the admin certificate.
    fn etcdctl(&self, endpoints: &[usize], args: &[&str]) -> Result<String, String> {
        let eps: Vec<String> = endpoints
            .iter()
            .map(|i| format!("https://{}:2379", node_ip(*i)))
            .collect();
        let o = self
            .net
            .command("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &eps.join(",")])
            .args(["--dial-timeout=3s", "--command-timeout=5s"])
            .args(["--cacert", &self.pki("ca.pem")])
            .args(["--cert", &self.pki("admin.pem")])
            .args(["--key", &self.pki("admin-key.pem")])
            .args(args)
            .output()
            .expect("etcdctl");
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    /// fleetctl over TLS with the admin certificate.
    fn fleetctl(&self, via: usize, args: &[&str]) -> Result<String, String> {
        let o = self
            .net
            .command(&fleetctl_bin())
            .arg("--endpoint")
            .arg(format!("https://{}:49153", node_ip(via)))
            .args(["--ca-file", &self.pki("ca.pem")])
            .args(["--cert-file", &self.pki("admin.pem")])
            .args(["--key-file", &self.pki("admin-key.pem")])
            .args(args)
            .output()
            .expect("fleetctl");
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    /// curl from the cluster's network: (exit code, body).
    fn curl(&self, args: &[&str]) -> (i32, String) {
        let o = self
            .net
            .command("curl")
            .args(["-s", "-m", "10"])
            .args(args)
            .output()
            .expect("curl");
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    /// ssh USER@node`i` COMMAND with the test's key: (exit code, stdout, stderr).
    fn ssh(&self, user: &str, i: usize, command: &str) -> (i32, String, String) {
        let o = self
            .net
            .command("ssh")
            .arg("-i")
            .arg(self.dir.path().join("id_ed25519"))
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "LogLevel=ERROR"])
            .arg(format!("{user}@{}", node_ip(i)))
            .arg(command)
            .output()
            .expect("ssh");
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    fn consoles(&self) -> String {
        self.vms
            .iter()
            .flatten()
            .map(|v| {
                let c = v.console();
                let tail: String = c
                    .lines()
                    .rev()
                    .take(60)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                format!("--- {} ---\n{tail}", v.name)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

const HELLO: &str = "[Unit]
Description=hello: a busybox pod run by rkt, placed by fleet

[Service]
ExecStartPre=/usr/bin/rkt fetch oci:/usr/share/corelite/images/busybox:latest
# %H is the node's host name (the pod has its own); $$ is a literal $ for systemd.
ExecStart=/usr/bin/rkt run --net=host --name hello --set-env NODE=%H localhost/busybox -- sh -c 'while true; do echo hello from $$NODE; sleep 2; done'
ExecStopPost=/usr/bin/rkt gc --grace-period=0s
";

#[test]
fn three_nodes_form_a_cluster_run_a_container_survive_a_node_and_rejoin() {
    assert!(nix_is_root(), "the image tests need root (netns, taps)");
    let image = image_dir();
    let dir = tempfile::tempdir().expect("a temp dir");
    let files = generate_cluster(dir.path());
    let mut c = Cluster {
        net: VmNet::new("img"),
        dir,
        files,
        image,
        vms: vec![None, None, None, None],
    };
    for i in 1..=3 {
        c.boot(i);
    }
    let started = Instant::now();
    wait_for(
        BOOT_TIMEOUT,
        "the etcd-lite cluster to have a leader",
        || {
            c.etcdctl(&[1, 2, 3], &["endpoint", "status", "-w", "json"])
                .map(|s| s.matches("\"leader\":").count() == 3 && !s.contains("\"leader\":0,"))
                .unwrap_or(false)
        },
    );
    wait_for(BOOT_TIMEOUT, "fleetctl to list 3 machines", || {
        c.fleetctl(1, &["list-machines", "--no-legend"])
            .map(|s| s.lines().count() == 3)
            .unwrap_or(false)
    });
    eprintln!("cluster ready {:?} after boot", started.elapsed());
    secure_by_default(&c);
    let members = c.etcdctl(&[1], &["member", "list"]).expect("member list");
    for i in 1..=3 {
        assert!(members.contains(&format!("node{i}")), "{members}");
    }
    c.etcdctl(&[2], &["put", "/image-test/k", "v1"])
        .expect("a put through node2");
    assert!(c
        .etcdctl(&[3], &["get", "/image-test/k"])
        .expect("a get through node3")
        .contains("v1"));

    let unit = c.dir.path().join("hello.service");
    std::fs::write(&unit, HELLO).expect("writing the unit");
    let out = c.fleetctl(1, &["start", unit.to_str().expect("a UTF-8 path")]);
    assert!(out.is_ok(), "fleetctl start: {out:?}\n{}", c.consoles());
    let mut first_host = String::new();
    wait_for(
        Duration::from_secs(180),
        "the container's output in fleetctl journal",
        || match c.fleetctl(2, &["journal", "-n", "20", "hello.service"]) {
            Ok(j) => match j.lines().rev().find_map(|l| l.split("hello from ").nth(1)) {
                Some(h) => {
                    first_host = h.trim().to_string();
                    true
                }
                None => false,
            },
            Err(_) => false,
        },
    );
    let units = c
        .fleetctl(1, &["list-units", "--no-legend"])
        .expect("list-units");
    assert!(
        units.contains("hello.service") && units.contains("running"),
        "{units}"
    );
    let victim: usize = first_host
        .trim_start_matches("node")
        .parse()
        .expect("the hello pod's node number");
    eprintln!("hello runs on node{victim}; pulling its plug");

    c.vms[victim].as_mut().expect("the victim VM").kill();
    let survivors: Vec<usize> = (1..=3).filter(|i| *i != victim).collect();
    let via = survivors[0];
    wait_for(
        Duration::from_secs(180),
        "hello.service to run on another node",
        || {
            c.fleetctl(via, &["journal", "-n", "5", "hello.service"])
                .map(|j| {
                    j.lines()
                        .rev()
                        .take(2)
                        .any(|l| l.contains("hello from node") && !l.contains(&first_host))
                })
                .unwrap_or(false)
        },
    );
    c.etcdctl(&survivors, &["put", "/image-test/k", "v2"])
        .expect("a put with one node down");
    assert!(c
        .etcdctl(&[survivors[1]], &["get", "/image-test/k"])
        .expect("a get")
        .contains("v2"));

    c.boot(victim);
    let rejoined = wait_until(BOOT_TIMEOUT, || {
        let etcd_ok = c
            .etcdctl(&[victim], &["get", "/image-test/k"])
            .map(|s| s.contains("v2"))
            .unwrap_or(false);
        let fleet_ok = c
            .fleetctl(via, &["list-machines", "--no-legend"])
            .map(|s| s.lines().count() == 3)
            .unwrap_or(false);
        etcd_ok && fleet_ok
    });
    if !rejoined {
        // Ask the node itself, on its serial console's root shell, what its services say.
        let vm = c.vms[victim].as_mut().expect("the rebooted VM");
        vm.type_line("journalctl -b -u etcd-lite --no-pager -n 30 | cat");
        vm.type_line("journalctl -b -u fleetd --no-pager -n 8 | cat");
        std::thread::sleep(Duration::from_secs(10));
        panic!("node{victim} did not rejoin:\n{}", c.consoles());
    }
    let health = c.etcdctl(&[1, 2, 3], &["endpoint", "health"]);
    assert!(health.is_ok(), "{health:?}");
}

/// What anyone on the network can reach: TLS with client certificates on etcd-lite's client
/// and peer ports and on fleet's API, SSH with keys as `core` (not root), nothing else.
fn secure_by_default(c: &Cluster) {
    let ip = node_ip(1);
    let with_cert = [
        "--cacert",
        &c.pki("ca.pem"),
        "--cert",
        &c.pki("admin.pem"),
        "--key",
        &c.pki("admin-key.pem"),
    ];
    let health = format!("https://{ip}:2379/health");
    let (code, body) = c.curl(&[&with_cert[..], &[health.as_str()]].concat());
    assert!(
        code == 0 && body.contains("true"),
        "https with the admin certificate: {code} {body}"
    );
    let machines = format!("https://{ip}:49153/fleet/v1/machines");
    let (code, body) = c.curl(&[&with_cert[..], &[machines.as_str()]].concat());
    assert!(
        code == 0 && body.contains("machines"),
        "fleet API with the admin certificate: {code} {body}"
    );
    for url in [
        format!("http://{ip}:2379/health"),
        format!("http://{ip}:2380/members"),
        format!("http://{ip}:49153/fleet/v1/machines"),
    ] {
        let (code, body) = c.curl(&["-f", &url]);
        assert_ne!(code, 0, "plain HTTP answered: {url}: {body}");
    }
    for url in [
        format!("https://{ip}:2379/health"),
        format!("https://{ip}:2380/members"),
        format!("https://{ip}:49153/fleet/v1/machines"),
    ] {
        let (code, body) = c.curl(&["-f", "--cacert", &c.pki("ca.pem"), &url]);
        assert_ne!(
            code, 0,
            "TLS without a client certificate answered: {url}: {body}"
        );
    }

    // etcd auth, as the config asked: on once the cluster formed; the admin certificate is
    // root, each node's fleetd its node user (fleet keeps working below).
    let status = format!("https://{ip}:2379/v3/auth/status");
    wait_for(Duration::from_secs(120), "etcd auth to be on", || {
        c.curl(&[&with_cert[..], &["-X", "POST", "-d", "{}", status.as_str()]].concat())
            .1
            .contains("\"enabled\":true")
    });
    let users = c
        .etcdctl(&[1], &["user", "list"])
        .expect("user list as root");
    for u in ["root", "node1", "node2", "node3"] {
        assert!(users.lines().any(|l| l == u), "{users}");
    }
    let node = c
        .etcdctl(&[2], &["user", "get", "node3"])
        .expect("user get");
    assert!(node.contains("fleet"), "{node}");

    // SSH: core with the config's key, with sudo; root refused; the host key is the one the
    // console printed.
    let (code, out, err) = c.ssh("core", 1, "sudo -n id -u && hostname");
    assert!(
        code == 0 && out.contains("0\nnode1"),
        "ssh core@node1: {code} {out} {err}"
    );
    let (code, out, _) = c.ssh("root", 1, "id -u");
    assert_ne!(code, 0, "ssh root@node1 logged in: {out}");
    let scan = c
        .net
        .command("sh")
        .arg("-c")
        .arg(format!(
            "ssh-keyscan -t ed25519 {ip} 2>/dev/null | ssh-keygen -l -f -"
        ))
        .output()
        .expect("ssh-keyscan");
    let fingerprint = String::from_utf8_lossy(&scan.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let console = c.vms[1].as_ref().expect("node1").console();
    assert!(
        console.contains("corelite: the clock fits this node's certificate"),
        "no clock check on the console"
    );
    assert!(
        fingerprint.starts_with("SHA256:")
            && console.contains(&format!("SSH host key of node1: 256 {fingerprint}")),
        "the console does not show the host key ssh sees ({fingerprint:?})"
    );

    // fleetctl --tunnel: the API through SSH with the key in an agent, and fleetctl ssh to
    // another machine through it.
    let agent = Agent::start(c.dir.path());
    agent.add(&c.dir.path().join("id_ed25519"));
    let tunnel = |args: &[&str]| {
        let o = c
            .net
            .command(&fleetctl_bin())
            .env("SSH_AUTH_SOCK", &agent.sock)
            .args(["--tunnel", &ip, "--strict-host-key-checking=false"])
            .args(["--known-hosts-file", "/dev/null"])
            .args(args)
            .output()
            .expect("fleetctl --tunnel");
        assert!(o.status.success(), "fleetctl --tunnel {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let machines: serde_json::Value =
        serde_json::from_str(&tunnel(&["--output", "json", "list-machines"]))
            .expect("list-machines JSON");
    let node2 = machines
        .as_array()
        .expect("machines")
        .iter()
        .find(|m| m["primaryIP"] == node_ip(2))
        .and_then(|m| m["id"].as_str())
        .expect("node2 in list-machines through the tunnel")
        .to_string();
    let out = tunnel(&["ssh", &node2[..8], "hostname"]);
    assert_eq!(out.trim(), "node2", "fleetctl ssh through the tunnel");
    drop(agent);

    // Listening sockets: on addresses other than loopback, only sshd, etcd-lite and fleetd.
    let (code, out, err) = c.ssh("core", 1, "ss -Htlnu");
    assert_eq!(code, 0, "ss: {err}");
    let mut open = std::collections::BTreeSet::new();
    for l in out.lines() {
        let Some(local) = l.split_whitespace().nth(4) else {
            continue;
        };
        let (addr, port) = local.rsplit_once(':').expect("ADDR:PORT");
        if addr.starts_with("127.") || addr == "[::1]" {
            continue;
        }
        open.insert(port.to_string());
    }
    let want: std::collections::BTreeSet<String> = ["22", "2379", "2380", "49153"]
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(open, want, "ports open to the network:\n{out}");
}

/// An ssh-agent of the test's own (stopped on drop).
struct Agent {
    sock: PathBuf,
    pid: i32,
}

impl Agent {
    fn start(dir: &Path) -> Agent {
        let sock = dir.join("agent.sock");
        let o = std::process::Command::new("ssh-agent")
            .arg("-a")
            .arg(&sock)
            .output()
            .expect("ssh-agent (make deps installs openssh-client)");
        let out = String::from_utf8_lossy(&o.stdout);
        let pid = out
            .split("SSH_AGENT_PID=")
            .nth(1)
            .and_then(|r| r.split(';').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no agent pid in {out:?}"));
        Agent { sock, pid }
    }

    fn add(&self, key: &Path) {
        let o = std::process::Command::new("ssh-add")
            .env("SSH_AUTH_SOCK", &self.sock)
            .arg(key)
            .output()
            .expect("ssh-add");
        assert!(o.status.success(), "ssh-add: {o:?}");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn a_bad_config_fails_clearly_and_leaves_a_root_shell() {
    assert!(nix_is_root(), "the image tests need root (netns, taps)");
    let image = image_dir();
    let dir = tempfile::tempdir().expect("a temp dir");
    // Validation first, as a user would: the same program, before booting.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"hostname": "bad", "network": {"address": "10.219.0.300/24"}, "colour": 1}"#,
    )
    .expect("writing");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corelite-firstboot"))
        .arg("--check")
        .arg(&bad)
        .output()
        .expect("corelite-firstboot --check");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `colour`"));
    // The node boots with a config whose certificate is for another address (a config copied
    // to the wrong machine, or an address changed after the certificates were made).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corelite-config"))
        .args(["new-cluster", "--nodes", "bad=10.219.0.50", "--out"])
        .arg(dir.path().join("cluster"))
        .output()
        .expect("corelite-config");
    assert!(out.status.success(), "corelite-config: {out:?}");
    let cfg = std::fs::read_to_string(dir.path().join("cluster/nodes/bad.json"))
        .expect("the generated config")
        .replace("10.219.0.50/24", "10.219.0.60/24");
    let net = VmNet::new("bad");
    let disk = dir.path().join("bad.qcow2");
    overlay(&image.join("corelite.raw"), &disk);
    let gz = gz64(&cfg);
    let mut vm = Vm::boot(
        &net,
        Boot {
            name: "bad".into(),
            disk,
            kernel: Some((
                image.join("vmlinuz"),
                image.join("initrd.img"),
                format!(
                    "root=LABEL=corelite-root rw console=ttyS0,115200 corelite.config=gz64:{gz}"
                ),
            )),
            config_drive: None,
            tap: None,
            memory_mb: MEMORY_MB,
        },
        &log_dir(),
    );
    let said = vm.wait_console("not for this node's address 10.219.0.60", BOOT_TIMEOUT);
    assert!(said, "no error on the console:\n{}", vm.console());
    assert!(
        vm.console().contains("bad first-boot config") && vm.console().contains("tls.cert: "),
        "{}",
        vm.console()
    );
    assert!(
        vm.wait_console("root@", BOOT_TIMEOUT),
        "no root shell:\n{}",
        vm.console()
    );
    let end = Instant::now() + Duration::from_secs(120);
    while Instant::now() < end && !vm.console().contains("ROOTSHELL-42 inactive") {
        vm.type_line("echo ROOTSHELL-$((6*7)) $(systemctl is-active etcd-lite)");
        std::thread::sleep(Duration::from_secs(5));
    }
    assert!(
        vm.console().contains("ROOTSHELL-42 inactive"),
        "the root shell did not answer:\n{}",
        vm.console()
    );
    // /usr is read-only at run time; /etc and /var are writable.
    let end = Instant::now() + Duration::from_secs(60);
    let answered = |c: &str| c.contains("USR-RO-0-") || c.contains("USR-RO-1-");
    while Instant::now() < end && !answered(&vm.console()) {
        vm.type_line(
            "touch /usr/probe 2>/dev/null; u=$?; touch /etc/probe /var/probe; echo USR-RO-$u-$?",
        );
        std::thread::sleep(Duration::from_secs(5));
    }
    assert!(
        vm.console().contains("USR-RO-1-0"),
        "/usr should be read-only, /etc and /var writable:\n{}",
        vm.console()
    );
}
