//! `rkt`: the runc-compatible command line of corelite's OCI runtime.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use rkt_runtime::container::{self, CreateOptions};
use rkt_runtime::state::{Root, DEFAULT_ROOT};

#[derive(Parser)]
#[command(
    name = "rkt",
    version,
    about = "An OCI runtime with a runc-compatible command line",
    after_help = "EXAMPLES:
    mkdir -p bundle/rootfs && cp /bin/busybox bundle/rootfs/ && cd bundle
    rkt spec                                  # writes config.json
    rkt run demo                              # create + start + wait, exit code forwarded
    rkt create --bundle . web && rkt start web && rkt state web
    rkt kill web TERM && rkt delete web
    rkt list"
)]
struct Cli {
    /// Directory for container state.
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Write logs to this file instead of stderr.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Accepted for runc compatibility; rkt does not manage cgroups yet.
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    #[arg(long, global = true, hide = true)]
    debug: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct CreateArgs {
    /// Path to the bundle (the directory with config.json).
    #[arg(long, short = 'b', default_value = ".")]
    bundle: PathBuf,
    /// Write the container process's pid to this file.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Unix socket to send a terminal's master to (not implemented yet).
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility (extra fds are not passed yet).
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    #[arg(long, hide = true)]
    no_pivot: bool,
    #[arg(long, hide = true)]
    no_new_keyring: bool,
    id: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a container and leave it waiting for `start`.
    Create(CreateArgs),
    /// Start the process of a created container.
    Start { id: String },
    /// Create, start and wait for a container (foreground unless --detach).
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Return after starting instead of waiting.
        #[arg(long, short = 'd')]
        detach: bool,
    },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to a container's process.
    Kill {
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
        #[arg(long, short = 'a', hide = true)]
        all: bool,
    },
    /// Delete a stopped container (any container with --force).
    Delete {
        id: String,
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// List containers.
    List {
        /// table or json
        #[arg(long, short = 'f', default_value = "table", value_parser = ["table", "json"])]
        format: String,
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Write a default config.json into the bundle directory.
    Spec {
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
    },
}

fn init_logs(cli: &Cli) -> Result<()> {
    let b = tracing_subscriber::fmt().with_env_filter(
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(if cli.debug { "debug" } else { "warn" })
        }),
    );
    match (&cli.log, cli.log_format.as_str()) {
        (Some(p), fmt) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening log file {}", p.display()))?;
            let b = b.with_writer(std::sync::Mutex::new(f)).with_ansi(false);
            if fmt == "json" {
                b.json().init()
            } else {
                b.init()
            }
        }
        (None, "json") => b.with_writer(std::io::stderr).json().init(),
        (None, _) => b.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

fn opts(c: &CreateArgs) -> CreateOptions {
    CreateOptions {
        bundle: c.bundle.clone(),
        pid_file: c.pid_file.clone(),
        console_socket: c.console_socket.clone(),
    }
}

fn real_main(cli: &Cli) -> Result<i32> {
    let root = Root::new(&cli.root);
    match &cli.cmd {
        Cmd::Create(c) => {
            container::create(&root, &c.id, &opts(c))?;
        }
        Cmd::Start { id } => container::start(&root, id)?,
        Cmd::Run { create, detach } => {
            return Ok(container::run(&root, &create.id, &opts(create), *detach)?)
        }
        Cmd::State { id } => println!("{}", container::state_json(&root, id)?),
        Cmd::Kill { id, signal, .. } => {
            container::kill_container(&root, id, container::parse_signal(signal)?)?
        }
        Cmd::Delete { id, force } => container::delete(&root, id, *force)?,
        Cmd::List { format, quiet } => {
            let rows = container::list(&root);
            if *quiet {
                rows.iter().for_each(|r| println!("{}", r.0));
            } else if format == "json" {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(id, pid, st, b, c)| serde_json::json!({"ociVersion": rkt_runtime::state::OCI_VERSION, "id": id, "pid": pid, "status": st.to_string(), "bundle": b, "created": c}))
                    .collect();
                println!("{}", serde_json::to_string(&v)?);
            } else {
                println!(
                    "{:<20} {:<8} {:<10} {:<40} CREATED",
                    "ID", "PID", "STATUS", "BUNDLE"
                );
                for (id, pid, st, b, c) in rows {
                    println!(
                        "{:<20} {:<8} {:<10} {:<40} {}",
                        id,
                        pid,
                        st.to_string(),
                        b.display(),
                        c
                    );
                }
            }
        }
        Cmd::Spec { bundle } => {
            let p = bundle.join("config.json");
            if p.exists() {
                anyhow::bail!("{} already exists; remove it first", p.display());
            }
            let spec = rkt_runtime::bundle::default_spec();
            std::fs::write(&p, serde_json::to_string_pretty(&spec)?)
                .with_context(|| format!("writing {}", p.display()))?;
        }
    }
    Ok(0)
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = init_logs(&cli) {
        eprintln!("rkt: {e:#}");
        std::process::exit(1);
    }
    match real_main(&cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // Engines read errors from --log; people read stderr.
            if cli.log.is_some() {
                tracing::error!(error = %format!("{e:#}"), "command failed");
            }
            eprintln!("rkt: {e:#}");
            std::process::exit(1);
        }
    }
}
