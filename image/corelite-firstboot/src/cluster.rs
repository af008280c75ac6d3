//! `corelite-config new-cluster`: everything a secure cluster needs, made on the operator's
//! machine. A cluster CA signs one certificate per node (its name, its IP, and loopback) and
//! an admin client certificate (common name `root`: with etcd auth on, etcd-lite maps it to
//! the root user). Each node's first-boot config carries the CA certificate, the node's own
//! certificate and key, the operator's SSH keys and NTP servers; the CA's private key stays in
//! the output directory and never goes to a node.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::config::{Config, Etcd, Fleet, Network, Ssh, Time, Tls};
use crate::pki::{Ca, Pair};

/// One node: its host name and static address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub ip: Ipv4Addr,
}

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct Spec {
    pub nodes: Vec<Node>,
    /// The network's prefix length (the nodes' addresses are `ip/prefix`).
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<String>,
    pub ntp: Vec<String>,
    /// OpenSSH public key lines for the `core` user.
    pub ssh_keys: Vec<String>,
    /// etcd's initial cluster token (also the CA's name).
    pub token: String,
    /// Validity of node and admin certificates, and of the CA.
    pub cert_days: u32,
    pub ca_days: u32,
    /// Turn etcd auth on once the cluster is up (users by certificate).
    pub etcd_auth: bool,
    /// How many of the nodes (the first ones) are etcd members; the others are workers
    /// (a local gateway to the members instead of a member). `None`: every node is a member.
    pub members: Option<usize>,
}

/// `name=IP,name=IP,...`: names are host names, neither names nor addresses repeat.
pub fn parse_nodes(s: &str) -> Result<Vec<Node>, String> {
    let mut nodes = Vec::new();
    let (mut names, mut ips) = (BTreeSet::new(), BTreeSet::new());
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, ip) = part
            .split_once('=')
            .ok_or_else(|| format!("--nodes: {part:?} is not NAME=IP"))?;
        let label_ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !label_ok {
            return Err(format!("--nodes: {name:?} is not a host name"));
        }
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("--nodes: {name}={ip}: {ip:?} is not an IPv4 address"))?;
        if !names.insert(name.to_string()) {
            return Err(format!("--nodes: the name {name} is given twice"));
        }
        if !ips.insert(ip) {
            return Err(format!("--nodes: the address {ip} is given twice"));
        }
        nodes.push(Node {
            name: name.to_string(),
            ip,
        });
    }
    if nodes.is_empty() {
        return Err("--nodes: no nodes (NAME=IP,NAME=IP,...)".into());
    }
    Ok(nodes)
}

