//! Property tests of the webhook's admission path: arbitrary-but-plausible pods (ports named
//! and numeric, duplicated, 0 and 65535, probes and hooks of every kind, existing sidecars,
//! gates, volumes, security contexts) under arbitrary drain settings. `inject` never panics;
//! the JSON patch the webhook answers applies to the pod and gives a valid Pod with the sidecar
//! once; injection adds no name or port conflict and breaks no probe; the sidecar's environment
//! is one the sidecar itself accepts. Also the operator's reading of drain reports from pod
//! conditions (untrusted: the app can write them).
//!
//! `PROPTEST_CASES` overrides the default case counts (`make fuzz`, docs/security.md, "Fuzzing").

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, ExecAction, GRPCAction, HTTPGetAction,
    HTTPHeader, Lifecycle, LifecycleHandler, Pod, PodCondition, PodReadinessGate, PodSpec,
    PodStatus, Probe, SecurityContext, SleepAction, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::runtime::{reflector, watcher};
use proptest::prelude::*;
use quiesce_api::constants::{
    DRAINED_CONDITION, INJECT_LABEL, READY_GATE_CONDITION, SIDECAR_CONTAINER_NAME, reasons,
};
use quiesce_api::{AppShutdown, DrainMode, DrainReport, RolloutPolicy, RolloutPolicySpec};
use quiesce_operator::controller::{CachedPod, drain_report};
use quiesce_operator::metrics::Metrics;
use quiesce_operator::webhook::{
    Decision, MUTATE_PATH, SidecarSettings, WebhookState, inject, router,
};
use serde_json::{Value, json};
use tower::ServiceExt;

fn cases(default: u32) -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = default;
    }
    c
}

// ------------------------------------------------------------------------------ generators

const PORT_NAMES: &[&str] = &[
    "http",
    "grpc",
    "metrics",
    "admin",
    "quiesce-admin",
    "qz-8080",
    "web-8080",
    "abcdefghijklmno",
];

fn port_number() -> impl Strategy<Value = i32> {
    prop_oneof![
        3 => prop::sample::select(vec![80, 443, 8080, 8081, 9090, 9901, 15001, 15002, 65535]),
        1 => Just(0),
        1 => prop::sample::select(vec![-1, 65536, i32::MIN, i32::MAX]),
        2 => 1..=65535i32,
    ]
}

fn port_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(PORT_NAMES).prop_map(str::to_string),
        1 => "[a-z][a-z0-9-]{0,13}[a-z]",
        1 => Just(String::new()),
    ]
}

fn container_port() -> impl Strategy<Value = ContainerPort> {
    (
        port_number(),
        prop::option::of(port_name()),
        prop::sample::select(vec![None, Some("TCP"), Some("UDP"), Some("SCTP")]),
        prop::option::of(port_number()),
    )
        .prop_map(|(n, name, protocol, host)| ContainerPort {
            container_port: n,
            name,
            protocol: protocol.map(str::to_string),
            host_port: host.filter(|_| n % 7 == 0),
            ..Default::default()
        })
}

fn int_or_name() -> impl Strategy<Value = IntOrString> {
    prop_oneof![
        port_number().prop_map(IntOrString::Int),
        port_name().prop_map(IntOrString::String),
    ]
}

fn http_get() -> impl Strategy<Value = HTTPGetAction> {
    (
        int_or_name(),
        prop::option::of(prop_oneof![
            Just("/".to_string()),
            Just("/healthz".to_string()),
            // With or without the leading '/' ("healthz" is requested as "/healthz").
            "/?[a-z?=&%]{0,12}",
        ]),
        prop::sample::select(vec![None, Some("HTTP"), Some("HTTPS")]),
        prop::option::of(prop::collection::vec(
            ("[A-Za-z-]{1,10}", "[ -~]{0,10}"),
            0..3,
        )),
        prop::option::of(Just("example.test".to_string())),
    )
        .prop_map(|(port, path, scheme, headers, host)| HTTPGetAction {
            port,
            path,
            scheme: scheme.map(str::to_string),
            http_headers: headers.map(|h| {
                h.into_iter()
                    .map(|(name, value)| HTTPHeader { name, value })
                    .collect()
            }),
            host,
        })
}

