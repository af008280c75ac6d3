//! fleetctl: fleet's command line, over fleet's HTTP API v1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use fleet_agent::client::Endpoint;
use fleet_agent::model::{
    ErrorBody, Machine, MachinePage, Unit, UnitPage, UnitState, UnitStatePage,
};
use fleet_agent::unit::{self, UnitOption};

/// fleetctl: run and inspect systemd units across a fleet cluster.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Examples:\n  \
    fleetctl list-machines\n  \
    fleetctl start hello.service               # submit ./hello.service (if present) and start it\n  \
    fleetctl start web@1 web@2                 # instances of a submitted web@.service template\n  \
    fleetctl list-unit-files\n  \
    fleetctl list-units\n  \
    fleetctl status hello.service\n  \
    fleetctl journal -n 20 hello.service\n  \
    fleetctl --endpoint http://10.0.0.1:49153 destroy hello.service\n  \
    fleetctl --endpoint https://10.0.0.1:49153 --ca-file ca.pem --cert-file admin.pem --key-file admin-key.pem list-units\n  \
    . mycluster/env && fleetctl list-machines   # the env file corelite-config writes\n  \
    fleetctl --tunnel 10.0.0.11 list-units      # through SSH (as core, your ssh agent's keys)\n  \
    fleetctl ssh hello.service                  # a shell on the unit's machine\n\n\
Flags can also be given as FLEETCTL_<FLAG> environment variables (FLEETCTL_ENDPOINT=...)."
)]
struct Cli {
    /// fleet API endpoint: unix:///path/to/fleet.sock, https://host:port or http://host:port.
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_ENDPOINT",
        default_value = "unix:///var/run/fleet.sock"
    )]
    endpoint: String,
    /// CA certificate (PEM) an https:// endpoint's certificate must chain to.
    #[arg(long, global = true, env = "FLEETCTL_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM) to present to an https:// endpoint.
    #[arg(long, global = true, env = "FLEETCTL_CERT_FILE")]
    cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file.
    #[arg(long, global = true, env = "FLEETCTL_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Reach the API through SSH to HOST[:PORT] (any node): the node's own fleet socket, as
    /// --ssh-username with sudo. Uses your ssh (its agent, keys and config).
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_TUNNEL",
        value_name = "HOST[:PORT]"
    )]
    tunnel: Option<String>,
    /// The user SSH logs in as (tunnel and `fleetctl ssh`).
    #[arg(
        long,
        global = true,
        env = "FLEETCTL_SSH_USERNAME",
        default_value = "core"
    )]
    ssh_username: String,
    /// Refuse hosts whose key is unknown or changed (false: accept any host key).
    #[arg(long, global = true, env = "FLEETCTL_STRICT_HOST_KEY_CHECKING", default_value_t = true, action = clap::ArgAction::Set)]
    strict_host_key_checking: bool,
    /// Known hosts file for SSH (default: ssh's own).
    #[arg(long, global = true, env = "FLEETCTL_KNOWN_HOSTS_FILE")]
    known_hosts_file: Option<PathBuf>,
    /// The TCP port SSH connects to on the machines (`fleetctl ssh`, and status and journal
    /// when the API cannot give them).
    #[arg(long, global = true, env = "FLEETCTL_SSH_PORT", default_value_t = 22)]
    ssh_port: u16,
    /// Seconds to wait for each API request.
    #[arg(long, global = true, default_value_t = 10.0)]
    request_timeout: f64,
    /// How many times (half a second apart) to check that a unit reached its state; 0 waits
    /// as long as it takes.
    #[arg(long, global = true, default_value_t = 0)]
    block_attempts: u32,
    /// Do not wait for units to reach their state.
    #[arg(long, global = true)]
    no_block: bool,
    /// Output format for list commands: table or json.
    #[arg(long, global = true, default_value = "table", value_parser = ["table", "json"])]
    output: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List the machines in the cluster.
    ListMachines(ListArgs),
    /// List the units in the cluster with their desired and current states.
    ListUnitFiles(ListArgs),
    /// List the units' systemd states on their machines.
    ListUnits(ListArgs),
    /// Upload unit files into the cluster (without scheduling them).
    Submit(CreateArgs),
    /// Schedule units to machines and load them into systemd.
    Load(CreateArgs),
    /// Schedule, load and start units.
    Start(CreateArgs),
    /// Stop units (they stay loaded).
    Stop { units: Vec<String> },
    /// Unload units from their machines (they stay in the cluster).
    Unload { units: Vec<String> },
    /// Remove units from the cluster.
    Destroy { units: Vec<String> },
    /// Print a unit's file as the cluster has it.
    Cat { unit: String },
    /// Show systemd's status of units, from their machines.
    Status { units: Vec<String> },
    /// Print a unit's journal, from its machine.
    Journal {
        /// Number of lines.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u32,
        /// Keep printing new entries (through SSH to the unit's machine, as the original).
        #[arg(short = 'f', long)]
        follow: bool,
        /// Machine to read from (for global units).
        #[arg(long)]
        machine: Option<String>,
        unit: String,
    },
    /// Check unit files without submitting them.
    Verify { files: Vec<String> },
    /// Replace a template's running instances with a new version of it, a few at a time:
    /// each batch is replaced and must become active (systemd's active: after READY=1 for
    /// Type=notify, after ExecStartPost) before the next; a batch that fails is put back to
    /// the old version and the rest are left running it.
    RollingReplace(RollingArgs),
    /// Open a shell (or run COMMAND) over SSH on a machine, or on the machine a unit is on;
    /// through the --tunnel host when one is given.
    Ssh {
        /// Forward the SSH agent.
        #[arg(short = 'A', long)]
        forward_agent: bool,
        /// A machine id (or its prefix) or a unit name.
        target: String,
        /// The command to run instead of a shell.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Connect stdin and stdout to the local fleet socket (what --tunnel runs on the node).
    #[command(hide = true)]
    TunnelStdio,
    /// Connect stdin and stdout to SOCKET: what the original fleetctl's --tunnel runs on the
    /// node (`fleetctl fd-forward /var/run/fleet.sock`).
    #[command(hide = true)]
    FdForward { socket: PathBuf },
}

