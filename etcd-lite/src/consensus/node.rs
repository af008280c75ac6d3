//! One member's raft node: a thread that owns raft-rs's `RawNode` over [`RaftLog`], ticks it,
//! feeds it proposals and peers' messages, and runs the Ready loop: send, persist (one sync
//! per Ready), apply committed entries to the state machine in order, answer whoever waits.
//!
//! Transport-agnostic: messages go out through [`Transport`] and come in via [`Node::step`].
//! A proposal made on a follower is forwarded to the leader by raft itself; the proposer learns
//! its result when the entry is applied locally (entries carry the proposer's id and a request
//! number in their context). Linearizable reads use ReadIndex: the read waits until this member
//! has applied up to the index the leader confirmed.
//!
//! Invariants: nothing is sent that depends on state not yet synced (raft-rs's persisted
//! messages), entries are applied exactly in log order, and every waiter is answered: with the
//! result, with an error when raft drops the proposal, or with a timeout.

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{RawNode, StateRole};
use tokio::sync::oneshot;

use super::storage::RaftLog;
use crate::metrics::RaftMetrics;

/// What the log replicates into: applies entries in order, makes and restores snapshots.
pub trait StateMachine: Send + 'static {
    /// What applying one entry answers to its proposer.
    type Output: Send + 'static;
    /// Applies the entry at `index` (called once per index, in order). `data` is empty for
    /// entries that carry nothing for the state machine (a new leader's no-op, a membership
    /// change): only `applied` moves.
    fn apply(&mut self, index: u64, data: &[u8]) -> Self::Output;
    /// The index of the last applied entry (persisted with the state, so a restart resumes).
    fn applied(&self) -> u64;
    /// The whole state, for a snapshot.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with a snapshot's (taken at `index`).
    fn restore(&mut self, index: u64, data: &[u8]);
    /// Makes a batch of applied entries durable and visible; called after each batch, before
    /// any proposer of the batch is answered.
    fn flush(&mut self) {}
    /// Makes everything applied so far durable (called before the raft log is compacted: a
    /// state machine that syncs lazily must not lose entries the log no longer has).
    fn make_durable(&mut self) {}
    /// A membership change was applied at `index` (before `apply(index, &[])`).
    fn conf_changed(&mut self, _index: u64, _change: &ConfChange) {}
    /// Reads the whole state at the current applied index, when a follower needs a snapshot.
    /// With one, snapshots are cheap (metadata only; the log is compacted behind the durable
    /// state) and their data is made on demand; without one, each snapshot is taken with its data.
    fn snapshot_source(&self) -> Option<SnapshotSource> {
        None
    }
}

/// See [`StateMachine::snapshot_source`]: (applied index, state) now.
pub type SnapshotSource = Box<dyn Fn() -> Option<(u64, Vec<u8>)> + Send>;

/// Sends raft messages to peers (best effort: raft retries).
pub trait Transport: Send + 'static {
    fn send(&self, msgs: Vec<Message>);
}

/// Why a request through the log did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsensusError {
    #[error("no leader")]
    NoLeader,
    /// The leader a read was confirming with lost its term: the read is answered at once
    /// (clients retry) instead of waiting out its timeout.
    #[error("leader changed")]
    LeaderChanged,
    #[error("request timed out")]
    Timeout,
    #[error("proposal dropped")]
    Dropped,
    #[error("raft node stopped")]
    Stopped,
    #[error("raft: {0}")]
    Raft(String),
}

/// Entries the log keeps behind a snapshot for members that are a little behind (etcd's
/// `SnapshotCatchUpEntries`); at most half of [`NodeConfig::snapshot_every`].
const CATCH_UP_ENTRIES: u64 = 5000;

/// How long a ReadIndex round may go unanswered before it is sent again (etcd: 500 ms).
const READ_RETRY: Duration = Duration::from_millis(300);
/// Ticks a pre-candidate waits for a quorum of pre-votes before asking again. A voter still in
/// its leader's lease ignores a pre-vote without answering, and its lease ends within a tick or
/// two of the candidate's own timeout (both count from the leader's last heartbeat): asking
/// again soon, instead of after a whole new election timeout (1–2 s), is what keeps a frozen
/// leader's cluster from going leaderless for seconds. Pre-votes change no term.
const PREVOTE_RETRY_TICKS: usize = 3;

/// Tunables (etcd's defaults: 100 ms heartbeat, 1 s election).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    /// Voters of a new cluster (every member of a new cluster starts with the same list);
    /// empty for a member that joins an existing cluster.
    pub initial_voters: Vec<u64>,
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// How long a proposal or read may wait before it fails with a timeout.
    pub request_timeout: Duration,
    /// Take a snapshot (and compact the log) every this many applied entries.
    pub snapshot_every: u64,
    /// Where the loop records its syncs, applies, proposals and leadership.
    pub metrics: RaftMetrics,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 1,
            initial_voters: vec![1],
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 1,
            request_timeout: Duration::from_secs(7),
            snapshot_every: 10_000,
            metrics: RaftMetrics::default(),
        }
    }
}

