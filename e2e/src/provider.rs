//! The cluster provider's and the image scripts' commands a test calls (`e2e/cluster/*.sh`), run
//! where the test runs (inside the cluster's network, through `cluster.sh exec`).

use std::process::Stdio;

use anyhow::{Context, Result, ensure};
use tokio::process::Command;

use crate::chart::repo_root;

/// The provider the suite runs on (`cluster.sh e2e` passes it down), `local` by default.
pub fn name() -> String {
    std::env::var("QUIESCE_E2E_PROVIDER").unwrap_or_else(|_| "local".into())
}

/// Runs `e2e/cluster/<script> args...` with the suite's provider; its stdout, trimmed. Its
/// stderr goes to the test's.
pub async fn run(script: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let path = repo_root().join("e2e/cluster").join(script);
    let out = Command::new(&path)
        .args(args)
        .env("QUIESCE_CLUSTER_PROVIDER", name())
        .envs(env.iter().copied())
        .stderr(Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("running {}", path.display()))?;
    ensure!(
        out.status.success(),
        "{script} {} failed: {}",
        args.join(" "),
        out.status
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
