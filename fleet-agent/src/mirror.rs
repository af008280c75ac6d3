//! A local copy of fleet's keys, kept current by one watch: listed once, then every change
//! arrives as an event (no polling of the key space). The agent and the engine read it; it
//! notifies them when it changes. When the store goes away the copy stays as it was (units keep
//! running) and is re-listed when the store comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kv_client::{Client, Event};
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::model::{KeyKind, Keys, Machine, UnitRecord, UnitState};
use crate::unit::{requirements, Requirements};

/// fleet's state as last seen in the store.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Units by name.
    pub units: BTreeMap<String, UnitRecord>,
    /// Live machines by id.
    pub machines: BTreeMap<String, Machine>,
    /// unit name -> machine id.
    pub schedule: BTreeMap<String, String>,
    /// (machine, unit) -> state.
    pub states: BTreeMap<(String, String), UnitState>,
    /// The active engine's machine id.
    pub leader: Option<String>,
    /// The store revision this snapshot reflects.
    pub revision: i64,
    /// Whether the snapshot has been listed from the store at least once.
    pub synced: bool,
    /// Parsed `[X-Fleet]` requirements of each unit (or why they do not parse), kept with the
    /// units so that passes over the snapshot do not parse again.
    pub requirements: BTreeMap<String, Result<Requirements, String>>,
    /// machine id -> units scheduled there (index of `schedule`).
    pub by_machine: BTreeMap<String, BTreeSet<String>>,
    /// Names of Global units.
    pub globals: BTreeSet<String>,
}

impl Snapshot {
    fn apply(&mut self, keys: &Keys, ev: &Event) {
        let (kv, put) = match ev {
            Event::Put(kv) => (kv, true),
            Event::Delete(kv) => (kv, false),
        };
        self.revision = self.revision.max(kv.mod_revision);
        let Ok(key) = std::str::from_utf8(&kv.key) else {
            return;
        };
        let Some(kind) = keys.classify(key) else {
            return;
        };
        match kind {
            KeyKind::Unit(name) => {
                let rec = put
                    .then(|| serde_json::from_slice::<UnitRecord>(&kv.value))
                    .transpose();
                match rec {
                    Ok(Some(rec)) => {
                        let req = requirements(&rec.options, name).map_err(|e| e.to_string());
                        if req.as_ref().is_ok_and(|r| r.global) {
                            self.globals.insert(name.to_string());
                        } else {
                            self.globals.remove(name);
                        }
                        self.requirements.insert(name.to_string(), req);
                        self.units.insert(name.to_string(), rec);
                    }
                    Ok(None) => {
                        self.units.remove(name);
                        self.requirements.remove(name);
                        self.globals.remove(name);
                    }
                    Err(e) => tracing::warn!(unit = name, error = %e, "undecodable unit record"),
                }
            }
            KeyKind::Machine(id) => {
                if !put {
                    self.machines.remove(id);
                } else {
                    match serde_json::from_slice::<Machine>(&kv.value) {
                        Ok(m) => {
                            self.machines.insert(id.to_string(), m);
                        }
                        Err(e) => tracing::warn!(machine = id, error = %e, "undecodable machine"),
                    }
                }
            }
            KeyKind::Schedule(name) => {
                let old = if put {
                    let m = String::from_utf8_lossy(&kv.value).into_owned();
                    self.by_machine
                        .entry(m.clone())
                        .or_default()
                        .insert(name.to_string());
                    self.schedule.insert(name.to_string(), m)
                } else {
                    self.schedule.remove(name)
                };
                if let Some(old) = old {
                    if self.schedule.get(name) != Some(&old) {
                        if let Some(set) = self.by_machine.get_mut(&old) {
                            set.remove(name);
                            if set.is_empty() {
                                self.by_machine.remove(&old);
                            }
                        }
                    }
                }
            }
            KeyKind::State(machine, name) => {
                let k = (machine.to_string(), name.to_string());
                if !put {
                    self.states.remove(&k);
                } else if let Ok(s) = serde_json::from_slice::<UnitState>(&kv.value) {
                    self.states.insert(k, s);
                }
            }
            KeyKind::EngineLeader => {
                self.leader = put.then(|| String::from_utf8_lossy(&kv.value).into_owned());
            }
            // The engine's own reports, for the API.
            KeyKind::Unschedulable(_) => {}
        }
    }
}

/// A shared, self-updating [`Snapshot`].
#[derive(Clone)]
pub struct Mirror {
    inner: Arc<RwLock<Snapshot>>,
    changed: watch::Sender<u64>,
}

impl Mirror {
    /// Starts mirroring `keys` from the store in the background.
    pub fn start(client: Client, keys: Keys) -> Self {
        let (changed, _) = watch::channel(0);
        let m = Mirror {
            inner: Arc::new(RwLock::new(Snapshot::default())),
            changed,
        };
        let me = m.clone();
        tokio::spawn(async move { me.run(client, keys).await });
        m
    }

    /// A copy of the current snapshot.
    pub fn snapshot(&self) -> Snapshot {
        self.inner.read().clone()
    }

    /// Reads the snapshot in place.
    pub fn read<T>(&self, f: impl FnOnce(&Snapshot) -> T) -> T {
        f(&self.inner.read())
    }

    /// A receiver that changes whenever the snapshot does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Waits until the snapshot reflects store revision `rev` (or `timeout` passes).
    pub async fn wait_for_revision(&self, rev: i64, timeout: Duration) -> bool {
        let mut rx = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.inner.read().revision >= rev {
                return true;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    async fn run(&self, client: Client, keys: Keys) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.sync_and_follow(&client, &keys).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "store watch broke; keeping the last state and retrying");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn sync_and_follow(&self, client: &Client, keys: &Keys) -> kv_client::Result<()> {
        let (kvs, rev) = client.get_prefix(keys.root()).await?;
        let mut snap = Snapshot::default();
        for kv in kvs {
            snap.apply(keys, &Event::Put(kv));
        }
        snap.revision = rev;
        snap.synced = true;
        let mut watch = client.watch_prefix(keys.root(), rev + 1).await?;
        *self.inner.write() = snap;
        self.changed.send_modify(|g| *g += 1);
        tracing::debug!(revision = rev, "mirror synced");
        loop {
            let events = watch.next().await?;
            {
                let mut s = self.inner.write();
                for ev in &events {
                    s.apply(keys, ev);
                }
            }
            self.changed.send_modify(|g| *g += 1);
        }
    }
}
