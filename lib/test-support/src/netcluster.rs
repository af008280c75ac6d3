//! etcd-lite members on a network of their own: each member runs in its own network namespace,
//! joined to the others by a bridge inside a hub namespace of the test (nothing else sees the
//! addresses, 10.<net>.0.0/24). Faults: kill -9 and restart, SIGSTOP/SIGCONT, a cut link
//! (partition) and its healing, and a member whose data directory is a small tmpfs that can be
//! filled. Everything the cluster made (processes, namespaces, mounts, directories) is removed
//! when it is dropped. Needs root (`ip netns`, `mount`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::require_tool;

/// Runs `ip` with `args`, panicking with its error output when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One member: its namespace, its end of the bridge, its address, its process.
pub struct NetMember {
    pub netns: String,
    veth: String,
    pub addr: String,
    child: Option<Child>,
    /// A tmpfs mounted on the data directory (see [`NetCluster::small_disk`]).
    mounted: bool,
}

/// A cluster of `n` members, each in its own network namespace.
pub struct NetCluster {
    bin: PathBuf,
    pub hub: String,
    tmp: tempfile::TempDir,
    pub members: Vec<NetMember>,
    initial: String,
    token: String,
}

impl NetCluster {
    /// Makes the network for `n` members on subnet 10.<net>.0.0/24 (`net` must differ between
    /// clusters that exist at the same time) and starts them; returns once one is leader.
    pub fn start(bin: &str, n: usize, net: u8) -> NetCluster {
        let mut c = Self::network(bin, n, net);
        for i in 0..n {
            c.spawn(i);
        }
        c.leader_index(Duration::from_secs(20));
        c
    }

    /// The network and data directories only; no member runs yet (see [`NetCluster::spawn`]).
    pub fn network(bin: &str, n: usize, net: u8) -> NetCluster {
        require_tool("etcdctl");
        let tag = std::process::id() % 100_000;
        let hub = format!("clp{tag}h{net}");
        let tmp = tempfile::Builder::new()
            .prefix("etcd-netcluster")
            .tempdir()
            .expect("tempdir");
        ip(&["netns", "add", &hub]);
        let mut c = NetCluster {
            bin: PathBuf::from(bin),
            hub,
            tmp,
            members: Vec::new(),
            initial: String::new(),
            token: format!("netcluster-{tag}-{net}"),
        };
        ip(&["-n", &c.hub, "link", "set", "lo", "up"]);
        ip(&["-n", &c.hub, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &c.hub,
            "addr",
            "add",
            &format!("10.{net}.0.1/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &c.hub, "link", "set", "br0", "up"]);
        for i in 0..n {
            let m = NetMember {
                netns: format!("clp{tag}n{net}m{i}"),
                veth: format!("vp{net}m{i}"),
                addr: format!("10.{net}.0.{}", 11 + i),
                child: None,
                mounted: false,
            };
            ip(&["netns", "add", &m.netns]);
            ip(&[
                "-n", &c.hub, "link", "add", &m.veth, "type", "veth", "peer", "name", "eth0",
                "netns", &m.netns,
            ]);
            ip(&["-n", &c.hub, "link", "set", &m.veth, "master", "br0", "up"]);
            ip(&[
                "-n",
                &m.netns,
                "addr",
                "add",
                &format!("{}/24", m.addr),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &m.netns, "link", "set", "eth0", "up"]);
            ip(&["-n", &m.netns, "link", "set", "lo", "up"]);
            std::fs::create_dir_all(c.tmp.path().join(format!("m{i}"))).expect("data dir");
            c.members.push(m);
        }
        let initial: Vec<String> = c
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("m{i}=http://{}:2380", m.addr))
            .collect();
        c.initial = initial.join(",");
        c
    }

    /// Member `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.tmp.path().join(format!("m{i}"))
    }

    /// Member `i`'s log (every start appends to it).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.tmp.path().join(format!("m{i}.log"))).unwrap_or_default()
    }

