//! Pods: an image run as a container with its own root (an overlay of the image's unpacked
//! layers), network and record. `rkt run IMAGE`, `list`, `status`, `stop`, `rm`, `enter`, `gc`.
//!
//! ```text
//! DATA/images/             the image store (oci-image)
//! DATA/pods/<id>/pod.json  the pod's record (name, image, network, exit status)
//! DATA/pods/<id>/          the bundle: config.json, rootfs (overlay), upper, work, etc/
//! DATA/net/                the IPAM
//! ```
//! The container itself is an ordinary one of the runtime (state under --root, id = pod id),
//! so `rkt state`, `exec`, `ps` and `events` work on pods too.

pub mod config;
pub mod net;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_image::{ImageRecord, Store};
use serde::{Deserialize, Serialize};

use crate::container::{self, CreateOptions};
use crate::error::{Result, RuntimeError};
use crate::state::{Root, Status};
use config::{NetMode, RunOptions};
use net::PortForward;

/// Default data directory (images, pods, IPAM).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/rkt";
/// How long `stop` waits for a pod to end after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `stop` lets a pod's `rkt run` record the exit before doing it itself.
const RECORD_WAIT: Duration = Duration::from_secs(3);
/// Annotation keys on a pod's config.json.
pub const ANNOTATION_NAME: &str = "org.corelite.rkt.pod.name";
pub const ANNOTATION_IMAGE: &str = "org.corelite.rkt.pod.image";

/// What is kept about a pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub name: String,
    /// The image as named when run, and its ID.
    pub image: String,
    pub image_id: String,
    pub created: String,
    #[serde(default)]
    pub started: Option<String>,
    #[serde(default)]
    pub finished: Option<String>,
    /// Seconds since the epoch when it finished (for gc's grace period).
    #[serde(default)]
    pub finished_at: Option<u64>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    pub net: NetMode,
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub ports: Vec<PortForward>,
}

/// A pod's state as `rkt list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    /// Being set up, or its `rkt run` died before recording anything.
    Prepared,
    Running,
    Paused,
    Exited,
}

impl std::fmt::Display for PodState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PodState::Prepared => "prepared",
            PodState::Running => "running",
            PodState::Paused => "paused",
            PodState::Exited => "exited",
        })
    }
}

/// The pods and images under one data directory, with containers under one runtime root.
pub struct Pods {
    data: PathBuf,
    root: Root,
}

fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn new_pod_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl Pods {
    pub fn new(data: &Path, root: Root) -> Pods {
        Pods {
            data: data.to_path_buf(),
            root,
        }
    }

    pub fn store(&self) -> Result<Store> {
        let dir = self.data.join("images");
        Store::open(&dir).map_err(image_err)
    }

    fn pods_dir(&self) -> PathBuf {
        self.data.join("pods")
    }

    fn dir_of(&self, id: &str) -> PathBuf {
        self.pods_dir().join(id)
    }

    fn save(&self, p: &PodRecord) -> Result<()> {
        let dir = self.dir_of(&p.id);
        let path = dir.join("pod.json");
        let tmp = dir.join("pod.json.tmp");
        let text = serde_json::to_vec_pretty(p).map_err(|e| RuntimeError::BadConfig {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&tmp, text).map_err(|e| RuntimeError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| RuntimeError::io(&path, e))
    }

    fn load(&self, id: &str) -> Result<PodRecord> {
        let path = self.dir_of(id).join("pod.json");
        let text = std::fs::read(&path).map_err(|e| RuntimeError::io(&path, e))?;
        serde_json::from_slice(&text).map_err(|e| RuntimeError::BadConfig {
            path,
            reason: e.to_string(),
        })
    }

    /// Every pod with its state, oldest first.
    pub fn list(&self) -> Vec<(PodRecord, PodState)> {
        let mut out: Vec<_> = std::fs::read_dir(self.pods_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| self.load(&e.file_name().to_string_lossy()).ok())
            .map(|p| {
                let st = self.state(&p);
                (p, st)
            })
            .collect();
        out.sort_by(|a, b| a.0.created.cmp(&b.0.created));
        out
    }

    pub fn state(&self, p: &PodRecord) -> PodState {
        if p.exit_code.is_some() {
            return PodState::Exited;
        }
        match self.root.load(&p.id).map(|s| self.root.status(&s)) {
            Ok(Status::Running) => PodState::Running,
            Ok(Status::Paused) => PodState::Paused,
            Ok(Status::Created) => PodState::Prepared,
            Ok(Status::Stopped) => PodState::Exited,
            Err(_) if p.started.is_some() => PodState::Exited,
            Err(_) => PodState::Prepared,
        }
    }

    /// A pod by name, full id or id prefix.
    pub fn find(&self, what: &str) -> Result<PodRecord> {
        let all = self.list();
        if let Some((p, _)) = all.iter().find(|(p, _)| p.name == what || p.id == what) {
            return Ok(p.clone());
        }
        let hits: Vec<_> = all.iter().filter(|(p, _)| p.id.starts_with(what)).collect();
        match hits.as_slice() {
            [(p, _)] if !what.is_empty() => Ok(p.clone()),
            [] | [_] => Err(RuntimeError::NotFound(format!("pod {what}"))),
            _ => Err(RuntimeError::Unsupported(format!(
                "{what} matches {} pods; give more of the id",
                hits.len()
            ))),
        }
    }

    /// Runs `image` as a new pod in the foreground; returns its exit code. `ready` is called
    /// once the pod's process runs.
    pub fn run(
        &self,
        image: &ImageRecord,
        image_name: &str,
        opts: &RunOptions,
        ports: &[PortForward],
        ready: &mut dyn FnMut(&PodRecord),
    ) -> Result<i32> {
        check_ports(opts.net, ports)?;
        if let Some((other, st)) = self
            .list()
            .into_iter()
            .find(|(p, st)| p.name == opts.name && *st != PodState::Exited)
        {
            return Err(RuntimeError::Exists(format!(
                "pod {} ({}, {st})",
                opts.name, other.id
            )));
        }
        let store = self.store()?;
        let img_cfg = oci_image::config_of(&store, image).map_err(image_err)?;
        let id = new_pod_id();
        let dir = self.dir_of(&id);
        let mut pod = PodRecord {
            id: id.clone(),
            name: opts.name.clone(),
            image: image_name.to_string(),
            image_id: image.id.clone(),
            created: oci_image::now_rfc3339(),
            started: None,
            finished: None,
            finished_at: None,
            exit_code: None,
            net: opts.net,
            ip: None,
            ports: ports.to_vec(),
        };
        for d in ["rootfs", "upper", "work", "etc"] {
            let p = dir.join(d);
            std::fs::create_dir_all(&p).map_err(|e| RuntimeError::io(&p, e))?;
        }
        self.save(&pod)?;
        let mut cleanup = PodCleanup {
            pods: self,
            id: id.clone(),
            armed: true,
        };
        let mut lowers = Vec::new();
        for (i, l) in image.layers.iter().enumerate() {
            let diff = img_cfg.rootfs.diff_ids.get(i).map(String::as_str);
            lowers.push(store.layer_dir(l, diff).map_err(image_err)?);
        }
        lowers.reverse();
        if lowers.is_empty() {
            let empty = dir.join("empty");
            std::fs::create_dir_all(&empty).map_err(|e| RuntimeError::io(&empty, e))?;
            lowers.push(empty);
        }
        crate::linux::mount_overlay(
            &lowers,
            &dir.join("upper"),
            &dir.join("work"),
            &dir.join("rootfs"),
        )?;
        let read =
            |rel: &str| std::fs::read_to_string(dir.join("rootfs").join(rel)).unwrap_or_default();
        let user_spec = opts
            .user
            .clone()
            .or_else(|| img_cfg.config.as_ref().and_then(|c| c.user.clone()))
            .unwrap_or_default();
        let user = config::resolve_user(&user_spec, &read("etc/passwd"), &read("etc/group"))?;
        if opts.net == NetMode::Default {
            pod.ip = net::Ipam::new(&self.data).with(|a| a.allocate(&id))?;
            if pod.ip.is_none() {
                return Err(RuntimeError::Unsupported(format!(
                    "no free address left in {}/{} (rkt gc releases those of exited pods)",
                    net::SUBNET,
                    net::PREFIX
                )));
            }
            self.save(&pod)?;
        }
        let etc = write_etc(&dir.join("etc"), &pod)?;
        let spec = config::spec(
            &img_cfg,
            opts,
            user,
            &etc,
            &[
                (ANNOTATION_NAME.to_string(), pod.name.clone()),
                (ANNOTATION_IMAGE.to_string(), image_name.to_string()),
            ],
        )?;
        let cfg_path = dir.join("config.json");
        let text = serde_json::to_vec_pretty(&spec).map_err(|e| RuntimeError::BadConfig {
            path: cfg_path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&cfg_path, text).map_err(|e| RuntimeError::io(&cfg_path, e))?;
        let create = CreateOptions {
            bundle: dir.clone(),
            ..Default::default()
        };
        let mut started_pod = pod.clone();
        let code = container::run_with(
            &self.root,
            &id,
            &create,
            false,
            &mut |s| match (pod.net, pod.ip) {
                (NetMode::Default, Some(ip)) => net::setup(&id, s.pid, ip, ports),
                (NetMode::None, _) => net::setup_none(s.pid),
                _ => Ok(()),
            },
            &mut |_| {
                started_pod.started = Some(oci_image::now_rfc3339());
                if let Err(e) = self.save(&started_pod) {
                    tracing::warn!(pod = %started_pod.id, error = %e, "recording the start");
                }
                ready(&started_pod);
            },
        );
        let mut pod = self.load(&id).unwrap_or(started_pod);
        let code = code?;
        cleanup.armed = false;
        pod.exit_code = Some(code);
        pod.finished = Some(oci_image::now_rfc3339());
        pod.finished_at = Some(epoch_secs());
        self.release(&pod);
        self.save(&pod)?;
        Ok(code)
    }

    /// Frees what an exited pod holds but keeps its record and files: network, mount.
    fn release(&self, pod: &PodRecord) {
        if pod.net == NetMode::Default {
            net::teardown(&pod.id);
            if let Err(e) = net::Ipam::new(&self.data).with(|a| a.release(&pod.id)) {
                tracing::warn!(pod = %pod.id, error = %e, "releasing the address");
            }
        }
        if let Err(e) = crate::linux::unmount(&self.dir_of(&pod.id).join("rootfs")) {
            tracing::warn!(pod = %pod.id, error = %e, "unmounting the pod's root");
        }
    }

    /// Stops a running pod: SIGTERM (or `signal`), then SIGKILL after `timeout`.
    pub fn stop(&self, what: &str, force: bool, timeout: Duration) -> Result<PodRecord> {
        let pod = self.find(what)?;
        if self.state(&pod) == PodState::Exited {
            return Ok(pod);
        }
        let first = if force {
            nix::sys::signal::Signal::SIGKILL
        } else {
            nix::sys::signal::Signal::SIGTERM
        };
        if let Err(e) = container::kill_container(&self.root, &pod.id, first, false) {
            tracing::debug!(pod = %pod.id, error = %e, "signalling the pod");
        }
        let mut deadline = Instant::now() + timeout;
        let mut killed = force;
        let mut gone_since: Option<Instant> = None;
        loop {
            let p = self.load(&pod.id)?;
            if p.exit_code.is_some() {
                return Ok(p);
            }
            let alive = self
                .root
                .load(&pod.id)
                .map(|s| self.root.status(&s) != Status::Stopped)
                .unwrap_or(false);
            if alive {
                gone_since = None;
            } else if gone_since.get_or_insert_with(Instant::now).elapsed() >= RECORD_WAIT {
                // The process is gone but no `rkt run` recorded it (it was killed itself):
                // record and clean up here.
                return self.reap(p);
            }
            if Instant::now() >= deadline {
                if killed {
                    return self.reap(p);
                }
                let _ = container::kill_container(
                    &self.root,
                    &pod.id,
                    nix::sys::signal::Signal::SIGKILL,
                    true,
                );
                killed = true;
                deadline = Instant::now() + RECORD_WAIT * 2;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Records an abandoned pod as exited and frees what it holds.
    fn reap(&self, mut p: PodRecord) -> Result<PodRecord> {
        let _ = container::delete(&self.root, &p.id, true);
        p.exit_code.get_or_insert(-1);
        p.finished.get_or_insert_with(oci_image::now_rfc3339);
        p.finished_at.get_or_insert_with(epoch_secs);
        self.release(&p);
        self.save(&p)?;
        Ok(p)
    }

    /// Removes an exited pod (a running one only with `force`, which stops it first).
    pub fn remove(&self, what: &str, force: bool) -> Result<PodRecord> {
        let pod = self.find(what)?;
        let st = self.state(&pod);
        if st != PodState::Exited && st != PodState::Prepared {
            if !force {
                return Err(RuntimeError::WrongState {
                    id: pod.name.clone(),
                    status: st.to_string(),
                    wanted: "stop it first or use --force",
                });
            }
            self.stop(&pod.id, true, STOP_TIMEOUT)?;
        }
        self.destroy(&pod)?;
        Ok(pod)
    }

    fn destroy(&self, pod: &PodRecord) -> Result<()> {
        let _ = container::delete(&self.root, &pod.id, true);
        self.release(pod);
        let dir = self.dir_of(&pod.id);
        std::fs::remove_dir_all(&dir).map_err(|e| RuntimeError::io(&dir, e))
    }

    /// Removes pods exited longer than `grace` ago (and pods abandoned mid-setup), frees
    /// addresses of pods that no longer exist, then gc's the image store.
    pub fn gc(&self, grace: Duration) -> Result<(Vec<String>, oci_image::store::GcReport)> {
        let now = epoch_secs();
        let mut removed = Vec::new();
        for (p, st) in self.list() {
            let abandoned = st == PodState::Prepared
                && self.root.load(&p.id).is_err()
                && created_long_ago(&self.dir_of(&p.id), grace);
            let expired = st == PodState::Exited
                && p.finished_at
                    .is_none_or(|t| now.saturating_sub(t) >= grace.as_secs());
            if abandoned || expired {
                let p = if p.exit_code.is_none() {
                    self.reap(p)?
                } else {
                    p
                };
                self.destroy(&p)?;
                removed.push(p.id);
            }
        }
        let live: std::collections::HashSet<String> =
            self.list().into_iter().map(|(p, _)| p.id).collect();
        net::Ipam::new(&self.data).with(|a| a.pods.retain(|_, id| live.contains(id)))?;
        let used: std::collections::HashSet<String> =
            self.list().into_iter().map(|(p, _)| p.image_id).collect();
        let report = self.store()?.gc(&used, grace).map_err(image_err)?;
        Ok((removed, report))
    }

    /// The first running pod using image `id`, for refusing to remove it.
    pub fn user_of_image(&self, id: &str) -> Option<String> {
        self.list()
            .into_iter()
            .find(|(p, st)| p.image_id == id && *st != PodState::Exited)
            .map(|(p, _)| p.name)
    }
}

fn created_long_ago(dir: &Path, grace: Duration) -> bool {
    std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age >= grace)
}

/// Deletes a pod that failed during setup.
struct PodCleanup<'a> {
    pods: &'a Pods,
    id: String,
    armed: bool,
}

impl Drop for PodCleanup<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Ok(p) = self.pods.load(&self.id) {
                let _ = self.pods.destroy(&p);
            }
        }
    }
}

