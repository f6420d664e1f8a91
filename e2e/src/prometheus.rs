//! A real Prometheus for the monitoring tests: the chart's monitoring objects rendered with
//! `charts/quiesce/ci/monitoring-values.yaml`, their ServiceMonitor and PodMonitor translated
//! into the scrape configuration the Prometheus Operator would generate (the subset the chart
//! uses; anything else is an error, never silently dropped), and a Prometheus process (built
//! from its Go module into `.tools/bin` by `e2e/cluster/tools.sh prometheus`) that scrapes the
//! cluster and evaluates the chart's alerts, queried through its HTTP API.
//!
//! Prometheus runs where the tests run: inside the cluster's network namespace, listening on
//! its loopback, scraping pod and node addresses of that namespace only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use tokio::process::{Child, Command};

use crate::chart;

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

/// Every panel query of the dashboard: (panel title, expression as written).
pub fn dashboard_queries(dashboard: &Json) -> Vec<(String, String)> {
    fn walk(panels: &Json, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            walk(&panel["panels"], out);
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.to_string(), expr.to_string()));
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// A dashboard expression with Grafana's variables replaced as Grafana would for one
/// namespace and policy, with `rate_interval` for `$__rate_interval`. Fails on any other
/// variable (the test could not run it as Grafana does).
pub fn substitute(
    expr: &str,
    namespace: &str,
    policy: &str,
    rate_interval: &str,
) -> Result<String> {
    let out = expr
        .replace("$__rate_interval", rate_interval)
        .replace("$namespace", namespace)
        .replace("$policy", policy);
    ensure!(!out.contains('$'), "unknown variable in {expr}");
    Ok(out)
}

/// Every alert of rule groups: (alert name, expression).
pub fn alerts(groups: &Yaml) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for group in groups.as_sequence().context("groups")? {
        for rule in group["rules"].as_sequence().context("rules")? {
            if let Some(alert) = rule["alert"].as_str() {
                let expr = rule["expr"].as_str().context("expr")?;
                out.push((alert.to_string(), expr.to_string()));
            }
        }
    }
    Ok(out)
}

/// The series selectors of an expression (metric name and optional `{matchers}`), found by
/// their metric prefixes: what must exist for the expression to mean anything.
pub fn selectors(expr: &str, prefixes: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < expr.len() {
        let at_word_start =
            i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if at_word_start && prefixes.iter().any(|p| expr[i..].starts_with(p)) {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(expr.len(), |n| i + n);
            let mut selector = expr[i..end].to_string();
            let mut next = end;
            if expr[end..].starts_with('{') {
                let close = expr[end..].find('}').map_or(expr.len(), |n| end + n + 1);
                selector.push_str(&expr[end..close]);
                next = close;
            }
            if !out.contains(&selector) {
                out.push(selector);
            }
            i = next;
        } else {
            i += 1;
        }
    }
    out
}

/// A series of a query result: its labels and its values (one for an instant query).
#[derive(Debug, Clone)]
pub struct Series {
    /// The labels.
    pub labels: BTreeMap<String, String>,
    /// `(unix seconds, value)` samples.
    pub values: Vec<(f64, f64)>,
}

/// A running Prometheus, stopped when dropped.
pub struct Prometheus {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    dir: PathBuf,
}

/// `promtool` (for the static checks).
pub fn promtool() -> PathBuf {
    chart::tool("promtool")
}

