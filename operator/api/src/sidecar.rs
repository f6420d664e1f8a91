//! The contract between the webhook and the sidecar it injects: the environment variables the
//! webhook writes and the sidecar reads, as names ([`env`](mod@env)) and as one typed value
//! ([`SidecarEnv`]).
//!
//! The webhook builds a [`SidecarEnv`] and writes [`SidecarEnv::to_env`]; the sidecar's flags
//! are bound to the same names, and [`SidecarEnv::from_env`] reads them back (tested as a round
//! trip here and, through the sidecar's own parser, in the sidecar crate). The downward-API
//! variables ([`env::POD_NAME`], [`env::POD_NAMESPACE`], [`env::POD_IP`]) are written by the
//! webhook as field references, not values, and are not part of [`SidecarEnv`].

pub mod env;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use crate::{AppShutdown, DrainMode};

/// Value of [`env::QUIESCE_MODE`] for an injected sidecar.
pub const KUBERNETES_MODE: &str = "kubernetes";

/// The app health check the webhook hands to the sidecar (from the app's readiness probe).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SidecarProbe {
    /// HTTP GET of `path` on `port`.
    Http {
        /// Port probed.
        port: u16,
        /// Path requested.
        path: String,
        /// `https`: TLS without certificate verification, as the kubelet does.
        https: bool,
        /// Request headers as `(name, value)`, in order ([`env::QUIESCE_PROBE_HEADERS`]; written
        /// only when not empty). Names and values must be valid HTTP header names and values
        /// without line breaks.
        headers: Vec<(String, String)>,
    },
    /// gRPC health v1 `Check` of `service` (empty: the whole server) on `port`, plaintext, as
    /// the kubelet's `grpc` probe.
    Grpc {
        /// Port probed.
        port: u16,
        /// Service name ([`env::QUIESCE_PROBE_GRPC_SERVICE`]; written only when not empty).
        service: String,
    },
    /// TCP connect to `port` (`None`: the first app port).
    Tcp {
        /// Port probed.
        port: Option<u16>,
    },
    /// No check: the sidecar counts the app as healthy (the kubelet's own probe of the app
    /// container still gates the pod's readiness).
    None,
}

/// Encodes probe headers for [`env::QUIESCE_PROBE_HEADERS`]: one `Name: value` per line.
pub fn headers_to_env(headers: &[(String, String)]) -> String {
    headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Decodes [`env::QUIESCE_PROBE_HEADERS`]: one `Name: value` per line, blank lines ignored, the
/// value trimmed. Checks only the shape; the sidecar checks names and values as HTTP.
pub fn headers_from_env(s: &str) -> Result<Vec<(String, String)>, String> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("{line:?} is not a header line `Name: value`"))?;
            let name = name.trim();
            if name.is_empty() {
                return Err(format!("{line:?} has no header name"));
            }
            Ok((name.to_owned(), value.trim().to_owned()))
        })
        .collect()
}

/// Everything the webhook decides for one injected sidecar, written as its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarEnv {
    /// The app's TCP ports ([`env::QUIESCE_APP_PORTS`]); empty when the pod declares none (the
    /// drain then tracks no app connection: no port is guessed).
    pub app_ports: Vec<u16>,
    /// The sidecar's admin port ([`env::QUIESCE_ADMIN_PORT`]): readiness, liveness, the
    /// preStop drain call and metrics.
    pub admin_port: u16,
    /// Drain mode the sidecar really runs ([`env::QUIESCE_DRAIN_MODE`]).
    pub drain_mode: DrainMode,
    /// How the app treats SIGTERM ([`env::QUIESCE_APP_SHUTDOWN`]).
    pub app_shutdown: AppShutdown,
    /// [`env::QUIESCE_ENDPOINT_TIMEOUT`], written in whole seconds when it is one.
    pub endpoint_timeout: Duration,
    /// [`env::QUIESCE_QUIET_PERIOD`], written in milliseconds.
    pub quiet_period: Duration,
    /// [`env::QUIESCE_DRAIN_TIMEOUT`], written in whole seconds when it is one.
    pub drain_timeout: Duration,
    /// Proxy mode: `(listen, upstream)` port pairs ([`env::QUIESCE_PROXY_PORTS`], written only
    /// when not empty).
    pub proxy_routes: Vec<(u16, u16)>,
    /// The app health check ([`env::QUIESCE_PROBE`] and its port and path).
    pub probe: SidecarProbe,
    /// Log format, `json` or `plain` ([`env::QUIESCE_LOG_FORMAT`]).
    pub log_format: String,
    /// Fail-open timeout in seconds ([`env::QUIESCE_FAIL_OPEN_AFTER_SECONDS`]).
    pub fail_open_after_seconds: i32,
}

