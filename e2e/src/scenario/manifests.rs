//! The demo app's variants (plain, `preStop: sleep`, quiesce in each drain mode) and the
//! Deployment, Service and RolloutPolicy each deploys.

use crate::demo_app::DemoApp;

/// Name of the Deployment, its Service and its RolloutPolicy.
pub const APP: &str = "demo-app";
/// Replicas of the demo Deployment; with `maxSurge: 1` a rollout is this many batches.
pub const REPLICAS: usize = 3;
/// The policy's `readiness.minHealthySeconds` (the plain Deployment's `minReadySeconds` is 0 too).
pub const MIN_HEALTHY_SECONDS: u64 = 0;
/// Pod grace period: covers the policy's drain budget (10 s endpoints + 1 s quiet + 30 s).
pub const GRACE_SECONDS: u64 = 60;

/// How the Deployment shuts its old pods down. Unless a variant says `Graceful`, the app exits
/// the moment it gets SIGTERM (the worst case); a graceful app finishes in-flight requests and
/// closes its idle keep-alive connections (HTTP/2: GOAWAY) first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Nothing: the app gets SIGTERM the moment its pod is deleted.
    Plain,
    /// `lifecycle.preStop.sleep.seconds`: the usual workaround.
    PreStopSleep(u32),
    /// `preStop: sleep N` in front of an app that shuts down gracefully.
    GracefulPreStopSleep(u32),
    /// A `RolloutPolicy` targets the Deployment: the webhook injects the sidecar, the operator
    /// paces the rollout through the readiness gate. `drain.mode: Observe`.
    Quiesce,
    /// quiesce, `Observe` with `appShutdown: Graceful`, in front of a graceful app.
    QuiesceGraceful,
    /// quiesce, `drain.mode: Proxy`: the sidecar proxies the app's traffic.
    QuiesceProxy,
    /// quiesce Proxy, but the Service targets the app's port by number: its traffic bypasses
    /// the proxy (the policy says so) and is drained as in Observe mode.
    QuiesceProxyNumericPort,
}

impl Variant {
    /// Human name, as in the report.
    pub fn label(self) -> String {
        match self {
            Variant::Plain => "plain Deployment".into(),
            Variant::PreStopSleep(s) => format!("`preStop: sleep {s}`"),
            Variant::GracefulPreStopSleep(s) => format!("graceful app, `preStop: sleep {s}`"),
            Variant::Quiesce => "quiesce".into(),
            Variant::QuiesceGraceful => "graceful app, quiesce Observe+Graceful".into(),
            Variant::QuiesceProxy => "quiesce Proxy".into(),
            Variant::QuiesceProxyNumericPort => "quiesce Proxy, numeric targetPort".into(),
        }
    }

    /// Short name, for namespaces and `--variants`.
    pub fn slug(self) -> String {
        match self {
            Variant::Plain => "plain".into(),
            Variant::PreStopSleep(s) => format!("sleep{s}"),
            Variant::GracefulPreStopSleep(s) => format!("graceful-sleep{s}"),
            Variant::Quiesce => "quiesce".into(),
            Variant::QuiesceGraceful => "graceful-quiesce".into(),
            Variant::QuiesceProxy => "proxy".into(),
            Variant::QuiesceProxyNumericPort => "proxy-numeric".into(),
        }
    }

    /// Whether a RolloutPolicy governs the Deployment.
    pub fn is_quiesce(self) -> bool {
        matches!(
            self,
            Variant::Quiesce
                | Variant::QuiesceGraceful
                | Variant::QuiesceProxy
                | Variant::QuiesceProxyNumericPort
        )
    }

    /// The demo app's `EXIT_ON_SIGTERM`.
    pub fn app_exit(self) -> &'static str {
        match self {
            Variant::GracefulPreStopSleep(_) | Variant::QuiesceGraceful => "graceful",
            _ => "immediate",
        }
    }
}