#[derive(clap::Args, Debug)]
struct CreateArgs {
    /// Replace units in the cluster whose local unit file differs (the unit goes back to
    /// inactive first, as in fleet; submit replaces only inactive units, load inactive or
    /// loaded ones, start any).
    #[arg(long)]
    replace: bool,
    units: Vec<String>,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    fleetctl rolling-replace ./web@.service                      # every instance, one at a time\n  \
    fleetctl rolling-replace ./web@.service --instances 'web@{1..5}' --max-unavailable 2 --health-timeout 90s")]
struct RollingArgs {
    /// The new version of the template: a local unit file such as ./web@.service.
    template: String,
    /// The instances to replace, comma-separated, with numeric ranges in braces
    /// (web@{1..5},web@blue); default: every instance of the template in the cluster.
    #[arg(long)]
    instances: Option<String>,
    /// How many instances may be out of service at once.
    #[arg(long, default_value_t = 1)]
    max_unavailable: usize,
    /// How long each replaced instance has to become active: 90s, 2m, 500ms (or seconds).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    health_timeout: Duration,
}

/// `90s`, `2m`, `500ms`, `1h` or a number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 60s, 2m, 500ms"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unit must be ms, s, m or h"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// The instance names of `spec` (`web@{1..3},web@blue`) for `template` (`web@.service`).
fn expand_instances(spec: &str, template: &str) -> anyhow::Result<Vec<String>> {
    let suffix = template.rsplit_once('.').map_or("service", |(_, s)| s);
    let mut out = Vec::new();
    // Commas inside braces belong to the brace.
    let mut parts = Vec::new();
    let (mut depth, mut cur) = (0, String::new());
    for c in spec.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let names: Vec<String> = match (part.find('{'), part.find('}')) {
            (Some(open), Some(close)) if open < close => {
                let (head, tail) = (&part[..open], &part[close + 1..]);
                let inner = &part[open + 1..close];
                let range = inner.split_once("..").and_then(|(a, b)| {
                    Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?))
                });
                match range {
                    Some((a, b)) if a <= b && b - a < 10_000 => {
                        (a..=b).map(|i| format!("{head}{i}{tail}")).collect()
                    }
                    _ => inner
                        .split(',')
                        .map(|x| format!("{head}{}{tail}", x.trim()))
                        .collect(),
                }
            }
            (None, None) => vec![part.to_string()],
            _ => bail!("invalid instance list {spec:?}: unbalanced braces in {part:?}"),
        };
        for n in names {
            let n = if n.contains('.') {
                n
            } else {
                format!("{n}.{suffix}")
            };
            unit::validate_name(&n)?;
            if unit::template_of(&n).map(|(t, _)| t).as_deref() != Some(template) {
                bail!("{n} is not an instance of {template}");
            }
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    if out.is_empty() {
        bail!("--instances {spec:?} names no instances");
    }
    Ok(out)
}

