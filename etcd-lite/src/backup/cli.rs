//! `etcd-lite snapshot status|restore`: etcdutl 3.5's commands, flags and output.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::{restore, status, RestoreTarget, Status};
use crate::config::Config;

#[derive(Parser, Debug)]
#[command(
    name = "etcd-lite snapshot",
    about = "Inspect and restore etcd snapshots (etcd-lite's, or etcd 3.4/3.5's): etcdutl's commands",
    after_help = "Examples:\n  \
        etcdctl --endpoints 127.0.0.1:2379 snapshot save backup.db\n  \
        etcd-lite snapshot status backup.db -w table\n  \
        etcd-lite snapshot restore backup.db --name m1 --data-dir m1.etcd \\\n      \
        --initial-cluster m1=http://10.0.0.1:2380,m2=http://10.0.0.2:2380,m3=http://10.0.0.3:2380 \\\n      \
        --initial-advertise-peer-urls http://10.0.0.1:2380 --initial-cluster-token restored-1"
)]
pub struct SnapshotCli {
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Gets backend snapshot status of a given file: hash, revision, total keys, total size.
    Status {
        /// The snapshot file (from `etcdctl snapshot save`, or a member's `member/snap/db`).
        file: PathBuf,
        /// Output format: simple, table or json.
        #[arg(short = 'w', long = "write-out", default_value = "simple")]
        write_out: String,
    },
    /// Restores an etcd member snapshot to a new data directory, for a new cluster.
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// Path to the output data directory (default: NAME.etcd). Must not exist.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Human-readable name for this member.
        #[arg(long, default_value = "default")]
        name: String,
        /// Initial cluster configuration for restore bootstrap (default: NAME=http://localhost:2380).
        #[arg(long)]
        initial_cluster: Option<String>,
        /// Initial cluster token for the etcd cluster during restore bootstrap.
        #[arg(long, default_value = "etcd-cluster")]
        initial_cluster_token: String,
        /// List of this member's peer URLs to advertise to the rest of the cluster.
        #[arg(long, default_value = "http://localhost:2380")]
        initial_advertise_peer_urls: String,
        /// Ignore snapshot integrity hash value (required if copied from data directory).
        #[arg(long)]
        skip_hash_check: bool,
    },
}

/// Go's flag package: `-flag` and `--flag` are the same; `-w` stays short.
fn go_style(args: impl Iterator<Item = String>) -> impl Iterator<Item = String> {
    args.map(|a| {
        if a.len() > 2 && a.starts_with('-') && !a.starts_with("--") {
            format!("-{a}")
        } else {
            a
        }
    })
}

/// Runs `etcd-lite snapshot ...` with `args` after `snapshot`; returns the process's exit code.
pub fn run(args: Vec<String>) -> i32 {
    let cli = match SnapshotCli::try_parse_from(
        std::iter::once("etcd-lite snapshot".to_string()).chain(go_style(args.into_iter())),
    ) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match execute(cli.command) {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    }
}

/// Carries out a command; returns what it prints.
pub fn execute(cmd: SnapshotCommand) -> anyhow::Result<String> {
    match cmd {
        SnapshotCommand::Status { file, write_out } => {
            let s = status(&file)?;
            match write_out.as_str() {
                "simple" => Ok(format!("{}\n", row(&s).join(", "))),
                "json" => Ok(format!("{}\n", serde_json::to_string(&s)?)),
                "table" => Ok(table(
                    &["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
                    &row(&s),
                )),
                other => {
                    anyhow::bail!("unsupported output format {other:?}: use simple, table or json")
                }
            }
        }
        SnapshotCommand::Restore {
            file,
            data_dir,
            name,
            initial_cluster,
            initial_cluster_token,
            initial_advertise_peer_urls,
            skip_hash_check,
        } => {
            let initial_cluster =
                initial_cluster.unwrap_or_else(|| format!("{name}=http://localhost:2380"));
            let cfg = Config::parse_go_style([
                "etcd-lite".to_string(),
                format!("--name={name}"),
                format!("--initial-cluster={initial_cluster}"),
                format!("--initial-cluster-token={initial_cluster_token}"),
                format!("--initial-advertise-peer-urls={initial_advertise_peer_urls}"),
            ])
            .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))?;
            let member = cfg.member()?;
            let cluster = cfg.cluster()?;
            verify_bootstrap(
                &name,
                &initial_cluster,
                &member.peer_urls,
                &initial_advertise_peer_urls,
            )?;
            let data_dir = data_dir.unwrap_or_else(|| PathBuf::from(format!("{name}.etcd")));
            let target = RestoreTarget {
                data_dir: data_dir.clone(),
                member_id: member.id,
                cluster_id: member.cluster_id,
                members: cluster.members,
            };
            let revision = restore(&file, skip_hash_check, &target)?;
            Ok(format!(
                "restored snapshot {} (revision {}) to {} as member {:x} of cluster {:x}\n",
                file.display(),
                revision,
                data_dir.display(),
                member.id,
                member.cluster_id
            ))
        }
    }
}

