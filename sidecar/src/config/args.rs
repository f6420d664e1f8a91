//! The command-line flags as clap parses them, each also settable through its `QUIESCE_*`
//! environment variable, and the values the flags take; nothing here is checked yet.

use std::{net::IpAddr, time::Duration};

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, ValueEnum};
use quiesce_api::constants::SIDECAR_ADMIN_PORT;
use quiesce_api::sidecar::env::*;

use super::{AppShutdown, DrainMode, parse_duration};

/// Where the sidecar runs, which decides who may trigger a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    /// In a pod: a drain is honoured only when the API says the pod is terminating; the drain
    /// waits for EndpointSlices and reports a pod condition.
    Kubernetes,
    /// Without Kubernetes (local runs, tests): a drain is honoured only from loopback.
    Standalone,
}

/// How the app's health is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// HTTP/1.1 GET of `--probe-path`, healthy when the status is in `--probe-status`.
    Http,
    /// TCP connect to the probe port.
    Tcp,
    /// gRPC health v1 `Check` (h2c), healthy when the answer is `SERVING`.
    Grpc,
    /// No check: the app is taken as healthy.
    None,
}

/// Scheme of the HTTP health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeScheme {
    /// Plain HTTP/1.1.
    Http,
    /// HTTP/1.1 over TLS, the certificate not verified (as the kubelet's `scheme: HTTPS`).
    Https,
}

/// The app's TCP ports as one flag value: `8080,9090`, or empty for none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPorts(pub Vec<u16>);

/// Parses `8080,9090` (blanks ignored) into ports; an empty value is no port.
pub fn parse_app_ports(s: &str) -> Result<AppPorts, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| format!("{p:?} is not a port number"))
        })
        .collect::<Result<_, _>>()
        .map(AppPorts)
}

/// Which evidence of new inbound connections the quiet period uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NewConnectionSignal {
    /// The network namespace's TCP `PassiveOpens` counter (minus the sidecar's own admin
    /// connections) plus new sockets on app ports. Catches a connection that opened and closed
    /// between two observations; counts inbound connections to any other listener of the pod
    /// too (conservative).
    Netns,
    /// Only new sockets on app ports seen in the socket table. Misses a connection that opened
    /// and closed between two observations; for namespaces shared with unrelated traffic.
    Ports,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Plain,
}

