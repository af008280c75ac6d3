//! fleet against the real systemd: three machines booted with `systemd-nspawn -b` from a minimal
//! Debian rootfs (built by `tests/rootfs/systemd-rootfs.sh`, cached under target/), each in its
//! own network namespace on a bridge that exists only inside a namespace of this test, where
//! etcd-lite runs. fleetd runs inside each machine as a systemd service (systemd-units/
//! fleetd.service) and drives that machine's systemd over D-Bus. What runs is checked through
//! systemd itself (`systemctl` inside the machine), not through fleet's own state.
//!
//! Needs root, systemd-nspawn (systemd-container) and mmdebstrap: `make deps`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use test_support::{eventually, require_tool};

const SUBNET: &str = "10.213.0";
const MACHINES: usize = 3;
const KEYS: &str = "/_coreos.com/fleet/";

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The etcd-lite binary built next to this test's binaries.
fn etcd_lite_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("etcd-lite");
    assert!(
        p.is_file(),
        "{} missing: build the workspace (cargo test --workspace)",
        p.display()
    );
    p
}

/// The cached rootfs, built once.
fn rootfs() -> PathBuf {
    require_tool("mmdebstrap");
    let dir = workspace().join("target/test-cache/systemd-rootfs");
    std::fs::create_dir_all(dir.parent().expect("parent")).expect("cache dir");
    ok(Command::new(workspace().join("tests/rootfs/systemd-rootfs.sh")).arg(&dir));
    dir
}

struct Machine {
    id: String,
    ip: String,
    dir: PathBuf,
    netns: String,
    nspawn: Option<Child>,
}

