//! The chart's monitoring (charts/quiesce/ci/monitoring-values.yaml: ServiceMonitor,
//! PodMonitor, PrometheusRule, Grafana dashboard) on a real Prometheus scraping a real cluster.
//!
//! Static checks (no cluster): the chart lints and renders with and without it, the alerts pass
//! their promtool unit tests, every dashboard query parses.
//!
//! On the cluster: Prometheus scrapes the operator and the sidecars as the monitors describe
//! (translated as the Prometheus Operator does) and the apiserver, evaluates the chart's
//! alerts, while a policy is put on a running Deployment (its pods run without the sidecar),
//! a rollout goes through, one drain is forced (a client keeps connecting to the old pod), a
//! never-healthy version is rolled back, a webhook named like quiesce's fails open and an
//! ungoverned pod is admitted by its own sidecar. Then every dashboard query must return the
//! series of this rollout, every alert that this run provoked must be pending or firing in
//! Prometheus, and every series an alert reads must exist.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kube::api::{Api, DeleteParams};
use quiesce_api::Phase;
use quiesce_e2e::chart;
use quiesce_e2e::fixtures::{self, demo_app, policy};
use quiesce_e2e::harness::{self, apply_yaml, eventually, with_namespace};
use quiesce_e2e::prometheus::{self, Prometheus, Series};
use quiesce_e2e::rollout;

const APP: &str = "shop";
/// The ungoverned Deployment whose pod meets the failing webhook and opens its own gate.
const LONELY: &str = "lonely";
/// Drain timeout of the policy: the held request outlasts it.
const DRAIN_TIMEOUT_SECONDS: u64 = 3;

async fn run(program: &std::path::Path, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {}", program.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "{} {args:?}: {text}",
        program.display()
    );
    Ok(text)
}

#[tokio::test]
async fn the_chart_renders_monitoring_only_when_asked_and_lints_both_ways() {
    let chart_dir = chart::repo_root().join("charts/quiesce");
    let chart_dir = chart_dir.to_string_lossy();
    let values = format!("{chart_dir}/ci/monitoring-values.yaml");
    chart::helm(&["lint", &chart_dir]).await.unwrap();
    chart::helm(&["lint", &chart_dir, "-f", &values])
        .await
        .unwrap();
    let plain = chart::helm(&["template", "quiesce", &chart_dir])
        .await
        .unwrap();
    for kind in [
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "grafana_dashboard",
    ] {
        assert!(!plain.contains(kind), "{kind} rendered by default");
    }
    let m = prometheus::render().await.unwrap();
    assert_eq!(m.dashboard["uid"], "quiesce");
    // The PrometheusRule carries the rule file as it is, templates of the alerts intact.
    let file: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart::repo_root().join("charts/quiesce/files/alerts.yaml"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(m.rule_groups, file["groups"]);
}

#[tokio::test]
async fn alerts_pass_their_promtool_unit_tests() {
    let root = chart::repo_root();
    let promtool = prometheus::promtool();
    let rules = root.join("charts/quiesce/files/alerts.yaml");
    let out = run(&promtool, &["check", "rules", &rules.to_string_lossy()])
        .await
        .unwrap();
    assert!(out.contains("SUCCESS: 8 rules found"), "{out}");
    let tests = root.join("e2e/monitoring/alerts_test.yaml");
    let out = run(&promtool, &["test", "rules", &tests.to_string_lossy()])
        .await
        .unwrap();
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert has a unit test.
    let tested = std::fs::read_to_string(&tests).unwrap();
    let m = prometheus::render().await.unwrap();
    for (alert, _) in prometheus::alerts(&m.rule_groups).unwrap() {
        assert!(
            tested.contains(&format!("alertname: {alert}")),
            "{alert} has no promtool test"
        );
    }
}

#[tokio::test]
async fn every_dashboard_query_parses() {
    let m = prometheus::render().await.unwrap();
    let queries = prometheus::dashboard_queries(&m.dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let rules: Vec<serde_json::Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| {
            serde_json::json!({"record": format!("dashboard_query_{i}"),
                "expr": prometheus::substitute(expr, "ns", "policy", "1m").unwrap()})
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("quiesce-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dashboard-rules.yaml");
    let groups = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, serde_yaml::to_string(&groups).unwrap()).unwrap();
    let out = run(
        &prometheus::promtool(),
        &["check", "rules", &file.to_string_lossy()],
    )
    .await
    .unwrap();
    assert!(out.contains("SUCCESS"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A Deployment no policy targets, its pod carrying the sidecar by hand (as an injected pod
/// whose operator is gone) and the label the failing webhook selects.
fn lonely_deployment(fail_open_after: u32) -> String {
    let spec = fixtures::hand_injected_pod_spec(fail_open_after);
    format!(
        r#"{binding}---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {LONELY}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {LONELY}}}}}
  template:
    metadata: {{labels: {{app: {LONELY}, e2e-failopen: "true"}}}}
    spec: {spec}
"#,
        binding = fixtures::SIDECAR_BINDING_FOR_DEFAULT
    )
}

/// A webhook with quiesce's webhook name whose Service does not exist (what the apiserver
/// meets when no operator replica is ready), for the failing-open pods of `ns` only.
fn failing_webhook(ns: &str) -> String {
    format!(
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {{name: quiesce-e2e-failopen-{ns}}}
webhooks:
  - name: inject.quiesce.dev
    admissionReviewVersions: ["v1"]
    sideEffects: None
    failurePolicy: Ignore
    timeoutSeconds: 2
    clientConfig: {{service: {{name: nobody-home, namespace: {ns}, path: /mutate-pods, port: 443}}}}
    rules: [{{apiGroups: [""], apiVersions: ["v1"], operations: ["CREATE"], resources: ["pods"]}}]
    namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {ns}}}}}
    objectSelector: {{matchLabels: {{e2e-failopen: "true"}}}}
"#
    )
}

/// A service account allowed to read the apiserver's `/metrics`, as a Prometheus has.
fn metrics_reader(ns: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: prometheus}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: quiesce-e2e-metrics-{ns}}}
rules: [{{nonResourceURLs: [/metrics], verbs: [get]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: quiesce-e2e-metrics-{ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: quiesce-e2e-metrics-{ns}}}
subjects: [{{kind: ServiceAccount, name: prometheus, namespace: {ns}}}]
"#
    )
}

