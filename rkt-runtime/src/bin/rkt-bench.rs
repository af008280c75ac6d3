//! `rkt-bench`: rkt against crun and runc on the same busybox bundle, in one run.
//!
//! Each iteration is one `RUNTIME run` of a `/bin/true` container: create, start, wait and
//! delete in one command, as an engine's "run to completion" does. Reported: median and p90
//! wall time, and the peak RSS of the runtime's processes.
//!
//! Peak RSS comes from a separate set of runs under busybox's `time` (a static binary of a few
//! hundred KiB): a child's maxrss starts from its parent's RSS at fork, so measuring from this
//! (much larger) program would hide the differences. busybox reports ru_maxrss in its own unit;
//! it is calibrated against /proc/self/status VmHWM of a known allocation first.
//!
//! crun refuses this host's hybrid cgroup layout; its measuring subprocess runs in a private
//! mount namespace with an empty tmpfs over /sys/fs/cgroup/unified (the host is untouched).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "rkt-bench",
    about = "Benchmark rkt against crun and runc (create+start+wait+delete of /bin/true)",
    after_help = "EXAMPLES:\n    rkt-bench                     # all runtimes found, 200 iterations\n    rkt-bench --iterations 50 --runtimes rkt,runc"
)]
struct Cli {
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Comma-separated: rkt, crun, runc.
    #[arg(long, default_value = "rkt,crun,runc")]
    runtimes: String,
    /// The rkt binary to measure (default: `rkt` beside this program).
    #[arg(long)]
    rkt: Option<PathBuf>,
    /// Internal: measure one runtime binary and print "nanos... maxrss_kib".
    #[arg(long, hide = true)]
    measure: Option<PathBuf>,
    /// Internal: touch this many MiB and print VmHWM (calibration).
    #[arg(long, hide = true)]
    hwm: Option<usize>,
    #[arg(long, hide = true)]
    bundle: Option<PathBuf>,
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

fn make_bundle(dir: &Path, rkt: &Path) -> Result<PathBuf> {
    let bundle = dir.join("bundle");
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .context("/bin/busybox is needed (make deps)")?;
    std::os::unix::fs::symlink("busybox", bin.join("true"))?;
    let st = Command::new(rkt)
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()?;
    if !st.success() {
        bail!("rkt spec failed");
    }
    let cfg = bundle.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg)?)?;
    v["process"]["args"] = serde_json::json!(["/bin/true"]);
    std::fs::write(&cfg, serde_json::to_vec_pretty(&v)?)?;
    Ok(bundle)
}

/// Runs in the measuring subprocess: N runs, then the timings and the children's peak RSS.
fn measure(runtime: &Path, bundle: &Path, n: usize) -> Result<()> {
    let root = tempfile::tempdir()?;
    let mut nanos = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("bench-{}-{i}", std::process::id());
        let t = Instant::now();
        let st = Command::new(runtime)
            .arg("--root")
            .arg(root.path())
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()?;
        nanos.push(t.elapsed().as_nanos());
        if !st.success() {
            bail!("{} run failed: {st}", runtime.display());
        }
    }
    let mut rss = 0u64;
    for i in 0..RSS_RUNS {
        let id = format!("bench-rss-{}-{i}", std::process::id());
        let out = Command::new("busybox")
            .args(["time", "-f", "%M"])
            .arg(runtime)
            .arg("--root")
            .arg(root.path())
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .output()?;
        let text = String::from_utf8_lossy(&out.stderr);
        let v: u64 = text
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("busybox time said {text:?}"))?;
        rss = rss.max(v);
    }
    let line: Vec<String> = nanos.iter().map(|n| n.to_string()).collect();
    println!("{} {rss}", line.join(","));
    Ok(())
}

/// Runs with peak RSS measured (the largest seen).
const RSS_RUNS: usize = 10;