/// What the node reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u64,
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub is_leader: bool,
    pub voters: Vec<u64>,
    /// Non-voting members.
    pub learners: Vec<u64>,
    /// On the leader: how far each member's log is known to match (member, index).
    pub matched: Vec<(u64, u64)>,
    /// First index still in the log (what snapshots compacted is below it).
    pub first_index: u64,
}

type Reply<T> = oneshot::Sender<Result<T, ConsensusError>>;

enum Input<O> {
    Propose(Vec<u8>, Reply<O>),
    ConfChange(ConfChange, Reply<NodeStatus>),
    Read(Reply<u64>),
    /// Messages from peers (one batch off the wire: one hand-off to the node's thread).
    Step(Vec<Message>),
    Status(oneshot::Sender<NodeStatus>),
    /// Make everything applied durable, on the node's thread (the state machine's only writer).
    MakeDurable(oneshot::Sender<()>),
    TransferLeader(u64),
    /// The syncer made the Readies up to this number durable.
    Persisted(u64),
    /// Nothing listens on this peer's port any more (its process is gone).
    PeerDown(u64),
    Stop,
}

/// What the node publishes for readers that must not wait on its thread.
#[derive(Debug, Default)]
struct Shared {
    term: std::sync::atomic::AtomicU64,
    leader: std::sync::atomic::AtomicU64,
    /// This member is a learner (non-voting) now.
    learner: std::sync::atomic::AtomicBool,
    /// When this member first saw the current leader (milliseconds since the Unix epoch).
    leader_since_ms: std::sync::atomic::AtomicU64,
}

/// Handle to a running node (cheap to clone).
pub struct Node<O> {
    tx: mpsc::Sender<Input<O>>,
    shared: std::sync::Arc<Shared>,
    /// Stops the node when the last handle goes (the syncer's sender keeps the channel open).
    _stop: std::sync::Arc<StopOnDrop<O>>,
}

struct StopOnDrop<O>(mpsc::Sender<Input<O>>);

impl<O> Drop for StopOnDrop<O> {
    fn drop(&mut self) {
        let _ = self.0.send(Input::Stop);
    }
}

impl<O> Clone for Node<O> {
    fn clone(&self) -> Self {
        Node {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
            _stop: self._stop.clone(),
        }
    }
}

/// Forwards raft-rs's slog records to tracing.
struct SlogToTracing;

impl slog::Drain for SlogToTracing {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, r: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match r.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", r.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", r.msg()),
            slog::Level::Info => tracing::info!(target: "raft", "{}", r.msg()),
            _ => tracing::debug!(target: "raft", "{}", r.msg()),
        }
        Ok(())
    }
}

