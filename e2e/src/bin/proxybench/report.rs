//! The markdown tables on stdout: each cell the median over the rounds, the added latency
//! against the direct path of the same round, and the saturation table.

use std::collections::BTreeMap;

use crate::Args;
use crate::measure::{Client, Sample};
use crate::paths::PathKind;

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A cell of the result: one client, rate and path, every round.
pub type Key = (Client, u64, PathKind);

fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.3} ms")
    }
}

fn fmt_added(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:+.3} ms")
    }
}

pub fn fmt_mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[allow(clippy::too_many_arguments)]
pub fn print_tables(
    args: &Args,
    cells: &BTreeMap<Key, Vec<Sample>>,
    saturation: &BTreeMap<PathKind, Sample>,
    idle_rss: &BTreeMap<PathKind, u64>,
    rates: &[f64],
    clients: &[Client],
    kinds: &[PathKind],
    versions: (&str, &str),
) {
    println!(
        "Added latency of an in-pod reverse proxy on loopback (demo app behind it), {} rounds of {} s per cell, median per cell; \
         hey with {} keep-alive workers; own client open loop ({} h2c connections).",
        args.rounds, args.duration_secs, args.workers, args.h2_connections
    );
    println!();
    println!(
        "| client | rate | path | achieved req/s | errors / sent | p50 | p99 | added p50 | added p99 | proxy RSS | proxy CPU | CPU per 1k req/s |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut busy = Vec::new();
    let mut background = Vec::new();
    for &client in clients {
        for &rate in rates {
            let key = |k| (client, rate as u64, k);
            let Some(direct) = cells.get(&key(PathKind::Direct)) else {
                continue;
            };
            for &k in kinds {
                let Some(v) = cells.get(&key(k)) else {
                    continue;
                };
                busy.extend(v.iter().map(|s| s.machine_busy));
                background.extend(v.iter().map(|s| s.background_busy));
                let med = |f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
                let added = |f: fn(&Sample) -> f64| {
                    median(v.iter().zip(direct).map(|(s, d)| f(s) - f(d)).collect())
                };
                let rps = med(|s| s.rps);
                let errors: u64 = v.iter().map(|s| s.errors).sum();
                let sent: u64 = v.iter().map(|s| s.sent).sum();
                let (rss, cpu, per1k, add50, add99) = if k == PathKind::Direct {
                    ("-".into(), "-".into(), "-".into(), "-".into(), "-".into())
                } else {
                    let mcpu = med(|s| s.mcpu);
                    (
                        fmt_mib(v.iter().map(|s| s.rss_kib).max().unwrap_or(0)),
                        format!("{mcpu:.0} mCPU"),
                        format!("{:.0} mCPU", mcpu / (rps / 1000.0)),
                        fmt_added(added(|s| s.p50_ms)),
                        fmt_added(added(|s| s.p99_ms)),
                    )
                };
                println!(
                    "| {} | {} | {} | {:.0} | {} / {} | {} | {} | {} | {} | {} | {} | {} |",
                    client.label(),
                    rate as u64,
                    k.label(),
                    rps,
                    errors,
                    sent,
                    fmt_ms(med(|s| s.p50_ms)),
                    fmt_ms(med(|s| s.p99_ms)),
                    add50,
                    add99,
                    rss,
                    cpu,
                    per1k
                );
            }
        }
    }
    println!();
    println!(
        "Saturation (hey, {} keep-alive workers, no rate limit, {} s):",
        args.workers, args.saturation_secs
    );
    println!();
    println!(
        "| path | req/s | p50 | p99 | proxy RSS (idle → loaded) | proxy CPU | CPU per 1k req/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (k, s) in saturation {
        let (rss, cpu, per1k) = if *k == PathKind::Direct {
            ("-".into(), "-".into(), "-".into())
        } else {
            (
                format!(
                    "{} → {}",
                    fmt_mib(idle_rss.get(k).copied().unwrap_or(0)),
                    fmt_mib(s.rss_kib)
                ),
                format!("{:.0} mCPU", s.mcpu),
                format!("{:.0} mCPU", s.mcpu / (s.rps / 1000.0)),
            )
        };
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} |",
            k.label(),
            s.rps,
            fmt_ms(s.p50_ms),
            fmt_ms(s.p99_ms),
            rss,
            cpu,
            per1k
        );
    }
    println!();
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{:.0}%–{:.0}%", lo * 100.0, hi * 100.0)
    };
    println!(
        "Machine: {} cores, {} busy during the runs (all processes, the load generator included), \
         {} busy in the second before each run (other work on the machine; median {:.0}%). {}; {}.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        range(&busy),
        range(&background),
        median(background.clone()) * 100.0,
        versions.0,
        versions.1
    );
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_ignores_nan_and_averages_the_middle_pair() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, f64::NAN, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
