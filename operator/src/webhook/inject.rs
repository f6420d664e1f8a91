//! [`inject`], the webhook's mutation of a pod, as the decisions it makes in order: whether the
//! pod is injected and on which admin port, the app's ports, where the readiness probe runs,
//! proxy mode's routes, the sidecar's environment and container, the readiness gate, the
//! preStop hooks, the grace period check and the marks on the pod. Each is a pure function
//! (those taking a `&mut PodSpec` change only it), tested alone below and together in
//! `webhook::tests` and `tests/inject_prop.rs`.
//!
//! One file: [`inject`] lists these decisions and the file defines them in that order, each
//! with its helpers; split, the order the mutation follows would be spread over files.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, LifecycleHandler,
    ObjectFieldSelector, Pod, PodReadinessGate, PodSpec, Probe, ResourceRequirements,
    SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use quiesce_api::constants::{
    INJECT_DISABLED, INJECT_LABEL, READY_GATE_CONDITION, SIDECAR_CONTAINER_NAME,
    SIDECAR_DRAIN_PATH, annotations, labels,
};
use quiesce_api::sidecar::env as sidecar_env;
use quiesce_api::{DrainMode, DrainSpec, RolloutPolicy, SidecarEnv, SidecarProbe};

use super::SidecarSettings;
use super::fidelity::{self, Notice, PreStop};
use super::proxy_ports::{self, ProxyRoute, take_over_named_ports};

/// How long the sidecar holds a readiness probe of a new pod whose app is not healthy yet.
const READINESS_HOLD_MILLIS: u64 = 1500;
/// The sidecar's readiness probe timeout: the hold plus time for the answer.
const READINESS_TIMEOUT_SECONDS: i32 = 2;

/// What [`inject`] decided.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// The pod is left alone, and why. Some reasons are reported ([`fidelity::skip_notice`]):
    /// a governed pod that cannot be injected must not be missed.
    Skip(&'static str),
    /// The mutated pod, and whether its grace period is shorter than the drain budget.
    Inject {
        /// The pod with the sidecar.
        pod: Box<Pod>,
        /// `Some(message)` when `terminationGracePeriodSeconds` is below the drain budget.
        short_grace: Option<String>,
        /// What the injection changed or could not reproduce, to report.
        notices: Vec<Notice>,
    },
}

/// Adds the sidecar, gate and hooks for `policy` to `pod` (pure).
pub fn inject(pod: &Pod, policy: &RolloutPolicy, settings: &SidecarSettings) -> Decision {
    let admin_port = match admin_port_or_skip(pod, settings.admin_port) {
        Ok(port) => port,
        Err(why) => return Decision::Skip(why),
    };
    let mut notices: Vec<Notice> = admin_port_moved(settings.admin_port, admin_port)
        .into_iter()
        .collect();
    let mut pod = pod.clone();
    let drain = &policy.spec.drain;
    let spec = pod.spec.as_mut().expect("checked by admin_port_or_skip");

    let app_ports = app_ports(spec);
    let (probe, probe_note, probe_notice) = move_readiness_probe(spec, !app_ports.is_empty());
    notices.extend(probe_notice);
    notices.extend(no_app_ports(&app_ports));
    let (routes, mode) = proxy_routes(spec, drain.mode, admin_port);
    let config = sidecar_config(
        policy, settings, admin_port, app_ports, mode, &routes, probe,
    );
    let sidecar = sidecar_container(settings, admin_port, env_vars(&config), &routes);
    add_sidecar(spec, sidecar);
    add_readiness_gate(spec);
    let (not_drained, hook_notices) = add_drain_hooks(spec, admin_port);
    notices.extend(hook_notices);
    let short_grace = short_grace(spec, drain);
    mark_injected(&mut pod, policy, mode, admin_port, probe_note, not_drained);
    Decision::Inject {
        pod: Box::new(pod),
        short_grace,
        notices,
    }
}

