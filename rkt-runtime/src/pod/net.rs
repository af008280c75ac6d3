//! The default pod network: a bridge (`rkt0`, 172.16.28.0/24, the host at .1), one veth pair
//! per pod with an address from a small IPAM file, NAT to the outside, and port forwards.
//!
//! Links are made with iproute2's `ip` and rules with `iptables` (nft backend on Debian), each
//! rule tagged `rkt:<pod id>` so that teardown removes exactly the pod's own. The rule lists and
//! the IPAM are pure and unit-tested; the commands run in whatever network namespace `rkt` runs
//! in (the host's on a node, the test's own in tests).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};

pub const BRIDGE: &str = "rkt0";
pub const SUBNET: Ipv4Addr = Ipv4Addr::new(172, 16, 28, 0);
pub const PREFIX: u8 = 24;
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 16, 28, 1);

/// A port forward: host `[ip:]port` to the pod's port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub pod_port: u16,
    pub protocol: String,
}

impl PortForward {
    /// `[HOSTIP:]HOSTPORT:PODPORT[/tcp|udp]`, or `PORT` for the same port on both.
    pub fn parse(s: &str) -> Result<PortForward> {
        let bad = |why: &str| {
            RuntimeError::Unsupported(format!(
                "--port {s:?}: {why} (expected [HOSTIP:]HOSTPORT:PODPORT[/tcp|udp])"
            ))
        };
        let (spec, protocol) = match s.split_once('/') {
            Some((a, p)) if p == "tcp" || p == "udp" => (a, p.to_string()),
            Some(_) => return Err(bad("protocol must be tcp or udp")),
            None => (s, "tcp".to_string()),
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let port = |p: &str| -> Result<u16> {
            p.parse::<u16>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(&format!("{p:?} is not a port")))
        };
        let (host_ip, host_port, pod_port) = match parts.as_slice() {
            [p] => (None, port(p)?, port(p)?),
            [h, c] => (None, port(h)?, port(c)?),
            [ip, h, c] => (
                Some(
                    ip.parse::<Ipv4Addr>()
                        .map_err(|_| bad(&format!("{ip:?} is not an IPv4 address")))?,
                ),
                port(h)?,
                port(c)?,
            ),
            _ => return Err(bad("too many ':'")),
        };
        Ok(PortForward {
            host_ip,
            host_port,
            pod_port,
            protocol,
        })
    }
}

/// Address allocations, kept in `<dir>/net/default.json` under a flock.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Allocations {
    /// Address -> pod id.
    pub pods: BTreeMap<Ipv4Addr, String>,
}

impl Allocations {
    /// The lowest free address for `pod` in the subnet (not the network, gateway or broadcast).
    pub fn allocate(&mut self, pod: &str) -> Option<Ipv4Addr> {
        if let Some((ip, _)) = self.pods.iter().find(|(_, p)| p.as_str() == pod) {
            return Some(*ip);
        }
        let base = u32::from(SUBNET);
        let size = 1u32 << (32 - PREFIX);
        let ip = (2..size - 1)
            .map(|i| Ipv4Addr::from(base + i))
            .find(|ip| !self.pods.contains_key(ip))?;
        self.pods.insert(ip, pod.to_string());
        Some(ip)
    }

    pub fn release(&mut self, pod: &str) {
        self.pods.retain(|_, p| p != pod);
    }
}

/// The IPAM file and its lock.
pub struct Ipam {
    dir: PathBuf,
}

impl Ipam {
    pub fn new(data_dir: &Path) -> Ipam {
        Ipam {
            dir: data_dir.join("net"),
        }
    }

    /// Runs `f` on the allocations with the lock held, saving them after.
    pub fn with<T>(&self, f: impl FnOnce(&mut Allocations) -> T) -> Result<T> {
        std::fs::create_dir_all(&self.dir).map_err(|e| RuntimeError::io(&self.dir, e))?;
        let lock_path = self.dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| RuntimeError::io(&lock_path, e))?;
        let _lock = Flock::lock(lock, FlockArg::LockExclusive)
            .map_err(|(_, e)| RuntimeError::sys("locking the IPAM", e))?;
        let p = self.dir.join("default.json");
        let mut a: Allocations = match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| RuntimeError::BadConfig {
                path: p.clone(),
                reason: e.to_string(),
            })?,
            Err(_) => Allocations::default(),
        };
        let out = f(&mut a);
        let tmp = p.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(&a).map_err(|e| RuntimeError::BadConfig {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&tmp, text).map_err(|e| RuntimeError::io(&tmp, e))?;
        std::fs::rename(&tmp, &p).map_err(|e| RuntimeError::io(&p, e))?;
        Ok(out)
    }
}

fn comment(pod: &str) -> String {
    format!("rkt:{pod}")
}

