//! Test harness shared by the integration tests: starts real `etcd-lite` processes on loopback
//! ports with their own temporary data directories, runs real clients (`etcdctl`, `curl`) against
//! them, and cleans up (only the processes it started, by PID) when dropped — also when a test
//! fails.
//!
//! Tools the tests need are installed by `make deps`; a missing tool is a loud failure, never a
//! skip. [`vm`] boots qemu nodes (the image tests) on a private network; [`netcluster`] runs
//! members in network namespaces of their own (partitions, faults); [`linearizability`] checks
//! key-value histories.

pub mod linearizability;
pub mod netcluster;
pub mod pki;
pub mod vm;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a member may take to answer its first request.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Fails loudly when a tool the tests depend on is not installed.
pub fn require_tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("required tool `{name}` is not installed; run `make deps`");
}

/// Ports [`free_port`] handed out in this process: never handed out twice.
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A free TCP port on 127.0.0.1 (the kernel's pick; released before use), never one this
/// process was given before: a member that is down for a while (killed, restarted) leaves its
/// ports free, and a test running beside it must not start a member on them.
pub fn free_port() -> u16 {
    first_new_port(|| {
        let l = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral loopback port");
        l.local_addr().expect("bound socket has an address").port()
    })
}

/// The first port from `pick` that was not handed out before (and is now).
fn first_new_port(mut pick: impl FnMut() -> u16) -> u16 {
    loop {
        let port = pick();
        if HANDED_OUT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port)
        {
            return port;
        }
    }
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port` (or on any address
/// at that port), as /proc tells: not some other process that took the port meanwhile.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let want = [
        format!("0100007F:{port:04X}"),
        format!("00000000:{port:04X}"),
    ];
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local address, state (0A: LISTEN), inode
            (f.len() > 9 && want.iter().any(|w| w == f[1]) && f[3] == "0A")
                .then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
    })
}

/// One running etcd-lite member.
pub struct EtcdLite {
    bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    /// Serves https:// on its client URL (TLS flags in `extra`).
    tls: bool,
}

impl EtcdLite {
    /// Starts a member with a fresh data directory; waits until it serves.
    pub fn start(bin: &str, extra: &[&str]) -> Self {
        Self::start_env(bin, extra, &[])
    }

    /// [`EtcdLite::start`] with an https:// client URL: `extra` holds the TLS flags (paths
    /// absolute). etcdctl and curl helpers do not apply to it.
    pub fn start_tls(bin: &str, extra: &[&str]) -> Self {
        Self::start_with(bin, extra, &[], true)
    }

    /// [`EtcdLite::start`] with environment variables set for the member's process.
    pub fn start_env(bin: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_with(bin, extra, env, false)
    }

    /// A member with its own ports and an empty directory, not started: put a data
    /// directory at [`EtcdLite::data_dir`] (a restored snapshot, say), then
    /// [`EtcdLite::respawn`].
    pub fn stopped(bin: &str, extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("etcd-lite-test")
            .tempdir()
            .expect("creating a temporary data directory");
        EtcdLite {
            bin: PathBuf::from(bin),
            dir,
            port: free_port(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            tls: false,
        }
    }

    /// Where the member keeps its data (`--data-dir`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn start_with(bin: &str, extra: &[&str], env: &[(&str, &str)], tls: bool) -> Self {
        let mut m = Self::stopped(bin, extra);
        m.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        m.tls = tls;
        m.spawn();
        m
    }

    /// The client endpoint, `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("member is running")
    }

    fn spawn(&mut self) {
        let scheme = if self.tls { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{}", self.port);
        let child = Command::new(&self.bin)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(&self.extra)
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join("etcd-lite.log"))
                    .expect("opening the member's log file"),
            ))
            .spawn()
            .expect("starting etcd-lite");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("etcd-lite exited early with {status}; log:\n{}", self.log());
            }
            // The port must be this member's: another process may have taken it while the
            // member was down, and then the member fails to listen and exits.
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && listens_on(self.pid(), self.port)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "etcd-lite did not start in {START_TIMEOUT:?}; log:\n{}",
            self.log()
        );
    }

    /// The member's log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("etcd-lite.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits up to `timeout` for the process to exit by itself; its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// kill -9, then wait for the process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    /// Starts the member again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Sets `flag`'s value for the next starts (adds the flag if the member had none).
    pub fn set_flag(&mut self, flag: &str, value: &str) {
        match self.extra.iter().position(|a| a == flag) {
            Some(i) if i + 1 < self.extra.len() => self.extra[i + 1] = value.to_string(),
            _ => self.extra.extend([flag.to_string(), value.to_string()]),
        }
    }

    /// Leaves `flag` and its value out of the next starts.
    pub fn remove_flag(&mut self, flag: &str) {
        if let Some(i) = self.extra.iter().position(|a| a == flag) {
            let end = (i + 2).min(self.extra.len());
            self.extra.drain(i..end);
        }
    }

    /// Starts the member again after [`EtcdLite::terminate`] or [`EtcdLite::kill9`].
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "member is still running");
        self.spawn();
    }

    /// etcdctl that may fail: stdout, or stderr as the error.
    pub fn try_etcdctl(&self, args: &[&str]) -> Result<String, String> {
        let out = self.etcdctl(args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs the real etcdctl (API v3) against this member.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_stdin(args, None)
    }

    /// Runs etcdctl with `stdin` fed in.
    pub fn etcdctl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let bin = require_tool("etcdctl");
        let mut cmd = Command::new(bin);
        cmd.env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint(), "--dial-timeout", "5s"])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("running etcdctl");
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            pipe.write_all(input.as_bytes())
                .expect("writing etcdctl's stdin");
        }
        child.wait_with_output().expect("waiting for etcdctl")
    }

    /// etcdctl that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// etcdctl that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            !out.status.success(),
            "etcdctl {args:?} succeeded but should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs curl against this member: `args` are passed as is, `path` is appended to the base URL.
    /// Returns (HTTP status, body, response headers).
    pub fn curl(&self, args: &[&str], path: &str) -> (u16, String, String) {
        let bin = require_tool("curl");
        let headers = self.dir.path().join(format!("headers-{}", free_port()));
        let out = Command::new(bin)
            .args(["-sS", "--max-time", "30", "-o", "-", "-D"])
            .arg(&headers)
            .args(["-w", "\n%{http_code}"])
            .args(args)
            .arg(self.url(path))
            .output()
            .expect("running curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        let mut hdrs = std::fs::read_to_string(&headers).unwrap_or_default();
        let _ = std::fs::remove_file(&headers);
        if !out.status.success() {
            // Status 0: no answer. Say why (as headers: callers print them on failure).
            hdrs.push_str(&format!("curl: {}", String::from_utf8_lossy(&out.stderr)));
        }
        (code.trim().parse().unwrap_or(0), body.to_string(), hdrs)
    }
}

