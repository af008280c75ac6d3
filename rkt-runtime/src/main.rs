//! `rkt`: the runc-compatible command line of corelite's OCI runtime.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use rkt_runtime::container::{self, CreateOptions};
use rkt_runtime::pod::{Pods, DEFAULT_DATA_DIR};
use rkt_runtime::state::{Root, DEFAULT_ROOT};

mod cli {
    pub mod pods;
}
use cli::pods::{ImageCmd, PullArgs, RunArgs};

#[derive(Parser)]
#[command(
    name = "rkt",
    version,
    about = "Runs container images as pods, and OCI bundles with a runc-compatible command line",
    after_help = "EXAMPLES (images and pods):
    rkt fetch docker://localhost:5000/busybox:latest   # or oci:DIR[:TAG], a docker-archive tar
    rkt image list; rkt image cat-manifest busybox
    rkt run --name web --port 8080:80 busybox -- httpd -f -p 80 -h /srv
    rkt list; rkt status web; rkt enter web -- ps
    rkt stop web && rkt rm web; rkt gc --grace-period 0s

EXAMPLES (OCI bundles, as runc):
    mkdir -p bundle/rootfs && cp /bin/busybox bundle/rootfs/ && cd bundle
    rkt spec                                  # writes config.json
    rkt run demo                              # create + start + wait, exit code forwarded
    rkt create --bundle . web && rkt start web && rkt state web
    rkt exec web ps; rkt exec -t --console-socket /run/c.sock web sh
    rkt pause web && rkt resume web; rkt ps web; rkt events --stats web
    rkt update --memory 256m --pids-limit 100 web
    rkt kill web TERM && rkt delete web
    rkt list"
)]
struct Cli {
    /// Directory for container state.
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Directory for images, pods and the pod network's addresses.
    #[arg(long, global = true, env = "RKT_DIR", default_value = DEFAULT_DATA_DIR)]
    dir: PathBuf,
    /// Write logs to this file instead of stderr.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Read cgroupsPath in systemd's "slice:prefix:name" form (rkt writes the cgroup tree
    /// directly in either form).
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
    /// Unix socket to send the master of the container's terminal to (process.terminal).
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Pass this many file descriptors after stdio (3, 4, ...) on to the container's process.
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    /// Move the root filesystem over / and chroot instead of pivot_root (for ramdisk roots).
    #[arg(long)]
    no_pivot: bool,
    #[arg(long, hide = true)]
    no_new_keyring: bool,
    id: String,
}

#[derive(clap::Args)]
struct ExecArgs {
    /// A process.json (the spec's "process" object) instead of COMMAND.
    #[arg(long, short = 'p')]
    process: Option<PathBuf>,
    /// Allocate a pseudo-terminal (sent to --console-socket).
    #[arg(long, short = 't')]
    tty: bool,
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Working directory inside the container.
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// Extra environment variables (KEY=VALUE).
    #[arg(long, short = 'e')]
    env: Vec<String>,
    /// UID[:GID] to run as.
    #[arg(long, short = 'u')]
    user: Option<String>,
    #[arg(long = "additional-gids", short = 'g')]
    additional_gids: Vec<u32>,
    /// Extra capabilities (CAP_...).
    #[arg(long, short = 'c')]
    cap: Vec<String>,
    #[arg(long)]
    no_new_privs: bool,
    /// Return once the process runs.
    #[arg(long, short = 'd')]
    detach: bool,
    #[arg(long)]
    pid_file: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    #[arg(long, hide = true)]
    process_label: Option<String>,
    #[arg(long, hide = true)]
    apparmor: Option<String>,
    id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(clap::Args)]