    /// Mounts a tmpfs of `bytes` on member `i`'s data directory (before its first start), so
    /// that the member's disk can be filled ([`NetCluster::fill_disk`]).
    pub fn small_disk(&mut self, i: usize, bytes: u64) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        let dir = self.data_dir(i);
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.members[i].mounted = true;
    }

    /// Fills member `i`'s small disk to the last byte with a file of its own (removed by
    /// [`NetCluster::free_disk`]).
    pub fn fill_disk(&self, i: usize) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.filler(i)).expect("creating the filler");
        let block = vec![0x55u8; 1 << 20];
        while f.write_all(&block).is_ok() {}
        let mut byte = [0u8; 1];
        while f.write_all(&byte[..]).is_ok() {
            byte[0] = byte[0].wrapping_add(1);
        }
    }

    /// Gives member `i`'s disk its space back.
    pub fn free_disk(&self, i: usize) {
        let _ = std::fs::remove_file(self.filler(i));
    }

    fn filler(&self, i: usize) -> PathBuf {
        self.data_dir(i).join("filler")
    }

    /// Starts member `i` (again) with `env` set, on its data directory.
    pub fn spawn_env(&mut self, i: usize, env: &[(&str, &str)]) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        let m = &self.members[i];
        let data = self.data_dir(i).join("data");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join(format!("m{i}.log")))
            .expect("log");
        let client = format!("http://{}:2379", m.addr);
        let peer = format!("http://{}:2380", m.addr);
        let child = Command::new("ip")
            .args(["netns", "exec", &m.netns])
            .arg(&self.bin)
            .args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                &self.initial,
                "--initial-cluster-token",
                &self.token,
            ])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd-lite");
        self.members[i].child = Some(child);
    }

    /// Starts member `i` (again) on its data directory.
    pub fn spawn(&mut self, i: usize) {
        self.spawn_env(i, &[]);
    }

    /// Whether member `i`'s process runs (reaps it if it exited).
    pub fn running(&mut self, i: usize) -> bool {
        match self.members[i].child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.members[i].child = None;
                false
            }
            None => false,
        }
    }

    /// The pid of member `i`'s process, if it runs. `ip netns exec` execs the member, so this
    /// is etcd-lite's own pid.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// kill -9 member `i` and reap it.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to member `i`, if it runs.
    pub fn signal(&self, i: usize, signal: &str) {
        if let Some(pid) = self.pid(i) {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &pid.to_string()])
                .status();
        }
    }

    /// etcdctl from the hub against the given members.
    pub fn etcdctl(&self, members: &[usize], args: &[&str]) -> Output {
        let eps: Vec<String> = members
            .iter()
            .map(|i| format!("{}:2379", self.members[*i].addr))
            .collect();
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.hub,
                "etcdctl",
                "--endpoints",
                &eps.join(","),
            ])
            .args(["--command-timeout", "3s", "--dial-timeout", "2s"])
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("running etcdctl")
    }

    /// etcdctl inside member `i`'s own namespace (reaches it while it is cut off).
    pub fn etcdctl_inside(&self, i: usize, args: &[&str]) -> Output {
        let m = &self.members[i];
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &m.netns,
                "etcdctl",
                "--endpoints",
                &format!("{}:2379", m.addr),
            ])
            .args(["--command-timeout", "3s", "--dial-timeout", "2s"])
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("running etcdctl")
    }

    /// etcdctl that must succeed; its output.
    pub fn ok(&self, members: &[usize], args: &[&str]) -> String {
        let out = self.etcdctl(members, args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Member `i`'s (member id, leader id, raft term), if it answers.
    pub fn status(&self, i: usize) -> Option<(u64, u64, u64)> {
        let out = self.etcdctl_inside(i, &["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let st = &v[0]["Status"];
        Some((
            st["header"]["member_id"].as_u64()?,
            st["leader"].as_u64()?,
            st["raftTerm"].as_u64()?,
        ))
    }

    /// Member `i`'s current revision, if it answers.
    pub fn revision(&self, i: usize) -> Option<u64> {
        let out = self.etcdctl_inside(i, &["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v[0]["Status"]["header"]["revision"].as_u64()
    }

    /// Member `i`'s (HashKV hash, revision) at its current revision, if it answers.
    pub fn hashkv(&self, i: usize) -> Option<(u64, u64)> {
        let out = self.etcdctl_inside(i, &["endpoint", "hashkv", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some((
            v[0]["HashKV"]["hash"].as_u64()?,
            v[0]["HashKV"]["header"]["revision"].as_u64()?,
        ))
    }

    /// The index of the member that leads, waiting up to `timeout` for one.
    pub fn leader_index(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(i) = self.leader_now() {
                return i;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no leader elected");
    }

    /// The index of the member that says it leads now, if any.
    pub fn leader_now(&self) -> Option<usize> {
        (0..self.members.len())
            .find(|&i| self.status(i).is_some_and(|(me, leader, _)| me == leader))
    }

    /// Cuts member `i` off the network (its link goes down).
    pub fn cut(&self, i: usize) {
        ip(&[
            "-n",
            &self.hub,
            "link",
            "set",
            &self.members[i].veth,
            "down",
        ]);
    }

    /// Brings member `i`'s link back.
    pub fn heal(&self, i: usize) {
        ip(&["-n", &self.hub, "link", "set", &self.members[i].veth, "up"]);
    }

    /// The hub namespace's path, for a thread that joins it to reach every member.
    pub fn hub_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.hub)
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        // `NETCLUSTER_LOGS=dir` keeps every member's log (m0.log, ...) for a look afterwards.
        if let Some(dir) = std::env::var_os("NETCLUSTER_LOGS") {
            let dir = PathBuf::from(dir);
            let _ = std::fs::create_dir_all(&dir);
            for i in 0..self.members.len() {
                let name = format!("m{i}.log");
                let _ = std::fs::copy(self.tmp.path().join(&name), dir.join(&name));
            }
        }
        for i in 0..self.members.len() {
            // A stopped member must run again to die of SIGKILL promptly and be reaped.
            self.signal(i, "CONT");
            self.kill9(i);
            let m = &self.members[i];
            let _ = Command::new("ip").args(["netns", "del", &m.netns]).status();
            if m.mounted {
                let _ = Command::new("umount").arg(self.data_dir(i)).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub])
            .status();
    }
}
