//! The operator's command line ([`Args`]: every flag with its environment variable and
//! default, as the chart sets them) and the settings built from it for the webhook, the
//! certificates, leader election and the sidecar bindings; the log filter from `RUST_LOG`.

use std::time::Duration;

use clap::Parser;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use tracing_subscriber::filter::Targets;

use crate::{bindings, certs, leader, webhook};

/// The command line; every flag can also be set by its environment variable (the chart does).
#[derive(Debug, Parser)]
#[command(
    name = "quiesce-operator",
    version,
    about = "quiesce operator: readiness-gate pacing, sidecar injection, rollout status"
)]
pub struct Args {
    /// Namespace the operator runs in (downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "quiesce-system")]
    pub namespace: String,
    /// This replica's name (downward API): the leader-election identity.
    #[arg(long, env = "POD_NAME", default_value = "quiesce-operator")]
    pub pod_name: String,
    /// Admin port: /livez, /readyz, /metrics.
    #[arg(long, env = "QUIESCE_ADMIN_PORT", default_value_t = 8080)]
    pub admin_port: u16,
    /// Webhook HTTPS port.
    #[arg(long, env = "QUIESCE_WEBHOOK_PORT", default_value_t = 9443)]
    pub webhook_port: u16,
    /// Service in front of the webhook (the certificate's names).
    #[arg(
        long,
        env = "QUIESCE_WEBHOOK_SERVICE",
        default_value = "quiesce-webhook"
    )]
    pub webhook_service: String,
    /// Secret holding the webhook CA and certificate.
    #[arg(
        long,
        env = "QUIESCE_WEBHOOK_SECRET",
        default_value = "quiesce-webhook-tls"
    )]
    pub webhook_secret: String,
    /// MutatingWebhookConfiguration whose caBundle the operator keeps current.
    #[arg(
        long,
        env = "QUIESCE_WEBHOOK_CONFIGURATION",
        default_value = "quiesce-sidecar-injector"
    )]
    pub webhook_configuration: String,
    /// Validity of the serving certificate, in days (re-issued with a third left).
    #[arg(long, env = "QUIESCE_CERT_VALIDITY_DAYS", default_value_t = 90)]
    pub cert_validity_days: u64,
    /// Lease used for leader election.
    #[arg(long, env = "QUIESCE_LEASE_NAME", default_value = "quiesce-operator")]
    pub lease_name: String,
    /// Lease duration in seconds.
    #[arg(long, env = "QUIESCE_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Sidecar image.
    #[arg(
        long,
        env = "QUIESCE_SIDECAR_IMAGE",
        default_value = "quiesce.local/sidecar:dev"
    )]
    pub sidecar_image: String,
    /// Sidecar image pull policy.
    #[arg(
        long,
        env = "QUIESCE_SIDECAR_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub sidecar_pull_policy: String,
    /// Sidecar CPU request.
    #[arg(long, env = "QUIESCE_SIDECAR_CPU_REQUEST", default_value = "10m")]
    pub sidecar_cpu_request: String,
    /// Sidecar memory request.
    #[arg(long, env = "QUIESCE_SIDECAR_MEMORY_REQUEST", default_value = "16Mi")]
    pub sidecar_memory_request: String,
    /// Sidecar memory limit.
    #[arg(long, env = "QUIESCE_SIDECAR_MEMORY_LIMIT", default_value = "64Mi")]
    pub sidecar_memory_limit: String,
    /// Sidecar log format.
    #[arg(long, env = "QUIESCE_SIDECAR_LOG_FORMAT", default_value = "json")]
    pub sidecar_log_format: String,
    /// Sidecar admin port (readiness, preStop drain, metrics); a pod whose containers use it
    /// gets the next free one of the 10 ports from it (reported).
    #[arg(
        long,
        env = "QUIESCE_SIDECAR_ADMIN_PORT",
        default_value_t = quiesce_api::constants::SIDECAR_ADMIN_PORT
    )]
    pub sidecar_admin_port: u16,
    /// ClusterRole bound to the app pods' service account in namespaces with a policy (empty:
    /// bind it yourself).
    #[arg(
        long,
        env = "QUIESCE_SIDECAR_CLUSTER_ROLE",
        default_value = "quiesce-sidecar"
    )]
    pub sidecar_cluster_role: String,
    /// Namespaces the webhook never injects (comma-separated; besides those labelled
    /// `quiesce.dev/inject=disabled`): the sidecar role is never bound there.
    #[arg(
        long,
        env = "QUIESCE_EXCLUDED_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    pub excluded_namespaces: Vec<String>,
    /// The operator's own Deployment: owner of the Secret and Lease it creates.
    #[arg(
        long,
        env = "QUIESCE_OWNER_DEPLOYMENT",
        default_value = "quiesce-operator"
    )]
    pub owner_deployment: String,
    /// Log format: json or plain.
    #[arg(long, env = "QUIESCE_LOG_FORMAT", default_value = "json")]
    pub log_format: String,
    /// Policies reconciled at once by the leader. A reconcile mostly waits on the apiserver
    /// (gate and status writes), so more than the cores: with 8, gates opened seconds late
    /// while thousands of pods turned ready (docs/benchmarks.md, "Operator at scale").
    #[arg(long, env = "QUIESCE_CONCURRENT_RECONCILES", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrent_reconciles: u16,
}