/// Command-line flags and their environment variables.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "quiesce-sidecar",
    version,
    about = "quiesce sidecar: app health checks and connection drain before SIGTERM"
)]
pub struct Args {
    /// Run mode.
    #[arg(long, env = QUIESCE_MODE, value_enum, default_value = "kubernetes")]
    pub mode: RunMode,
    /// The app's listening TCP ports, comma-separated; empty: none known (the drain then tracks
    /// no app connection, and the probe needs `--probe-port`).
    #[arg(
        long,
        env = QUIESCE_APP_PORTS,
        default_value = "8080",
        value_parser = parse_app_ports
    )]
    pub app_ports: AppPorts,
    /// Address the admin server binds. `::` (the default) is every address of both families
    /// where the node has IPv6 (IPV6_V6ONLY off), else `0.0.0.0` — see [`crate::listen`].
    #[arg(long, env = QUIESCE_ADMIN_BIND, default_value = "::")]
    pub admin_bind: IpAddr,
    /// Admin server port (`/livez`, `/readyz`, drain, `/status`, `/metrics`); 0 picks a free one.
    #[arg(long, env = QUIESCE_ADMIN_PORT, default_value_t = SIDECAR_ADMIN_PORT)]
    pub admin_port: u16,

    /// App health check kind.
    #[arg(long, env = QUIESCE_PROBE, value_enum, default_value = "http")]
    pub probe: ProbeKind,
    /// Port probed; defaults to the first app port.
    #[arg(long, env = QUIESCE_PROBE_PORT)]
    pub probe_port: Option<u16>,
    /// Address probed (the app shares the pod's network namespace). Default: in kubernetes
    /// mode the pod IP, the address the kubelet probes (right for IPv4, IPv6 and dual-stack
    /// pods, and for an app bound to the pod IP only); in standalone mode 127.0.0.1.
    #[arg(long, env = QUIESCE_PROBE_HOST)]
    pub probe_host: Option<IpAddr>,
    /// HTTP probe path.
    #[arg(long, env = QUIESCE_PROBE_PATH, default_value = "/")]
    pub probe_path: String,
    /// HTTP probe scheme; `https` does TLS without verifying the certificate, as the kubelet.
    #[arg(long, env = QUIESCE_PROBE_SCHEME, value_enum, default_value = "http")]
    pub probe_scheme: ProbeScheme,
    /// HTTP probe request headers, one `Name: value` per line; a `Host` header replaces the
    /// default `Host` (the probed address).
    #[arg(long, env = QUIESCE_PROBE_HEADERS)]
    pub probe_headers: Option<String>,
    /// HTTP probe expected status: one code (`200`) or an inclusive range (`200-399`).
    #[arg(long, env = QUIESCE_PROBE_STATUS, default_value = "200-399")]
    pub probe_status: String,
    /// gRPC health service name (empty: the whole server).
    #[arg(long, env = QUIESCE_PROBE_GRPC_SERVICE, default_value = "")]
    pub probe_grpc_service: String,
    /// Time between probes (e.g. `500ms`, `2s`, `1m`).
    #[arg(long, env = QUIESCE_PROBE_PERIOD, default_value = "2s", value_parser = parse_duration)]
    pub probe_period: Duration,
    /// Time one probe may take.
    #[arg(long, env = QUIESCE_PROBE_TIMEOUT, default_value = "1s", value_parser = parse_duration)]
    pub probe_timeout: Duration,
    /// Consecutive successes to become healthy.
    #[arg(long, env = QUIESCE_PROBE_SUCCESS_THRESHOLD, default_value_t = 1)]
    pub probe_success_threshold: u32,
    /// Consecutive failures to become unhealthy.
    #[arg(long, env = QUIESCE_PROBE_FAILURE_THRESHOLD, default_value_t = 3)]
    pub probe_failure_threshold: u32,

    /// Drain mode.
    #[arg(
        long,
        env = QUIESCE_DRAIN_MODE,
        default_value = "observe",
        ignore_case = true,
        value_parser = PossibleValuesParser::new(DrainMode::ENV_VALUES.iter().copied())
            .try_map(|s| s.parse::<DrainMode>())
    )]
    pub drain_mode: DrainMode,
    /// How the app treats SIGTERM: `immediate` (exits at once) or `graceful` (finishes in-flight
    /// work and closes idle keep-alive connections itself).
    #[arg(
        long,
        env = QUIESCE_APP_SHUTDOWN,
        default_value = "immediate",
        ignore_case = true,
        value_parser = PossibleValuesParser::new(AppShutdown::ENV_VALUES.iter().copied())
            .try_map(|s| s.parse::<AppShutdown>())
    )]
    pub app_shutdown: AppShutdown,
    /// Bound of the wait for the pod's IP to leave the ready EndpointSlice endpoints.
    #[arg(long, env = QUIESCE_ENDPOINT_TIMEOUT, default_value = "10s", value_parser = parse_duration)]
    pub endpoint_timeout: Duration,
    /// A drain goes on only after no new inbound connection arrived for this long.
    #[arg(long, env = QUIESCE_QUIET_PERIOD, default_value = "1s", value_parser = parse_duration)]
    pub quiet_period: Duration,
    /// Bound of the quiet period and in-flight wait together; a drain reaching it is `forced`.
    #[arg(long, env = QUIESCE_DRAIN_TIMEOUT, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Evidence of new connections used by the quiet period.
    #[arg(
        long,
        env = QUIESCE_NEW_CONNECTION_SIGNAL,
        value_enum,
        default_value = "netns"
    )]
    pub new_connection_signal: NewConnectionSignal,
    /// Time between two socket-table observations during a drain.
    #[arg(long, env = QUIESCE_POLL_INTERVAL, default_value = "100ms", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// On SIGTERM: longest wait for the app's ports to close before exiting.
    #[arg(long, env = QUIESCE_EXIT_TIMEOUT, default_value = "30s", value_parser = parse_duration)]
    pub exit_timeout: Duration,
    /// Longest time the drain answer waits for its pod-condition report.
    #[arg(long, env = QUIESCE_REPORT_TIMEOUT, default_value = "3s", value_parser = parse_duration)]
    pub report_timeout: Duration,

    /// Proxy mode: `LISTEN:UPSTREAM` port pairs, comma-separated (`15001:8080,15002:9090`);
    /// the proxy listens on LISTEN and forwards to 127.0.0.1:UPSTREAM, an app port. LISTEN 0
    /// picks a free port (tests).
    #[arg(long, env = QUIESCE_PROXY_PORTS)]
    pub proxy_ports: Option<String>,
    /// Proxy mode: address the proxy listeners bind (`::`: both families, as `--admin-bind`).
    #[arg(long, env = QUIESCE_PROXY_BIND, default_value = "::")]
    pub proxy_bind: IpAddr,
    /// Proxy mode: during a drain, an idle kept-alive connection is closed only once it has
    /// been idle this long (default: the quiet period, or 1s if that is 0).
    #[arg(long, env = QUIESCE_PROXY_IDLE_CLOSE, value_parser = parse_duration)]
    pub proxy_idle_close: Option<Duration>,

    /// Pod name (downward API `metadata.name`); required in kubernetes mode.
    #[arg(long, env = POD_NAME)]
    pub pod_name: Option<String>,
    /// Pod namespace (downward API `metadata.namespace`); required in kubernetes mode.
    #[arg(long, env = POD_NAMESPACE)]
    pub pod_namespace: Option<String>,
    /// Pod IP (downward API `status.podIP`); required in kubernetes mode.
    #[arg(long, env = POD_IP)]
    pub pod_ip: Option<IpAddr>,

    /// Log format.
    #[arg(long, env = QUIESCE_LOG_FORMAT, value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// Threads that run the sidecar's work. One (the default) keeps it small: health checks,
    /// the admin port and a drain need little, and one thread carried about 1,000 proxied
    /// req/s at a tenth of a core (docs/benchmarks.md). More only for a busy Proxy-mode pod.
    #[arg(long, env = QUIESCE_WORKER_THREADS, default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub worker_threads: u16,
}
