//! The server core shared by the gRPC services and the HTTP routes: request validation, reads at
//! the published revision (after ReadIndex when linearizable), writes proposed through the raft
//! node, membership, leases' expiry, response headers.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_api::etcdserverpb::{
    request_op::Request, response_op::Response, DeleteRangeRequest, DeleteRangeResponse, Member,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, TxnRequest,
    TxnResponse,
};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};

use crate::applier::{Applied, Command, Outcome, RevEvents};
use crate::auth::Access;
use crate::consensus::node::{Node, NodeConfig, NodeStatus, Transport};
use crate::consensus::storage::RaftLog;
use crate::consensus::transport::Registry;
use crate::error::{EtcdError, Result};
use crate::lease::LeaseTable;
use crate::machine::{EtcdMachine, PeerHook};
use crate::metrics::Metrics;
use crate::mvcc::{txn, MvccStore};
use crate::v2store::{V2Command, V2Outcome};

/// The API version we speak (etcd's v3.5 wire API); reported by Status and /version.
pub const API_VERSION: &str = "3.5.0";
/// Room on the wire for gRPC framing above `max_request_bytes` (etcd's grpcOverheadBytes).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// How often expired leases are looked for.
const LEASE_SWEEP: Duration = Duration::from_millis(250);
/// Watch events buffered per revision-stream subscriber before it must catch up from the store.
const EVENT_BUFFER: usize = 1024;

/// Identity of this member.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub id: u64,
    pub cluster_id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

impl MemberInfo {
    pub fn to_proto(&self) -> Member {
        Member {
            id: self.id,
            name: self.name.clone(),
            peer_ur_ls: self.peer_urls.clone(),
            client_ur_ls: self.client_urls.clone(),
            is_learner: false,
        }
    }
}

/// Default of [`Limits::max_inflight_read_bytes`].
pub const DEFAULT_INFLIGHT_READ_BYTES: usize = 1 << 30;

/// Tunables with etcd's defaults.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest client request accepted (etcd's `--max-request-bytes`, 1.5 MiB).
    pub max_request_bytes: usize,
    /// Backend size at which NOSPACE is raised (etcd's `--quota-backend-bytes`).
    pub quota_backend_bytes: u64,
    /// Interval of progress notifications for watchers that asked for them.
    pub progress_interval: Duration,
    /// Bytes that Range answers being built or sent may hold at once; past it a Range is
    /// refused with etcd's "too many requests" (one answer larger than all of it is served
    /// when it is the only one).
    pub max_inflight_read_bytes: usize,
    /// How long a simple token lives unused (etcd's `--auth-token-ttl`, 300 s).
    pub auth_token_ttl: Duration,
    /// bcrypt's cost for password hashes (etcd's `--bcrypt-cost`, 10).
    pub bcrypt_cost: u32,
    /// Simple tokens or JWTs (etcd's `--auth-token`).
    pub auth_tokens: crate::auth::TokenKind,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 1536 * 1024,
            quota_backend_bytes: DEFAULT_QUOTA_BYTES,
            progress_interval: Duration::from_secs(600),
            max_inflight_read_bytes: DEFAULT_INFLIGHT_READ_BYTES,
            auth_token_ttl: Duration::from_secs(300),
            bcrypt_cost: 10,
            auth_tokens: Default::default(),
        }
    }
}

/// The members a new cluster starts with (etcd's --initial-cluster), by raft id.
#[derive(Debug, Clone, Default)]
pub struct ClusterSpec {
    /// (id, name, peer URLs) of every initial member, this one included.
    pub members: Vec<(u64, String, Vec<String>)>,
    /// `--initial-cluster-state new` (bootstrap) or `existing` (join).
    pub new_cluster: bool,
    /// Raft's tick (heartbeat); elections after 10 ticks.
    pub tick: Duration,
    /// Applied entries between snapshots (etcd's --snapshot-count).
    pub snapshot_count: u64,
}

impl ClusterSpec {
    /// A cluster of just `member`.
    pub fn single(member: &MemberInfo) -> Self {
        ClusterSpec {
            members: vec![(member.id, member.name.clone(), member.peer_urls.clone())],
            new_cluster: true,
            tick: Duration::from_millis(100),
            snapshot_count: 10_000,
        }
    }

    /// First peer URL of every member.
    pub fn peer_urls(&self) -> std::collections::HashMap<u64, String> {
        self.members
            .iter()
            .filter_map(|(id, _, urls)| Some((*id, urls.first()?.clone())))
            .collect()
    }
}

/// etcd's default backend quota, 2 GiB.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// etcd's alarm types (AlarmType in rpc.proto).
pub const ALARM_NOSPACE: i32 = 1;