impl Args {
    /// How the webhook builds the sidecar container.
    pub fn sidecar_settings(&self) -> webhook::SidecarSettings {
        webhook::SidecarSettings {
            image: self.sidecar_image.clone(),
            pull_policy: self.sidecar_pull_policy.clone(),
            cpu_request: self.sidecar_cpu_request.clone(),
            memory_request: self.sidecar_memory_request.clone(),
            memory_limit: self.sidecar_memory_limit.clone(),
            log_format: self.sidecar_log_format.clone(),
            admin_port: self.sidecar_admin_port,
        }
    }

    /// The webhook's certificate: where it is kept, who trusts it, how long it is valid.
    pub fn cert_config(&self, owner: Option<OwnerReference>) -> certs::CertConfig {
        certs::CertConfig {
            namespace: self.namespace.clone(),
            secret: self.webhook_secret.clone(),
            service: self.webhook_service.clone(),
            webhook_configuration: self.webhook_configuration.clone(),
            validity: Duration::from_secs(self.cert_validity_days * 86400),
            check_every: Duration::from_secs(600),
            owner,
        }
    }

    /// The leader-election Lease, renewed three times per lease duration.
    pub fn lease_config(&self, owner: Option<OwnerReference>) -> leader::LeaseConfig {
        leader::LeaseConfig {
            namespace: self.namespace.clone(),
            name: self.lease_name.clone(),
            identity: self.pod_name.clone(),
            lease_duration: Duration::from_secs(self.lease_duration_seconds),
            renew_every: Duration::from_secs((self.lease_duration_seconds / 3).max(1)),
            owner,
        }
    }

    /// Where the sidecar role is bound: `None` with an empty `--sidecar-cluster-role` (bound
    /// by hand). Never in the excluded namespaces nor in the operator's own.
    pub fn bindings_settings(&self, owner: Option<OwnerReference>) -> Option<bindings::Settings> {
        (!self.sidecar_cluster_role.is_empty()).then(|| bindings::Settings {
            role: self.sidecar_cluster_role.clone(),
            owner,
            scope: bindings::Scope {
                excluded: self
                    .excluded_namespaces
                    .iter()
                    .map(|n| n.trim().to_owned())
                    .filter(|n| !n.is_empty())
                    .chain([self.namespace.clone()])
                    .collect(),
            },
        })
    }
}

/// `RUST_LOG` as `level` or `target=level,...`; unset or unparsable: info, kube's own chatter
/// at warn. Not `EnvFilter`: its span and field matching links a second regex engine.
pub fn log_filter(rust_log: Option<&str>) -> Targets {
    rust_log.and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        Targets::new()
            .with_default(tracing::Level::INFO)
            .with_target("kube_runtime", tracing::Level::WARN)
            .with_target("kube_client", tracing::Level::WARN)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn concurrent_reconciles_default_and_bounds() {
        let args = |extra: &[&str]| {
            Args::try_parse_from(std::iter::once("quiesce-operator").chain(extra.iter().copied()))
        };
        assert_eq!(args(&[]).unwrap().concurrent_reconciles, 16);
        assert_eq!(
            args(&["--concurrent-reconciles", "64"])
                .unwrap()
                .concurrent_reconciles,
            64
        );
        for bad in ["0", "257", "x"] {
            assert!(args(&["--concurrent-reconciles", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn kube_chatter_is_quiet_unless_rust_log_says_otherwise() {
        let f = log_filter(None);
        assert!(f.would_enable("quiesce_operator::controller", &Level::INFO));
        assert!(!f.would_enable("kube_runtime::controller", &Level::INFO));
        assert!(f.would_enable("kube_runtime::controller", &Level::WARN));
        let f = log_filter(Some("debug"));
        assert!(f.would_enable("kube_client::client", &Level::DEBUG));
    }
}
