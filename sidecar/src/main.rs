//! `quiesce-sidecar` binary: parse and validate the configuration, set up logging, run.

use clap::Parser;
use quiesce_sidecar::config::{Args, LogFormat};

fn main() -> anyhow::Result<()> {
    let cfg = match Args::parse().validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("quiesce-sidecar: {e}");
            std::process::exit(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(std::io::stdout);
    match cfg.log_format {
        LogFormat::Json => fmt.json().init(),
        LogFormat::Plain => fmt.init(),
    }
    runtime(cfg.worker_threads)?.block_on(quiesce_sidecar::run::run(cfg))
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