/// /etc/hosts, /etc/resolv.conf and /etc/hostname for the pod; (container path, file) pairs.
fn write_etc(dir: &Path, pod: &PodRecord) -> Result<Vec<(String, PathBuf)>> {
    let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n");
    if let Some(ip) = pod.ip {
        hosts.push_str(&format!("{ip}\t{}\n", pod.name));
    } else {
        hosts.push_str(&format!("127.0.1.1\t{}\n", pod.name));
    }
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let files = [
        ("hosts", hosts),
        ("resolv.conf", resolv),
        ("hostname", format!("{}\n", pod.name)),
    ];
    let mut out = Vec::new();
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| RuntimeError::io(&p, e))?;
        out.push((format!("/etc/{name}"), p));
    }
    Ok(out)
}

pub fn image_err(e: oci_image::ImageError) -> RuntimeError {
    RuntimeError::Image(e.to_string())
}

/// Port forwards exist only on the default network.
pub fn check_ports(net: NetMode, ports: &[PortForward]) -> Result<()> {
    if net != NetMode::Default && !ports.is_empty() {
        return Err(RuntimeError::Unsupported(
            "--port needs --net=default (with --net=host the pod uses the host's ports)".into(),
        ));
    }
    Ok(())
}

/// A default pod name from the image name: `busybox-1a2b3c4d`.
pub fn default_name(image: &str, salt: &str) -> String {
    let base = image
        .rsplit('/')
        .next()
        .unwrap_or(image)
        .split([':', '@'])
        .next()
        .unwrap_or("pod")
        .to_string();
    let hex: String = salt
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(8)
        .collect();
    format!("{base}-{hex}")
}
