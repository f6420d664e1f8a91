//! The markdown tables on stdout: the operator's RSS with pods it does not manage, and one row
//! per step.

use std::time::Duration;

use crate::Args;
use crate::step::Row;
use crate::unmanaged::Unmanaged;

pub fn print_unmanaged(u: &Unmanaged) {
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

fn ms(seconds: Option<f64>) -> String {
    seconds.map_or("-".into(), |s| format!("{:.1}", s * 1000.0))
}

fn dur_ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{}", d.as_millis()))
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

pub fn print_table(args: &Args, rows: &[Row]) {
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
