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
    /// Graceful app: time from the drain's release to the app's ports and connections closed.
    pub app_shutdown_duration: Histogram,
    /// Probe results.
    pub probes: Family<Labels, Counter>,
    /// Failed Kubernetes API calls by operation.
    pub api_errors: Family<Labels, Counter>,
    /// Pod-condition reports given up after their retries.
    pub report_failures: Counter,
    /// Readiness gates the sidecar opened itself because no operator decided in time.
    pub fail_open: Counter,
    /// Connections accepted by the admin server (explains `PassiveOpens` growth).
    pub admin_connections: Counter,
    /// Readiness probes of a new pod held until its app was first healthy, by how they ended
    /// (`ready`: answered when the app turned healthy; `unready`: the hold ran out).
    pub readiness_holds: Family<Labels, Counter>,
    /// Established connections on app ports at the last observation.
    pub app_connections: Gauge,
    /// Busy connections on app ports at the last observation.
    pub app_busy_connections: Gauge,
    /// Proxy mode: answered requests by class (`2xx`..`5xx`, `error`: no answer from the app).
    pub proxy_requests: Family<Labels, Counter>,
    /// Proxy mode: request durations, first byte in to last byte out.
    pub proxy_request_duration: Histogram,
    /// Proxy mode: requests whose response is not fully sent yet.
    pub proxy_requests_in_flight: Gauge,
    /// Proxy mode: connections accepted.
    pub proxy_connections_accepted: Counter,
    /// Proxy mode: open client connections (HTTP, tunnels, passthrough).
    pub proxy_connections_open: Gauge,
    /// Proxy mode: open tunnels (upgraded HTTP/1.1 connections and TCP passthrough).
    pub proxy_tunnels_open: Gauge,
    /// Proxy mode: closed connections by how they ended.
    pub proxy_connections_closed: Family<Labels, Counter>,
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
            app_shutdown_duration: Histogram::new([
                0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0,
            ]),
            probes: Family::default(),
            api_errors: Family::default(),
            report_failures: Counter::default(),
            fail_open: Counter::default(),
            admin_connections: Counter::default(),
            readiness_holds: Family::default(),
            app_connections: Gauge::default(),
            app_busy_connections: Gauge::default(),
            proxy_requests: Family::default(),
            proxy_request_duration: Histogram::new([
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            proxy_requests_in_flight: Gauge::default(),
            proxy_connections_accepted: Counter::default(),
            proxy_connections_open: Gauge::default(),
            proxy_tunnels_open: Gauge::default(),
            proxy_connections_closed: Family::default(),
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
        registry.register(
            "app_shutdown_duration_seconds",
            "Graceful app: release of SIGTERM to the app's ports and connections closed",
            m.app_shutdown_duration.clone(),
        );
        registry.register("probes", "App health probe results", m.probes.clone());
        registry.register(
            "api_errors",
            "Failed Kubernetes API calls by operation",
            m.api_errors.clone(),
        );
        registry.register(
            "report_failures",
            "Drain reports not written within --report-timeout (retried until the API takes them)",
            m.report_failures.clone(),
        );
        registry.register(
            "fail_open",
            "Readiness gates the sidecar opened itself (reason FailOpen) because no operator decided in time",
            m.fail_open.clone(),
        );
        registry.register(
            "admin_connections",
            "Connections accepted by the admin server",
            m.admin_connections.clone(),
        );
        registry.register(
            "readiness_holds",
            "Readiness probes of a new pod held until its app was first healthy, by outcome (ready: answered when it turned healthy)",
            m.readiness_holds.clone(),
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
        registry.register(
            "proxy_requests",
            "Proxied requests by status class (error: no answer from the app)",
            m.proxy_requests.clone(),
        );
        registry.register(
            "proxy_request_duration_seconds",
            "Proxied request durations, first byte in to last byte out",
            m.proxy_request_duration.clone(),
        );
        registry.register(
            "proxy_requests_in_flight",
            "Proxied requests whose response is not fully sent",
            m.proxy_requests_in_flight.clone(),
        );
        registry.register(
            "proxy_connections_accepted",
            "Connections accepted by the proxy",
            m.proxy_connections_accepted.clone(),
        );
        registry.register(
            "proxy_connections_open",
            "Open proxy client connections",
            m.proxy_connections_open.clone(),
        );
        registry.register(
            "proxy_tunnels_open",
            "Open proxy tunnels (upgrades and TCP passthrough)",
            m.proxy_tunnels_open.clone(),
        );
        registry.register(
            "proxy_connections_closed",
            "Closed proxy connections by how they ended",
            m.proxy_connections_closed.clone(),
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
