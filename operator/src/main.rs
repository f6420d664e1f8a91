//! `quiesce-operator`: wiring only. See the crate docs for the modules: the command line is
//! [`args`], the stop signal [`shutdown`], the leader's loop [`leader::lead`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use quiesce_api::constants::OPERATOR_FIELD_MANAGER;
use quiesce_api::log_line::json_logs;
use quiesce_operator::args::{Args, log_filter};
use quiesce_operator::{
    admin, api_timing::ApiTimingLayer, certs, controller, leader, metrics::Metrics,
    shared_watch::SharedCaches, shutdown, webhook,
};
use tracing::info;
use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt};

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
        json_logs(std::io::stdout).with(filter).init();
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

    // Caches the webhook reads on every replica; the leader's controller subscribes to them.
    let shared = SharedCaches::spawn(&client, &metrics);
    let caches_synced = Arc::new(AtomicBool::new(false));
    {
        let (shared, flag) = (shared.clone(), caches_synced.clone());
        tokio::spawn(async move {
            if shared.wait_listed().await {
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
        args.cert_config(deployment_owner.clone()),
        cert_store.clone(),
    ));

    // Signals: the first SIGTERM/SIGINT stops the controller and releases the lease.
    let stop = shutdown::on_signal();

    let webhook_app = webhook::router(webhook::WebhookState {
        policies: shared.policies.store(),
        replicasets: shared.replicasets.store(),
        settings: Arc::new(args.sidecar_settings()),
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
        shutdown::stopped(stop.clone()),
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

    // Only the leader reconciles: the controller runs for each term this replica leads.
    let lease = args.lease_config(deployment_owner);
    leader::lead(client.clone(), lease, &metrics, stop, |term_end| {
        controller::run(
            client.clone(),
            metrics.clone(),
            recorder.clone(),
            shared.clone(),
            args.bindings_settings(binding_owner.clone()),
            args.concurrent_reconciles,
            term_end,
        )
    })
    .await?;
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
