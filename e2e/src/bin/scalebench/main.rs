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
//!
//! This file holds the flags and the order of the steps; `step.rs` measures one step,
//! `workload.rs` creates the Deployments and waits for them, `pods.rs` is this process's pod
//! watch, `operator.rs` reads the operator's cost, `unmanaged.rs` measures pods without a
//! policy and `report.rs` prints the tables.

mod operator;
mod pods;
mod report;
mod step;
mod unmanaged;
mod workload;

use std::sync::{Arc, Mutex};

use anyhow::Result;
use clap::Parser;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use quiesce_e2e::harness;
use quiesce_e2e::scale::kwok_node;

use pods::{Pods, watch_pods};
use report::{print_table, print_unmanaged};
use step::measure_step;
use unmanaged::measure_unmanaged;
use workload::ensure_namespace;

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
