//! The state machine the raft log replicates into: the MVCC store and the lease table.
//!
//! Entries are applied one by one in log order ([`crate::applier::apply`]); after each batch
//! the node calls [`StateMachine::flush`], which logs the batch with the applied index in the
//! same write group (one fdatasync), publishes the new revision to readers and hands the events
//! to watchers. Only then are proposers answered, so an acknowledged write is readable.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::applier::{self, Applied, Command, RevEvents};
use crate::consensus::node::StateMachine;
use crate::consensus::transport::Registry;
use crate::error::{EtcdError, Result};
use crate::lease::LeaseTable;
use crate::mvcc::MvccStore;

/// Metadata key of the last applied raft index.
pub const APPLIED_META: &str = "raft_applied";
/// Metadata key of the member registry (id -> name, peer URLs), as JSON.
pub const MEMBERS_META: &str = "members";

/// Metadata key of the client URLs the members published: (id, URLs) pairs, as JSON.
pub const CLIENTS_META: &str = "member_clients";

/// Every member's client URLs, as the members published them through the log.
pub type ClientUrls = Arc<parking_lot::RwLock<std::collections::BTreeMap<u64, Vec<String>>>>;

/// The published client URLs as stored in the store's metadata.
pub fn load_clients(store: &MvccStore) -> Result<std::collections::BTreeMap<u64, Vec<String>>> {
    match store.get_meta(CLIENTS_META)? {
        Some(b) => serde_json::from_slice::<Vec<(u64, Vec<String>)>>(&b)
            .map(|v| v.into_iter().collect())
            .map_err(|e| EtcdError::Storage(format!("malformed member client URLs: {e}"))),
        None => Ok(Default::default()),
    }
}

/// Metadata key of the raised alarms: (member id, alarm type) pairs, as JSON.
pub const ALARMS_META: &str = "alarms";

/// The alarms raised in the cluster, kept by the state machine, read by the server.
pub type Alarms = Arc<parking_lot::RwLock<std::collections::BTreeSet<(u64, i32)>>>;

/// The alarms as stored in the store's metadata.
pub fn load_alarms(store: &MvccStore) -> Result<std::collections::BTreeSet<(u64, i32)>> {
    match store.get_meta(ALARMS_META)? {
        Some(b) => serde_json::from_slice(&b)
            .map_err(|e| EtcdError::Storage(format!("malformed alarm list: {e}"))),
        None => Ok(Default::default()),
    }
}

/// Metadata key of the auth state (users, roles, enabled), as JSON.
pub const AUTH_META: &str = "auth";

/// The auth state as stored in the store's metadata.
pub fn load_auth(store: &MvccStore) -> Result<crate::auth::AuthState> {
    match store.get_meta(AUTH_META)? {
        Some(b) => serde_json::from_slice(&b)
            .map_err(|e| EtcdError::Storage(format!("malformed auth state: {e}"))),
        None => Ok(Default::default()),
    }
}

/// What a membership change carries in its context: the member's name and peer URLs.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct MemberContext {
    pub name: String,
    pub peer_urls: Vec<String>,
}

/// A member as the registry lists it: (id, name, peer URLs).
pub type MemberEntry = (u64, String, Vec<String>);

/// Told when a member's peer URL is known (`Some`) or the member is gone (`None`).
pub type PeerHook = Box<dyn Fn(u64, Option<&str>) + Send>;

pub struct EtcdMachine {
    store: Arc<MvccStore>,
    leases: Arc<Mutex<LeaseTable>>,
    events: broadcast::Sender<Arc<RevEvents>>,
    applied: u64,
    committed: Vec<RevEvents>,
    registry: Registry,
    alarms: Alarms,
    clients: ClientUrls,
    on_peer: PeerHook,
    auth: Arc<crate::auth::AuthStore>,
    /// `applied`, readable by the snapshot source.
    applied_shared: Arc<std::sync::atomic::AtomicU64>,
}

/// What the state machine keeps up to date for the server to read: the member registry, the
/// alarms, the members' client URLs and the auth state.
#[derive(Clone)]
pub struct Kept {
    pub registry: Registry,
    pub alarms: Alarms,
    pub clients: ClientUrls,
    pub auth: Arc<crate::auth::AuthStore>,
}

