//! Injection must never make a healthy pod unhealthy: the pure decisions that keep the sidecar
//! faithful to the pod it joins, and the notices that make every departure visible.
//!
//! - [`translate_probe`]: the app's readiness probe as the sidecar's health check — HTTP and
//!   HTTPS (no certificate verification, as the kubelet), headers, TCP, gRPC health. A probe the
//!   sidecar cannot reproduce (`exec`, a `host` other than the pod, an unresolvable port) is
//!   not guessed: the sidecar does not gate readiness, and the kubelet's own probe of the app
//!   container — which the webhook never removes — stays the judge.
//! - [`choose_admin_port`]: the configured admin port, or the first free one of the
//!   [`ADMIN_PORT_RANGE`] ports above it when a container of the pod uses it.
//! - [`classify_pre_stop`]: an app container's own preStop hook — a plain `sleep` is what the
//!   measured drain replaces; any other hook is kept and the pod is not drained by quiesce.
//!
//! Pods have no name at admission (`generateName`), so [`Notice`]s go out as Events on the
//! RolloutPolicy and as warnings of the admission response (shown by `kubectl`, logged by the
//! ReplicaSet controller); the lasting ones are also pod annotations ([`annotations`]).

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use quiesce_api::SidecarProbe;

/// How many ports, from the configured admin port up, the admin port may take.
pub const ADMIN_PORT_RANGE: u16 = 10;

/// Skip reason of a hostNetwork pod.
pub const SKIP_HOST_NETWORK: &str = "hostNetwork pods are not injected: the sidecar's listeners would take ports of the node and its connection tracking would see the node's traffic; this pod runs without quiesce (no readiness gate, no drain)";

/// Skip reason of a pod whose containers use every admin port of the range.
pub const SKIP_NO_ADMIN_PORT: &str = "not injected: the containers of the pod use all 10 ports from the sidecar's configured admin port; set the operator's sidecar admin port (chart value sidecar.adminPort) to a free range";

/// The notice of a skip reason that must be reported (a pod governed by a policy that runs
/// without quiesce); `None` for the quiet ones (opted out, already injected).
pub fn skip_notice(why: &'static str) -> Option<Notice> {
    let reason = match why {
        SKIP_HOST_NETWORK => reasons::HOST_NETWORK,
        SKIP_NO_ADMIN_PORT => reasons::NO_ADMIN_PORT,
        _ => return None,
    };
    Some(Notice::warning(reason, why))
}

/// Reasons of the webhook's Events (on the RolloutPolicy).
pub mod reasons {
    /// A hostNetwork pod is not injected.
    pub const HOST_NETWORK: &str = "HostNetworkNotInjected";
    /// No admin port is free for the sidecar: the pod is not injected.
    pub const NO_ADMIN_PORT: &str = "AdminPortUnavailable";
    /// The configured admin port is used by a container: the sidecar took another one.
    pub const ADMIN_PORT_MOVED: &str = "AdminPortMoved";
    /// An app container's `preStop: sleep` was replaced by the drain.
    pub const PRESTOP_SLEEP_REPLACED: &str = "PreStopSleepReplaced";
    /// An app container's own preStop hook was kept: the pod is not drained by quiesce.
    pub const PRESTOP_KEPT: &str = "PreStopKept";
    /// The app's readiness probe cannot be reproduced by the sidecar: it does not gate.
    pub const PROBE_NOT_REPRODUCED: &str = "ProbeNotReproduced";
    /// The pod declares no TCP port: no app connection is tracked during drains.
    pub const NO_APP_PORTS: &str = "NoAppPorts";
}

/// Pod annotations written by the webhook (besides those in `quiesce_api::constants`).
pub mod annotations {
    /// The sidecar's admin port (readiness, drain, metrics).
    pub const ADMIN_PORT: &str = "quiesce.dev/admin-port";
    /// The sidecar's health check of the app: `http`, `https`, `grpc`, `tcp`, or `none: <why>`.
    pub const APP_PROBE: &str = "quiesce.dev/app-probe";
    /// Set when quiesce does not drain the pod, with the reason (an app container's own
    /// preStop hook was kept).
    pub const NOT_DRAINED: &str = "quiesce.dev/not-drained";
}

