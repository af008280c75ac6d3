//! The engine: one per cluster, elected through a key under a lease; while it leads it turns
//! the mirror's view into scheduling decisions (see [`crate::scheduler`]) and writes them.

use std::collections::BTreeMap;
use std::time::Duration;

use kv_client::Client;
use tokio::sync::watch;

use crate::mirror::{Mirror, Snapshot};
use crate::model::Keys;
use crate::scheduler::{plan, Decision, Job, View};

/// The scheduler's view of a snapshot. Units whose `[X-Fleet]` section no longer parses are left
/// where they are.
pub fn view_of(snap: &Snapshot) -> View {
    let mut jobs = BTreeMap::new();
    for (name, rec) in &snap.units {
        if let Some(Ok(req)) = snap.requirements.get(name) {
            jobs.insert(
                name.clone(),
                Job {
                    target: rec.desired_state,
                    req: req.clone(),
                },
            );
        }
    }
    View {
        jobs,
        machines: snap
            .machines
            .iter()
            .map(|(id, m)| (id.clone(), m.metadata.clone()))
            .collect(),
        schedule: snap.schedule.clone(),
    }
}

/// Campaigns for the engine role and schedules while leading, until `shutdown` turns true.
pub async fn run(
    client: Client,
    keys: Keys,
    mirror: Mirror,
    me: String,
    ttl: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let ttl_s = ttl.as_secs().max(2) as i64;
    let key = keys.engine_leader();
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Wait until nobody leads (the mirror sees the key go), then try to take it.
        let mut changes = mirror.subscribe();
        while mirror.read(|s| !s.synced || s.leader.as_ref().is_some_and(|l| *l != me)) {
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = shutdown.changed() => return,
            }
        }
        let lease = match client.lease_grant(ttl_s).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "engine campaign: no lease");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match client.create(&key, me.as_bytes().to_vec(), lease).await {
            Ok(true) => {
                tracing::info!(machine = %me, "this machine is now the engine leader");
                crate::metrics::ENGINE_LEADER.set(1);
                lead(&client, &keys, &mirror, lease, ttl, &mut shutdown).await;
                crate::metrics::ENGINE_LEADER.set(0);
                let _ = client.delete_if_value(&key, me.as_bytes()).await;
                let _ = client.lease_revoke(lease).await;
                tracing::info!("engine leadership ended");
            }
            Ok(false) => {
                let _ = client.lease_revoke(lease).await;
                // Somebody else got it; the mirror will show who.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "engine campaign failed");
                let _ = client.lease_revoke(lease).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Schedules while the lease holds.
async fn lead(
    client: &Client,
    keys: &Keys,
    mirror: &Mirror,
    lease: i64,
    ttl: Duration,
    shutdown: &mut watch::Receiver<bool>,
) {
    let mut changes = mirror.subscribe();
    let mut next_renewal = tokio::time::Instant::now() + ttl / 3;
    let mut reported: BTreeMap<String, String> = BTreeMap::new();
    loop {
        if tokio::time::Instant::now() >= next_renewal {
            match client.lease_keep_alive(lease).await {
                Ok(left) if left > 0 => next_renewal = tokio::time::Instant::now() + ttl / 3,
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "engine cannot renew its lease; stepping down");
                    return;
                }
            }
        }
        let (view, revision) = mirror.read(|s| (view_of(s), s.revision));
        let decisions = plan(&view);
        let mut last_rev = 0;
        let mut puts = Vec::new();
        let mut unschedulable: BTreeMap<String, String> = BTreeMap::new();
        for d in decisions {
            match d {
                Decision::Schedule { unit, machine } => {
                    tracing::debug!(%unit, %machine, "scheduled");
                    puts.push((keys.schedule(&unit), machine.into_bytes(), 0));
                }
                Decision::Unschedule {
                    unit,
                    machine,
                    reason,
                } => {
                    tracing::info!(%unit, %machine, %reason, "unscheduled");
                    match client
                        .delete_if_value(&keys.schedule(&unit), machine.as_bytes())
                        .await
                    {
                        Ok(_) => last_rev = last_rev.max(revision + 1),
                        Err(e) => tracing::warn!(%unit, error = %e, "cannot remove schedule"),
                    }
                }
                Decision::Unschedulable { unit, reason } => {
                    unschedulable.insert(unit, reason);
                }
            }
        }
        if !puts.is_empty() {
            let n = puts.len() as u64;
            match client.put_many(puts).await {
                Ok(rev) => {
                    tracing::info!(units = n, "scheduled");
                    crate::metrics::SCHEDULED.inc_by(n);
                    last_rev = last_rev.max(rev);
                }
                Err(e) => tracing::warn!(error = %e, "cannot write schedule"),
            }
        }
        // Why units cannot be placed, logged and stored once per reason (under the engine's
        // lease: a new engine reports afresh); cleared when that changes.
        let mut unrecorded = Vec::new();
        for (unit, reason) in &unschedulable {
            if reported.get(unit) != Some(reason) {
                tracing::warn!(%unit, %reason, "unit cannot be scheduled");
                let key = keys.unschedulable(unit);
                match client.put(&key, reason.clone().into_bytes(), lease).await {
                    Ok(rev) => last_rev = last_rev.max(rev),
                    Err(e) => {
                        tracing::warn!(%unit, error = %e, "cannot record why");
                        unrecorded.push(unit.clone());
                    }
                }
            }
        }
        for unit in reported.keys().filter(|u| !unschedulable.contains_key(*u)) {
            if let Err(e) = client.delete(&keys.unschedulable(unit)).await {
                tracing::warn!(%unit, error = %e, "cannot clear why it was unschedulable");
            }
        }
        reported = unschedulable;
        for unit in unrecorded {
            reported.remove(&unit); // tried again next pass
        }
        if last_rev > 0 {
            // Plan again only on a view that includes our own writes.
            mirror
                .wait_for_revision(last_rev, Duration::from_secs(5))
                .await;
            continue;
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(next_renewal) => {}
            _ = shutdown.changed() => return,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
