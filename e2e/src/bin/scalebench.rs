//! `scalebench`: the operator at scale on a real apiserver (`make bench-scale`).
//!
//! kwok (run beside it by `e2e/demo.sh bench-scale`) plays nodes and the lifecycle of their
//! pods; everything else is real: kube-apiserver, etcd, the Deployment and ReplicaSet
//! controllers, the scheduler, quiesce's webhook (every pod is admitted through it) and the
//! operator, which opens each pod's readiness gate. In steps of Deployments (each with its
//! RolloutPolicy and `--replicas` pods) the benchmark grows the namespace, waits until every
//! pod's gate is open, and measures: the operator's RSS (leader and follower, from `/proc`),
//! reconcile and webhook latency (the operator's histograms between two scrapes), the time from
//! a pod's containers being ready to its gate opening (both as this process's watch sees
//! them); then it rolls `--rollout-share` of the Deployments at once and measures the time until
//! all are complete and the apiserver requests of the operator's service account per rollout
//! (API Priority and Fairness counts them under the `service-accounts` flow schema, which no
//! other client of this cluster uses while the benchmark runs).
//! Progress goes to stderr, the markdown table to stdout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use quiesce_api::RolloutPolicy;
use quiesce_api::constants::READY_GATE_CONDITION;
use quiesce_e2e::rollout;
use quiesce_e2e::scale::{
    bucket_delta, histogram_buckets_where, histogram_quantile, kwok_deployment, kwok_node,
    kwok_policy, quantile,
};
use quiesce_e2e::{chart, harness, node};

#[derive(Debug, Parser)]
#[command(about = "The operator with thousands of pods and policies (markdown table)")]
struct Args {
    /// Deployments (each with a RolloutPolicy) at each measuring step, ascending: each step
    /// adds Deployments to the previous one's.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 300, 1000])]
    deployments: Vec<usize>,
    /// Pods per Deployment.
    #[arg(long, default_value_t = 10)]
    replicas: i32,
    /// kwok nodes the pods spread over.
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Share of the Deployments rolled at once at each step.
    #[arg(long, default_value_t = 0.1)]
    rollout_share: f64,
    /// Namespace of the Deployments.
    #[arg(long, default_value = "quiesce-scale")]
    namespace: String,
    /// Minutes to wait for every gate to open (or every rollout to complete).
    #[arg(long, default_value_t = 30)]
    timeout_minutes: u64,
    /// Deployments without a policy (in namespace `<namespace>-unmanaged`, `--replicas` pods
    /// each) created before the steps: what pods quiesce does not manage cost the operator.
    #[arg(long, default_value_t = 0)]
    unmanaged: usize,
    /// Keep the namespace and the nodes afterwards.
    #[arg(long)]
    keep: bool,
}

/// What this process's pod watch saw of one pod.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// The webhook injected it (quiesce's gate is in its spec).
    gated: bool,
    containers_ready: Option<Instant>,
    gate_open: Option<Instant>,
    terminating: bool,
}

/// The pods of the namespace, as the watch sees them.
#[derive(Default)]
struct Pods {
    by_uid: HashMap<String, Seen>,
}

impl Pods {
    fn observe(&mut self, pod: &Pod, now: Instant) {
        let Some(uid) = pod.uid() else { return };
        let condition = |t: &str| rollout::condition(pod, t) == Some("True");
        let seen = self.by_uid.entry(uid).or_default();
        seen.gated = pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.as_ref())
            .is_some_and(|g| g.iter().any(|g| g.condition_type == READY_GATE_CONDITION));
        seen.terminating = pod.metadata.deletion_timestamp.is_some();
        if condition("ContainersReady") && seen.containers_ready.is_none() {
            seen.containers_ready = Some(now);
        }
        if condition(READY_GATE_CONDITION) && seen.gate_open.is_none() {
            seen.gate_open = Some(now);
        }
    }

    /// Live pods: all, those without quiesce's gate (not injected: created before the
    /// webhook's cache had their policy, or admitted while the webhook failed open), and the
    /// injected ones whose gate is open.
    fn counts(&self) -> (usize, usize, usize) {
        let live = self.by_uid.values().filter(|s| !s.terminating);
        let (mut all, mut ungated, mut open) = (0, 0, 0);
        for s in live {
            all += 1;
            ungated += usize::from(!s.gated);
            open += usize::from(s.gated && s.gate_open.is_some());
        }
        (all, ungated, open)
    }

    /// Containers ready → gate open, for the pods whose containers became ready after `since`.
    fn gate_latencies(&self, since: Instant) -> Vec<Duration> {
        self.by_uid
            .values()
            .filter_map(|s| Some((s.containers_ready?, s.gate_open?)))
            .filter(|(ready, _)| *ready >= since)
            .map(|(ready, open)| open.saturating_duration_since(ready))
            .collect()
    }
}

