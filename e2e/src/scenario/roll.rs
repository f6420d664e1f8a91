//! [`roll`]: the app's `VERSION` changed under open-loop load (and hey's, if asked), waited out
//! until every old pod is gone, and measured into a [`Rollout`].

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use kube::Client;

use super::{APP, PodTrack, Rollout, Tracker, Variant, deployment_yaml, diagnose};
use crate::harness::{self, apply_yaml};
use crate::hey::{self, HeyConfig};
use crate::loadgen::{self, LoadConfig, Protocol, SlowMix};

/// The load of a rollout.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Requests per second (open loop).
    pub rate: f64,
    /// How the clients connect: a new connection per request, a keep-alive pool, or HTTP/2.
    pub protocol: Protocol,
    /// Slow requests in the mix.
    pub slow: Option<SlowMix>,
    /// Keep-alive: send again what a reused connection dropped before its response
    /// ([`LoadConfig::retry_reused`]).
    pub retry_reused: bool,
    /// Also run hey, a third-party generator, at this rate beside our own load, with the same
    /// kind of connections (HTTP/1.1 only: hey has no h2c).
    pub hey_rate: Option<f64>,
}

/// How a load's clients connect, in words.
pub fn clients(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Http1 => "new connection per request",
        Protocol::KeepAlive => "keep-alive pool",
        Protocol::H2c => "HTTP/2 (h2c)",
    }
}

impl Load {
    /// Longest request the app is asked to serve, beyond the network.
    pub fn longest_request(&self) -> Duration {
        Duration::from_millis(self.slow.map_or(0, |s| s.ms))
    }
}

/// kube-proxy's `network_programming_duration` histogram (sum seconds, count), read from its
/// metrics endpoint on the node's loopback (local provider); `None` elsewhere.
pub async fn kube_proxy_programming() -> Option<(f64, f64)> {
    let url = std::env::var("QUIESCE_KUBE_PROXY_METRICS")
        .unwrap_or_else(|_| "http://127.0.0.1:10249/metrics".into());
    let (status, body) = harness::http_get(&url).await.ok()?;
    if status != 200 {
        return None;
    }
    let value = |name: &str| -> Option<f64> {
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .reduce(|a, b| a + b)
    };
    Some((
        value("kubeproxy_network_programming_duration_seconds_sum")?,
        value("kubeproxy_network_programming_duration_seconds_count")?,
    ))
}

/// Changes the app's `VERSION` to `to` under `load` and waits until the rollout is complete and
/// every old pod is gone. `progress` is told what happens.
pub async fn roll(
    client: &Client,
    ns: &str,
    variant: Variant,
    tracker: &Tracker,
    to: &str,
    load: Load,
    progress: &dyn Fn(&str),
) -> Result<Rollout> {
    let url = format!("http://{}:80", harness::cluster_ip(client, ns, APP).await?);
    harness::wait_serving(&url, Duration::from_secs(60)).await?;
    let load_started = Instant::now();
    let cpu_before = cpu_times();
    let hey = match (load.hey_rate, load.protocol) {
        (Some(rate), Protocol::Http1 | Protocol::KeepAlive) => Some(hey::spawn(&HeyConfig {
            keep_alive: load.protocol == Protocol::KeepAlive,
            // hey's workers each wait for their answer: ten requests a second each.
            workers: (rate / 10.0).ceil().max(1.0) as u32,
            // Stopped with SIGINT when our load ends.
            ..HeyConfig::new(url.clone(), rate, Duration::from_secs(1800))
        })?),
        _ => None,
    };
    let running = loadgen::spawn(LoadConfig {
        protocol: load.protocol,
        slow: load.slow,
        retry_reused: load.retry_reused,
        ..LoadConfig::new(url, load.rate)
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before: BTreeSet<String> = tracker
        .snapshot()
        .into_iter()
        .filter(|(_, t)| t.gone.is_none())
        .map(|(n, _)| n)
        .collect();
    let kp_before = kube_proxy_programming().await;
    progress(&format!("rolling to {to} under load"));
    let started = Instant::now();
    apply_yaml(client, ns, &deployment_yaml(variant, to)).await?;
    if let Err(e) = harness::wait_rollout(client, ns, APP, Duration::from_secs(300)).await {
        bail!("{e:#}\n{}", diagnose(client, ns).await);
    }
    harness::eventually("old pods to be gone", Duration::from_secs(180), || async {
        let snap = tracker.snapshot();
        Ok(before
            .iter()
            .all(|n| snap.get(n).is_some_and(|t| t.gone.is_some()))
            .then_some(()))
    })
    .await?;
    let wall = started.elapsed();
    let kp_after = kube_proxy_programming().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let summary = running.finish().await;
    let hey = match hey {
        Some(h) => {
            h.interrupt().await?;
            Some(h.finish().await?)
        }
        None => None,
    };
    let cpu_busy = match (cpu_before, cpu_times()) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => Some((b1 - b0) as f64 / (t1 - t0) as f64),
        _ => None,
    };
    let snap = tracker.snapshot();
    let mut old: Vec<(String, PodTrack)> = snap
        .iter()
        .filter(|(n, _)| before.contains(*n))
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    old.sort_by_key(|(_, t)| t.deleting);
    let mut new: Vec<(String, PodTrack)> = snap
        .iter()
        .filter(|(n, t)| !before.contains(*n) && t.first_seen.is_some_and(|f| f >= started))
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    new.sort_by_key(|(_, t)| t.first_seen);
    let kube_proxy_programming = match (kp_before, kp_after) {
        (Some((s0, c0)), Some((s1, c1))) if c1 > c0 => {
            Some(Duration::from_secs_f64((s1 - s0) / (c1 - c0)))
        }
        _ => None,
    };
    Ok(Rollout {
        summary,
        wall,
        old,
        new,
        kube_proxy_programming,
        load_started,
        started,
        hey,
        cpu_busy,
    })
}

/// The machine's (busy, total) CPU time in clock ticks, from `/proc/stat`.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …: idle and iowait are not busy.
    let idle = ticks.get(3)? + ticks.get(4).unwrap_or(&0);
    let total: u64 = ticks.iter().take(8).sum();
    Some((total - idle, total))
}