impl<O: Send + 'static> Node<O> {
    /// Starts the node's thread over `log` (already opened) and `sm`.
    pub fn start<S, T>(
        cfg: NodeConfig,
        mut log: RaftLog,
        sm: S,
        transport: T,
    ) -> Result<Self, ConsensusError>
    where
        S: StateMachine<Output = O>,
        T: Transport,
    {
        let err = |e: raft::Error| ConsensusError::Raft(e.to_string());
        // A state machine behind the log's snapshot starts from the snapshot (the bootstrap
        // snapshot carries no data: an empty state machine is its state).
        let mut sm = sm;
        if let Ok(snap) = raft::Storage::snapshot(&log, 0, 0) {
            let index = snap.get_metadata().index;
            if index > sm.applied() && !snap.data.is_empty() {
                sm.restore(index, &snap.data);
            }
        }
        if log.is_empty() && !cfg.initial_voters.is_empty() {
            // Every member of a new cluster starts from the same snapshot at index 1 holding the
            // initial membership, so the log never starts at 1 and a member that joins later
            // always arrives by snapshot (with the membership it is part of), never by
            // replaying a log whose first entries predate it.
            let cs = raft::prelude::ConfState {
                voters: cfg.initial_voters.clone(),
                ..Default::default()
            };
            let mut meta = raft::prelude::SnapshotMetadata {
                index: 1,
                term: 1,
                ..Default::default()
            };
            meta.set_conf_state(cs);
            let mut snap = Snapshot::default();
            snap.set_metadata(meta);
            log.apply_snapshot(snap).map_err(err)?;
            log.sync().map_err(err)?;
        }
        // The commit index is synced lazily (it can be learnt again), so after a crash the
        // state machine may be ahead of it: what was applied was committed, so move it up.
        let applied = sm.applied();
        if applied > log.hard_state().commit {
            let last = raft::Storage::last_index(&log).map_err(err)?;
            if applied > last {
                return Err(ConsensusError::Raft(format!(
                    "the state machine applied {applied} but the log ends at {last}"
                )));
            }
            log.set_commit(applied).map_err(err)?;
            log.sync().map_err(err)?;
        }
        let rc = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied: sm.applied(),
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        rc.validate().map_err(err)?;
        let logger = slog::Logger::root(SlogToTracing, slog::o!("raft_id" => cfg.id));
        let lazy = sm.snapshot_source();
        let lazy_snapshots = lazy.is_some();
        if let Some(src) = lazy {
            log.set_snapshot_source(src);
        }
        let mut raw = RawNode::new(&rc, log, &logger).map_err(err)?;
        // A cluster of one needs no election timeout to find its leader.
        if raw.store().conf_state().voters == [cfg.id] {
            raw.campaign().map_err(err)?;
        }
        let (tx, rx) = mpsc::channel();
        let shared = std::sync::Arc::new(Shared::default());
        shared.learner.store(
            raw.store().conf_state().learners.contains(&cfg.id),
            std::sync::atomic::Ordering::Relaxed,
        );
        let (jobs, job_rx) = mpsc::channel();
        let sync_thread = {
            let (log, done, fsync) = (
                raw.store().syncer(),
                tx.clone(),
                cfg.metrics.wal_fsync.clone(),
            );
            std::thread::Builder::new()
                .name(format!("raft-sync-{}", cfg.id))
                .spawn(move || sync_loop(log, job_rx, done, fsync))
                .map_err(|e| ConsensusError::Raft(e.to_string()))?
        };
        let mut driver = Driver::new(cfg, raw, sm, transport);
        driver.lazy_snapshots = lazy_snapshots;
        driver.shared = shared.clone();
        driver.syncer = Some(jobs);
        driver.sync_thread = Some(sync_thread);
        std::thread::Builder::new()
            .name(format!("raft-{}", driver.cfg.id))
            .spawn(move || driver.run(rx))
            .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        Ok(Node {
            tx: tx.clone(),
            shared,
            _stop: std::sync::Arc::new(StopOnDrop(tx)),
        })
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Input<O>) -> Result<T, ConsensusError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .map_err(|_| ConsensusError::Stopped)?;
        rx.await.map_err(|_| ConsensusError::Stopped)?
    }

    /// Replicates `data` and returns what applying it answered.
    pub async fn propose(&self, data: Vec<u8>) -> Result<O, ConsensusError> {
        self.ask(|r| Input::Propose(data, r)).await
    }

    /// Waits until this member may serve a linearizable read; returns the applied index.
    pub async fn read_index(&self) -> Result<u64, ConsensusError> {
        self.ask(Input::Read).await
    }

    /// Adds or removes a voter through the log.
    pub async fn change_membership(
        &self,
        change: ConfChangeType,
        node: u64,
        context: Vec<u8>,
    ) -> Result<NodeStatus, ConsensusError> {
        let mut cc = ConfChange::default();
        cc.set_change_type(change);
        cc.node_id = node;
        cc.context = context.into();
        self.ask(|r| Input::ConfChange(cc, r)).await
    }

    /// Whether this member is a learner (as of the last membership change it applied).
    pub fn is_learner(&self) -> bool {
        self.shared
            .learner
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The current term, as last seen by the node's thread.
    pub fn term(&self) -> u64 {
        self.shared.term.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// When this member first saw the current leader (or lost the last one).
    pub fn leader_since(&self) -> std::time::SystemTime {
        let ms = self
            .shared
            .leader_since_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)
    }

    /// The current leader's id (0: none known), as last seen by the node's thread.
    pub fn leader(&self) -> u64 {
        self.shared
            .leader
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Hands a message from a peer to raft.
    pub fn step(&self, m: Message) {
        self.step_all(vec![m]);
    }

    /// Hands messages from peers to raft, in order.
    pub fn step_all(&self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            let _ = self.tx.send(Input::Step(msgs));
        }
    }

    pub async fn status(&self) -> Result<NodeStatus, ConsensusError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Status(reply))
            .map_err(|_| ConsensusError::Stopped)?;
        rx.await.map_err(|_| ConsensusError::Stopped)
    }

    /// Makes everything applied so far durable ([`StateMachine::make_durable`]), on the node's
    /// thread: request handlers never write the state machine themselves.
    pub async fn make_durable(&self) -> Result<(), ConsensusError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::MakeDurable(reply))
            .map_err(|_| ConsensusError::Stopped)?;
        rx.await.map_err(|_| ConsensusError::Stopped)
    }

    /// Asks the leader to hand leadership to `to`.
    pub fn transfer_leader(&self, to: u64) {
        let _ = self.tx.send(Input::TransferLeader(to));
    }

    /// Tells the node that peer `id`'s process is gone: its port refuses connections (the
    /// transport finds that out when a stream to it breaks). A follower whose leader that is
    /// campaigns within a few ticks instead of waiting out the election timeout. Only timing
    /// changes: the election itself runs as always (pre-vote, majorities, log checks), and a
    /// peer merely cut off by the network times out instead of refusing, so it is not reported.
    pub fn peer_down(&self, id: u64) {
        let _ = self.tx.send(Input::PeerDown(id));
    }

    /// Stops the thread (pending requests fail with `Stopped`).
    pub fn stop(&self) {
        let _ = self.tx.send(Input::Stop);
    }
}

struct Pending<T> {
    reply: Reply<T>,
    deadline: Instant,
}

/// A Ready handed over but not yet known to be durable.
struct InFlight {
    number: u64,
    /// It wrote entries, a snapshot or a new term or vote: the syncer must cover it.
    needs_sync: bool,
    /// Messages that may leave only once it is durable (a follower's acks, votes).
    messages: Vec<Message>,
}