/// The sidecar's admin port for `pod`, or why the pod is left alone: opted out by label, no
/// spec, already injected, hostNetwork, or no free admin port near `preferred`
/// ([`fidelity::choose_admin_port`]).
fn admin_port_or_skip(pod: &Pod, preferred: u16) -> Result<u16, &'static str> {
    if pod.labels().get(INJECT_LABEL).map(String::as_str) == Some(INJECT_DISABLED) {
        return Err("opted out by label");
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Err("no spec");
    };
    if spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .any(|c| c.name == SIDECAR_CONTAINER_NAME)
    {
        return Err("already injected");
    }
    if spec.host_network == Some(true) {
        return Err(fidelity::SKIP_HOST_NETWORK);
    }
    fidelity::choose_admin_port(spec, preferred).ok_or(fidelity::SKIP_NO_ADMIN_PORT)
}

/// The notice when the sidecar's admin port is not the `preferred` one of the settings.
fn admin_port_moved(preferred: u16, admin_port: u16) -> Option<Notice> {
    (admin_port != preferred).then(|| {
        Notice::warning(
            fidelity::reasons::ADMIN_PORT_MOVED,
            format!(
                "a container of the pod uses port {preferred}: the sidecar's admin port is {admin_port}"
            ),
        )
    })
}