impl EtcdMachine {
    /// The machine over an opened store, resuming after the applied index it recorded.
    pub fn new(
        store: Arc<MvccStore>,
        leases: Arc<Mutex<LeaseTable>>,
        events: broadcast::Sender<Arc<RevEvents>>,
        kept: Kept,
        on_peer: PeerHook,
    ) -> Result<Self> {
        let Kept {
            registry,
            alarms,
            clients,
            auth,
        } = kept;
        let applied = match store.get_meta(APPLIED_META)? {
            Some(b) => u64::from_be_bytes(
                b.as_slice()
                    .try_into()
                    .map_err(|_| EtcdError::Storage("malformed applied index".into()))?,
            ),
            None => 0,
        };
        // The raft log is the durable record of every change: the store's own log need not be
        // synced at every batch (see MvccStore::set_lazy_sync for why a crash stays safe).
        store.set_lazy_sync(true);
        *alarms.write() = load_alarms(&store)?;
        *clients.write() = load_clients(&store)?;
        auth.reset(load_auth(&store)?);
        Ok(EtcdMachine {
            store,
            leases,
            events,
            applied,
            committed: Vec::new(),
            registry,
            alarms,
            clients,
            on_peer,
            auth,
            applied_shared: Arc::new(std::sync::atomic::AtomicU64::new(applied)),
        })
    }
}

impl EtcdMachine {
    /// Stages the registry for the next flush.
    fn stage_registry(&self) {
        let list: Vec<MemberEntry> = self
            .registry
            .read()
            .iter()
            .map(|(id, (n, u))| (*id, n.clone(), u.clone()))
            .collect();
        if let Ok(b) = serde_json::to_vec(&list) {
            self.store.stage_meta(MEMBERS_META, &b);
        }
    }

    /// Stages the published client URLs for the next flush.
    fn stage_clients(&self) {
        let list: Vec<(u64, Vec<String>)> = self
            .clients
            .read()
            .iter()
            .map(|(id, u)| (*id, u.clone()))
            .collect();
        if let Ok(b) = serde_json::to_vec(&list) {
            self.store.stage_meta(CLIENTS_META, &b);
        }
    }
}

/// The registry as stored in the store's metadata.
pub fn load_registry(store: &MvccStore) -> Result<Option<Vec<MemberEntry>>> {
    match store.get_meta(MEMBERS_META)? {
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| EtcdError::Storage(format!("malformed member registry: {e}"))),
        None => Ok(None),
    }
}

impl EtcdMachine {
    /// Whether `user` may still make the write `cmd` (auth on): the check its member made
    /// before proposing, made again at this point of the log, where every member agrees.
    fn check_write(&self, user: &str, cmd: &Command) -> Result<()> {
        let state = self.auth.state();
        if !state.enabled {
            return Ok(());
        }
        let ok = match cmd {
            Command::Txn(t) => {
                let mut needs = Vec::new();
                crate::auth::txn_needs(t, &mut needs);
                needs.iter().all(|(k, e, a)| state.permits(user, k, e, *a))
            }
            Command::LeaseRevoke { id } => {
                let table = self.leases.lock();
                table.get(*id).is_none_or(|l| {
                    l.keys
                        .iter()
                        .all(|k| state.permits(user, k, b"", crate::auth::Access::Write))
                })
            }
            Command::V2(c) => crate::v2store::touched(c.path(), true)
                .iter()
                .all(|(k, e)| state.permits(user, k, e, crate::auth::Access::Write)),
            Command::LeaseGrant { .. } | Command::LeaseRenew { .. } => true,
            _ => state.is_root(user),
        };
        if ok {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }
}

impl StateMachine for EtcdMachine {
    type Output = Result<Applied>;