/// Whether a command adds data (what the quota refuses while NOSPACE is raised, as etcd:
/// puts, transactions with puts, lease grants; deletes, compaction and revokes still work).
fn grows_store(cmd: &Command) -> bool {
    fn txn_puts(t: &etcd_api::etcdserverpb::TxnRequest) -> bool {
        use etcd_api::etcdserverpb::request_op::Request;
        t.success
            .iter()
            .chain(&t.failure)
            .any(|op| match &op.request {
                Some(Request::RequestPut(_)) => true,
                Some(Request::RequestTxn(inner)) => txn_puts(inner),
                _ => false,
            })
    }
    match cmd {
        Command::Txn(t) => txn_puts(t),
        Command::LeaseGrant { .. } => true,
        Command::V2(c) => !matches!(c, crate::v2store::V2Command::Delete { .. }),
        _ => false,
    }
}

/// Handle to the raft node of this member.
pub type RaftNode = Node<Result<Applied>>;

/// One member: the store, replicated through raft.
pub struct EtcdServer {
    pub store: Arc<MvccStore>,
    pub leases: Arc<Mutex<LeaseTable>>,
    pub events: broadcast::Sender<Arc<RevEvents>>,
    pub node: RaftNode,
    pub cluster: ClusterSpec,
    /// Every member's name and peer URLs, kept by the state machine.
    pub registry: Registry,
    /// Raised alarms, kept by the state machine.
    pub alarms: crate::machine::Alarms,
    /// The client URLs each member published, kept by the state machine.
    pub clients: crate::machine::ClientUrls,
    /// Whether peers can reach this member (a lone member started without --initial-cluster
    /// does not open its peer port, so it cannot take new members).
    pub peer_listening: std::sync::atomic::AtomicBool,
    pub member: MemberInfo,
    pub limits: Limits,
    pub metrics: Metrics,
    pub started: Instant,
    /// The backend size the quota check last read, and when (see [`QUOTA_SIZE_TTL`]).
    quota_size: Mutex<Option<(Instant, u64)>>,
    /// What Range answers in flight hold, in KiB (see [`Limits::max_inflight_read_bytes`]).
    read_budget: Arc<Semaphore>,
    read_budget_kib: u32,
    /// Users, roles and tokens, kept by the state machine.
    pub auth: Arc<crate::auth::AuthStore>,
    /// What `/v2/stats/store` counts.
    pub v2_stats: crate::v2_admin::StoreStats,
}

/// Who makes a request: `None` while auth is off (anything goes), else the user a token or a
/// client certificate named.
pub type Caller = Option<String>;

/// A Range answer, encoded, with its share of the read budget: drop it once it is sent.
pub struct EncodedRange {
    pub bytes: Vec<u8>,
    pub permit: OwnedSemaphorePermit,
}

/// How old the backend size a write's quota check compares may be: reading it walks the
/// store's files, which cost close to a tenth of a member's CPU when done for every write.
const QUOTA_SIZE_TTL: std::time::Duration = std::time::Duration::from_millis(100);

/// A member's store, opened before its server so that the member's identity is known before
/// anything is sent to a peer (see [`EtcdServer::open_store`]).
pub struct OpenedStore {
    store: MvccStore,
    recovered: crate::mvcc::store::Recovered,
    identity: Option<(u64, u64)>,
}

impl OpenedStore {
    /// The member id and cluster id fixed at this data directory's first start, if it had one.
    /// They win over anything the flags say: a member restarted with another
    /// `--initial-cluster-token` (or `--initial-cluster-state`) is still the same member, as
    /// with etcd, which ignores the `--initial-cluster*` flags once its data directory exists.
    pub fn identity(&self) -> Option<(u64, u64)> {
        self.identity
    }
}

impl EtcdServer {
    /// Opens the store in `data_dir` (replaying its write-ahead log) and reads the identity it
    /// holds.
    pub fn open_store(data_dir: &std::path::Path, cache_bytes: u64) -> Result<OpenedStore> {
        let (store, recovered) = MvccStore::open(&data_dir.join("member"), cache_bytes)?;
        let identity = match store.get_meta("member_id")? {
            Some(b) if b.len() == 16 => Some((
                u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
                u64::from_be_bytes(b[8..].try_into().expect("8 bytes")),
            )),
            _ => None,
        };
        Ok(OpenedStore {
            store,
            recovered,
            identity,
        })
    }

