//! Bytes the leader's caches hold, full objects against slimmed ones (`controller::slim`), for
//! pods and Deployments decoded from the fixtures (real objects of the development cluster: an
//! injected demo pod, a Deployment applied with `kubectl apply`). Every object is decoded on
//! its own, as a watch does, and held behind an `Arc`, as a reflector store does; the bytes are
//! counted by `stats_alloc` (live heap bytes after minus before).
//!
//! `cargo run --release -p quiesce-operator --example cache_footprint`

use std::alloc::System;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use quiesce_operator::controller::slim::{slim_deployment, slim_pod};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const POD: &str = include_str!("../tests/fixtures/injected-pod.json");
const DEPLOYMENT: &str = include_str!("../tests/fixtures/deployment.json");

/// Live heap bytes of `n` objects made by `make`, held as a store holds them.
fn held<T>(n: usize, make: impl Fn(usize) -> T) -> usize {
    let region = Region::new(GLOBAL);
    let objects: Vec<Arc<T>> = (0..n).map(|i| Arc::new(make(i))).collect();
    let change = region.change();
    drop(objects);
    (change.bytes_allocated + change.bytes_reallocated.max(0) as usize)
        .saturating_sub(change.bytes_deallocated)
}

fn pod(i: usize, slim: bool) -> Pod {
    let mut p: Pod = serde_json::from_str(POD).expect("fixture pod");
    p.metadata.name = Some(format!("web-{i}"));
    if slim {
        slim_pod(&mut p);
    }
    p
}

fn deployment(i: usize, slim: bool) -> Deployment {
    let mut d: Deployment = serde_json::from_str(DEPLOYMENT).expect("fixture deployment");
    d.metadata.name = Some(format!("web-{i}"));
    if slim {
        slim_deployment(&mut d);
    }
    d
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn main() {
    println!("| cache | objects | full objects | slimmed | slimmed / full |");
    println!("|---|---:|---:|---:|---:|");
    for n in [1_000, 10_000] {
        let (full, slim) = (held(n, |i| pod(i, false)), held(n, |i| pod(i, true)));
        println!(
            "| pods | {n} | {} | {} | {:.2} |",
            mib(full),
            mib(slim),
            slim as f64 / full as f64
        );
    }
    for n in [1_000, 10_000] {
        let (full, slim) = (
            held(n, |i| deployment(i, false)),
            held(n, |i| deployment(i, true)),
        );
        println!(
            "| Deployments | {n} | {} | {} | {:.2} |",
            mib(full),
            mib(slim),
            slim as f64 / full as f64
        );
    }
}
