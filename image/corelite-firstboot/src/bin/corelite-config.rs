//! `corelite-config`: writes a whole cluster's first-boot configs on the operator's machine,
//! with the cluster's PKI (no openssl by hand) and the operator's SSH keys.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use corelite_firstboot::cluster::{self, Spec};

#[derive(Parser)]
#[command(
    name = "corelite-config",
    version,
    about = "Write a corelite cluster's first-boot configs: a cluster CA, per-node certificates, SSH keys, an admin certificate",
    after_help = "EXAMPLES:
    corelite-config new-cluster --nodes node1=10.0.0.11,node2=10.0.0.12,node3=10.0.0.13 \\
        --gateway 10.0.0.1 --dns 10.0.0.1 --ssh-key ~/.ssh/id_ed25519.pub --out mycluster
    # five nodes: three etcd members, two workers
    corelite-config new-cluster --nodes n1=10.0.0.11,n2=10.0.0.12,n3=10.0.0.13,n4=10.0.0.14,n5=10.0.0.15 \\
        --members 3 --out mycluster
    . mycluster/env && etcdctl endpoint health && fleetctl list-machines

WHAT IT WRITES (under --out; none of these may exist yet):
    nodes/NAME.json      each node's first-boot config (config drive or kernel command line);
                         private: it holds the node's key
    pki/ca.pem           the cluster CA (every node trusts it)
    pki/ca-key.pem       the CA's key: keep it offline; it never goes to a node
    pki/admin.pem, pki/admin-key.pem   the operator's client certificate (CN root)
    env                  `. env` sets etcdctl's and fleetctl's endpoints and certificates"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A new cluster: CA, certificates and one first-boot config per node.
    NewCluster(NewCluster),
}

#[derive(Parser)]
struct NewCluster {
    /// The nodes: NAME=IP,NAME=IP,... (static IPv4 addresses; names are host names).
    #[arg(long)]
    nodes: String,
    /// The nodes' network prefix length.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(1..=32))]
    prefix: u8,
    /// The nodes' default gateway.
    #[arg(long)]
    gateway: Option<Ipv4Addr>,
    /// DNS servers (repeat for more).
    #[arg(long)]
    dns: Vec<String>,
    /// NTP servers for the nodes' clocks (repeat; default: DHCP's, else Debian's pool).
    #[arg(long)]
    ntp: Vec<String>,
    /// An OpenSSH public key file whose keys may log in as `core` (repeat for more).
    #[arg(long, value_name = "FILE.pub")]
    ssh_key: Vec<PathBuf>,
    /// etcd's initial cluster token (also names the CA).
    #[arg(long, default_value = "corelite")]
    token: String,
    /// Days the node and admin certificates are valid.
    #[arg(long, default_value_t = 825)]
    cert_days: u32,
    /// Days the CA is valid.
    #[arg(long, default_value_t = 3650)]
    ca_days: u32,
    /// Turn etcd auth on once the cluster is up: clients are known by their certificate (the
    /// admin's is `root`; each node's user reads and writes fleet's keys).
    #[arg(long)]
    etcd_auth: bool,
    /// How many of the nodes, the first ones, are etcd members (an odd number: 3 or 5); the
    /// others are workers, reaching the members through a local gateway. Default: all.
    #[arg(long)]
    members: Option<usize>,
    /// The directory to write into.
    #[arg(long)]
    out: PathBuf,
}

fn new_cluster(a: NewCluster) -> Result<()> {
    let nodes = cluster::parse_nodes(&a.nodes).map_err(anyhow::Error::msg)?;
    let mut ssh_keys = Vec::new();
    for f in &a.ssh_key {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("--ssh-key {}", f.display()))?;
        let keys = cluster::ssh_keys_of(&text);
        if keys.is_empty() {
            bail!("--ssh-key {}: no public key in it", f.display());
        }
        ssh_keys.extend(keys);
    }
    if ssh_keys.is_empty() {
        eprintln!("corelite-config: no --ssh-key: nobody will be able to log in over SSH");
    }
    if a.cert_days == 0 || a.ca_days < a.cert_days {
        bail!("--cert-days must be at least 1 and --ca-days at least --cert-days");
    }
    let spec = Spec {
        nodes,
        prefix: a.prefix,
        gateway: a.gateway,
        dns: a.dns,
        ntp: a.ntp,
        ssh_keys,
        token: a.token,
        cert_days: a.cert_days,
        ca_days: a.ca_days,
        etcd_auth: a.etcd_auth,
        members: a.members,
    };
    let g = cluster::generate(&spec).map_err(anyhow::Error::msg)?;
    let wrote = cluster::write(&a.out, &spec, &g).map_err(anyhow::Error::msg)?;
    for p in &wrote {
        println!("wrote {}", p.display());
    }
    let out = std::path::absolute(&a.out)?;
    println!(
        "\nBoot each node with its nodes/NAME.json: a config drive labelled CORELITE with it as config.json,\n\
         or on the kernel command line: corelite.config=gz64:$(gzip -9c nodes/NAME.json | base64 -w0). Then:\n  \
         . {0}/env\n  etcdctl endpoint health\n  fleetctl list-machines\n  \
         ssh core@{1}\nKeep {0}/pki/ca-key.pem offline.",
        out.display(),
        spec.nodes[0].ip
    );
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::NewCluster(a) => new_cluster(a),
    };
    if let Err(e) = res {
        eprintln!("corelite-config: {e:#}");
        std::process::exit(1);
    }
}