    /// Starts the member on an opened store and starts its raft node (messages to peers go
    /// through `transport`, which must send as `member`: take its ids from
    /// [`OpenedStore::identity`] when there is one).
    pub fn open(
        data_dir: &std::path::Path,
        opened: OpenedStore,
        member: MemberInfo,
        limits: Limits,
        cluster: ClusterSpec,
        transport: impl Transport,
        on_peer: PeerHook,
    ) -> Result<Arc<Self>> {
        let OpenedStore {
            store,
            recovered,
            identity,
        } = opened;
        // The member id is fixed at the first start, like etcd's.
        match identity {
            Some(ids) => {
                if ids != (member.id, member.cluster_id) {
                    return Err(EtcdError::Storage(format!(
                        "this data directory belongs to member {:x} of cluster {:x}, not to {:x} of {:x}",
                        ids.0, ids.1, member.id, member.cluster_id
                    )));
                }
            }
            None => {
                // The first start: the members it begins with are stored with its identity, so
                // that a restart knows its peers' ids from its data, not from flags that may
                // have changed since (another token gives every member another id).
                if crate::machine::load_registry(&store)?.is_none() {
                    let b = serde_json::to_vec(&cluster.members).map_err(|e| {
                        EtcdError::Storage(format!("encoding the member registry: {e}"))
                    })?;
                    store.set_meta(crate::machine::MEMBERS_META, &b)?;
                }
                let mut b = member.id.to_be_bytes().to_vec();
                b.extend_from_slice(&member.cluster_id.to_be_bytes());
                store.set_meta("member_id", &b)?;
                store.flush()?;
            }
        }
        let mut table = LeaseTable::default();
        let now = Instant::now();
        // Like etcd after a restart or leader change: every lease gets its full TTL again.
        for (id, ttl) in recovered.leases {
            table.insert(id, ttl, now);
        }
        for (key, id) in recovered.attached {
            table.attach(id, &key);
        }
        let store = Arc::new(store);
        let leases = Arc::new(Mutex::new(table));
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let registry: Registry = Arc::default();
        {
            let mut reg = registry.write();
            let stored = crate::machine::load_registry(&store)?;
            let list = stored.unwrap_or_else(|| cluster.members.clone());
            for (id, name, urls) in list {
                if let Some(url) = urls.first() {
                    on_peer(id, Some(url));
                }
                reg.insert(id, (name, urls));
            }
        }
        let alarms: crate::machine::Alarms = Arc::default();
        let clients: crate::machine::ClientUrls = Arc::default();
        let auth = Arc::new(crate::auth::AuthStore::with_tokens(
            Default::default(),
            limits.auth_token_ttl,
            limits.bcrypt_cost,
            limits.auth_tokens.clone(),
        ));
        let machine = EtcdMachine::new(
            store.clone(),
            leases.clone(),
            events.clone(),
            crate::machine::Kept {
                registry: registry.clone(),
                alarms: alarms.clone(),
                clients: clients.clone(),
                auth: auth.clone(),
            },
            on_peer,
        )?;
        let metrics = Metrics::new();
        let read_budget_kib = u32::try_from(limits.max_inflight_read_bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .max(1);
        let log = RaftLog::open(&data_dir.join("member").join("raft"))
            .map_err(|e| EtcdError::Storage(format!("opening the raft log: {e}")))?;
        let cfg = NodeConfig {
            id: member.id,
            // The stored registry: the flags' members at a first start, the restored cluster's
            // for a data directory made by `etcd-lite snapshot restore`.
            initial_voters: if cluster.new_cluster {
                registry.read().keys().copied().collect()
            } else {
                Vec::new()
            },
            tick: cluster.tick,
            snapshot_every: cluster.snapshot_count,
            metrics: metrics.raft.clone(),
            ..NodeConfig::default()
        };
        let node = Node::start(cfg, log, machine, transport)?;
        Ok(Arc::new(EtcdServer {
            store,
            leases,
            events,
            node,
            cluster,
            registry,
            alarms,
            clients,
            peer_listening: Default::default(),
            member,
            limits,
            metrics,
            started: Instant::now(),
            quota_size: Mutex::new(None),
            read_budget: Arc::new(Semaphore::new(read_budget_kib as usize)),
            read_budget_kib,
            auth,
            v2_stats: Default::default(),
        }))
    }

    /// Starts the task that publishes this member's name and client URLs through the log, as
    /// etcd's members do once they run, so that every member lists them. Retried until it
    /// lands; skipped when the cluster already has them.
    pub fn spawn_publisher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let id = this.member.id;
                let published = this.clients.read().get(&id) == Some(&this.member.client_urls)
                    && this.registry.read().get(&id).map(|e| &e.0) == Some(&this.member.name);
                if published {
                    return;
                }
                let cmd = Command::Publish {
                    member: id,
                    name: this.member.name.clone(),
                    client_urls: this.member.client_urls.clone(),
                };
                match this.node.propose(cmd.encode()).await {
                    Ok(Ok(_)) => return,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "publishing this member's attributes")
                    }
                    Err(e) => tracing::debug!(error = %e, "publishing this member's attributes"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    }

