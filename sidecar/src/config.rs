//! Configuration: command-line flags, each also settable through a `QUIESCE_*` environment
//! variable, validated once at start so a bad value never surprises at drain time.
//!
//! Run `quiesce-sidecar --help` for the full list with defaults.

use std::{net::IpAddr, time::Duration};

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, ValueEnum};
use quiesce_api::constants::SIDECAR_ADMIN_PORT;
use quiesce_api::sidecar::env::*;
pub use quiesce_api::sidecar::parse_duration;
/// How in-flight work is found during a drain (`observe` or `proxy`).
pub use quiesce_api::{AppShutdown, DrainMode};

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

impl Args {
    /// Checks every value and builds the [`Config`]; all problems are reported at once.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let mut errs = Vec::new();
        let mut app_ports = self.app_ports.0.clone();
        app_ports.sort_unstable();
        app_ports.dedup();
        if app_ports.is_empty() {
            if self.probe != ProbeKind::None && self.probe_port.is_none() {
                errs.push(format!(
                    "--probe {:?} needs --probe-port when there are no --app-ports",
                    self.probe
                ));
            }
            if self.new_connection_signal == NewConnectionSignal::Ports {
                errs.push(
                    "--new-connection-signal ports needs --app-ports (use netns)".to_string(),
                );
            }
        }
        if app_ports.contains(&0) {
            errs.push("--app-ports: port 0 is not a port an app listens on".to_string());
        }
        if self.admin_port != 0 && app_ports.contains(&self.admin_port) {
            errs.push(format!(
                "--admin-port {} is also an app port; pick another admin port",
                self.admin_port
            ));
        }
        let status = match parse_status_range(&self.probe_status) {
            Ok(r) => r,
            Err(e) => {
                errs.push(format!("--probe-status: {e}"));
                (200, 399)
            }
        };
        if self.probe == ProbeKind::Http && !self.probe_path.starts_with('/') {
            errs.push(format!(
                "--probe-path {:?} must start with '/'",
                self.probe_path
            ));
        }
        let headers = match self
            .probe_headers
            .as_deref()
            .map(parse_probe_headers)
            .transpose()
        {
            Ok(h) => h.unwrap_or_default(),
            Err(e) => {
                errs.push(format!("--probe-headers: {e}"));
                Vec::new()
            }
        };
        if self.probe_port == Some(0) {
            errs.push("--probe-port: 0 is not a port".to_string());
        }
        if self.probe_period.is_zero() {
            errs.push("--probe-period must be more than 0".to_string());
        }
        if self.probe_timeout.is_zero() {
            errs.push("--probe-timeout must be more than 0".to_string());
        }
        if self.probe_timeout > self.probe_period {
            errs.push(format!(
                "--probe-timeout ({:?}) must not exceed --probe-period ({:?})",
                self.probe_timeout, self.probe_period
            ));
        }
        if self.probe_success_threshold == 0 || self.probe_failure_threshold == 0 {
            errs.push(
                "--probe-success-threshold and --probe-failure-threshold must be at least 1"
                    .to_string(),
            );
        }
        let proxy = self.proxy_config(&app_ports, &mut errs);
        if self.poll_interval.is_zero() {
            errs.push("--poll-interval must be more than 0".to_string());
        }
        if self.drain_timeout.is_zero() {
            errs.push("--drain-timeout must be more than 0".to_string());
        }
        if self.quiet_period >= self.drain_timeout {
            errs.push(format!(
                "--quiet-period ({:?}) must be shorter than --drain-timeout ({:?}), which bounds it",
                self.quiet_period, self.drain_timeout
            ));
        }
        if self.poll_interval > self.quiet_period && !self.quiet_period.is_zero() {
            errs.push(format!(
                "--poll-interval ({:?}) must not exceed --quiet-period ({:?})",
                self.poll_interval, self.quiet_period
            ));
        }
        let pod = match self.mode {
            RunMode::Standalone => None,
            RunMode::Kubernetes => {
                let mut missing = Vec::new();
                if self.pod_name.as_deref().unwrap_or("").is_empty() {
                    missing.push("POD_NAME");
                }
                if self.pod_namespace.as_deref().unwrap_or("").is_empty() {
                    missing.push("POD_NAMESPACE");
                }
                if self.pod_ip.is_none() {
                    missing.push("POD_IP");
                }
                if missing.is_empty() {
                    Some(PodIdentity {
                        name: self.pod_name.clone().unwrap_or_default(),
                        namespace: self.pod_namespace.clone().unwrap_or_default(),
                        ip: self.pod_ip.expect("checked above"),
                    })
                } else {
                    errs.push(format!(
                        "kubernetes mode needs {} from the downward API (or use --mode standalone)",
                        missing.join(", ")
                    ));
                    None
                }
            }
        };
        if !errs.is_empty() {
            return Err(ConfigError(errs));
        }
        let probe_host = self.probe_host.unwrap_or(match &pod {
            Some(p) => p.ip,
            None => IpAddr::from([127, 0, 0, 1]),
        });
        Ok(Config {
            mode: self.mode,
            admin_bind: self.admin_bind,
            admin_port: self.admin_port,
            probe: ProbeConfig {
                kind: self.probe,
                host: probe_host,
                // Checked above: with no app port the probe has its own port or is `none`.
                port: self
                    .probe_port
                    .or(app_ports.first().copied())
                    .unwrap_or_default(),
                path: self.probe_path,
                https: self.probe_scheme == ProbeScheme::Https,
                headers,
                status,
                grpc_service: self.probe_grpc_service,
                period: self.probe_period,
                timeout: self.probe_timeout,
                success_threshold: self.probe_success_threshold,
                failure_threshold: self.probe_failure_threshold,
            },
            drain: DrainConfig {
                app_shutdown: self.app_shutdown,
                endpoint_timeout: self.endpoint_timeout,
                quiet_period: self.quiet_period,
                drain_timeout: self.drain_timeout,
                signal: self.new_connection_signal,
                poll_interval: self.poll_interval,
                exit_timeout: self.exit_timeout,
                report_timeout: self.report_timeout,
            },
            app_ports,
            pod,
            proxy,
            log_format: self.log_format,
            worker_threads: self.worker_threads,
        })
    }
}