/// `port` as a port number, `None` outside 1..=65535.
fn port_u16(port: i32) -> Option<u16> {
    // Ports outside 1..=65535 are invalid pods the apiserver rejects after admission.
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// The app's TCP ports (its containers', sorted, once each), for the sidecar's probe and
/// connection tracking.
fn app_ports(spec: &PodSpec) -> Vec<u16> {
    let mut ports: Vec<i32> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .map(|p| p.container_port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports.into_iter().filter_map(port_u16).collect()
}

/// The port a probe's `port` reaches: a number, or the name of an app container's port.
fn probe_port(spec: &PodSpec, port: &IntOrString) -> Option<u16> {
    let port = match port {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    };
    port.and_then(port_u16)
}

/// The sidecar's check of the app's health (from the first app container with a readiness
/// probe; `has_ports`: the app declares TCP ports), the value of
/// [`fidelity::annotations::APP_PROBE`], and the notice when the sidecar does not check the
/// app's probe. A probe the sidecar reproduces is removed from the app container.
fn move_readiness_probe(
    spec: &mut PodSpec,
    has_ports: bool,
) -> (SidecarProbe, String, Option<Notice>) {
    let owner = spec
        .containers
        .iter()
        .position(|c| c.readiness_probe.is_some());
    let readiness = owner.and_then(|i| spec.containers[i].readiness_probe.as_ref());
    // A readiness probe the sidecar reproduces faithfully moves to the sidecar: the kubelet
    // keeps probing a terminating pod's readiness, and its probe of the app over the network
    // would look like new traffic to the drain (a connection every period; with a period at
    // or under the quiet period, every drain would run into its timeout). The kubelet then
    // probes the sidecar, which answers from its own check of the app — the same verdict.
    // A probe the sidecar cannot reproduce (exec, another host) stays on the app.
    let translated = fidelity::translate_probe(readiness, |p| probe_port(spec, p), has_ports);
    if let (Some(i), Ok(_)) = (owner, &translated) {
        spec.containers[i].readiness_probe = None;
    }
    let note = fidelity::probe_annotation(&translated);
    match translated {
        Ok(probe) => (probe, note, None),
        Err(why) => (
            SidecarProbe::None,
            note,
            Some(Notice::normal(
                fidelity::reasons::PROBE_NOT_REPRODUCED,
                format!(
                    "the sidecar does not check the app's readiness probe because {why}; the kubelet's probe of the app container decides the app's readiness"
                ),
            )),
        ),
    }
}

/// The notice when the app declares no TCP port.
fn no_app_ports(app_ports: &[u16]) -> Option<Notice> {
    app_ports.is_empty().then(|| {
        Notice::normal(
            fidelity::reasons::NO_APP_PORTS,
            "the pod declares no TCP container port: its drain waits for the endpoints removal and the quiet period (new connections anywhere in the pod) but tracks no in-flight connection",
        )
    })
}

/// The sidecar's proxy routes, taken over from the app containers' named ports when the
/// policy asks for `requested` = Proxy, and the drain mode the pod really gets.
fn proxy_routes(
    spec: &mut PodSpec,
    requested: DrainMode,
    admin_port: u16,
) -> (Vec<ProxyRoute>, DrainMode) {
    // Proxy mode takes over the app's named ports; with none, nothing can route through the
    // proxy and the pod drains in Observe mode (the policy reports why). Its listeners avoid
    // the admin port and every port the pod's probes and hooks reach.
    let routes = match requested {
        DrainMode::Proxy => {
            let mut reserved = fidelity::used_ports(spec);
            reserved.push(i32::from(admin_port));
            take_over_named_ports(spec, &reserved)
        }
        DrainMode::Observe => Vec::new(),
    };
    let mode = if routes.is_empty() {
        DrainMode::Observe
    } else {
        DrainMode::Proxy
    };
    (routes, mode)
}

/// Everything the sidecar is told ([`SidecarEnv`]): the policy's drain settings and the
/// decisions above.
fn sidecar_config(
    policy: &RolloutPolicy,
    settings: &SidecarSettings,
    admin_port: u16,
    app_ports: Vec<u16>,
    mode: DrainMode,
    routes: &[ProxyRoute],
    probe: SidecarProbe,
) -> SidecarEnv {
    let drain = &policy.spec.drain;
    SidecarEnv {
        app_ports,
        admin_port,
        drain_mode: mode,
        app_shutdown: drain.app_shutdown,
        endpoint_timeout: drain.endpoint_timeout(),
        quiet_period: drain.quiet_period(),
        drain_timeout: drain.timeout(),
        proxy_routes: proxy_ports::route_ports(routes),
        probe,
        log_format: settings.log_format.clone(),
        fail_open_after_seconds: policy.spec.readiness.fail_open_after_seconds,
    }
}

/// The sidecar's environment: the pod's name, namespace and IP from the downward API, then
/// `config`.
fn env_vars(config: &SidecarEnv) -> Vec<EnvVar> {
    let mut env = downward_api_env();
    env.extend(config.to_env().into_iter().map(|(name, value)| EnvVar {
        name,
        value: Some(value),
        ..Default::default()
    }));
    env
}

/// The pod's name, namespace and IP, from the downward API.
fn downward_api_env() -> Vec<EnvVar> {
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    vec![
        field(sidecar_env::POD_NAME, "metadata.name"),
        field(sidecar_env::POD_NAMESPACE, "metadata.namespace"),
        field(sidecar_env::POD_IP, "status.podIP"),
    ]
}

/// An HTTP GET of `path` on the sidecar's admin port.
fn admin_http_get(admin_port: u16, path: &str) -> HTTPGetAction {
    HTTPGetAction {
        path: Some(path.into()),
        port: IntOrString::Int(i32::from(admin_port)),
        ..Default::default()
    }
}

/// The sidecar container (a native sidecar: an init container with `restartPolicy: Always`)
/// with its environment `env`, its admin port and a port per proxy route.
fn sidecar_container(
    settings: &SidecarSettings,
    admin_port: u16,
    env: Vec<EnvVar>,
    routes: &[ProxyRoute],
) -> Container {
    let quantities = |pairs: &[(&str, &str)]| -> BTreeMap<String, Quantity> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
            .collect()
    };
    Container {
        name: SIDECAR_CONTAINER_NAME.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.pull_policy.clone()),
        restart_policy: Some("Always".into()),
        env: Some(env),
        ports: Some(
            std::iter::once(ContainerPort {
                name: Some("quiesce-admin".into()),
                container_port: i32::from(admin_port),
                protocol: Some("TCP".into()),
                ..Default::default()
            })
            .chain(routes.iter().map(ProxyRoute::container_port))
            .collect(),
        ),
        // Until the app is first healthy the sidecar holds each probe up to
        // READINESS_HOLD_MILLIS and answers the moment it is, so a new pod is Ready when its app
        // is, not up to a probe period later; the timeout leaves the answer half a second. The
        // kubelet's shortest period: later, a drain or an unhealthy app is answered at once and
        // seen within `failure_threshold` seconds. A 200-byte loopback request per second is free.
        readiness_probe: Some(Probe {
            http_get: Some(admin_http_get(
                admin_port,
                &format!("/readyz?waitMillis={READINESS_HOLD_MILLIS}"),
            )),
            period_seconds: Some(1),
            timeout_seconds: Some(READINESS_TIMEOUT_SECONDS),
            failure_threshold: Some(2),
            ..Default::default()
        }),
        liveness_probe: Some(Probe {
            http_get: Some(admin_http_get(admin_port, "/livez")),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[
                ("cpu", &settings.cpu_request),
                ("memory", &settings.memory_request),
            ])),
            limits: Some(quantities(&[("memory", &settings.memory_limit)])),
            ..Default::default()
        }),
        security_context: Some(restricted_security_context()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// The restricted Pod Security Standard's container security context.
pub fn restricted_security_context() -> SecurityContext {
    serde_json::from_value(serde_json::json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }))
    .expect("static security context")
}

