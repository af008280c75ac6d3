//! The pod and image side of `rkt`: fetch, image, run IMAGE, status, stop, rm, enter, gc, and
//! the pod view of list.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use oci_image::registry::PullOptions;
use oci_image::{ImageRecord, Source, Store};
use rkt_runtime::container::{self, CreateOptions};
use rkt_runtime::pod::config::{self, NetMode, RunOptions, Volume};
use rkt_runtime::pod::net::PortForward;
use rkt_runtime::pod::{self, PodState, Pods};
use rkt_runtime::state::Root;

/// Options of `rkt run` (an image, or runc's container id with --bundle).
#[derive(clap::Args)]
pub struct RunArgs {
    /// Bundle directory: run it as runc does (TARGET is then the container id).
    #[arg(long, short = 'b')]
    pub bundle: Option<PathBuf>,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    #[arg(long)]
    pub no_pivot: bool,
    #[arg(long, hide = true)]
    pub no_new_keyring: bool,
    /// Return after starting (bundles only).
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// The pod's name (default: image name and part of its id).
    #[arg(long)]
    pub name: Option<String>,
    /// Run this program instead of the image's entrypoint.
    #[arg(long)]
    pub exec: Option<String>,
    /// NAME=VALUE added to the environment (repeatable).
    #[arg(long = "set-env")]
    pub set_env: Vec<String>,
    /// USER[:GROUP] (names from the image, or numbers).
    #[arg(long)]
    pub user: Option<String>,
    /// Working directory in the pod.
    #[arg(long)]
    pub workdir: Option<String>,
    /// /host/path:/pod/path[:ro] (repeatable).
    #[arg(long)]
    pub volume: Vec<String>,
    /// type=bind,source=/a,target=/b[,readonly] or type=tmpfs,target=/t (repeatable).
    #[arg(long)]
    pub mount: Vec<String>,
    /// default (bridge rkt0 with NAT), host, or none.
    #[arg(long, default_value = "default")]
    pub net: String,
    /// [HOSTIP:]HOSTPORT:PODPORT[/tcp|udp] (repeatable).
    #[arg(long)]
    pub port: Vec<String>,
    /// Memory limit (bytes, or with k, m, g).
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU limit in cores (0.5 = half a core).
    #[arg(long)]
    pub cpu: Option<f64>,
    /// Keep stdin attached (otherwise it is /dev/null).
    #[arg(long, short = 'i')]
    pub interactive: bool,
    #[command(flatten)]
    pub pull: PullArgs,
    /// The image (or, with --bundle, the container id).
    pub target: String,
    /// Arguments replacing the image's Cmd (after --).
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(clap::Args, Clone)]
pub struct PullArgs {
    /// Allow plain HTTP to a registry that is not on this machine.
    #[arg(long)]
    pub insecure: bool,
    /// USER:PASSWORD for the registry.
    #[arg(long, env = "RKT_REGISTRY_CREDS", hide_env_values = true)]
    pub creds: Option<String>,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,
}

impl PullArgs {
    fn options(&self) -> Result<PullOptions> {
        let credentials = match &self.creds {
            Some(c) => {
                let (u, p) = c
                    .split_once(':')
                    .context("--creds: expected USER:PASSWORD")?;
                Some((u.to_string(), p.to_string()))
            }
            None => None,
        };
        Ok(PullOptions {
            credentials,
            insecure: self.insecure,
            progress: !self.no_progress && std::io::stderr().is_terminal(),
        })
    }
}

