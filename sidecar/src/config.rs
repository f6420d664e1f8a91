//! Configuration: command-line flags, each also settable through a `QUIESCE_*` environment
//! variable, validated once at start so a bad value never surprises at drain time.
//!
//! Run `quiesce-sidecar --help` for the full list with defaults.
//!
//! `args.rs` holds the flags as clap parses them, `validate.rs` the checks that turn them into
//! the validated [`Config`] below, which is what the rest of the sidecar reads.

mod args;
#[cfg(test)]
mod tests;
mod validate;

use std::{net::IpAddr, time::Duration};

pub use args::{
    AppPorts, Args, LogFormat, NewConnectionSignal, ProbeKind, ProbeScheme, RunMode,
    parse_app_ports,
};
pub use quiesce_api::sidecar::parse_duration;
/// How in-flight work is found during a drain (`observe` or `proxy`).
pub use quiesce_api::{AppShutdown, DrainMode};
pub use validate::{parse_probe_headers, parse_proxy_routes, parse_status_range};

/// The pod the sidecar runs in (kubernetes mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod IP.
    pub ip: IpAddr,
}

/// App health check settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// What is checked.
    pub kind: ProbeKind,
    /// Probed address.
    pub host: IpAddr,
    /// Probed port.
    pub port: u16,
    /// HTTP path.
    pub path: String,
    /// HTTP over TLS, certificate not verified.
    pub https: bool,
    /// HTTP request headers, checked as HTTP names and values; a `Host` one replaces the default.
    pub headers: Vec<(String, String)>,
    /// Inclusive range of healthy HTTP statuses.
    pub status: (u16, u16),
    /// gRPC service name.
    pub grpc_service: String,
    /// Time between probes.
    pub period: Duration,
    /// Time one probe may take.
    pub timeout: Duration,
    /// Consecutive successes to become healthy.
    pub success_threshold: u32,
    /// Consecutive failures to become unhealthy.
    pub failure_threshold: u32,
}

/// Drain settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainConfig {
    /// How the app treats SIGTERM.
    pub app_shutdown: AppShutdown,
    /// Bound of the EndpointSlice wait.
    pub endpoint_timeout: Duration,
    /// Required time without new connections.
    pub quiet_period: Duration,
    /// Bound of quiet period + in-flight wait.
    pub drain_timeout: Duration,
    /// New-connection evidence.
    pub signal: NewConnectionSignal,
    /// Observation period.
    pub poll_interval: Duration,
    /// Bound of the wait for the app's ports to close on SIGTERM.
    pub exit_timeout: Duration,
    /// Bound of the wait for the final report.
    pub report_timeout: Duration,
}

/// Proxy mode settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// `(listen, upstream)` port pairs; upstream is an app port on 127.0.0.1.
    pub routes: Vec<(u16, u16)>,
    /// Address the listeners bind.
    pub bind: IpAddr,
    /// During a drain, idle time after which a kept-alive connection is closed.
    pub idle_close: Duration,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Run mode.
    pub mode: RunMode,
    /// App ports, deduplicated; may be empty (none declared: no app connection is tracked).
    pub app_ports: Vec<u16>,
    /// Admin bind address.
    pub admin_bind: IpAddr,
    /// Admin port.
    pub admin_port: u16,
    /// Health check.
    pub probe: ProbeConfig,
    /// Drain.
    pub drain: DrainConfig,
    /// Own pod, `Some` in kubernetes mode.
    pub pod: Option<PodIdentity>,
    /// Proxy settings, `Some` in proxy drain mode.
    pub proxy: Option<ProxyConfig>,
    /// Log format.
    pub log_format: LogFormat,
    /// Runtime threads (1: a current-thread runtime).
    pub worker_threads: u16,
}

/// Every problem found in the configuration, reported together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);
