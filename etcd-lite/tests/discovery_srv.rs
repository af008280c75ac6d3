//! `--discovery-srv` against a real DNS server: dnsmasq (Debian's dnsmasq-base, from
//! `make deps`) on a loopback address of its own, answering the SRV records etcd's DNS
//! discovery reads. Each member runs in a mount namespace of its own whose /etc/resolv.conf
//! names that server (the host's stays as it is). Needs root (`unshare --mount`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use test_support::{eventually, free_port, require_tool, EtcdLite};

const DOMAIN: &str = "corelite.test";

/// dnsmasq serving `records`, stopped when dropped.
struct Dns(Child);

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// dnsmasq on `addr` (one of loopback's; port 53, as resolv.conf takes no port) with the
/// records of `members`: (peer port, client port) of `m0`, `m1`, ...
fn dns(dir: &Path, addr: &str, members: &[(u16, u16)]) -> Dns {
    let mut args = vec![
        "--keep-in-foreground".to_string(),
        "--conf-file=/dev/null".into(),
        format!("--listen-address={addr}"),
        "--bind-interfaces".into(),
        "--port=53".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
        "--log-facility=-".into(),
    ];
    for (i, (peer, client)) in members.iter().enumerate() {
        let host = format!("m{i}.{DOMAIN}");
        args.push(format!("--host-record={host},127.0.0.1"));
        args.push(format!(
            "--srv-host=_etcd-server._tcp.{DOMAIN},{host},{peer}"
        ));
        args.push(format!(
            "--srv-host=_etcd-client._tcp.{DOMAIN},{host},{client}"
        ));
    }
    let child = Command::new(require_tool("dnsmasq"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("dnsmasq.log")).expect("log"),
        ))
        .spawn()
        .expect("dnsmasq");
    let d = Dns(child);
    // Ready once it answers on its port.
    eventually(Duration::from_secs(10), "dnsmasq listening", || {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| {
                s.set_read_timeout(Some(Duration::from_millis(200)))?;
                // A query for `_etcd-server._tcp.corelite.test` SRV.
                let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
                for label in format!("_etcd-server._tcp.{DOMAIN}").split('.') {
                    q.push(label.len() as u8);
                    q.extend_from_slice(label.as_bytes());
                }
                q.extend_from_slice(&[0, 0, 33, 0, 1]);
                s.send_to(&q, (addr, 53))?;
                let mut buf = [0u8; 512];
                s.recv(&mut buf)
                    .map(|n| n > 12 && buf[7] as usize == members.len())
            })
            .unwrap_or(false)
    });
    d
}

/// A script that runs its arguments in a mount namespace whose /etc/resolv.conf names the
/// test's DNS server.
fn with_dns(dir: &Path, addr: &str, bin: &str) -> PathBuf {
    let resolv = dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        format!("nameserver {addr}\noptions timeout:1 attempts:2\n"),
    )
    .expect("resolv.conf");
    let script = dir.join(format!(
        "with-dns-{}",
        Path::new(bin).file_name().expect("name").to_string_lossy()
    ));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec unshare --mount sh -c 'mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"' {} {} \"$@\"\n",
            resolv.display(),
            bin
        ),
    )
    .expect("script");
    let _ = Command::new("chmod").arg("+x").arg(&script).status();
    script
}

#[test]
fn members_bootstrap_from_srv_records_and_a_gateway_finds_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    const ADDR: &str = "127.0.0.77";
    let _dns = dns(tmp.path(), ADDR, &ports);
    let bin = with_dns(tmp.path(), ADDR, env!("CARGO_BIN_EXE_etcd-lite"));
    let bin = bin.to_str().expect("utf-8");
    let members: Vec<EtcdLite> = ports
        .iter()
        .enumerate()
        .map(|(i, (peer, _))| {
            let name = format!("m{i}");
            let url = format!("http://127.0.0.1:{peer}");
            // No --initial-cluster: DNS says who the members are.
            EtcdLite::start(
                bin,
                &[
                    "--name",
                    &name,
                    "--listen-peer-urls",
                    &url,
                    "--initial-advertise-peer-urls",
                    &url,
                    "--discovery-srv",
                    DOMAIN,
                ],
            )
        })
        .collect();
    eventually(Duration::from_secs(20), "a leader", || {
        members[0].try_etcdctl(&["put", "k", "v"]).is_ok()
    });
    for m in &members {
        eventually(Duration::from_secs(10), "the write everywhere", || {
            m.try_etcdctl(&["get", "k", "--consistency", "s", "--print-value-only"])
                .is_ok_and(|o| o.trim() == "v")
        });
    }
    eventually(Duration::from_secs(10), "every member named", || {
        let list = members[2].ok(&["member", "list"]);
        (0..3).all(|i| list.contains(&format!(", m{i}, http://m{i}.{DOMAIN}:")))
    });
    // The SRV records of the client ports are not the members' client URLs here (the members
    // listen on their own ports): point them there and let a gateway find the members.
    drop(_dns);
    let clients: Vec<(u16, u16)> = ports
        .iter()
        .zip(&members)
        .map(|((peer, _), m)| (*peer, m.port))
        .collect();
    let _dns = dns(tmp.path(), ADDR, &clients);
    let gw_port = free_port();
    let mut gw = Command::new(bin)
        .args(["gateway", "start", "--discovery-srv", DOMAIN])
        .args(["--listen-addr", &format!("127.0.0.1:{gw_port}")])
        .stderr(Stdio::from(
            std::fs::File::create(tmp.path().join("gateway.log")).expect("log"),
        ))
        .spawn()
        .expect("gateway");
    let etcdctl = require_tool("etcdctl");
    eventually(
        Duration::from_secs(10),
        "a read through the gateway",
        || {
            Command::new(&etcdctl)
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &format!("127.0.0.1:{gw_port}"), "get", "k"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains('v'))
        },
    );
    let _ = gw.kill();
    let _ = gw.wait();
}

#[test]
fn a_domain_without_records_is_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().expect("tmp");
    const ADDR: &str = "127.0.0.78";
    let _dns = dns(tmp.path(), ADDR, &[]);
    let bin = with_dns(tmp.path(), ADDR, env!("CARGO_BIN_EXE_etcd-lite"));
    let data = tmp.path().join("data");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let run = |extra: &[&str]| {
        Command::new(&bin)
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", free_port()),
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(extra)
            .output()
            .expect("etcd-lite")
    };
    let out = run(&["--discovery-srv", "nothing.test"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("srv: too many errors querying DNS SRV records"),
        "{err}"
    );
    assert!(!data.join("member").exists(), "a data directory was made");
    let out = run(&[
        "--discovery-srv",
        DOMAIN,
        "--initial-cluster",
        &format!("default={peer}"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("multiple discovery or bootstrap flags"),
        "{err}"
    );
}
