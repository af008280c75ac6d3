//! `corelite-firstboot`: applies a node's first-boot config once, before networking, etcd-lite
//! and fleetd start (like Container Linux's Ignition / cloud-config, in JSON).
//!
//! The config comes from `--config FILE`, else the kernel command line
//! (`corelite.config=base64:<JSON in base64>`, or `gz64:<gzipped JSON in base64>` for configs
//! with TLS material: the command line holds 2048 bytes), else a config drive: a filesystem labelled
//! CORELITE with `config.json` at its root. Without any, the node keeps the image's defaults
//! (a single-member etcd-lite, fleetd against it). A bad config fails the unit with a message on
//! the console; etcd-lite and fleetd then do not start, and the serial console's root shell
//! stays available for debugging.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use clap::Parser;
use corelite_firstboot::config::{self, Config};

const MARKER: &str = "var/lib/corelite/firstboot.done";
const DRIVE_LABEL: &str = "CORELITE";

#[derive(Parser)]
#[command(
    name = "corelite-firstboot",
    version,
    about = "Apply a corelite node's first-boot config once (hostname, network, etcd-lite, fleet, units)",
    after_help = "CONFIG (JSON; unknown keys are errors):
    {\"hostname\": \"node1\",
     \"network\": {\"address\": \"10.0.0.11/24\", \"gateway\": \"10.0.0.1\", \"dns\": [\"10.0.0.1\"]},
     \"etcd\": {\"initial_cluster\": \"node1=http://10.0.0.11:2380,node2=http://10.0.0.12:2380,node3=http://10.0.0.13:2380\",
              \"initial_cluster_token\": \"demo\"},
     \"fleet\": {\"metadata\": {\"role\": \"web\"}, \"agent_ttl\": 30},
     \"units\": [{\"name\": \"hello.service\", \"contents\": \"[Service]\\nExecStart=/bin/echo hi\\n\"}]}

EXAMPLES:
    corelite-firstboot --check node1.json          # validate a config before booting with it
    qemu ... -append \"... corelite.config=gz64:$(gzip -9c node1.json | base64 -w0)\"
    mkfs.vfat -C drive.img 1440 -n CORELITE && mcopy -i drive.img node1.json ::config.json"
)]
struct Cli {
    /// Read the config from this file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Only validate FILE and exit.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
    /// Apply even if this node was configured before.
    #[arg(long)]
    force: bool,
    /// The root to write into (for building images and tests).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    #[arg(long, default_value = "/proc/cmdline", hide = true)]
    cmdline: PathBuf,
    /// Turn etcd auth on (users by certificate: root and these nodes), once the local
    /// etcd-lite answers; what corelite-etcd-auth.service runs when the config asks for it.
    #[arg(long, value_name = "NODE,NODE,...", value_delimiter = ',')]
    enable_etcd_auth: Option<Vec<String>>,
    /// Say on the console whether the clock fits this node's certificate (every boot, by
    /// corelite-clock-check.service); exits 1 when it does not.
    #[arg(long)]
    check_clock: bool,
}

/// `--check-clock`: the node's certificate against the clock.
fn check_clock(root: &Path) -> Result<bool> {
    let p = root
        .join(config::PKI_DIR.trim_start_matches('/'))
        .join("node.pem");
    let pem = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "corelite: no node certificate ({}): nothing to check the clock against",
                p.display()
            );
            return Ok(true);
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    let info = corelite_firstboot::pki::cert_info(&pem)
        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    match corelite_firstboot::pki::clock_problem(&info, now) {
        Some(problem) => {
            println!("corelite: WARNING: {problem}; TLS between nodes and with clients fails until it is fixed");
            Ok(false)
        }
        None => {
            println!("corelite: the clock fits this node's certificate");
            Ok(true)
        }
    }
}

/// The config text and where it came from.
fn find_config(cli: &Cli) -> Result<Option<(String, String)>> {
    if let Some(p) = &cli.config {
        let t = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        return Ok(Some((t, p.display().to_string())));
    }
    let cmdline = std::fs::read_to_string(&cli.cmdline).unwrap_or_default();
    for word in cmdline.split_whitespace() {
        if let Some(v) = word.strip_prefix("corelite.config=") {
            return Ok(Some((cmdline_config(v)?, "the kernel command line".into())));
        }
    }
    if let Some(dev) = find_drive() {
        let mnt = Path::new("/run/corelite/config-drive");
        std::fs::create_dir_all(mnt)?;
        let st = Command::new("mount")
            .args(["-o", "ro"])
            .arg(&dev)
            .arg(mnt)
            .status()
            .context("running mount")?;
        if !st.success() {
            bail!("could not mount the config drive {}", dev.display());
        }
        let text = std::fs::read_to_string(mnt.join("config.json"));
        let _ = Command::new("umount").arg(mnt).status();
        let text = text.context("the config drive has no readable config.json")?;
        return Ok(Some((
            text,
            format!("the config drive ({})", dev.display()),
        )));
    }
    Ok(None)
}

