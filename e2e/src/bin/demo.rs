//! `demo`: the same rolling update of the demo app, under the same load, without and with
//! quiesce; prints a short report and exits 0 only if quiesce lost no request.
//!
//! Run by `make demo` (`e2e/demo.sh`), which picks the cluster, loads the images and installs
//! quiesce with Helm first; this binary runs where the cluster is reachable.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use quiesce_api::RolloutPolicy;
use quiesce_e2e::harness;
use quiesce_e2e::loadgen::{Protocol, SlowMix};
use quiesce_e2e::scenario::{self, APP, Load, Rollout, Tracker, Variant, clients};

#[derive(Debug, Parser)]
#[command(about = "A rolling update under load, without and with quiesce")]
struct Args {
    /// Requests per second (open loop).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Reuse connections instead of one new connection per request.
    #[arg(long)]
    keep_alive: bool,
    /// Namespace prefix: the quiesce run goes to `<prefix>-<random>` (kept afterwards to look
    /// at, deleted by the next run), the plain run to `<prefix>-plain-<random>` (deleted).
    #[arg(long, default_value = "quiesce-demo")]
    namespace: String,
    /// Print each rollout's timeline (pod milestones, bursts of failures) to stderr.
    #[arg(long)]
    timeline: bool,
}

fn progress(started: Instant) -> impl Fn(&str) {
    move |msg: &str| eprintln!("[demo {:>6.1}s] {msg}", started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() {
    // The error alone, without a backtrace even when RUST_BACKTRACE is set: it says what to do.
    if let Err(e) = run_demo(Args::parse()).await {
        eprintln!("demo: {e:#}");
        std::process::exit(1);
    }
}

async fn run_demo(args: Args) -> Result<()> {
    let started = Instant::now();
    let say = progress(started);
    let client = harness::client().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.get("rolloutpolicies.quiesce.dev").await.context(
        "the RolloutPolicy CRD is not installed: `make demo` installs quiesce with Helm",
    )?;

    let load = Load {
        rate: args.rate,
        protocol: if args.keep_alive {
            Protocol::KeepAlive
        } else {
            Protocol::Http1
        },
        // One request in 20 takes a second: in flight when its pod goes.
        slow: Some(SlowMix {
            ms: 1000,
            fraction: 0.05,
        }),
        retry_reused: false,
        hey_rate: None,
    };
    scenario::delete_leftovers(&client, "demo").await?;
    let plain_ns = format!("{}-plain", args.namespace);
    let (plain_ns, plain) = run(&client, &plain_ns, Variant::Plain, load, &say).await?;
    if args.timeline {
        eprint!("{}", plain.timeline());
    }
    scenario::delete_namespace(&client, &plain_ns).await;
    let (ns, quiesce) = run(&client, &args.namespace, Variant::Quiesce, load, &say).await?;
    if args.timeline {
        eprint!("{}", quiesce.timeline());
    }
    let policy = Api::<RolloutPolicy>::namespaced(client.clone(), &ns)
        .get(APP)
        .await?;

    println!();
    println!(
        "{}",
        report(&plain, &quiesce, &policy, load, started.elapsed())
    );
    println!(
        "The quiesce run is left in namespace {ns}: \
         e2e/cluster/cluster.sh exec kubectl -n {ns} get rolloutpolicy,pods"
    );
    let lost = quiesce.summary.failed();
    if quiesce.summary.sent == 0 || !quiesce.summary.ok_by_version.contains_key("v2") {
        bail!("the quiesce run did not serve the new version under load");
    }
    if lost > 0 {
        bail!(
            "quiesce lost {lost} of {} requests: {:?}",
            quiesce.summary.sent,
            quiesce.summary.error_samples
        );
    }
    Ok(())
}

async fn run(
    client: &kube::Client,
    prefix: &str,
    variant: Variant,
    load: Load,
    say: &dyn Fn(&str),
) -> Result<(String, Rollout)> {
    let label = variant.label();
    let ns = &scenario::fresh_namespace(client, "demo", prefix).await?;
    say(&format!("{label}: namespace {ns}"));
    let tracker = Tracker::start(client, ns);
    say(&format!(
        "{label}: deploying {APP} v1 (3 replicas, exits at once on SIGTERM)"
    ));
    scenario::deploy(client, ns, variant).await?;
    let step = |m: &str| say(&format!("{label}: {m}"));
    let rollout = scenario::roll(client, ns, variant, &tracker, "v2", load, &step).await?;
    tracker.stop();
    say(&format!(
        "{label}: rolled out in {:.1}s, {} of {} requests failed",
        rollout.wall.as_secs_f64(),
        rollout.summary.failed(),
        rollout.summary.sent
    ));
    Ok((ns.clone(), rollout))
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn report(
    plain: &Rollout,
    quiesce: &Rollout,
    policy: &RolloutPolicy,
    load: Load,
    total: Duration,
) -> String {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut row = |name: &str, a: String, b: String| rows.push((name.to_string(), a, b));
    let (p, q) = (&plain.summary, &quiesce.summary);
    row("requests sent", p.sent.to_string(), q.sent.to_string());
    row("failed", p.failed().to_string(), q.failed().to_string());
    let status = |s: &quiesce_e2e::loadgen::Summary| {
        let codes: Vec<String> = s
            .status_codes
            .iter()
            .filter(|(c, _)| !(200..300).contains(*c))
            .map(|(c, n)| format!("{n}×{c}"))
            .collect();
        if codes.is_empty() {
            "0".to_string()
        } else {
            codes.join(" ")
        }
    };
    row("  status code (non-2xx)", status(p), status(q));
    row("  reset", p.reset.to_string(), q.reset.to_string());
    row("  refused", p.refused.to_string(), q.refused.to_string());
    row("  timeout", p.timeout.to_string(), q.timeout.to_string());
    row(
        "  other",
        (p.other + p.no_target).to_string(),
        (q.other + q.no_target).to_string(),
    );
    row("rollout duration", secs(plain.wall), secs(quiesce.wall));
    let drains = quiesce.drains();
    let finished: Vec<_> = drains.iter().filter(|d| d.status == "True").collect();
    let max = finished.iter().filter_map(|d| d.duration()).max();
    let forced = finished.iter().filter(|d| d.forced()).count();
    row("drains", "none".into(), finished.len().to_string());
    row(
        "  max duration",
        "-".into(),
        max.map(secs).unwrap_or_else(|| "-".into()),
    );
    row("  forced", "-".into(), forced.to_string());

    let w = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let mut out = format!(
        "quiesce demo: rolling update of {APP} (3 replicas, maxSurge 1, the app exits at once on \
         SIGTERM)\nload: {} req/s open loop, {}, 5% of requests take 1 s\n\n",
        load.rate,
        clients(load.protocol)
    );
    out += &format!(
        "{:<w$}  {:>16}  {:>16}\n",
        "", "without quiesce", "with quiesce"
    );
    for (name, a, b) in &rows {
        out += &format!("{name:<w$}  {a:>16}  {b:>16}\n");
    }
    if let Some(st) = &policy.status {
        let d = st.drains.clone().unwrap_or_default();
        out += &format!(
            "\nRolloutPolicy status: phase {}, drains completed {} forced {} max {}\n",
            st.phase
                .as_ref()
                .map(|p| format!("{p:?}"))
                .unwrap_or_else(|| "-".into()),
            d.completed,
            d.forced,
            d.max_duration_millis
                .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
                .unwrap_or_else(|| "-".into())
        );
    }
    for (pod, t) in &quiesce.old {
        if let Some(d) = &t.drain {
            out += &format!("  {pod}: {} {}\n", d.reason, d.summary());
        }
    }
    if finished.len() < quiesce.old.len() {
        out += &format!(
            "warning: {} of {} old pods reported no finished drain: their sidecar could not \
             write its pod's status (see docs/troubleshooting.md)\n",
            quiesce.old.len() - finished.len(),
            quiesce.old.len()
        );
    }
    out += &format!(
        "\nRESULT: with quiesce {} of {} requests failed; without it {} of {} ({:.1}%). \
         Total demo time {}.\n",
        q.failed(),
        q.sent,
        p.failed(),
        p.sent,
        100.0 * p.failed() as f64 / p.sent.max(1) as f64,
        secs(total)
    );
    out
}