/// Milliseconds the demo app answers `/healthz` with 503 after it starts (`HEALTHY_AFTER_MS`, an
/// app that warms up); 0: healthy at once. Set by the bench's `--app-warmup-ms`.
pub static APP_WARMUP_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The demo app's Deployment and Service, at `version`, shutting down as `variant` says. The
/// app keeps its own readiness probe in every variant: with quiesce the sidecar copies it.
pub fn deployment_yaml(variant: Variant, version: &str) -> String {
    let mut app = DemoApp::new(APP, REPLICAS, version)
        .env("EXIT_ON_SIGTERM", variant.app_exit())
        .grace_seconds(GRACE_SECONDS)
        .probe(Some(DemoApp::app_probe(2)))
        .pull_policy("IfNotPresent")
        .resources(serde_json::json!({"requests": {"cpu": "10m", "memory": "16Mi"}}));
    match APP_WARMUP_MS.load(std::sync::atomic::Ordering::Relaxed) {
        0 => {}
        ms => app = app.env("HEALTHY_AFTER_MS", &ms.to_string()),
    }
    if let Variant::PreStopSleep(s) | Variant::GracefulPreStopSleep(s) = variant {
        app = app.pre_stop(serde_json::json!({"sleep": {"seconds": s}}));
    }
    if variant == Variant::QuiesceProxyNumericPort {
        app = app.service_target_port(serde_json::json!(8080));
    }
    app.yaml()
}

/// The demo's RolloutPolicy: no steps (admit every new pod once healthy), drain every old pod
/// before the next one goes; the drain mode and app shutdown as `variant` says.
pub fn policy_yaml(variant: Variant) -> String {
    let (mode, app_shutdown) = match variant {
        Variant::QuiesceProxy | Variant::QuiesceProxyNumericPort => ("Proxy", "Immediate"),
        Variant::QuiesceGraceful => ("Observe", "Graceful"),
        _ => ("Observe", "Immediate"),
    };
    format!(
        r#"apiVersion: quiesce.dev/v1alpha1
kind: RolloutPolicy
metadata: {{name: {APP}}}
spec:
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: {APP}}}
  readiness: {{minHealthySeconds: {MIN_HEALTHY_SECONDS}}}
  drain:
    endpointTimeoutSeconds: 10
    quietPeriodMillis: 1000
    timeoutSeconds: 30
    waitBeforeNextStep: true
    mode: {mode}
    appShutdown: {app_shutdown}
"#
    )
}
#[cfg(test)]
mod tests {
    use quiesce_api::RolloutPolicy;

    use super::*;

    #[test]
    fn manifests_are_valid_yaml_for_every_variant() {
        for v in [
            Variant::Plain,
            Variant::PreStopSleep(5),
            Variant::GracefulPreStopSleep(5),
            Variant::Quiesce,
            Variant::QuiesceGraceful,
            Variant::QuiesceProxy,
        ] {
            for doc in serde_yaml::Deserializer::from_str(&deployment_yaml(v, "v2")) {
                let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap();
                assert!(value.get("kind").is_some(), "{v:?}");
            }
        }
        let d = deployment_yaml(Variant::PreStopSleep(15), "v2");
        assert!(d.contains(r#""preStop":{"sleep":{"seconds":15}}"#), "{d}");
        let p: RolloutPolicy = serde_yaml::from_str(&policy_yaml(Variant::Quiesce)).unwrap();
        assert_eq!(p.spec.target_ref.name, APP);
        let p: RolloutPolicy = serde_yaml::from_str(&policy_yaml(Variant::QuiesceProxy)).unwrap();
        assert_eq!(p.spec.drain.mode, quiesce_api::DrainMode::Proxy);
        let p: RolloutPolicy =
            serde_yaml::from_str(&policy_yaml(Variant::QuiesceGraceful)).unwrap();
        assert_eq!(
            p.spec.drain.app_shutdown,
            quiesce_api::AppShutdown::Graceful
        );
        assert!(deployment_yaml(Variant::QuiesceGraceful, "v2").contains(r#""value":"graceful""#));
    }
}