/// The keys of an OpenSSH public key file: its non-empty lines that are not comments.
pub fn ssh_keys_of(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// A generated cluster: the CA, the admin's client certificate, each node's config.
pub struct Generated {
    pub ca: Pair,
    pub admin: Pair,
    pub nodes: Vec<(String, Config)>,
}

/// Makes the CA, the certificates and the configs (in memory). Each config is validated as a
/// node would validate it at first boot.
pub fn generate(spec: &Spec) -> Result<Generated, String> {
    let ca = Ca::generate(
        &format!("corelite cluster CA ({})", spec.token),
        spec.ca_days,
    )?;
    let admin = ca.issue("root", &[], false, spec.cert_days)?;
    let members = spec.members.unwrap_or(spec.nodes.len());
    if members == 0 || members > spec.nodes.len() {
        return Err(format!(
            "--members {members}: between 1 and the number of nodes ({})",
            spec.nodes.len()
        ));
    }
    let initial_cluster = spec.nodes[..members]
        .iter()
        .map(|n| format!("{}=https://{}:2380", n.name, n.ip))
        .collect::<Vec<_>>()
        .join(",");
    let workers: Vec<String> = spec.nodes[members..]
        .iter()
        .map(|n| n.name.clone())
        .collect();
    let mut nodes = Vec::new();
    for n in &spec.nodes {
        let names = vec![
            n.name.clone(),
            n.ip.to_string(),
            "localhost".into(),
            "127.0.0.1".into(),
        ];
        let pair = ca.issue(&n.name, &names, true, spec.cert_days)?;
        let config = Config {
            hostname: n.name.clone(),
            network: Network {
                interface: None,
                dhcp: None,
                address: Some(format!("{}/{}", n.ip, spec.prefix)),
                gateway: spec.gateway.map(|g| g.to_string()),
                dns: spec.dns.clone(),
            },
            etcd: Some(Etcd {
                name: None,
                initial_cluster: initial_cluster.clone(),
                workers: workers.clone(),
                discovery: None,
                self_add: false,
                initial_cluster_token: spec.token.clone(),
                initial_cluster_state: "new".into(),
                auth: spec.etcd_auth,
            }),
            fleet: Some(Fleet::default()),
            tls: Some(Tls {
                ca: ca.pair.cert.clone(),
                cert: pair.cert,
                key: pair.key,
            }),
            ssh: (!spec.ssh_keys.is_empty()).then(|| Ssh {
                authorized_keys: spec.ssh_keys.clone(),
            }),
            time: (!spec.ntp.is_empty()).then(|| Time {
                ntp: spec.ntp.clone(),
            }),
            units: Vec::new(),
        };
        let text = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?;
        Config::parse(&text).map_err(|e| format!("node {}: {e}", n.name))?;
        nodes.push((n.name.clone(), config));
    }
    Ok(Generated {
        ca: ca.pair,
        admin,
        nodes,
    })
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The shell file that points etcdctl (3.4) and fleetctl at the cluster with the admin
/// certificate: `. DIR/env`.
pub fn env_file(spec: &Spec, pki: &Path) -> String {
    let first = &spec.nodes[0];
    // Members only: a worker's gateway listens on its loopback.
    let members = spec
        .members
        .unwrap_or(spec.nodes.len())
        .min(spec.nodes.len());
    let endpoints = spec.nodes[..members]
        .iter()
        .map(|n| format!("https://{}:2379", n.ip))
        .collect::<Vec<_>>()
        .join(",");
    let p = |f: &str| pki.join(f).display().to_string();
    format!(
        "# corelite cluster {token}: `. {env}` points etcdctl, curl examples and fleetctl at it.\n\
         export ETCDCTL_API=3\n\
         export ETCDCTL_ENDPOINTS={endpoints}\n\
         export ETCDCTL_CACERT={ca}\n\
         export ETCDCTL_CERT={cert}\n\
         export ETCDCTL_KEY={key}\n\
         export FLEETCTL_ENDPOINT=https://{ip}:49153\n\
         export FLEETCTL_CA_FILE={ca}\n\
         export FLEETCTL_CERT_FILE={cert}\n\
         export FLEETCTL_KEY_FILE={key}\n\
         # curl: curl --cacert \"$ETCDCTL_CACERT\" --cert \"$ETCDCTL_CERT\" --key \"$ETCDCTL_KEY\" https://{ip}:2379/health\n",
        token = spec.token,
        env = pki.parent().unwrap_or(pki).join("env").display(),
        ca = p("ca.pem"),
        cert = p("admin.pem"),
        key = p("admin-key.pem"),
        ip = first.ip,
    )
}

/// Writes `g` under `out`: `pki/` (the CA and admin certificate and keys), `nodes/NAME.json`
/// (each node's first-boot config, private: it holds the node's key) and `env`. None of them
/// may exist yet (another cluster's CA is never overwritten). Returns what it wrote.
pub fn write(out: &Path, spec: &Spec, g: &Generated) -> Result<Vec<PathBuf>, String> {
    for p in ["pki", "nodes", "env"] {
        if out.join(p).exists() {
            return Err(format!(
                "{} exists: refusing to overwrite another cluster's files (pick a new --out)",
                out.join(p).display()
            ));
        }
    }
    let out = std::path::absolute(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let pki = out.join("pki");
    let nodes = out.join("nodes");
    for d in [&pki, &nodes] {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let mut wrote = Vec::new();
    let mut put = |path: PathBuf, contents: &str, mode: u32| -> Result<(), String> {
        write_file(&path, contents, mode)?;
        wrote.push(path);
        Ok(())
    };
    put(pki.join("ca.pem"), &g.ca.cert, 0o644)?;
    put(pki.join("ca-key.pem"), &g.ca.key, 0o600)?;
    put(pki.join("admin.pem"), &g.admin.cert, 0o644)?;
    put(pki.join("admin-key.pem"), &g.admin.key, 0o600)?;
    for (name, config) in &g.nodes {
        let text = serde_json::to_string_pretty(config).map_err(|e| e.to_string())?;
        put(nodes.join(format!("{name}.json")), &(text + "\n"), 0o600)?;
    }
    put(out.join("env"), &env_file(spec, &pki), 0o644)?;
    Ok(wrote)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEYbLh2DgSE+NfMwXAh4G7y0Fff5uYHN5BuzetvvVekH op@laptop";

    fn spec(nodes: &str) -> Spec {
        Spec {
            nodes: parse_nodes(nodes).expect("nodes"),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            dns: vec![],
            ntp: vec!["10.0.0.1".into()],
            ssh_keys: vec![KEY.into()],
            token: "test".into(),
            cert_days: 30,
            ca_days: 60,
            etcd_auth: true,
            members: None,
        }
    }

    #[test]
    fn members_then_workers_from_one_etcd_section() {
        let mut s = spec("n1=10.0.0.11,n2=10.0.0.12,n3=10.0.0.13,n4=10.0.0.14,n5=10.0.0.15");
        s.members = Some(3);
        let g = generate(&s).expect("generate");
        let sections: Vec<&Etcd> = g
            .nodes
            .iter()
            .map(|(_, c)| c.etcd.as_ref().expect("etcd"))
            .collect();
        // Every node gets the same etcd section; what it is follows from its name.
        assert!(sections.iter().all(|e| *e == sections[0]));
        assert_eq!(sections[0].member_names(), ["n1", "n2", "n3"]);
        assert_eq!(sections[0].workers, ["n4", "n5"]);
        let roles: Vec<bool> = g
            .nodes
            .iter()
            .map(|(_, c)| c.is_worker(c.etcd.as_ref().expect("etcd")))
            .collect();
        assert_eq!(roles, [false, false, false, true, true]);
        let env = env_file(&s, Path::new("/x/pki"));
        assert!(env.contains(
            "ETCDCTL_ENDPOINTS=https://10.0.0.11:2379,https://10.0.0.12:2379,https://10.0.0.13:2379\n"
        ));
        for bad in [Some(0), Some(6)] {
            s.members = bad;
            match generate(&s) {
                Err(e) => assert!(e.contains("--members"), "{e}"),
                Ok(_) => panic!("--members {bad:?} accepted"),
            }
        }
    }

    #[test]
    fn node_lists_refuse_repeats_and_bad_entries() {
        assert_eq!(
            parse_nodes("a=10.0.0.1, b=10.0.0.2").expect("ok"),
            [
                Node {
                    name: "a".into(),
                    ip: Ipv4Addr::new(10, 0, 0, 1)
                },
                Node {
                    name: "b".into(),
                    ip: Ipv4Addr::new(10, 0, 0, 2)
                }
            ]
        );
        for (bad, says) in [
            ("a=10.0.0.1,a=10.0.0.2", "name a is given twice"),
            ("a=10.0.0.1,b=10.0.0.1", "address 10.0.0.1 is given twice"),
            ("a", "not NAME=IP"),
            ("a=10.0.0.300", "not an IPv4 address"),
            ("bad_name=10.0.0.1", "not a host name"),
            ("", "no nodes"),
        ] {
            let e = parse_nodes(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_generated_cluster_has_a_valid_config_per_node_and_keeps_the_ca_key_home() {
        let s = spec("n1=10.0.0.11,n2=10.0.0.12,n3=10.0.0.13");
        let g = generate(&s).expect("generate");
        assert_eq!(g.nodes.len(), 3);
        for (name, c) in &g.nodes {
            let text = serde_json::to_string(c).expect("json");
            assert!(
                !text.contains(g.ca.key.trim()),
                "{name}'s config has the CA key"
            );
            let back = Config::parse(&text).expect("a node accepts its config");
            assert_eq!(&back, c);
            let e = back.etcd.as_ref().expect("etcd");
            assert!(e.initial_cluster.contains("n2=https://10.0.0.12:2380") && e.auth);
            assert_eq!(back.ssh.as_ref().expect("ssh").authorized_keys, [KEY]);
        }
        let info = crate::pki::cert_info(&g.admin.cert).expect("admin");
        assert_eq!(info.common_name, "root");

        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("cluster");
        let wrote = write(&out, &s, &g).expect("write");
        assert!(wrote.contains(&out.join("nodes/n2.json")));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &str| {
            std::fs::metadata(out.join(p))
                .expect("stat")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("pki/ca-key.pem"), 0o600);
        assert_eq!(mode("pki/admin-key.pem"), 0o600);
        assert_eq!(mode("nodes/n1.json"), 0o600);
        let env = std::fs::read_to_string(out.join("env")).expect("env");
        assert!(env.contains("ETCDCTL_ENDPOINTS=https://10.0.0.11:2379,https://10.0.0.12:2379"));
        assert!(env.contains("FLEETCTL_ENDPOINT=https://10.0.0.11:49153"));
        let e = write(&out, &s, &g).expect_err("a second write over the first");
        assert!(e.contains("refusing to overwrite"), "{e}");
    }
}
