//! `bench`: the benchmark table of docs/benchmarks.md, in one run on one cluster.
//!
//! For each variant (plain Deployment, `preStop: sleep 5`, `preStop: sleep 15`, quiesce Observe,
//! quiesce Proxy, and a graceful app with `preStop: sleep 5` and with quiesce Observe+Graceful)
//! one namespace with the demo app at v1; a rollout to v2 under load with a new connection per
//! request, to v3 with a keep-alive pool, to v4 with HTTP/2 clients. Each row: failed requests, rollout wall time
//! (template change → last old pod gone) and its ratio to the physical floor (see
//! [`Rollout::floor`]), and hey's failures beside our own load. For quiesce also the sidecar's
//! RSS and CPU, idle and under load (read from `/proc` on the node: the bench runs as root on
//! it); for every variant the new pods' time from container start to ready endpoint.
//! Progress goes to stderr, the markdown to stdout.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use quiesce_e2e::loadgen::{self, LoadConfig, Protocol, SlowMix};
use quiesce_e2e::node;
use quiesce_e2e::scenario::{self, APP, Load, MIN_HEALTHY_SECONDS, Rollout, Tracker, Variant};

#[derive(Debug, Parser)]
#[command(about = "Rolling updates under load: plain, preStop sleep, quiesce (markdown table)")]
struct Args {
    /// Requests per second of our own load generator (open loop).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Requests per second of hey, the third-party generator run beside ours on the same
    /// rollouts (HTTP/1.1 rows; 0: not run).
    #[arg(long, default_value_t = 500.0)]
    hey_rate: f64,
    /// Seconds of each resource measurement window.
    #[arg(long, default_value_t = 10)]
    window_secs: u64,
    /// Namespace prefix.
    #[arg(long, default_value = "quiesce-bench")]
    prefix: String,
    /// Variants to run, comma-separated: plain, sleep5, sleep15, quiesce, proxy,
    /// graceful-sleep5, graceful-quiesce.
    #[arg(long, value_delimiter = ',', default_values_t = ["plain".to_string(),
        "sleep5".to_string(), "sleep15".to_string(), "quiesce".to_string(),
        "proxy".to_string(), "graceful-sleep5".to_string(), "graceful-quiesce".to_string()])]
    variants: Vec<String>,
    /// The demo app answers its health check with 503 for this long after it starts (an app
    /// that warms up): shows how fast a new pod is Ready once its app is.
    #[arg(long, default_value_t = 0)]
    app_warmup_ms: u64,
    /// Print each rollout's timeline (pod milestones, bursts of failures) to stderr.
    #[arg(long)]
    timeline: bool,
}

struct Row {
    variant: Variant,
    protocol: Protocol,
    rollout: Rollout,
    floor: Duration,
}

/// The sidecars' cost, idle and under load.
#[derive(Default)]
struct SidecarCost {
    idle: Readings,
    load: Readings,
}

/// One reading per sidecar (and per app beside it) of one measurement.
#[derive(Default)]
struct Readings {
    rss_kib: Vec<u64>,
    anon_kib: Vec<u64>,
    /// The sidecar container's working set (what the kubelet counts against its limit).
    working_set_kib: Vec<u64>,
    mcpu: Vec<f64>,
    app_rss_kib: Vec<u64>,
}

/// How fast one variant's new pods took traffic: from a container first seen running to the
/// pod first seen as a ready endpoint in the EndpointSlices (what kube-proxy routes by).
struct NewPods {
    variant: Variant,
    /// From the pod's first container (quiesce: the sidecar, which starts before the app).
    from_first_container: Vec<Duration>,
    /// From the app container.
    from_app: Vec<Duration>,
}

#[tokio::main]
async fn main() {
    // The error alone, without a backtrace even when RUST_BACKTRACE is set: it says what to do.
    if let Err(e) = run_bench(Args::parse()).await {
        eprintln!("bench: {e:#}");
        std::process::exit(1);
    }
}