impl Machine {
    fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }
    fn api_sock(&self) -> PathBuf {
        self.dir.join("api/fleet.sock")
    }
    /// The container's systemd (the first process named systemd under nspawn).
    fn init_pid(&self) -> Option<u32> {
        let mut todo = vec![self.nspawn.as_ref()?.id()];
        while let Some(pid) = todo.pop() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "systemd" {
                return Some(pid);
            }
            for t in std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                todo.extend(
                    kids.split_whitespace()
                        .filter_map(|k| k.parse::<u32>().ok()),
                );
            }
        }
        None
    }
    /// Runs a command inside the machine.
    fn exec(&self, args: &[&str]) -> Output {
        let pid = self.init_pid().expect("machine is running");
        run(Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "-u", "-i", "-n", "-p", "--"])
            .args(args))
    }
    fn is_active(&self, unit: &str) -> bool {
        let out = self.exec(&["systemctl", "is-active", unit]);
        String::from_utf8_lossy(&out.stdout).trim() == "active"
    }
    fn active_matching(&self, pattern: &str) -> Vec<String> {
        let out = self.exec(&[
            "systemctl",
            "list-units",
            "--state=active",
            "--no-legend",
            "--plain",
            pattern,
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }
    fn stop(&mut self) {
        if let Some(mut c) = self.nspawn.take() {
            // SIGTERM makes nspawn power the machine off.
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Cluster {
    /// The machine whose API fleetctl talks to.
    api: std::cell::Cell<usize>,
    tmp: tempfile::TempDir,
    hub: String,
    etcd: Option<Child>,
    machines: Vec<Machine>,
    mounted_nspawn_tmpfs: bool,
}

fn ip(args: &[&str]) {
    ok(Command::new("ip").args(args));
}

impl Cluster {
    fn boot() -> Cluster {
        require_tool("systemd-nspawn");
        require_tool("nsenter");
        require_tool("etcdctl");
        let root = rootfs();
        let tag = std::process::id() % 100_000;
        let tmp = tempfile::Builder::new()
            .prefix("fleet-systemd")
            .tempdir()
            .expect("tempdir");
        let mut c = Cluster {
            api: std::cell::Cell::new(0),
            tmp,
            hub: format!("clf{tag}h"),
            etcd: None,
            machines: Vec::new(),
            mounted_nspawn_tmpfs: false,
        };
        // The host's /run is not a tmpfs and no systemd runs there; nspawn wants one here.
        let nspawn_run = Path::new("/run/systemd/nspawn");
        if !run(Command::new("mountpoint").arg("-q").arg(nspawn_run))
            .status
            .success()
        {
            std::fs::create_dir_all(nspawn_run).expect("mkdir /run/systemd/nspawn");
            ok(Command::new("mount")
                .args(["-t", "tmpfs", "tmpfs"])
                .arg(nspawn_run));
            c.mounted_nspawn_tmpfs = true;
        }
        ip(&["netns", "add", &c.hub]);
        ip(&["-n", &c.hub, "link", "set", "lo", "up"]);
        ip(&["-n", &c.hub, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &c.hub,
            "addr",
            "add",
            &format!("{SUBNET}.1/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &c.hub, "link", "set", "br0", "up"]);
        c.start_etcd();
        // The API's TLS: a CA, a certificate per machine (its IP), one for fleetctl.
        test_support::pki::pki(c.tmp.path(), "fleet");
        let fleetd = PathBuf::from(env!("CARGO_BIN_EXE_fleetd"));
        for i in 1..=MACHINES {
            let m = Machine {
                id: format!("c0ffee{i:026}"),
                ip: format!("{SUBNET}.{}", 10 + i),
                dir: c.tmp.path().join(format!("m{i}")),
                netns: format!("clf{tag}m{i}"),
                nspawn: None,
            };
            for d in ["up", "work", "merged", "api"] {
                std::fs::create_dir_all(m.dir.join(d)).expect("machine dirs");
            }
            ip(&["netns", "add", &m.netns]);
            let veth = format!("vf{tag}m{i}");
            ip(&[
                "-n", &c.hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                "netns", &m.netns,
            ]);
            ip(&["-n", &c.hub, "link", "set", &veth, "master", "br0", "up"]);
            ip(&[
                "-n",
                &m.netns,
                "addr",
                "add",
                &format!("{}/24", m.ip),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &m.netns, "link", "set", "eth0", "up"]);
            ip(&["-n", &m.netns, "link", "set", "lo", "up"]);
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                root.display(),
                m.dir.join("up").display(),
                m.dir.join("work").display()
            );
            ok(Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &opts])
                .arg(m.merged()));
            let mr = m.merged();
            std::fs::write(mr.join("etc/machine-id"), format!("{}\n", m.id)).expect("machine-id");
            std::fs::write(mr.join("etc/hostname"), format!("m{i}\n")).expect("hostname");
            std::fs::copy(&fleetd, mr.join("usr/bin/fleetd")).expect("copy fleetd");
            std::fs::copy(
                workspace().join("systemd-units/fleetd.service"),
                mr.join("etc/systemd/system/fleetd.service"),
            )
            .expect("fleetd.service");
            std::os::unix::fs::symlink(
                "/etc/systemd/system/fleetd.service",
                mr.join("etc/systemd/system/multi-user.target.wants/fleetd.service"),
            )
            .expect("enable fleetd");
            std::fs::create_dir_all(mr.join("etc/fleet/pki")).expect("etc/fleet/pki");
            test_support::pki::issue(
                c.tmp.path(),
                "fleet",
                &format!("m{i}"),
                &format!(
                    "subjectAltName=IP:{}\nextendedKeyUsage=serverAuth,clientAuth\n",
                    m.ip
                ),
            );
            for (from, to) in [
                ("fleet-ca.pem".to_string(), "ca.pem"),
                (format!("m{i}.pem"), "node.pem"),
                (format!("m{i}-key.pem"), "node-key.pem"),
            ] {
                std::fs::copy(c.tmp.path().join(from), mr.join("etc/fleet/pki").join(to))
                    .expect("copying the machine's certificate");
            }
            let metadata = if i == 1 {
                "role=control".to_string()
            } else {
                format!("role=worker,disk=d{i}")
            };
            std::fs::write(
                mr.join("etc/fleet/fleetd.env"),
                format!(
                    "FLEET_ETCD_SERVERS=http://{SUBNET}.1:2379\nFLEET_LISTEN=/run/fleet-api/fleet.sock\n\
                     FLEET_LISTEN_TCP=0.0.0.0:49153\nFLEET_METADATA={metadata}\nFLEET_AGENT_TTL=5s\n\
                     FLEET_ENGINE_TTL=3s\nFLEET_API_CERT_FILE=/etc/fleet/pki/node.pem\n\
                     FLEET_API_KEY_FILE=/etc/fleet/pki/node-key.pem\n\
                     FLEET_API_TRUSTED_CA_FILE=/etc/fleet/pki/ca.pem\n"
                ),
            )
            .expect("fleetd.env");
            c.machines.push(m);
            c.start_machine(i - 1);
        }
        c
    }

    fn start_machine(&mut self, idx: usize) {
        let m = &mut self.machines[idx];
        let log = std::fs::File::create(m.dir.join("console.log")).expect("console log");
        let child = Command::new("systemd-nspawn")
            .args(["-q", "-b", "-D"])
            .arg(m.merged())
            .args(["-M", &m.netns, "--register=no", "--keep-unit"])
            .arg(format!("--network-namespace-path=/run/netns/{}", m.netns))
            .arg(format!(
                "--bind={}:/run/fleet-api",
                m.dir.join("api").display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting systemd-nspawn");
        m.nspawn = Some(child);
    }

    fn start_etcd(&mut self) {
        let log = std::fs::File::create(self.tmp.path().join("etcd.log")).expect("etcd log");
        let url = format!("http://{SUBNET}.1:2379");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.hub])
            .arg(etcd_lite_bin())
            .arg("--data-dir")
            .arg(self.tmp.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd-lite");
        self.etcd = Some(child);
        eventually(Duration::from_secs(20), "etcd-lite serves", || {
            self.etcdctl(&["endpoint", "health"]).status.success()
        });
    }

    fn stop_etcd(&mut self) {
        if let Some(mut c) = self.etcd.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    fn etcdctl(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.hub,
                "etcdctl",
                "--endpoints",
                &format!("{SUBNET}.1:2379"),
            ])
            .args(args)
            .env("ETCDCTL_API", "3"))
    }

    /// fleetctl against a machine's API (machine 1 unless `api` says otherwise; over TLS with
    /// a client certificate, from the hub namespace), in the test's directory.
    fn fleetctl(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.hub, env!("CARGO_BIN_EXE_fleetctl")])
            .args([
                "--endpoint",
                &format!("https://{}:49153", self.machines[self.api.get()].ip),
                "--ca-file",
                "fleet-ca.pem",
                "--cert-file",
                "fleet-client.pem",
                "--key-file",
                "fleet-client-key.pem",
            ])
            .args(args)
            .current_dir(self.tmp.path()))
    }

    /// curl from the hub namespace, in the test's directory: (exit code, output).
    fn curl(&self, args: &[&str]) -> (i32, String) {
        let out = run(Command::new("ip")
            .args(["netns", "exec", &self.hub, "curl", "-s", "-m", "10"])
            .args(args)
            .current_dir(self.tmp.path()));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn fleetctl_ok(&self, args: &[&str]) -> String {
        let out = self.fleetctl(args);
        assert!(
            out.status.success(),
            "fleetctl {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn write_unit(&self, name: &str, text: &str) {
        std::fs::write(self.tmp.path().join(name), text).expect("writing unit file");
    }

    /// unit -> machine id, from `fleetctl list-unit-files --output json`.
    fn placement(&self, unit: &str) -> Option<String> {
        let out = self.fleetctl(&["--output", "json", "list-unit-files"]);
        let units: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        units.as_array()?.iter().find(|u| u["name"] == unit)?["machineID"]
            .as_str()
            .map(str::to_string)
    }

    fn machine(&self, id: &str) -> &Machine {
        self.machines
            .iter()
            .find(|m| m.id == id)
            .unwrap_or_else(|| panic!("no machine {id}"))
    }

    fn machine_count(&self) -> usize {
        let out = self.fleetctl(&["--output", "json", "list-machines"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0)
    }

    fn leader(&self) -> String {
        let out = self.etcdctl(&["get", &format!("{KEYS}engine/leader"), "--print-value-only"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for m in &self.machines {
            if m.nspawn.is_some() {
                let out = m.exec(&["journalctl", "-u", "fleetd", "--no-pager", "-n", "40"]);
                s += &format!(
                    "--- fleetd on {}:\n{}\n",
                    m.id,
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.machines {
            m.stop();
        }
        self.stop_etcd();
        for m in &self.machines {
            let _ = Command::new("umount").arg(m.merged()).status();
            let _ = Command::new("ip").args(["netns", "del", &m.netns]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub])
            .status();
        if self.mounted_nspawn_tmpfs {
            let _ = Command::new("umount").arg("/run/systemd/nspawn").status();
        }
    }
}

const LONG: Duration = Duration::from_secs(60);

#[test]
fn fleet_runs_units_on_real_systemd_machines() {
    let mut c = Cluster::boot();
    eventually(LONG, "3 machines registered", || {
        c.machine_count() == MACHINES
    });
    let ids: Vec<String> = c.machines.iter().map(|m| m.id.clone()).collect();

    // The TCP API is TLS with client certificates signed by the cluster CA, nothing else.
    let api = format!("https://{}:49153/fleet/v1/machines", c.machines[1].ip);
    let (code, body) = c.curl(&[
        "--cacert",
        "fleet-ca.pem",
        "--cert",
        "fleet-client.pem",
        "--key",
        "fleet-client-key.pem",
        &api,
    ]);
    assert!(
        code == 0 && body.contains(&ids[1]),
        "with a client certificate: {code} {body}"
    );
    let (code, _) = c.curl(&[&api.replace("https:", "http:")]);
    assert_ne!(code, 0, "plain HTTP to the TLS port");
    let (code, _) = c.curl(&["--cacert", "fleet-ca.pem", &api]);
    assert_ne!(code, 0, "TLS without a client certificate");
    test_support::pki::pki(c.tmp.path(), "stranger");
    let (code, _) = c.curl(&[
        "--cacert",
        "fleet-ca.pem",
        "--cert",
        "stranger-client.pem",
        "--key",
        "stranger-client-key.pem",
        &api,
    ]);
    assert_ne!(code, 0, "a client certificate from another CA");
    test_support::pki::issue_for_days(
        c.tmp.path(),
        "fleet",
        "old",
        "extendedKeyUsage=clientAuth\n",
        -1,
    );
    let o = run(Command::new("ip")
        .args(["netns", "exec", &c.hub, "curl", "-sS", "-m", "10"])
        .args([
            "--cacert",
            "fleet-ca.pem",
            "--cert",
            "old.pem",
            "--key",
            "old-key.pem",
            &api,
        ])
        .current_dir(c.tmp.path()));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("expired"),
        "an expired client certificate: {err}"
    );

    // The API over the unix socket, with curl.
    let sock = c.machines[0].api_sock();
    let curl = |args: &[&str]| {
        let out = run(Command::new("curl")
            .args([
                "-s",
                "-H",
                "Content-Type: application/json",
                "--unix-socket",
            ])
            .arg(&sock)
            .args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let machines: serde_json::Value =
        serde_json::from_str(&curl(&["http://localhost/fleet/v1/machines"]))
            .expect("machines JSON");
    let listed: Vec<&str> = machines["machines"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>());
    let bad_name = curl(&[
        "-XPUT",
        "http://localhost/fleet/v1/units/bad%20name.service",
        "-w",
        " %{http_code}",
        "-d",
        r#"{"desiredState":"launched","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}]}"#,
    ]);
    assert!(
        bad_name.ends_with(" 400") && bad_name.contains("invalid unit name"),
        "{bad_name}"
    );
    let bad_json = curl(&[
        "-XPUT",
        "http://localhost/fleet/v1/units/x.service",
        "-d",
        "{",
        "-w",
        " %{http_code}",
    ]);
    assert!(
        bad_json.ends_with(" 400") && bad_json.contains("unable to decode body"),
        "{bad_json}"
    );

    // A simple service on a worker, a sidekick next to it, and a global unit on the workers.
    c.write_unit(
        "hello.service",
        "[Unit]\nDescription=Hello from fleet\n[Service]\nExecStart=/bin/sh -c 'echo hello-from-fleet; exec sleep 1000'\n[X-Fleet]\nMachineMetadata=role=worker\n",
    );
    c.write_unit(
        "sidekick.service",
        "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nMachineOf=hello.service\n",
    );
    c.write_unit(
        "agent.service",
        "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nGlobal=true\nMachineMetadata=role=worker\n",
    );
    let out = c.fleetctl_ok(&[
        "--block-attempts",
        "60",
        "start",
        "hello.service",
        "sidekick.service",
        "agent.service",
    ]);
    assert!(out.contains("Unit hello.service launched on"), "{out}");
    assert!(
        out.contains("Triggered global unit agent.service launched"),
        "{out}"
    );
    let hello_on = c.placement("hello.service").expect("hello placed");
    assert_ne!(hello_on, ids[0], "hello needs role=worker");
    assert_eq!(
        c.placement("sidekick.service").as_deref(),
        Some(hello_on.as_str())
    );
    for m in &c.machines {
        let here = m.id == hello_on;
        assert_eq!(
            m.is_active("hello.service"),
            here,
            "hello.service on {}",
            m.id
        );
        assert_eq!(
            m.is_active("sidekick.service"),
            here,
            "sidekick.service on {}",
            m.id
        );
    }
    eventually(LONG, "the global unit runs on both workers", || {
        !c.machines[0].is_active("agent.service")
            && c.machines[1].is_active("agent.service")
            && c.machines[2].is_active("agent.service")
    });

    // Templates with Conflicts spread one instance per machine.
    c.write_unit(
        "web@.service",
        "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nConflicts=web@*.service\n",
    );
    c.fleetctl_ok(&["submit", "web@.service"]);
    c.fleetctl_ok(&["--block-attempts", "60", "start", "web@1", "web@2", "web@3"]);
    for m in &c.machines {
        assert_eq!(
            m.active_matching("web@*").len(),
            1,
            "one web@ instance on {}",
            m.id
        );
    }

    // status and journal come from the unit's machine, whichever fleetd is asked.
    let status = c.fleetctl_ok(&["status", "hello.service"]);
    assert!(
        status.contains("active (running)") && status.contains("Hello from fleet"),
        "{status}"
    );
    eventually(
        Duration::from_secs(20),
        "journal shows the unit's output",
        || {
            c.fleetctl_ok(&["journal", "-n", "20", "hello.service"])
                .contains("hello-from-fleet")
        },
    );
    let table = c.fleetctl_ok(&["list-units"]);
    assert!(
        table.lines().next().is_some_and(|h| h.starts_with("UNIT")),
        "{table}"
    );
    assert!(
        table.contains("hello.service") && table.contains("running"),
        "{table}"
    );

    // Bad unit files are refused before anything is stored.
    c.write_unit("broken.service", "[Service\nExecStart=/bin/true\n");
    let out = c.fleetctl(&["start", "broken.service"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 1"),
        "{out:?}"
    );
    c.write_unit(
        "odd.service",
        "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineIDz=abc\n",
    );
    let out = c.fleetctl(&["start", "odd.service"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown option MachineIDz"),
        "{out:?}"
    );
    assert!(c.placement("broken.service").is_none() && c.placement("odd.service").is_none());
    // A unit no machine can take is reported, not looped on; everything else keeps running.
    c.write_unit(
        "nowhere.service",
        "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineID=nope\n",
    );
    let out = c.fleetctl(&["--block-attempts", "6", "start", "nowhere.service"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not reach state launched"),
        "{out:?}"
    );
    assert_eq!(c.placement("nowhere.service"), None);
    c.fleetctl_ok(&["destroy", "nowhere.service"]);
    assert!(c.machine(&hello_on).is_active("hello.service"));

    // stop keeps the unit loaded; destroy removes it from systemd.
    let out = c.fleetctl_ok(&["--block-attempts", "60", "stop", "sidekick.service"]);
    assert!(out.contains("Unit sidekick.service loaded on"), "{out}");
    let host = c.machine(&hello_on);
    assert!(!host.is_active("sidekick.service"));
    assert!(host
        .exec(&["test", "-e", "/run/systemd/system/sidekick.service"])
        .status
        .success());
    c.fleetctl_ok(&["destroy", "sidekick.service"]);
    eventually(LONG, "destroyed unit gone from systemd", || {
        !c.machine(&hello_on)
            .exec(&["test", "-e", "/run/systemd/system/sidekick.service"])
            .status
            .success()
    });

    // The engine moves when its fleetd stops; units keep running; scheduling goes on.
    let leader = c.leader();
    assert!(ids.contains(&leader), "engine leader {leader:?}");
    // fleetctl asks a machine whose fleetd stays up.
    let other = c
        .machines
        .iter()
        .position(|m| m.id != leader)
        .expect("another machine");
    c.api.set(other);
    c.machine(&leader).exec(&["systemctl", "stop", "fleetd"]);
    eventually(LONG, "another engine leader", || {
        let l = c.leader();
        !l.is_empty() && l != leader
    });
    for m in &c.machines {
        assert_eq!(
            m.active_matching("web@*").len(),
            1,
            "web@ still running on {}",
            m.id
        );
    }
    c.write_unit(
        "after-failover.service",
        "[Service]\nExecStart=/bin/sleep 1000\n",
    );
    c.fleetctl_ok(&["--block-attempts", "60", "start", "after-failover.service"]);
    c.machine(&leader).exec(&["systemctl", "start", "fleetd"]);
    // Back to machine 1 (never a worker, so it survives the machine loss below).
    c.api.set(0);
    eventually(LONG, "every fleetd serves again", || {
        c.machine_count() == MACHINES
    });

    // The store goes away and comes back: units keep running, fleet reconciles.
    c.stop_etcd();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        c.machine(&hello_on).is_active("hello.service"),
        "units survive the store's absence"
    );
    c.start_etcd();
    eventually(LONG, "machines re-registered", || {
        c.machine_count() == MACHINES
    });
    c.write_unit(
        "mover.service",
        "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nMachineMetadata=role=worker\n",
    );
    c.fleetctl_ok(&["--block-attempts", "60", "start", "mover.service"]);

    // A machine dies: its units move to another within the TTL.
    let first = c.placement("mover.service").expect("mover placed");
    assert!(c.machine(&first).is_active("mover.service"));
    let idx = c
        .machines
        .iter()
        .position(|m| m.id == first)
        .expect("machine");
    c.machines[idx].stop();
    eventually(
        LONG,
        "mover.service rescheduled and running elsewhere",
        || match c.placement("mover.service") {
            Some(m) if m != first => c.machine(&m).is_active("mover.service"),
            _ => false,
        },
    );
    assert_eq!(c.machine_count(), MACHINES - 1);
}
