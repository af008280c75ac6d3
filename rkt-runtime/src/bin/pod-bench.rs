//! `pod-bench`: `rkt run IMAGE` against `podman run` (with crun) on the same image, in one run.
//!
//! 1. Start latency: an already fetched busybox image run to completion with `true`, N times,
//!    `--net=none` for both (pod networking would make podman create a bridge on the host).
//!    Reported: median and p90 wall time from the command's start to its exit.
//! 2. Unpack: a fresh store, then fetch + first run of an image with a 100 MiB layer (the first
//!    run is where rkt unpacks; podman unpacks during the pull).
//!
//! Images are built by tests/images/busybox-image.sh (umoci). podman runs with the cgroupfs
//! manager and ulimits this host allows; crun refuses the host's hybrid cgroup layout, so
//! podman runs in a private mount namespace with an empty tmpfs over /sys/fs/cgroup/unified
//! (the host is untouched). Its storage is a temp dir of its own (--root/--runroot).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "pod-bench",
    about = "Benchmark `rkt run IMAGE` against `podman run` with crun on the same image",
    after_help = "EXAMPLES:\n    pod-bench                       # 30 runs each, a 100 MiB image for unpacking\n    pod-bench --runs 10 --big-mb 20"
)]
struct Cli {
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Size of the random layer of the unpack image, MiB.
    #[arg(long, default_value_t = 100)]
    big_mb: u32,
    /// The rkt binary (default: `rkt` beside this program).
    #[arg(long)]
    rkt: Option<PathBuf>,
}

fn repo_script() -> Result<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images/busybox-image.sh");
    if !p.is_file() {
        bail!(
            "{} is missing (run pod-bench from the source tree)",
            p.display()
        );
    }
    Ok(p)
}

fn build_layout(dir: &Path, big_mb: u32) -> Result<()> {
    let st = Command::new(repo_script()?)
        .arg(dir)
        .env("BIG_MB", big_mb.to_string())
        .stdout(Stdio::null())
        .status()
        .context("running busybox-image.sh")?;
    if !st.success() {
        bail!("building the image failed");
    }
    Ok(())
}

struct Rkt {
    bin: PathBuf,
    data: PathBuf,
    root: PathBuf,
}

impl Rkt {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--dir")
            .arg(&self.data)
            .arg("--root")
            .arg(&self.root)
            .args(args);
        c.stdin(Stdio::null()).stdout(Stdio::null());
        c
    }
}

struct Podman {
    root: PathBuf,
    runroot: PathBuf,
}

impl Podman {
    /// podman ARGS in a private mount namespace without the v2 half of the hybrid layout.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut script =
            String::from("mount -t tmpfs tmpfs /sys/fs/cgroup/unified 2>/dev/null; exec podman");
        for a in [
            "--cgroup-manager=cgroupfs",
            "--root",
            &self.root.display().to_string(),
            "--runroot",
            &self.runroot.display().to_string(),
        ]
        .iter()
        .chain(args)
        {
            script.push_str(&format!(" '{a}'"));
        }
        let mut c = Command::new("unshare");
        c.args(["-m", "sh", "-c", &script]);
        c.stdin(Stdio::null()).stdout(Stdio::null());
        c
    }

    fn run_args(image: &str) -> Vec<String> {
        [
            "run",
            "--rm",
            "--runtime",
            "crun",
            "--net=none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            image,
            "true",
        ]
        .map(String::from)
        .to_vec()
    }
}