/// The syncer thread: makes the log durable for the newest Ready asked, while the node goes
/// on (the next Readies' entries are written and the leader's appends sent meanwhile; raft's
/// thesis, 10.2.1). One sync answers every request that queued up during the previous one.
fn sync_loop<O>(
    log: super::storage::LogSyncer,
    jobs: mpsc::Receiver<u64>,
    done: mpsc::Sender<Input<O>>,
    fsync: prometheus::Histogram,
) {
    while let Ok(mut number) = jobs.recv() {
        while let Ok(n) = jobs.try_recv() {
            number = number.max(n);
        }
        let t = Instant::now();
        if let Err(e) = log.sync() {
            tracing::error!(error = %e, "syncing the raft log failed; stopping the node");
            std::process::exit(70);
        }
        fsync.observe(t.elapsed().as_secs_f64());
        if done.send(Input::Persisted(number)).is_err() {
            break;
        }
    }
}

struct Driver<S: StateMachine, T> {
    cfg: NodeConfig,
    raw: RawNode<RaftLog>,
    sm: S,
    transport: T,
    /// The append counter of each peer (`RaftMetrics::appends_sent`), looked up once.
    appends_sent: HashMap<u64, prometheus::IntCounter>,
    next_request: u64,
    proposals: HashMap<u64, Pending<S::Output>>,
    /// Proposals this follower forwarded to its leader, with the term they were sent in: when
    /// the term moves on before their entry reached this member's log, the leader that had
    /// them is gone (see `Driver::fail_forwarded`).
    forwarded: HashMap<u64, u64>,
    /// Proposals that arrived while no leader was known, proposed once one is.
    leaderless: Vec<(Vec<u8>, Pending<S::Output>)>,
    conf_changes: HashMap<u64, Pending<NodeStatus>>,
    /// Read requests waiting for a ReadIndex answer, by request number.
    reads: HashMap<u64, Vec<Pending<u64>>>,
    /// Reads that arrived since the last loop turn: they share one ReadIndex round.
    read_batch: Vec<Pending<u64>>,
    /// When each ReadIndex round in `reads` was sent: raft drops a request it cannot answer
    /// (no leader yet, or a new leader that has not committed an entry of its term), so a
    /// round unanswered after [`READ_RETRY`] is sent again, as etcd does.
    read_sent: HashMap<u64, Instant>,
    /// Confirmed reads waiting for the state machine to reach their index.
    ready_reads: Vec<(u64, Pending<u64>)>,
    applied_since_snapshot: u64,
    /// A membership change was applied since the last snapshot.
    conf_changed: bool,
    /// This member was removed from the cluster: it stops taking part.
    removed: bool,
    /// Snapshot data comes from the state machine on demand (see `snapshot_source`).
    lazy_snapshots: bool,
    shared: std::sync::Arc<Shared>,
    /// Ready numbers for the syncer thread to make durable.
    syncer: Option<mpsc::Sender<u64>>,
    sync_thread: Option<std::thread::JoinHandle<()>>,
    /// Readies in order, until they are durable and their messages sent.
    in_flight: std::collections::VecDeque<InFlight>,
    /// The newest Ready number known to be durable.
    synced_upto: u64,
}

/// Where this process starts numbering its requests: the wall clock in milliseconds, shifted
/// past any count one process can reach in a millisecond of its life. The log may hold entries
/// this member proposed before a restart, with their numbers in their context; they commit
/// and apply after the restart like any other, and must not answer a new request that reused
/// a number (as etcd's request ids, which carry a timestamp for the same reason).
fn first_request_number() -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    (ms & ((1 << 43) - 1)) << 20
}

/// Entry context: proposer id and request number (16 bytes).
fn context(node: u64, request: u64) -> Vec<u8> {
    let mut c = node.to_be_bytes().to_vec();
    c.extend_from_slice(&request.to_be_bytes());
    c
}

fn parse_context(c: &[u8]) -> Option<(u64, u64)> {
    if c.len() != 16 {
        return None;
    }
    Some((
        u64::from_be_bytes(c[..8].try_into().ok()?),
        u64::from_be_bytes(c[8..].try_into().ok()?),
    ))
}

