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
    Submit { units: Vec<String> },
    /// Schedule units to machines and load them into systemd.
    Load { units: Vec<String> },
    /// Schedule, load and start units.
    Start { units: Vec<String> },
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
        /// Machine to read from (for global units).
        #[arg(long)]
        machine: Option<String>,
        unit: String,
    },
    /// Check unit files without submitting them.
    Verify { files: Vec<String> },
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

    async fn put(&self, name: &str, options: Vec<UnitOption>, desired: &str) -> anyhow::Result<()> {
        let body = serde_json::to_vec(&Unit {
            name: name.to_string(),
            options,
            desired_state: Some(desired.to_string()),
            current_state: None,
            machine_id: None,
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

/// Makes sure each argument's unit is in the cluster (from a local file, the registry, or its
/// template); returns the unit names.
async fn ensure_submitted(api: &Api, args: &[String]) -> anyhow::Result<Vec<String>> {
    if args.is_empty() {
        bail!("no units given");
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
                if unit::hash(&existing.options) != unit::hash(&opts) {
                    eprintln!(
                        "WARNING: Unit {name} in registry differs from local unit file {arg}"
                    );
                }
            }
            (Some(_), None) => {}
            (None, Some((_, opts))) => api.put(&name, opts, "inactive").await?,
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
                api.put(&name, opts, "inactive").await?;
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
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        attempts += 1;
        if cli.block_attempts > 0 && attempts >= cli.block_attempts {
            bail!("units did not reach state {want}: {}", still.join(" "));
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
        api.put(name, vec![], desired).await?;
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
    if let Cmd::TunnelStdio = cli.cmd {
        return tunnel_stdio(&socket).await;
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
        Cmd::Submit { units } => {
            ensure_submitted(&api, units).await?;
            Ok(())
        }
        Cmd::Load { units } => {
            let names = ensure_submitted(&api, units).await?;
            set_state(&api, cli, &names, "loaded", "loaded").await
        }
        Cmd::Start { units } => {
            let names = ensure_submitted(&api, units).await?;
            set_state(&api, cli, &names, "launched", "launched").await
        }
        Cmd::Stop { units } => {
            let names: Vec<String> = units.iter().map(|u| unit_name(u)).collect();
            set_state(&api, cli, &names, "loaded", "loaded").await
        }
        Cmd::Unload { units } => {
            let names: Vec<String> = units.iter().map(|u| unit_name(u)).collect();
            set_state(&api, cli, &names, "inactive", "inactive").await
        }
        Cmd::Destroy { units } => {
            for u in units {
                let name = unit_name(u);
                let (status, body) = api
                    .call("DELETE", &format!("/fleet/v1/units/{name}"), None)
                    .await?;
                match status {
                    204 | 200 => println!("Destroyed {name}"),
                    404 => eprintln!("Unit {name} does not exist"),
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
                let (status, body) = api
                    .call("GET", &format!("/fleet/v1/units/{name}/status"), None)
                    .await?;
                if status != 200 {
                    return Err(Api::fail(status, &body).context(format!("status of {name}")));
                }
                if i > 0 {
                    println!();
                }
                print!("{}", String::from_utf8_lossy(&body));
            }
            Ok(())
        }
        Cmd::Journal {
            lines,
            machine,
            unit: u,
        } => {
            let name = unit_name(u);
            let mut path = format!("/fleet/v1/units/{name}/journal?lines={lines}");
            if let Some(m) = machine {
                path += &format!("&machineID={m}");
            }
            let (status, body) = api.call("GET", &path, None).await?;
            if status != 200 {
                return Err(Api::fail(status, &body).context(format!("journal of {name}")));
            }
            print!("{}", String::from_utf8_lossy(&body));
            Ok(())
        }
        Cmd::TunnelStdio => unreachable!("handled before the API is reached"),
        Cmd::Ssh {
            forward_agent,
            target,
            command,
        } => {
            let machines = api.machines().await?;
            let by_id: Vec<&Machine> = machines
                .iter()
                .filter(|m| m.id.starts_with(target.as_str()))
                .collect();
            let machine = match by_id.as_slice() {
                [m] => (*m).clone(),
                [_, _, ..] => bail!("machine id prefix {target} is ambiguous"),
                [] => {
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
                    machines
                        .iter()
                        .find(|m| m.id == on)
                        .cloned()
                        .with_context(|| format!("{name}'s machine {on} is not in the cluster"))?
                }
            };
            let mut argv = ssh_command(cli);
            if *forward_agent {
                argv.push("-A".into());
            }
            if let Some(t) = cli.tunnel.as_deref().filter(|t| !t.is_empty()) {
                // Through the tunnel host, with the same options for both hops (ssh's -J would
                // not pass them on).
                let (host, port) = split_host(t);
                let mut hop = ssh_command(cli);
                if let Some(p) = port {
                    hop.extend(["-p".into(), p]);
                }
                hop.extend(["-W".into(), "%h:%p".into(), host]);
                argv.extend(["-o".into(), format!("ProxyCommand={}", hop.join(" "))]);
            }
            argv.push(machine.primary_ip.clone());
            argv.extend(command.iter().cloned());
            let status = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .status()
                .context("running ssh")?;
            std::process::exit(status.code().unwrap_or(255));
        }
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