    fn apply(&mut self, index: u64, data: &[u8]) -> Result<Applied> {
        self.applied = index;
        if data.is_empty() {
            return Err(EtcdError::Storage("no command in this entry".into()));
        }
        let cmd = match Command::decode(data)? {
            Command::AsUser { user, cmd } => {
                self.check_write(&user, &cmd)?;
                *cmd
            }
            cmd => cmd,
        };
        if let Command::Auth(c) = &cmd {
            if let Some(state) = self.auth.apply(c)? {
                let b = serde_json::to_vec(&state).expect("the auth state serializes");
                self.store.stage_meta(AUTH_META, &b);
                tracing::info!(
                    command = c.name(),
                    revision = state.revision,
                    "auth changed"
                );
            }
            return Ok(Applied {
                outcome: applier::Outcome::Auth,
                rev: self.store.read_current(),
            });
        }
        if matches!(cmd, Command::Compact(_)) {
            if crate::failpoint::on("panic-on-compact") {
                panic!("failpoint panic-on-compact");
            }
            // A compaction logs what this batch has staged so far before it removes anything;
            // that group must say which entries it covers, or a crash after it would replay
            // their changes from the log and then apply the entries again (a put twice: one
            // revision more than the other members).
            self.store
                .stage_meta(APPLIED_META, &(index - 1).to_be_bytes());
        }
        if let Command::Alarm {
            activate,
            member,
            alarm,
        } = cmd
        {
            let list = {
                let mut alarms = self.alarms.write();
                if activate {
                    alarms.insert((member, alarm));
                } else {
                    alarms.remove(&(member, alarm));
                }
                alarms.iter().copied().collect::<Vec<_>>()
            };
            if let Ok(b) = serde_json::to_vec(&list) {
                self.store.stage_meta(ALARMS_META, &b);
            }
            if activate {
                tracing::warn!(member = format!("{member:x}"), alarm, "alarm raised");
            } else {
                tracing::info!(member = format!("{member:x}"), alarm, "alarm cleared");
            }
            return Ok(Applied {
                outcome: applier::Outcome::Alarms(list),
                rev: self.store.read_current(),
            });
        }
        if let Command::Publish {
            member,
            name,
            client_urls,
        } = cmd
        {
            // Only members of the cluster publish; a removed member's late publication is dropped.
            let known = self.registry.read().contains_key(&member);
            if known {
                if !name.is_empty() {
                    if let Some(entry) = self.registry.write().get_mut(&member) {
                        entry.0 = name.clone();
                    }
                    self.stage_registry();
                }
                self.clients.write().insert(member, client_urls.clone());
                self.stage_clients();
                tracing::info!(member = format!("{member:x}"), %name, ?client_urls, "member published its attributes");
            }
            return Ok(Applied {
                outcome: applier::Outcome::Published,
                rev: self.store.read_current(),
            });
        }
        applier::apply(&self.store, &self.leases, cmd, &mut self.committed)
    }

    fn flush(&mut self) {
        self.store
            .stage_meta(APPLIED_META, &self.applied.to_be_bytes());
        if let Err(e) = self.store.flush() {
            applier::fatal(e);
        }
        if let Some(last) = self.committed.last() {
            self.store.publish(last.rev);
        }
        self.applied_shared
            .store(self.applied, std::sync::atomic::Ordering::Release);
        for c in self.committed.drain(..) {
            // No receivers is fine: nobody watches.
            let _ = self.events.send(Arc::new(c));
        }
    }

    fn applied(&self) -> u64 {
        self.applied
    }

    fn make_durable(&mut self) {
        if let Err(e) = self.store.sync() {
            applier::fatal(e);
        }
    }