/// A variable of the sidecar's environment that is missing or cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarEnvError {
    /// The variable.
    pub var: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for SidecarEnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.var, self.problem)
    }
}

impl std::error::Error for SidecarEnvError {}

/// A value that is none of the accepted ones (parsing [`DrainMode`] or [`AppShutdown`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownValue {
    /// The value given.
    pub value: String,
    /// The values accepted.
    pub expected: &'static [&'static str],
}

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not one of {}",
            self.value,
            self.expected.join(", ")
        )
    }
}

impl std::error::Error for UnknownValue {}

impl DrainMode {
    /// The values the sidecar accepts, as the webhook writes them.
    pub const ENV_VALUES: &[&str] = &["observe", "proxy"];

    /// The value as written in the sidecar's environment: `observe` or `proxy`.
    pub fn env_value(self) -> &'static str {
        match self {
            DrainMode::Observe => "observe",
            DrainMode::Proxy => "proxy",
        }
    }
}

impl std::str::FromStr for DrainMode {
    type Err = UnknownValue;

    /// `observe` or `proxy`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        from_env_value(s, &[DrainMode::Observe, DrainMode::Proxy], Self::ENV_VALUES)
    }
}

impl AppShutdown {
    /// The values the sidecar accepts, as the webhook writes them.
    pub const ENV_VALUES: &[&str] = &["immediate", "graceful"];

    /// The value as written in the sidecar's environment: `immediate` or `graceful`.
    pub fn env_value(self) -> &'static str {
        match self {
            AppShutdown::Immediate => "immediate",
            AppShutdown::Graceful => "graceful",
        }
    }
}

impl std::str::FromStr for AppShutdown {
    type Err = UnknownValue;

    /// `immediate` or `graceful`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        from_env_value(
            s,
            &[AppShutdown::Immediate, AppShutdown::Graceful],
            Self::ENV_VALUES,
        )
    }
}

/// The value of `all` written as `s` (`expected`, in the same order; any case, surrounding
/// blanks ignored).
fn from_env_value<T: Copy>(
    s: &str,
    all: &[T],
    expected: &'static [&'static str],
) -> Result<T, UnknownValue> {
    all.iter()
        .zip(expected)
        .find(|(_, name)| name.eq_ignore_ascii_case(s.trim()))
        .map(|(v, _)| *v)
        .ok_or_else(|| UnknownValue {
            value: s.to_owned(),
            expected,
        })
}