/// One measuring step's row.
struct Row {
    deployments: usize,
    pods: usize,
    settle: Duration,
    not_injected: usize,
    leader_rss_kib: Option<u64>,
    follower_rss_kib: Option<u64>,
    /// The leader's highest RSS read during the step (every [`RSS_EVERY`]).
    leader_rss_peak_kib: Option<u64>,
    reconcile: (Option<f64>, Option<f64>),
    /// p99 of the reconcile's own time and of its gate writes (apiserver).
    reconcile_parts: (Option<f64>, Option<f64>),
    webhook: (Option<f64>, Option<f64>),
    gate: (Option<Duration>, Option<Duration>),
    rolled: usize,
    rollout: Duration,
    rollout_reconcile_p99: Option<f64>,
    rollout_reconcile_parts: (Option<f64>, Option<f64>),
    rollout_gate: (Option<Duration>, Option<Duration>),
    requests_per_rollout: Option<f64>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(err) = run(&args).await {
        eprintln!("scalebench: {err:#}");
        std::process::exit(1);
    }
}

fn progress(msg: &str) {
    eprintln!(
        "[scalebench {}] {msg}",
        k8s_openapi::jiff::Zoned::now().strftime("%T")
    );
}

async fn run(args: &Args) -> Result<()> {
    let client = harness::client().await?;
    let total_pods =
        (args.deployments.last().copied().unwrap_or(0) + args.unmanaged) * args.replicas as usize;
    let per_node = total_pods.div_ceil(args.nodes.max(1)) * 2 + 110;
    let nodes: Api<Node> = Api::all(client.clone());
    for i in 0..args.nodes {
        let node: Node = serde_json::from_value(kwok_node(&format!("kwok-{i}"), per_node))?;
        nodes
            .patch(
                &node.name_any(),
                &PatchParams::apply("quiesce-scalebench").force(),
                &Patch::Apply(&node),
            )
            .await?;
    }
    let ns = args.namespace.as_str();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    ensure_namespace(&client, ns).await?;

    let unmanaged_ns = format!("{ns}-unmanaged");
    let unmanaged = if args.unmanaged > 0 {
        Some(measure_unmanaged(args, &client, &unmanaged_ns).await?)
    } else {
        None
    };

    let pods = Arc::new(Mutex::new(Pods::default()));
    let watch = tokio::spawn(watch_pods(client.clone(), ns.to_owned(), pods.clone()));
    let mut rows = Vec::new();
    let mut created = 0;
    for (step, &target) in args.deployments.iter().enumerate() {
        rows.push(measure_step(args, &client, &pods, step, created, target).await?);
        created = target;
    }
    watch.abort();
    if let Some(u) = &unmanaged {
        print_unmanaged(u);
    }
    print_table(args, &rows);
    if !args.keep {
        progress("deleting the namespace and the kwok nodes");
        namespaces.delete(ns, &DeleteParams::default()).await?;
        if unmanaged.is_some() {
            namespaces
                .delete(&unmanaged_ns, &DeleteParams::default())
                .await?;
        }
        for i in 0..args.nodes {
            let _ = nodes
                .delete(&format!("kwok-{i}"), &DeleteParams::default())
                .await;
        }
    }
    Ok(())
}

