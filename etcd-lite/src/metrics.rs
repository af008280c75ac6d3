//! Prometheus metrics served on /metrics (names follow etcd's where one exists).

use prometheus::{Encoder, IntCounter, IntGauge, Registry, TextEncoder};

/// The server's counters and gauges.
pub struct Metrics {
    registry: Registry,
    pub put_total: IntCounter,
    pub range_total: IntCounter,
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
