//! Prometheus metrics served on /metrics (names follow etcd's where one exists).

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

/// The server's counters and gauges.
pub struct Metrics {
    registry: Registry,
    pub put_total: IntCounter,
    pub range_total: IntCounter,
    /// Ranges refused because answers in flight held the whole read budget.
    pub range_refused_total: IntCounter,
    pub auth_failures_total: IntCounter,
    pub delete_total: IntCounter,
    pub txn_total: IntCounter,
    pub leases_expired: IntCounter,
    pub watch_streams: IntGauge,
    pub watchers: IntGauge,
    pub current_revision: IntGauge,
    pub compacted_revision: IntGauge,
    pub db_size: IntGauge,
    pub keys_total: IntGauge,
    pub lease_count: IntGauge,
    /// What the raft node records (cloned into its thread).
    pub raft: RaftMetrics,
}

/// The consensus loop's measurements, under etcd's names so that existing dashboards and
/// alerts (fsync latency, leader changes, proposals pending) work unchanged.
#[derive(Clone, Debug)]
pub struct RaftMetrics {
    /// One sync of the raft log (etcd's WAL fsync).
    pub wal_fsync: Histogram,
    /// Applying one batch of committed entries to the store (etcd's backend commit).
    pub backend_commit: Histogram,
    pub proposals_committed: IntGauge,
    pub proposals_applied: IntGauge,
    pub proposals_pending: IntGauge,
    pub proposals_failed: IntCounter,
    pub leader_changes: IntCounter,
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    /// Raft append messages (entries or heartbeats' catch-up) sent, by member (v2's stats).
    pub appends_sent: IntCounterVec,
    /// Raft append messages received from the leader (v2's stats).
    pub appends_received: IntCounter,
}

fn histogram(r: &Registry, name: &str, help: &str) -> Histogram {
    // etcd's buckets for disk latencies: 1 ms doubling to about 8 s.
    let buckets = exponential_buckets(0.001, 2.0, 14).expect("constant bucket layout");
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("metric names are valid constants");
    r.register(Box::new(h.clone()))
        .expect("each metric is registered once");
    h
}

impl Default for RaftMetrics {
    /// Metrics that nobody serves (tests, tools).
    fn default() -> Self {
        RaftMetrics::new(&Registry::new())
    }
}

impl RaftMetrics {
    fn new(r: &Registry) -> Self {
        RaftMetrics {
            wal_fsync: histogram(
                r,
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by the raft log.",
            ),
            backend_commit: histogram(
                r,
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of applying a batch of committed entries.",
            ),
            proposals_committed: gauge(
                r,
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            ),
            proposals_applied: gauge(
                r,
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            ),
            proposals_pending: gauge(
                r,
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
            ),
            proposals_failed: counter(
                r,
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            ),
            leader_changes: counter(
                r,
                "etcd_server_leader_changes_seen_total",
                "The number of leader changes seen.",
            ),
            has_leader: gauge(
                r,
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ),
            is_leader: gauge(
                r,
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            ),
            appends_sent: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "etcd_lite_raft_append_sent_total",
                        "Raft append messages sent, by the member (hex id) they went to.",
                    ),
                    &["to"],
                )
                .expect("metric names are valid constants");
                r.register(Box::new(c.clone()))
                    .expect("each metric is registered once");
                c
            },
            appends_received: counter(
                r,
                "etcd_lite_raft_append_received_total",
                "Raft append messages received from the leader.",
            ),
        }
    }
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("metric names are valid constants");
    r.register(Box::new(c.clone()))
        .expect("each metric is registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("metric names are valid constants");
    r.register(Box::new(g.clone()))
        .expect("each metric is registered once");
    g
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        Metrics {
            put_total: counter(
                &r,
                "etcd_mvcc_put_total",
                "Total number of puts seen by this member.",
            ),
            range_total: counter(
                &r,
                "etcd_mvcc_range_total",
                "Total number of ranges seen by this member.",
            ),
            range_refused_total: counter(
                &r,
                "etcd_lite_range_refused_total",
                "Ranges refused with too many requests: answers in flight held the read budget.",
            ),
            auth_failures_total: counter(
                &r,
                "etcd_lite_auth_failures_total",
                "Logins refused for a wrong user name or password.",
            ),
            delete_total: counter(
                &r,
                "etcd_mvcc_delete_total",
                "Total number of deletes seen by this member.",
            ),
            txn_total: counter(
                &r,
                "etcd_mvcc_txn_total",
                "Total number of txns seen by this member.",
            ),
            leases_expired: counter(
                &r,
                "etcd_debugging_server_lease_expired_total",
                "The total number of expired leases.",
            ),
            watch_streams: gauge(
                &r,
                "etcd_debugging_mvcc_watch_stream_total",
                "Total number of watch streams.",
            ),
            watchers: gauge(
                &r,
                "etcd_debugging_mvcc_watcher_total",
                "Total number of watchers.",
            ),
            current_revision: gauge(
                &r,
                "etcd_debugging_mvcc_current_revision",
                "The current revision of store.",
            ),
            compacted_revision: gauge(
                &r,
                "etcd_debugging_mvcc_compact_revision",
                "The revision of the last compaction in store.",
            ),
            db_size: gauge(
                &r,
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            ),
            keys_total: gauge(
                &r,
                "etcd_debugging_mvcc_keys_total",
                "Total number of keys.",
            ),
            lease_count: gauge(&r, "corelite_etcd_lease_count", "Number of live leases."),
            raft: RaftMetrics::new(&r),
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
