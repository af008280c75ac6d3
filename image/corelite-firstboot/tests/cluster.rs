//! The image end to end, as root: three nodes booted under qemu (TCG) from the image `make image`
//! built (two from the disk with a config drive, one by direct kernel boot with the config on
//! the command line) on a bridge inside a network namespace of the test's own. The cluster must
//! form from the first-boot configs alone; a container unit started through fleetctl runs and
//! its output is read; a killed node's unit moves and the store keeps serving; the node boots
//! again and rejoins. A node with a bad config says why on its console and offers a root shell.

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

fn node_config(i: usize) -> String {
    let cluster: Vec<String> = (1..=3)
        .map(|j| format!("node{j}=http://{}:2380", node_ip(j)))
        .collect();
    serde_json::json!({
        "hostname": format!("node{i}"),
        "network": {"address": format!("{}/24", node_ip(i)), "gateway": test_support::vm::HOST_IP},
        "etcd": {"initial_cluster": cluster.join(","), "initial_cluster_token": "image-test"},
        "fleet": {"metadata": {"node": format!("n{i}")}, "agent_ttl": 10}
    })
    .to_string()
}

struct Cluster {
    net: VmNet,
    dir: tempfile::TempDir,
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
        let cfg = node_config(i);
        let (kernel, config_drive_path) = if i == 3 {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&cfg);
            let append = format!(
                "root=LABEL=corelite-root rw console=ttyS0,115200 corelite.config=base64:{b64}"
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

    fn etcdctl(&self, endpoints: &[usize], args: &[&str]) -> Result<String, String> {
        // host:port, not http://host:port: etcdctl 3.4 sends a scheme-prefixed endpoint as the
        // HTTP/2 :authority of Status calls, which the h2 crate rejects as malformed.
        let eps: Vec<String> = endpoints
            .iter()
            .map(|i| format!("{}:2379", node_ip(*i)))
            .collect();
        let mut a = vec![
            "--endpoints".to_string(),
            eps.join(","),
            "--dial-timeout=3s".into(),
            "--command-timeout=5s".into(),
        ];
        a.extend(args.iter().map(|s| s.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let o = self
            .net
            .command("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(&a)
            .output()
            .expect("etcdctl");
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    fn fleetctl(&self, via: usize, args: &[&str]) -> Result<String, String> {
        let o = self
            .net
            .command(&fleetctl_bin())
            .arg("--endpoint")
            .arg(format!("http://{}:49153", node_ip(via)))
            .args(args)
            .output()
            .expect("fleetctl");
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
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
    let mut c = Cluster {
        net: VmNet::new("img"),
        dir: tempfile::tempdir().expect("a temp dir"),
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
    let net = VmNet::new("bad");
    let disk = dir.path().join("bad.qcow2");
    overlay(&image.join("corelite.raw"), &disk);
    let cfg = r#"{"hostname": "bad", "network": {"address": "10.219.0.300/24"}}"#;
    let b64 = base64::engine::general_purpose::STANDARD.encode(cfg);
    let mut vm = Vm::boot(
        &net,
        Boot {
            name: "bad".into(),
            disk,
            kernel: Some((
                image.join("vmlinuz"),
                image.join("initrd.img"),
                format!(
                    "root=LABEL=corelite-root rw console=ttyS0,115200 corelite.config=base64:{b64}"
                ),
            )),
            config_drive: None,
            tap: None,
            memory_mb: MEMORY_MB,
        },
        &log_dir(),
    );
    let said = vm.wait_console("network.address", BOOT_TIMEOUT);
    assert!(said, "no error on the console:\n{}", vm.console());
    assert!(
        vm.console().contains("bad first-boot config"),
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