async fn run_bench(args: Args) -> Result<()> {
    let started = Instant::now();
    scenario::APP_WARMUP_MS.store(args.app_warmup_ms, std::sync::atomic::Ordering::Relaxed);
    let say = |m: &str| eprintln!("[bench {:>6.1}s] {m}", started.elapsed().as_secs_f64());
    let client = quiesce_e2e::harness::client().await?;
    let slow = Some(SlowMix {
        ms: 1000,
        fraction: 0.05,
    });
    scenario::delete_leftovers(&client, "bench").await?;
    let mut rows = Vec::new();
    let mut cost = SidecarCost::default();
    let mut new_pods = Vec::new();
    let all = [
        Variant::Plain,
        Variant::PreStopSleep(5),
        Variant::PreStopSleep(15),
        Variant::Quiesce,
        Variant::QuiesceProxy,
        Variant::GracefulPreStopSleep(5),
        Variant::QuiesceGraceful,
    ];
    let chosen = all
        .into_iter()
        .filter(|v| args.variants.contains(&v.slug()));
    for variant in chosen {
        let label = variant.label();
        let prefix = format!("{}-{}", args.prefix, variant.slug());
        let ns = scenario::fresh_namespace(&client, "bench", &prefix).await?;
        say(&format!("{label}: deploying v1 in namespace {ns}"));
        let tracker = Tracker::start(&client, &ns);
        scenario::deploy(&client, &ns, variant).await?;
        if variant.is_quiesce() {
            say("quiesce: sidecar cost, idle");
            measure_sidecars(&client, &ns, &tracker, None, args.window_secs, &mut cost).await?;
            say(&format!("quiesce: sidecar cost, {} req/s", args.rate));
            measure_sidecars(
                &client,
                &ns,
                &tracker,
                Some(args.rate),
                args.window_secs,
                &mut cost,
            )
            .await?;
        }
        let protocols = [Protocol::Http1, Protocol::KeepAlive, Protocol::H2c];
        for (to, protocol) in ["v2", "v3", "v4"].into_iter().zip(protocols) {
            let load = Load {
                rate: args.rate,
                protocol,
                slow,
                retry_reused: false,
                hey_rate: (args.hey_rate > 0.0).then_some(args.hey_rate),
            };
            let step = |m: &str| say(&format!("{label}, {}: {m}", scenario::clients(protocol)));
            let rollout = scenario::roll(&client, &ns, variant, &tracker, to, load, &step).await?;
            let min_healthy = if variant.is_quiesce() {
                Duration::from_secs(MIN_HEALTHY_SECONDS)
            } else {
                Duration::ZERO
            };
            let floor = rollout.floor(min_healthy, load.longest_request());
            step(&format!(
                "{} of {} failed{}, {:.1}s (floor {:.1}s)",
                rollout.summary.failed(),
                rollout.summary.sent,
                rollout
                    .hey
                    .as_ref()
                    .map(|h| format!(" (hey: {} of {})", h.failed, h.sent))
                    .unwrap_or_default(),
                rollout.wall.as_secs_f64(),
                floor.as_secs_f64()
            ));
            if args.timeline {
                eprint!("{}", rollout.timeline());
            }
            rows.push(Row {
                variant,
                protocol,
                rollout,
                floor,
            });
        }
        new_pods.push(new_pod_readiness(variant, &rows));
        tracker.stop();
        scenario::delete_namespace(&client, &ns).await;
    }
    println!(
        "{}",
        table(&rows, &cost, &new_pods, &args, started.elapsed())
    );
    Ok(())
}

