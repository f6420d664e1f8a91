//! `quiesce-sidecar` binary: parse and validate the configuration, set up logging, run.

use clap::Parser;
use quiesce_sidecar::config::{Args, LogFormat};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
    quiesce_sidecar::run::run(cfg).await
}