/// The kernel command line holds 2048 bytes on x86: a config with TLS material fits only
/// gzipped (`gz64:`, what `corelite-config` prints), and a cut one must say so.
const CUT_SHORT: &str = "the kernel command line holds at most 2048 bytes (was it cut short?): use `gz64:` (gzip, then base64) or a config drive";

/// `base64:<JSON in base64>` or `gz64:<gzipped JSON in base64>`.
fn cmdline_config(value: &str) -> Result<String> {
    use std::io::Read as _;
    let (gzipped, b64) = match value.split_once(':') {
        Some(("gz64", b)) => (true, b),
        Some(("base64", b)) => (false, b),
        _ => (false, value),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .with_context(|| {
            format!("corelite.config= on the kernel command line is not base64; {CUT_SHORT}")
        })?;
    let bytes = if gzipped {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .take(1 << 20)
            .read_to_end(&mut out)
            .with_context(|| format!("corelite.config=gz64: is not gzip; {CUT_SHORT}"))?;
        out
    } else {
        bytes
    };
    String::from_utf8(bytes).context("corelite.config= is not UTF-8")
}

/// The volume label in a FAT boot sector (FAT12/16 or FAT32), if it has one.
fn fat_label(sector: &[u8]) -> Option<String> {
    if sector.len() < 512 || sector[510..512] != [0x55, 0xAA] {
        return None;
    }
    // FAT32 leaves the 16-bit sectors-per-FAT (offset 22) zero; its extended boot record is
    // further in (signature 0x29, then serial and label).
    let (signature, label) = if u16::from_le_bytes([sector[22], sector[23]]) == 0 {
        (66, 71)
    } else {
        (38, 43)
    };
    if sector[signature] != 0x29 {
        return None;
    }
    let l = std::str::from_utf8(&sector[label..label + 11])
        .ok()?
        .trim_end();
    (!l.is_empty() && l != "NO NAME").then(|| l.to_string())
}

/// The config drive: each block device's first sector is read, so nothing waits for udev
/// (the unit runs early and boot does not wait for udev to settle); /dev/disk/by-label
/// covers filesystems other than FAT once udev has seen them.
fn find_drive() -> Option<PathBuf> {
    let mut names: Vec<_> = std::fs::read_dir("/sys/class/block")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in names {
        let dev = Path::new("/dev").join(&name);
        let mut sector = [0u8; 512];
        let read = std::fs::File::open(&dev).and_then(|mut f| {
            use std::io::Read as _;
            f.read_exact(&mut sector)
        });
        if read.is_ok() && fat_label(&sector).as_deref() == Some(DRIVE_LABEL) {
            return Some(dev);
        }
    }
    let by_label = Path::new("/dev/disk/by-label").join(DRIVE_LABEL);
    by_label.exists().then_some(by_label)
}

fn write(root: &Path, path: &str, contents: &str, mode: u32) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let p = root.join(path.trim_start_matches('/'));
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let tmp = p.with_extension("firstboot-tmp");
    let _ = std::fs::remove_file(&tmp);
    // Created with its final mode: a private key is never readable by others, even briefly.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(contents.as_bytes()).and_then(|()| f.sync_all()))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))
}

fn systemctl(args: &[&str]) -> Result<()> {
    let st = Command::new("systemctl")
        .args(args)
        .status()
        .context("running systemctl")?;
    if !st.success() {
        bail!("systemctl {} failed", args.join(" "));
    }
    Ok(())
}