/// The new pods of `variant`'s rollouts, container running → ready endpoint.
fn new_pod_readiness(variant: Variant, rows: &[Row]) -> NewPods {
    let tracks: Vec<_> = rows
        .iter()
        .filter(|r| r.variant == variant)
        .flat_map(|r| r.rollout.new.iter().map(|(_, t)| t))
        .collect();
    let since = |start: fn(&scenario::PodTrack) -> Option<Instant>| -> Vec<Duration> {
        tracks
            .iter()
            .filter_map(|t| Some(t.endpoint_ready?.saturating_duration_since(start(t)?)))
            .collect()
    };
    NewPods {
        variant,
        from_first_container: since(|t| t.sidecar_started.or(t.app_started)),
        from_app: since(|t| t.app_started),
    }
}

/// Samples every sidecar of the namespace (and its app beside it) over one window, with or
/// without load.
async fn measure_sidecars(
    client: &kube::Client,
    ns: &str,
    tracker: &Tracker,
    rate: Option<f64>,
    window_secs: u64,
    cost: &mut SidecarCost,
) -> Result<()> {
    let live: Vec<_> = tracker
        .snapshot()
        .into_values()
        .filter(|t| t.gone.is_none())
        .collect();
    let pids: Vec<u32> = live
        .iter()
        .filter_map(|t| node::find_pid(t.sidecar_container_id.as_deref()?, "quiesce-sidecar"))
        .collect();
    let app_pids: Vec<u32> = live
        .iter()
        .filter_map(|t| node::find_pid(t.app_container_id.as_deref()?, "demo-app"))
        .collect();
    if pids.is_empty() {
        eprintln!("  no sidecar process visible on this host: RSS and CPU not measured");
        return Ok(());
    }
    let load = match rate {
        Some(rate) => {
            let url = format!(
                "http://{}:80",
                quiesce_e2e::harness::cluster_ip(client, ns, APP).await?
            );
            let l = loadgen::spawn(LoadConfig::new(url, rate));
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some(l)
        }
        None => None,
    };
    let first: Vec<_> = pids.iter().filter_map(|p| node::sample(*p)).collect();
    tokio::time::sleep(Duration::from_secs(window_secs)).await;
    let last: Vec<_> = pids.iter().filter_map(|p| node::sample(*p)).collect();
    if let Some(l) = load {
        let s = l.finish().await;
        anyhow::ensure!(
            s.ok > 0,
            "no request answered during the measurement: {s:?}"
        );
    }
    let readings = if rate.is_some() {
        &mut cost.load
    } else {
        &mut cost.idle
    };
    for (a, b) in first.iter().zip(&last) {
        readings.rss_kib.push(b.rss_kib);
        readings.anon_kib.push(b.anon_kib);
        readings.working_set_kib.extend(b.working_set_kib);
        readings.mcpu.push(node::millicores(a, b));
    }
    readings.app_rss_kib.extend(
        app_pids
            .iter()
            .filter_map(|p| Some(node::sample(*p)?.rss_kib)),
    );
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn range<T: PartialOrd + Copy>(v: &[T], f: impl Fn(T) -> String) -> String {
    let min = v.iter().copied().reduce(|a, b| if b < a { b } else { a });
    let max = v.iter().copied().reduce(|a, b| if b > a { b } else { a });
    match (min, max) {
        (Some(a), Some(b)) if f(a) == f(b) => f(a),
        (Some(a), Some(b)) => format!("{}–{}", f(a), f(b)),
        _ => "n/a".into(),
    }
}

fn median_max(v: &[Duration], f: impl Fn(Duration) -> String) -> String {
    let mut v = v.to_vec();
    v.sort();
    match (v.get(v.len() / 2), v.last()) {
        (Some(m), Some(max)) => format!("{}, {}", f(*m), f(*max)),
        _ => "n/a".into(),
    }
}

fn table(
    rows: &[Row],
    cost: &SidecarCost,
    new_pods: &[NewPods],
    args: &Args,
    total: Duration,
) -> String {
    let rate = args.rate;
    let mut out = format!(
        "Rolling update of {} replicas (maxSurge 1, maxUnavailable 0) of an app that exits at once \
         on SIGTERM (\"graceful app\" rows: it finishes in-flight requests and closes its \
         keep-alive connections first), under {rate} req/s open-loop load with 5% of requests \
         taking 1 s, and beside it hey at {} req/s ({} workers, each waiting for its answer; \
         HTTP/1.1 rows only: hey has no h2c).\n\n",
        scenario::REPLICAS,
        args.hey_rate,
        (args.hey_rate / 10.0).ceil()
    );
    out += "| variant | clients | failed / sent | reset | refused | timeout | other | hey failed / sent | rollout | floor | rollout / floor | drains (forced) |\n";
    out += "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
    for r in rows {
        let s = &r.rollout.summary;
        let drains = if r.variant.is_quiesce() {
            let d = r.rollout.drains();
            let done = d.iter().filter(|d| d.status == "True").count();
            let forced = d.iter().filter(|d| d.forced()).count();
            format!("{done} ({forced})")
        } else {
            "-".into()
        };
        let hey = r
            .rollout
            .hey
            .as_ref()
            .map(|h| format!("{} / {}", h.failed, h.sent))
            .unwrap_or_else(|| "-".into());
        out += &format!(
            "| {} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} |\n",
            r.variant.label(),
            scenario::clients(r.protocol),
            s.failed(),
            s.sent,
            s.reset,
            s.refused,
            s.timeout,
            s.http_status + s.other + s.no_target,
            hey,
            secs(r.rollout.wall),
            secs(r.floor),
            r.rollout.wall.as_secs_f64() / r.floor.as_secs_f64().max(0.001),
            drains
        );
    }
    let prop: Vec<Duration> = rows
        .iter()
        .flat_map(|r| r.rollout.endpoint_propagation())
        .collect();
    let source = if rows
        .iter()
        .any(|r| r.rollout.kube_proxy_programming.is_some())
    {
        "kube-proxy's network programming latency"
    } else {
        "EndpointSlice watch"
    };
    out += &format!(
        "\nMeasured endpoint propagation ({source}): {}.\n",
        range(&prop, |d: Duration| format!("{:.2} s", d.as_secs_f64()))
    );
    let busy: Vec<f64> = rows.iter().filter_map(|r| r.rollout.cpu_busy).collect();
    out += &format!(
        "Machine CPU busy while the load ran (2 cores, every process: cluster, load generators, \
         bench): {}.\n",
        range(&busy, |b: f64| format!("{:.0} %", b * 100.0))
    );
    let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
    let mc = |m: f64| format!("{m:.2} mCPU");
    out += "\n| quiesce sidecar | RSS | of which its own (`RssAnon`) | container working set | CPU | the app beside it: RSS |\n|---|---:|---:|---:|---:|---:|\n";
    let load = format!("{rate} req/s through the pod's Service");
    for (label, r) in [("idle", &cost.idle), (load.as_str(), &cost.load)] {
        out += &format!(
            "| {label} | {} | {} | {} | {} | {} |\n",
            range(&r.rss_kib, mib),
            range(&r.anon_kib, mib),
            range(&r.working_set_kib, mib),
            range(&r.mcpu, mc),
            range(&r.app_rss_kib, mib)
        );
    }
    out += "\nNew pods, from a container first seen running to the pod first seen as a ready \
            endpoint in the EndpointSlices (median, max over the rollouts' new pods):\n\n";
    out +=
        "| variant | pods | first container → ready endpoint | app container → ready endpoint |\n";
    out += "|---|---:|---:|---:|\n";
    let ms = |d: Duration| format!("{} ms", d.as_millis());
    for n in new_pods {
        out += &format!(
            "| {} | {} | {} | {} |\n",
            n.variant.label(),
            n.from_app.len(),
            median_max(&n.from_first_container, ms),
            median_max(&n.from_app, ms)
        );
    }
    out += &format!("\nBench wall time: {}.\n", secs(total));
    out
}
