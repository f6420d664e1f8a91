//! The quiesce Helm chart, installed once per test run (`helm upgrade --install`, idempotent,
//! so every test binary may call [`install`]), and what the operator tests read from it: the
//! leader replica and its metrics.
//!
//! Helm runs where the tests run (`e2e/cluster/cluster.sh exec` puts `.tools/bin` on `PATH`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use tokio::process::Command;
use tokio::sync::OnceCell;

use crate::harness::{self, eventually};

/// Helm release name.
pub const RELEASE: &str = "quiesce";
/// Namespace of the operator.
pub const NAMESPACE: &str = "quiesce-system";
/// Name of the operator Deployment, ServiceAccount and leader Lease.
pub const OPERATOR: &str = "quiesce-operator";
/// Name of the MutatingWebhookConfiguration.
pub const WEBHOOK_CONFIGURATION: &str = "quiesce-sidecar-injector";
/// Service in front of the webhook (port 443).
pub const WEBHOOK_SERVICE: &str = "quiesce-webhook";
/// Admin port of the operator (`/metrics`).
pub const ADMIN_PORT: u16 = 8080;

static INSTALLED: OnceCell<()> = OnceCell::const_new();

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A project tool: `.tools/bin/<name>` (what `e2e/cluster/tools.sh` installs), else the PATH's.
pub fn tool(name: &str) -> PathBuf {
    let local = repo_root().join(".tools/bin").join(name);
    if local.exists() {
        local
    } else {
        PathBuf::from(name)
    }
}

/// Runs helm with `args`, failing with its output.
pub async fn helm(args: &[&str]) -> Result<String> {
    let out = Command::new(tool("helm"))
        .args(args)
        .output()
        .await
        .context("running helm (run the e2e suite through e2e/cluster/cluster.sh exec)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("helm {} failed: {text}", args.join(" "));
    }
    Ok(text)
}

/// A fingerprint of the operator image tarball loaded into the cluster, so an upgrade
/// restarts the operator when the image under the same tag changed.
fn image_stamp() -> String {
    let cache = std::env::var("QUIESCE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(&std::env::var("HOME").unwrap_or_default()).join(".cache/quiesce")
        });
    std::fs::metadata(cache.join("images/project/operator.tar"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Installs (or upgrades to) the chart from this tree with the locally loaded images, once
/// per process; waits until the operator serves the webhook with its CA in the caBundle.
pub async fn install(client: &Client) -> Result<()> {
    INSTALLED
        .get_or_try_init(|| install_from_tree(client))
        .await
        .copied()
}

/// What [`install`] does once: `helm upgrade --install` of this tree's chart, then
/// [`wait_ready`]. For a test that installed another chart and puts this one back.
pub async fn install_from_tree(client: &Client) -> Result<()> {
    let chart = repo_root().join("charts/quiesce");
    let stamp = format!(
        "operator.podAnnotations.quiesce\\.dev/image-stamp={}",
        image_stamp()
    );
    helm(&[
        "upgrade",
        "--install",
        RELEASE,
        chart.to_str().unwrap_or("charts/quiesce"),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--set-string",
        &stamp,
        "--wait",
        "--timeout",
        "180s",
    ])
    .await?;
    wait_ready(client).await
}

/// Waits until the webhook configuration carries a caBundle and a leader holds the Lease.
pub async fn wait_ready(client: &Client) -> Result<()> {
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    eventually("webhook caBundle", Duration::from_secs(60), || async {
        let m = mwcs.get(WEBHOOK_CONFIGURATION).await?;
        Ok(m.webhooks
            .unwrap_or_default()
            .iter()
            .all(|w| {
                w.client_config
                    .ca_bundle
                    .as_ref()
                    .is_some_and(|b| !b.0.is_empty())
            })
            .then_some(()))
    })
    .await?;
    leader(client).await?;
    webhook_reachable(client).await
}

/// Waits until the webhook's Service answers a TCP connect at its ClusterIP from here, 3 times
/// in a row: its endpoints are ready and kube-proxy has programmed them, so the apiserver's call
/// reaches a replica (the webhook fails open: a pod created before would start uninjected;
/// kind's kube-proxy is seconds slower than the local cluster's).
async fn webhook_reachable(client: &Client) -> Result<()> {
    let ip = harness::cluster_ip(client, NAMESPACE, WEBHOOK_SERVICE).await?;
    let addr = format!("{ip}:443");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut in_a_row = 0;
    while in_a_row < 3 {
        let connect = tokio::net::TcpStream::connect(&addr);
        let connected = matches!(
            tokio::time::timeout(Duration::from_secs(1), connect).await,
            Ok(Ok(_))
        );
        in_a_row = if connected { in_a_row + 1 } else { 0 };
        if tokio::time::Instant::now() > deadline {
            bail!("the webhook Service {addr} did not answer within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// The operator pod holding the leader Lease.
pub async fn leader(client: &Client) -> Result<Pod> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    eventually("a leader operator", Duration::from_secs(60), || async {
        let lease = leases.get_opt(OPERATOR).await?;
        let Some(holder) = lease.and_then(|l| l.spec?.holder_identity) else {
            return Ok(None);
        };
        Ok(pods
            .get_opt(&holder)
            .await?
            .filter(|p| p.metadata.deletion_timestamp.is_none()))
    })
    .await
}

/// The leader's `/metrics` text.
pub async fn leader_metrics(client: &Client) -> Result<String> {
    let pod = leader(client).await?;
    let ip = pod
        .status
        .and_then(|s| s.pod_ip)
        .context("leader pod has no IP")?;
    let (_, body) = crate::harness::http_get(&format!("http://{ip}:{ADMIN_PORT}/metrics")).await?;
    Ok(body)
}

/// The value of the first sample of `metric` whose labels contain every `label="value"` of
/// `labels`.
pub fn metric_value(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::repo_root;

    /// A release is tagged with the workspace's version (`images.sh push`); the chart in the
    /// tree says the same, so a chart packaged from it names the images released with it.
    #[test]
    fn the_charts_version_and_app_version_are_the_workspaces() {
        let chart = std::fs::read_to_string(repo_root().join("charts/quiesce/Chart.yaml"))
            .expect("Chart.yaml");
        let field = |name: &str| {
            chart
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(|v| v.trim().trim_matches('"').to_owned())
        };
        let workspace = env!("CARGO_PKG_VERSION");
        assert_eq!(field("version").as_deref(), Some(workspace));
        assert_eq!(field("appVersion").as_deref(), Some(workspace));
    }
}
