//! Control groups: the container's cgroup, its limits (memory, pids, cpu, cpuset, block I/O,
//! devices on v1), the freezer (pause/resume), the processes in it (ps, kill --all) and stats.
//!
//! Two layouts, found from /proc/self/mountinfo: the unified v2 hierarchy (a booted corelite
//! node) and v1 controllers, each in its own hierarchy, possibly with v2 beside them at
//! /sys/fs/cgroup/unified ("hybrid", as on the development hosts). With v1 the container joins
//! every hierarchy (named ones such as name=systemd included) at the same relative path, as runc
//! does; limits go to the controller that owns them.
//!
//! Value conversions (v1 shares/weights to v2 weights, swap accounting) are pure functions with
//! unit tests; the rest is file writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;
use serde::Serialize;

use crate::error::{Result, RuntimeError};

/// Where the cgroup filesystems are mounted on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Only the unified hierarchy, mounted here.
    V2(PathBuf),
    /// v1 hierarchies (controllers or "name=..." -> mount point), and v2 beside them if mounted.
    V1 {
        hierarchies: BTreeMap<String, PathBuf>,
        unified: Option<PathBuf>,
    },
}

/// Parses /proc/self/mountinfo text into a layout (`None` when no cgroup filesystem is mounted).
pub fn parse_mountinfo(text: &str) -> Option<Layout> {
    let mut hierarchies = BTreeMap::new();
    let mut unified = None;
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = match pre.split(' ').nth(4) {
            Some(p) => PathBuf::from(p.replace("\\040", " ")),
            None => continue,
        };
        // A hierarchy mounted read-only (as systemd-nspawn mounts the host's v1 controllers
        // in a container) cannot take a new cgroup: it is treated as absent.
        let read_only = pre
            .split(' ')
            .nth(5)
            .is_some_and(|o| o.split(',').any(|o| o == "ro"));
        let mut post = post.split(' ');
        let (fstype, _source, options) = (post.next(), post.next(), post.next().unwrap_or(""));
        match fstype {
            Some("cgroup2") if !read_only => {
                unified.get_or_insert(mount_point);
            }
            Some("cgroup") if !read_only => {
                for opt in options.split(',') {
                    let known = opt.starts_with("name=")
                        || matches!(
                            opt,
                            "cpu"
                                | "cpuacct"
                                | "cpuset"
                                | "memory"
                                | "devices"
                                | "freezer"
                                | "blkio"
                                | "pids"
                                | "net_cls"
                                | "net_prio"
                                | "perf_event"
                                | "hugetlb"
                                | "rdma"
                                | "misc"
                        );
                    if known {
                        hierarchies
                            .entry(opt.to_string())
                            .or_insert(mount_point.clone());
                    }
                }
            }
            _ => {}
        }
    }
    if hierarchies.is_empty() {
        unified.map(Layout::V2)
    } else {
        Some(Layout::V1 {
            hierarchies,
            unified,
        })
    }
}

/// The cgroup path (relative to each hierarchy's root) for a container: the spec's
/// `cgroupsPath`, with systemd's "slice:prefix:name" form turned into the path systemd would
/// use, or `/rkt/<id>` when the spec gives none.
pub fn container_path(spec_path: Option<&Path>, id: &str) -> Result<PathBuf> {
    let Some(p) = spec_path else {
        return Ok(PathBuf::from("/rkt").join(id));
    };
    let s = p.to_string_lossy();
    if !s.starts_with('/') && s.matches(':').count() == 2 {
        let mut parts = s.splitn(3, ':');
        let (slice, prefix, name) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        if !slice.ends_with(".slice") || name.is_empty() {
            return Err(RuntimeError::Unsupported(format!(
                "cgroupsPath {s:?}: expected \"slice:prefix:name\""
            )));
        }
        // "a-b-c.slice" lives at a.slice/a-b.slice/a-b-c.slice.
        let mut path = PathBuf::from("/");
        let stem = slice.trim_end_matches(".slice");
        let mut acc = String::new();
        for part in stem.split('-') {
            if !acc.is_empty() {
                acc.push('-');
            }
            acc.push_str(part);
            path.push(format!("{acc}.slice"));
        }
        let unit = if name.ends_with(".slice") || name.ends_with(".scope") {
            name.to_string()
        } else if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        path.push(unit);
        return Ok(path);
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(RuntimeError::Unsupported(format!(
            "cgroupsPath {s:?} must not contain '..'"
        )));
    }
    // A relative path is taken from the hierarchy's root too (runc puts it under its own
    // cgroup; a runtime started by different parents would scatter containers that way).
    Ok(Path::new("/").join(p))
}