/// Adds `sidecar` as the pod's first init container.
fn add_sidecar(spec: &mut PodSpec, sidecar: Container) {
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .insert(0, sidecar);
}

/// Adds the `quiesce.dev/ready` readiness gate, unless the pod has it already.
fn add_readiness_gate(spec: &mut PodSpec) {
    let gates = spec.readiness_gates.get_or_insert_with(Vec::new);
    if !gates
        .iter()
        .any(|g| g.condition_type == READY_GATE_CONDITION)
    {
        gates.push(PodReadinessGate {
            condition_type: READY_GATE_CONDITION.into(),
        });
    }
}

/// Gives every app container the preStop hook that calls the sidecar's drain, unless one
/// keeps a hook of its own. Returns why the pod is not drained by quiesce (`None` when it is)
/// and the notices.
fn add_drain_hooks(spec: &mut PodSpec, admin_port: u16) -> (Option<String>, Vec<Notice>) {
    // preStop: a plain sleep is the guess the drain replaces; any other hook of the user is
    // kept, and then no container gets the drain hook — a drain running next to the user's
    // hook would race it (readiness flipped, a report of "drained" while the hook still
    // works) — so the pod is not drained by quiesce, and says so.
    let hooks: Vec<(String, PreStop)> = spec
        .containers
        .iter()
        .map(|c| {
            let hook = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref());
            (c.name.clone(), fidelity::classify_pre_stop(hook))
        })
        .collect();
    if let Some(message) = not_drained(&hooks) {
        let notice = Notice::warning(fidelity::reasons::PRESTOP_KEPT, message.clone());
        return (Some(message), vec![notice]);
    }
    let mut notices = Vec::new();
    for (c, (name, hook)) in spec.containers.iter_mut().zip(&hooks) {
        if let PreStop::Sleep(what) = hook {
            notices.push(Notice::normal(
                fidelity::reasons::PRESTOP_SLEEP_REPLACED,
                format!(
                    "container {name}: preStop {what} replaced by quiesce's drain, which waits as long as the traffic needs instead of a fixed time"
                ),
            ));
        }
        let lifecycle = c.lifecycle.get_or_insert_with(Default::default);
        lifecycle.pre_stop = Some(LifecycleHandler {
            http_get: Some(admin_http_get(admin_port, SIDECAR_DRAIN_PATH)),
            ..Default::default()
        });
    }
    (None, notices)
}

/// Why the pod is not drained by quiesce, when containers keep hooks of their own (`hooks`:
/// each app container's name and preStop hook).
fn not_drained(hooks: &[(String, PreStop)]) -> Option<String> {
    let kept: Vec<String> = hooks
        .iter()
        .filter_map(|(name, h)| match h {
            PreStop::Other(what) => Some(format!("container {name} ({what})")),
            _ => None,
        })
        .collect();
    (!kept.is_empty()).then(|| {
        format!(
            "own preStop hook kept on {}: quiesce does not drain this pod (readiness and rollout pacing still apply); replace the hook by quiesce's drain or remove it to get drains",
            kept.join(", ")
        )
    })
}