#[derive(clap::Subcommand)]
pub enum ImageCmd {
    /// List images in the store.
    List {
        #[arg(long, short = 'f', default_value = "table", value_parser = ["table", "json"])]
        format: String,
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Remove images (their blobs go at the next gc).
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Write an image as an OCI archive (a tar; - for stdout).
    Export { image: String, file: PathBuf },
    /// Write an image's root filesystem into a directory.
    Extract {
        image: String,
        /// An empty (or new) directory. (Not `dir`: that is the global --dir.)
        #[arg(value_name = "DIR")]
        dest: PathBuf,
    },
    /// Print an image's manifest.
    CatManifest { image: String },
    /// Check every blob of every image against its digest.
    Verify,
}

fn store(pods: &Pods) -> Result<Store> {
    Ok(pods.store()?)
}

/// `rkt fetch`: prints the image ID of each.
pub fn fetch(pods: &Pods, images: &[String], name: Option<&str>, pull: &PullArgs) -> Result<()> {
    if name.is_some() && images.len() > 1 {
        bail!("--name names one image; fetch them one at a time");
    }
    let s = store(pods)?;
    for i in images {
        let src = Source::parse(i)?;
        let rec = oci_image::fetch(&s, &src, name, pull.options()?)
            .with_context(|| format!("fetching {i}"))?;
        println!("{}", rec.id);
    }
    Ok(())
}

fn human(n: u64) -> String {
    let units = ["B", "KB", "MB", "GB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

pub fn image(pods: &Pods, cmd: &ImageCmd) -> Result<()> {
    let s = store(pods)?;
    match cmd {
        ImageCmd::List { format, quiet } => {
            let images = s.images()?;
            if *quiet {
                images.iter().for_each(|i| println!("{}", i.id));
            } else if format == "json" {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else {
                println!("{:<14} {:<50} {:>10}  FETCHED", "ID", "NAME", "SIZE");
                for i in &images {
                    let names = if i.names.is_empty() {
                        vec!["<none>".to_string()]
                    } else {
                        i.names.clone()
                    };
                    for n in names {
                        println!(
                            "{:<14} {:<50} {:>10}  {}",
                            i.short_id(),
                            n,
                            human(i.size),
                            &i.fetched[..19.min(i.fetched.len())]
                        );
                    }
                }
            }
        }
        ImageCmd::Rm { images } => {
            let mut failed = false;
            for i in images {
                match s.remove(i, &|r: &ImageRecord| pods.user_of_image(&r.id)) {
                    Ok(r) => println!("{}", r.id),
                    Err(e) => {
                        eprintln!("rkt: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                bail!("some images were not removed");
            }
        }
        ImageCmd::Export { image, file } => {
            let rec = s.find(image)?;
            if file.as_os_str() == "-" {
                let mut out = std::io::stdout().lock();
                oci_image::export(&s, &rec, &mut out)?;
            } else {
                let tmp = file.with_extension("partial");
                let mut f = std::fs::File::create(&tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?;
                oci_image::export(&s, &rec, &mut f)?;
                std::fs::rename(&tmp, file)
                    .with_context(|| format!("writing {}", file.display()))?;
            }
        }
        ImageCmd::Extract { image, dest: dir } => {
            let rec = s.find(image)?;
            if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
                bail!("{} is not empty", dir.display());
            }
            oci_image::extract(&s, &rec, dir)?;
        }
        ImageCmd::CatManifest { image } => {
            let rec = s.find(image)?;
            let m: serde_json::Value = serde_json::from_slice(&s.read_blob(&rec.manifest)?)?;
            println!("{}", serde_json::to_string_pretty(&m)?);
        }
        ImageCmd::Verify => {
            let mut bad = 0;
            for i in s.images()? {
                for d in std::iter::once(&i.manifest)
                    .chain(std::iter::once(&i.config))
                    .chain(i.layers.iter().map(|l| &l.digest))
                {
                    if let Err(e) = s.verify_blob(d) {
                        eprintln!("rkt: {}: {e}", i.names.first().unwrap_or(&i.id));
                        bad += 1;
                    }
                }
            }
            if bad > 0 {
                bail!("{bad} blobs failed verification");
            }
        }
    }
    Ok(())
}

/// Whether `rkt run TARGET` means a bundle (runc's form) rather than an image.
pub fn is_bundle_run(pods: &Pods, r: &RunArgs) -> bool {
    if r.bundle.is_some() {
        return true;
    }
    Path::new("config.json").is_file()
        && pods
            .store()
            .map(|s| s.find(&r.target).is_err())
            .unwrap_or(true)
}

pub fn bundle_options(r: &RunArgs, listen_fds: u32) -> CreateOptions {
    CreateOptions {
        bundle: r.bundle.clone().unwrap_or_else(|| PathBuf::from(".")),
        pid_file: r.pid_file.clone(),
        console_socket: r.console_socket.clone(),
        preserve_fds: r.preserve_fds + listen_fds,
        no_pivot: r.no_pivot,
    }
}

/// Tells systemd (Type=notify units) that the pod runs.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "sd_notify socket");
            return;
        }
    };
    let msg = format!("READY=1\nMAINPID={}\n", std::process::id());
    let bytes = path.as_encoded_bytes();
    let res = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), Path::new(&path))
    };
    if let Err(e) = res {
        tracing::warn!(error = %e, "sd_notify READY=1");
    }
}

/// `rkt run IMAGE`: fetches the image if needed, runs it as a pod, returns its exit code.
pub fn run(pods: &Pods, r: &RunArgs) -> Result<i32> {
    if r.detach {
        bail!("--detach is for bundles; run a pod in the background with systemd (or &)");
    }
    let net: NetMode = r.net.parse()?;
    let mut volumes = r
        .volume
        .iter()
        .map(|v| Volume::parse_volume(v))
        .collect::<Result<Vec<_>, _>>()?;
    for m in &r.mount {
        volumes.push(Volume::parse_mount(m)?);
    }
    for v in &volumes {
        if let Some(src) = &v.source {
            if !src.exists() {
                bail!("volume source {} does not exist", src.display());
            }
        }
    }
    let ports = r
        .port
        .iter()
        .map(|p| PortForward::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    let memory = r.memory.as_deref().map(config::parse_bytes).transpose()?;
    // Every option is checked before an image is fetched (which may go to a registry).
    pod::check_ports(net, &ports)?;
    if let Some(n) = &r.name {
        rkt_runtime::state::check_id(n)?;
    }
    let s = store(pods)?;
    let rec = match s.find(&r.target) {
        Ok(rec) => rec,
        Err(oci_image::ImageError::NotFound(_)) => {
            let src = Source::parse(&r.target)?;
            eprintln!("rkt: {} is not in the store; fetching it", r.target);
            oci_image::fetch(&s, &src, None, r.pull.options()?)
                .with_context(|| format!("fetching {}", r.target))?
        }
        Err(e) => return Err(e.into()),
    };
    let name = match &r.name {
        Some(n) => n.clone(),
        None => pod::default_name(
            rec.names.first().map(String::as_str).unwrap_or("pod"),
            &format!("{:x}", rand_u32()),
        ),
    };
    let opts = RunOptions {
        name,
        exec: r.exec.clone(),
        args: r.args.clone(),
        set_env: r.set_env.clone(),
        user: r.user.clone(),
        workdir: r.workdir.clone(),
        volumes,
        net,
        memory,
        cpu: r.cpu,
        interactive: r.interactive,
    };
    if !std::io::stdout().is_terminal() || !std::io::stderr().is_terminal() {
        rkt_runtime::linux::relay_output()?;
    }
    if !r.interactive {
        let null = std::fs::File::open("/dev/null").context("opening /dev/null")?;
        nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0)
            .context("redirecting stdin")?;
    }
    let code = pods.run(&rec, &r.target, &opts, &ports, &mut |p| {
        tracing::info!(pod = %p.id, name = %p.name, ip = ?p.ip, "pod running");
        notify_ready();
    })?;
    Ok(code)
}

fn rand_u32() -> u32 {
    use rand::Rng;
    rand::thread_rng().gen()
}

/// `rkt list`: pods and plain containers in one table.
pub fn list_table(pods: &Pods, root: &Root) {
    println!(
        "{:<36} {:<20} {:<36} {:<9} {:<8} {:<16} CREATED",
        "ID", "NAME", "IMAGE", "STATUS", "PID", "NETWORKS"
    );
    let all = pods.list();
    for (p, st) in &all {
        let pid = root
            .load(&p.id)
            .ok()
            .filter(|_| matches!(st, PodState::Running | PodState::Paused))
            .map(|s| s.pid.to_string())
            .unwrap_or_else(|| "-".into());
        let status = match (st, p.exit_code) {
            (PodState::Exited, Some(c)) => format!("exited({c})"),
            (s, _) => s.to_string(),
        };
        let networks = match (p.net, p.ip) {
            (NetMode::Default, Some(ip)) if *st != PodState::Exited => format!("default:{ip}"),
            (NetMode::Host, _) => "host".into(),
            (NetMode::None, _) => "none".into(),
            _ => "-".into(),
        };
        println!(
            "{:<36} {:<20} {:<36} {:<9} {:<8} {:<16} {}",
            p.id,
            p.name,
            p.image,
            status,
            pid,
            networks,
            &p.created[..19.min(p.created.len())]
        );
    }
    for (id, pid, st, bundle, created) in container::list(root) {
        if all.iter().any(|(p, _)| p.id == id) {
            continue;
        }
        println!(
            "{:<36} {:<20} {:<36} {:<9} {:<8} {:<16} {}",
            id,
            "-",
            bundle.display(),
            st.to_string(),
            pid,
            "-",
            &created[..19.min(created.len())]
        );
    }
}

/// `rkt status POD`: rkt's key=value lines, or JSON.
pub fn status(pods: &Pods, root: &Root, what: &str, json: bool) -> Result<()> {
    let p = pods.find(what)?;
    let st = pods.state(&p);
    let pid = root
        .load(&p.id)
        .ok()
        .filter(|_| st == PodState::Running)
        .map(|s| s.pid);
    if json {
        let mut v = serde_json::to_value(&p)?;
        v["state"] = serde_json::json!(st.to_string());
        v["pid"] = serde_json::json!(pid);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "id={}\nname={}\nimage={}\nstate={st}",
        p.id, p.name, p.image
    );
    println!("created={}", p.created);
    if let Some(s) = &p.started {
        println!("started={s}");
    }
    if let (Some(ip), false) = (p.ip, st == PodState::Exited) {
        println!("networks=default:ip4={ip}");
    }
    for f in &p.ports {
        println!(
            "port={}:{}->{}/{}",
            f.host_ip.map(|i| i.to_string()).unwrap_or_default(),
            f.host_port,
            f.pod_port,
            f.protocol
        );
    }
    if let Some(pid) = pid {
        println!("pid={pid}");
    }
    println!("exited={}", st == PodState::Exited);
    if let Some(c) = p.exit_code {
        println!("exit-code={c}");
    }
    if let Some(f) = &p.finished {
        println!("finished={f}");
    }
    Ok(())
}

pub fn stop(pods: &Pods, what: &[String], force: bool, timeout: Duration) -> Result<()> {
    for w in what {
        let p = pods.stop(w, force, timeout)?;
        println!("{}", p.id);
    }
    Ok(())
}

pub fn rm(pods: &Pods, what: &[String], force: bool) -> Result<()> {
    let mut failed = false;
    for w in what {
        match pods.remove(w, force) {
            Ok(p) => println!("{}", p.id),
            Err(e) => {
                eprintln!("rkt: {e}");
                failed = true;
            }
        }
    }
    if failed {
        bail!("some pods were not removed");
    }
    Ok(())
}

/// `rkt enter POD [-- CMD...]`: runs CMD (default /bin/sh) in the pod, as the pod's user.
pub fn enter(pods: &Pods, root: &Root, what: &str, cmd: &[String]) -> Result<i32> {
    let p = pods.find(what)?;
    if pods.state(&p) != PodState::Running {
        bail!("pod {} is not running", p.name);
    }
    let args = if cmd.is_empty() {
        vec!["/bin/sh".to_string()]
    } else {
        cmd.to_vec()
    };
    let process = container::exec_process_for(
        root,
        &p.id,
        &container::ExecOverrides {
            args,
            tty: false,
            cwd: None,
            env: vec![],
            user: None,
            additional_gids: vec![],
            caps: vec![],
            no_new_privs: false,
        },
    )?;
    Ok(container::exec(
        root,
        &p.id,
        &process,
        &container::ExecOptions::default(),
    )?)
}

/// Parses `30m`, `1h`, `45s`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .with_context(|| format!("{s:?}: expected a duration like 30s, 10m, 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => bail!("{s:?}: expected a duration like 30s, 10m, 1h"),
    };
    Ok(Duration::from_secs(secs))
}

pub fn gc(pods: &Pods, grace: Duration) -> Result<()> {
    let (removed, report) = pods.gc(grace)?;
    for id in &removed {
        println!("removed pod {id}");
    }
    for id in &report.images {
        println!("removed image {id}");
    }
    println!(
        "gc: {} pods, {} images, {} blobs ({}), {} unpacked layers removed",
        removed.len(),
        report.images.len(),
        report.blobs,
        human(report.bytes),
        report.layers
    );
    Ok(())
}
