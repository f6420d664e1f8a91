//! `quiesce-operator`: wiring only. See the crate docs for the modules.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector};
use quiesce_api::RolloutPolicy;
use quiesce_api::constants::OPERATOR_FIELD_MANAGER;
use quiesce_operator::{
    admin, api_timing::ApiTimingLayer, certs, controller, leader, metrics::Metrics, webhook,
};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::info;
use tracing_subscriber::{filter::Targets, layer::SubscriberExt, util::SubscriberInitExt};

/// mimalloc instead of glibc's malloc: glibc gives each worker thread an arena and returns
/// little of one to the system, so the leader's RSS kept the peak of every list and burst (two
/// arenas of ~55 MB each at 10k pods in `make bench-scale`, far above the live caches).
/// Built without its transparent-huge-page advice (`no_thp`): a 2 MiB page that a few live
/// objects keep counts whole in RSS; at 3k pods half of the leader's RSS was such pages while
/// its live heap peaked at 20 MiB (a heap profile, docs/benchmarks.md).
#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

#[derive(Debug, Parser)]
#[command(
    name = "quiesce-operator",
    version,
    about = "quiesce operator: readiness-gate pacing, sidecar injection, rollout status"
)]
struct Args {
    /// Namespace the operator runs in (downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "quiesce-system")]
    namespace: String,
    /// This replica's name (downward API): the leader-election identity.
    #[arg(long, env = "POD_NAME", default_value = "quiesce-operator")]
    pod_name: String,
    /// Admin port: /livez, /readyz, /metrics.
    #[arg(long, env = "QUIESCE_ADMIN_PORT", default_value_t = 8080)]
    admin_port: u16,
    /// Webhook HTTPS port.
    #[arg(long, env = "QUIESCE_WEBHOOK_PORT", default_value_t = 9443)]
    webhook_port: u16,
    /// Service in front of the webhook (the certificate's names).
    #[arg(
        long,
        env = "QUIESCE_WEBHOOK_SERVICE",
        default_value = "quiesce-webhook"
    )]
    webhook_service: String,
    /// Secret holding the webhook CA and certificate.
    #[arg(
        long,
        env = "QUIESCE_WEBHOOK_SECRET",
        default_value = "quiesce-webhook-tls"
    )]
    webhook_secret: String,
    /// MutatingWebhookConfiguration whose caBundle the operator keeps current.
    #[arg(
        long,
        env = "QUIESCE_WEBHOOK_CONFIGURATION",
        default_value = "quiesce-sidecar-injector"
    )]
    webhook_configuration: String,
    /// Validity of the serving certificate, in days (re-issued with a third left).
    #[arg(long, env = "QUIESCE_CERT_VALIDITY_DAYS", default_value_t = 90)]
    cert_validity_days: u64,
    /// Lease used for leader election.
    #[arg(long, env = "QUIESCE_LEASE_NAME", default_value = "quiesce-operator")]
    lease_name: String,
    /// Lease duration in seconds.
    #[arg(long, env = "QUIESCE_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Sidecar image.
    #[arg(
        long,
        env = "QUIESCE_SIDECAR_IMAGE",
        default_value = "quiesce.local/sidecar:dev"
    )]
    sidecar_image: String,
    /// Sidecar image pull policy.
    #[arg(
        long,
        env = "QUIESCE_SIDECAR_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    sidecar_pull_policy: String,
    /// Sidecar CPU request.
    #[arg(long, env = "QUIESCE_SIDECAR_CPU_REQUEST", default_value = "10m")]
    sidecar_cpu_request: String,
    /// Sidecar memory request.
    #[arg(long, env = "QUIESCE_SIDECAR_MEMORY_REQUEST", default_value = "16Mi")]
    sidecar_memory_request: String,
    /// Sidecar memory limit.
    #[arg(long, env = "QUIESCE_SIDECAR_MEMORY_LIMIT", default_value = "64Mi")]
    sidecar_memory_limit: String,
    /// Sidecar log format.
    #[arg(long, env = "QUIESCE_SIDECAR_LOG_FORMAT", default_value = "json")]
    sidecar_log_format: String,
    /// Sidecar admin port (readiness, preStop drain, metrics); a pod whose containers use it
    /// gets the next free one of the 10 ports from it (reported).
    #[arg(
        long,
        env = "QUIESCE_SIDECAR_ADMIN_PORT",
        default_value_t = quiesce_api::constants::SIDECAR_ADMIN_PORT
    )]
    sidecar_admin_port: u16,
    /// ClusterRole bound to the app pods' service account in namespaces with a policy (empty:
    /// bind it yourself).
    #[arg(
        long,
        env = "QUIESCE_SIDECAR_CLUSTER_ROLE",
        default_value = "quiesce-sidecar"
    )]
    sidecar_cluster_role: String,
    /// Namespaces the webhook never injects (comma-separated; besides those labelled
    /// `quiesce.dev/inject=disabled`): the sidecar role is never bound there.
    #[arg(
        long,
        env = "QUIESCE_EXCLUDED_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    excluded_namespaces: Vec<String>,
    /// The operator's own Deployment: owner of the Secret and Lease it creates.
    #[arg(
        long,
        env = "QUIESCE_OWNER_DEPLOYMENT",
        default_value = "quiesce-operator"
    )]
    owner_deployment: String,
    /// Log format: json or plain.
    #[arg(long, env = "QUIESCE_LOG_FORMAT", default_value = "json")]
    log_format: String,
    /// Policies reconciled at once by the leader. A reconcile mostly waits on the apiserver
    /// (gate and status writes), so more than the cores: with 8, gates opened seconds late
    /// while thousands of pods turned ready (docs/benchmarks.md, "Operator at scale").
    #[arg(long, env = "QUIESCE_CONCURRENT_RECONCILES", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrent_reconciles: u16,
}

