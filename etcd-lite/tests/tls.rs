//! TLS on the client port, with etcd's flags, driven by the real etcdctl and curl. Certificates
//! come from openssl: a CA, a server certificate for 127.0.0.1, a client certificate, and a
//! client certificate from another CA.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use test_support::pki::{issue_v1, pki};
use test_support::{free_port, EtcdLite};

const BIN: &str = env!("CARGO_BIN_EXE_etcd-lite");

struct Member {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(pki_dir: &Path, extra: &[&str]) -> Member {
    let dir = tempfile::tempdir().expect("a temp dir");
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .current_dir(pki_dir)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting etcd-lite");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("etcd-lite exited with {st}");
        }
        assert!(Instant::now() < deadline, "etcd-lite did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Member { child, dir, port }
}

fn run(program: &str, dir: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .current_dir(dir)
        .env("ETCDCTL_API", "3")
        .args(args)
        .output()
        .expect("running a client")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const SERVER: [&str; 4] = [
    "--cert-file",
    "a-server.pem",
    "--key-file",
    "a-server-key.pem",
];

#[test]
fn client_certificates_are_required_and_checked() {
    let pki_dir = tempfile::tempdir().expect("a temp dir");
    let d = pki_dir.path();
    pki(d, "a");
    pki(d, "b");
    let mut args = SERVER.to_vec();
    args.extend(["--client-cert-auth", "--trusted-ca-file", "a-ca.pem"]);
    let m = start(d, &args);
    let ep = format!("https://127.0.0.1:{}", m.port);
    let tls = [
        "--cacert",
        "a-ca.pem",
        "--cert",
        "a-client.pem",
        "--key",
        "a-client-key.pem",
    ];
    let etcdctl = |extra: &[&str], cmd: &[&str]| {
        let mut a = vec!["--endpoints", &ep, "--dial-timeout", "3s"];
        a.extend_from_slice(extra);
        a.extend_from_slice(cmd);
        run("etcdctl", d, &a)
    };
    let put = etcdctl(&tls, &["put", "k", "over tls"]);
    assert!(put.status.success(), "{}", text(&put));
    let get = etcdctl(&tls, &["get", "k", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "over tls");
    let st = etcdctl(&tls, &["endpoint", "status", "-w", "json"]);
    assert!(st.status.success(), "{}", text(&st));
    // Without a client certificate, or with one from another CA: refused.
    let no_cert = etcdctl(&["--cacert", "a-ca.pem"], &["get", "k"]);
    assert!(!no_cert.status.success(), "{}", text(&no_cert));
    let other = etcdctl(
        &[
            "--cacert",
            "a-ca.pem",
            "--cert",
            "b-client.pem",
            "--key",
            "b-client-key.pem",
        ],
        &["get", "k"],
    );
    assert!(!other.status.success(), "{}", text(&other));
    // An expired client certificate: refused at once, with TLS's own reason.
    test_support::pki::issue_for_days(d, "a", "old", "extendedKeyUsage=clientAuth\n", -1);
    let t0 = Instant::now();
    let expired = run(
        "curl",
        d,
        &[
            "-s",
            "-S",
            "-m",
            "10",
            "--cacert",
            "a-ca.pem",
            "--cert",
            "old.pem",
            "--key",
            "old-key.pem",
            &format!("{ep}/health"),
        ],
    );
    assert!(
        !expired.status.success() && text(&expired).contains("expired"),
        "{}",
        text(&expired)
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "the refusal took {:?}",
        t0.elapsed()
    );
    let t0 = Instant::now();
    let expired = etcdctl(
        &[
            "--cacert",
            "a-ca.pem",
            "--cert",
            "old.pem",
            "--key",
            "old-key.pem",
        ],
        &["get", "k"],
    );
    // etcdctl 3.4 (as against etcd) reports a refused handshake as its dial timeout.
    assert!(!expired.status.success(), "{}", text(&expired));
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "etcdctl took {:?}",
        t0.elapsed()
    );
    // curl: HTTP/1.1 and HTTP/2 by ALPN, the JSON gateway and health.
    let curl = |extra: &[&str], path: &str| {
        let url = format!("{ep}{path}");
        let mut a = vec!["-s", "-S", "--cacert", "a-ca.pem", "-m", "5"];
        a.extend_from_slice(extra);
        a.push(&url);
        run("curl", d, &a)
    };
    let client = ["--cert", "a-client.pem", "--key", "a-client-key.pem"];
    for version in ["--http1.1", "--http2"] {
        let mut a = client.to_vec();
        a.push(version);
        let h = curl(&a, "/health");
        assert!(text(&h).contains("\"health\":\"true\""), "{}", text(&h));
    }
    let mut a = client.to_vec();
    a.extend(["-X", "POST", "-d", r#"{"key":"aw=="}"#]);
    let r = curl(&a, "/v3/kv/range");
    assert!(text(&r).contains("b3ZlciB0bHM="), "{}", text(&r)); // "over tls"
    assert!(!curl(&[], "/health").status.success());
    // Plain HTTP to the TLS port gets nothing useful, and the member keeps serving.
    let plain = run(
        "curl",
        d,
        &[
            "-s",
            "-m",
            "5",
            &format!("http://127.0.0.1:{}/health", m.port),
        ],
    );
    assert!(!text(&plain).contains("\"health\":\"true\""));
    let again = etcdctl(&tls, &["get", "k", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), "over tls");
    drop(m);
}

#[test]
fn server_tls_without_client_certificates() {
    let pki_dir = tempfile::tempdir().expect("a temp dir");
    let d = pki_dir.path();
    pki(d, "a");
    let m = start(d, &SERVER);
    let ep = format!("https://127.0.0.1:{}", m.port);
    let put = run(
        "etcdctl",
        d,
        &["--endpoints", &ep, "--cacert", "a-ca.pem", "put", "x", "1"],
    );
    assert!(put.status.success(), "{}", text(&put));
    // A client that does not trust the server's CA refuses it.
    let untrusted = run(
        "etcdctl",
        d,
        &["--endpoints", &ep, "--dial-timeout", "3s", "get", "x"],
    );
    assert!(!untrusted.status.success());
    let _ = m.dir.path();
}

#[test]
fn x509_v1_server_certificates_are_served_as_etcd_does() {
    let pki_dir = tempfile::tempdir().expect("a temp dir");
    let d = pki_dir.path();
    pki(d, "a");
    issue_v1(d, "a", "v1", "127.0.0.1");
    let m = start(d, &["--cert-file", "v1.pem", "--key-file", "v1-key.pem"]);
    // OpenSSL clients (curl, Python) accept a v1 certificate whose CN names the host.
    let url = format!("https://127.0.0.1:{}/v3/kv/put", m.port);
    let put = run(
        "curl",
        d,
        &[
            "-sS",
            "--fail",
            "--cacert",
            "a-ca.pem",
            "-d",
            r#"{"key":"eA==","value":"MQ=="}"#,
            &url,
        ],
    );
    assert!(put.status.success(), "{}", text(&put));
    assert!(text(&put).contains("revision"), "{}", text(&put));
    // A v1 certificate with another key than the one given is still refused at start.
    issue_v1(d, "a", "other", "127.0.0.1");
    let url = format!("https://127.0.0.1:{}", free_port());
    let out = Command::new(BIN)
        .current_dir(d)
        .args(["--data-dir", "data-mismatch"])
        .args(["--cert-file", "v1.pem", "--key-file", "other-key.pem"])
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("running etcd-lite");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("the certificate is not the key's"),
        "{}",
        text(&out)
    );
}

#[test]
fn bad_tls_settings_are_refused_at_start() {
    let pki_dir = tempfile::tempdir().expect("a temp dir");
    let d = pki_dir.path();
    pki(d, "a");
    pki(d, "b");
    let start_err = |args: &[&str]| {
        let data = tempfile::tempdir().expect("a temp dir");
        let url = format!("https://127.0.0.1:{}", free_port());
        let o = Command::new(BIN)
            .current_dir(d)
            .arg("--data-dir")
            .arg(data.path().join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running etcd-lite");
        assert!(!o.status.success(), "etcd-lite started with {args:?}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = start_err(&[]);
    assert!(e.contains("--cert-file and --key-file are required"), "{e}");
    let e = start_err(&[
        "--cert-file",
        "missing.pem",
        "--key-file",
        "a-server-key.pem",
    ]);
    assert!(e.contains("missing.pem"), "{e}");
    // A key that is not the certificate's.
    let e = start_err(&[
        "--cert-file",
        "a-server.pem",
        "--key-file",
        "b-server-key.pem",
    ]);
    assert!(e.contains("a-server.pem and b-server-key.pem"), "{e}");
    let e = start_err(&[&SERVER[..], &["--client-cert-auth"]].concat());
    assert!(e.contains("--trusted-ca-file"), "{e}");
    // https:// peer URLs without the peer files.
    let peer = format!("https://127.0.0.1:{}", free_port());
    let cluster = format!("default={peer}");
    let e = start_err(
        &[
            &SERVER[..],
            &[
                "--initial-cluster",
                &cluster,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ],
        ]
        .concat(),
    );
    assert!(e.contains("--peer-trusted-ca-file"), "{e}");
    let not_pem = PathBuf::from(d).join("a-server.csr.txt");
    std::fs::write(&not_pem, "not a certificate").expect("writing");
    let e = start_err(&[
        "--cert-file",
        "a-server.csr.txt",
        "--key-file",
        "a-server-key.pem",
    ]);
    assert!(e.contains("no PEM certificate"), "{e}");
}

#[test]
fn members_replicate_over_tls_and_refuse_peers_without_a_certificate() {
    let pki_dir = tempfile::tempdir().expect("a temp dir");
    let d = pki_dir.path();
    pki(d, "a");
    pki(d, "b");
    let file = |f: &str| d.join(f).display().to_string();
    let peer_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let cluster = peer_ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("t{i}=https://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let (cert, key, ca) = (file("a-peer.pem"), file("a-peer-key.pem"), file("a-ca.pem"));
    let members: Vec<EtcdLite> = peer_ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let url = format!("https://127.0.0.1:{p}");
            let name = format!("t{i}");
            EtcdLite::start(
                BIN,
                &[
                    "--name",
                    &name,
                    "--initial-cluster",
                    &cluster,
                    "--initial-cluster-token",
                    "tls-test",
                    "--listen-peer-urls",
                    &url,
                    "--initial-advertise-peer-urls",
                    &url,
                    "--peer-cert-file",
                    &cert,
                    "--peer-key-file",
                    &key,
                    "--peer-trusted-ca-file",
                    &ca,
                    "--peer-client-cert-auth",
                ],
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while members[0]
        .try_etcdctl(&["put", "over", "peer-tls"])
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "no leader over TLS:\n{}",
            members[0].log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for m in &members {
        assert_eq!(m.ok(&["get", "over", "--print-value-only"]), "peer-tls\n");
    }
    let list = members[1].ok(&["member", "list"]);
    assert_eq!(list.matches("https://127.0.0.1:").count(), 3, "{list}");
    // The peer port speaks TLS and wants a certificate from the cluster's CA.
    let peer = format!("https://127.0.0.1:{}/", peer_ports[0]);
    let curl = |extra: &[&str]| {
        let mut a = vec!["-s", "-o", "/dev/null", "-m", "5", "--cacert", "a-ca.pem"];
        a.extend_from_slice(extra);
        a.push(&peer);
        run("curl", d, &a).status.success()
    };
    assert!(curl(&["--cert", "a-peer.pem", "--key", "a-peer-key.pem"]));
    assert!(!curl(&[]), "a peer without a certificate was accepted");
    assert!(
        !curl(&["--cert", "b-peer.pem", "--key", "b-peer-key.pem"]),
        "a certificate from another CA was accepted"
    );
    let plain = run(
        "curl",
        d,
        &[
            "-s",
            "-m",
            "5",
            "--http2-prior-knowledge",
            &peer.replace("https", "http"),
        ],
    );
    assert!(!plain.status.success());
    // And the cluster still serves.
    members[2].ok(&["put", "after", "1"]);
    assert_eq!(
        members[0].ok(&["get", "after", "--print-value-only"]),
        "1\n"
    );
}