/// busybox time's %M unit in KiB: it reports ru_maxrss scaled by its idea of the page size.
fn busybox_rss_unit() -> Result<f64> {
    let me = std::env::current_exe()?;
    let out = Command::new("busybox")
        .args(["time", "-f", "%M"])
        .arg(&me)
        .args(["--hwm", "32"])
        .output()
        .context("busybox is needed (make deps)")?;
    let hwm: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    let reported: f64 = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .context("busybox time output")?
        .trim()
        .parse()?;
    // The ratio is a whole number (1 or 4); rounding absorbs the child's exit-time growth.
    Ok((reported / hwm).round().max(1.0))
}

fn print_hwm(mib: usize) -> Result<()> {
    let v = vec![1u8; mib << 20];
    std::hint::black_box(&v);
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("VmHWM")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .to_string();
    println!("{hwm}");
    Ok(())
}

struct Row {
    name: String,
    median: Duration,
    p90: Duration,
    rss_kib: i64,
}

fn run_one(name: &str, bin: &Path, bundle: &Path, n: usize, unit: f64) -> Result<Row> {
    let me = std::env::current_exe()?;
    let mut cmd = if name == "crun" {
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs none /sys/fs/cgroup/unified 2>/dev/null; exec \"$0\" \"$@\"");
        c.arg(&me);
        c
    } else {
        Command::new(&me)
    };
    cmd.arg("--measure")
        .arg(bin)
        .arg("--bundle")
        .arg(bundle)
        .arg("--iterations")
        .arg(n.to_string());
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{name}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8(out.stdout)?;
    let (times, rss) = text.trim().split_once(' ').context("measure output")?;
    let mut t: Vec<u128> = times
        .split(',')
        .map(|x| x.parse())
        .collect::<Result<_, _>>()?;
    t.sort_unstable();
    let at = |q: f64| Duration::from_nanos(t[((t.len() - 1) as f64 * q) as usize] as u64);
    Ok(Row {
        name: name.to_string(),
        median: at(0.5),
        p90: at(0.9),
        rss_kib: (rss.parse::<f64>()? / unit) as i64,
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let (Some(rt), Some(b)) = (&cli.measure, &cli.bundle) {
        return measure(rt, b, cli.iterations);
    }
    if let Some(mib) = cli.hwm {
        return print_hwm(mib);
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!("rkt-bench needs root (it creates containers)");
    }
    let me = std::env::current_exe()?;
    let rkt = cli.rkt.clone().unwrap_or_else(|| me.with_file_name("rkt"));
    let unit = busybox_rss_unit()?;
    let dir = tempfile::tempdir()?;
    let bundle = make_bundle(dir.path(), &rkt)?;
    let mut rows = Vec::new();
    for name in cli.runtimes.split(',') {
        let bin = if name == "rkt" {
            Some(rkt.clone())
        } else {
            which(name)
        };
        let Some(bin) = bin else {
            eprintln!("{name}: not installed, skipped (make deps installs crun and runc)");
            continue;
        };
        eprintln!("{name}: {} iterations…", cli.iterations);
        // A few untimed runs first, so that page cache and cgroup parents are warm for all.
        run_one(name, &bin, &bundle, 5, unit)?;
        rows.push(run_one(name, &bin, &bundle, cli.iterations, unit)?);
    }
    let crun = rows
        .iter()
        .find(|r| r.name == "crun")
        .map(|r| (r.median, r.rss_kib));
    println!(
        "\nrun /bin/true (create+start+wait+delete), {} iterations",
        cli.iterations
    );
    println!(
        "{:<6} {:>10} {:>10} {:>12} {:>14} {:>12}",
        "", "median", "p90", "peak RSS", "time vs crun", "RSS vs crun"
    );
    for r in &rows {
        let (tr, rr) = crun.map_or(("-".into(), "-".into()), |(m, rss)| {
            (
                format!("{:.2}x", r.median.as_secs_f64() / m.as_secs_f64()),
                format!("{:.2}x", r.rss_kib as f64 / rss as f64),
            )
        });
        println!(
            "{:<6} {:>8.2}ms {:>8.2}ms {:>9} KiB {:>14} {:>12}",
            r.name,
            r.median.as_secs_f64() * 1e3,
            r.p90.as_secs_f64() * 1e3,
            r.rss_kib,
            tr,
            rr
        );
    }
    Ok(())
}
