//! Prometheus metrics of the sidecar, served at `/metrics`.

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

type Labels = Vec<(&'static str, &'static str)>;

/// Every metric the sidecar exports (prefix `quiesce_sidecar_`).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// 1 when the app passes its health check.
    pub app_healthy: Gauge,
    /// 1 while a drain runs or after it finished.
    pub draining: Gauge,
    /// Drain requests by trigger and answer.
    pub drain_requests: Family<Labels, Counter>,
    /// Finished drains by result (`completed`, `forced`).
    pub drains: Family<Labels, Counter>,
    /// Drain durations.
    pub drain_duration: Histogram,
    /// Probe results.
    pub probes: Family<Labels, Counter>,
    /// Failed Kubernetes API calls by operation.
    pub api_errors: Family<Labels, Counter>,
    /// Pod-condition reports given up after their retries.
    pub report_failures: Counter,
    /// Connections accepted by the admin server (explains `PassiveOpens` growth).
    pub admin_connections: Counter,
    /// Established connections on app ports at the last observation.
    pub app_connections: Gauge,
    /// Busy connections on app ports at the last observation.
    pub app_busy_connections: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("quiesce_sidecar");
        let m = Metrics {
            app_healthy: Gauge::default(),
            draining: Gauge::default(),
            drain_requests: Family::default(),
            drains: Family::default(),
            drain_duration: Histogram::new([
                0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
            ]),
            probes: Family::default(),
            api_errors: Family::default(),
            report_failures: Counter::default(),
            admin_connections: Counter::default(),
            app_connections: Gauge::default(),
            app_busy_connections: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "app_healthy",
            "1 when the app passes its health check",
            m.app_healthy.clone(),
        );
        registry.register("draining", "1 once a drain started", m.draining.clone());
        registry.register(
            "drain_requests",
            "Drain requests by trigger and result",
            m.drain_requests.clone(),
        );
        registry.register("drains", "Finished drains by result", m.drains.clone());
        registry.register(
            "drain_duration_seconds",
            "Drain durations",
            m.drain_duration.clone(),
        );
        registry.register("probes", "App health probe results", m.probes.clone());
        registry.register(
            "api_errors",
            "Failed Kubernetes API calls by operation",
            m.api_errors.clone(),
        );
        registry.register(
            "report_failures",
            "Drain reports given up after retries",
            m.report_failures.clone(),
        );
        registry.register(
            "admin_connections",
            "Connections accepted by the admin server",
            m.admin_connections.clone(),
        );
        registry.register(
            "app_connections",
            "Established connections on app ports",
            m.app_connections.clone(),
        );
        registry.register(
            "app_busy_connections",
            "Busy connections on app ports",
            m.app_busy_connections.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
