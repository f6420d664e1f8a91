//! Bytes the leader's caches hold, full objects against the cached types the watches decode
//! into (`controller::cached`), for pods and Deployments decoded from the fixtures (real objects of the development cluster: an
//! injected demo pod, a Deployment applied with `kubectl apply`). Every object is decoded on
//! its own, as a watch does, and held behind an `Arc`, as a reflector store does; the bytes are
//! counted by `stats_alloc` (live heap bytes after minus before).
//!
//! `cargo run --release -p quiesce-operator --example cache_footprint`

use std::alloc::System;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use quiesce_operator::controller::{CachedDeployment, CachedPod};
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

/// Decodes `json` as `T` and names it `web-{i}`, as a watch decodes each object.
fn decoded<T: serde::de::DeserializeOwned + kube::Resource>(json: &str, i: usize) -> T {
    let mut o: T = serde_json::from_str(json).expect("fixture");
    o.meta_mut().name = Some(format!("web-{i}"));
    o
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn main() {
    println!("| cache | objects | full objects | cached | cached / full |");
    println!("|---|---:|---:|---:|---:|");
    for n in [1_000, 10_000] {
        let (full, cached) = (
            held(n, |i| decoded::<Pod>(POD, i)),
            held(n, |i| decoded::<CachedPod>(POD, i)),
        );
        println!(
            "| pods | {n} | {} | {} | {:.2} |",
            mib(full),
            mib(cached),
            cached as f64 / full as f64
        );
    }
    for n in [1_000, 10_000] {
        let (full, cached) = (
            held(n, |i| decoded::<Deployment>(DEPLOYMENT, i)),
            held(n, |i| decoded::<CachedDeployment>(DEPLOYMENT, i)),
        );
        println!(
            "| Deployments | {n} | {} | {} | {:.2} |",
            mib(full),
            mib(cached),
            cached as f64 / full as f64
        );
    }
}
