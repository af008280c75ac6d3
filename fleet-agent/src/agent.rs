//! The agent: keeps this machine registered under a lease, runs the units placed on it (and the
//! global units its metadata matches) through systemd, and publishes their real state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kv_client::Client;
use tokio::sync::watch;

use crate::mirror::{Mirror, Snapshot};
use crate::model::{Keys, Machine, TargetState, UnitState};
use crate::reconcile::{reconcile, Action, Current, Desired};
use crate::systemd::Systemd;
use crate::unit;

/// The machine's lease, renewed in the background; re-registers when it is lost.
#[derive(Clone)]
pub struct Heartbeat {
    lease: watch::Receiver<i64>,
}

impl Heartbeat {
    /// Registers `machine` under a lease of `ttl` and keeps it alive until `shutdown` turns true.
    pub fn start(
        client: Client,
        keys: Keys,
        machine: Machine,
        ttl: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> Self {
        let (tx, rx) = watch::channel(0i64);
        tokio::spawn(async move {
            let ttl_s = ttl.as_secs().max(2) as i64;
            let value = match serde_json::to_vec(&machine) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode the machine record");
                    return;
                }
            };
            let key = keys.machine(&machine.id);
            'register: loop {
                if *shutdown.borrow() {
                    return;
                }
                let lease = match client.lease_grant(ttl_s).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot register the machine; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = shutdown.changed() => {}
                        }
                        continue;
                    }
                };
                if let Err(e) = client.put(&key, value.clone(), lease).await {
                    tracing::warn!(error = %e, "cannot write the machine record; retrying");
                    continue;
                }
                tracing::info!(machine = %machine.id, lease, ttl = ttl_s, "machine registered");
                let _ = tx.send(lease);
                let mut last_ok = tokio::time::Instant::now();
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(ttl / 3) => {}
                        _ = shutdown.changed() => return,
                    }
                    match client.lease_keep_alive(lease).await {
                        Ok(left) if left > 0 => last_ok = tokio::time::Instant::now(),
                        Ok(_) => {
                            tracing::warn!(lease, "machine lease expired; registering again");
                            continue 'register;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot renew the machine lease");
                            if last_ok.elapsed() > ttl {
                                continue 'register;
                            }
                        }
                    }
                }
            }
        });
        Heartbeat { lease: rx }
    }

    /// The current lease (0 until registered).
    pub fn lease(&self) -> i64 {
        *self.lease.borrow()
    }

    /// Changes whenever the machine registers under a new lease.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.lease.clone()
    }
}

/// The units this machine should have, from the snapshot: those scheduled to it and the global
/// units its metadata matches.
pub fn desired_units(snap: &Snapshot, me: &Machine) -> BTreeMap<String, Desired> {
    let mine = snap.by_machine.get(&me.id).into_iter().flatten();
    let globals = snap.globals.iter().filter(|name| {
        snap.requirements
            .get(*name)
            .is_some_and(|r| r.as_ref().is_ok_and(|r| r.metadata_matches(&me.metadata)))
    });
    let mut out = BTreeMap::new();
    for name in mine.chain(globals) {
        let Some(rec) = snap.units.get(name) else {
            continue;
        };
        if rec.desired_state == TargetState::Inactive || unit::is_template(name) {
            continue;
        }
        out.insert(
            name.clone(),
            Desired {
                hash: unit::hash(&rec.options),
                contents: unit::render(&rec.options),
                target: rec.desired_state,
            },
        );
    }
    out
}

fn is_active(state: &str) -> bool {
    matches!(state, "active" | "activating" | "reloading")
}