/// The host end of a pod's veth pair.
pub fn host_veth(pod: &str) -> String {
    format!(
        "veth{}",
        &pod.chars()
            .filter(|c| c.is_ascii_hexdigit())
            .take(8)
            .collect::<String>()
    )
}

/// The iptables (nat table) rules for a pod's port forwards: DNAT for traffic arriving for the
/// host and for the host's own connections (localhost too, with masquerade so replies return).
pub fn port_rules(pod: &str, ip: Ipv4Addr, ports: &[PortForward]) -> Vec<Vec<String>> {
    let c = comment(pod);
    let mut rules = Vec::new();
    for p in ports {
        let to = format!("{ip}:{}", p.pod_port);
        let mut matcher = vec![
            "-p".to_string(),
            p.protocol.clone(),
            "--dport".into(),
            p.host_port.to_string(),
        ];
        match p.host_ip {
            Some(h) => matcher.extend(["-d".into(), h.to_string()]),
            None => matcher.extend([
                "-m".into(),
                "addrtype".into(),
                "--dst-type".into(),
                "LOCAL".into(),
            ]),
        }
        for chain in ["PREROUTING", "OUTPUT"] {
            let mut r = vec!["-A".to_string(), chain.to_string()];
            r.extend(matcher.iter().cloned());
            r.extend(
                [
                    "-m",
                    "comment",
                    "--comment",
                    &c,
                    "-j",
                    "DNAT",
                    "--to-destination",
                    &to,
                ]
                .map(String::from),
            );
            rules.push(r);
        }
        rules.push(
            [
                "-A",
                "POSTROUTING",
                "-s",
                "127.0.0.0/8",
                "-d",
                &ip.to_string(),
                "-p",
                &p.protocol,
                "--dport",
                &p.pod_port.to_string(),
                "-m",
                "comment",
                "--comment",
                &c,
                "-j",
                "MASQUERADE",
            ]
            .map(String::from)
            .to_vec(),
        );
    }
    rules
}

/// `iptables -t nat -S` lines of `pod`'s rules turned into delete commands.
pub fn delete_rules(listing: &str, pod: &str) -> Vec<Vec<String>> {
    let tag = comment(pod);
    listing
        .lines()
        .filter(|l| {
            l.starts_with("-A ") && l.split_whitespace().any(|w| w.trim_matches('"') == tag)
        })
        .map(|l| {
            let mut words = shell_words(l);
            words[0] = "-D".into();
            words
        })
        .collect()
}