impl EtcdLite {
    /// One gRPC call through curl (HTTP/2, no client-side deadline of its own): `method` as
    /// `/package.Service/Method`, `message` the encoded request, `headers` extra request
    /// headers. Returns the response's headers and trailers as curl shows them.
    pub fn grpc_curl(&self, method: &str, message: &[u8], headers: &[&str]) -> String {
        let frame = self.dir.path().join(format!("grpc-frame-{}", free_port()));
        let mut body = vec![0u8];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
        std::fs::write(&frame, body).expect("writing the gRPC frame");
        let mut args = vec![
            "--http2-prior-knowledge".to_string(),
            "-H".into(),
            "content-type: application/grpc".into(),
            "-H".into(),
            "te: trailers".into(),
            "--data-binary".into(),
            format!("@{}", frame.display()),
        ];
        for h in headers {
            args.extend(["-H".to_string(), h.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, hdrs) = self.curl(&args, method);
        let _ = std::fs::remove_file(&frame);
        assert_eq!(code, 200, "gRPC answers HTTP 200: {hdrs}");
        hdrs
    }
}

impl Drop for EtcdLite {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until `f` holds, polling; panics with `what` after `timeout`.
pub fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// Starts `n` members on loopback forming one new cluster (`extra` flags for each); returns
/// them once all serve (a leader may still be being elected).
pub fn start_cluster(bin: &str, n: usize, extra: &[&str]) -> Vec<EtcdLite> {
    start_cluster_env(bin, n, extra, &[])
}

/// [`start_cluster`] with environment variables set for every member's process.
pub fn start_cluster_env(
    bin: &str,
    n: usize,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Vec<EtcdLite> {
    let peers: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let token = format!("test-{}-{}", std::process::id(), peers[0]);
    let initial: Vec<String> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| format!("m{i}=http://127.0.0.1:{p}"))
        .collect();
    let initial = initial.join(",");
    peers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let url = format!("http://127.0.0.1:{p}");
            let name = format!("m{i}");
            let mut args = vec![
                "--name",
                &name,
                "--initial-advertise-peer-urls",
                &url,
                "--listen-peer-urls",
                &url,
                "--initial-cluster",
                &initial,
                "--initial-cluster-token",
                &token,
                "--initial-cluster-state",
                "new",
            ];
            args.extend_from_slice(extra);
            EtcdLite::start_env(bin, &args, env)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_never_handed_out_twice() {
        // The kernel may pick a port again once it is free; the second pick is passed over.
        let port = free_port();
        let mut picks = [port, port, 1].into_iter();
        assert_eq!(first_new_port(|| picks.next().expect("a pick")), 1);
        assert_eq!(picks.next(), None, "port 1 was the third pick");
    }

    #[test]
    fn a_port_belongs_only_to_the_process_listening_on_it() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert!(listens_on(std::process::id(), port));
        let mut other = Command::new("sleep").arg("5").spawn().expect("sleep");
        assert!(
            !listens_on(other.id(), port),
            "a process that does not hold the port"
        );
        let _ = other.kill();
        let _ = other.wait();
        drop(l);
        assert!(!listens_on(std::process::id(), port), "a closed listener");
    }
}