fn probe() -> impl Strategy<Value = Probe> {
    let handler = prop_oneof![
        http_get().prop_map(|g| Probe {
            http_get: Some(g),
            ..Default::default()
        }),
        int_or_name().prop_map(|port| Probe {
            tcp_socket: Some(TCPSocketAction { port, host: None }),
            ..Default::default()
        }),
        (port_number(), prop::option::of("[a-z.]{0,10}")).prop_map(|(port, service)| Probe {
            grpc: Some(GRPCAction { port, service }),
            ..Default::default()
        }),
        Just(Probe {
            exec: Some(ExecAction {
                command: Some(vec!["cat".into(), "/tmp/healthy".into()]),
            }),
            ..Default::default()
        }),
        Just(Probe::default()),
    ];
    (
        handler,
        prop::option::of(-1..100i32),
        prop::option::of(-1..10i32),
        prop::option::of(-1..10i32),
    )
        .prop_map(|(mut p, period, success, failure)| {
            p.period_seconds = period;
            p.success_threshold = success;
            p.failure_threshold = failure;
            p
        })
}

fn lifecycle_handler() -> impl Strategy<Value = LifecycleHandler> {
    prop_oneof![
        Just(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec!["sleep".into(), "5".into()]),
            }),
            ..Default::default()
        }),
        http_get().prop_map(|g| LifecycleHandler {
            http_get: Some(g),
            ..Default::default()
        }),
        int_or_name().prop_map(|port| LifecycleHandler {
            tcp_socket: Some(TCPSocketAction { port, host: None }),
            ..Default::default()
        }),
        (0..30i64).prop_map(|seconds| LifecycleHandler {
            sleep: Some(SleepAction { seconds }),
            ..Default::default()
        }),
    ]
}

fn security_context() -> impl Strategy<Value = SecurityContext> {
    (
        prop::option::of(any::<bool>()),
        prop::option::of(any::<bool>()),
        prop::option::of(prop_oneof![Just(0i64), Just(1000i64), Just(65532i64)]),
    )
        .prop_map(|(privileged, ro, user)| SecurityContext {
            privileged,
            read_only_root_filesystem: ro,
            run_as_user: user,
            ..Default::default()
        })
}

fn container_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["app", "web", "worker", "istio-proxy", "init"]).prop_map(str::to_string),
        2 => "[a-z][a-z0-9-]{0,8}",
        1 => Just(SIDECAR_CONTAINER_NAME.to_string()),
    ]
}

fn container() -> impl Strategy<Value = Container> {
    (
        container_name(),
        prop::option::of(prop::collection::vec(container_port(), 0..4)),
        (
            prop::option::of(probe()),
            prop::option::of(probe()),
            prop::option::of(probe()),
        ),
        prop::option::of((
            prop::option::of(lifecycle_handler()),
            prop::option::of(lifecycle_handler()),
        )),
        prop::option::of(security_context()),
        prop::option::of(prop::collection::vec(
            prop::sample::select(vec!["data", "tmp", "config"]),
            0..2,
        )),
        prop::option::of(prop::collection::vec(("[A-Z_]{1,12}", "[ -~]{0,12}"), 0..3)),
    )
        .prop_map(
            |(name, ports, (readiness, liveness, startup), lifecycle, sc, mounts, env)| Container {
                name,
                image: Some("demo:v1".into()),
                ports,
                readiness_probe: readiness,
                liveness_probe: liveness,
                startup_probe: startup,
                lifecycle: lifecycle.map(|(post_start, pre_stop)| Lifecycle {
                    post_start,
                    pre_stop,
                    ..Default::default()
                }),
                security_context: sc,
                volume_mounts: mounts.map(|m| {
                    m.into_iter()
                        .map(|v| VolumeMount {
                            name: v.into(),
                            mount_path: format!("/{v}"),
                            ..Default::default()
                        })
                        .collect()
                }),
                env: env.map(|e| {
                    e.into_iter()
                        .map(|(name, value)| EnvVar {
                            name,
                            value: Some(value),
                            ..Default::default()
                        })
                        .collect()
                }),
                ..Default::default()
            },
        )
}