/// Waits until every unit of `names` runs `hash` and systemd calls it active; fails at once
/// when one of them failed with the new version, or when `timeout` passes.
async fn wait_healthy(
    api: &Api,
    names: &[String],
    hash: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let states = api.states().await?;
        let mut waiting = Vec::new();
        for name in names {
            let st = states.iter().find(|s| &s.name == name && s.hash == hash);
            match st {
                Some(s) if s.active_state == "active" => {}
                Some(s) if s.active_state == "failed" => bail!(
                    "{name} failed with the new version on {} ({}/{})",
                    short(&s.machine_id, false),
                    s.active_state,
                    s.sub_state
                ),
                Some(s) => waiting.push(format!("{name} ({})", s.active_state)),
                None => waiting.push(format!("{name} (not yet loaded with the new version)")),
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("not active within {:?}: {}", timeout, waiting.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `fleetctl rolling-replace`: see [`Cmd::RollingReplace`].
async fn rolling_replace(api: &Api, a: &RollingArgs) -> anyhow::Result<()> {
    let (template, options) = read_unit_file(&a.template)?;
    if !unit::is_template(&template) {
        bail!("{template} is not a template (name@.service): rolling-replace replaces the instances of a template");
    }
    if a.max_unavailable == 0 {
        bail!("--max-unavailable must be at least 1");
    }
    let hash = unit::hash(&options);
    let before: BTreeMap<String, Unit> = api
        .units()
        .await?
        .into_iter()
        .map(|u| (u.name.clone(), u))
        .collect();
    let instances = match &a.instances {
        Some(spec) => expand_instances(spec, &template)?,
        None => before
            .keys()
            .filter(|n| unit::template_of(n).map(|(t, _)| t).as_deref() == Some(&template))
            .cloned()
            .collect(),
    };
    if instances.is_empty() {
        bail!("no instances of {template} in the cluster (name them with --instances)");
    }
    let old_template = before.get(&template);
    if old_template.is_none_or(|t| unit::hash(&t.options) != hash) {
        api.put(&template, options.clone(), None).await?;
    }
    let total = instances.len();
    let mut done = 0;
    for batch in instances.chunks(a.max_unavailable) {
        for name in batch {
            api.put(name, options.clone(), Some("launched")).await?;
        }
        if let Err(e) = wait_healthy(api, batch, &hash, a.health_timeout).await {
            for name in batch {
                match before.get(name) {
                    Some(old) => {
                        let state = old.desired_state.as_deref().unwrap_or("launched");
                        api.put(name, old.options.clone(), Some(state)).await?;
                    }
                    None => {
                        // It did not exist before: take it away again.
                        api.call("DELETE", &format!("/fleet/v1/units/{name}"), None)
                            .await?;
                    }
                }
            }
            if done == 0 {
                match old_template {
                    Some(t) => api.put(&template, t.options.clone(), None).await?,
                    None => {
                        api.call("DELETE", &format!("/fleet/v1/units/{template}"), None)
                            .await?;
                    }
                }
            }
            bail!(
                "rolling replace of {template} stopped: {e}. {done} of {total} instances run the new version; [{}] went back to the version they ran before; the others were not touched{}",
                batch.join(" "),
                if done == 0 { " (the template too)" } else { "" }
            );
        }
        done += batch.len();
        for name in batch {
            println!("Unit {name} replaced and active ({done}/{total})");
        }
    }
    println!(
        "Rolling replace of {template} done: {total} instances run {}",
        &hash[..7]
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
struct ListArgs {
    /// Show full machine ids and hashes.
    #[arg(short = 'l', long)]
    full: bool,
    /// Omit the header line.
    #[arg(long)]
    no_legend: bool,
    /// Columns to show, comma-separated.
    #[arg(long)]
    fields: Option<String>,
}

struct Api {
    ep: Endpoint,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// `--tunnel`: the ssh command line that connects to the node's fleet socket.
    tunnel: Option<Vec<String>>,
    timeout: Duration,
}

/// HOST[:PORT] (a bracketed IPv6 address keeps its colons).
fn split_host(h: &str) -> (String, Option<String>) {
    if let Some(rest) = h.strip_prefix('[') {
        if let Some((host, port)) = rest.split_once("]:") {
            return (host.to_string(), Some(port.to_string()));
        }
        return (rest.trim_end_matches(']').to_string(), None);
    }
    match h.split_once(':') {
        Some((host, port)) if !port.contains(':') => (host.to_string(), Some(port.to_string())),
        _ => (h.to_string(), None),
    }
}

/// `ssh` with the options every use shares: the user, host key checking, known hosts.
fn ssh_command(cli: &Cli) -> Vec<String> {
    let mut a: Vec<String> = vec!["ssh".into(), "-o".into(), "ConnectTimeout=10".into()];
    if !cli.strict_host_key_checking {
        a.extend(["-o".into(), "StrictHostKeyChecking=no".into()]);
    }
    if let Some(f) = &cli.known_hosts_file {
        a.extend(["-o".into(), format!("UserKnownHostsFile={}", f.display())]);
    }
    a.extend(["-l".into(), cli.ssh_username.clone()]);
    a
}

/// The tunnel's command line: ssh to HOST, then sudo fleetctl bridging to the node's socket.
fn tunnel_command(cli: &Cli, host: &str, socket: &Path) -> Vec<String> {
    let (host, port) = split_host(host);
    let mut a = ssh_command(cli);
    a.extend(["-T".into(), "-o".into(), "BatchMode=yes".into()]);
    if let Some(p) = port {
        a.extend(["-p".into(), p]);
    }
    a.extend([
        host,
        "--".into(),
        "sudo".into(),
        "-n".into(),
        "fleetctl".into(),
        "--endpoint".into(),
        format!("unix://{}", socket.display()),
        "tunnel-stdio".into(),
    ]);
    a
}

/// `fleetctl tunnel-stdio`: stdin to the socket, the socket to stdout, until both ends close.
/// `fleetctl fd-forward SOCKET`, as the original fleetctl's `--tunnel` runs it on the node as
/// the SSH user. The fleet socket is root's: a user who may not open it goes through
/// `sudo -n` (as this fleetctl's own `--tunnel` does), so the original client works as `core`.
async fn fd_forward(socket: &Path) -> anyhow::Result<()> {
    let denied = matches!(
        tokio::net::UnixStream::connect(socket).await,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied
    );
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self")?) == 0;
    if denied && !root {
        let me = std::env::current_exe().context("finding this fleetctl")?;
        let err = std::os::unix::process::CommandExt::exec(
            std::process::Command::new("sudo")
                .arg("-n")
                .arg(me)
                .arg("fd-forward")
                .arg(socket),
        );
        bail!("running sudo for {}: {err}", socket.display());
    }
    tunnel_stdio(socket).await
}

async fn tunnel_stdio(socket: &Path) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let s = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let (mut from_api, mut to_api) = s.into_split();
    let up = async {
        let mut stdin = tokio::io::stdin();
        let _ = tokio::io::copy(&mut stdin, &mut to_api).await;
        let _ = to_api.shutdown().await;
    };
    let down = async {
        let mut stdout = tokio::io::stdout();
        let _ = tokio::io::copy(&mut from_api, &mut stdout).await;
        let _ = stdout.flush().await;
    };
    tokio::join!(up, down);
    Ok(())
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let r = match &self.tunnel {
            Some(argv) => fleet_agent::client::request_via(argv, method, path, body, self.timeout)
                .await
                .with_context(|| "error reaching the fleet API through the SSH tunnel")?,
            None => self
                .ep
                .request_with(self.tls.as_ref(), method, path, body, self.timeout)
                .await
                .with_context(|| {
                    "error contacting the fleet API (is fleetd running? see --endpoint)"
                })?,
        };
        Ok((r.status, r.body))
    }

    fn fail(status: u16, body: &[u8]) -> anyhow::Error {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(e) => anyhow::anyhow!("{} ({})", e.error.message, e.error.code),
            Err(_) => anyhow::anyhow!("HTTP {status}: {}", String::from_utf8_lossy(body).trim()),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let (status, body) = self.call("GET", path, None).await?;
        if status != 200 {
            return Err(Self::fail(status, &body));
        }
        serde_json::from_slice(&body).context("undecodable answer from the fleet API")
    }

    async fn unit(&self, name: &str) -> anyhow::Result<Option<Unit>> {
        let (status, body) = self
            .call("GET", &format!("/fleet/v1/units/{name}"), None)
            .await?;
        match status {
            200 => Ok(Some(serde_json::from_slice(&body)?)),
            404 => Ok(None),
            _ => Err(Self::fail(status, &body)),
        }
    }

    /// Every item of a paged list: follows nextPageToken to the last page.
    async fn all_pages<P, T>(
        &self,
        path: &str,
        split: fn(P) -> (Vec<T>, Option<String>),
    ) -> anyhow::Result<Vec<T>>
    where
        P: serde::de::DeserializeOwned,
    {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let url = match &token {
                Some(t) => format!("{path}?nextPageToken={t}"),
                None => path.to_string(),
            };
            let (items, next) = split(self.get_json::<P>(&url).await?);
            out.extend(items);
            match next {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    async fn units(&self) -> anyhow::Result<Vec<Unit>> {
        self.all_pages("/fleet/v1/units", |p: UnitPage| {
            (p.units, p.next_page_token)
        })
        .await
    }

    async fn machines(&self) -> anyhow::Result<Vec<Machine>> {
        self.all_pages("/fleet/v1/machines", |p: MachinePage| {
            (p.machines, p.next_page_token)
        })
        .await
    }

    async fn states(&self) -> anyhow::Result<Vec<UnitState>> {
        self.all_pages("/fleet/v1/state", |p: UnitStatePage| {
            (p.states, p.next_page_token)
        })
        .await
    }

    /// PUT a unit: its options (a new or replaced unit; empty to keep them) and its desired
    /// state (none: inactive for a new unit, as fleet).
    async fn put(
        &self,
        name: &str,
        options: Vec<UnitOption>,
        desired: Option<&str>,
    ) -> anyhow::Result<()> {
        let body = serde_json::to_vec(&Unit {
            name: name.to_string(),
            options,
            desired_state: desired.map(str::to_string),
            current_state: None,
            machine_id: None,
            unschedulable_reason: None,
        })?;
        let (status, resp) = self
            .call("PUT", &format!("/fleet/v1/units/{name}"), Some(body))
            .await?;
        match status {
            200 | 201 | 204 => Ok(()),
            _ => Err(Self::fail(status, &resp)),
        }
    }
}

/// A unit argument: a file path or a unit name (".service" is added when there is no suffix).
fn unit_name(arg: &str) -> String {
    let base = Path::new(arg)
        .file_name()
        .map_or(arg.to_string(), |b| b.to_string_lossy().into_owned());
    if base.contains('.') {
        base
    } else {
        format!("{base}.service")
    }
}

fn read_unit_file(path: &str) -> anyhow::Result<(String, Vec<UnitOption>)> {
    let name = unit_name(path);
    unit::validate_name(&name)?;
    let text = std::fs::read_to_string(path).with_context(|| format!("unable to read {path}"))?;
    let options =
        unit::parse(&text).with_context(|| format!("unable to parse unit file {path}"))?;
    unit::requirements(&options, &name).with_context(|| format!("unit file {path}"))?;
    Ok((name, options))
}

/// Whether `command` may replace a unit whose desired state is `state` (fleet's rule: submit
/// only inactive units, load inactive or loaded ones, start any).
fn may_replace(command: &str, state: &str) -> bool {
    match command {
        "submit" => state == "inactive",
        "load" => matches!(state, "inactive" | "loaded"),
        _ => true,
    }
}

/// Makes sure each argument's unit is in the cluster (from a local file, the registry, or its
/// template); with `replace`, a unit whose local file differs is replaced. `command` is the
/// subcommand (what may be replaced depends on it). Returns the unit names.
async fn ensure_submitted(
    api: &Api,
    args: &[String],
    replace: bool,
    command: &str,
) -> anyhow::Result<Vec<String>> {
    if args.is_empty() {
        bail!("No units given");
    }
    let mut names = Vec::new();
    for arg in args {
        let name = unit_name(arg);
        unit::validate_name(&name)?;
        let local = Path::new(arg)
            .is_file()
            .then(|| read_unit_file(arg))
            .transpose()?;
        match (api.unit(&name).await?, local) {
            (Some(existing), Some((_, opts))) => {
                let state = existing.desired_state.as_deref().unwrap_or("inactive");
                if unit::hash(&existing.options) == unit::hash(&opts) {
                    if replace {
                        println!("Found same Unit({name}) in Registry, nothing to do");
                    }
                } else if !replace {
                    eprintln!(
                        "WARNING: Unit {name} in registry differs from local unit file {arg}. Add --replace to override."
                    );
                } else if may_replace(command, state) {
                    api.put(&name, opts, None).await?;
                    println!("Unit {name} inactive");
                } else {
                    eprintln!(
                        "Warning: can not replace Unit({name}) in state '{state}', use the appropriate command"
                    );
                }
            }
            (Some(_), None) => {}
            (None, Some((_, opts))) => {
                api.put(&name, opts, None).await?;
                println!("Unit {name} inactive");
            }
            (None, None) => {
                let Some((template, _)) = unit::template_of(&name) else {
                    bail!("unable to find unit {name}: no such file and not in the cluster");
                };
                let tpl_path = Path::new(arg).with_file_name(&template);
                let opts = if tpl_path.is_file() {
                    read_unit_file(&tpl_path.to_string_lossy())?.1
                } else {
                    match api.unit(&template).await? {
                        Some(t) => t.options,
                        None => bail!("unable to find unit {name} or its template {template}"),
                    }
                };
                api.put(&name, opts, None).await?;
                println!("Unit {name} inactive");
            }
        }
        names.push(name);
    }
    Ok(names)
}

fn short(id: &str, full: bool) -> String {
    if full || id.len() <= 8 {
        id.to_string()
    } else {
        format!("{}...", &id[..8])
    }
}

fn print_table(
    headers: &[&str],
    rows: Vec<Vec<String>>,
    fields: &Option<String>,
    no_legend: bool,
) -> anyhow::Result<()> {
    let cols: Vec<usize> = match fields {
        None => (0..headers.len()).collect(),
        Some(f) => f
            .split(',')
            .map(|name| {
                headers
                    .iter()
                    .position(|h| h.eq_ignore_ascii_case(name.trim()))
                    .with_context(|| {
                        format!(
                            "invalid field {name:?}; choose from {}",
                            headers.join(",").to_lowercase()
                        )
                    })
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let mut all: Vec<Vec<String>> = Vec::new();
    if !no_legend {
        all.push(cols.iter().map(|c| headers[*c].to_string()).collect());
    }
    for r in rows {
        all.push(cols.iter().map(|c| r[*c].clone()).collect());
    }
    let widths: Vec<usize> = (0..cols.len())
        .map(|i| all.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in all {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == r.len() {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        println!("{}", line.join("\t"));
    }
    Ok(())
}

fn machine_label(id: &str, machines: &BTreeMap<String, Machine>, full: bool) -> String {
    match machines.get(id) {
        Some(m) => format!("{}/{}", short(id, full), m.primary_ip),
        None => short(id, full),
    }
}

/// Waits until every unit's current state is `want`; prints fleetctl's lines.
async fn wait_for(api: &Api, cli: &Cli, names: &[String], want: &str) -> anyhow::Result<()> {
    if cli.no_block {
        return Ok(());
    }
    let machines: BTreeMap<String, Machine> = api
        .machines()
        .await?
        .into_iter()
        .map(|m| (m.id.clone(), m))
        .collect();
    let mut attempts = 0;
    let mut pending: Vec<String> = names.to_vec();
    // The engine's reason for units it cannot place, as last seen.
    let mut why: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let mut still = Vec::new();
        for name in &pending {
            let Some(u) = api.unit(name).await? else {
                bail!("unit {name} disappeared from the cluster");
            };
            if u.current_state.as_deref() == Some(want) {
                let global = unit::requirements(&u.options, name).is_ok_and(|r| r.global);
                match (&u.machine_id, want) {
                    (_, "inactive") => println!("Unit {name} inactive"),
                    (Some(m), _) => {
                        let machines = if machines.contains_key(m) {
                            machines.clone()
                        } else {
                            api.machines()
                                .await?
                                .into_iter()
                                .map(|m| (m.id.clone(), m))
                                .collect()
                        };
                        println!(
                            "Unit {name} {want} on {}",
                            machine_label(m, &machines, false)
                        );
                    }
                    (None, _) if global => println!("Triggered global unit {name} {want}"),
                    (None, _) => println!("Unit {name} {want}"),
                }
            } else {
                still.push(name.clone());
                match u.unschedulable_reason {
                    Some(r) => why.insert(name.clone(), r),
                    None => why.remove(name),
                };
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        attempts += 1;
        if cli.block_attempts > 0 && attempts >= cli.block_attempts {
            let listed: Vec<String> = still
                .iter()
                .map(|n| match why.get(n) {
                    Some(r) => format!("{n} (cannot be scheduled: {r})"),
                    None => n.clone(),
                })
                .collect();
            bail!("units did not reach state {want}: {}", listed.join(", "));
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn set_state(
    api: &Api,
    cli: &Cli,
    names: &[String],
    desired: &str,
    want: &str,
) -> anyhow::Result<()> {
    for name in names {
        let Some(u) = api.unit(name).await? else {
            bail!("unit {name} does not exist")
        };
        if unit::is_template(name) && desired != "inactive" {
            bail!(
                "{name} is a template; {} instances of it, e.g. {}",
                desired,
                name.replace("@.", "@1.")
            );
        }
        let global = unit::requirements(&u.options, name).is_ok_and(|r| r.global);
        api.put(name, vec![], Some(desired)).await?;
        if global && want != "inactive" {
            println!("Triggered global unit {name} {want}");
        }
    }
    let waiting: Vec<String> = {
        let mut v = Vec::new();
        for n in names {
            let global = match api.unit(n).await? {
                Some(u) => unit::requirements(&u.options, n).is_ok_and(|r| r.global),
                None => false,
            };
            if !global || want == "inactive" {
                v.push(n.clone());
            }
        }
        v
    };
    wait_for(api, cli, &waiting, want).await
}

/// The units of `args` that are in the cluster (fleet's `findUnits`: the others are skipped).
async fn find_units(api: &Api, args: &[String]) -> anyhow::Result<Vec<Unit>> {
    let all: BTreeMap<String, Unit> = api
        .units()
        .await?
        .into_iter()
        .map(|u| (u.name.clone(), u))
        .collect();
    Ok(args
        .iter()
        .filter_map(|a| all.get(&unit_name(a)).cloned())
        .collect())
}

/// `stop` (`desired` loaded) and `unload` (inactive), with the original's messages.
async fn stop_or_unload(
    api: &Api,
    cli: &Cli,
    units: &[String],
    desired: &str,
) -> anyhow::Result<()> {
    let (verb, done) = if desired == "loaded" {
        ("stop", "stopped")
    } else {
        ("unload", "unloaded")
    };
    if units.is_empty() {
        eprintln!("No units given");
        return Ok(());
    }
    let found = find_units(api, units).await?;
    if found.is_empty() {
        eprintln!("Units not found in registry");
        return Ok(());
    }
    let mut waiting = Vec::new();
    for u in &found {
        let global = unit::requirements(&u.options, &u.name).is_ok_and(|r| r.global);
        let current = u.current_state.as_deref().unwrap_or("inactive");
        if !global && verb == "stop" {
            match current {
                "inactive" => bail!("Unable to stop unit {} in state inactive", u.name),
                "loaded" => continue,
                _ => {}
            }
        }
        api.put(&u.name, vec![], Some(desired)).await?;
        if global {
            println!("Triggered global unit {} {verb}", u.name);
        } else {
            waiting.push(u.name.clone());
        }
    }
    wait_for(api, cli, &waiting, desired)
        .await
        .with_context(|| format!("Failed to {verb} units [{}]", waiting.join(" ")))?;
    eprintln!("Successfully {done} units [{}].", waiting.join(" "));
    Ok(())
}

/// Whether an error answer means the API has no such route: the original fleetd answers
/// corelite's `/units/{name}/status` and `/journal` with a 404 without a message.
fn lacks_extension(status: u16, body: &[u8]) -> bool {
    status == 404
        && serde_json::from_slice::<ErrorBody>(body).is_ok_and(|e| e.error.message.is_empty())
}

/// The machine whose id is, or starts with, `id`.
async fn machine_by_prefix(api: &Api, id: &str) -> anyhow::Result<Machine> {
    let machines = api.machines().await?;
    let found: Vec<&Machine> = machines.iter().filter(|m| m.id.starts_with(id)).collect();
    match found.as_slice() {
        [m] => Ok((*m).clone()),
        [_, _, ..] => bail!("machine id prefix {id} is ambiguous"),
        [] => bail!("machine {id} is not in the cluster"),
    }
}

/// The address of the machine a (non-global) unit is scheduled to.
async fn unit_machine_ip(api: &Api, u: &Unit) -> anyhow::Result<String> {
    let m = u
        .machine_id
        .as_deref()
        .filter(|m| !m.is_empty())
        .with_context(|| format!("Unit {} is not scheduled to a machine", u.name))?;
    let ip = machine_by_prefix(api, m).await?.primary_ip;
    if ip.is_empty() {
        bail!("machine {m} has no address (primaryIP) to reach it by SSH");
    }
    Ok(ip)
}

/// Runs `command` (a shell when empty) on `ip` over SSH as the original fleetctl does:
/// --ssh-username, --ssh-port, host key checking, through the --tunnel host when one is
/// given. Returns ssh's exit status.
fn run_ssh(cli: &Cli, ip: &str, forward_agent: bool, command: &[&str]) -> anyhow::Result<i32> {
    let mut argv = ssh_command(cli);
    argv.extend(["-p".into(), cli.ssh_port.to_string()]);
    if forward_agent {
        argv.push("-A".into());
    }
    if let Some(t) = cli.tunnel.as_deref().filter(|t| !t.is_empty()) {
        // Through the tunnel host, with the same options for both hops (ssh's -J would not
        // pass them on).
        let (host, port) = split_host(t);
        let mut hop = ssh_command(cli);
        if let Some(p) = port {
            hop.extend(["-p".into(), p]);
        }
        hop.extend(["-W".into(), "%h:%p".into(), host]);
        argv.extend(["-o".into(), format!("ProxyCommand={}", hop.join(" "))]);
    }
    argv.push(ip.to_string());
    argv.extend(command.iter().map(|c| c.to_string()));
    let status = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .status()
        .context("running ssh")?;
    Ok(status.code().unwrap_or(255))
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    let ep: Endpoint = cli
        .endpoint
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let tunneled = cli.tunnel.as_deref().is_some_and(|t| !t.is_empty());
    let tls = match &ep {
        Endpoint::Https(_) if !tunneled => Some(Arc::new(
            fleet_agent::tls::client_config(
                cli.ca_file.as_deref(),
                cli.cert_file.as_deref(),
                cli.key_file.as_deref(),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        )),
        // Like the original fleetctl: the certificate flags only matter for https://.
        _ => None,
    };
    // Through a tunnel, the node's own socket (an https:// endpoint from the environment is
    // for direct use).
    let socket = match &ep {
        Endpoint::Unix(p) => p.clone(),
        _ => PathBuf::from("/var/run/fleet.sock"),
    };
    match &cli.cmd {
        Cmd::TunnelStdio => return tunnel_stdio(&socket).await,
        Cmd::FdForward { socket } => return fd_forward(socket).await,
        _ => {}
    }
    let tunnel = cli
        .tunnel
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(|t| tunnel_command(cli, t, &socket));
    let api = Api {
        ep,
        tls,
        tunnel,
        timeout: Duration::from_secs_f64(cli.request_timeout.max(0.1)),
    };
    let json = cli.output == "json";
    match &cli.cmd {
        Cmd::ListMachines(a) => {
            let ms = api.machines().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ms)?);
                return Ok(());
            }
            let rows = ms
                .iter()
                .map(|m| {
                    let md = if m.metadata.is_empty() {
                        "-".to_string()
                    } else {
                        m.metadata
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    vec![short(&m.id, a.full), m.primary_ip.clone(), md]
                })
                .collect();
            print_table(&["MACHINE", "IP", "METADATA"], rows, &a.fields, a.no_legend)
        }
        Cmd::ListUnitFiles(a) => {
            let units = api.units().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&units)?);
                return Ok(());
            }
            let machines: BTreeMap<String, Machine> = api
                .machines()
                .await?
                .into_iter()
                .map(|m| (m.id.clone(), m))
                .collect();
            let rows = units
                .iter()
                .map(|u| {
                    let h = unit::hash(&u.options);
                    let global = unit::requirements(&u.options, &u.name).is_ok_and(|r| r.global);
                    let target = match &u.machine_id {
                        Some(m) => machine_label(m, &machines, a.full),
                        None if global => "global".to_string(),
                        None => "-".to_string(),
                    };
                    vec![
                        u.name.clone(),
                        if a.full { h } else { h[..7].to_string() },
                        u.desired_state.clone().unwrap_or_default(),
                        u.current_state.clone().unwrap_or_default(),
                        target,
                    ]
                })
                .collect();
            print_table(
                &["UNIT", "HASH", "DSTATE", "STATE", "TARGET"],
                rows,
                &a.fields,
                a.no_legend,
            )
        }
        Cmd::ListUnits(a) => {
            let states = api.states().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&states)?);
                return Ok(());
            }
            let machines: BTreeMap<String, Machine> = api
                .machines()
                .await?
                .into_iter()
                .map(|m| (m.id.clone(), m))
                .collect();
            let rows = states
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        machine_label(&s.machine_id, &machines, a.full),
                        s.active_state.clone(),
                        s.sub_state.clone(),
                    ]
                })
                .collect();
            print_table(
                &["UNIT", "MACHINE", "ACTIVE", "SUB"],
                rows,
                &a.fields,
                a.no_legend,
            )
        }
        Cmd::Submit(a) => {
            ensure_submitted(&api, &a.units, a.replace, "submit").await?;
            Ok(())
        }
        Cmd::Load(a) => {
            let names = ensure_submitted(&api, &a.units, a.replace, "load").await?;
            set_state(&api, cli, &names, "loaded", "loaded").await
        }
        Cmd::Start(a) => {
            let names = ensure_submitted(&api, &a.units, a.replace, "start").await?;
            set_state(&api, cli, &names, "launched", "launched").await
        }
        Cmd::Stop { units } => stop_or_unload(&api, cli, units, "loaded").await,
        Cmd::Unload { units } => stop_or_unload(&api, cli, units, "inactive").await,
        Cmd::Destroy { units } => {
            if units.is_empty() {
                eprintln!("No units given");
                return Ok(());
            }
            let found = find_units(&api, units).await?;
            if found.is_empty() {
                eprintln!("Units not found in registry");
                return Ok(());
            }
            for u in found {
                let (status, body) = api
                    .call("DELETE", &format!("/fleet/v1/units/{}", u.name), None)
                    .await?;
                match status {
                    204 | 200 => println!("Destroyed {}", u.name),
                    404 => {} // destroyed meanwhile
                    _ => return Err(Api::fail(status, &body)),
                }
            }
            Ok(())
        }
        Cmd::Cat { unit: u } => {
            let name = unit_name(u);
            match api.unit(&name).await? {
                Some(u) => {
                    print!("{}", unit::render(&u.options));
                    Ok(())
                }
                None => bail!("unit {name} not found"),
            }
        }
        Cmd::Status { units } => {
            for (i, u) in units.iter().enumerate() {
                let name = unit_name(u);
                let Some(unit) = api.unit(&name).await? else {
                    bail!("Unit {name} does not exist.");
                };
                let global = unit::requirements(&unit.options, &name).is_ok_and(|r| r.global);
                if !global && unit.current_state.as_deref().unwrap_or("inactive") == "inactive" {
                    bail!("Unit {name} does not appear to be loaded.");
                }
                let (status, body) = api
                    .call("GET", &format!("/fleet/v1/units/{name}/status"), None)
                    .await?;
                if i > 0 {
                    println!();
                }
                if status == 200 {
                    print!("{}", String::from_utf8_lossy(&body));
                    continue;
                }
                if !lacks_extension(status, &body) {
                    return Err(Api::fail(status, &body).context(format!("status of {name}")));
                }
                // The original fleetd: systemctl on the unit's machine, through SSH.
                let ip = unit_machine_ip(&api, &unit).await?;
                let code = run_ssh(cli, &ip, false, &["systemctl", "status", "-l", &name])?;
                if code != 0 {
                    std::process::exit(code);
                }
            }
            Ok(())
        }
        Cmd::Journal {
            lines,
            follow,
            machine,
            unit: u,
        } => {
            let name = unit_name(u);
            let Some(unit) = api.unit(&name).await? else {
                bail!("Unit {name} does not exist.");
            };
            if unit.current_state.as_deref().unwrap_or("inactive") == "inactive"
                && machine.is_none()
            {
                bail!("Unit {name} does not appear to be running.");
            }
            if !follow {
                let mut path = format!("/fleet/v1/units/{name}/journal?lines={lines}");
                if let Some(m) = machine {
                    path += &format!("&machineID={m}");
                }
                let (status, body) = api.call("GET", &path, None).await?;
                if status == 200 {
                    print!("{}", String::from_utf8_lossy(&body));
                    return Ok(());
                }
                if !lacks_extension(status, &body) {
                    return Err(Api::fail(status, &body).context(format!("journal of {name}")));
                }
            }
            let ip = match machine {
                Some(m) => machine_by_prefix(&api, m).await?.primary_ip,
                None => unit_machine_ip(&api, &unit).await?,
            };
            let n = lines.to_string();
            let mut cmd = vec!["journalctl", "--unit", &name, "--no-pager", "-n", &n];
            if *follow {
                cmd.push("-f");
            }
            std::process::exit(run_ssh(cli, &ip, false, &cmd)?);
        }
        Cmd::TunnelStdio | Cmd::FdForward { .. } => {
            unreachable!("handled before the API is reached")
        }
        Cmd::Ssh {
            forward_agent,
            target,
            command,
        } => {
            let machine = match machine_by_prefix(&api, target).await {
                Ok(m) => m,
                Err(_) => {
                    let name = unit_name(target);
                    let on = api
                        .states()
                        .await?
                        .into_iter()
                        .find(|s| s.name == name)
                        .map(|s| s.machine_id)
                        .with_context(|| {
                            format!("{target} is neither a machine nor a unit on a machine")
                        })?;
                    machine_by_prefix(&api, &on)
                        .await
                        .with_context(|| format!("{name}'s machine {on} is not in the cluster"))?
                }
            };
            let command: Vec<&str> = command.iter().map(String::as_str).collect();
            std::process::exit(run_ssh(cli, &machine.primary_ip, *forward_agent, &command)?);
        }
        Cmd::RollingReplace(a) => rolling_replace(&api, a).await,
        Cmd::Verify { files } => {
            if files.is_empty() {
                bail!("no unit files given");
            }
            let mut bad = 0;
            for f in files {
                match read_unit_file(f) {
                    Ok((name, _)) => println!("{f}: {name} is valid"),
                    Err(e) => {
                        eprintln!("{f}: {e:#}");
                        bad += 1;
                    }
                }
            }
            if bad > 0 {
                bail!("{bad} of {} unit files are invalid", files.len());
            }
            Ok(())
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli).await {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_lists_expand_ranges_and_refuse_strangers() {
        assert_eq!(
            expand_instances("web@{1..3},web@blue", "web@.service").unwrap(),
            [
                "web@1.service",
                "web@2.service",
                "web@3.service",
                "web@blue.service"
            ]
        );
        assert_eq!(
            expand_instances("web@{a,b}.service, web@a", "web@.service").unwrap(),
            ["web@a.service", "web@b.service"]
        );
        assert_eq!(
            expand_instances("sock@{7..7}", "sock@.socket").unwrap(),
            ["sock@7.socket"]
        );
        for bad in ["db@1", "web@{1..2", "web@.service", "", " , "] {
            assert!(expand_instances(bad, "web@.service").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_parse_like_fleetctls() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        for bad in ["", "s", "10 parsecs", "-1s", "1e400s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replace_follows_fleets_rules_per_command() {
        assert!(may_replace("submit", "inactive") && !may_replace("submit", "loaded"));
        assert!(may_replace("load", "loaded") && !may_replace("load", "launched"));
        assert!(may_replace("start", "launched"));
    }
}
