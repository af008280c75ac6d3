//! systemd, as the agent uses it: unit files under a runtime directory linked into
//! `/run/systemd/system`, Reload, StartUnit/StopUnit with job tracking, unit states, and a
//! signal stream that says when something changed. [`Dbus`] is the real one, over the system bus
//! with zbus (never `systemctl`); [`Simulated`] stands in for it in tests and the benchmark.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use zbus::zvariant::OwnedObjectPath;

/// What systemd says about a unit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitProps {
    /// LoadState.
    pub load: String,
    /// ActiveState.
    pub active: String,
    /// SubState.
    pub sub: String,
}

/// Errors from systemd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The D-Bus call failed.
    #[error("systemd: {0}")]
    Dbus(#[from] zbus::Error),
    /// A unit file could not be written or removed.
    #[error("unit file {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// A job finished with another result than `done`.
    #[error("job for {unit} finished with result {result:?}")]
    Job {
        /// The unit.
        unit: String,
        /// systemd's job result (failed, timeout, dependency, ...).
        result: String,
    },
    /// Something else.
    #[error("{0}")]
    Other(String),
}

/// Result of systemd calls.
pub type Result<T> = std::result::Result<T, Error>;

/// What the agent needs from systemd.
pub trait Systemd: Send + Sync + 'static {
    /// Unit files fleet wrote earlier (survives a fleetd restart): name -> contents.
    fn existing(&self) -> impl Future<Output = Result<BTreeMap<String, String>>> + Send;
    /// Writes a unit file and links it into systemd's runtime unit directory.
    fn write_unit(&self, name: &str, contents: &str) -> impl Future<Output = Result<()>> + Send;
    /// Unlinks and deletes a unit file.
    fn remove_unit(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// Makes systemd re-read unit files.
    fn reload(&self) -> impl Future<Output = Result<()>> + Send;
    /// Starts a unit and waits for its job.
    fn start(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// Stops a unit and waits for its job.
    fn stop(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// The states of these units.
    fn states(
        &self,
        names: &[String],
    ) -> impl Future<Output = Result<BTreeMap<String, UnitProps>>> + Send;
    /// `systemctl status`-like text for a unit.
    fn status(&self, name: &str) -> impl Future<Output = Result<String>> + Send;
    /// The last `lines` journal lines of a unit.
    fn journal(&self, name: &str, lines: u32) -> impl Future<Output = Result<String>> + Send;
    /// Notified whenever systemd signals a change (jobs, unit properties).
    fn changes(&self) -> Arc<Notify>;
}

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const JOB_TIMEOUT: Duration = Duration::from_secs(90);

/// The real systemd over the system bus.
pub struct Dbus {
    conn: zbus::Connection,
    unit_dir: PathBuf,
    link_dir: PathBuf,
    changes: Arc<Notify>,
}

type ListedUnit = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

impl Dbus {
    /// Connects to the system bus, subscribes to systemd's signals and starts forwarding them to
    /// [`Systemd::changes`]. Unit files go to `unit_dir` (e.g. `/run/fleet/units`) and are linked
    /// into `/run/systemd/system`.
    pub async fn connect(unit_dir: &Path) -> Result<Self> {
        let conn = zbus::Connection::system().await?;
        std::fs::create_dir_all(unit_dir).map_err(|e| Error::Io(unit_dir.to_path_buf(), e))?;
        let me = Dbus {
            conn,
            unit_dir: unit_dir.to_path_buf(),
            link_dir: PathBuf::from("/run/systemd/system"),
            changes: Arc::new(Notify::new()),
        };
        me.manager().await?.call_method("Subscribe", &()).await?;
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(DEST)?
            .build();
        let mut stream = zbus::MessageStream::for_match_rule(rule, &me.conn, Some(256)).await?;
        let notify = me.changes.clone();
        tokio::spawn(async move {
            while stream.next().await.is_some() {
                notify.notify_one();
            }
            tracing::warn!("systemd signal stream ended");
        });
        Ok(me)
    }

    async fn manager(&self) -> Result<zbus::Proxy<'static>> {
        Ok(zbus::Proxy::new(&self.conn, DEST, PATH, MANAGER).await?)
    }

    /// Runs a job-creating call and waits for its JobRemoved signal.
    async fn job(&self, method: &str, name: &str) -> Result<()> {
        let manager = self.manager().await?;
        let mut removed = manager.receive_signal("JobRemoved").await?;
        let job: OwnedObjectPath = manager.call(method, &(name, "replace")).await?;
        let wait = async {
            while let Some(msg) = removed.next().await {
                let (_, path, unit, result): (u32, OwnedObjectPath, String, String) =
                    msg.body().deserialize()?;
                if path == job {
                    return if result == "done" {
                        Ok(())
                    } else {
                        Err(Error::Job { unit, result })
                    };
                }
            }
            Err(Error::Other("systemd's signal stream ended".into()))
        };
        match tokio::time::timeout(JOB_TIMEOUT, wait).await {
            Ok(r) => r,
            Err(_) => Err(Error::Other(format!(
                "{method} {name}: no job result in 90 s"
            ))),
        }
    }

    async fn unit_property<T>(&self, name: &str, iface: &str, prop: &str) -> Result<T>
    where
        T: TryFrom<zbus::zvariant::OwnedValue>,
        T::Error: Into<zbus::Error>,
    {
        let path: OwnedObjectPath = self.manager().await?.call("LoadUnit", &(name,)).await?;
        let proxy = zbus::Proxy::new(&self.conn, DEST, path, iface.to_string()).await?;
        Ok(proxy.get_property::<T>(prop).await?)
    }
}

impl Systemd for Dbus {
    async fn existing(&self) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let rd = match std::fs::read_dir(&self.unit_dir) {
            Ok(rd) => rd,
            Err(e) => return Err(Error::Io(self.unit_dir.clone(), e)),
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                out.insert(name, text);
            }
        }
        Ok(out)
    }

    async fn write_unit(&self, name: &str, contents: &str) -> Result<()> {
        let path = self.unit_dir.join(name);
        let tmp = self.unit_dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).map_err(|e| Error::Io(tmp.clone(), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::Io(path.clone(), e))?;
        let file = path.to_string_lossy().into_owned();
        let _: Vec<(String, String, String)> = self
            .manager()
            .await?
            .call("LinkUnitFiles", &(vec![file], true, true))
            .await?;
        Ok(())
    }

    async fn remove_unit(&self, name: &str) -> Result<()> {
        for p in [self.link_dir.join(name), self.unit_dir.join(name)] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Io(p, e)),
            }
        }
        // A failed unit stays listed until reset; fleet forgets it entirely.
        let _ = self
            .manager()
            .await?
            .call_method("ResetFailedUnit", &(name,))
            .await;
        Ok(())
    }

    async fn reload(&self) -> Result<()> {
        self.manager().await?.call_method("Reload", &()).await?;
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<()> {
        self.job("StartUnit", name).await
    }

    async fn stop(&self, name: &str) -> Result<()> {
        self.job("StopUnit", name).await
    }

    async fn states(&self, names: &[String]) -> Result<BTreeMap<String, UnitProps>> {
        if names.is_empty() {
            return Ok(BTreeMap::new());
        }
        let units: Vec<ListedUnit> = self
            .manager()
            .await?
            .call("ListUnitsByNames", &(names,))
            .await?;
        Ok(units
            .into_iter()
            .map(|u| {
                (
                    u.0,
                    UnitProps {
                        load: u.2,
                        active: u.3,
                        sub: u.4,
                    },
                )
            })
            .collect())
    }

    async fn status(&self, name: &str) -> Result<String> {
        const UNIT: &str = "org.freedesktop.systemd1.Unit";
        let names = vec![name.to_string()];
        let props = self.states(&names).await?.remove(name).unwrap_or_default();
        let desc: String = self.unit_property(name, UNIT, "Description").await?;
        let fragment: String = self.unit_property(name, UNIT, "FragmentPath").await?;
        let mut out = format!("● {name} - {desc}\n");
        out += &format!("   Loaded: {} ({fragment})\n", props.load);
        out += &format!("   Active: {} ({})\n", props.active, props.sub);
        if name.ends_with(".service") {
            let svc = "org.freedesktop.systemd1.Service";
            let pid: u32 = self.unit_property(name, svc, "MainPID").await.unwrap_or(0);
            if pid != 0 {
                out += &format!(" Main PID: {pid}\n");
            }
        }
        let journal = self.journal(name, 10).await.unwrap_or_default();
        if !journal.trim().is_empty() {
            out.push('\n');
            out += &journal;
        }
        Ok(out)
    }

    async fn journal(&self, name: &str, lines: u32) -> Result<String> {
        // The journal has no D-Bus API; journalctl reads its files.
        let out = tokio::process::Command::new("journalctl")
            .args([
                "--no-pager",
                "-o",
                "short",
                "-n",
                &lines.to_string(),
                "-u",
                name,
            ])
            .output()
            .await
            .map_err(|e| Error::Other(format!("journalctl: {e}")))?;
        if !out.status.success() {
            return Err(Error::Other(format!(
                "journalctl: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn changes(&self) -> Arc<Notify> {
        self.changes.clone()
    }
}

/// What a simulated unit is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum SimState {
    /// Loaded, not running.
    #[default]
    Dead,
    /// Started.
    Running,
    /// Its start failed.
    Failed,
}

/// An in-memory systemd: units "run" as soon as they are started, except those whose
/// `ExecStart` is `/bin/false` (or `/usr/bin/false`): their start fails, as a broken version
/// of a service would. For tests and the scheduling benchmark's simulated machines.
#[derive(Default)]
pub struct Simulated {
    units: std::sync::Mutex<BTreeMap<String, (String, SimState)>>,
    changes: Arc<Notify>,
}

/// Whether a simulated unit's start fails.
fn fails_to_start(contents: &str) -> bool {
    contents.lines().any(|l| {
        matches!(
            l.trim().strip_prefix("ExecStart="),
            Some("/bin/false" | "/usr/bin/false")
        )
    })
}

impl Simulated {
    /// Names of the units running now.
    pub fn running(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, (_, st))| *st == SimState::Running)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Makes a unit exit, as if its process ended.
    pub fn exit(&self, name: &str) {
        if let Some(u) = self.lock().get_mut(name) {
            u.1 = SimState::Dead;
        }
        self.changes.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (String, SimState)>> {
        self.units.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Systemd for Simulated {
    async fn existing(&self) -> Result<BTreeMap<String, String>> {
        Ok(self
            .lock()
            .iter()
            .map(|(n, (c, _))| (n.clone(), c.clone()))
            .collect())
    }
    async fn write_unit(&self, name: &str, contents: &str) -> Result<()> {
        self.lock().entry(name.to_string()).or_default().0 = contents.to_string();
        Ok(())
    }
    async fn remove_unit(&self, name: &str) -> Result<()> {
        self.lock().remove(name);
        Ok(())
    }
    async fn reload(&self) -> Result<()> {
        Ok(())
    }
    async fn start(&self, name: &str) -> Result<()> {
        let failed = match self.lock().get_mut(name) {
            Some(u) if fails_to_start(&u.0) => {
                u.1 = SimState::Failed;
                true
            }
            Some(u) => {
                u.1 = SimState::Running;
                false
            }
            None => true,
        };
        self.changes.notify_one();
        if failed {
            return Err(Error::Job {
                unit: name.to_string(),
                result: "failed".into(),
            });
        }
        Ok(())
    }
    async fn stop(&self, name: &str) -> Result<()> {
        if let Some(u) = self.lock().get_mut(name) {
            u.1 = SimState::Dead;
        }
        self.changes.notify_one();
        Ok(())
    }
    async fn states(&self, names: &[String]) -> Result<BTreeMap<String, UnitProps>> {
        let units = self.lock();
        let props = |load: &str, active: &str, sub: &str| UnitProps {
            load: load.into(),
            active: active.into(),
            sub: sub.into(),
        };
        Ok(names
            .iter()
            .map(|n| {
                let p = match units.get(n).map(|u| u.1) {
                    Some(SimState::Running) => props("loaded", "active", "running"),
                    Some(SimState::Dead) => props("loaded", "inactive", "dead"),
                    Some(SimState::Failed) => props("loaded", "failed", "failed"),
                    None => props("not-found", "inactive", "dead"),
                };
                (n.clone(), p)
            })
            .collect())
    }
    async fn status(&self, name: &str) -> Result<String> {
        let s = self
            .states(&[name.to_string()])
            .await?
            .remove(name)
            .unwrap_or_default();
        Ok(format!(
            "● {name}\n   Loaded: {}\n   Active: {} ({})\n",
            s.load, s.active, s.sub
        ))
    }
    async fn journal(&self, _name: &str, _lines: u32) -> Result<String> {
        Ok(String::new())
    }
    fn changes(&self) -> Arc<Notify> {
        self.changes.clone()
    }
}