impl<S: StateMachine, T: Transport> Driver<S, T> {
    fn new(cfg: NodeConfig, raw: RawNode<RaftLog>, sm: S, transport: T) -> Self {
        Driver {
            cfg,
            raw,
            sm,
            transport,
            appends_sent: HashMap::new(),
            next_request: first_request_number(),
            proposals: HashMap::new(),
            forwarded: HashMap::new(),
            leaderless: Vec::new(),
            conf_changes: HashMap::new(),
            reads: HashMap::new(),
            read_batch: Vec::new(),
            read_sent: HashMap::new(),
            ready_reads: Vec::new(),
            applied_since_snapshot: 0,
            conf_changed: false,
            removed: false,
            lazy_snapshots: false,
            shared: Default::default(),
            syncer: None,
            sync_thread: None,
            in_flight: Default::default(),
            synced_upto: 0,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Input<S::Output>>) {
        let mut next_tick = Instant::now() + self.cfg.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(input) => {
                    self.handle(input);
                    // Take whatever else is queued before one Ready: a batch, one sync.
                    while let Ok(more) = rx.try_recv() {
                        if matches!(more, Input::Stop) {
                            return;
                        }
                        self.handle(more);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.note_term();
            self.resend_reads();
            if !self.read_batch.is_empty() {
                // One heartbeat round confirms leadership for every read that is waiting.
                let batch = std::mem::take(&mut self.read_batch);
                self.send_read(batch);
            }
            if Instant::now() >= next_tick {
                self.raw.tick();
                self.retry_prevote();
                next_tick += self.cfg.tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + self.cfg.tick;
                }
                self.expire();
            }
            if !self.leaderless.is_empty() && self.raw.raft.leader_id != raft::INVALID_ID {
                for (data, p) in std::mem::take(&mut self.leaderless) {
                    if p.reply.is_closed() {
                        self.cfg.metrics.proposals_failed.inc();
                        continue;
                    }
                    self.propose(data, p);
                }
            }
            self.note_term();
            self.note_leader();
            if self.raw.has_ready() {
                if let Err(e) = self.on_ready() {
                    tracing::error!(error = %e, "raft storage failed; stopping the node");
                    std::process::exit(70);
                }
            }
            if self.removed {
                // Like etcd: a removed member must not keep leading or campaigning.
                tracing::warn!(
                    id = self.cfg.id,
                    "this member was removed from the cluster; raft stopped"
                );
                break;
            }
        }
        // The log closes when the syncer lets go of it too.
        self.syncer = None;
        if let Some(t) = self.sync_thread.take() {
            let _ = t.join();
        }
        tracing::info!(id = self.cfg.id, "raft node stopped");
    }

    /// Sends one ReadIndex round for `batch`.
    fn send_read(&mut self, batch: Vec<Pending<u64>>) {
        let req = self.next_request;
        self.next_request += 1;
        self.raw.read_index(context(self.cfg.id, req));
        self.reads.insert(req, batch);
        self.read_sent.insert(req, Instant::now());
    }

    /// Sends again the ReadIndex rounds that got no answer within [`READ_RETRY`] (raft drops
    /// what it cannot answer yet); their reads keep their deadlines.
    fn resend_reads(&mut self) {
        let reads = &self.reads;
        self.read_sent.retain(|req, _| reads.contains_key(req));
        let now = Instant::now();
        let stale: Vec<u64> = self
            .read_sent
            .iter()
            .filter(|(_, at)| now.duration_since(**at) >= READ_RETRY)
            .map(|(req, _)| *req)
            .collect();
        for req in stale {
            self.read_sent.remove(&req);
            if let Some(batch) = self.reads.remove(&req) {
                self.send_read(batch);
            }
        }
    }

    /// Publishes the term; when it moved, the ReadIndex requests in flight went to a leader
    /// of an older term and no answer will come for them: they fail now ("leader changed",
    /// which clients retry) instead of waiting out their timeout.
    fn note_term(&mut self) {
        let term = self.raw.raft.term;
        let old = self
            .shared
            .term
            .swap(term, std::sync::atomic::Ordering::Relaxed);
        if old != term && !self.reads.is_empty() {
            for p in std::mem::take(&mut self.reads).into_values().flatten() {
                let _ = p.reply.send(Err(ConsensusError::LeaderChanged));
            }
        }
        if old != term {
            self.fail_forwarded(term);
        }
    }

    /// Answers now, with a timeout (the outcome is unknown), the proposals forwarded in an
    /// older term whose entries never reached this member's log: the leader they went to lost
    /// its term (most often it died), so they commit only if it had replicated them to the new
    /// leader, which then sends them here. Without this their callers wait out the request
    /// timeout while the new leader already takes writes.
    fn fail_forwarded(&mut self, term: u64) {
        self.forwarded
            .retain(|req, _| self.proposals.contains_key(req));
        if self.forwarded.values().all(|t| *t >= term) {
            return;
        }
        let id = self.cfg.id;
        let from = self.sm.applied() + 1;
        let in_log: std::collections::HashSet<u64> = self
            .raw
            .raft
            .raft_log
            .entries(from, None, raft::GetEntriesContext::empty(false))
            .unwrap_or_default()
            .iter()
            .filter_map(|e| parse_context(&e.context))
            .filter(|(node, _)| *node == id)
            .map(|(_, req)| req)
            .collect();
        let lost: Vec<u64> = self
            .forwarded
            .iter()
            .filter(|(req, t)| **t < term && !in_log.contains(req))
            .map(|(req, _)| *req)
            .collect();
        for req in &lost {
            self.forwarded.remove(req);
            if let Some(p) = self.proposals.remove(req) {
                let _ = p.reply.send(Err(ConsensusError::Timeout));
            }
        }
        if !lost.is_empty() {
            self.cfg.metrics.proposals_failed.inc_by(lost.len() as u64);
            tracing::debug!(
                count = lost.len(),
                term,
                "proposals forwarded to a leader of an older term answered with a timeout"
            );
        }
    }

    /// Publishes who leads (for the server and the metrics).
    fn note_leader(&mut self) {
        let leader = self.raw.raft.leader_id;
        let old = self
            .shared
            .leader
            .swap(leader, std::sync::atomic::Ordering::Relaxed);
        let m = &self.cfg.metrics;
        if old != leader {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            self.shared
                .leader_since_ms
                .store(now, std::sync::atomic::Ordering::Relaxed);
            if leader != raft::INVALID_ID {
                m.leader_changes.inc();
            }
        }
        m.has_leader.set(i64::from(leader != raft::INVALID_ID));
        let learner = self
            .raw
            .store()
            .conf_state()
            .learners
            .contains(&self.cfg.id);
        self.shared
            .learner
            .store(learner, std::sync::atomic::Ordering::Relaxed);
        m.is_leader
            .set(i64::from(self.raw.raft.state == StateRole::Leader));
    }

    fn handle(&mut self, input: Input<S::Output>) {
        let deadline = Instant::now() + self.cfg.request_timeout;
        match input {
            Input::Propose(data, reply) => self.propose(data, Pending { reply, deadline }),
            Input::ConfChange(cc, reply) => {
                let req = self.next_request;
                self.next_request += 1;
                // The change's own context is the caller's; ours rides in the entry context.
                match self.raw.propose_conf_change(context(self.cfg.id, req), cc) {
                    Ok(()) => {
                        self.conf_changes.insert(req, Pending { reply, deadline });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ConsensusError::Raft(e.to_string())));
                    }
                }
            }
            Input::Read(reply) => {
                if self.raw.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(ConsensusError::NoLeader));
                    return;
                }
                self.read_batch.push(Pending { reply, deadline });
            }
            Input::Step(msgs) => {
                for m in msgs {
                    // Messages for another node are dropped.
                    if m.to != self.cfg.id {
                        tracing::warn!(
                            to = m.to,
                            from = m.from,
                            "raft message for another member dropped"
                        );
                        continue;
                    }
                    if m.get_msg_type() == MessageType::MsgAppend {
                        self.cfg.metrics.appends_received.inc();
                    }
                    if let Err(e) = self.raw.step(m) {
                        tracing::debug!(error = %e, "raft message refused");
                    }
                }
            }
            Input::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Input::MakeDurable(reply) => {
                self.sm.make_durable();
                let _ = reply.send(());
            }
            Input::TransferLeader(to) => self.raw.transfer_leader(to),
            Input::Persisted(number) => {
                self.synced_upto = self.synced_upto.max(number);
                self.release();
            }
            Input::PeerDown(id) => self.on_peer_down(id),
            Input::Stop => {}
        }
    }

    /// See [`Node::peer_down`]: moves the election timer of a follower whose leader is gone
    /// to within 1–3 ticks of campaigning (the jitter keeps followers that learn it together
    /// from splitting the vote), and past the leader lease, so that it grants the others'
    /// votes at once too.
    fn on_peer_down(&mut self, id: u64) {
        let r = &mut self.raw.raft;
        if r.state != StateRole::Follower || r.leader_id != id {
            return;
        }
        let jitter = rand::random::<usize>() % 3;
        let soon = r
            .election_timeout()
            .max(r.randomized_election_timeout().saturating_sub(1 + jitter));
        if r.election_elapsed < soon {
            tracing::info!(
                leader = %format!("{id:x}"),
                "the leader's peer port refuses connections; campaigning without waiting out the election timeout"
            );
            r.election_elapsed = soon;
        }
    }

    /// A pre-candidate without its quorum after [`PREVOTE_RETRY_TICKS`] asks again at the next
    /// tick.
    fn retry_prevote(&mut self) {
        let r = &mut self.raw.raft;
        if r.state == StateRole::PreCandidate && r.election_elapsed >= PREVOTE_RETRY_TICKS {
            r.election_elapsed = r.randomized_election_timeout().saturating_sub(1);
        }
    }

    /// Proposes now, or keeps the proposal until a leader is known (or its deadline passes).
    fn propose(&mut self, data: Vec<u8>, p: Pending<S::Output>) {
        if self.raw.raft.leader_id == raft::INVALID_ID {
            self.leaderless.push((data, p));
            return;
        }
        let req = self.next_request;
        self.next_request += 1;
        match self.raw.propose(context(self.cfg.id, req), data) {
            Ok(()) => {
                if self.raw.raft.state != StateRole::Leader {
                    self.forwarded.insert(req, self.raw.raft.term);
                }
                self.proposals.insert(req, p);
            }
            Err(raft::Error::ProposalDropped) => {
                self.cfg.metrics.proposals_failed.inc();
                let _ = p.reply.send(Err(ConsensusError::Dropped));
            }
            Err(e) => {
                self.cfg.metrics.proposals_failed.inc();
                let _ = p.reply.send(Err(ConsensusError::Raft(e.to_string())));
            }
        }
    }

    fn status(&self) -> NodeStatus {
        let r = &self.raw.raft;
        NodeStatus {
            id: self.cfg.id,
            leader: r.leader_id,
            term: r.term,
            commit: r.raft_log.committed,
            applied: self.sm.applied(),
            is_leader: r.state == StateRole::Leader,
            voters: {
                let mut v = self.raw.store().conf_state().voters.clone();
                v.sort_unstable();
                v
            },
            learners: {
                let mut v = self.raw.store().conf_state().learners.clone();
                v.sort_unstable();
                v
            },
            matched: if r.state == StateRole::Leader {
                r.prs().iter().map(|(id, pr)| (*id, pr.matched)).collect()
            } else {
                Vec::new()
            },
            first_index: raft::Storage::first_index(self.raw.store()).unwrap_or(0),
        }
    }

    /// Fails requests that waited too long (their entry may still commit later).
    fn expire(&mut self) {
        let now = Instant::now();
        fn sweep<X>(m: &mut HashMap<u64, Pending<X>>, now: Instant) {
            let late: Vec<u64> = m
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(k, _)| *k)
                .collect();
            for k in late {
                if let Some(p) = m.remove(&k) {
                    let _ = p.reply.send(Err(ConsensusError::Timeout));
                }
            }
        }
        let before = self.proposals.len() + self.leaderless.len();
        sweep(&mut self.proposals, now);
        if self.forwarded.len() > self.proposals.len() {
            self.forwarded
                .retain(|req, _| self.proposals.contains_key(req));
        }
        sweep(&mut self.conf_changes, now);
        let late: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, b)| b.iter().any(|p| p.deadline <= now))
            .map(|(k, _)| *k)
            .collect();
        for k in late {
            for p in self.reads.remove(&k).into_iter().flatten() {
                let _ = p.reply.send(Err(ConsensusError::Timeout));
            }
        }
        // Waiting for a leader: a request whose caller is gone (its deadline passed, see
        // crate::deadline) is dropped and never proposed.
        let (late, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.leaderless)
            .into_iter()
            .partition(|(_, p)| p.deadline <= now || p.reply.is_closed());
        self.leaderless = keep;
        for (_, p) in late {
            let _ = p.reply.send(Err(ConsensusError::NoLeader));
        }
        let failed = before.saturating_sub(self.proposals.len() + self.leaderless.len());
        self.cfg.metrics.proposals_failed.inc_by(failed as u64);
        let (late, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ready_reads)
            .into_iter()
            .partition(|(_, p)| p.deadline <= now);
        self.ready_reads = keep;
        for (_, p) in late {
            let _ = p.reply.send(Err(ConsensusError::Timeout));
        }
    }

    /// Counts the append messages among `msgs`, by addressee (v2's stats show them).
    fn count_appends(&mut self, msgs: &[Message]) {
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgAppend {
                let sent = &self.cfg.metrics.appends_sent;
                self.appends_sent
                    .entry(m.to)
                    .or_insert_with(|| sent.with_label_values(&[&format!("{:x}", m.to)]))
                    .inc();
            }
        }
    }

    fn on_ready(&mut self) -> raft::Result<()> {
        let mut rd = self.raw.ready();
        // A leader may send before it syncs (raft's thesis, 10.2.1); followers' replies wait.
        if !rd.messages().is_empty() {
            let msgs = rd.take_messages();
            self.count_appends(&msgs);
            self.transport.send(msgs);
        }
        let snapshot = !rd.snapshot().is_empty();
        if snapshot {
            let snap: Snapshot = rd.snapshot().clone();
            let index = snap.get_metadata().index;
            self.raw.mut_store().apply_snapshot(snap.clone())?;
            // The bootstrap snapshot carries no data: nothing to restore from it.
            if !snap.data.is_empty() {
                self.sm.restore(index, &snap.data);
                self.fail_skipped();
            }
        }
        for rs in rd.take_read_states() {
            if let Some((node, req)) = parse_context(&rs.request_ctx) {
                if node == self.cfg.id {
                    for p in self.reads.remove(&req).into_iter().flatten() {
                        self.ready_reads.push((rs.index, p));
                    }
                }
            }
        }
        // Committed entries are durable ones (raft-rs hands out no more than it was told
        // were persisted). They apply after this Ready's entries are handed to the syncer, so
        // that the fsync (and a follower's ack waiting for it) overlaps the apply.
        let committed = rd.take_committed_entries();
        if !rd.entries().is_empty() {
            self.raw.mut_store().append(rd.entries())?;
        }
        // A hard state that only moved the commit index needs no sync (raft's must_sync):
        // the commit index is learnt again after a restart.
        if let Some(hs) = rd.hs() {
            self.raw.mut_store().set_hard_state(hs.clone())?;
        }
        let number = rd.number();
        let needs_sync = rd.must_sync();
        let messages = rd.take_persisted_messages();
        // The log already holds this Ready's entries, so raft may read them back from now on.
        self.raw.advance_append_async(rd);
        self.in_flight.push_back(InFlight {
            number,
            needs_sync,
            messages,
        });
        if snapshot {
            // A snapshot replaces the log: made durable here, with everything before it.
            let t = Instant::now();
            self.raw.store().sync()?;
            self.cfg
                .metrics
                .wal_fsync
                .observe(t.elapsed().as_secs_f64());
            self.synced_upto = number;
        } else if needs_sync {
            let sent = self.syncer.as_ref().map(|s| s.send(number).is_ok());
            if sent != Some(true) {
                return Err(raft::Error::Store(raft::StorageError::Other(
                    "the raft log's syncer is not running".into(),
                )));
            }
        }
        self.release();
        self.apply(committed)?;
        self.raw.advance_apply();
        self.note_progress();
        self.answer_reads();
        self.maybe_snapshot()?;
        Ok(())
    }

    /// After a snapshot replaced the state: this member's own proposals may have been applied
    /// inside it, where nobody learns their results. Their callers get a timeout (the outcome
    /// is unknown, as for any timeout) now instead of after the request timeout. A proposal
    /// that commits later still applies; only its answer is gone.
    fn fail_skipped(&mut self) {
        let n = self.proposals.len();
        for (_, p) in self.proposals.drain() {
            let _ = p.reply.send(Err(ConsensusError::Timeout));
        }
        for (_, p) in self.conf_changes.drain() {
            let _ = p.reply.send(Err(ConsensusError::Timeout));
        }
        self.cfg.metrics.proposals_failed.inc_by(n as u64);
        if n > 0 {
            tracing::info!(
                proposals = n,
                "a snapshot replaced the state: pending proposals answered with a timeout"
            );
        }
    }

    /// Tells raft which Readies are durable, in order, and sends the messages that waited for
    /// them. A Ready that needed no sync is released as soon as every one before it is.
    fn release(&mut self) {
        let mut last = None;
        while let Some(f) = self.in_flight.front() {
            if f.needs_sync && f.number > self.synced_upto {
                break;
            }
            let f = self.in_flight.pop_front().expect("front exists");
            if !f.messages.is_empty() {
                self.count_appends(&f.messages);
                self.transport.send(f.messages);
            }
            last = Some(f.number);
        }
        if let Some(number) = last {
            self.raw.on_persist_ready(number);
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> raft::Result<()> {
        let started = Instant::now();
        let mut answers = Vec::new();
        let mut conf_answers = Vec::new();
        let mut any = false;
        for e in entries {
            if e.index <= self.sm.applied() {
                continue; // already in the state machine (restart replay)
            }
            any = true;
            let who = parse_context(&e.context).filter(|(node, _)| *node == self.cfg.id);
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    // A new leader's empty entry takes an index but carries nothing.
                    let out = self.sm.apply(e.index, &e.data);
                    if !e.data.is_empty() {
                        self.applied_since_snapshot += 1;
                    }
                    if let Some((_, req)) = who {
                        self.forwarded.remove(&req);
                        if let Some(p) = self.proposals.remove(&req) {
                            answers.push((p.reply, out));
                        }
                    }
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data)
                        .map_err(|x| raft::Error::Store(raft::StorageError::Other(x.into())))?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.raw.mut_store().set_conf_state(cs)?;
                    self.conf_changed = true;
                    if cc.get_change_type() == ConfChangeType::RemoveNode
                        && cc.node_id == self.cfg.id
                    {
                        self.removed = true;
                    }
                    self.sm.conf_changed(e.index, &cc);
                    // The state machine records the index too, so a restart does not redo it.
                    self.sm.apply(e.index, &[]);
                    if let Some(p) = who.and_then(|(_, req)| self.conf_changes.remove(&req)) {
                        conf_answers.push(p.reply);
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    tracing::warn!(
                        index = e.index,
                        "joint consensus changes are not used; skipped"
                    );
                    self.sm.apply(e.index, &[]);
                }
            }
        }
        if any {
            self.sm.flush();
            self.cfg
                .metrics
                .backend_commit
                .observe(started.elapsed().as_secs_f64());
        }
        // Before anyone is answered, so that what they see next is at least this.
        self.note_progress();
        for (reply, out) in answers {
            let _ = reply.send(Ok(out));
        }
        for reply in conf_answers {
            let _ = reply.send(Ok(self.status()));
        }
        Ok(())
    }

    fn note_progress(&self) {
        let m = &self.cfg.metrics;
        m.proposals_committed
            .set(self.raw.raft.raft_log.committed as i64);
        m.proposals_applied.set(self.sm.applied() as i64);
        m.proposals_pending.set(self.proposals.len() as i64);
    }

    fn answer_reads(&mut self) {
        let applied = self.sm.applied();
        let (done, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ready_reads)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.ready_reads = wait;
        for (_, p) in done {
            let _ = p.reply.send(Ok(applied));
        }
    }

    fn maybe_snapshot(&mut self) -> raft::Result<()> {
        // Snapshots carry the membership: take one after every change, so that a member
        // added by it can be brought up by a snapshot that includes it.
        if self.applied_since_snapshot < self.cfg.snapshot_every && !self.conf_changed {
            return Ok(());
        }
        self.conf_changed = false;
        // The log is about to forget the entries up to `index`: after a crash, the state
        // machine must not resume from before them.
        self.sm.make_durable();
        // With snapshots made on demand, the log keeps the newest entries (as etcd's catch-up
        // entries): a member a little behind catches up from them instead of needing a
        // snapshot of the whole state.
        // A member alone has nobody to keep them for.
        let cs = self.raw.store().conf_state();
        let alone = cs.voters.len() <= 1 && cs.learners.is_empty();
        let keep = if self.lazy_snapshots && !alone {
            (self.cfg.snapshot_every / 2).min(CATCH_UP_ENTRIES)
        } else {
            0
        };
        let index = self.sm.applied().saturating_sub(keep);
        let data = if self.lazy_snapshots {
            Vec::new()
        } else {
            self.sm.snapshot()
        };
        self.raw.mut_store().create_snapshot(index, data)?;
        self.applied_since_snapshot = 0;
        tracing::info!(
            id = self.cfg.id,
            index,
            "raft snapshot taken, log compacted"
        );
        Ok(())
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