/// Unix seconds now.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Prometheus {
    /// Starts Prometheus in `dir` with `scrape_configs`, evaluating `rule_groups` every
    /// `interval`, and waits until it is ready.
    pub async fn start(
        dir: &Path,
        scrape_configs: Vec<Yaml>,
        rule_groups: &Yaml,
        interval: &str,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let rules = dir.join("rules.yaml");
        std::fs::write(
            &rules,
            serde_yaml::to_string(&BTreeMap::from([("groups", rule_groups.clone())]))?,
        )?;
        let config = serde_json::json!({
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [rules],
            "scrape_configs": scrape_configs,
        });
        let config_file = dir.join("prometheus.yaml");
        std::fs::write(&config_file, serde_yaml::to_string(&config)?)?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(chart::tool("prometheus"))
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-lifecycle")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context(
                "starting prometheus (e2e/cluster/tools.sh prometheus installs it into .tools/bin)",
            )?;
        let prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir: dir.to_path_buf(),
        };
        let ready = format!("{}/-/ready", prometheus.url);
        crate::harness::eventually("prometheus ready", Duration::from_secs(60), || async {
            Ok(crate::harness::http_get(&ready)
                .await
                .ok()
                .filter(|(s, _)| *s == 200)
                .map(|_| ()))
        })
        .await
        .with_context(|| prometheus.log())?;
        Ok(prometheus)
    }

    /// The end of Prometheus' log (for failure messages).
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn api(&self, path: &str, params: &[(&str, String)]) -> Result<Json> {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let (status, body) =
            crate::harness::http_get(&format!("{}{path}?{query}", self.url)).await?;
        let json: Json = serde_json::from_str(&body).with_context(|| format!("{path}: {body}"))?;
        ensure!(
            status == 200 && json["status"] == "success",
            "{path} {params:?}: {status} {body}"
        );
        Ok(json["data"].clone())
    }

    /// Every series `expr` returns at `at` (unix seconds).
    pub async fn query(&self, expr: &str, at: f64) -> Result<Vec<Series>> {
        let data = self
            .api(
                "/api/v1/query",
                &[("query", expr.to_string()), ("time", format!("{at:.3}"))],
            )
            .await?;
        parse_result(&data, "value")
    }

    /// Every series `expr` returns from `start` to `end`, evaluated every `step` seconds.
    pub async fn query_range(
        &self,
        expr: &str,
        start: f64,
        end: f64,
        step: f64,
    ) -> Result<Vec<Series>> {
        let data = self
            .api(
                "/api/v1/query_range",
                &[
                    ("query", expr.to_string()),
                    ("start", format!("{start:.3}")),
                    ("end", format!("{end:.3}")),
                    ("step", format!("{step}")),
                ],
            )
            .await?;
        parse_result(&data, "values")
    }

    /// The active targets: (job, health, last error).
    pub async fn targets(&self) -> Result<Vec<(String, String, String)>> {
        let data = self
            .api("/api/v1/targets", &[("state", "active".into())])
            .await?;
        Ok(data["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["labels"]["job"].as_str().unwrap_or_default().to_string(),
                    t["health"].as_str().unwrap_or_default().to_string(),
                    t["lastError"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn parse_result(data: &Json, key: &str) -> Result<Vec<Series>> {
    ensure!(
        data["resultType"] == "vector" || data["resultType"] == "matrix",
        "result {data}"
    );
    let number = |v: &Json| -> (f64, f64) {
        let t = v[0].as_f64().unwrap_or(0.0);
        let x = v[1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::NAN);
        (t, x)
    };
    Ok(data["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| Series {
            labels: r["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect(),
            values: if key == "value" {
                vec![number(&r["value"])]
            } else {
                r["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(number)
                    .collect()
            },
        })
        .collect())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_of_an_alert_expression() {
        let expr = r#"sum by (name) (increase(apiserver_admission_webhook_fail_open_count{name="x"}[10m])) > 0
          or (quiesce_operator_leader or vector(0)) < 1 and on (namespace) quiesce_operator_leader"#;
        assert_eq!(
            selectors(expr, &["quiesce_", "apiserver_"]),
            vec![
                r#"apiserver_admission_webhook_fail_open_count{name="x"}"#.to_string(),
                "quiesce_operator_leader".to_string(),
            ]
        );
    }

    #[test]
    fn grafana_variables_are_replaced_and_others_refused() {
        assert_eq!(
            substitute(
                r#"rate(x{namespace=~"$namespace", policy=~"$policy"}[$__rate_interval])"#,
                "ns",
                "web",
                "1m"
            )
            .unwrap(),
            r#"rate(x{namespace=~"ns", policy=~"web"}[1m])"#
        );
        assert!(substitute("x[$__range]", "ns", "web", "1m").is_err());
    }

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
