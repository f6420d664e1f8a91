//! The sidecar's admin port is reachable from the pod network; a flood of it from another
//! peer of the cluster network must not make the pod NotReady, restart or OOM the sidecar, or
//! cost the app a request (issue 10, item 3).
//!
//! The flood comes from this test, inside the cluster's network namespace, from a source
//! address other than the one the kubelet's probes use (the admin server bounds connections
//! per peer address: a peer is what another pod is). For 20 s it holds up to 1,000 idle
//! connections, keeps 32 slow-header ("slowloris") connections, and sends 32 streams of
//! `GET /status` and `POST /drain` on new connections, while the pod's Ready condition, the
//! kubelet-side `/readyz`, the sidecar's RSS and the app's traffic are watched.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt};
use quiesce_api::constants::{SIDECAR_ADMIN_PORT, SIDECAR_CONTAINER_NAME};
use quiesce_e2e::chaos;
use quiesce_e2e::chart;
use quiesce_e2e::fixtures;
use quiesce_e2e::harness::{self, cluster_ip, with_namespace};
use quiesce_e2e::loadgen::{self, LoadConfig};
use quiesce_e2e::rollout;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const APP: &str = "flooded";
const FLOOD: Duration = Duration::from_secs(20);

/// A local IPv4 address other than the one this host uses to reach `pod` (the kubelet's probe
/// source): the flood's peer address.
fn other_source(pod: IpAddr) -> Result<IpAddr> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0")?;
    probe.connect(SocketAddr::new(pod, 9))?;
    let kubelet = probe.local_addr()?.ip();
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .context("ip addr")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|cidr| cidr.split('/').next()?.parse::<IpAddr>().ok())
        .find(|ip| !ip.is_loopback() && *ip != kubelet)
        .with_context(|| format!("no local address besides {kubelet} to flood from: {text}"))
}

async fn connect_from(source: IpAddr, target: SocketAddr) -> Option<TcpStream> {
    let sock = TcpSocket::new_v4().ok()?;
    sock.bind(SocketAddr::new(source, 0)).ok()?;
    tokio::time::timeout(Duration::from_secs(2), sock.connect(target))
        .await
        .ok()?
        .ok()
}

/// One request on a new connection from `source`: the status code (0: no answer).
async fn request_from(source: IpAddr, target: SocketAddr, head: &str) -> u16 {
    let Some(mut s) = connect_from(source, target).await else {
        return 0;
    };
    if s.write_all(head.as_bytes()).await.is_err() {
        return 0;
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        Ok(Ok(n)) if n >= 12 => std::str::from_utf8(&buf[9..12])
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// `/readyz` from this host's default source (where the kubelet probes from): its latency.
async fn readyz(target: SocketAddr) -> Result<Duration> {
    let t = Instant::now();
    let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target)).await??;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut answer)).await??;
    if !answer.starts_with(b"HTTP/1.1 200") {
        bail!("readyz: {}", String::from_utf8_lossy(&answer));
    }
    Ok(t.elapsed())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn ready(pod: &Pod) -> bool {
    rollout::condition(pod, "Ready") == Some("True")
}

fn sidecar_restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.name == SIDECAR_CONTAINER_NAME)
        .map_or(0, |c| c.restart_count)
}

#[derive(Default)]
struct Tally {
    held_opened: AtomicU64,
    slow_closed_by_server: AtomicU64,
    status_ok: AtomicU64,
    drain_forbidden: AtomicU64,
    drain_busy: AtomicU64,
    no_answer: AtomicU64,
    other: AtomicU64,
}