/// Runs the agent until `shutdown` turns true. Units keep running when fleetd stops: a fleetd
/// started again on this machine picks them up.
pub async fn run<S: Systemd>(
    client: Client,
    keys: Keys,
    mirror: Mirror,
    sd: Arc<S>,
    me: Machine,
    heartbeat: Heartbeat,
    mut shutdown: watch::Receiver<bool>,
) {
    // What fleet wrote before (a fleetd restart): name -> hash.
    let mut files: BTreeMap<String, String> = match sd.existing().await {
        Ok(found) => found
            .into_iter()
            .filter_map(|(n, text)| unit::parse(&text).ok().map(|o| (n, unit::hash(&o))))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list earlier unit files");
            BTreeMap::new()
        }
    };
    // Units this agent started, by hash. Units found running after a restart count as started.
    let mut started: BTreeMap<String, String> = BTreeMap::new();
    if let Ok(states) = sd.states(&files.keys().cloned().collect::<Vec<_>>()).await {
        for (n, p) in states {
            if is_active(&p.active) {
                if let Some(h) = files.get(&n) {
                    started.insert(n, h.clone());
                }
            }
        }
    }
    let mut published: BTreeMap<String, UnitState> = BTreeMap::new();
    let mut published_lease = 0i64;
    let mut changes = mirror.subscribe();
    let mut lease_rx = heartbeat.subscribe();
    let sd_changes = sd.changes();
    loop {
        let (synced, desired) = mirror.read(|s| (s.synced, desired_units(s, &me)));
        if synced {
            let names: Vec<String> = files
                .keys()
                .chain(desired.keys())
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let states = sd.states(&names).await.unwrap_or_default();
            let current: BTreeMap<String, Current> = files
                .iter()
                .map(|(n, h)| {
                    let active = states.get(n).is_some_and(|p| is_active(&p.active));
                    (
                        n.clone(),
                        Current {
                            hash: h.clone(),
                            active,
                            started: started.get(n) == Some(h),
                        },
                    )
                })
                .collect();
            let actions = reconcile(&desired, &current);
            for action in actions {
                tracing::info!(?action, "agent");
                crate::metrics::AGENT_ACTIONS.inc();
                let res = match &action {
                    Action::Stop(n) => {
                        started.remove(n);
                        sd.stop(n).await
                    }
                    Action::Remove(n) => {
                        files.remove(n);
                        started.remove(n);
                        sd.remove_unit(n).await
                    }
                    Action::Write {
                        name,
                        contents,
                        hash,
                    } => {
                        started.remove(name);
                        let r = sd.write_unit(name, contents).await;
                        if r.is_ok() {
                            files.insert(name.clone(), hash.clone());
                        }
                        r
                    }
                    Action::Reload => sd.reload().await,
                    Action::Start(n) => {
                        // Recorded even when the job fails: restarting is systemd's business.
                        if let Some(h) = files.get(n) {
                            started.insert(n.clone(), h.clone());
                        }
                        sd.start(n).await
                    }
                };
                if let Err(e) = res {
                    tracing::warn!(?action, error = %e, "systemd action failed");
                }
            }
            // Publish what systemd says now, writing only what changed.
            let lease = heartbeat.lease();
            if lease != 0 {
                if lease != published_lease {
                    published.clear();
                    published_lease = lease;
                }
                publish(
                    &client,
                    &keys,
                    &me,
                    &files,
                    &started,
                    sd.as_ref(),
                    &mut published,
                    lease,
                )
                .await;
            }
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = sd_changes.notified() => {}
            _ = lease_rx.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.changed() => return,
        }
        // Let a burst of changes settle into one pass.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn publish<S: Systemd>(
    client: &Client,
    keys: &Keys,
    me: &Machine,
    files: &BTreeMap<String, String>,
    started: &BTreeMap<String, String>,
    sd: &S,
    published: &mut BTreeMap<String, UnitState>,
    lease: i64,
) {
    let names: Vec<String> = files.keys().cloned().collect();
    let states = match sd.states(&names).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read unit states");
            return;
        }
    };
    let mut changed = Vec::new();
    for (name, hash) in files {
        let p = states.get(name).cloned().unwrap_or_default();
        let st = UnitState {
            name: name.clone(),
            hash: hash.clone(),
            machine_id: me.id.clone(),
            load_state: p.load,
            active_state: p.active,
            sub_state: p.sub,
            fleet_state: Some(if started.get(name) == Some(hash) {
                TargetState::Launched
            } else {
                TargetState::Loaded
            }),
        };
        if published.get(name) != Some(&st) {
            changed.push(st);
        }
    }
    if !changed.is_empty() {
        let puts = changed
            .iter()
            .filter_map(|st| {
                let value = serde_json::to_vec(st).ok()?;
                Some((keys.state(&me.id, &st.name), value, lease))
            })
            .collect();
        match client.put_many(puts).await {
            Ok(_) => {
                for st in changed {
                    published.insert(st.name.clone(), st);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot publish unit states"),
        }
    }
    let gone: Vec<String> = published
        .keys()
        .filter(|n| !files.contains_key(*n))
        .cloned()
        .collect();
    for name in gone {
        match client.delete(&keys.state(&me.id, &name)).await {
            Ok(_) => {
                published.remove(&name);
            }
            Err(e) => tracing::warn!(unit = %name, error = %e, "cannot delete unit state"),
        }
    }
}
