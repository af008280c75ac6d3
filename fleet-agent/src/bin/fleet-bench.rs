//! fleet-bench: engine scheduling throughput and convergence. Starts an etcd-lite member on
//! loopback, runs N simulated machines in this process (the real agent and engine code, with
//! systemd simulated in memory), submits U units as `launched`, and measures the time until
//! every unit is placed and reported running, plus the store requests spent per unit.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use fleet_agent::agent::{self, Heartbeat};
use fleet_agent::engine;
use fleet_agent::mirror::Mirror;
use fleet_agent::model::{Keys, Machine, TargetState, UnitRecord};
use fleet_agent::systemd::Simulated;
use fleet_agent::unit::UnitOption;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;

/// Measure fleet's scheduling: units over simulated machines against etcd-lite.
#[derive(Parser, Debug)]
#[command(
    after_help = "Example:\n  fleet-bench --etcd-lite target/release/etcd-lite --machines 100 --units 10000"
)]
struct Args {
    /// The etcd-lite binary to start (ignored with --endpoint).
    #[arg(long, default_value = "target/release/etcd-lite")]
    etcd_lite: PathBuf,
    /// Use a store that is already running instead (e.g. a real etcd).
    #[arg(long)]
    endpoint: Option<String>,
    /// Simulated machines.
    #[arg(long, default_value_t = 100)]
    machines: usize,
    /// Units to schedule.
    #[arg(long, default_value_t = 10_000)]
    units: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

struct Store {
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
    endpoint: String,
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_store(args: &Args) -> anyhow::Result<Store> {
    if let Some(ep) = &args.endpoint {
        return Ok(Store {
            child: None,
            _dir: None,
            endpoint: ep.clone(),
        });
    }
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = tempfile::Builder::new().prefix("fleet-bench").tempdir()?;
    let url = format!("http://127.0.0.1:{port}");
    let child = Command::new(&args.etcd_lite)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args.etcd_lite.display()))?;
    Ok(Store {
        child: Some(child),
        _dir: Some(dir),
        endpoint: url,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let store = start_store(&args)?;
    let client = kv_client::Client::new(
        std::slice::from_ref(&store.endpoint),
        Duration::from_secs(10),
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get("/health-probe").await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the store at {} does not answer",
            store.endpoint
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let keys = Keys::new(&format!("/fleet-bench-{}/", std::process::id()));
    let (stop_tx, stop_rx) = watch::channel(false);

    // The simulated machines: each its own mirror, heartbeat and agent; three run the engine.
    let ttl = Duration::from_secs(30);
    for i in 0..args.machines {
        let me = Machine {
            id: format!("sim{i:05}"),
            primary_ip: format!("127.0.1.{}", i % 250 + 1),
            metadata: Default::default(),
            api_url: None,
        };
        let mirror = Mirror::start(client.clone(), keys.clone());
        let hb = Heartbeat::start(
            client.clone(),
            keys.clone(),
            me.clone(),
            ttl,
            stop_rx.clone(),
        );
        let sd = Arc::new(Simulated::default());
        tokio::spawn(agent::run(
            client.clone(),
            keys.clone(),
            mirror.clone(),
            sd,
            me.clone(),
            hb,
            stop_rx.clone(),
        ));
        if i < 3 {
            tokio::spawn(engine::run(
                client.clone(),
                keys.clone(),
                mirror,
                me.id,
                Duration::from_secs(10),
                stop_rx.clone(),
            ));
        }
    }
    let observer = Mirror::start(client.clone(), keys.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while observer.read(|s| s.machines.len()) < args.machines {
        anyhow::ensure!(Instant::now() < deadline, "machines did not register");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let bar = ProgressBar::new(args.units as u64);
    bar.set_style(ProgressStyle::with_template(
        "{msg:12} [{bar:40}] {pos}/{len} {elapsed}",
    )?);
    let requests_before = client.requests();
    let start = Instant::now();
    bar.set_message("submitting");
    let record = |i: usize| UnitRecord {
        options: vec![
            UnitOption {
                section: "Unit".into(),
                name: "Description".into(),
                value: format!("bench {i}"),
            },
            UnitOption {
                section: "Service".into(),
                name: "ExecStart".into(),
                value: "/bin/sleep infinity".into(),
            },
        ],
        desired_state: TargetState::Launched,
    };
    let submitted = futures::stream::iter(0..args.units)
        .map(|i| {
            let client = client.clone();
            let keys = keys.clone();
            async move {
                let value = serde_json::to_vec(&record(i))?;
                client
                    .put(&keys.unit(&format!("bench-{i:05}.service")), value, 0)
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    for r in submitted {
        r?;
    }
    let submit_time = start.elapsed();
    bar.set_message("converging");
    let timeout = Instant::now() + Duration::from_secs(args.timeout);
    let (placed, running) = loop {
        let (placed, running) = observer.read(|s| {
            let placed = s.schedule.len();
            let running = s
                .states
                .values()
                .filter(|st| st.current() == TargetState::Launched && st.active_state == "active")
                .count();
            (placed, running)
        });
        bar.set_position(running as u64);
        if running >= args.units || Instant::now() > timeout {
            break (placed, running);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let total = start.elapsed();
    bar.finish_and_clear();
    let requests = client.requests() - requests_before;
    let _ = stop_tx.send(true);
    let per_machine = observer.read(|s| {
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for m in s.schedule.values() {
            *counts.entry(m.as_str()).or_default() += 1;
        }
        let min = counts.values().min().copied().unwrap_or(0);
        let max = counts.values().max().copied().unwrap_or(0);
        (min, max)
    });
    println!(
        "fleet scheduling: {} units over {} simulated machines (store: {})",
        args.units,
        args.machines,
        if args.endpoint.is_some() {
            "given endpoint"
        } else {
            "etcd-lite, 1 member"
        }
    );
    println!(
        "  submitted in          {:>8.2} s",
        submit_time.as_secs_f64()
    );
    println!("  placed                {:>8} units", placed);
    println!(
        "  running and reported  {:>8} units in {:.2} s",
        running,
        total.as_secs_f64()
    );
    println!(
        "  units per machine     {:>8} .. {}",
        per_machine.0, per_machine.1
    );
    println!(
        "  store requests        {:>8} ({:.2} per unit: submit, place, report state; no polling)",
        requests,
        requests as f64 / args.units.max(1) as f64
    );
    anyhow::ensure!(
        running >= args.units,
        "only {running} of {} units converged",
        args.units
    );
    Ok(())
}
