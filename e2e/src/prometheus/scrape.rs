//! The chart's ServiceMonitor and PodMonitor translated into the scrape configurations the
//! Prometheus Operator would generate (the subset the chart uses; anything else is an error),
//! and the apiserver's own scrape job.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde_yaml::Value as Yaml;

/// A Prometheus label name from a Kubernetes label name, as service discovery spells it in
/// `__meta_kubernetes_*_label_<name>`.
fn sanitize(label: &str) -> String {
    label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn sd_config(role: &str, kubeconfig: &Path, namespace_selector: &Yaml) -> Result<Yaml> {
    let mut sd = serde_yaml::Mapping::new();
    sd.insert("role".into(), role.into());
    sd.insert(
        "kubeconfig_file".into(),
        kubeconfig.to_string_lossy().as_ref().into(),
    );
    match (
        namespace_selector.get("any").and_then(Yaml::as_bool),
        namespace_selector.get("matchNames"),
    ) {
        (Some(true), None) => {}
        (None, Some(names)) => {
            sd.insert(
                "namespaces".into(),
                serde_yaml::to_value(BTreeMap::from([("names", names.clone())]))?,
            );
        }
        _ => bail!("namespaceSelector {namespace_selector:?}: only any: true or matchNames"),
    }
    Ok(Yaml::Sequence(vec![Yaml::Mapping(sd)]))
}

fn relabel(source: &[&str], regex: &str, action: &str) -> Yaml {
    serde_yaml::to_value(BTreeMap::from([
        ("source_labels", serde_yaml::to_value(source).unwrap()),
        ("regex", regex.into()),
        ("action", action.into()),
    ]))
    .unwrap()
}

fn copy(source: &str, target: &str) -> Yaml {
    serde_yaml::to_value(BTreeMap::from([
        ("source_labels", serde_yaml::to_value([source]).unwrap()),
        ("target_label", target.into()),
    ]))
    .unwrap()
}

/// Keeps targets whose object matches the selector (matchLabels, matchExpressions Exists/In).
fn selector_relabels(kind: &str, selector: &Yaml) -> Result<Vec<Yaml>> {
    let mut out = Vec::new();
    let mapping = selector.as_mapping().context("selector")?;
    for (key, value) in mapping {
        match key.as_str() {
            Some("matchLabels") => {
                for (k, v) in value.as_mapping().context("matchLabels")? {
                    let k = sanitize(k.as_str().context("label")?);
                    let v = v.as_str().context("label value")?;
                    out.push(relabel(
                        &[
                            &format!("__meta_kubernetes_{kind}_label_{k}"),
                            &format!("__meta_kubernetes_{kind}_labelpresent_{k}"),
                        ],
                        &format!("({v});true"),
                        "keep",
                    ));
                }
            }
            Some("matchExpressions") => {
                for e in value.as_sequence().context("matchExpressions")? {
                    let k = sanitize(e["key"].as_str().context("key")?);
                    match e["operator"].as_str() {
                        Some("Exists") => out.push(relabel(
                            &[&format!("__meta_kubernetes_{kind}_labelpresent_{k}")],
                            "true",
                            "keep",
                        )),
                        other => bail!("matchExpressions operator {other:?} not translated"),
                    }
                }
            }
            other => bail!("selector field {other:?} not translated"),
        }
    }
    Ok(out)
}

/// The settings of a monitor's endpoint that the translation knows.
struct Endpoint {
    port: String,
    path: String,
    interval: String,
    honor_labels: bool,
}

fn endpoint_settings(endpoint: &Yaml) -> Result<Endpoint> {
    for key in endpoint.as_mapping().context("endpoint")?.keys() {
        let key = key.as_str().unwrap_or_default();
        ensure!(
            ["port", "path", "interval", "honorLabels"].contains(&key),
            "endpoint field {key} not translated"
        );
    }
    Ok(Endpoint {
        port: endpoint["port"]
            .as_str()
            .context("endpoint port")?
            .to_string(),
        path: endpoint["path"].as_str().unwrap_or("/metrics").to_string(),
        interval: endpoint["interval"].as_str().unwrap_or("30s").to_string(),
        honor_labels: endpoint["honorLabels"].as_bool().unwrap_or(false),
    })
}

/// The scrape configurations the Prometheus Operator generates for `monitor` (a ServiceMonitor
/// or a PodMonitor): one job per endpoint, targets kept by the selector and the port name,
/// labelled `namespace`, `pod`, `container` (and `service`, `endpoint` for a ServiceMonitor).
pub fn scrape_configs(monitor: &Yaml, kubeconfig: &Path) -> Result<Vec<Yaml>> {
    let kind = monitor["kind"].as_str().context("kind")?;
    let name = monitor["metadata"]["name"].as_str().context("name")?;
    let ns = monitor["metadata"]["namespace"]
        .as_str()
        .context("namespace")?;
    let spec = &monitor["spec"];
    let (role, object, endpoints_key, port_label) = match kind {
        "ServiceMonitor" => (
            "endpoints",
            "service",
            "endpoints",
            "__meta_kubernetes_endpoint_port_name",
        ),
        "PodMonitor" => (
            "pod",
            "pod",
            "podMetricsEndpoints",
            "__meta_kubernetes_pod_container_port_name",
        ),
        other => bail!("{other} is not a monitor"),
    };
    for key in spec.as_mapping().context("spec")?.keys() {
        let key = key.as_str().unwrap_or_default();
        ensure!(
            ["namespaceSelector", "selector", endpoints_key].contains(&key),
            "{kind} field spec.{key} not translated"
        );
    }
    let mut jobs = Vec::new();
    let endpoints = spec[endpoints_key].as_sequence().context("endpoints")?;
    for (i, endpoint) in endpoints.iter().enumerate() {
        let Endpoint {
            port,
            path,
            interval,
            honor_labels,
        } = endpoint_settings(endpoint)?;
        let mut relabels = selector_relabels(object, &spec["selector"])?;
        relabels.push(relabel(&[port_label], &port, "keep"));
        if kind == "PodMonitor" {
            relabels.push(relabel(
                &["__meta_kubernetes_pod_phase"],
                "(Failed|Succeeded)",
                "drop",
            ));
        }
        relabels.push(copy("__meta_kubernetes_namespace", "namespace"));
        relabels.push(copy("__meta_kubernetes_pod_name", "pod"));
        relabels.push(copy("__meta_kubernetes_pod_container_name", "container"));
        let job = if kind == "ServiceMonitor" {
            relabels.push(copy("__meta_kubernetes_service_name", "service"));
            relabels.push(copy("__meta_kubernetes_service_name", "job"));
            relabels.push(serde_yaml::to_value(BTreeMap::from([
                ("target_label", "endpoint"),
                ("replacement", port.as_str()),
            ]))?);
            format!("serviceMonitor/{ns}/{name}/{i}")
        } else {
            relabels.push(serde_yaml::to_value(BTreeMap::from([
                ("target_label", "job"),
                ("replacement", format!("{ns}/{name}").as_str()),
            ]))?);
            format!("podMonitor/{ns}/{name}/{i}")
        };
        let mut config = serde_yaml::Mapping::new();
        config.insert("job_name".into(), job.into());
        config.insert("scrape_interval".into(), interval.into());
        config.insert("metrics_path".into(), path.into());
        config.insert("honor_labels".into(), honor_labels.into());
        config.insert(
            "kubernetes_sd_configs".into(),
            sd_config(role, kubeconfig, &spec["namespaceSelector"])?,
        );
        config.insert("relabel_configs".into(), Yaml::Sequence(relabels));
        jobs.push(Yaml::Mapping(config));
    }
    Ok(jobs)
}

/// The kube-apiserver's own metrics (`apiserver_admission_webhook_fail_open_count`), as
/// kube-prometheus-stack scrapes them: the `kubernetes` Service's `https` endpoints, with the
/// bearer token in `token_file`.
pub fn apiserver_scrape_config(kubeconfig: &Path, token_file: &Path) -> Result<Yaml> {
    Ok(serde_yaml::to_value(serde_json::json!({
        "job_name": "apiserver",
        "scrape_interval": "5s",
        "scheme": "https",
        "tls_config": {"insecure_skip_verify": true},
        "authorization": {"credentials_file": token_file},
        "kubernetes_sd_configs": [{
            "role": "endpoints",
            "kubeconfig_file": kubeconfig,
            "namespaces": {"names": ["default"]},
        }],
        "relabel_configs": [{
            "source_labels": ["__meta_kubernetes_service_name", "__meta_kubernetes_endpoint_port_name"],
            "regex": "kubernetes;https",
            "action": "keep",
        }],
    }))?)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_monitor_becomes_the_operators_scrape_job() {
        let monitor: Yaml = serde_yaml::from_str(
            r#"
kind: ServiceMonitor
metadata: {name: quiesce-operator, namespace: quiesce-system}
spec:
  namespaceSelector: {matchNames: [quiesce-system]}
  selector: {matchLabels: {app.kubernetes.io/component: operator-metrics}}
  endpoints: [{port: admin, path: /metrics, interval: 5s, honorLabels: true}]
"#,
        )
        .unwrap();
        let jobs = scrape_configs(&monitor, Path::new("/k")).unwrap();
        let text = serde_yaml::to_string(&jobs).unwrap();
        for want in [
            "job_name: serviceMonitor/quiesce-system/quiesce-operator/0",
            "- __meta_kubernetes_service_label_app_kubernetes_io_component",
            "regex: (operator-metrics);true",
            "- quiesce-system",
            "regex: admin",
            "honor_labels: true",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
        let mut unknown = monitor.clone();
        unknown["spec"]["endpoints"][0]["scheme"] = "https".into();
        assert!(
            scrape_configs(&unknown, Path::new("/k")).is_err(),
            "untranslated fields are refused"
        );
    }
}