impl Args {
    /// The proxy settings (`Some` in proxy mode); problems are added to `errs`.
    fn proxy_config(&self, app_ports: &[u16], errs: &mut Vec<String>) -> Option<ProxyConfig> {
        let raw = self.proxy_ports.as_deref().unwrap_or("").trim();
        if self.drain_mode != DrainMode::Proxy {
            if !raw.is_empty() {
                errs.push("--proxy-ports is only used with --drain-mode proxy".to_string());
            }
            return None;
        }
        let routes = match parse_proxy_routes(raw) {
            Ok(r) if r.is_empty() => {
                errs.push(
                    "--drain-mode proxy needs --proxy-ports LISTEN:UPSTREAM[,LISTEN:UPSTREAM...]"
                        .to_string(),
                );
                Vec::new()
            }
            Ok(r) => r,
            Err(e) => {
                errs.push(format!("--proxy-ports: {e}"));
                Vec::new()
            }
        };
        let mut seen = Vec::new();
        for &(listen, upstream) in &routes {
            if !app_ports.contains(&upstream) {
                errs.push(format!(
                    "--proxy-ports: upstream {upstream} is not one of --app-ports"
                ));
            }
            if listen == 0 {
                continue;
            }
            if app_ports.contains(&listen) {
                errs.push(format!(
                    "--proxy-ports: listen port {listen} is an app port (the app listens there)"
                ));
            }
            if listen == self.admin_port {
                errs.push(format!(
                    "--proxy-ports: listen port {listen} is also the admin port"
                ));
            }
            if seen.contains(&listen) {
                errs.push(format!("--proxy-ports: listen port {listen} appears twice"));
            }
            seen.push(listen);
        }
        let idle_close = self
            .proxy_idle_close
            .unwrap_or(if self.quiet_period.is_zero() {
                Duration::from_secs(1)
            } else {
                self.quiet_period
            });
        if idle_close.is_zero() {
            errs.push(
                "--proxy-idle-close must be more than 0 (closing a just-idle connection races the client's next request)"
                    .to_string(),
            );
        }
        // A default taken from a too-long quiet period is reported as the quiet period's error.
        if self.proxy_idle_close.is_some() && idle_close >= self.drain_timeout {
            errs.push(format!(
                "--proxy-idle-close ({idle_close:?}) must be shorter than --drain-timeout ({:?})",
                self.drain_timeout
            ));
        }
        Some(ProxyConfig {
            routes,
            bind: self.proxy_bind,
            idle_close,
        })
    }
}