    fn conf_changed(&mut self, _index: u64, cc: &raft::prelude::ConfChange) {
        use raft::prelude::ConfChangeType;
        let id = cc.node_id;
        match cc.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                let ctx: MemberContext = serde_json::from_slice(&cc.context).unwrap_or_default();
                let mut reg = self.registry.write();
                let entry = reg.entry(id).or_default();
                if !ctx.peer_urls.is_empty() {
                    entry.1 = ctx.peer_urls.clone();
                }
                if !ctx.name.is_empty() {
                    entry.0 = ctx.name;
                }
                if let Some(url) = entry.1.first() {
                    (self.on_peer)(id, Some(url));
                }
            }
            ConfChangeType::RemoveNode => {
                self.registry.write().remove(&id);
                if self.clients.write().remove(&id).is_some() {
                    self.stage_clients();
                }
                (self.on_peer)(id, None);
            }
        }
        self.stage_registry();
    }

    fn snapshot_source(&self) -> Option<crate::consensus::node::SnapshotSource> {
        let (store, applied) = (self.store.clone(), self.applied_shared.clone());
        // Called on the raft thread between batches, so the store is exactly at `applied`.
        Some(Box::new(move || {
            let data = store.read().snapshot().ok()?;
            Some((applied.load(std::sync::atomic::Ordering::Acquire), data))
        }))
    }

    fn snapshot(&self) -> Vec<u8> {
        match self.store.read().snapshot() {
            Ok(s) => s,
            Err(e) => applier::fatal(e),
        }
    }

    fn restore(&mut self, index: u64, data: &[u8]) {
        let started = std::time::Instant::now();
        // The member's own identity stays; everything else is the leader's state at `index`.
        let recovered = match self.store.restore_snapshot(data, &["member_id"]) {
            Ok(r) => r,
            Err(e) => applier::fatal(e),
        };
        let mut table = LeaseTable::default();
        let now = std::time::Instant::now();
        for (id, ttl) in recovered.leases {
            table.insert(id, ttl, now);
        }
        for (key, id) in recovered.attached {
            table.attach(id, &key);
        }
        *self.leases.lock() = table;
        match load_alarms(&self.store) {
            Ok(a) => *self.alarms.write() = a,
            Err(e) => tracing::warn!(error = %e, "alarm list in the snapshot is unreadable"),
        }
        match load_clients(&self.store) {
            Ok(c) => *self.clients.write() = c,
            Err(e) => tracing::warn!(error = %e, "client URLs in the snapshot are unreadable"),
        }
        match load_auth(&self.store) {
            Ok(a) => self.auth.reset(a),
            Err(e) => applier::fatal(e),
        }
        // Members added or removed while this one was behind come with the snapshot.
        match load_registry(&self.store) {
            Ok(Some(list)) => {
                let mut reg = self.registry.write();
                for gone in reg.keys().filter(|id| !list.iter().any(|m| m.0 == **id)) {
                    (self.on_peer)(*gone, None);
                }
                reg.clear();
                for (id, name, urls) in list {
                    if let Some(url) = urls.first() {
                        (self.on_peer)(id, Some(url));
                    }
                    reg.insert(id, (name, urls));
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "member registry in the snapshot is unreadable"),
        }
        self.applied = index;
        self.committed.clear();
        self.flush();
        tracing::info!(
            index,
            revision = self.store.published(),
            bytes = data.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "installed a snapshot from the leader"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_api::etcdserverpb::{request_op::Request, PutRequest, RequestOp, TxnRequest};

    fn machine(dir: &std::path::Path) -> EtcdMachine {
        let (store, _) = MvccStore::open(dir, 1 << 20).expect("store");
        EtcdMachine::new(
            Arc::new(store),
            Arc::default(),
            broadcast::channel(16).0,
            Kept {
                registry: Arc::default(),
                alarms: Arc::default(),
                clients: Arc::default(),
                auth: Arc::new(crate::auth::AuthStore::new(
                    Default::default(),
                    std::time::Duration::from_secs(300),
                    4,
                )),
            },
            Box::new(|_, _| {}),
        )
        .expect("machine")
    }

    fn put(key: &str) -> Vec<u8> {
        Command::Txn(TxnRequest {
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        })
        .encode()
    }

    /// A compaction in the middle of a batch logs the entries applied before it; after a crash
    /// right then, the member must resume after those entries, not apply them a second time.
    #[test]
    fn a_crash_after_a_compaction_mid_batch_applies_nothing_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut m = machine(dir.path());
            m.apply(1, &put("a")).expect("put");
            m.flush();
            m.apply(2, &put("b")).expect("put");
            m.apply(3, &put("c")).expect("put");
            m.apply(4, &Command::Compact(2).encode()).expect("compact");
            // The process dies here: the batch's flush never comes.
        }
        let m = machine(dir.path());
        let rev = m.store.read_current();
        assert_eq!(rev, 4, "entries 1-3 wrote revisions 2-4");
        assert!(
            m.applied() >= 3,
            "the store holds entries 2 and 3 but says it applied only up to {}: they would be \
             applied again",
            m.applied()
        );
    }
}