/// cgroup v1 `cpu.shares` (2..262144) to v2 `cpu.weight` (1..10000), as runc converts.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// cgroup v1 `blkio.weight` (10..1000) to v2 `io.weight` (1..10000).
pub fn blkio_to_io_weight(w: u16) -> u64 {
    1 + (u64::from(w).clamp(10, 1000) - 10) * 9999 / 990
}

/// v1's memory+swap limit to v2's swap-only limit (`memory.swap.max`).
pub fn swap_v2(limit: Option<i64>, memsw: i64) -> String {
    match (limit, memsw) {
        (_, -1) => "max".into(),
        (Some(l), s) if l > 0 && s >= l => (s - l).to_string(),
        (_, s) => s.max(0).to_string(),
    }
}

/// Statistics `rkt events --stats` reports (runc's field names where they overlap).
#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub memory_usage_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub memory_max_usage_bytes: Option<u64>,
    pub oom_kills: u64,
    pub pids_current: u64,
    pub pids_limit: Option<u64>,
    pub cpu_usage_ns: u64,
}

/// The container's cgroup in every hierarchy it lives in.
#[derive(Debug, Clone)]
pub struct Cgroup {
    layout: Layout,
    rel: PathBuf,
}

/// Creates a cgroup directory whose parent exists; one that another runtime process created at
/// the same moment (two containers started at once share their parent cgroups) is fine.
fn create_shared_dir(d: &Path) -> Result<()> {
    match std::fs::create_dir(d) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(io_err(d, e)),
        _ => Ok(()),
    }
}

fn io_err(path: &Path, e: std::io::Error) -> RuntimeError {
    RuntimeError::io(path, e)
}

fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    let p = dir.join(file);
    std::fs::write(&p, value).map_err(|e| RuntimeError::Cgroup {
        path: p,
        value: value.to_string(),
        source: e,
    })
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn flat_key(p: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(p)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

impl Cgroup {
    /// This host's layout.
    pub fn detect_layout() -> Result<Layout> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| io_err(Path::new("/proc/self/mountinfo"), e))?;
        parse_mountinfo(&text).ok_or_else(|| {
            RuntimeError::Unsupported("no cgroup filesystem is mounted on this host".into())
        })
    }

    pub fn new(layout: Layout, rel: PathBuf) -> Self {
        Cgroup { layout, rel }
    }

    /// The relative path, as saved in the container's state.
    pub fn rel(&self) -> &Path {
        &self.rel
    }

    fn under(&self, mount: &Path) -> PathBuf {
        mount.join(self.rel.strip_prefix("/").unwrap_or(&self.rel))
    }

    /// Every directory of this cgroup (one per hierarchy).
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V2(m) => vec![self.under(m)],
            Layout::V1 {
                hierarchies,
                unified,
            } => {
                let mut mounts: Vec<&PathBuf> = hierarchies.values().collect();
                mounts.sort();
                mounts.dedup();
                let mut v: Vec<PathBuf> = mounts.into_iter().map(|m| self.under(m)).collect();
                v.extend(unified.iter().map(|u| self.under(u)));
                v
            }
        }
    }

    /// On v1, what a container sees under /sys/fs/cgroup: (directory name, this cgroup's
    /// directory in that hierarchy), e.g. ("cpu,cpuacct", /sys/fs/cgroup/cpu,cpuacct/rkt/web).
    /// Empty on v2, where the container mounts cgroup2 itself.
    pub fn v1_views(&self) -> Vec<(String, PathBuf)> {
        let Layout::V1 {
            hierarchies,
            unified,
        } = &self.layout
        else {
            return Vec::new();
        };
        let mut mounts: Vec<&PathBuf> = hierarchies.values().collect();
        mounts.sort();
        mounts.dedup();
        let mut v: Vec<(String, PathBuf)> = mounts
            .into_iter()
            .chain(unified.iter())
            .filter_map(|m| Some((m.file_name()?.to_str()?.to_string(), self.under(m))))
            .collect();
        v.sort();
        v
    }

    /// The directory holding `controller` (v1), or the unified one (v2).
    fn ctl(&self, controller: &str) -> Option<PathBuf> {
        match &self.layout {
            Layout::V2(m) => Some(self.under(m)),
            Layout::V1 { hierarchies, .. } => hierarchies.get(controller).map(|m| self.under(m)),
        }
    }

    fn is_v2(&self) -> bool {
        matches!(self.layout, Layout::V2(_))
    }

    /// Creates the cgroup and applies the limits. On error nothing is left behind.
    pub fn create(&self, resources: Option<&LinuxResources>) -> Result<()> {
        for d in self.dirs() {
            if let Err(e) = self.make_dir(&d) {
                self.destroy();
                return Err(e);
            }
        }
        if let Some(r) = resources {
            if let Err(e) = self.apply(r) {
                self.destroy();
                return Err(e);
            }
        }
        Ok(())
    }

    fn make_dir(&self, dir: &Path) -> Result<()> {
        if self.is_v2() {
            // Let the controllers reach the new cgroup: enable them in every ancestor.
            if let Layout::V2(root) = &self.layout {
                let wanted =
                    std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
                let mut at = root.clone();
                for c in self.rel.components().skip(1) {
                    for ctl in wanted.split_whitespace() {
                        let _ =
                            std::fs::write(at.join("cgroup.subtree_control"), format!("+{ctl}"));
                    }
                    at.push(c);
                    if !at.exists() {
                        create_shared_dir(&at)?;
                    }
                }
            }
            return Ok(());
        }
        // v1 cpuset: a new cgroup starts with no cpus or memory nodes and refuses tasks until
        // they are copied down from its parent.
        let is_cpuset = matches!(&self.layout, Layout::V1 { hierarchies, .. }
            if hierarchies.get("cpuset").is_some_and(|m| dir.starts_with(m)));
        let mut missing = Vec::new();
        let mut at = dir.to_path_buf();
        while !at.exists() {
            missing.push(at.clone());
            if !at.pop() {
                break;
            }
        }
        for d in missing.into_iter().rev() {
            create_shared_dir(&d)?;
            if is_cpuset {
                if let Some(parent) = d.parent() {
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        // Only where still empty: a container started beside this one may have
                        // made the directory and filled it in already.
                        let own = std::fs::read_to_string(d.join(f)).unwrap_or_default();
                        let v = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
                        if own.trim().is_empty() && !v.trim().is_empty() {
                            write(&d, f, v.trim())?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies new limits to an existing cgroup (`rkt update`).
    pub fn update(&self, r: &LinuxResources) -> Result<()> {
        if self.is_v2() && r.devices().as_ref().is_some_and(|d| !d.is_empty()) {
            // Another program beside the first could only take more away.
            return Err(RuntimeError::Unsupported(
                "changing the device rules of a container on cgroup v2".into(),
            ));
        }
        self.apply(r)
    }

    /// The directory of `ctl`'s hierarchy for this cgroup, or an error naming it.
    fn need(&self, ctl: &str) -> Result<PathBuf> {
        self.ctl(ctl).ok_or_else(|| {
            RuntimeError::Unsupported(format!(
                "the {ctl} cgroup controller is not available here (not mounted, or mounted read-only)"
            ))
        })
    }

    /// Every controller's limits, one function each (v1 and v2 side by side in it).
    fn apply(&self, r: &LinuxResources) -> Result<()> {
        if r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()) {
            return Err(RuntimeError::Unsupported("hugepage limits".into()));
        }
        if r.network().is_some() || r.rdma().as_ref().is_some_and(|x| !x.is_empty()) {
            return Err(RuntimeError::Unsupported(
                "network and rdma cgroup limits".into(),
            ));
        }
        if let Some(m) = r.memory() {
            self.apply_memory(m)?;
        }
        if let Some(p) = r.pids() {
            write(&self.need("pids")?, "pids.max", &max_or(p.limit()))?;
        }
        if let Some(c) = r.cpu() {
            self.apply_cpu(c)?;
            self.apply_cpuset(c)?;
        }
        if let Some(b) = r.block_io() {
            self.apply_block_io(b)?;
        }
        if let Some(u) = r.unified() {
            self.apply_unified(u)?;
        }
        if let Some(rules) = r.devices() {
            self.apply_devices(rules)?;
        }
        Ok(())
    }

    fn apply_memory(&self, m: &oci_spec::runtime::LinuxMemory) -> Result<()> {
        let d = self.need("memory")?;
        if self.is_v2() {
            if let Some(l) = m.limit() {
                write(&d, "memory.max", &max_or(l))?;
            }
            if let Some(s) = m.swap() {
                write(&d, "memory.swap.max", &swap_v2(m.limit(), s))?;
            }
            if let Some(res) = m.reservation() {
                write(&d, "memory.low", &max_or(res))?;
            }
            if m.disable_oom_killer().unwrap_or(false) {
                return Err(RuntimeError::Unsupported(
                    "disableOOMKiller on cgroup v2".into(),
                ));
            }
            return Ok(());
        }
        if let Some(l) = m.limit() {
            write(&d, "memory.limit_in_bytes", &l.to_string())?;
        }
        if let Some(s) = m.swap() {
            if d.join("memory.memsw.limit_in_bytes").exists() {
                write(&d, "memory.memsw.limit_in_bytes", &s.to_string())?;
            } else if s != -1 {
                tracing::warn!("swap accounting is off on this host; swap limit ignored");
            }
        }
        if let Some(res) = m.reservation() {
            write(&d, "memory.soft_limit_in_bytes", &res.to_string())?;
        }
        if let Some(sw) = m.swappiness() {
            write(&d, "memory.swappiness", &sw.to_string())?;
        }
        if m.disable_oom_killer().unwrap_or(false) {
            write(&d, "memory.oom_control", "1")?;
        }
        Ok(())
    }

    fn apply_cpu(&self, c: &oci_spec::runtime::LinuxCpu) -> Result<()> {
        if c.shares().is_none() && c.quota().is_none() && c.period().is_none() {
            return Ok(());
        }
        let d = self.need("cpu")?;
        if self.is_v2() {
            if let Some(s) = c.shares() {
                write(&d, "cpu.weight", &shares_to_weight(s).to_string())?;
            }
            if c.quota().is_some() || c.period().is_some() {
                let quota = c.quota().filter(|q| *q > 0);
                let period = c.period().unwrap_or(100_000);
                let q = quota.map_or("max".to_string(), |q| q.to_string());
                write(&d, "cpu.max", &format!("{q} {period}"))?;
            }
            return Ok(());
        }
        if let Some(s) = c.shares() {
            write(&d, "cpu.shares", &s.to_string())?;
        }
        if let Some(p) = c.period() {
            write(&d, "cpu.cfs_period_us", &p.to_string())?;
        }
        if let Some(q) = c.quota() {
            write(&d, "cpu.cfs_quota_us", &q.to_string())?;
        }
        Ok(())
    }

    fn apply_cpuset(&self, c: &oci_spec::runtime::LinuxCpu) -> Result<()> {
        if c.cpus().is_none() && c.mems().is_none() {
            return Ok(());
        }
        let d = self.need("cpuset")?;
        if let Some(cpus) = c.cpus() {
            write(&d, "cpuset.cpus", cpus)?;
        }
        if let Some(mems) = c.mems() {
            write(&d, "cpuset.mems", mems)?;
        }
        Ok(())
    }

    fn apply_block_io(&self, b: &oci_spec::runtime::LinuxBlockIo) -> Result<()> {
        let v2 = self.is_v2();
        let d = self.need(if v2 { "io" } else { "blkio" })?;
        if let Some(w) = b.weight() {
            if v2 {
                write(&d, "io.weight", &blkio_to_io_weight(w).to_string())?;
            } else {
                write(&d, "blkio.weight", &w.to_string())?;
            }
        }
        let throttles = [
            (b.throttle_read_bps_device(), "read_bps_device", "rbps"),
            (b.throttle_write_bps_device(), "write_bps_device", "wbps"),
            (b.throttle_read_iops_device(), "read_iops_device", "riops"),
            (b.throttle_write_iops_device(), "write_iops_device", "wiops"),
        ];
        for (list, v1, v2_key) in throttles {
            for t in list.iter().flatten() {
                if v2 {
                    let line = format!("{}:{} {v2_key}={}", t.major(), t.minor(), t.rate());
                    write(&d, "io.max", &line)?;
                } else {
                    let line = format!("{}:{} {}", t.major(), t.minor(), t.rate());
                    write(&d, &format!("blkio.throttle.{v1}"), &line)?;
                }
            }
        }
        Ok(())
    }

    fn apply_unified(&self, u: &std::collections::HashMap<String, String>) -> Result<()> {
        if u.is_empty() {
            return Ok(());
        }
        if !self.is_v2() {
            return Err(RuntimeError::Unsupported(
                "linux.resources.unified needs the cgroup v2 layout".into(),
            ));
        }
        let d = self.dirs().remove(0);
        for (k, v) in u {
            if k.contains('/') || k.starts_with('.') {
                return Err(RuntimeError::Unsupported(format!(
                    "unified cgroup key {k:?}"
                )));
            }
            write(&d, k, v)?;
        }
        Ok(())
    }

    /// Device rules: on v1 written to devices.allow/deny in order, then the devices every
    /// container needs; on v2 compiled with those into an eBPF program attached to the
    /// cgroup ([`crate::devfilter`]).
    fn apply_devices(&self, rules: &[oci_spec::runtime::LinuxDeviceCgroup]) -> Result<()> {
        if self.is_v2() {
            if rules.is_empty() {
                return Ok(());
            }
            let mut all = rules.to_vec();
            all.extend(crate::devfilter::default_rules());
            let dir = self.dirs().remove(0);
            return crate::linux::attach_device_program(&dir, &crate::devfilter::program(&all));
        }
        let Some(d) = self.ctl("devices") else {
            if rules.iter().any(|r| !r.allow()) {
                return Err(RuntimeError::Unsupported(
                    "device rules without a writable devices cgroup controller".into(),
                ));
            }
            return Ok(());
        };
        for rule in rules {
            let typ = rule
                .typ()
                .map(|t| t.as_str().to_string())
                .unwrap_or_else(|| "a".into());
            let num = |n: Option<i64>| n.map_or("*".to_string(), |n| n.to_string());
            let line = if typ == "a" {
                "a".to_string()
            } else {
                format!(
                    "{typ} {}:{} {}",
                    num(rule.major()),
                    num(rule.minor()),
                    rule.access().clone().unwrap_or_else(|| "rwm".into())
                )
            };
            write(
                &d,
                if rule.allow() {
                    "devices.allow"
                } else {
                    "devices.deny"
                },
                &line,
            )?;
        }
        // null, zero, full, random, urandom, tty, console, ptmx and the pts devices.
        for line in [
            "c 1:3 rwm",
            "c 1:5 rwm",
            "c 1:7 rwm",
            "c 1:8 rwm",
            "c 1:9 rwm",
            "c 5:0 rwm",
            "c 5:1 rwm",
            "c 5:2 rwm",
            "c 136:* rwm",
            "c *:* m",
            "b *:* m",
        ] {
            write(&d, "devices.allow", line)?;
        }
        Ok(())
    }

    /// Moves `pid` (0 = the caller) into the cgroup in every hierarchy.
    pub fn add(&self, pid: i32) -> Result<()> {
        for d in self.dirs() {
            write(&d, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// Pids of every process in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let d = self.ctl("pids").unwrap_or_else(|| self.dirs().remove(0));
        let mut pids: Vec<i32> = std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Freezes (pause) or thaws (resume) every process, waiting until the kernel says so.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        if self.is_v2() {
            let d = self.dirs().remove(0);
            write(&d, "cgroup.freeze", if frozen { "1" } else { "0" })?;
            let want = if frozen { "frozen 1" } else { "frozen 0" };
            while Instant::now() < deadline {
                let ev = std::fs::read_to_string(d.join("cgroup.events")).unwrap_or_default();
                if ev.lines().any(|l| l == want) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        } else {
            let d = self.ctl("freezer").ok_or_else(|| {
                RuntimeError::Unsupported("the freezer cgroup controller is not mounted".into())
            })?;
            let want = if frozen { "FROZEN" } else { "THAWED" };
            while Instant::now() < deadline {
                write(&d, "freezer.state", want)?;
                let st = std::fs::read_to_string(d.join("freezer.state")).unwrap_or_default();
                if st.trim() == want {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Err(RuntimeError::Init(format!(
            "cgroup {} did not become {} within 10s",
            self.rel.display(),
            if frozen { "frozen" } else { "thawed" }
        )))
    }

    /// Whether the cgroup is frozen now.
    pub fn frozen(&self) -> bool {
        if self.is_v2() {
            let d = self.dirs().remove(0);
            std::fs::read_to_string(d.join("cgroup.events"))
                .unwrap_or_default()
                .lines()
                .any(|l| l == "frozen 1")
        } else {
            self.ctl("freezer").is_some_and(|d| {
                std::fs::read_to_string(d.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
            })
        }
    }

    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        let limit = |v: Option<u64>| v.filter(|l| *l < (1 << 62));
        if self.is_v2() {
            let d = self.dirs().remove(0);
            s.memory_usage_bytes = read_u64(&d.join("memory.current")).unwrap_or(0);
            s.memory_limit_bytes = read_u64(&d.join("memory.max"));
            s.memory_max_usage_bytes = read_u64(&d.join("memory.peak"));
            s.oom_kills = flat_key(&d.join("memory.events"), "oom_kill").unwrap_or(0);
            s.pids_current = read_u64(&d.join("pids.current")).unwrap_or(0);
            s.pids_limit = read_u64(&d.join("pids.max"));
            s.cpu_usage_ns = flat_key(&d.join("cpu.stat"), "usage_usec").unwrap_or(0) * 1000;
        } else {
            if let Some(d) = self.ctl("memory") {
                s.memory_usage_bytes = read_u64(&d.join("memory.usage_in_bytes")).unwrap_or(0);
                s.memory_limit_bytes = limit(read_u64(&d.join("memory.limit_in_bytes")));
                s.memory_max_usage_bytes = read_u64(&d.join("memory.max_usage_in_bytes"));
                s.oom_kills = flat_key(&d.join("memory.oom_control"), "oom_kill").unwrap_or(0);
            }
            if let Some(d) = self.ctl("pids") {
                s.pids_current = read_u64(&d.join("pids.current")).unwrap_or(0);
                s.pids_limit = read_u64(&d.join("pids.max"));
            }
            if let Some(d) = self.ctl("cpuacct") {
                s.cpu_usage_ns = read_u64(&d.join("cpuacct.usage")).unwrap_or(0);
            }
        }
        s
    }

    /// Removes the cgroup from every hierarchy (after its processes are gone). Best effort:
    /// retries while exiting processes still hold it, then gives up quietly.
    pub fn destroy(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        for d in self.dirs() {
            loop {
                match std::fs::remove_dir(&d) {
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        tracing::warn!(dir = %d.display(), error = %e, "could not remove cgroup");
                        break;
                    }
                    _ => break,
                }
            }
        }
    }
}

fn max_or(v: i64) -> String {
    if v <= 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_made_by_another_process_meanwhile_is_fine_a_missing_parent_is_not() {
        let t = tempfile::tempdir().expect("temp dir");
        let d = t.path().join("rkt");
        create_shared_dir(&d).expect("first");
        create_shared_dir(&d).expect("made already");
        let err = create_shared_dir(&t.path().join("no/parent")).expect_err("no parent");
        assert!(err.to_string().contains("no/parent"), "{err}");
    }

    const HYBRID: &str = "\
25 1 0:23 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
26 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
27 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
28 25 0:26 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
29 25 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
30 25 0:28 / /sys/fs/cgroup/net_cls,net_prio rw - cgroup cgroup rw,net_cls,net_prio";

    #[test]
    fn hybrid_and_unified_layouts_are_found() {
        let Some(Layout::V1 {
            hierarchies,
            unified,
        }) = parse_mountinfo(HYBRID)
        else {
            panic!("hybrid layout not found");
        };
        assert_eq!(
            hierarchies["memory"],
            PathBuf::from("/sys/fs/cgroup/memory")
        );
        assert_eq!(
            hierarchies["name=systemd"],
            PathBuf::from("/sys/fs/cgroup/systemd")
        );
        assert_eq!(
            hierarchies["net_prio"],
            PathBuf::from("/sys/fs/cgroup/net_cls,net_prio")
        );
        assert_eq!(unified, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let v2 = "30 1 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate";
        assert_eq!(
            parse_mountinfo(v2),
            Some(Layout::V2(PathBuf::from("/sys/fs/cgroup")))
        );
        assert_eq!(parse_mountinfo("1 0 0:1 / / rw - ext4 /dev/vda rw"), None);
    }

    #[test]
    fn read_only_hierarchies_are_left_out() {
        // What systemd-nspawn gives a container on a hybrid host.
        let nspawn = "\
54 53 0:32 /x /sys/fs/cgroup/memory ro,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,memory
57 53 0:35 / /sys/fs/cgroup/blkio ro,nosuid,nodev,noexec,relatime shared:21 - cgroup cgroup rw,blkio
62 53 0:38 /payload /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:26 - cgroup2 cgroup rw
63 53 0:37 /payload /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:27 - cgroup cgroup rw,name=systemd";
        let Some(Layout::V1 {
            hierarchies,
            unified,
        }) = parse_mountinfo(nspawn)
        else {
            panic!("layout not found");
        };
        assert_eq!(hierarchies.keys().collect::<Vec<_>>(), ["name=systemd"]);
        assert_eq!(unified, Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn v1_dirs_cover_each_hierarchy_once() {
        let layout = parse_mountinfo(HYBRID).expect("layout");
        let cg = Cgroup::new(layout, PathBuf::from("/rkt/a"));
        let dirs = cg.dirs();
        assert_eq!(dirs.len(), 5, "{dirs:?}");
        assert!(dirs.contains(&PathBuf::from("/sys/fs/cgroup/net_cls,net_prio/rkt/a")));
        assert!(dirs.contains(&PathBuf::from("/sys/fs/cgroup/unified/rkt/a")));
        assert_eq!(
            cg.ctl("net_cls"),
            Some(PathBuf::from("/sys/fs/cgroup/net_cls,net_prio/rkt/a"))
        );
    }

    #[test]
    fn cgroup_paths_follow_runc() {
        assert_eq!(
            container_path(None, "web").ok(),
            Some(PathBuf::from("/rkt/web"))
        );
        assert_eq!(
            container_path(Some(Path::new("/libpod_parent/libpod-x")), "x").ok(),
            Some(PathBuf::from("/libpod_parent/libpod-x"))
        );
        assert_eq!(
            container_path(Some(Path::new("machine-rkt.slice:rkt:web")), "web").ok(),
            Some(PathBuf::from(
                "/machine.slice/machine-rkt.slice/rkt-web.scope"
            ))
        );
        assert_eq!(
            container_path(Some(Path::new(":rkt:web")), "web").ok(),
            Some(PathBuf::from("/system.slice/rkt-web.scope"))
        );
        assert!(container_path(Some(Path::new("/a/../b")), "b").is_err());
        assert!(container_path(Some(Path::new("nota:slice:x")), "x").is_err());
    }

    #[test]
    fn v1_values_convert_to_v2() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(1000), 10_000);
        assert_eq!(
            swap_v2(Some(64 << 20), 128 << 20),
            (64u64 << 20).to_string()
        );
        assert_eq!(swap_v2(Some(64 << 20), -1), "max");
        assert_eq!(swap_v2(None, 0), "0");
    }
}