/// Splits an iptables -S line (words, double-quoted strings).
fn shell_words(l: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in l.chars() {
        match ch {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| RuntimeError::io(program, e))?;
    if !out.status.success() {
        return Err(RuntimeError::Unsupported(format!(
            "pod network: {program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn iptables(args: &[String]) -> Result<String> {
    let mut a = vec!["-w", "-t", "nat"];
    a.extend(args.iter().map(String::as_str));
    run("iptables", &a)
}

fn ensure_rule(table: &str, rule: &[&str]) -> Result<()> {
    let mut check = vec!["-w", "-t", table, "-C"];
    check.extend(rule);
    if run("iptables", &check).is_ok() {
        return Ok(());
    }
    let mut add = vec!["-w", "-t", table, "-A"];
    add.extend(rule);
    run("iptables", &add).map(|_| ())
}

fn write_sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| RuntimeError::io(path, e))
}

/// The bridge, forwarding and the subnet's masquerade rule (idempotent).
fn ensure_bridge() -> Result<()> {
    // Asked of `ip`, not /sys/class/net: /sys may belong to another network namespace (nsenter).
    let exists = || run("ip", &["link", "show", BRIDGE]).is_ok();
    if !exists() {
        // Two pods starting at once may both get here; the loser's "exists" is fine.
        if let Err(e) = run("ip", &["link", "add", BRIDGE, "type", "bridge"]) {
            if !exists() {
                return Err(e);
            }
        }
    }
    let cidr = format!("{GATEWAY}/{PREFIX}");
    let addrs = run("ip", &["-4", "-o", "addr", "show", "dev", BRIDGE])?;
    if !addrs.contains(&cidr) {
        run("ip", &["addr", "add", &cidr, "dev", BRIDGE])?;
    }
    run("ip", &["link", "set", BRIDGE, "up"])?;
    write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
    write_sysctl(
        &format!("/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet"),
        "1",
    )?;
    let subnet = format!("{SUBNET}/{PREFIX}");
    ensure_rule(
        "nat",
        &[
            "POSTROUTING",
            "-s",
            &subnet,
            "!",
            "-o",
            BRIDGE,
            "-m",
            "comment",
            "--comment",
            "rkt",
            "-j",
            "MASQUERADE",
        ],
    )?;
    for dir in ["-i", "-o"] {
        ensure_rule(
            "filter",
            &[
                "FORWARD",
                dir,
                BRIDGE,
                "-m",
                "comment",
                "--comment",
                "rkt",
                "-j",
                "ACCEPT",
            ],
        )?;
    }
    Ok(())
}

/// Gives the pod whose init is `pid` an address on the bridge and its port forwards.
pub fn setup(pod: &str, pid: i32, ip: Ipv4Addr, ports: &[PortForward]) -> Result<()> {
    ensure_bridge()?;
    let veth = host_veth(pod);
    let pid_s = pid.to_string();
    run(
        "ip",
        &[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pid_s,
        ],
    )?;
    run("ip", &["link", "set", &veth, "master", BRIDGE, "up"])?;
    let addr = format!("{ip}/{PREFIX}");
    let gw = GATEWAY.to_string();
    for args in [
        vec!["ip", "link", "set", "lo", "up"],
        vec!["ip", "addr", "add", &addr, "dev", "eth0"],
        vec!["ip", "link", "set", "eth0", "up"],
        vec!["ip", "route", "add", "default", "via", &gw],
    ] {
        let mut a = vec!["-t", pid_s.as_str(), "-n", "--"];
        a.extend(args);
        run("nsenter", &a)?;
    }
    for r in port_rules(pod, ip, ports) {
        iptables(&r)?;
    }
    Ok(())
}

/// Loopback only (`--net=none`).
pub fn setup_none(pid: i32) -> Result<()> {
    run(
        "nsenter",
        &[
            "-t",
            &pid.to_string(),
            "-n",
            "--",
            "ip",
            "link",
            "set",
            "lo",
            "up",
        ],
    )
    .map(|_| ())
}

/// Removes the pod's rules and host veth (idempotent; errors are logged, not returned, so that
/// a half-made network never blocks removing the pod).
pub fn teardown(pod: &str) {
    match iptables(&["-S".to_string()]) {
        Ok(listing) => {
            for r in delete_rules(&listing, pod) {
                if let Err(e) = iptables(&r) {
                    tracing::warn!(pod, error = %e, "removing a port forward");
                }
            }
        }
        Err(e) => tracing::debug!(pod, error = %e, "listing nat rules"),
    }
    // Usually gone already: the pod's end went with its network namespace, taking the pair.
    if let Err(e) = run("ip", &["link", "del", &host_veth(pod)]) {
        tracing::debug!(pod, error = %e, "removing the veth");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse() {
        let p = PortForward::parse("8080:80").expect("a port pair");
        assert_eq!(
            (p.host_port, p.pod_port, p.protocol.as_str()),
            (8080, 80, "tcp")
        );
        let p = PortForward::parse("127.0.0.1:53:5353/udp").expect("ip:port:port/udp");
        assert_eq!(p.host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(p.protocol, "udp");
        for bad in [
            "0:80",
            "x:80",
            "80:80/sctp",
            "1.2.3:80:80",
            "1:2:3:4",
            "70000",
        ] {
            assert!(PortForward::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ipam_hands_out_distinct_addresses_and_takes_them_back() {
        let mut a = Allocations::default();
        let x = a.allocate("x").expect("an address");
        assert_eq!(x, Ipv4Addr::new(172, 16, 28, 2));
        assert_eq!(a.allocate("x"), Some(x));
        let y = a.allocate("y").expect("an address");
        assert_ne!(x, y);
        a.release("x");
        assert_eq!(a.allocate("z"), Some(x));
        for i in 0..300 {
            a.allocate(&format!("p{i}"));
        }
        assert_eq!(a.pods.len(), 253);
        assert!(a.allocate("one-too-many").is_none());
    }

    #[test]
    fn rules_are_tagged_and_deleted_by_tag() {
        let ports = [PortForward::parse("8080:80").expect("a port pair")];
        let rules = port_rules("abc", Ipv4Addr::new(172, 16, 28, 5), &ports);
        assert_eq!(rules.len(), 3);
        assert!(rules.iter().all(|r| r.contains(&"rkt:abc".to_string())));
        let listing = "-P OUTPUT ACCEPT\n\
            -A OUTPUT -p tcp -m tcp --dport 8080 -m addrtype --dst-type LOCAL -m comment --comment \"rkt:abc\" -j DNAT --to-destination 172.16.28.5:80\n\
            -A OUTPUT -p tcp -m tcp --dport 9090 -m comment --comment \"rkt:other\" -j DNAT --to-destination 172.16.28.6:80\n";
        let del = delete_rules(listing, "abc");
        assert_eq!(del.len(), 1);
        assert_eq!(del[0][0], "-D");
        assert!(del[0].contains(&"rkt:abc".to_string()));
        assert_eq!(host_veth("0123456789abcdef"), "veth01234567");
    }
}