/// The warning when the pod's `terminationGracePeriodSeconds` (default 30) is shorter than
/// the drain budget.
fn short_grace(spec: &PodSpec, drain: &DrainSpec) -> Option<String> {
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    let budget = drain.budget_seconds();
    (!drain.grace_period_covers(grace, 0)).then(|| {
        format!(
            "pod terminationGracePeriodSeconds {grace} is shorter than the drain budget of {budget}s: the kubelet may kill the pod mid-drain"
        )
    })
}

/// Labels `pod` with `policy` and annotates what the injection decided: the drain settings,
/// the drain `mode`, the admin port, the app probe's translation and, when the pod is not
/// drained by quiesce, why.
fn mark_injected(
    pod: &mut Pod,
    policy: &RolloutPolicy,
    mode: DrainMode,
    admin_port: u16,
    probe_note: String,
    not_drained: Option<String>,
) {
    let name = policy.name_any();
    let drain = &policy.spec.drain;
    pod.annotations_mut()
        .insert(annotations::INJECTED_BY.into(), name.clone());
    if let Ok(config) = serde_json::to_string(drain) {
        pod.annotations_mut()
            .insert(annotations::DRAIN_CONFIG.into(), config);
    }
    pod.annotations_mut()
        .insert(annotations::DRAIN_MODE.into(), mode.as_str().into());
    pod.annotations_mut().insert(
        fidelity::annotations::ADMIN_PORT.into(),
        admin_port.to_string(),
    );
    pod.annotations_mut()
        .insert(fidelity::annotations::APP_PROBE.into(), probe_note);
    if let Some(message) = not_drained {
        pod.annotations_mut()
            .insert(fidelity::annotations::NOT_DRAINED.into(), message);
    }
    pod.labels_mut().insert(labels::POLICY.into(), name);
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiesce_api::RolloutPolicySpec;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn app_ports_are_the_app_containers_tcp_ports_sorted_once_each() {
        let spec = spec(json!({
            "initContainers": [{"name": "init", "ports": [{"containerPort": 7000}]}],
            "containers": [
                {"name": "a", "ports": [
                    {"containerPort": 9090},
                    {"containerPort": 8080, "protocol": "TCP"},
                    {"containerPort": 53, "protocol": "UDP"},
                    {"containerPort": 0},
                    {"containerPort": 65536},
                ]},
                {"name": "b", "ports": [{"containerPort": 8080}, {"containerPort": 80, "protocol": "SCTP"}]},
                {"name": "c"},
            ],
        }));
        assert_eq!(app_ports(&spec), vec![8080, 9090]);
        assert_eq!(app_ports(&PodSpec::default()), Vec::<u16>::new());
    }

    #[test]
    fn probe_ports_resolve_names_of_app_ports_only() {
        let spec = spec(json!({
            "initContainers": [{"name": "init", "ports": [{"name": "init", "containerPort": 7000}]}],
            "containers": [{"name": "a", "ports": [
                {"name": "http", "containerPort": 8080},
                {"name": "zero", "containerPort": 0},
            ]}],
        }));
        let port = |p: IntOrString| probe_port(&spec, &p);
        assert_eq!(port(IntOrString::String("http".into())), Some(8080));
        assert_eq!(port(IntOrString::Int(9000)), Some(9000));
        assert_eq!(port(IntOrString::String("init".into())), None);
        assert_eq!(port(IntOrString::String("zero".into())), None);
        assert_eq!(port(IntOrString::Int(70000)), None);
    }

    #[test]
    fn a_reproduced_readiness_probe_moves_and_another_stays() {
        let mut moved = spec(json!({"containers": [
            {"name": "a"},
            {"name": "b", "ports": [{"name": "http", "containerPort": 8080}],
             "readinessProbe": {"httpGet": {"path": "healthz", "port": "http"}}},
        ]}));
        let (probe, note, notice) = move_readiness_probe(&mut moved, true);
        assert!(
            matches!(probe, SidecarProbe::Http { port: 8080, ref path, https: false, .. } if path == "/healthz")
        );
        assert_eq!(note, "http");
        assert_eq!(notice, None);
        assert!(moved.containers.iter().all(|c| c.readiness_probe.is_none()));

        let mut kept = spec(json!({"containers": [{"name": "a",
            "readinessProbe": {"exec": {"command": ["true"]}}}]}));
        let (probe, note, notice) = move_readiness_probe(&mut kept, true);
        assert_eq!(probe, SidecarProbe::None);
        assert!(note.starts_with("none: it is an exec probe"), "{note}");
        assert_eq!(
            notice.map(|n| n.reason),
            Some(fidelity::reasons::PROBE_NOT_REPRODUCED)
        );
        assert!(kept.containers[0].readiness_probe.is_some());
    }

    #[test]
    fn proxy_mode_without_named_ports_drains_in_observe_mode() {
        let named = spec(json!({"containers": [{"name": "a",
            "ports": [{"name": "http", "containerPort": 8080}]}]}));
        let unnamed = spec(json!({"containers": [{"name": "a",
            "ports": [{"containerPort": 8080}]}]}));

        let mut s = named.clone();
        let (routes, mode) = proxy_routes(&mut s, DrainMode::Observe, 9901);
        assert_eq!((routes.len(), mode), (0, DrainMode::Observe));
        assert_eq!(s, named, "Observe mode leaves the ports alone");

        let mut s = unnamed.clone();
        let (routes, mode) = proxy_routes(&mut s, DrainMode::Proxy, 9901);
        assert_eq!((routes.len(), mode), (0, DrainMode::Observe));

        let mut s = named;
        let (routes, mode) = proxy_routes(&mut s, DrainMode::Proxy, 9901);
        assert_eq!(mode, DrainMode::Proxy);
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].upstream, 8080);
        assert_ne!(routes[0].listen, 9901);
    }

    #[test]
    fn the_readiness_gate_is_added_once() {
        let mut s = spec(json!({"containers": [],
            "readinessGates": [{"conditionType": "example.com/other"}]}));
        add_readiness_gate(&mut s);
        add_readiness_gate(&mut s);
        let gates: Vec<&str> = s
            .readiness_gates
            .iter()
            .flatten()
            .map(|g| g.condition_type.as_str())
            .collect();
        assert_eq!(gates, ["example.com/other", READY_GATE_CONDITION]);
    }

    #[test]
    fn the_sidecar_goes_first_and_answers_on_its_admin_port() {
        let mut s = spec(json!({"containers": [], "initContainers": [{"name": "init"}]}));
        let env = vec![EnvVar {
            name: "X".into(),
            value: Some("1".into()),
            ..Default::default()
        }];
        let routes = [ProxyRoute {
            name: "http".into(),
            listen: 15001,
            upstream: 8080,
        }];
        add_sidecar(
            &mut s,
            sidecar_container(&SidecarSettings::default(), 9903, env.clone(), &routes),
        );
        let init = s.init_containers.unwrap();
        let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [SIDECAR_CONTAINER_NAME, "init"]);
        let sidecar = &init[0];
        assert_eq!(sidecar.env, Some(env));
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        let ports: Vec<(Option<&str>, i32)> = sidecar
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            [(Some("quiesce-admin"), 9903), (Some("http"), 15001)]
        );
        for probe in [&sidecar.readiness_probe, &sidecar.liveness_probe] {
            let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap();
            assert_eq!(get.port, IntOrString::Int(9903));
        }
    }

    #[test]
    fn the_sidecar_env_starts_with_the_downward_api() {
        let policy = RolloutPolicy::new("p", RolloutPolicySpec::for_deployment("web"));
        let config = sidecar_config(
            &policy,
            &SidecarSettings::default(),
            9901,
            vec![8080],
            DrainMode::Observe,
            &[],
            SidecarProbe::None,
        );
        let env = env_vars(&config);
        let fields: Vec<(&str, Option<&str>)> = env
            .iter()
            .take(3)
            .map(|e| {
                let path = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref());
                (e.name.as_str(), path.map(|f| f.field_path.as_str()))
            })
            .collect();
        assert_eq!(
            fields,
            [
                (sidecar_env::POD_NAME, Some("metadata.name")),
                (sidecar_env::POD_NAMESPACE, Some("metadata.namespace")),
                (sidecar_env::POD_IP, Some("status.podIP")),
            ]
        );
        let rest: Vec<(String, String)> = env[3..]
            .iter()
            .map(|e| (e.name.clone(), e.value.clone().unwrap()))
            .collect();
        assert_eq!(rest, config.to_env());
    }

    #[test]
    fn one_kept_hook_means_no_drain_hook_anywhere() {
        let mut s = spec(json!({"containers": [
            {"name": "a", "lifecycle": {"preStop": {"sleep": {"seconds": 5}}}},
            {"name": "b", "lifecycle": {"preStop": {"exec": {"command": ["/bin/stop"]}}}},
            {"name": "c"},
        ]}));
        let before = s.clone();
        let (not_drained, notices) = add_drain_hooks(&mut s, 9901);
        assert_eq!(s, before);
        assert!(not_drained.as_deref().unwrap().contains("container b"));
        let reasons: Vec<&str> = notices.iter().map(|n| n.reason).collect();
        assert_eq!(reasons, [fidelity::reasons::PRESTOP_KEPT]);
    }

    #[test]
    fn sleeps_and_absent_hooks_get_the_drain_hook() {
        let mut s = spec(json!({"containers": [
            {"name": "a", "lifecycle": {"preStop": {"sleep": {"seconds": 5}}}},
            {"name": "c"},
        ]}));
        let (not_drained, notices) = add_drain_hooks(&mut s, 9902);
        assert_eq!(not_drained, None);
        let reasons: Vec<&str> = notices.iter().map(|n| n.reason).collect();
        assert_eq!(reasons, [fidelity::reasons::PRESTOP_SLEEP_REPLACED]);
        for c in &s.containers {
            let hook = c
                .lifecycle
                .as_ref()
                .and_then(|l| l.pre_stop.as_ref())
                .unwrap();
            assert_eq!(hook.sleep, None);
            assert_eq!(
                hook.http_get,
                Some(admin_http_get(9902, SIDECAR_DRAIN_PATH))
            );
        }
    }

    #[test]
    fn the_grace_period_defaults_to_30_seconds() {
        let drain = DrainSpec {
            endpoint_timeout_seconds: 10,
            quiet_period_millis: 1,
            timeout_seconds: 19,
            ..DrainSpec::default()
        };
        // A budget of 10 + 1 + 19 = 30 seconds.
        assert_eq!(short_grace(&PodSpec::default(), &drain), None);
        let short = PodSpec {
            termination_grace_period_seconds: Some(29),
            ..PodSpec::default()
        };
        assert!(
            short_grace(&short, &drain)
                .unwrap()
                .contains("29 is shorter than the drain budget of 30s")
        );
    }

    #[test]
    fn skips_come_before_the_admin_port_choice() {
        let pod = |v: serde_json::Value| -> Pod { serde_json::from_value(v).unwrap() };
        let opted_out = pod(
            json!({"metadata": {"labels": {(INJECT_LABEL): INJECT_DISABLED}},
            "spec": {"containers": []}}),
        );
        assert_eq!(
            admin_port_or_skip(&opted_out, 9901),
            Err("opted out by label")
        );
        assert_eq!(admin_port_or_skip(&pod(json!({})), 9901), Err("no spec"));
        let injected = pod(json!({"spec": {"containers": [],
            "initContainers": [{"name": SIDECAR_CONTAINER_NAME}], "hostNetwork": true}}));
        assert_eq!(admin_port_or_skip(&injected, 9901), Err("already injected"));
        let host = pod(json!({"spec": {"containers": [], "hostNetwork": true}}));
        assert_eq!(
            admin_port_or_skip(&host, 9901),
            Err(fidelity::SKIP_HOST_NETWORK)
        );
        let busy = pod(json!({"spec": {"containers": [{"name": "a",
            "ports": [{"containerPort": 9901}, {"containerPort": 9902}]}]}}));
        assert_eq!(admin_port_or_skip(&busy, 9901), Ok(9903));
        assert!(admin_port_moved(9901, 9903).is_some_and(|n| n.warning));
        assert_eq!(admin_port_moved(9901, 9901), None);
    }
}