struct UpdateArgs {
    /// A JSON file (or - for stdin) with the spec's linux.resources object.
    #[arg(long, short = 'r')]
    resources: Option<PathBuf>,
    /// Memory limit (bytes, or with k, m, g).
    #[arg(long)]
    memory: Option<String>,
    /// Memory plus swap limit (bytes, or with k, m, g; -1 for unlimited).
    #[arg(long)]
    memory_swap: Option<String>,
    #[arg(long)]
    pids_limit: Option<i64>,
    #[arg(long)]
    cpu_quota: Option<i64>,
    #[arg(long)]
    cpu_period: Option<u64>,
    #[arg(long)]
    cpu_share: Option<u64>,
    #[arg(long)]
    cpuset_cpus: Option<String>,
    #[arg(long)]
    cpuset_mems: Option<String>,
    id: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a container and leave it waiting for `start`.
    Create(CreateArgs),
    /// Start the process of a created container.
    Start { id: String },
    /// Run an image as a pod in the foreground (or, with --bundle, create + start + wait for
    /// a bundle as runc does); the exit code is forwarded.
    Run(Box<RunArgs>),
    /// Fetch images into the store: docker://REF or REF (a registry), oci:DIR[:TAG],
    /// oci-archive:FILE, docker-archive:FILE, or a path. Prints each image's ID.
    Fetch {
        #[arg(required = true)]
        images: Vec<String>,
        /// Also name the image this (e.g. localhost/web:1).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        pull: PullArgs,
    },
    /// Manage the image store.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Show a pod's state (key=value lines, or --format json).
    Status {
        pod: String,
        #[arg(long, short = 'f', default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Stop pods: SIGTERM, then SIGKILL after --timeout.
    Stop {
        #[arg(required = true)]
        pods: Vec<String>,
        /// SIGKILL at once.
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = "10s")]
        timeout: String,
    },
    /// Remove exited pods (running ones too with --force).
    Rm {
        #[arg(required = true)]
        pods: Vec<String>,
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Run a command (default /bin/sh) inside a running pod.
    Enter {
        pod: String,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Remove pods exited longer than the grace period, then images without names that no pod
    /// uses and blobs and layers no image references.
    Gc {
        #[arg(long, default_value = "30m")]
        grace_period: String,
    },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to a container's process.
    Kill {
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
        /// Signal every process of the container, not only its init.
        #[arg(long, short = 'a')]
        all: bool,
    },
    /// Run a process in a running container.
    Exec(ExecArgs),
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// List the processes of a container (host pids).
    Ps {
        /// table or json
        #[arg(long, short = 'f', default_value = "table", value_parser = ["table", "json"])]
        format: String,
        id: String,
        /// Options for ps(1), default -ef.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Print resource usage of a container as JSON events.
    Events {
        /// Print one sample and exit.
        #[arg(long)]
        stats: bool,
        /// Seconds between samples.
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// Change the resource limits of a container.
    Update(UpdateArgs),
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

/// Logs go to --log (as engines expect) or stderr; the level is warn, debug with --debug, or
/// RUST_LOG's if it is a plain level name. (No per-module filters: rkt is a short-lived CLI
/// and a regex engine would cost more memory than the rest of it.)
fn init_logs(cli: &Cli) -> Result<()> {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(if cli.debug {
            tracing::Level::DEBUG
        } else {
            tracing::Level::WARN
        });
    let b = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false);
    match (&cli.log, cli.log_format.as_str()) {
        (Some(p), fmt) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening log file {}", p.display()))?;
            let b = b.with_writer(std::sync::Mutex::new(f));
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
        preserve_fds: c.preserve_fds + listen_fds(),
        no_pivot: c.no_pivot,
    }
}

/// Sockets handed over by systemd socket activation are passed on too, as runc does.
fn listen_fds() -> u32 {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_none_or(|p| p == std::process::id());
    std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|_| ours)
        .unwrap_or(0)
}

fn real_main(cli: &Cli) -> Result<i32> {
    let root = Root::new(&cli.root);
    let pods = Pods::new(&cli.dir, Root::new(&cli.root));
    match &cli.cmd {
        Cmd::Create(c) => {
            container::create(&root, &c.id, &opts(c))?;
        }
        Cmd::Start { id } => container::start(&root, id)?,
        Cmd::Run(r) => {
            if cli::pods::is_bundle_run(&pods, r) {
                return Ok(container::run(
                    &root,
                    &r.target,
                    &cli::pods::bundle_options(r, listen_fds()),
                    r.detach,
                )?);
            }
            return cli::pods::run(&pods, r);
        }
        Cmd::Fetch { images, name, pull } => {
            cli::pods::fetch(&pods, images, name.as_deref(), pull)?
        }
        Cmd::Image(c) => cli::pods::image(&pods, c)?,
        Cmd::Status { pod, format } => cli::pods::status(&pods, &root, pod, format == "json")?,
        Cmd::Stop {
            pods: which,
            force,
            timeout,
        } => cli::pods::stop(&pods, which, *force, cli::pods::parse_duration(timeout)?)?,
        Cmd::Rm { pods: which, force } => cli::pods::rm(&pods, which, *force)?,
        Cmd::Enter { pod, command } => return cli::pods::enter(&pods, &root, pod, command),
        Cmd::Gc { grace_period } => cli::pods::gc(&pods, cli::pods::parse_duration(grace_period)?)?,
        Cmd::State { id } => println!("{}", container::state_json(&root, id)?),
        Cmd::Kill { id, signal, all } => {
            container::kill_container(&root, id, container::parse_signal(signal)?, *all)?
        }
        Cmd::Exec(e) => return exec(&root, e),
        Cmd::Pause { id } => container::pause(&root, id)?,
        Cmd::Resume { id } => container::resume(&root, id)?,
        Cmd::Ps {
            format,
            id,
            ps_args,
        } => ps(&root, id, format, ps_args)?,
        Cmd::Events {
            stats,
            interval,
            id,
        } => events(&root, id, *stats, interval)?,
        Cmd::Update(u) => container::update(&root, &u.id, &update_resources(u)?)?,
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
                cli::pods::list_table(&pods, &root);
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

fn exec(root: &Root, e: &ExecArgs) -> Result<i32> {
    let process = match &e.process {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => {
            if e.command.is_empty() {
                anyhow::bail!("exec needs a COMMAND or --process");
            }
            let user = match &e.user {
                None => None,
                Some(u) => {
                    let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
                    Some((
                        uid.parse().context("--user: UID must be a number")?,
                        gid.parse().context("--user: GID must be a number")?,
                    ))
                }
            };
            container::exec_process_for(
                root,
                &e.id,
                &container::ExecOverrides {
                    args: e.command.clone(),
                    tty: e.tty,
                    cwd: e.cwd.clone(),
                    env: e.env.clone(),
                    user,
                    additional_gids: e.additional_gids.clone(),
                    caps: e.cap.clone(),
                    no_new_privs: e.no_new_privs,
                },
            )?
        }
    };
    Ok(container::exec(
        root,
        &e.id,
        &process,
        &container::ExecOptions {
            console_socket: e.console_socket.clone(),
            pid_file: e.pid_file.clone(),
            detach: e.detach,
            preserve_fds: e.preserve_fds,
        },
    )?)
}

fn ps(root: &Root, id: &str, format: &str, ps_args: &[String]) -> Result<()> {
    let pids = container::pids(root, id)?;
    if format == "json" {
        println!("{}", serde_json::to_string(&pids)?);
        return Ok(());
    }
    let args: Vec<String> = if ps_args.is_empty() {
        vec!["-ef".into()]
    } else {
        ps_args.to_vec()
    };
    let out = std::process::Command::new("ps")
        .args(&args)
        .output()
        .context("running ps")?;
    if !out.status.success() {
        anyhow::bail!(
            "ps {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .context("ps output has no PID column")?;
    println!("{header}");
    for l in lines {
        let pid = l.split_whitespace().nth(col).and_then(|p| p.parse().ok());
        if pid.is_some_and(|p: i32| pids.contains(&p)) {
            println!("{l}");
        }
    }
    Ok(())
}

fn events(root: &Root, id: &str, once: bool, interval: &str) -> Result<()> {
    let every = interval
        .trim_end_matches('s')
        .parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0)
        .context("--interval: a number of seconds, like 5s")?;
    loop {
        let stats = container::stats(root, id)?;
        let ev = serde_json::json!({"type": "stats", "id": id, "data": stats});
        println!("{ev}");
        if once {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs_f64(every));
    }
}

fn parse_bytes(s: &str) -> Result<i64> {
    Ok(rkt_runtime::pod::config::parse_bytes(s)?)
}

fn update_resources(u: &UpdateArgs) -> Result<oci_spec::runtime::LinuxResources> {
    let mut r: serde_json::Value = match &u.resources {
        Some(p) => {
            let text = if p.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
            };
            serde_json::from_str(&text).context("parsing the resources JSON")?
        }
        None => serde_json::json!({}),
    };
    let mut set = |section: &str, key: &str, v: serde_json::Value| {
        r[section][key] = v;
    };
    if let Some(v) = &u.memory {
        set("memory", "limit", parse_bytes(v)?.into());
    }
    if let Some(v) = &u.memory_swap {
        set("memory", "swap", parse_bytes(v)?.into());
    }
    if let Some(n) = u.pids_limit {
        set("pids", "limit", n.into());
    }
    if let Some(n) = u.cpu_quota {
        set("cpu", "quota", n.into());
    }
    if let Some(n) = u.cpu_period {
        set("cpu", "period", n.into());
    }
    if let Some(n) = u.cpu_share {
        set("cpu", "shares", n.into());
    }
    if let Some(c) = &u.cpuset_cpus {
        set("cpu", "cpus", c.clone().into());
    }
    if let Some(m) = &u.cpuset_mems {
        set("cpu", "mems", m.clone().into());
    }
    serde_json::from_value(r).context("invalid resources")
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