/// A duration as the sidecar reads it: `Ns` when whole seconds, `Nms` otherwise.
fn secs_or_millis(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

impl SidecarEnv {
    /// The environment variables, in the order the webhook writes them. Durations have
    /// millisecond precision.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let ports = |ports: &mut dyn Iterator<Item = String>| ports.collect::<Vec<_>>().join(",");
        let mut out = vec![
            (env::QUIESCE_MODE, KUBERNETES_MODE.to_owned()),
            (
                env::QUIESCE_APP_PORTS,
                ports(&mut self.app_ports.iter().map(u16::to_string)),
            ),
            (env::QUIESCE_ADMIN_PORT, self.admin_port.to_string()),
            (env::QUIESCE_DRAIN_MODE, self.drain_mode.env_value().into()),
            (
                env::QUIESCE_APP_SHUTDOWN,
                self.app_shutdown.env_value().into(),
            ),
            (
                env::QUIESCE_ENDPOINT_TIMEOUT,
                secs_or_millis(self.endpoint_timeout),
            ),
            (
                env::QUIESCE_QUIET_PERIOD,
                format!("{}ms", self.quiet_period.as_millis()),
            ),
            (
                env::QUIESCE_DRAIN_TIMEOUT,
                secs_or_millis(self.drain_timeout),
            ),
            (
                env::QUIESCE_FAIL_OPEN_AFTER_SECONDS,
                self.fail_open_after_seconds.to_string(),
            ),
            (env::QUIESCE_LOG_FORMAT, self.log_format.clone()),
        ];
        if !self.proxy_routes.is_empty() {
            out.push((
                env::QUIESCE_PROXY_PORTS,
                ports(
                    &mut self
                        .proxy_routes
                        .iter()
                        .map(|(listen, upstream)| format!("{listen}:{upstream}")),
                ),
            ));
        }
        match &self.probe {
            SidecarProbe::Http {
                port,
                path,
                https,
                headers,
            } => {
                out.push((env::QUIESCE_PROBE, "http".into()));
                out.push((env::QUIESCE_PROBE_PORT, port.to_string()));
                out.push((env::QUIESCE_PROBE_PATH, path.clone()));
                if *https {
                    out.push((env::QUIESCE_PROBE_SCHEME, "https".into()));
                }
                if !headers.is_empty() {
                    out.push((env::QUIESCE_PROBE_HEADERS, headers_to_env(headers)));
                }
            }
            SidecarProbe::Grpc { port, service } => {
                out.push((env::QUIESCE_PROBE, "grpc".into()));
                out.push((env::QUIESCE_PROBE_PORT, port.to_string()));
                if !service.is_empty() {
                    out.push((env::QUIESCE_PROBE_GRPC_SERVICE, service.clone()));
                }
            }
            SidecarProbe::Tcp { port } => {
                out.push((env::QUIESCE_PROBE, "tcp".into()));
                if let Some(port) = port {
                    out.push((env::QUIESCE_PROBE_PORT, port.to_string()));
                }
            }
            SidecarProbe::None => out.push((env::QUIESCE_PROBE, "none".into())),
        }
        out.into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect()
    }

    /// Reads the environment written by [`Self::to_env`] through `lookup` (for example
    /// `|name| std::env::var(name).ok()`).
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SidecarEnvError> {
        let get = |var: &'static str| {
            lookup(var).ok_or_else(|| SidecarEnvError {
                var,
                problem: "missing".into(),
            })
        };
        let bad = |var: &'static str, problem: String| SidecarEnvError { var, problem };
        let duration =
            |var: &'static str| get(var).and_then(|v| parse_duration(&v).map_err(|e| bad(var, e)));
        let port = |var: &'static str, s: &str| {
            s.trim()
                .parse::<u16>()
                .map_err(|_| bad(var, format!("{s:?} is not a port")))
        };

        let mode = get(env::QUIESCE_MODE)?;
        if mode != KUBERNETES_MODE {
            return Err(bad(
                env::QUIESCE_MODE,
                format!("{mode:?}: an injected sidecar runs in {KUBERNETES_MODE} mode"),
            ));
        }
        let app_ports = get(env::QUIESCE_APP_PORTS)?
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| port(env::QUIESCE_APP_PORTS, p))
            .collect::<Result<_, _>>()?;
        let admin_port = port(env::QUIESCE_ADMIN_PORT, &get(env::QUIESCE_ADMIN_PORT)?)?;
        let drain_mode = get(env::QUIESCE_DRAIN_MODE)?
            .parse()
            .map_err(|e: UnknownValue| bad(env::QUIESCE_DRAIN_MODE, e.to_string()))?;
        let app_shutdown = get(env::QUIESCE_APP_SHUTDOWN)?
            .parse()
            .map_err(|e: UnknownValue| bad(env::QUIESCE_APP_SHUTDOWN, e.to_string()))?;
        let proxy_routes = match lookup(env::QUIESCE_PROXY_PORTS) {
            None => Vec::new(),
            Some(routes) => routes
                .split(',')
                .map(|pair| {
                    let (listen, upstream) = pair.split_once(':').ok_or_else(|| {
                        bad(
                            env::QUIESCE_PROXY_PORTS,
                            format!("{pair:?} is not LISTEN:UPSTREAM"),
                        )
                    })?;
                    Ok((
                        port(env::QUIESCE_PROXY_PORTS, listen)?,
                        port(env::QUIESCE_PROXY_PORTS, upstream)?,
                    ))
                })
                .collect::<Result<_, _>>()?,
        };
        let probe_port = || -> Result<Option<u16>, SidecarEnvError> {
            lookup(env::QUIESCE_PROBE_PORT)
                .map(|p| port(env::QUIESCE_PROBE_PORT, &p))
                .transpose()
        };
        let required_port =
            || probe_port()?.ok_or_else(|| bad(env::QUIESCE_PROBE_PORT, "missing".into()));
        let probe = match get(env::QUIESCE_PROBE)?.as_str() {
            "http" => SidecarProbe::Http {
                port: required_port()?,
                path: get(env::QUIESCE_PROBE_PATH)?,
                https: match lookup(env::QUIESCE_PROBE_SCHEME).as_deref() {
                    None | Some("http") => false,
                    Some("https") => true,
                    Some(other) => {
                        return Err(bad(
                            env::QUIESCE_PROBE_SCHEME,
                            format!("{other:?} is not one of http, https"),
                        ));
                    }
                },
                headers: lookup(env::QUIESCE_PROBE_HEADERS)
                    .map(|h| headers_from_env(&h))
                    .transpose()
                    .map_err(|e| bad(env::QUIESCE_PROBE_HEADERS, e))?
                    .unwrap_or_default(),
            },
            "grpc" => SidecarProbe::Grpc {
                port: required_port()?,
                service: lookup(env::QUIESCE_PROBE_GRPC_SERVICE).unwrap_or_default(),
            },
            "tcp" => SidecarProbe::Tcp {
                port: probe_port()?,
            },
            "none" => SidecarProbe::None,
            other => {
                return Err(bad(
                    env::QUIESCE_PROBE,
                    format!("{other:?} is not one of http, grpc, tcp, none"),
                ));
            }
        };
        let fail_open = get(env::QUIESCE_FAIL_OPEN_AFTER_SECONDS)?;
        Ok(Self {
            app_ports,
            admin_port,
            drain_mode,
            app_shutdown,
            endpoint_timeout: duration(env::QUIESCE_ENDPOINT_TIMEOUT)?,
            quiet_period: duration(env::QUIESCE_QUIET_PERIOD)?,
            drain_timeout: duration(env::QUIESCE_DRAIN_TIMEOUT)?,
            proxy_routes,
            probe,
            log_format: get(env::QUIESCE_LOG_FORMAT)?,
            fail_open_after_seconds: fail_open.trim().parse().map_err(|_| {
                bad(
                    env::QUIESCE_FAIL_OPEN_AFTER_SECONDS,
                    format!("{fail_open:?} is not a number of seconds"),
                )
            })?,
        })
    }
}

/// The longest duration [`parse_duration`] accepts: a day. The sidecar adds its durations up
/// and to the clock, which a value near `u64::MAX` seconds overflows (a panic).
pub const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// Parses a duration as the sidecar reads it: `250ms`, `2s`, `1m`, `1h` or a bare number of
/// seconds; at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 10s or 1m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use ms, s, m or h")),
    };
    if d > MAX_DURATION {
        return Err(format!("{s:?} is longer than a day"));
    }
    Ok(d)
}