/// Deletes the cluster-scoped objects of the test (the namespace goes with `with_namespace`).
async fn delete_cluster_objects(client: &kube::Client, ns: &str) {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let dp = DeleteParams::default();
    let name = format!("quiesce-e2e-failopen-{ns}");
    let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(&name, &dp)
        .await;
    let name = format!("quiesce-e2e-metrics-{ns}");
    let _ = Api::<ClusterRoleBinding>::all(client.clone())
        .delete(&name, &dp)
        .await;
    let _ = Api::<ClusterRole>::all(client.clone())
        .delete(&name, &dp)
        .await;
}

/// Waits until Prometheus' instant `expr` returns a series with a value satisfying `ok`.
async fn wait_series(
    prom: &Prometheus,
    what: &str,
    expr: &str,
    ok: impl Fn(f64) -> bool,
) -> Result<Series> {
    eventually(what, Duration::from_secs(90), || async {
        let series = prom.query(expr, prometheus::now()).await?;
        Ok(series
            .into_iter()
            .find(|s| s.values.iter().any(|(_, v)| ok(*v))))
    })
    .await
    .with_context(|| format!("{expr}\n{}", prom.log()))
}

#[tokio::test]
async fn every_panel_and_alert_shows_a_real_rollout_on_a_real_prometheus() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("monitoring", |client, ns| async move {
        let result = scenario(&client, &ns).await;
        delete_cluster_objects(&client, &ns).await;
        result
    })
    .await;
}

