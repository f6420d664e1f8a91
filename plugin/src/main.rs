//! The `kubectl-quiesce` binary: `kubectl quiesce ...` once it is on the PATH.

use std::io::IsTerminal;

use clap::Parser;
use quiesce_kubectl::{Cli, run};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let result = async {
        let client = kube::Client::try_default().await?;
        run(client, cli, &mut std::io::stdout(), colour).await
    }
    .await;
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