async fn watch_pods(client: Client, ns: String, pods: Arc<Mutex<Pods>>) {
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let now = Instant::now();
        let mut pods = pods.lock().expect("pods lock");
        match event {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => pods.observe(&p, now),
            Ok(watcher::Event::Delete(p)) => {
                if let Some(uid) = p.uid() {
                    pods.by_uid.remove(&uid);
                }
            }
            _ => {}
        }
    }
}

/// Creates namespace `ns` unless it exists.
async fn ensure_namespace(client: &Client, ns: &str) -> Result<()> {
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?;
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::apply("quiesce-scalebench").force(),
            &Patch::Apply(&namespace),
        )
        .await?;
    Ok(())
}

/// The operator's RSS before and after pods it does not manage appeared.
struct Unmanaged {
    pods: usize,
    before: (Option<u64>, Option<u64>),
    after: (Option<u64>, Option<u64>),
}

/// Creates `--unmanaged` Deployments without a policy in `ns` (created if missing), waits until
/// their pods are ready, and reads the operator's RSS before and after.
async fn measure_unmanaged(args: &Args, client: &Client, ns: &str) -> Result<Unmanaged> {
    ensure_namespace(client, ns).await?;
    let want = args.unmanaged * args.replicas as usize;
    progress(&format!(
        "{} Deployments without a policy ({want} pods) in {ns}",
        args.unmanaged
    ));
    let before = operator_rss(client).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    stream::iter(0..args.unmanaged)
        .map(|i| {
            let deployments = deployments.clone();
            async move {
                let d: Deployment = serde_json::from_value(kwok_deployment(
                    &deployment_name(i),
                    args.replicas,
                    "unmanaged",
                ))?;
                deployments.create(&PostParams::default(), &d).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let start = Instant::now();
    let timeout = Duration::from_secs(args.timeout_minutes * 60);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    loop {
        let list = pods.list(&ListParams::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|p| rollout::condition(p, "Ready") == Some("True"))
            .count();
        if ready >= want {
            break;
        }
        if start.elapsed() > timeout {
            bail!("after {timeout:?}: {ready} of {want} pods without a policy ready");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    progress(&format!(
        "{want} pods without a policy ready in {:.0}s",
        start.elapsed().as_secs_f64()
    ));
    // Let the watches deliver and the allocator settle before reading memory.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = operator_rss(client).await?;
    Ok(Unmanaged {
        pods: want,
        before,
        after,
    })
}

fn print_unmanaged(u: &Unmanaged) {
    println!(
        "| pods without a policy | operator RSS leader / follower before (MiB) | after (MiB) |"
    );
    println!("|---:|---:|---:|");
    println!(
        "| {} | {} / {} | {} / {} |",
        u.pods,
        mib(u.before.0),
        mib(u.before.1),
        mib(u.after.0),
        mib(u.after.1)
    );
    println!();
}

fn deployment_name(i: usize) -> String {
    format!("app-{i:04}")
}

async fn measure_step(
    args: &Args,
    client: &Client,
    pods: &Arc<Mutex<Pods>>,
    step: usize,
    from: usize,
    to: usize,
) -> Result<Row> {
    let ns = args.namespace.as_str();
    let timeout = Duration::from_secs(args.timeout_minutes * 60);
    let want = to * args.replicas as usize;
    progress(&format!(
        "step {step}: {from} → {to} Deployments ({want} pods)"
    ));
    let before = chart::leader_metrics(client).await?;
    let peak = RssPeak::start(client.clone());
    let start = Instant::now();
    create_deployments(client, ns, from..to, args.replicas).await?;
    progress(&format!(
        "created {} Deployments and policies in {:.1}s",
        to - from,
        start.elapsed().as_secs_f64()
    ));
    let not_injected = wait_gates_open(pods, want, start, timeout).await?;
    let settle = start.elapsed();
    let after = chart::leader_metrics(client).await?;
    // Let the last reconciles and the allocator settle before reading memory.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (leader_rss_kib, follower_rss_kib) = operator_rss(client).await?;
    let reconcile = quantiles(
        &before,
        &after,
        "quiesce_operator_reconcile_duration_seconds",
    );
    let reconcile_parts = reconcile_time_split(&before, &after);
    let webhook = quantiles(&before, &after, "quiesce_operator_webhook_duration_seconds");
    let gate = p50_p99(pods.lock().expect("pods lock").gate_latencies(start));

    // Roll a share of all Deployments at once.
    let rolled = ((to as f64 * args.rollout_share).ceil() as usize).clamp(1, to);
    let before = chart::leader_metrics(client).await?;
    let requests_before = service_account_requests(client).await?;
    let start = Instant::now();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    stream::iter(0..rolled)
        .map(|i| {
            let deployments = deployments.clone();
            async move {
                let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [
                    {"name": "app", "env": [{"name": "VERSION", "value": format!("step-{step}")}]}
                ]}}}});
                deployments
                    .patch(
                        &deployment_name(i),
                        &PatchParams::default(),
                        &Patch::Strategic(&patch),
                    )
                    .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    progress(&format!("rolling {rolled} Deployments at once"));
    wait_rollouts_complete(client, ns, rolled, start, timeout).await?;
    let rollout = start.elapsed();
    let requests_after = service_account_requests(client).await?;
    let after = chart::leader_metrics(client).await?;
    let rollout_reconcile_p99 = quantiles(
        &before,
        &after,
        "quiesce_operator_reconcile_duration_seconds",
    )
    .1;
    let rollout_reconcile_parts = reconcile_time_split(&before, &after);
    let rollout_gate = p50_p99(pods.lock().expect("pods lock").gate_latencies(start));
    let requests_per_rollout = match (requests_before, requests_after) {
        (Some(b), Some(a)) => Some((a - b) / rolled as f64),
        _ => None,
    };
    let leader_rss_peak_kib = peak.stop().await.max(leader_rss_kib);
    Ok(Row {
        deployments: to,
        pods: want,
        settle,
        not_injected,
        leader_rss_kib,
        follower_rss_kib,
        leader_rss_peak_kib,
        reconcile,
        reconcile_parts,
        webhook,
        gate,
        rolled,
        rollout,
        rollout_reconcile_p99,
        rollout_reconcile_parts,
        rollout_gate,
        requests_per_rollout,
    })
}

/// Creates policy and Deployment `app-NNNN` for each of `range`, 16 at a time (the policy
/// first, so that the webhook injects the first pods).
async fn create_deployments(
    client: &Client,
    ns: &str,
    range: std::ops::Range<usize>,
    replicas: i32,
) -> Result<()> {
    let policies: Api<RolloutPolicy> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    stream::iter(range)
        .map(|i| {
            let (policies, deployments) = (policies.clone(), deployments.clone());
            async move {
                let name = deployment_name(i);
                let policy: RolloutPolicy = serde_json::from_value(kwok_policy(&name))?;
                policies.create(&PostParams::default(), &policy).await?;
                let d: Deployment =
                    serde_json::from_value(kwok_deployment(&name, replicas, "step-init"))?;
                deployments.create(&PostParams::default(), &d).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Waits until there are `want` pods and every injected one's gate is open; returns how many
/// were not injected.
async fn wait_gates_open(
    pods: &Arc<Mutex<Pods>>,
    want: usize,
    start: Instant,
    timeout: Duration,
) -> Result<usize> {
    let mut last_report = Instant::now();
    loop {
        let (all, ungated, open) = pods.lock().expect("pods lock").counts();
        if all >= want && open + ungated >= all {
            progress(&format!(
                "{open} gates open in {:.1}s ({ungated} pods not injected)",
                start.elapsed().as_secs_f64()
            ));
            return Ok(ungated);
        }
        if start.elapsed() > timeout {
            bail!(
                "after {timeout:?}: {all} pods, {ungated} not injected, {open} gates open, want {want}"
            );
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            progress(&format!(
                "{all} pods, {ungated} not injected, {open} gates open (want {want})"
            ));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until Deployments `app-0000..rolled` have completed their rollout: every replica
/// updated and available, no old one left (the gate holds availability until quiesce admits).
async fn wait_rollouts_complete(
    client: &Client,
    ns: &str,
    rolled: usize,
    start: Instant,
    timeout: Duration,
) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let names: Vec<String> = (0..rolled).map(deployment_name).collect();
    let mut last_report = Instant::now();
    loop {
        let list = deployments.list(&ListParams::default()).await?;
        let done = list
            .items
            .iter()
            .filter(|d| names.contains(&d.name_any()) && harness::rollout_complete(d))
            .count();
        if done == rolled {
            progress(&format!(
                "{rolled} rollouts complete in {:.1}s",
                start.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("after {timeout:?}: {done} of {rolled} rollouts complete");
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            progress(&format!("{done} of {rolled} rollouts complete"));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// p50 and p99 of measured latencies.
fn p50_p99(mut latencies: Vec<Duration>) -> (Option<Duration>, Option<Duration>) {
    (
        quantile(0.5, &mut latencies),
        quantile(0.99, &mut latencies),
    )
}

/// p50 and p99 of histogram `name` between two scrapes, in seconds.
fn quantiles(before: &str, after: &str, name: &str) -> (Option<f64>, Option<f64>) {
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
fn reconcile_time_split(before: &str, after: &str) -> (Option<f64>, Option<f64>) {
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
const RSS_EVERY: Duration = Duration::from_secs(2);

/// The leader's highest RSS, read in the background until stopped.
struct RssPeak {
    task: tokio::task::JoinHandle<()>,
    peak: Arc<Mutex<Option<u64>>>,
}

impl RssPeak {
    fn start(client: Client) -> Self {
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

    async fn stop(self) -> Option<u64> {
        self.task.abort();
        let _ = self.task.await;
        *self.peak.lock().expect("rss lock")
    }
}

/// RSS of the leader and of the follower operator, read from `/proc` on the node.
async fn operator_rss(client: &Client) -> Result<(Option<u64>, Option<u64>)> {
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
async fn service_account_requests(client: &Client) -> Result<Option<f64>> {
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

fn ms(seconds: Option<f64>) -> String {
    seconds.map_or("-".into(), |s| format!("{:.1}", s * 1000.0))
}

fn dur_ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{}", d.as_millis()))
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn print_table(args: &Args, rows: &[Row]) {
    println!(
        "| pods | Deployments = policies | all gates open after | not injected | operator RSS leader / follower (MiB) | leader RSS peak in the step (MiB) | reconcile p50 / p99 (ms) | its own time p99 / gate write p99 (ms) | webhook p50 / p99 (ms) | ready → gate open p50 / p99 (ms) | rolled at once | all rolled after | reconcile p99 in rollout: all / own / gate write (ms) | ready → gate open in rollout p50 / p99 (ms) | operator API requests per rollout |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} s | {} | {} / {} | {} | {} / {} | {} / {} | {} / {} | {} / {} | {} | {:.0} s | {} / {} / {} | {} / {} | {} |",
            r.pods,
            r.deployments,
            r.settle.as_secs_f64(),
            r.not_injected,
            mib(r.leader_rss_kib),
            mib(r.follower_rss_kib),
            mib(r.leader_rss_peak_kib),
            ms(r.reconcile.0),
            ms(r.reconcile.1),
            ms(r.reconcile_parts.0),
            ms(r.reconcile_parts.1),
            ms(r.webhook.0),
            ms(r.webhook.1),
            dur_ms(r.gate.0),
            dur_ms(r.gate.1),
            r.rolled,
            r.rollout.as_secs_f64(),
            ms(r.rollout_reconcile_p99),
            ms(r.rollout_reconcile_parts.0),
            ms(r.rollout_reconcile_parts.1),
            dur_ms(r.rollout_gate.0),
            dur_ms(r.rollout_gate.1),
            r.requests_per_rollout
                .map_or("-".into(), |n| format!("{n:.1}")),
        );
    }
    eprintln!(
        "scalebench: {} steps ({:?}), {} replicas each, {} kwok nodes",
        rows.len(),
        args.deployments,
        args.replicas,
        args.nodes
    );
}
