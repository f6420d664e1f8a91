//! A real Prometheus for the monitoring tests: the chart's monitoring objects rendered with
//! `charts/quiesce/ci/monitoring-values.yaml`, their ServiceMonitor and PodMonitor translated
//! into the scrape configuration the Prometheus Operator would generate (the subset the chart
//! uses; anything else is an error, never silently dropped), and a Prometheus process (built
//! from its Go module into `.tools/bin` by `e2e/cluster/tools.sh prometheus`) that scrapes the
//! cluster and evaluates the chart's alerts, queried through its HTTP API.
//!
//! Prometheus runs where the tests run: inside the cluster's network namespace, listening on
//! its loopback, scraping pod and node addresses of that namespace only.
//!
//! This file renders the chart's monitoring objects; `scrape.rs` translates the monitors into
//! scrape configurations, `expressions.rs` reads the dashboard's and the alerts' expressions,
//! and `server.rs` runs Prometheus and queries it.

mod expressions;
mod scrape;
mod server;

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use crate::chart;

pub use expressions::{alerts, dashboard_queries, selectors, substitute};
pub use scrape::{apiserver_scrape_config, scrape_configs};
pub use server::{Prometheus, Series, now, promtool};

/// The chart's monitoring objects, rendered with its CI values.
#[derive(Debug, Clone)]
pub struct Monitoring {
    /// The ServiceMonitor of the operator.
    pub service_monitor: Yaml,
    /// The PodMonitor of the sidecars.
    pub pod_monitor: Yaml,
    /// `spec.groups` of the PrometheusRule.
    pub rule_groups: Yaml,
    /// The Grafana dashboard of the ConfigMap.
    pub dashboard: Json,
}

/// `helm template` of the chart with `charts/quiesce/ci/monitoring-values.yaml`.
pub async fn render() -> Result<Monitoring> {
    let root = chart::repo_root();
    let chart_dir = root.join("charts/quiesce");
    let values = chart_dir.join("ci/monitoring-values.yaml");
    let text = chart::helm(&[
        "template",
        chart::RELEASE,
        &chart_dir.to_string_lossy(),
        "--namespace",
        chart::NAMESPACE,
        "-f",
        &values.to_string_lossy(),
    ])
    .await?;
    let mut found: BTreeMap<String, Yaml> = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let obj = Yaml::deserialize(doc)?;
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        if ["ServiceMonitor", "PodMonitor", "PrometheusRule"].contains(&kind.as_str())
            || (kind == "ConfigMap" && obj["data"].get("quiesce.json").is_some())
        {
            ensure!(
                found.insert(kind.clone(), obj).is_none(),
                "two {kind} objects"
            );
        }
    }
    let mut take = |kind: &str| {
        found
            .remove(kind)
            .with_context(|| format!("no {kind} rendered with the CI monitoring values"))
    };
    let service_monitor = take("ServiceMonitor")?;
    let pod_monitor = take("PodMonitor")?;
    let rule_groups = take("PrometheusRule")?["spec"]["groups"].clone();
    let dashboard_text = take("ConfigMap")?["data"]["quiesce.json"]
        .as_str()
        .context("dashboard ConfigMap without quiesce.json")?
        .to_string();
    Ok(Monitoring {
        service_monitor,
        pod_monitor,
        rule_groups,
        dashboard: serde_json::from_str(&dashboard_text).context("dashboard JSON")?,
    })
}