/// `RUST_LOG` as `level` or `target=level,...`; unset or unparsable: info, kube's own chatter
/// at warn. Not `EnvFilter`: its span and field matching links a second regex engine.
fn log_filter(rust_log: Option<&str>) -> Targets {
    rust_log.and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        Targets::new()
            .with_default(tracing::Level::INFO)
            .with_target("kube_runtime", tracing::Level::WARN)
            .with_target("kube_client", tracing::Level::WARN)
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Written when main returns (after a SIGTERM), so the profile covers the whole run.
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::builder()
        .file_name(std::env::var("DHAT_FILE").unwrap_or_else(|_| "dhat-heap.json".into()))
        .build();
    let args = Args::parse();
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    if args.log_format == "plain" {
        tracing_subscriber::fmt().finish().with(filter).init();
    } else {
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish()
            .with(filter)
            .init();
    }
    let _ = rustls::crypto::ring::default_provider().install_default();

    let metrics = Arc::new(Metrics::default());
    let timing = ApiTimingLayer::new(metrics.api_request_duration.clone());
    let client = quiesce_operator::kube_client::in_cluster(&timing)?;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: OPERATOR_FIELD_MANAGER.into(),
            instance: Some(args.pod_name.clone()),
        },
    );
    let (stop_tx, stop_rx) = watch::channel(false);

    // Caches the webhook reads on every replica.
    let (policies, policy_writer) = reflector::store::<RolloutPolicy>();
    let (replicasets, rs_writer) = reflector::store::<PartialObjectMeta<ReplicaSet>>();
    tokio::spawn(
        quiesce_operator::controller::policy_events(client.clone(), None)
            .default_backoff()
            .reflect(policy_writer)
            .for_each(|_| async {}),
    );
    tokio::spawn(
        controller::replicaset_events(client.clone())
            .reflect(rs_writer)
            .for_each(|_| async {}),
    );
    let caches_synced = Arc::new(AtomicBool::new(false));
    {
        let (p, r, flag) = (policies.clone(), replicasets.clone(), caches_synced.clone());
        tokio::spawn(async move {
            if p.wait_until_ready().await.is_ok() && r.wait_until_ready().await.is_ok() {
                flag.store(true, Ordering::Relaxed);
            }
        });
    }

    // Owners, so that uninstalling the chart leaves nothing the operator created behind.
    let deployment_owner = owner_ref::<k8s_openapi::api::apps::v1::Deployment>(
        Api::namespaced(client.clone(), &args.namespace),
        &args.owner_deployment,
    )
    .await;
    let binding_owner = if args.sidecar_cluster_role.is_empty() {
        None
    } else {
        owner_ref::<k8s_openapi::api::rbac::v1::ClusterRole>(
            Api::all(client.clone()),
            &args.sidecar_cluster_role,
        )
        .await
    };

    // Webhook TLS, kept current by both replicas.
    let cert_store = Arc::new(certs::CertStore::default());
    tokio::spawn(certs::maintain(
        client.clone(),
        certs::CertConfig {
            namespace: args.namespace.clone(),
            secret: args.webhook_secret.clone(),
            service: args.webhook_service.clone(),
            webhook_configuration: args.webhook_configuration.clone(),
            validity: Duration::from_secs(args.cert_validity_days * 86400),
            check_every: Duration::from_secs(600),
            owner: deployment_owner.clone(),
        },
        cert_store.clone(),
    ));

    let webhook_app = webhook::router(webhook::WebhookState {
        policies,
        replicasets,
        settings: Arc::new(webhook::SidecarSettings {
            image: args.sidecar_image.clone(),
            pull_policy: args.sidecar_pull_policy.clone(),
            cpu_request: args.sidecar_cpu_request.clone(),
            memory_request: args.sidecar_memory_request.clone(),
            memory_limit: args.sidecar_memory_limit.clone(),
            log_format: args.sidecar_log_format.clone(),
            admin_port: args.sidecar_admin_port,
        }),
        metrics: metrics.clone(),
        recorder: Some(recorder.clone()),
    });
    let webhook_addr = SocketAddr::from(([0, 0, 0, 0], args.webhook_port));
    // Stopping, the webhook drains (serves until the apiserver stops calling) while the
    // controller stops and the Lease is released; the process ends once both are done.
    let draining = Arc::new(AtomicBool::new(false));
    let webhook_server = tokio::spawn(webhook::serve(
        webhook_addr,
        webhook_app,
        cert_store.clone(),
        stopped(stop_rx.clone()),
        draining.clone(),
    ));

    let admin_app = admin::router(admin::AdminState {
        metrics: metrics.clone(),
        certs: cert_store,
        caches_synced,
        draining,
    });
    let admin_listener =
        tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], args.admin_port))).await?;
    info!(port = args.admin_port, "admin server listening");
    tokio::spawn(async move { axum::serve(admin_listener, admin_app).await });

    // Signals: the first SIGTERM/SIGINT stops the controller and releases the lease.
    tokio::spawn(async move {
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        info!("shutdown requested");
        let _ = stop_tx.send(true);
    });

    let lease = leader::LeaseConfig {
        namespace: args.namespace.clone(),
        name: args.lease_name.clone(),
        identity: args.pod_name.clone(),
        lease_duration: Duration::from_secs(args.lease_duration_seconds),
        renew_every: Duration::from_secs((args.lease_duration_seconds / 3).max(1)),
        owner: deployment_owner,
    };
    let (mut leading, election) = leader::spawn(client.clone(), lease.clone());
    let bindings = |owner| {
        (!args.sidecar_cluster_role.is_empty()).then(|| quiesce_operator::bindings::Settings {
            role: args.sidecar_cluster_role.clone(),
            owner,
            scope: quiesce_operator::bindings::Scope {
                excluded: args
                    .excluded_namespaces
                    .iter()
                    .map(|n| n.trim().to_owned())
                    .filter(|n| !n.is_empty())
                    .chain([args.namespace.clone()])
                    .collect(),
            },
        })
    };
    let mut stop = stop_rx.clone();
    loop {
        tokio::select! {
            r = leading.wait_for(|l| *l) => { r?; }
            _ = stop.wait_for(|s| *s) => break,
        }
        metrics.leader.set(1);
        let mut lost = leading.clone();
        let mut stopping = stop_rx.clone();
        let shutdown = async move {
            tokio::select! {
                _ = lost.wait_for(|l| !*l) => {}
                _ = stopping.wait_for(|s| *s) => {}
            }
        };
        info!("starting the controller");
        let mut ctrl = tokio::spawn(controller::run(
            client.clone(),
            metrics.clone(),
            recorder.clone(),
            bindings(binding_owner.clone()),
            args.concurrent_reconciles,
            shutdown,
        ));
        // A graceful stop waits for running reconciles, but never longer than 5 s: the Lease
        // must be released before the kubelet's SIGKILL.
        let mut stopping = stop_rx.clone();
        tokio::select! {
            _ = &mut ctrl => {}
            () = async {
                let _ = stopping.wait_for(|s| *s).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            } => ctrl.abort(),
        }
        metrics.leader.set(0);
        info!("controller stopped");
        if *stop_rx.borrow() {
            break;
        }
    }
    election.abort();
    let _ = election.await;
    leader::release(client, &lease).await;
    if let Err(e) = webhook_server.await {
        tracing::warn!(error = %e, "webhook server task failed");
    }
    Ok(())
}

/// An owner reference to the object `name` (`None`, with a log line, when it cannot be read).
async fn owner_ref<K>(
    api: Api<K>,
    name: &str,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get(name).await {
        Ok(obj) => obj.controller_owner_ref(&()).map(|mut o| {
            o.controller = None;
            o.block_owner_deletion = None;
            o
        }),
        Err(err) => {
            tracing::warn!(%name, error = %err, "owner not found; created objects will not be garbage-collected");
            None
        }
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
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