    /// Starts the task that revokes expired leases. Only the leader revokes (through the log);
    /// a member that becomes leader first gives every lease its full TTL again, as etcd does,
    /// since it cannot know how long ago the old leader last heard a keep-alive.
    pub fn spawn_lease_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LEASE_SWEEP);
            let mut was_leader = false;
            loop {
                tick.tick().await;
                let leader = this.status().await.is_ok_and(|s| s.is_leader);
                if leader && !was_leader {
                    this.leases.lock().renew_all(Instant::now());
                }
                was_leader = leader;
                if !leader {
                    continue;
                }
                let expired = this.leases.lock().expired(Instant::now());
                for id in expired {
                    match this.submit(Command::LeaseRevoke { id }).await {
                        Ok(_) => {
                            this.metrics.leases_expired.inc();
                            tracing::debug!(lease = id, "lease expired");
                        }
                        Err(EtcdError::LeaseNotFound) => {}
                        Err(e) => tracing::warn!(lease = id, error = %e, "revoking expired lease"),
                    }
                }
            }
        })
    }

    /// The cluster's members as etcd lists them: every voter and learner, with the name and
    /// peer URLs it was added with and the client URLs it published (none before it first ran:
    /// etcd lists such a member as unstarted).
    pub async fn members(&self) -> Result<Vec<Member>> {
        let st = self.status().await?;
        let voters = st.voters.iter().map(|id| (*id, false));
        let learners = st.learners.iter().map(|id| (*id, true));
        Ok(voters
            .chain(learners)
            .map(|(id, is_learner)| {
                if id == self.member.id {
                    return Member {
                        is_learner,
                        ..self.member.to_proto()
                    };
                }
                let reg = self.registry.read();
                let spec = reg.get(&id);
                Member {
                    id,
                    name: spec.map(|m| m.0.clone()).unwrap_or_default(),
                    peer_ur_ls: spec.map(|m| m.1.clone()).unwrap_or_default(),
                    client_ur_ls: self.clients.read().get(&id).cloned().unwrap_or_default(),
                    is_learner,
                }
            })
            .collect())
    }

    /// Adds a voting member with these peer URLs through the log; returns its id.
    pub async fn member_add(&self, peer_urls: Vec<String>, learner: bool) -> Result<u64> {
        if !self
            .peer_listening
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(EtcdError::Unsupported(
                "this member runs as a single member without a peer listener; restart it with \
                 --initial-cluster NAME=PEER_URL (and --listen-peer-urls) to add members"
                    .into(),
            ));
        }
        if peer_urls.is_empty() {
            return Err(EtcdError::InvalidArgument("member needs peer URLs".into()));
        }
        for u in &peer_urls {
            let ok = url::Url::parse(u)
                .is_ok_and(|p| matches!(p.scheme(), "http" | "https") && p.port().is_some());
            if !ok {
                return Err(EtcdError::InvalidArgument(format!(
                    "peer URL {u:?} must be http://host:port or https://host:port"
                )));
            }
            if self
                .registry
                .read()
                .values()
                .any(|(_, urls)| urls.contains(u))
            {
                return Err(EtcdError::Unsupported("Peer URLs already exists".into()));
            }
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&(&peer_urls, self.member.cluster_id, nanos), &mut h);
        let id = std::hash::Hasher::finish(&h).max(1);
        let ctx = crate::machine::MemberContext {
            name: String::new(),
            peer_urls,
        };
        let ctx = serde_json::to_vec(&ctx).map_err(|e| EtcdError::Storage(e.to_string()))?;
        let change = if learner {
            raft::prelude::ConfChangeType::AddLearnerNode
        } else {
            raft::prelude::ConfChangeType::AddNode
        };
        self.node.change_membership(change, id, ctx).await?;
        Ok(id)
    }

    /// MemberPromote: a learner whose log is close to the leader's becomes a voter. Asked of
    /// the leader (the one member that knows how far the learner is).
    pub async fn member_promote(&self, id: u64) -> Result<()> {
        let st = self.status().await?;
        if st.voters.contains(&id) {
            return Err(EtcdError::NotLearner);
        }
        if !st.learners.contains(&id) {
            return Err(EtcdError::MemberNotFound);
        }
        if !st.is_leader {
            return Err(EtcdError::NotLeader);
        }
        let matched = st
            .matched
            .iter()
            .find(|(m, _)| *m == id)
            .map_or(0, |(_, i)| *i);
        // etcd's rule: the learner has at least 90% of the leader's log.
        if (matched as f64) < st.commit as f64 * 0.9 {
            return Err(EtcdError::LearnerNotReady);
        }
        self.node
            .change_membership(raft::prelude::ConfChangeType::AddNode, id, vec![])
            .await?;
        Ok(())
    }

    /// Removes a member through the log. Removing the leader first moves leadership to
    /// another member (as etcd does), so that no request is left with a leader that is gone.
    pub async fn member_remove(&self, id: u64) -> Result<()> {
        let st = self.status().await?;
        if !st.voters.contains(&id) && !st.learners.contains(&id) {
            return Err(EtcdError::MemberNotFound);
        }
        if st.leader == id && st.voters.len() > 1 {
            let target = if id != self.member.id {
                self.member.id
            } else {
                *st.voters.iter().find(|v| **v != id).unwrap_or(&id)
            };
            self.transfer_leadership(target).await?;
        }
        self.node
            .change_membership(raft::prelude::ConfChangeType::RemoveNode, id, vec![])
            .await?;
        Ok(())
    }

    /// Maintenance.MoveLeader: only the leader moves leadership, to a voting member, and answers
    /// once the target leads.
    pub async fn move_leader(&self, target: u64) -> Result<()> {
        let st = self.status().await?;
        if st.leader != self.member.id {
            return Err(EtcdError::NotLeader);
        }
        if !st.voters.contains(&target) {
            return Err(EtcdError::BadLeaderTransferee);
        }
        if target == self.member.id {
            return Ok(());
        }
        self.transfer_leadership(target).await
    }

    /// Asks raft to hand leadership to `target` and waits (5 s at most) until it has.
    async fn transfer_leadership(&self, target: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        self.node.transfer_leader(target);
        let mut asked = Instant::now();
        loop {
            let now = self.status().await?;
            if now.leader == target {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(EtcdError::LeaderTransferTimeout);
            }
            // A transfer raft abandoned (election timeout passed) is asked for again.
            if asked.elapsed() > Duration::from_secs(1) && now.leader == self.member.id {
                self.node.transfer_leader(target);
                asked = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Changes a member's peer URLs through the log.
    pub async fn member_update(&self, id: u64, peer_urls: Vec<String>) -> Result<()> {
        let st = self.status().await?;
        let change = if st.voters.contains(&id) {
            raft::prelude::ConfChangeType::AddNode
        } else if st.learners.contains(&id) {
            // A learner stays one: re-adding it as a learner only updates its URLs.
            raft::prelude::ConfChangeType::AddLearnerNode
        } else {
            return Err(EtcdError::MemberNotFound);
        };
        let name = self
            .registry
            .read()
            .get(&id)
            .map(|m| m.0.clone())
            .unwrap_or_default();
        let ctx = serde_json::to_vec(&crate::machine::MemberContext { name, peer_urls })
            .map_err(|e| EtcdError::Storage(e.to_string()))?;
        self.node.change_membership(change, id, ctx).await?;
        Ok(())
    }

    /// The raft node's view: leader, term, indexes, voters.
    pub async fn status(&self) -> Result<NodeStatus> {
        Ok(self.node.status().await?)
    }

    /// Like etcd, a learner answers only Status and serializable reads: it is not a voter,
    /// so it cannot confirm what is linearizable, and clients are meant to use the voters.
    pub fn refuse_on_learner(&self) -> Result<()> {
        self.admit(&())
    }

    /// etcd's rule for learners, for every API (gRPC, the JSON gateway, its watch): a learner
    /// serves Status and serializable ranges only, and refuses the rest with etcd's error.
    pub fn admit(&self, req: &dyn std::any::Any) -> Result<()> {
        let served_by_learners = req.is::<etcd_api::etcdserverpb::StatusRequest>()
            || req
                .downcast_ref::<RangeRequest>()
                .is_some_and(|r| r.serializable);
        if self.node.is_learner() && !served_by_learners {
            return Err(EtcdError::NotSupportedForLearner);
        }
        Ok(())
    }

    /// A response header at `rev`.
    pub fn header(&self, rev: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.member.cluster_id,
            member_id: self.member.id,
            revision: rev,
            raft_term: self.node.term(),
        })
    }

    fn check_size(&self, m: &impl Message) -> Result<()> {
        if m.encoded_len() > self.limits.max_request_bytes {
            return Err(EtcdError::RequestTooLarge);
        }
        Ok(())
    }

    /// Replicates a write made by `who` (checked again where it applies, see
    /// [`Command::AsUser`]) and returns how it applied.
    pub async fn submit_as(&self, who: &Caller, cmd: Command) -> Result<Applied> {
        match who {
            Some(user) => {
                self.submit(Command::AsUser {
                    user: user.clone(),
                    cmd: Box::new(cmd),
                })
                .await
            }
            None => self.submit(cmd).await,
        }
    }

    /// Who a request comes from: nobody in particular while auth is off; else the user its
    /// token names (`token`, the gRPC metadata or the gateway's Authorization header) or,
    /// without a token, the user its client certificate names (`cert_user`, its CN).
    pub fn caller(&self, token: Option<&str>, cert_user: Option<&str>) -> Result<Caller> {
        if !self.auth.enabled() {
            return Ok(None);
        }
        match (token, cert_user) {
            (Some(t), _) if !t.is_empty() => Ok(Some(self.auth.user_of(t)?)),
            (_, Some(cn)) if self.auth.state().users.contains_key(cn) => Ok(Some(cn.to_string())),
            _ => Err(EtcdError::UserEmpty),
        }
    }

    /// Whether `who` may `access` the key or range (etcd's key/range_end convention).
    pub fn may(&self, who: &Caller, key: &[u8], end: &[u8], access: Access) -> Result<()> {
        match who {
            Some(u) if !self.auth.state().permits(u, key, end, access) => {
                Err(EtcdError::PermissionDenied)
            }
            _ => Ok(()),
        }
    }

    /// Whether `who` may administer the cluster (the root role; anyone while auth is off).
    pub fn may_admin(&self, who: &Caller) -> Result<()> {
        match who {
            Some(u) if !self.auth.state().is_root(u) => Err(EtcdError::PermissionDenied),
            _ => Ok(()),
        }
    }

    /// Replicates a write and returns how it applied.
    pub async fn submit(&self, cmd: Command) -> Result<Applied> {
        if grows_store(&cmd) {
            self.check_quota().await?;
        }
        self.node.propose(cmd.encode()).await?
    }

    /// Refuses writes while NOSPACE is raised; raises it (through the log, for the whole
    /// cluster) when this member's backend has grown past the quota.
    async fn check_quota(&self) -> Result<()> {
        if self.alarms.read().iter().any(|(_, a)| *a == ALARM_NOSPACE) {
            return Err(EtcdError::NoSpace);
        }
        let size = {
            let mut cached = self.quota_size.lock();
            match *cached {
                Some((at, size)) if at.elapsed() < QUOTA_SIZE_TTL => size,
                _ => {
                    let size = self.backend_bytes();
                    *cached = Some((Instant::now(), size));
                    size
                }
            }
        };
        if size <= self.limits.quota_backend_bytes {
            return Ok(());
        }
        tracing::warn!(
            size,
            quota = self.limits.quota_backend_bytes,
            "backend over its quota; raising NOSPACE"
        );
        self.alarm(true, self.member.id, ALARM_NOSPACE).await?;
        Err(EtcdError::NoSpace)
    }

    /// What the quota is compared with: the size of the backend database files.
    pub fn backend_bytes(&self) -> u64 {
        self.store.size_on_disk().max(0) as u64
    }

    /// Raises or clears an alarm through the log; returns the alarms raised afterwards.
    pub async fn alarm(&self, activate: bool, member: u64, alarm: i32) -> Result<Vec<(u64, i32)>> {
        let cmd = Command::Alarm {
            activate,
            member,
            alarm,
        };
        match self.node.propose(cmd.encode()).await??.outcome {
            Outcome::Alarms(list) => Ok(list),
            _ => Err(EtcdError::Storage("unexpected outcome of an alarm".into())),
        }
    }

    /// Waits until a linearizable read may be served here (ReadIndex through the leader).
    pub async fn linearizable(&self) -> Result<()> {
        self.node.read_index().await?;
        Ok(())
    }

    /// Range: serializable reads are local; linearizable ones first confirm with the leader
    /// that this member has applied everything committed when the read arrived.
    pub async fn range(&self, req: &RangeRequest, who: &Caller) -> Result<RangeResponse> {
        self.range_admitted(req, who).await?;
        let view = self.store.read();
        let mut resp = txn::range(&view, req)?;
        resp.header = self.header(view.rev);
        Ok(resp)
    }

    /// What every Range does before it reads: etcd's key check, the count, and for a
    /// linearizable read the wait for the read index.
    async fn range_admitted(&self, req: &RangeRequest, who: &Caller) -> Result<()> {
        if req.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
        self.may(who, &req.key, &req.range_end, Access::Read)?;
        self.metrics.range_total.inc();
        if !req.serializable {
            self.linearizable().await?;
        }
        Ok(())
    }

    /// The keys a Range answers and the header to answer with, after the same checks as
    /// [`Self::range`]: for answers streamed by revision (see [`MvccStore::kv_at`]).
    pub async fn range_plan(
        &self,
        req: &RangeRequest,
        who: &Caller,
    ) -> Result<(txn::RangePlan, ResponseHeader)> {
        self.range_admitted(req, who).await?;
        let view = self.store.read();
        let plan = txn::plan_range(&view, req)?;
        Ok((plan, self.header(view.rev).unwrap_or_default()))
    }

    /// [`Self::range`], answered as the encoded `RangeResponse` after `prefix` zero bytes. The
    /// answer is built once at its exact size from the stored records, and only if the read
    /// budget has room for it; otherwise [`EtcdError::TooManyRequests`].
    pub async fn range_encoded(
        &self,
        req: &RangeRequest,
        prefix: usize,
        who: &Caller,
    ) -> Result<EncodedRange> {
        self.range_admitted(req, who).await?;
        let view = self.store.read();
        let plan = txn::plan_range(&view, req)?;
        let header = self.header(view.rev);
        let mut permit = None;
        let bytes =
            crate::mvcc::answer::encode_range(&view, &plan, header.as_ref(), prefix, |len| {
                let kib = u32::try_from(len.div_ceil(1024))
                    .unwrap_or(u32::MAX)
                    .clamp(1, self.read_budget_kib);
                match self.read_budget.clone().try_acquire_many_owned(kib) {
                    Ok(p) => {
                        permit = Some(p);
                        Ok(())
                    }
                    Err(_) => {
                        self.metrics.range_refused_total.inc();
                        tracing::info!(bytes = len, "range refused: the read budget is spent");
                        Err(EtcdError::TooManyRequests)
                    }
                }
            })?;
        let permit = permit.ok_or_else(|| EtcdError::Storage("read budget not taken".into()))?;
        Ok(EncodedRange { bytes, permit })
    }

    pub async fn put(&self, req: PutRequest, who: &Caller) -> Result<PutResponse> {
        if req.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
        self.check_size(&req)?;
        self.may(who, &req.key, b"", Access::Write)?;
        if req.prev_kv {
            self.may(who, &req.key, b"", Access::Read)?;
        }
        self.metrics.put_total.inc();
        let (mut resp, rev) = self.single(Request::RequestPut(req), who).await?;
        match resp.pop() {
            Some(Response::ResponsePut(mut p)) => {
                p.header = self.header(rev);
                Ok(p)
            }
            _ => Err(EtcdError::Storage("put produced no put response".into())),
        }
    }

    pub async fn delete_range(
        &self,
        req: DeleteRangeRequest,
        who: &Caller,
    ) -> Result<DeleteRangeResponse> {
        if req.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
        self.may(who, &req.key, &req.range_end, Access::Write)?;
        if req.prev_kv {
            self.may(who, &req.key, &req.range_end, Access::Read)?;
        }
        self.metrics.delete_total.inc();
        let (mut resp, rev) = self.single(Request::RequestDeleteRange(req), who).await?;
        match resp.pop() {
            Some(Response::ResponseDeleteRange(mut d)) => {
                d.header = self.header(rev);
                Ok(d)
            }
            _ => Err(EtcdError::Storage(
                "delete produced no delete response".into(),
            )),
        }
    }

    async fn single(&self, op: Request, who: &Caller) -> Result<(Vec<Response>, i64)> {
        let req = TxnRequest {
            compare: vec![],
            success: vec![RequestOp { request: Some(op) }],
            failure: vec![],
        };
        let applied = self.submit_as(who, Command::Txn(req)).await?;
        match applied.outcome {
            Outcome::Txn(t) => Ok((
                t.responses.into_iter().filter_map(|r| r.response).collect(),
                applied.rev,
            )),
            _ => Err(EtcdError::Storage("unexpected outcome".into())),
        }
    }

    pub async fn txn(&self, req: TxnRequest, who: &Caller) -> Result<TxnResponse> {
        self.check_size(&req)?;
        txn::check_txn(&req)?;
        if who.is_some() {
            let mut needs = Vec::new();
            crate::auth::txn_needs(&req, &mut needs);
            for (k, e, a) in &needs {
                self.may(who, k, e, *a)?;
            }
        }
        self.metrics.txn_total.inc();
        let read_only = [&req.success, &req.failure].iter().all(|b| {
            b.iter()
                .all(|op| matches!(op.request, Some(Request::RequestRange(_))))
        });
        if read_only {
            // Read-only transactions need no log entry: a linearizable read at the published
            // revision.
            self.linearizable().await?;
            let view = self.store.read();
            let mut ok = true;
            for c in &req.compare {
                if !txn::compare(&view, c)? {
                    ok = false;
                    break;
                }
            }
            let mut responses = Vec::new();
            for op in if ok { &req.success } else { &req.failure } {
                if let Some(Request::RequestRange(r)) = &op.request {
                    let mut rr = txn::range(&view, r)?;
                    rr.header = self.header(view.rev);
                    responses.push(etcd_api::etcdserverpb::ResponseOp {
                        response: Some(Response::ResponseRange(rr)),
                    });
                }
            }
            return Ok(TxnResponse {
                header: self.header(view.rev),
                succeeded: ok,
                responses,
            });
        }
        let applied = self.submit_as(who, Command::Txn(req)).await?;
        match applied.outcome {
            Outcome::Txn(mut t) => {
                set_headers(&mut t, self.header(applied.rev));
                Ok(*t)
            }
            _ => Err(EtcdError::Storage("unexpected outcome".into())),
        }
    }

    pub async fn compact(&self, rev: i64) -> Result<i64> {
        let applied = self.submit(Command::Compact(rev)).await?;
        Ok(applied.rev)
    }

    pub async fn lease_grant(&self, ttl: i64, id: i64) -> Result<(i64, i64, i64)> {
        if id < 0 {
            return Err(EtcdError::InvalidArgument(
                "lease ID must be positive".into(),
            ));
        }
        let ttl = LeaseTable::effective_ttl(ttl)?;
        let id = if id == 0 {
            let seed = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(1);
            self.leases.lock().new_id(seed ^ self.member.id as i64)
        } else {
            id
        };
        let applied = self.submit(Command::LeaseGrant { id, ttl }).await?;
        match applied.outcome {
            Outcome::LeaseGranted { id, ttl } => Ok((id, ttl, applied.rev)),
            _ => Err(EtcdError::Storage("unexpected outcome".into())),
        }
    }

    pub async fn lease_revoke(&self, id: i64, who: &Caller) -> Result<i64> {
        if who.is_some() {
            let keys: Vec<Vec<u8>> = self
                .leases
                .lock()
                .get(id)
                .map(|l| l.keys.iter().cloned().collect())
                .unwrap_or_default();
            for k in &keys {
                self.may(who, k, b"", Access::Write)?;
            }
        }
        Ok(self.submit_as(who, Command::LeaseRevoke { id }).await?.rev)
    }

    /// Restarts a lease's countdown on every member; `Ok(0)` for an unknown lease, as etcd
    /// answers keep-alives.
    pub async fn lease_keepalive(&self, id: i64) -> Result<i64> {
        if !self.leases.lock().contains(id) {
            return Ok(0);
        }
        match self.submit(Command::LeaseRenew { id }).await {
            Ok(Applied {
                outcome: Outcome::LeaseRenewed { ttl },
                ..
            }) => Ok(ttl),
            Ok(_) => Err(EtcdError::Storage("unexpected outcome".into())),
            Err(EtcdError::LeaseNotFound) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// (remaining TTL, granted TTL, keys) of a lease. An unknown lease reports TTL -1 rather than
    /// an error, as etcd's lease service does (clients print "already expired").
    /// With auth on, listing the keys needs read permission on each of them (etcd 3.5's rule).
    pub fn lease_ttl(&self, id: i64, keys: bool, who: &Caller) -> Result<(i64, i64, Vec<Vec<u8>>)> {
        let table = self.leases.lock();
        let Some(l) = table.get(id) else {
            return Ok((-1, 0, Vec::new()));
        };
        let ks: Vec<Vec<u8>> = if keys {
            l.keys.iter().cloned().collect()
        } else {
            Vec::new()
        };
        for k in &ks {
            self.may(who, k, b"", Access::Read)?;
        }
        Ok((l.remaining(Instant::now()), l.ttl, ks))
    }

    pub fn lease_ids(&self) -> Vec<i64> {
        self.leases.lock().ids()
    }

    pub async fn v2(&self, cmd: V2Command, who: &Caller) -> Result<(V2Outcome, i64)> {
        let applied = self.submit_as(who, Command::V2(cmd)).await?;
        match applied.outcome {
            Outcome::V2(o) => Ok((*o, applied.rev)),
            _ => Err(EtcdError::Storage("unexpected outcome".into())),
        }
    }
}

fn set_headers(t: &mut TxnResponse, h: Option<ResponseHeader>) {
    t.header = h;
    for r in &mut t.responses {
        match &mut r.response {
            Some(Response::ResponseRange(x)) => x.header = h,
            Some(Response::ResponsePut(x)) => x.header = h,
            Some(Response::ResponseDeleteRange(x)) => x.header = h,
            Some(Response::ResponseTxn(x)) => set_headers(x, h),
            None => {}
        }
    }
}