fn timed(mut c: Command, what: &str) -> Result<Duration> {
    let t = Instant::now();
    let out = c
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {what}"))?;
    let d = t.elapsed();
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(d)
}

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ms(v[v.len() / 2]),
        ms(v[(v.len() * 9 / 10).min(v.len() - 1)]),
    )
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rkt_bin = match cli.rkt {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("rkt"),
    };
    for tool in ["podman", "crun", "umoci", "unshare"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()?
            .code()
            != Some(0)
        {
            bail!("{tool} is missing: run make deps");
        }
    }
    // Lowercase: podman names an image pulled from oci:PATH after the path.
    let work = WorkDir(std::env::temp_dir().join(format!("pod-bench-{}", std::process::id())));
    std::fs::create_dir_all(work.path())?;
    let small = work.path().join("small");
    build_layout(&small, 0)?;
    let rkt = Rkt {
        bin: rkt_bin,
        data: work.path().join("rkt-data"),
        root: work.path().join("rkt-root"),
    };
    let podman = Podman {
        root: work.path().join("podman-root"),
        runroot: work.path().join("podman-run"),
    };
    let src = format!("oci:{}:latest", small.display());
    timed(rkt.cmd(&["fetch", &src]), "rkt fetch")?;
    timed(podman.cmd(&["pull", "-q", &src]), "podman pull")?;
    let podman_image = podman_image_id(&podman)?;
    // One warm-up each (page cache, unpacked layers).
    timed(
        rkt.cmd(&["run", "--net=none", "localhost/small", "--", "true"]),
        "rkt run",
    )?;
    let args = Podman::run_args(&podman_image);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    timed(podman.cmd(&args), "podman run")?;
    let (mut r, mut p) = (Vec::new(), Vec::new());
    for _ in 0..cli.runs {
        r.push(timed(
            rkt.cmd(&["run", "--net=none", "localhost/small", "--", "true"]),
            "rkt run",
        )?);
        p.push(timed(podman.cmd(&args), "podman run")?);
    }
    timed(rkt.cmd(&["gc", "--grace-period", "0s"]), "rkt gc")?;
    let (rm, r90) = stats(r);
    let (pm, p90) = stats(p);
    println!(
        "pod start (run IMAGE -- true, image fetched, --net=none), {} runs each:",
        cli.runs
    );
    println!("  rkt            median {rm:8.1} ms   p90 {r90:8.1} ms");
    println!("  podman + crun  median {pm:8.1} ms   p90 {p90:8.1} ms");
    println!(
        "  rkt / podman   {:.2}x (lower is better; target <= 1)",
        rm / pm
    );

    let big = work.path().join("big");
    build_layout(&big, cli.big_mb)?;
    let src = format!("oci:{}:latest", big.display());
    let rkt2 = Rkt {
        bin: rkt.bin.clone(),
        data: work.path().join("rkt-data2"),
        root: work.path().join("rkt-root2"),
    };
    let rt = timed(rkt2.cmd(&["fetch", &src]), "rkt fetch")?
        + timed(
            rkt2.cmd(&["run", "--net=none", "localhost/big", "--", "true"]),
            "rkt run",
        )?;
    let podman2 = Podman {
        root: work.path().join("podman-root2"),
        runroot: work.path().join("podman-run2"),
    };
    let mut pt = timed(podman2.cmd(&["pull", "-q", &src]), "podman pull")?;
    let id = podman_image_id(&podman2)?;
    let args = Podman::run_args(&id);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    pt += timed(podman2.cmd(&args), "podman run")?;
    println!(
        "unpack ({} MiB layer): fetch + first run from an OCI layout into an empty store:",
        cli.big_mb
    );
    println!("  rkt            {:8.0} ms", rt.as_secs_f64() * 1000.0);
    println!("  podman + crun  {:8.0} ms", pt.as_secs_f64() * 1000.0);
    println!(
        "  rkt / podman   {:.2}x",
        rt.as_secs_f64() / pt.as_secs_f64()
    );
    for p in [&podman, &podman2] {
        // podman's overlay mounts live in its own mount namespaces; its store is plain files.
        let _ = p
            .cmd(&["system", "reset", "--force"])
            .stderr(Stdio::null())
            .status();
    }
    Ok(())
}

/// The benchmark's directory, removed at the end.
struct WorkDir(PathBuf);

impl WorkDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn podman_image_id(p: &Podman) -> Result<String> {
    let out = p
        .cmd(&["images", "-q"])
        .stdout(Stdio::piped())
        .output()
        .context("podman images")?;
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    if id.is_empty() {
        bail!("podman has no image after the pull");
    }
    Ok(id)
}