/// Something about one pod the webhook must not do silently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// `true`: a Warning Event (the user should act); `false`: Normal.
    pub warning: bool,
    /// The Event's reason ([`reasons`]).
    pub reason: &'static str,
    /// What happened and what it means.
    pub message: String,
}

impl Notice {
    /// A Warning notice.
    pub fn warning(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            warning: true,
            reason,
            message: message.into(),
        }
    }

    /// A Normal notice.
    pub fn normal(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            warning: false,
            reason,
            message: message.into(),
        }
    }
}

/// The sidecar's health check for the app's readiness `probe` (pure). `resolve` maps a probe
/// port (number or container port name) to a port; `has_ports`: the pod declares TCP ports.
/// `Err` is why the sidecar does not gate (its check is then [`SidecarProbe::None`]).
pub fn translate_probe(
    probe: Option<&Probe>,
    resolve: impl Fn(&IntOrString) -> Option<u16>,
    has_ports: bool,
) -> Result<SidecarProbe, String> {
    let Some(probe) = probe else {
        // No readiness probe: the app counts as ready once it listens on its first declared
        // port (a declaration, not a guess); with none declared, at once, as the kubelet.
        return Ok(if has_ports {
            SidecarProbe::Tcp { port: None }
        } else {
            SidecarProbe::None
        });
    };
    let port = |p: &IntOrString| {
        resolve(p).ok_or_else(|| format!("its port {} is not a container port", show(p)))
    };
    let other_host = |host: &Option<String>| {
        host.as_deref()
            .filter(|h| !h.is_empty())
            .map(|h| format!("it probes another host ({h}), which the sidecar does not reach"))
    };
    if let Some(get) = &probe.http_get {
        if let Some(why) = other_host(&get.host) {
            return Err(why);
        }
        let https = match get.scheme.as_deref() {
            None | Some("HTTP") => false,
            Some("HTTPS") => true,
            Some(other) => return Err(format!("its scheme {other} is neither HTTP nor HTTPS")),
        };
        let mut headers = Vec::new();
        for h in get.http_headers.iter().flatten() {
            let valid = http::HeaderName::from_bytes(h.name.as_bytes()).is_ok()
                && http::HeaderValue::from_str(&h.value).is_ok();
            if !valid {
                return Err(format!(
                    "its header {:?} is not a valid HTTP header",
                    h.name
                ));
            }
            headers.push((h.name.clone(), h.value.clone()));
        }
        return Ok(SidecarProbe::Http {
            port: port(&get.port)?,
            // The kubelet requests "healthz" as "/healthz".
            path: match get.path.as_deref() {
                None | Some("") => "/".into(),
                Some(p) if p.starts_with('/') => p.into(),
                Some(p) => format!("/{p}"),
            },
            https,
            headers,
        });
    }
    if let Some(tcp) = &probe.tcp_socket {
        if let Some(why) = other_host(&tcp.host) {
            return Err(why);
        }
        return Ok(SidecarProbe::Tcp {
            port: Some(port(&tcp.port)?),
        });
    }
    if let Some(grpc) = &probe.grpc {
        return Ok(SidecarProbe::Grpc {
            port: port(&IntOrString::Int(grpc.port))?,
            service: grpc.service.clone().unwrap_or_default(),
        });
    }
    if probe.exec.is_some() {
        return Err("it is an exec probe, which runs in the app container".into());
    }
    Err("it has no handler".into())
}

fn show(p: &IntOrString) -> String {
    match p {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::String(s) => format!("{s:?}"),
    }
}

/// The value of [`annotations::APP_PROBE`] for a translation.
pub fn probe_annotation(t: &Result<SidecarProbe, String>) -> String {
    match t {
        Ok(SidecarProbe::Http { https: true, .. }) => "https".into(),
        Ok(SidecarProbe::Http { .. }) => "http".into(),
        Ok(SidecarProbe::Grpc { .. }) => "grpc".into(),
        Ok(SidecarProbe::Tcp { .. }) => "tcp".into(),
        Ok(SidecarProbe::None) => "none".into(),
        Err(why) => format!("none: {why}"),
    }
}