/// etcd's `VerifyBootstrap`: this member is in the initial cluster with the URLs it advertises.
fn verify_bootstrap(
    name: &str,
    initial_cluster: &str,
    in_cluster: &[String],
    advertised: &str,
) -> anyhow::Result<()> {
    if in_cluster.is_empty() {
        anyhow::bail!("couldn't find local name {name:?} in the initial cluster configuration");
    }
    let mut a: Vec<&str> = advertised.split(',').map(str::trim).collect();
    let mut b: Vec<&str> = in_cluster.iter().map(String::as_str).collect();
    a.sort_unstable();
    b.sort_unstable();
    if a != b {
        anyhow::bail!(
            "--initial-cluster has {name}={} but missing from --initial-advertise-peer-urls={advertised} (--initial-cluster={initial_cluster})",
            in_cluster.join(",")
        );
    }
    Ok(())
}

fn row(s: &Status) -> Vec<String> {
    vec![
        format!("{:x}", s.hash),
        s.revision.to_string(),
        s.total_key.to_string(),
        human_bytes(s.total_size),
    ]
}

/// go-humanize's `Bytes`: SI units, one decimal below 10.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as i32;
    let val = ((n as f64) / 1000f64.powi(e) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", UNITS[e as usize])
    } else {
        format!("{val:.0} {}", UNITS[e as usize])
    }
}

/// A one-row table as etcdutl draws it (headers centred, cells right-aligned).
fn table(header: &[&str], cells: &[String]) -> String {
    let widths: Vec<usize> = header
        .iter()
        .zip(cells)
        .map(|(h, c)| h.len().max(c.len()) + 2)
        .collect();
    let line = || {
        let mut s = String::from("+");
        for w in &widths {
            s.push_str(&"-".repeat(*w));
            s.push('+');
        }
        s.push('\n');
        s
    };
    let mut out = line();
    out.push('|');
    for (h, w) in header.iter().zip(&widths) {
        let pad = w - h.len();
        out.push_str(&format!(
            "{}{h}{}|",
            " ".repeat(pad / 2),
            " ".repeat(pad - pad / 2)
        ));
    }
    out.push('\n');
    out.push_str(&line());
    out.push('|');
    for (c, w) in cells.iter().zip(&widths) {
        out.push_str(&format!(" {c:>width$} |", width = w - 2));
    }
    out.push('\n');
    out.push_str(&line());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_go_humanize_does() {
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(20480), "20 kB");
        assert_eq!(human_bytes(2_100_000), "2.1 MB");
        assert_eq!(human_bytes(999), "999 B");
    }

    #[test]
    fn the_table_matches_etcdctls() {
        let t = table(
            &["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
            &["5cd8411b".into(), "53".into(), "60".into(), "20 kB".into()],
        );
        assert_eq!(
            t,
            "+----------+----------+------------+------------+\n\
             |   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |\n\
             +----------+----------+------------+------------+\n\
             | 5cd8411b |       53 |         60 |      20 kB |\n\
             +----------+----------+------------+------------+\n"
        );
    }

    #[test]
    fn a_member_must_advertise_what_the_cluster_says() {
        let urls = vec!["http://a:2380".to_string()];
        assert!(verify_bootstrap("m1", "m1=http://a:2380", &urls, "http://a:2380").is_ok());
        assert!(verify_bootstrap("m1", "m1=http://a:2380", &urls, "http://b:2380").is_err());
        assert!(verify_bootstrap("m9", "m1=http://a:2380", &[], "http://a:2380").is_err());
    }
}