fn apply(cli: &Cli, c: &Config) -> Result<()> {
    for f in config::render(c) {
        write(&cli.root, &f.path, &f.contents, f.mode)?;
    }
    if cli.root == Path::new("/") {
        nix::unistd::sethostname(&c.hostname).context("setting the hostname")?;
        if !c.units.is_empty() {
            systemctl(&["daemon-reload"])?;
            for u in c.units.iter().filter(|u| u.enable) {
                // Enabled for later boots; started now without waiting (we run early in boot).
                systemctl(&["enable", &u.name])?;
                systemctl(&["start", "--no-block", &u.name])?;
            }
        }
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if cli.check_clock {
        match check_clock(&cli.root) {
            Ok(true) => return,
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("corelite-firstboot: {e:#}");
                std::process::exit(1);
            }
        }
    }
    if let Some(nodes) = &cli.enable_etcd_auth {
        let res = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(corelite_firstboot::etcd_auth::enable(
                    "https://127.0.0.1:2379",
                    Path::new(config::PKI_DIR),
                    nodes,
                ))
            });
        if let Err(e) = res {
            eprintln!("corelite-firstboot: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if let Some(p) = &cli.check {
        let res = std::fs::read_to_string(p)
            .with_context(|| format!("reading {}", p.display()))
            .and_then(|t| Config::parse(&t).map_err(anyhow::Error::from));
        match res {
            Ok(_) => println!("{}: ok", p.display()),
            Err(e) => {
                eprintln!("corelite-firstboot: {}: {e:#}", p.display());
                std::process::exit(1);
            }
        }
        return;
    }
    let marker = cli.root.join(MARKER);
    if marker.exists() && !cli.force {
        println!(
            "corelite-firstboot: already configured ({} exists)",
            marker.display()
        );
        return;
    }
    let res = (|| -> Result<()> {
        let Some((text, source)) = find_config(&cli)? else {
            println!("corelite-firstboot: no first-boot config; keeping the image's defaults");
            return Ok(());
        };
        let c = Config::parse(&text)
            .map_err(|e| anyhow::anyhow!("bad first-boot config from {source}: {e}"))?;
        apply(&cli, &c)?;
        println!(
            "corelite-firstboot: applied the config from {source} (hostname {})",
            c.hostname
        );
        Ok(())
    })();
    match res {
        Ok(()) => {
            if let Err(e) = write(&cli.root, MARKER, "", 0o644) {
                eprintln!("corelite-firstboot: {e:#}");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("corelite-firstboot: {e:#}");
            eprintln!("corelite-firstboot: etcd-lite and fleetd will not start; fix the config (the serial console has a root shell) and run corelite-firstboot --config FILE");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fat_label;

    fn sector(fat32: bool, label: &[u8; 11]) -> Vec<u8> {
        let mut s = vec![0u8; 512];
        s[510] = 0x55;
        s[511] = 0xAA;
        let (sig, at) = if fat32 {
            (66, 71)
        } else {
            s[22] = 9; // sectors per FAT
            (38, 43)
        };
        s[sig] = 0x29;
        s[at..at + 11].copy_from_slice(label);
        s
    }

    #[test]
    fn command_line_configs_plain_or_gzipped_and_cut_short() {
        use base64::Engine as _;
        use std::io::Write as _;
        let json = r#"{"hostname": "n"}"#;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        assert_eq!(
            super::cmdline_config(&format!("base64:{}", b64(json.as_bytes()))).expect("plain"),
            json
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(json.as_bytes()).expect("gzip");
        let gz = gz.finish().expect("gzip");
        assert_eq!(
            super::cmdline_config(&format!("gz64:{}", b64(&gz))).expect("gzipped"),
            json
        );
        let cut = b64(&gz[..gz.len() / 2]);
        let e = super::cmdline_config(&format!("gz64:{cut}")).expect_err("cut short");
        assert!(format!("{e:#}").contains("2048 bytes"), "{e:#}");
    }

    #[test]
    fn fat_labels_are_read_from_both_layouts() {
        assert_eq!(
            fat_label(&sector(false, b"CORELITE   ")).as_deref(),
            Some("CORELITE")
        );
        assert_eq!(
            fat_label(&sector(true, b"CORELITE   ")).as_deref(),
            Some("CORELITE")
        );
        assert_eq!(fat_label(&sector(false, b"NO NAME    ")), None);
        let mut not_fat = sector(false, b"CORELITE   ");
        not_fat[511] = 0;
        assert_eq!(fat_label(&not_fat), None);
        let mut no_ebr = sector(false, b"CORELITE   ");
        no_ebr[38] = 0;
        assert_eq!(fat_label(&no_ebr), None);
        assert_eq!(fat_label(&[0u8; 100]), None);
    }
}