/// Ports of the pod a listener of the sidecar must not take: every declared container port
/// (app and init containers), and the numeric ports the containers' probes and hooks reach
/// (an app may listen on a port it does not declare).
pub fn used_ports(spec: &PodSpec) -> Vec<i32> {
    let mut used = Vec::new();
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        used.extend(c.ports.iter().flatten().map(|p| p.container_port));
        used.extend(referenced_ports(c));
    }
    used.sort_unstable();
    used.dedup();
    used
}

fn referenced_ports(c: &Container) -> Vec<i32> {
    let num = |p: &IntOrString| match p {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(_) => None,
    };
    let mut out = Vec::new();
    for p in [&c.readiness_probe, &c.liveness_probe, &c.startup_probe]
        .into_iter()
        .flatten()
    {
        out.extend(p.http_get.as_ref().and_then(|g| num(&g.port)));
        out.extend(p.tcp_socket.as_ref().and_then(|t| num(&t.port)));
        out.extend(p.grpc.as_ref().map(|g| g.port));
    }
    for h in c
        .lifecycle
        .iter()
        .flat_map(|l| [&l.pre_stop, &l.post_start])
        .flatten()
    {
        out.extend(h.http_get.as_ref().and_then(|g| num(&g.port)));
        out.extend(h.tcp_socket.as_ref().and_then(|t| num(&t.port)));
    }
    out
}

/// The sidecar's admin port (pure): `preferred` unless a port of the pod ([`used_ports`])
/// is the same, then the first free one of `preferred + 1 ..` (at most [`ADMIN_PORT_RANGE`]
/// ports in all, none above 65535). `None` when all are taken.
pub fn choose_admin_port(spec: &PodSpec, preferred: u16) -> Option<u16> {
    let used = used_ports(spec);
    (0..ADMIN_PORT_RANGE)
        .filter_map(|i| preferred.checked_add(i))
        .find(|p| *p != 0 && !used.contains(&i32::from(*p)))
}

/// What an app container's preStop hook is to quiesce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreStop {
    /// No hook: the drain hook is added.
    Absent,
    /// A plain sleep (`sleep` action, `exec: [sleep, N]`, `exec: [sh, -c, "sleep N"]`): the
    /// guess the measured drain replaces. The text describes it.
    Sleep(String),
    /// Anything else: kept, and the pod is not drained by quiesce.
    Other(String),
}

/// Classifies an app container's preStop hook (pure).
pub fn classify_pre_stop(hook: Option<&LifecycleHandler>) -> PreStop {
    let Some(h) = hook else {
        return PreStop::Absent;
    };
    if let Some(s) = &h.sleep {
        return PreStop::Sleep(format!("sleep action of {}s", s.seconds));
    }
    if let Some(cmd) = h.exec.as_ref().and_then(|e| e.command.as_ref()) {
        let described = format!("exec {cmd:?}");
        return if is_sleep_command(cmd) {
            PreStop::Sleep(described)
        } else {
            PreStop::Other(described)
        };
    }
    if h.http_get.is_some() {
        return PreStop::Other("an httpGet hook".into());
    }
    if h.tcp_socket.is_some() {
        return PreStop::Other("a tcpSocket hook".into());
    }
    PreStop::Other("a hook".into())
}

/// `[sleep, N]` or `[sh, -c, "sleep N"]` (any path to `sleep`, `sh`, `bash`, `ash`, `dash`;
/// `N` a number of seconds, optionally fractional or with an `s`).
pub fn is_sleep_command(cmd: &[String]) -> bool {
    let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_owned();
    let is_sleep =
        |words: &[&str]| matches!(words, [sleep, n] if base(sleep) == "sleep" && is_seconds(n));
    match cmd {
        [sleep, n] => is_sleep(&[sleep.as_str(), n.as_str()]),
        [shell, flag, script]
            if ["sh", "bash", "ash", "dash"].contains(&base(shell).as_str())
                && ["-c", "-ec", "-ce"].contains(&flag.as_str()) =>
        {
            let script = script.trim().trim_end_matches(';').trim();
            let words: Vec<&str> = script.split_whitespace().collect();
            is_sleep(&words)
        }
        _ => false,
    }
}

fn is_seconds(n: &str) -> bool {
    let n = n.strip_suffix('s').unwrap_or(n);
    let mut parts = n.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let frac = parts.next();
    !whole.is_empty()
        && whole.chars().all(|c| c.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_digit()))
}
