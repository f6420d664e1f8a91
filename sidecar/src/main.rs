//! `quiesce-sidecar` binary: parse and validate the configuration, set up logging, run.

use clap::Parser;
use quiesce_api::log_line::json_logs;
use quiesce_sidecar::config::{Args, LogFormat};
use tracing_subscriber::{filter::Targets, layer::SubscriberExt, util::SubscriberInitExt};

fn main() -> anyhow::Result<()> {
    let cfg = match Args::parse().validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("quiesce-sidecar: {e}");
            std::process::exit(2);
        }
    };
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    match cfg.log_format {
        LogFormat::Json => json_logs(std::io::stdout).with(filter).init(),
        LogFormat::Plain => tracing_subscriber::fmt()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .finish()
            .with(filter)
            .init(),
    }
    runtime(cfg.worker_threads)?.block_on(quiesce_sidecar::run::run(cfg))
}

/// `RUST_LOG` as `level` or `target=level,...` (info when unset or unparsable). Not
/// `EnvFilter`: its span and field matching links a regex engine (0.9 MB) into every pod.
fn log_filter(rust_log: Option<&str>) -> Targets {
    rust_log
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO))
}

/// One thread by default: every pod pays for the sidecar's threads (each a stack and an
/// allocator arena), and one carries its work (`--worker-threads`).
fn runtime(worker_threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(usize::from(worker_threads));
        b
    };
    builder.enable_all().build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn rust_log_sets_levels_per_target_and_defaults_to_info() {
        let f = log_filter(Some("warn,quiesce_sidecar::probe=debug"));
        assert!(f.would_enable("quiesce_sidecar::probe", &Level::DEBUG));
        assert!(!f.would_enable("quiesce_sidecar::drainer", &Level::INFO));
        assert!(f.would_enable("quiesce_sidecar::drainer", &Level::WARN));
        for unset in [None, Some("=bad=")] {
            let f = log_filter(unset);
            assert!(f.would_enable("quiesce_sidecar::run", &Level::INFO));
            assert!(!f.would_enable("quiesce_sidecar::run", &Level::DEBUG));
        }
    }
}