/// An init container: a plain one, or a native sidecar (`restartPolicy: Always`).
fn init_container() -> impl Strategy<Value = Container> {
    (container(), any::<bool>()).prop_map(|(mut c, native)| {
        c.restart_policy = native.then(|| "Always".into());
        if !native {
            c.readiness_probe = None;
            c.liveness_probe = None;
            c.startup_probe = None;
            c.lifecycle = None;
        }
        c
    })
}

fn pod() -> impl Strategy<Value = Pod> {
    (
        prop::collection::vec(container(), 1..4),
        prop::option::of(prop::collection::vec(init_container(), 0..3)),
        prop::option::of(prop::collection::vec(
            prop::sample::select(vec![READY_GATE_CONDITION, "example.com/other"]),
            0..3,
        )),
        prop::option::of(prop_oneof![Just(0i64), 1..120i64, Just(i64::MAX), Just(-5)]),
        prop::option::of(prop::sample::select(vec!["disabled", "enabled", ""])),
        prop::option::of(prop::collection::btree_map(
            "[a-z./-]{1,20}",
            "[ -~]{0,20}",
            0..3,
        )),
        any::<bool>(),
    )
        .prop_map(
            |(containers, init, gates, grace, inject_label, annotations, volumes)| {
                let mut labels = BTreeMap::from([
                    ("app".to_string(), "web".to_string()),
                    ("pod-template-hash".to_string(), "5d8f7c9b4".to_string()),
                ]);
                if let Some(v) = inject_label {
                    labels.insert(INJECT_LABEL.into(), v.into());
                }
                Pod {
                    metadata: ObjectMeta {
                        generate_name: Some("web-5d8f7c9b4-".into()),
                        namespace: Some("shop".into()),
                        labels: Some(labels),
                        annotations,
                        owner_references: Some(vec![OwnerReference {
                            api_version: "apps/v1".into(),
                            kind: "ReplicaSet".into(),
                            name: "web-5d8f7c9b4".into(),
                            uid: "rs-uid".into(),
                            controller: Some(true),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    },
                    spec: Some(PodSpec {
                        containers,
                        init_containers: init,
                        readiness_gates: gates.map(|g| {
                            g.into_iter()
                                .map(|c| PodReadinessGate {
                                    condition_type: c.into(),
                                })
                                .collect()
                        }),
                        termination_grace_period_seconds: grace,
                        volumes: volumes.then(|| {
                            ["data", "tmp", "config"]
                                .into_iter()
                                .map(|v| Volume {
                                    name: v.into(),
                                    empty_dir: Some(EmptyDirVolumeSource::default()),
                                    ..Default::default()
                                })
                                .collect()
                        }),
                        ..Default::default()
                    }),
                    status: None,
                }
            },
        )
}

/// A policy for the Deployment `web`: drain settings within the CRD's bounds (`in_bounds`) or
/// anything an `i32` holds.
fn policy() -> impl Strategy<Value = (RolloutPolicy, bool)> {
    let quiet = prop_oneof![Just(0), 100..=60_000i32];
    let bounded = (1..=3600i32, quiet, 1..=3600i32, 1..=86_400i32);
    let wild = (any::<i32>(), any::<i32>(), any::<i32>(), any::<i32>());
    (
        prop_oneof![
            // The CRD's bounds, and its rules: the quiet period is 0 or at least 100 ms, and
            // ends within the timeout.
            3 => bounded.prop_map(|(e, q, t, f)| ((e, q.min(t * 1000 - 100), t, f), true)),
            1 => wild.prop_map(|w| (w, false)),
        ],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(((endpoint, quiet, timeout, fail_open), in_bounds), proxy, graceful)| {
                let mut spec = RolloutPolicySpec::for_deployment("web");
                spec.drain.endpoint_timeout_seconds = endpoint;
                spec.drain.quiet_period_millis = quiet;
                spec.drain.timeout_seconds = timeout;
                spec.drain.mode = if proxy {
                    DrainMode::Proxy
                } else {
                    DrainMode::Observe
                };
                spec.drain.app_shutdown = if graceful {
                    AppShutdown::Graceful
                } else {
                    AppShutdown::Immediate
                };
                spec.readiness.fail_open_after_seconds = fail_open;
                let mut p = RolloutPolicy::new("web", spec);
                p.metadata.namespace = Some("shop".into());
                (p, in_bounds)
            },
        )
}

// ------------------------------------------------------------------------------ properties

fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
}

/// What the apiserver checks that the properties below rely on: unique container names, ports
/// in 1..=65535, port names unique within a container, and the sidecar not there yet.
fn plausibly_valid(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let mut names = BTreeSet::new();
    all_containers(spec).all(|c| {
        let mut port_names = BTreeSet::new();
        c.name != SIDECAR_CONTAINER_NAME
            && names.insert(c.name.clone())
            && c.ports.iter().flatten().all(|p| {
                (1..=65535).contains(&p.container_port)
                    && p.name
                        .as_ref()
                        .is_none_or(|n| !n.is_empty() && port_names.insert(n.clone()))
            })
    })
}

/// `(container, port, protocol)` of every declared port.
fn declared_ports(spec: &PodSpec) -> Vec<(String, i32, String)> {
    all_containers(spec)
        .flat_map(|c| {
            c.ports.iter().flatten().map(|p| {
                (
                    c.name.clone(),
                    p.container_port,
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                )
            })
        })
        .collect()
}

/// Ports two different containers both declare (same number and protocol).
fn shared_ports(spec: &PodSpec) -> BTreeSet<(i32, String)> {
    let ports = declared_ports(spec);
    let mut shared = BTreeSet::new();
    for (i, (c1, n1, p1)) in ports.iter().enumerate() {
        for (c2, n2, p2) in &ports[i + 1..] {
            if c1 != c2 && n1 == n2 && p1 == p2 {
                shared.insert((*n1, p1.clone()));
            }
        }
    }
    shared
}

/// Every port reference of a container's probes and hooks.
fn port_refs(c: &Container) -> Vec<(&'static str, IntOrString)> {
    let mut refs = Vec::new();
    for (what, p) in [
        ("readinessProbe", &c.readiness_probe),
        ("livenessProbe", &c.liveness_probe),
        ("startupProbe", &c.startup_probe),
    ] {
        if let Some(p) = p {
            if let Some(g) = &p.http_get {
                refs.push((what, g.port.clone()));
            }
            if let Some(t) = &p.tcp_socket {
                refs.push((what, t.port.clone()));
            }
        }
    }
    if let Some(l) = &c.lifecycle {
        for (what, h) in [("preStop", &l.pre_stop), ("postStart", &l.post_start)] {
            if let Some(h) = h {
                if let Some(g) = &h.http_get {
                    refs.push((what, g.port.clone()));
                }
                if let Some(t) = &h.tcp_socket {
                    refs.push((what, t.port.clone()));
                }
            }
        }
    }
    refs
}

/// The port number a reference reaches, resolved as the kubelet does (names in the
/// container's own ports).
fn resolve(c: &Container, port: &IntOrString) -> Option<i32> {
    match port {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

/// The sidecar's environment as its flags (what clap does with the environment), with the
/// downward-API variables filled in; `None` for a variable no flag reads.
fn sidecar_argv(sidecar: &Container) -> Vec<String> {
    use clap::CommandFactory;
    let cmd = quiesce_sidecar::config::Args::command();
    let mut argv = vec!["quiesce-sidecar".to_owned()];
    for e in sidecar.env.iter().flatten() {
        let value = match (e.name.as_str(), &e.value) {
            (_, Some(v)) => v.clone(),
            ("POD_NAME", None) => "web-5d8f7c9b4-abcde".into(),
            ("POD_NAMESPACE", None) => "shop".into(),
            ("POD_IP", None) => "10.1.2.3".into(),
            _ => continue,
        };
        if let Some(long) = cmd
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|v| v == e.name.as_str()))
            .and_then(|a| a.get_long())
        {
            argv.push(format!("--{long}={value}"));
        }
    }
    argv
}

/// Checks one pod against one policy; `Err` says which property failed.
fn check(pod: &Pod, policy: &RolloutPolicy, in_bounds: bool) -> Result<(), TestCaseError> {
    let decision = inject(pod, policy, &SidecarSettings::default());
    // Anything else is the pod left alone (a skip, or a reason it cannot be injected).
    #[allow(unreachable_patterns)]
    let mutated = match decision {
        Decision::Inject { pod, .. } => *pod,
        _ => return Ok(()),
    };

    // The patch the webhook answers (json_patch::diff, as `respond`) applies cleanly to the
    // pod it was computed for and gives the mutated pod, a valid Pod.
    let before = serde_json::to_value(pod).unwrap();
    let after = serde_json::to_value(&mutated).unwrap();
    let patch = json_patch::diff(&before, &after);
    let mut patched = before.clone();
    json_patch::patch(&mut patched, &patch)
        .map_err(|e| TestCaseError::fail(format!("patch does not apply: {e}")))?;
    prop_assert_eq!(&patched, &after);
    let patched: Pod = serde_json::from_value(patched)
        .map_err(|e| TestCaseError::fail(format!("patched pod is not a Pod: {e}")))?;
    let spec = patched.spec.as_ref().unwrap();
    let in_spec = pod.spec.as_ref().unwrap();

    // The sidecar once, as a native sidecar first among the init containers.
    let sidecars: Vec<&Container> = all_containers(spec)
        .filter(|c| c.name == SIDECAR_CONTAINER_NAME)
        .collect();
    prop_assert_eq!(sidecars.len(), 1);
    let init = spec.init_containers.as_ref().unwrap();
    prop_assert_eq!(&init[0].name, SIDECAR_CONTAINER_NAME);
    prop_assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
    let sidecar = &init[0];

    // Nothing of the pod is lost: the same app containers, init containers after the sidecar.
    prop_assert_eq!(spec.containers.len(), in_spec.containers.len());
    prop_assert_eq!(
        init.len() - 1,
        in_spec.init_containers.as_ref().map_or(0, Vec::len)
    );
    for (a, b) in spec.containers.iter().zip(&in_spec.containers) {
        prop_assert_eq!(&a.name, &b.name);
        prop_assert_eq!(&a.image, &b.image);
        prop_assert_eq!(&a.security_context, &b.security_context);
        prop_assert_eq!(&a.volume_mounts, &b.volume_mounts);
        // Hooks are kept, or a preStop becomes the drain call (checked below).
        prop_assert_eq!(
            a.lifecycle
                .as_ref()
                .and_then(|l| l.post_start.as_ref())
                .is_some(),
            b.lifecycle
                .as_ref()
                .and_then(|l| l.post_start.as_ref())
                .is_some()
        );
    }

    // The readiness gate once (unless the pod already listed it twice), others kept.
    let gates: Vec<&str> = spec
        .readiness_gates
        .iter()
        .flatten()
        .map(|g| g.condition_type.as_str())
        .collect();
    let in_gates = in_spec.readiness_gates.iter().flatten().count();
    let ours = gates.iter().filter(|g| **g == READY_GATE_CONDITION).count();
    prop_assert!(ours >= 1);
    prop_assert!(gates.len() <= in_gates + 1);

    // The sidecar's probes and hooks reach its own ports.
    let sidecar_ports: Vec<i32> = sidecar
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    for (what, port) in port_refs(sidecar) {
        let n = resolve(sidecar, &port);
        prop_assert!(
            n.is_some_and(|n| sidecar_ports.contains(&n)),
            "sidecar {} on {:?}",
            what,
            port
        );
    }

    if !plausibly_valid(pod) {
        return Ok(());
    }
    // From here the input is a pod the apiserver could accept.

    // Names stay unique: containers, and port names within each container.
    let mut names = BTreeSet::new();
    for c in all_containers(spec) {
        prop_assert!(names.insert(&c.name), "container name {} twice", c.name);
        let mut port_names = BTreeSet::new();
        for p in c.ports.iter().flatten() {
            if let Some(n) = &p.name {
                prop_assert!(
                    port_names.insert(n),
                    "port name {} twice in container {}",
                    n,
                    c.name
                );
            }
        }
    }

    // No two containers share a port that did not already: the sidecar's ports (admin, proxy
    // listeners) are nobody else's.
    let shared_before = shared_ports(in_spec);
    for shared in shared_ports(spec) {
        prop_assert!(
            shared_before.contains(&shared),
            "injection made port {:?} shared: {:?}",
            shared,
            declared_ports(spec)
        );
    }

    // Every probe and hook of the app reaches the port it reached before (by its name, or by
    // the number its name stood for); a preStop that is new (or replaced by the drain call)
    // reaches the sidecar.
    for (c, old) in spec.containers.iter().zip(&in_spec.containers) {
        let before: Vec<_> = port_refs(old)
            .into_iter()
            .map(|(w, p)| (w, resolve(old, &p)))
            .collect();
        let after: Vec<_> = port_refs(c)
            .into_iter()
            .map(|(w, p)| (w, resolve(c, &p)))
            .collect();
        for (what, n) in &after {
            let drain_call = *what == "preStop" && n.is_some_and(|n| sidecar_ports.contains(&n));
            if let Some((_, m)) = before.iter().find(|(w, _)| w == what) {
                // A name that resolved nowhere in its container may be rewritten to the number
                // a taken-over port of that name stood for: not a move.
                prop_assert!(
                    n == m || m.is_none() || drain_call,
                    "{} of {} moved from {:?} to {:?}",
                    what,
                    c.name,
                    m,
                    n
                );
            } else {
                prop_assert_eq!(*what, "preStop");
                prop_assert!(n.is_some_and(|n| sidecar_ports.contains(&n)));
            }
        }
    }

    // The sidecar accepts the environment the webhook wrote (within the CRD's bounds).
    if in_bounds {
        let argv = sidecar_argv(sidecar);
        let args = <quiesce_sidecar::config::Args as clap::Parser>::try_parse_from(&argv)
            .map_err(|e| TestCaseError::fail(format!("sidecar flags {argv:?}: {e}")))?;
        if let Err(e) = args.validate() {
            return Err(TestCaseError::fail(format!(
                "the sidecar refuses its environment {argv:?}: {e}"
            )));
        }
    }
    Ok(())
}

/// Runs `f` on a thread with a large stack: in debug builds, generating, shrinking and
/// handling Pods by value (k8s-openapi's structs are large) overflows a test thread's 2 MiB.
fn big_stack(f: impl FnOnce() + Send + 'static) {
    let t = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(f)
        .unwrap();
    if let Err(panic) = t.join() {
        std::panic::resume_unwind(panic);
    }
}

/// `inject` on arbitrary pods and policies: see [`check`].
#[test]
fn inject_gives_a_valid_patch_and_a_working_sidecar() {
    big_stack(|| {
        proptest!(cases(384), |(pod in pod(), (policy, in_bounds) in policy())| {
            check(&pod, &policy, in_bounds)?;
        });
    });
}

// ------------------------------------------------------------------- through the router

fn state(policy: RolloutPolicy) -> WebhookState {
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitApply(policy));
    writer.apply_watcher_event(&watcher::Event::InitDone);
    std::mem::forget(writer);
    let (replicasets, rs_writer) = reflector::store();
    std::mem::forget(rs_writer);
    WebhookState {
        policies: reader,
        replicasets,
        settings: Arc::new(SidecarSettings::default()),
        metrics: Arc::new(Metrics::default()),
        recorder: None,
    }
}

/// The AdmissionReview answer of the webhook for `object` (any JSON as the pod).
fn review(policy: RolloutPolicy, object: Value, operation: &str) -> Value {
    let body = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "req-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": operation,
            "namespace": "shop",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async move {
        let resp = router(state(policy))
            .oneshot(
                http::Request::post(MUTATE_PATH)
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(body.to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        if status != 200 {
            // axum's JSON extractor refuses what is not an AdmissionReview of a Pod.
            return json!({"rejected": status.as_u16()});
        }
        serde_json::from_slice(&bytes).unwrap()
    })
}

/// Edits of a pod's JSON: a field dropped, or replaced by a value of another type.
fn json_edits() -> impl Strategy<Value = Vec<(f64, u8)>> {
    prop::collection::vec((0.0..1.0f64, 0..4u8), 0..4)
}

fn edit_json(v: &mut Value, at: f64, kind: u8) {
    // Walk to the node at relative position `at` in a depth-first order.
    fn nodes(v: &Value, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(path.clone());
        match v {
            Value::Object(m) => m.iter().for_each(|(k, c)| {
                let mut p = path.clone();
                p.push(k.clone());
                nodes(c, p, out);
            }),
            Value::Array(a) => a.iter().enumerate().for_each(|(i, c)| {
                let mut p = path.clone();
                p.push(i.to_string());
                nodes(c, p, out);
            }),
            _ => {}
        }
    }
    let mut all = Vec::new();
    nodes(v, Vec::new(), &mut all);
    let path = &all[((at * all.len() as f64) as usize).min(all.len() - 1)];
    let pointer: String = path.iter().map(|p| format!("/{p}")).collect();
    let Some(node) = v.pointer_mut(&pointer) else {
        return;
    };
    *node = match kind {
        0 => Value::Null,
        1 => json!("x"),
        2 => json!(-1),
        _ => json!({}),
    };
}

/// Through the HTTP handler: every review is answered (allowed, with a patch that applies to
/// the pod and keeps it a Pod when there is one), also for pods whose JSON was damaged and for
/// operations other than CREATE. Never a panic.
#[test]
fn admission_always_answers_with_an_applicable_patch() {
    big_stack(|| {
        proptest!(cases(96), |(
            pod in pod(),
            (policy, _) in policy(),
            edits in json_edits(),
            operation in prop::sample::select(vec!["CREATE", "CREATE", "CREATE", "UPDATE", "DELETE"]),
        )| {
            admission_case(pod, policy, edits, operation)?;
        });
    });
}

fn admission_case(
    pod: Pod,
    policy: RolloutPolicy,
    edits: Vec<(f64, u8)>,
    operation: &str,
) -> Result<(), TestCaseError> {
    {
        let mut object = serde_json::to_value(&pod).unwrap();
        for (at, kind) in edits {
            edit_json(&mut object, at, kind);
        }
        let answer = review(policy, object.clone(), operation);
        if answer.get("rejected").is_some() {
            // Only JSON that is not a Pod is refused by the extractor.
            prop_assert!(serde_json::from_value::<Pod>(object).is_err());
            return Ok(());
        }
        let r = &answer["response"];
        prop_assert_eq!(&r["uid"], "req-1");
        prop_assert_eq!(&r["allowed"], true);
        if let Some(patch) = r.get("patch") {
            prop_assert_eq!(operation, "CREATE");
            prop_assert_eq!(&r["patchType"], "JSONPatch");
            let bytes: Vec<u8> = serde_json::from_value(patch.clone()).unwrap();
            let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
            // The patch is computed on the pod as the webhook read it (typed, then serialized).
            let mut doc =
                serde_json::to_value(serde_json::from_value::<Pod>(object).unwrap()).unwrap();
            json_patch::patch(&mut doc, &patch)
                .map_err(|e| TestCaseError::fail(format!("patch does not apply: {e}")))?;
            let patched: Pod = serde_json::from_value(doc)
                .map_err(|e| TestCaseError::fail(format!("patched pod is not a Pod: {e}")))?;
            let n = all_containers(patched.spec.as_ref().unwrap())
                .filter(|c| c.name == SIDECAR_CONTAINER_NAME)
                .count();
            prop_assert_eq!(n, 1);
        }
    }
    Ok(())
}

// ----------------------------------------------------------- drain reports on pod conditions

fn report_message() -> impl Strategy<Value = Option<String>> {
    let report = (any::<u64>(), 0..100_000u64, any::<bool>()).prop_map(|(d, small, forced)| {
        DrainReport {
            duration_ms: if d % 2 == 0 { d } else { small },
            forced,
            ..Default::default()
        }
        .to_condition_message()
    });
    prop::option::of(prop_oneof![
        3 => report,
        1 => "\\PC{0,60}",
        1 => Just("drained in 2.41s (endpoints 0.00s, quiet 0.85s, in-flight 1.56s); not forced".to_string()),
        1 => r#"\{"durationMs":-?[0-9]{1,25}(\.[0-9])?(e[0-9]{1,3})?\}"#,
    ])
}

proptest! {
    #![proptest_config(cases(512))]

    /// The operator reads any drained condition without panicking; a finished one counts as a
    /// drain, its duration only when it is a plausible number of milliseconds.
    #[test]
    fn drain_report_from_any_condition(
        message in report_message(),
        status in prop::sample::select(vec!["True", "False", "Unknown", ""]),
        reason in prop::option::of(prop::sample::select(vec![reasons::DRAIN_TIMED_OUT, "Drained", "x"])),
        grace in prop::option::of(any::<i64>()),
        other_first in any::<bool>(),
    ) {
        let condition = PodCondition {
            type_: DRAINED_CONDITION.into(),
            status: status.into(),
            reason: reason.map(str::to_string),
            message: message.clone(),
            ..Default::default()
        };
        let mut conditions = vec![condition];
        if other_first {
            conditions.insert(0, PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            });
        }
        let pod = Pod {
            spec: Some(PodSpec {
                termination_grace_period_seconds: grace,
                ..Default::default()
            }),
            status: Some(PodStatus {
                conditions: Some(conditions),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = drain_report(&CachedPod::of(&pod));
        prop_assert_eq!(r.is_some(), status == "True");
        if let Some(r) = r {
            if let Some(ms) = r.duration_millis {
                prop_assert!((0..=86_400_000).contains(&ms), "{}", ms);
            }
            if reason == Some(reasons::DRAIN_TIMED_OUT) {
                prop_assert!(r.forced);
            }
        }
    }
}

/// A pod of `containers` (JSON) for the Deployment `web`.
fn pod_with(containers: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"generateName": "web-5d8f7c9b4-", "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "5d8f7c9b4"}},
        "spec": {"containers": containers}
    }))
    .unwrap()
}

fn proxy_policy() -> RolloutPolicy {
    let mut spec = RolloutPolicySpec::for_deployment("web");
    spec.drain.mode = DrainMode::Proxy;
    let mut p = RolloutPolicy::new("web", spec);
    p.metadata.namespace = Some("shop".into());
    p
}

/// Regression (found by `inject_gives_a_valid_patch_and_a_working_sidecar`): in proxy mode an
/// app port named `quiesce-admin` was taken over, and the sidecar declared that name twice —
/// a pod the apiserver rejects.
#[test]
fn an_app_port_named_like_the_admin_port_is_not_taken_over() {
    let pod = pod_with(json!([{"name": "app", "image": "demo",
        "ports": [{"name": "quiesce-admin", "containerPort": 1},
                  {"name": "http", "containerPort": 8080}]}]));
    big_stack(move || check(&pod, &proxy_policy(), true).unwrap());
}

/// Regression (found by `inject_gives_a_valid_patch_and_a_working_sidecar`): the kubelet
/// requests an httpGet path without its leading '/' (`healthz`) as `/healthz`, but the webhook
/// handed `healthz` to the sidecar, which refused it (`--probe-path must start with '/'`) and
/// did not start — the pod never started.
#[test]
fn a_probe_path_without_a_slash_starts_the_sidecar() {
    let pod = pod_with(json!([{"name": "app", "image": "demo",
        "ports": [{"containerPort": 80}],
        "readinessProbe": {"httpGet": {"path": "healthz", "port": 80}}}]));
    let mut policy = proxy_policy();
    policy.spec.drain.mode = DrainMode::Observe;
    big_stack(move || check(&pod, &policy, true).unwrap());
}

/// Regression (found by `inject_gives_a_valid_patch_and_a_working_sidecar`): two named TCP
/// ports of one number in a container were both renamed `qz-<number>` in proxy mode — a
/// duplicate port name, a pod the apiserver rejects. Likewise a port already named so.
#[test]
fn taken_over_ports_keep_port_names_unique() {
    for ports in [
        json!([{"name": "http", "containerPort": 15001}, {"name": "grpc", "containerPort": 15001}]),
        json!([{"name": "http", "containerPort": 8080}, {"name": "qz-8080", "containerPort": 9090, "protocol": "UDP"}]),
    ] {
        let pod = pod_with(json!([{"name": "app", "image": "demo", "ports": ports}]));
        big_stack(move || check(&pod, &proxy_policy(), true).unwrap());
    }
}
