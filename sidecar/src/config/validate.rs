//! [`Args::validate`]: every check of the flags at start, all problems reported at once, and
//! the parsers of the values clap takes as plain strings (proxy routes, probe headers, statuses).

use std::{net::IpAddr, time::Duration};

use super::{
    Args, Config, ConfigError, DrainConfig, DrainMode, NewConnectionSignal, PodIdentity,
    ProbeConfig, ProbeKind, ProbeScheme, ProxyConfig, RunMode,
};

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
