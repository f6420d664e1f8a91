//! What pods quiesce does not manage cost the operator (`--unmanaged`): its RSS before and
//! after Deployments without a policy became ready.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use quiesce_e2e::rollout;
use quiesce_e2e::scale::kwok_deployment;

use crate::operator::operator_rss;
use crate::workload::{deployment_name, ensure_namespace};
use crate::{Args, progress};

/// The operator's RSS before and after pods it does not manage appeared.
pub struct Unmanaged {
    pub pods: usize,
    pub before: (Option<u64>, Option<u64>),
    pub after: (Option<u64>, Option<u64>),
}

/// Creates `--unmanaged` Deployments without a policy in `ns` (created if missing), waits until
/// their pods are ready, and reads the operator's RSS before and after.
pub async fn measure_unmanaged(args: &Args, client: &Client, ns: &str) -> Result<Unmanaged> {
    ensure_namespace(client, ns).await?;
    let want = args.unmanaged * args.replicas as usize;
    progress(&format!(
        "{} Deployments without a policy ({want} pods) in {ns}",
        args.unmanaged
    ));
    let before = operator_rss(client).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    stream::iter(0..args.unmanaged)
        .map(|i| {
            let deployments = deployments.clone();
            async move {
                let d: Deployment = serde_json::from_value(kwok_deployment(
                    &deployment_name(i),
                    args.replicas,
                    "unmanaged",
                ))?;
                deployments.create(&PostParams::default(), &d).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let start = Instant::now();
    let timeout = Duration::from_secs(args.timeout_minutes * 60);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    loop {
        let list = pods.list(&ListParams::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|p| rollout::condition(p, "Ready") == Some("True"))
            .count();
        if ready >= want {
            break;
        }
        if start.elapsed() > timeout {
            bail!("after {timeout:?}: {ready} of {want} pods without a policy ready");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    progress(&format!(
        "{want} pods without a policy ready in {:.0}s",
        start.elapsed().as_secs_f64()
    ));
    // Let the watches deliver and the allocator settle before reading memory.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = operator_rss(client).await?;
    Ok(Unmanaged {
        pods: want,
        before,
        after,
    })
}
