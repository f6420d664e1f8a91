//! The operator's cost, measured: its RSS read from `/proc` on the node (and its peak during a
//! step), its latency histograms between two scrapes, and its requests to the apiserver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use quiesce_e2e::scale::{bucket_delta, histogram_buckets_where, histogram_quantile, quantile};
use quiesce_e2e::{chart, node};

/// p50 and p99 of measured latencies.
pub fn p50_p99(mut latencies: Vec<Duration>) -> (Option<Duration>, Option<Duration>) {
    (
        quantile(0.5, &mut latencies),
        quantile(0.99, &mut latencies),
    )
}

/// p50 and p99 of histogram `name` between two scrapes, in seconds.
pub fn quantiles(before: &str, after: &str, name: &str) -> (Option<f64>, Option<f64>) {
    quantiles_where(before, after, name, &[])
}

fn quantiles_where(
    before: &str,
    after: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> (Option<f64>, Option<f64>) {
    let delta = bucket_delta(
        &histogram_buckets_where(before, name, labels),
        &histogram_buckets_where(after, name, labels),
    );
    (
        histogram_quantile(0.5, &delta),
        histogram_quantile(0.99, &delta),
    )
}

/// The p99 of the reconciles' own time (reading caches, planning) and of their gate writes
/// (`PATCH pods/status`, until the apiserver answered): where a slow reconcile's time went.
pub fn reconcile_time_split(before: &str, after: &str) -> (Option<f64>, Option<f64>) {
    let own = quantiles(before, after, "quiesce_operator_reconcile_decision_seconds").1;
    let gate_write = quantiles_where(
        before,
        after,
        "quiesce_operator_api_request_duration_seconds",
        &[("verb", "PATCH"), ("resource", "pods/status")],
    )
    .1;
    (own, gate_write)
}

/// How often the leader's RSS is read during a step: it swings by ±10 MiB within a minute
/// while pods come and go, so one reading at the end of a step can land anywhere in it.
pub const RSS_EVERY: Duration = Duration::from_secs(2);

/// The leader's highest RSS, read in the background until stopped.
pub struct RssPeak {
    task: tokio::task::JoinHandle<()>,
    peak: Arc<Mutex<Option<u64>>>,
}

impl RssPeak {
    pub fn start(client: Client) -> Self {
        let peak = Arc::new(Mutex::new(None));
        let seen = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok((Some(rss), _)) = operator_rss(&client).await {
                    let mut seen = seen.lock().expect("rss lock");
                    *seen = (*seen).max(Some(rss));
                }
                tokio::time::sleep(RSS_EVERY).await;
            }
        });
        Self { task, peak }
    }

    pub async fn stop(self) -> Option<u64> {
        self.task.abort();
        let _ = self.task.await;
        *self.peak.lock().expect("rss lock")
    }
}

/// RSS of the leader and of the follower operator, read from `/proc` on the node.
pub async fn operator_rss(client: &Client) -> Result<(Option<u64>, Option<u64>)> {
    let leader = chart::leader(client).await?.name_any();
    let api: Api<Pod> = Api::namespaced(client.clone(), chart::NAMESPACE);
    let operators = api
        .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
        .await?;
    let (mut leader_rss, mut follower_rss) = (None, None);
    for pod in &operators.items {
        let Some(id) = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.first())
            .and_then(|c| c.container_id.clone())
        else {
            continue;
        };
        // `comm` is the binary's name cut to 15 bytes.
        let rss = node::find_pid(&id, "quiesce-operato")
            .and_then(node::sample)
            .map(|s| s.rss_kib);
        if pod.name_any() == leader {
            leader_rss = rss;
        } else {
            follower_rss = rss;
        }
    }
    Ok((leader_rss, follower_rss))
}

/// Requests the apiserver dispatched under the `service-accounts` flow schema so far.
pub async fn service_account_requests(client: &Client) -> Result<Option<f64>> {
    let req = hyper::Request::get("/metrics").body(Vec::new())?;
    let text = client
        .request_text(req)
        .await
        .context("apiserver /metrics")?;
    let mut total = None;
    for line in text.lines().filter(|l| {
        l.starts_with("apiserver_flowcontrol_dispatched_requests_total{")
            && l.contains("flow_schema=\"service-accounts\"")
    }) {
        if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *total.get_or_insert(0.0) += v;
        }
    }
    Ok(total)
}