async fn scenario(client: &kube::Client, ns: &str) -> Result<()> {
    let m = prometheus::render().await?;
    let kubeconfig = std::path::PathBuf::from(
        std::env::var("KUBECONFIG").context("KUBECONFIG (run through cluster.sh exec)")?,
    );
    let dir = std::env::temp_dir().join(format!("quiesce-prometheus-{ns}"));
    std::fs::create_dir_all(&dir)?;
    apply_yaml(client, ns, &metrics_reader(ns)).await?;
    let token = harness::service_account_token(client, ns, "prometheus", None).await?;
    let token_file = dir.join("token");
    std::fs::write(&token_file, token)?;
    let mut scrape = prometheus::scrape_configs(&m.service_monitor, &kubeconfig)?;
    scrape.extend(prometheus::scrape_configs(&m.pod_monitor, &kubeconfig)?);
    scrape.push(prometheus::apiserver_scrape_config(
        &kubeconfig,
        &token_file,
    )?);
    let prom = Prometheus::start(&dir, scrape, &m.rule_groups, "2s").await?;
    let start = prometheus::now();
    eventually(
        "operator and apiserver targets up",
        Duration::from_secs(60),
        || async {
            let targets = prom.targets().await?;
            let up = |job: &str| {
                targets
                    .iter()
                    .filter(|(j, h, _)| j.contains(job) && h == "up")
                    .count()
            };
            Ok((up("quiesce-operator") >= 2 && up("apiserver") >= 1).then_some(()))
        },
    )
    .await
    .with_context(|| prom.log())?;

    // A running Deployment gets a policy: its pods run without the sidecar until the rollout.
    let spec = format!(
        "    steps: [{{admit: 1}}, {{admit: \"100%\"}}]\n    drain: {{endpointTimeoutSeconds: 5, quietPeriodMillis: 500, timeoutSeconds: {DRAIN_TIMEOUT_SECONDS}}}\n    failure: {{progressDeadlineSeconds: 30, action: Rollback}}"
    );
    apply_yaml(client, ns, &demo_app(APP, 2, "v1", &[])).await?;
    harness::wait_rollout(client, ns, APP, Duration::from_secs(120)).await?;
    apply_yaml(client, ns, &policy(APP, APP, &spec)).await?;
    rollout::wait_policy_known(client, ns, APP).await?;
    let selector = format!(r#"namespace="{ns}", policy="{APP}""#);
    wait_series(
        &prom,
        "the pods from before the policy counted without the sidecar",
        &format!("quiesce_operator_pods_without_sidecar{{{selector}}}"),
        |v| v == 2.0,
    )
    .await?;

    // A webhook named like quiesce's fails open; the pod it let through is admitted by its
    // own sidecar after 5 s, since no policy governs it.
    apply_yaml(client, ns, &failing_webhook(ns)).await?;
    apply_yaml(client, ns, &lonely_deployment(5)).await?;

    // The rollout injects every new pod.
    apply_yaml(client, ns, &demo_app(APP, 2, "v2", &[])).await?;
    rollout::wait_phase(client, ns, APP, Phase::Completed, Duration::from_secs(120)).await?;
    wait_series(
        &prom,
        "every pod runs the sidecar",
        &format!("quiesce_operator_pods_without_sidecar{{{selector}}}"),
        |v| v == 0.0,
    )
    .await?;

    // A client that keeps connecting to one old pod directly (a load balancer with a stale
    // endpoint list) never lets its quiet period pass: that drain is forced at its timeout.
    let held = harness::pods(client, ns, &format!("app={APP}"))
        .await?
        .into_iter()
        .filter(|p| rollout::injected(p) && p.metadata.deletion_timestamp.is_none())
        .find_map(|p| p.status?.pod_ip)
        .context("an injected pod's IP")?;
    let stale_client = tokio::spawn(async move {
        loop {
            let _ = harness::http_get(&format!("http://{held}:8080/")).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    apply_yaml(client, ns, &demo_app(APP, 2, "v3", &[])).await?;
    // The phase is Completed once every new pod is admitted; the last old pod may still be
    // draining, so the client keeps at it until the forced drain is counted.
    let forced = async {
        rollout::wait_phase(client, ns, APP, Phase::Completed, Duration::from_secs(120)).await?;
        wait_series(
            &prom,
            "the forced drain counted",
            &format!(r#"quiesce_operator_drains_total{{{selector}, result="forced"}}"#),
            |v| v >= 1.0,
        )
        .await
    }
    .await;
    stale_client.abort();
    forced?;

    // A version that never becomes healthy is rolled back at the progress deadline.
    apply_yaml(
        client,
        ns,
        &demo_app(APP, 2, "bad", &[("FAIL_HEALTH", "true")]),
    )
    .await?;
    rollout::wait_phase(client, ns, APP, Phase::RolledBack, Duration::from_secs(150)).await?;
    // The lonely pod was admitted by its sidecar meanwhile.
    let lonely = harness::pods(client, ns, &format!("app={LONELY}")).await?;
    ensure!(
        lonely
            .iter()
            .any(|p| rollout::condition(p, "quiesce.dev/ready") == Some("True")),
        "the lonely pod's sidecar did not open its gate: {:?}",
        lonely.iter().map(|p| &p.status).collect::<Vec<_>>()
    );
    // Two evaluation rounds after the last change.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let end = prometheus::now();

    check_dashboard(&prom, &m, ns, start, end).await?;
    check_alerts(&prom, &m, ns, start, end).await?;
    Ok(())
}

/// Every panel query returns series over the run, and those that name a namespace or policy
/// name this one.
async fn check_dashboard(
    prom: &Prometheus,
    m: &prometheus::Monitoring,
    ns: &str,
    start: f64,
    end: f64,
) -> Result<()> {
    let mut failures = Vec::new();
    let queries = prometheus::dashboard_queries(&m.dashboard);
    println!("dashboard: {} queries", queries.len());
    for (title, expr) in &queries {
        let q = prometheus::substitute(expr, ns, APP, "1m")?;
        let series = prom.query_range(&q, start, end, 2.0).await?;
        let numbers = series
            .iter()
            .flat_map(|s| &s.values)
            .filter(|(_, v)| v.is_finite())
            .count();
        let ours = |label: &str, value: &str| {
            let labelled: Vec<&Series> = series
                .iter()
                .filter(|s| s.labels.contains_key(label))
                .collect();
            labelled.is_empty() || labelled.iter().any(|s| s.labels[label] == value)
        };
        println!(
            "  {:>3} series {:>5} samples  {title}: {}",
            series.len(),
            numbers,
            q.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        if numbers == 0 {
            failures.push(format!("{title}: no sample: {q}"));
        } else if !ours("namespace", ns) || !ours("policy", APP) {
            failures.push(format!("{title}: not this rollout's series: {q}"));
        }
    }
    ensure!(
        failures.is_empty(),
        "dashboard queries:\n{}",
        failures.join("\n")
    );
    Ok(())
}

/// The alerts this run provoked were pending or firing for this namespace (or webhook); every
/// series any alert reads exists.
async fn check_alerts(
    prom: &Prometheus,
    m: &prometheus::Monitoring,
    ns: &str,
    start: f64,
    end: f64,
) -> Result<()> {
    let provoked: [(&str, String); 5] = [
        (
            "QuiescePodsWithoutSidecar",
            format!(r#"namespace="{ns}", policy="{APP}""#),
        ),
        (
            "QuiesceForcedDrains",
            format!(r#"namespace="{ns}", policy="{APP}""#),
        ),
        (
            "QuiesceRolloutFailed",
            format!(r#"namespace="{ns}", policy="{APP}""#),
        ),
        ("QuiesceSidecarFailOpen", format!(r#"namespace="{ns}""#)),
        (
            "QuiesceWebhookFailingOpen",
            r#"name="inject.quiesce.dev""#.to_string(),
        ),
    ];
    let alerts = prometheus::alerts(&m.rule_groups)?;
    let names: BTreeSet<&str> = alerts.iter().map(|(a, _)| a.as_str()).collect();
    let mut failures = Vec::new();
    for (alert, labels) in &provoked {
        ensure!(names.contains(alert), "{alert} is not in the chart's rules");
        let q = format!(r#"ALERTS{{alertname="{alert}", {labels}}}"#);
        let series = prom.query_range(&q, start, end, 2.0).await?;
        let states: BTreeSet<&str> = series
            .iter()
            .filter_map(|s| s.labels.get("alertstate").map(String::as_str))
            .collect();
        println!("alert {alert}: {states:?}");
        if series.is_empty() {
            failures.push(format!("{alert} never pending nor firing: {q}"));
        }
    }
    for (alert, expr) in &alerts {
        for selector in prometheus::selectors(expr, &["quiesce_", "apiserver_"]) {
            let series = prom.query_range(&selector, start, end, 2.0).await?;
            if series.is_empty() {
                failures.push(format!("{alert}: no series {selector}"));
            }
        }
    }
    ensure!(
        failures.is_empty(),
        "alerts:\n{}\n{}",
        failures.join("\n"),
        prom.log()
    );
    Ok(())
}