/// Parses `15001:8080,15002:9090` into `(listen, upstream)` pairs (empty input: none).
pub fn parse_proxy_routes(s: &str) -> Result<Vec<(u16, u16)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let bad = || format!("{pair:?} is not LISTEN:UPSTREAM (two port numbers)");
            let (l, u) = pair.split_once(':').ok_or_else(bad)?;
            let listen: u16 = l.trim().parse().map_err(|_| bad())?;
            let upstream: u16 = u.trim().parse().map_err(|_| bad())?;
            if upstream == 0 {
                return Err(format!("{pair:?}: upstream port 0 is not a port"));
            }
            Ok((listen, upstream))
        })
        .collect()
}

/// Parses probe headers, one `Name: value` per line, and checks each as an HTTP header.
pub fn parse_probe_headers(s: &str) -> Result<Vec<(String, String)>, String> {
    let headers = quiesce_api::sidecar::headers_from_env(s)?;
    for (name, value) in &headers {
        http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not an HTTP header name"))?;
        http::HeaderValue::from_str(value)
            .map_err(|_| format!("the value of {name} is not a valid HTTP header value"))?;
    }
    Ok(headers)
}

/// Parses `200` or `200-399` into an inclusive range of HTTP statuses.
pub fn parse_status_range(s: &str) -> Result<(u16, u16), String> {
    let parse = |p: &str| -> Result<u16, String> {
        match p.trim().parse::<u16>() {
            Ok(v) if (100..=599).contains(&v) => Ok(v),
            _ => Err(format!("{s:?} is not an HTTP status or range like 200-399")),
        }
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let v = parse(s)?;
            (v, v)
        }
    };
    if lo > hi {
        return Err(format!("{s:?}: range is empty"));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["quiesce-sidecar"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).expect("flags parse")
    }

    #[test]
    fn defaults_fit_a_typical_http_app_in_standalone_mode() {
        let c = args(&["--mode", "standalone"]).validate().unwrap();
        assert_eq!(c.app_ports, vec![8080]);
        assert_eq!(c.admin_port, SIDECAR_ADMIN_PORT);
        assert_eq!(c.probe.kind, ProbeKind::Http);
        assert_eq!(c.probe.port, 8080);
        assert_eq!(c.probe.status, (200, 399));
        assert_eq!(c.drain.quiet_period, Duration::from_secs(1));
        assert_eq!(c.drain.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.worker_threads, 1, "one runtime thread unless asked");
        assert!(c.pod.is_none());
    }

    #[test]
    fn kubernetes_mode_needs_the_downward_api() {
        // Flags set explicitly so the test does not depend on the environment.
        let err = args(&["--pod-name", "", "--pod-namespace", ""])
            .validate()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("POD_NAME, POD_NAMESPACE"), "{msg}");
        let ok = args(&[
            "--pod-name",
            "web-1",
            "--pod-namespace",
            "ns",
            "--pod-ip",
            "10.1.2.3",
        ])
        .validate()
        .unwrap();
        assert_eq!(ok.pod.unwrap().ip.to_string(), "10.1.2.3");
    }

    #[test]
    fn every_problem_is_reported_at_start() {
        let err = args(&[
            "--mode",
            "standalone",
            "--app-ports",
            "8080,9901",
            "--probe-status",
            "abc",
            "--probe-timeout",
            "5s",
            "--probe-period",
            "1s",
            "--drain-mode",
            "proxy",
            "--proxy-ports",
            "15001:7070",
            "--quiet-period",
            "40s",
        ])
        .validate()
        .unwrap_err();
        assert_eq!(err.0.len(), 5, "{err}");
        let msg = err.to_string();
        for needle in [
            "--admin-port 9901",
            "--probe-status",
            "--probe-timeout",
            "--proxy-ports: upstream 7070",
            "--quiet-period",
        ] {
            assert!(msg.contains(needle), "{needle} missing in {msg}");
        }
    }

    #[test]
    fn proxy_mode_needs_routes_to_app_ports_on_free_listen_ports() {
        let base = ["--mode", "standalone", "--drain-mode", "proxy"];
        let err = args(&base).validate().unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(err.0[0].contains("needs --proxy-ports"), "{err}");

        let mut v = base.to_vec();
        v.extend([
            "--app-ports",
            "8080,9090",
            "--proxy-ports",
            "15001:8080, 15002:9090",
        ]);
        let c = args(&v).validate().unwrap();
        let p = c.proxy.expect("proxy settings");
        assert_eq!(p.routes, vec![(15001, 8080), (15002, 9090)]);
        // Default idle close: the quiet period.
        assert_eq!(p.idle_close, c.drain.quiet_period);

        let mut v = base.to_vec();
        v.extend([
            "--app-ports",
            "8080",
            "--proxy-ports",
            "8080:8080,9901:8080,15001:8080,15001:8080,15003:1234",
            "--proxy-idle-close",
            "0s",
        ]);
        let err = args(&v).validate().unwrap_err();
        let msg = err.to_string();
        for needle in [
            "listen port 8080 is an app port",
            "listen port 9901 is also the admin port",
            "listen port 15001 appears twice",
            "upstream 1234 is not one of --app-ports",
            "--proxy-idle-close must be more than 0",
        ] {
            assert!(msg.contains(needle), "{needle} missing in {msg}");
        }
        assert_eq!(err.0.len(), 5, "{err}");

        let mut v = base.to_vec();
        v.extend(["--proxy-ports", "15001-8080"]);
        assert!(args(&v).validate().unwrap_err().0[0].contains("not LISTEN:UPSTREAM"));
        let err = args(&["--mode", "standalone", "--proxy-ports", "15001:8080"])
            .validate()
            .unwrap_err();
        assert!(
            err.0[0].contains("only used with --drain-mode proxy"),
            "{err}"
        );
        assert!(
            args(&["--mode", "standalone"])
                .validate()
                .unwrap()
                .proxy
                .is_none()
        );
    }

    /// Parses `(variable, value)` pairs as the process environment would be: each as the flag
    /// clap binds to that variable. Variables no flag reads (the fail-open timeout, read by
    /// [`crate::fail_open`]) are returned.
    fn from_env_pairs(pairs: &[(String, String)]) -> (Args, Vec<(String, String)>) {
        use clap::CommandFactory;
        let cmd = Args::command();
        let mut argv = vec!["quiesce-sidecar".to_owned()];
        let mut unread = Vec::new();
        for (name, value) in pairs {
            let flag = cmd
                .get_arguments()
                .find(|a| a.get_env().is_some_and(|e| e == name.as_str()))
                .and_then(|a| a.get_long());
            match flag {
                Some(long) => argv.push(format!("--{long}={value}")),
                None => unread.push((name.clone(), value.clone())),
            }
        }
        (Args::try_parse_from(argv).expect("flags parse"), unread)
    }

    #[test]
    fn the_webhooks_environment_is_what_the_sidecar_reads() {
        use quiesce_api::{SidecarEnv, SidecarProbe, constants::SIDECAR_FAIL_OPEN_ENV};
        let observe = SidecarEnv {
            app_ports: vec![8080, 9090],
            admin_port: 9901,
            drain_mode: DrainMode::Observe,
            app_shutdown: AppShutdown::Graceful,
            endpoint_timeout: Duration::from_secs(10),
            quiet_period: Duration::from_millis(1000),
            drain_timeout: Duration::from_secs(30),
            proxy_routes: Vec::new(),
            probe: SidecarProbe::Tcp { port: None },
            log_format: "plain".into(),
            fail_open_after_seconds: 600,
        };
        let proxy = SidecarEnv {
            app_ports: vec![8080],
            admin_port: 9903,
            drain_mode: DrainMode::Proxy,
            app_shutdown: AppShutdown::Immediate,
            endpoint_timeout: Duration::from_millis(2500),
            quiet_period: Duration::from_millis(250),
            drain_timeout: Duration::from_secs(5),
            proxy_routes: vec![(15001, 8080)],
            probe: SidecarProbe::Http {
                port: 8080,
                path: "/healthz".into(),
                https: false,
                headers: Vec::new(),
            },
            log_format: "json".into(),
            fail_open_after_seconds: 30,
        };
        let https_without_ports = SidecarEnv {
            app_ports: Vec::new(),
            probe: SidecarProbe::Http {
                port: 8443,
                path: "/ready".into(),
                https: true,
                headers: vec![
                    ("Host".into(), "web.example".into()),
                    ("X-Token".into(), "a:b, c".into()),
                ],
            },
            ..observe.clone()
        };
        let grpc = SidecarEnv {
            probe: SidecarProbe::Grpc {
                port: 9090,
                service: "shop.Cart".into(),
            },
            ..observe.clone()
        };
        let unprobed_without_ports = SidecarEnv {
            app_ports: Vec::new(),
            probe: SidecarProbe::None,
            ..observe.clone()
        };
        for e in [
            observe,
            proxy,
            https_without_ports,
            grpc,
            unprobed_without_ports,
        ] {
            let mut pairs = e.to_env();
            pairs.extend(
                [
                    (POD_NAME, "web-1"),
                    (POD_NAMESPACE, "shop"),
                    (POD_IP, "10.1.2.3"),
                ]
                .map(|(n, v)| (n.to_owned(), v.to_owned())),
            );
            let (args, unread) = from_env_pairs(&pairs);
            let c = args.validate().expect("valid configuration");
            assert_eq!(c.mode, RunMode::Kubernetes);
            assert_eq!(c.app_ports, e.app_ports);
            assert_eq!(c.admin_port, e.admin_port);
            assert_eq!(
                c.probe.host.to_string(),
                "10.1.2.3",
                "the kubelet's target: the pod IP"
            );
            assert_eq!(c.drain.app_shutdown, e.app_shutdown);
            assert_eq!(c.drain.endpoint_timeout, e.endpoint_timeout);
            assert_eq!(c.drain.quiet_period, e.quiet_period);
            assert_eq!(c.drain.drain_timeout, e.drain_timeout);
            assert_eq!(c.proxy.is_some(), e.drain_mode == DrainMode::Proxy);
            assert_eq!(
                c.proxy.map(|p| p.routes).unwrap_or_default(),
                e.proxy_routes
            );
            let first = e.app_ports.first().copied().unwrap_or_default();
            let (kind, port, path, https, headers, service) = match &e.probe {
                SidecarProbe::Http {
                    port,
                    path,
                    https,
                    headers,
                } => (
                    ProbeKind::Http,
                    *port,
                    path.as_str(),
                    *https,
                    headers.clone(),
                    "",
                ),
                SidecarProbe::Grpc { port, service } => (
                    ProbeKind::Grpc,
                    *port,
                    "/",
                    false,
                    Vec::new(),
                    service.as_str(),
                ),
                SidecarProbe::Tcp { port } => (
                    ProbeKind::Tcp,
                    port.unwrap_or(first),
                    "/",
                    false,
                    Vec::new(),
                    "",
                ),
                SidecarProbe::None => (ProbeKind::None, first, "/", false, Vec::new(), ""),
            };
            assert_eq!(
                (c.probe.kind, c.probe.port, c.probe.path.as_str()),
                (kind, port, path)
            );
            assert_eq!(
                (
                    c.probe.https,
                    &c.probe.headers,
                    c.probe.grpc_service.as_str()
                ),
                (https, &headers, service)
            );
            let log = if e.log_format == "json" {
                LogFormat::Json
            } else {
                LogFormat::Plain
            };
            assert_eq!(c.log_format, log);
            assert_eq!(c.pod.map(|p| p.name).as_deref(), Some("web-1"));
            // The one variable no flag reads is the fail-open timeout.
            assert_eq!(
                unread,
                vec![(
                    SIDECAR_FAIL_OPEN_ENV.to_owned(),
                    e.fail_open_after_seconds.to_string()
                )]
            );
            assert_eq!(
                crate::fail_open::parse_seconds(&unread[0].1),
                Some(Duration::from_secs(e.fail_open_after_seconds as u64))
            );
        }
    }

    #[test]
    fn no_app_ports_means_none_tracked_and_a_probe_needs_its_own_port() {
        let c = args(&["--mode", "standalone", "--app-ports", "", "--probe", "none"])
            .validate()
            .unwrap();
        assert!(c.app_ports.is_empty());
        let err = args(&["--mode", "standalone", "--app-ports", ""])
            .validate()
            .unwrap_err();
        assert!(err.0[0].contains("needs --probe-port"), "{err}");
        let c = args(&[
            "--mode",
            "standalone",
            "--app-ports",
            "",
            "--probe-port",
            "8443",
        ])
        .validate()
        .unwrap();
        assert_eq!(c.probe.port, 8443);
        let err = args(&[
            "--mode",
            "standalone",
            "--app-ports",
            "",
            "--probe",
            "none",
            "--new-connection-signal",
            "ports",
        ])
        .validate()
        .unwrap_err();
        assert!(err.0[0].contains("needs --app-ports"), "{err}");
        assert_eq!(parse_app_ports(" 80, 8080 ,").unwrap().0, vec![80, 8080]);
        assert!(parse_app_ports("http").is_err());
    }

    #[test]
    fn probe_host_defaults_to_the_pod_ip_like_the_kubelet() {
        for ip in ["10.1.2.3", "fd00::7"] {
            let c = args(&[
                "--pod-name",
                "web-1",
                "--pod-namespace",
                "ns",
                "--pod-ip",
                ip,
            ])
            .validate()
            .unwrap();
            assert_eq!(c.probe.host.to_string(), ip);
        }
        let c = args(&["--mode", "standalone"]).validate().unwrap();
        assert_eq!(c.probe.host.to_string(), "127.0.0.1");
        let c = args(&["--mode", "standalone", "--probe-host", "::1"])
            .validate()
            .unwrap();
        assert_eq!(c.probe.host.to_string(), "::1");
    }

    #[test]
    fn probe_scheme_and_headers() {
        let c = args(&[
            "--mode",
            "standalone",
            "--probe-scheme",
            "https",
            "--probe-headers",
            "Host: web.example\nX-Probe: 1",
        ])
        .validate()
        .unwrap();
        assert!(c.probe.https);
        assert_eq!(
            c.probe.headers,
            vec![
                ("Host".to_owned(), "web.example".to_owned()),
                ("X-Probe".to_owned(), "1".to_owned())
            ]
        );
        let err = args(&["--mode", "standalone", "--probe-headers", "Bad Name: x"])
            .validate()
            .unwrap_err();
        assert!(err.0[0].contains("not an HTTP header name"), "{err}");
        assert!(parse_probe_headers("X: a\u{7f}").is_err());
    }

    #[test]
    fn drain_mode_and_app_shutdown_flags_take_the_api_values_in_any_case() {
        let c = args(&[
            "--mode",
            "standalone",
            "--drain-mode",
            "Proxy",
            "--proxy-ports",
            "15001:8080",
            "--app-shutdown",
            "GRACEFUL",
        ])
        .validate()
        .unwrap();
        assert!(c.proxy.is_some());
        assert_eq!(c.drain.app_shutdown, AppShutdown::Graceful);
        let v = ["quiesce-sidecar", "--drain-mode", "mirror"];
        assert!(Args::try_parse_from(v).is_err());
    }

    #[test]
    fn bad_values_fail_to_parse() {
        let v = ["quiesce-sidecar", "--quiet-period", "1 fortnight"];
        assert!(Args::try_parse_from(v).is_err());
        let v = ["quiesce-sidecar", "--app-ports", "http"];
        assert!(Args::try_parse_from(v).is_err());
        let v = ["quiesce-sidecar", "--worker-threads", "0"];
        assert!(Args::try_parse_from(v).is_err());
    }

    #[test]
    fn durations_and_status_ranges() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_status_range("204").unwrap(), (204, 204));
        assert_eq!(parse_status_range("200-299").unwrap(), (200, 299));
        assert!(parse_status_range("300-200").is_err());
        assert!(parse_status_range("700").is_err());
    }
}
