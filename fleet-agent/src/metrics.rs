//! fleetd's Prometheus metrics (`GET /metrics`).

use std::sync::LazyLock;

use prometheus::{IntCounter, IntGauge, Registry};

/// The registry `/metrics` renders.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn counter(name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = REGISTRY.register(Box::new(c.clone()));
    c
}

/// systemd actions the agent carried out.
pub static AGENT_ACTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "fleet_agent_actions_total",
        "systemd actions carried out by the agent",
    )
});
/// Units the engine placed.
pub static SCHEDULED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "fleet_engine_scheduled_total",
        "units placed on a machine by the engine",
    )
});
/// API requests served.
pub static API_REQUESTS: LazyLock<IntCounter> =
    LazyLock::new(|| counter("fleet_api_requests_total", "fleet API requests served"));
/// 1 while this fleetd is the engine leader.
pub static ENGINE_LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    let g = IntGauge::new(
        "fleet_engine_leader",
        "1 while this fleetd is the engine leader",
    )
    .unwrap_or_else(|e| panic!("metric: {e}"));
    let _ = REGISTRY.register(Box::new(g.clone()));
    g
});

/// The metrics in Prometheus' text format.
pub fn render() -> String {
    // Touch every metric so that it is listed before its first use.
    LazyLock::force(&AGENT_ACTIONS);
    LazyLock::force(&SCHEDULED);
    LazyLock::force(&API_REQUESTS);
    LazyLock::force(&ENGINE_LEADER);
    let mut buf = Vec::new();
    let enc = prometheus::TextEncoder::new();
    let _ = prometheus::Encoder::encode(&enc, &REGISTRY.gather(), &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