#[tokio::test]
async fn a_flood_of_the_admin_port_from_another_peer_costs_nothing() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("admin-flood", |client, ns| async move {
        fixtures::demo_app_with_policy(&client, &ns, APP, "    steps: [{admit: \"100%\"}]", 1)
            .await?;
        let pod = harness::pods(&client, &ns, &format!("app={APP}")).await?.remove(0);
        anyhow::ensure!(rollout::injected(&pod), "the pod is injected");
        let pod_ip: IpAddr = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .context("pod IP")?
            .parse()?;
        let admin = SocketAddr::new(pod_ip, SIDECAR_ADMIN_PORT);
        let source = other_source(pod_ip)?;
        let uid = pod.uid().context("pod uid")?;
        let [pid] = chaos::pids_in_pod(&uid, SIDECAR_CONTAINER_NAME)?[..] else {
            bail!("one sidecar process expected");
        };
        let rss_before = rss_kib(pid);
        let restarts_before = sidecar_restarts(&pod);
        let url = format!("http://{}:80", cluster_ip(&client, &ns, APP).await?);
        harness::wait_serving(&url, Duration::from_secs(60)).await?;
        println!("flooding {admin} from {source} for {FLOOD:?}; sidecar RSS {rss_before} KiB");

        let load = loadgen::spawn(LoadConfig::new(url, 20.0));
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let mut tasks = Vec::new();
        // Idle connections, held (the oldest let go past 1,000).
        {
            let (stop, tally) = (stop.clone(), tally.clone());
            tasks.push(tokio::spawn(async move {
                let mut held = std::collections::VecDeque::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(s) = connect_from(source, admin).await {
                        tally.held_opened.fetch_add(1, Ordering::Relaxed);
                        held.push_back(s);
                        if held.len() > 1000 {
                            held.pop_front();
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        // Slow headers: a line a second, never the end of the head.
        for _ in 0..32 {
            let (stop, tally) = (stop.clone(), tally.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Some(mut s) = connect_from(source, admin).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let mut line = b"GET /status HTTP/1.1\r\n".to_vec();
                    while !stop.load(Ordering::Relaxed) && s.write_all(&line).await.is_ok() {
                        line = b"X-Slow: 1\r\n".to_vec();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    if !stop.load(Ordering::Relaxed) {
                        tally.slow_closed_by_server.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        // Requests on new connections: /status and outsiders' /drain.
        for i in 0..32 {
            let (stop, tally) = (stop.clone(), tally.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let head = if i % 2 == 0 {
                        "GET /status HTTP/1.1\r\nHost: x\r\n\r\n"
                    } else {
                        "POST /drain HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                    };
                    let counter = match request_from(source, admin, head).await {
                        200 => &tally.status_ok,
                        403 => &tally.drain_forbidden,
                        429 => &tally.drain_busy,
                        0 => &tally.no_answer,
                        _ => &tally.other,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }

        // Watch the pod, the kubelet's view of the sidecar and its memory meanwhile.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let started = Instant::now();
        let (mut not_ready, mut readyz_failed, mut readyz_max, mut rss_max) =
            (0, Vec::new(), Duration::ZERO, rss_before);
        while started.elapsed() < FLOOD {
            let p = pods.get(&pod.name_any()).await?;
            if !ready(&p) {
                not_ready += 1;
            }
            match readyz(admin).await {
                Ok(t) => readyz_max = readyz_max.max(t),
                Err(e) => readyz_failed.push(format!("{:?}: {e:#}", started.elapsed())),
            }
            rss_max = rss_max.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.abort();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        load.stop();
        let summary = load.finish().await;
        let after = pods.get(&pod.name_any()).await?;
        let t = |c: &AtomicU64| c.load(Ordering::Relaxed);
        println!(
            "flood: {} idle connections opened, {} slow-header connections closed by the sidecar, \
             {} /status answered, {} /drain refused (403), {} /drain busy (429), {} no answer, {} other",
            t(&tally.held_opened),
            t(&tally.slow_closed_by_server),
            t(&tally.status_ok),
            t(&tally.drain_forbidden),
            t(&tally.drain_busy),
            t(&tally.no_answer),
            t(&tally.other),
        );
        println!(
            "meanwhile: pod NotReady in {not_ready} samples, /readyz from the kubelet's address: \
             {} failed, slowest {readyz_max:?}; sidecar RSS {rss_before} KiB before, {rss_max} KiB at most, \
             {} KiB after; app load: {}",
            readyz_failed.len(),
            rss_kib(pid),
            serde_json::to_string(&summary)?
        );
        assert_eq!(not_ready, 0, "the pod went NotReady during the flood");
        assert!(readyz_failed.is_empty(), "readyz failed: {readyz_failed:?}");
        assert_eq!(
            sidecar_restarts(&after),
            restarts_before,
            "the sidecar restarted (OOM or crash) during the flood"
        );
        assert_eq!(summary.failed(), 0, "app requests failed: {summary:?}");
        assert!(t(&tally.drain_forbidden) > 0, "the drain calls were answered 403");
        Ok(())
    })
    .await;
}
