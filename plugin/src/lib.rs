//! `kubectl quiesce`: the rollouts quiesce paces, their pods and drains, and the commands that
//! steer them — what `kubectl argo rollouts` is to Argo Rollouts.
//!
//! - [`view`]: what `get` shows, built purely from the objects;
//! - [`render`]: text for people (colour only on a terminal);
//! - [`command`]: which change each steering command makes, or why it does not apply now;
//! - [`check`]: a dry run of injection for a Deployment (the webhook's own code);
//! - [`cluster`]: the reads and patches, and the watch behind `get -w`.
//!
//! [`run`] is the whole program given a client and an output, so the e2e suite drives exactly
//! what the binary runs.

pub mod check;
pub mod cluster;
pub mod command;
pub mod render;
pub mod view;

use std::io::Write;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::jiff::Timestamp;
use kube::Client;

use crate::command::Command;
use crate::render::Style;

/// kubectl quiesce: see and steer the rollouts quiesce paces.
#[derive(Debug, Parser)]
#[command(name = "kubectl quiesce", bin_name = "kubectl quiesce", version, about)]
pub struct Cli {
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Output format of `get` and `list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// For scripts.
    Json,
    /// For scripts.
    Yaml,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// One rollout: policy, step, pods (revision, readiness, gate, drain), last Events.
    Get {
        /// The RolloutPolicy (default: the namespace's only one).
        policy: Option<String>,
        /// Print again on every change until interrupted.
        #[arg(short, long)]
        watch: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Every RolloutPolicy with its phase and progress.
    List {
        /// In every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Hold admission of new pods (spec.paused).
    Pause {
        /// The RolloutPolicy.
        policy: String,
    },
    /// Let a paused rollout go on.
    Resume {
        /// The RolloutPolicy.
        policy: String,
    },
    /// End the current pause step.
    Promote {
        /// The RolloutPolicy.
        policy: String,
        /// Skip every remaining step.
        #[arg(long)]
        full: bool,
    },
    /// Roll the target back to the stable revision.
    Abort {
        /// The RolloutPolicy.
        policy: String,
    },
    /// Continue a rollout that failed and was paused.
    Retry {
        /// The RolloutPolicy.
        policy: String,
    },
    /// The drain reports of a policy's pods, or of one pod, with where the time went.
    Drains {
        /// A RolloutPolicy or a pod.
        name: String,
    },
    /// A dry run of injection for a Deployment's pods: what changes, and every problem.
    Check {
        /// The Deployment.
        deployment: String,
        /// The sidecar admin port the operator is configured with (chart value
        /// `sidecar.adminPort`).
        #[arg(long, default_value_t = quiesce_api::constants::SIDECAR_ADMIN_PORT)]
        admin_port: u16,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// Runs `cli` against the cluster behind `client`, writing to `out`. `colour`: ANSI colours
/// (a terminal is attached). Returns when done; `get -w` runs until its task is dropped.
pub async fn run(
    client: Client,
    cli: Cli,
    out: &mut (dyn Write + Send),
    colour: bool,
) -> Result<()> {
    let style = Style { colour };
    let ns = cli
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let (command, policy) = match cli.command {
        Cmd::Get {
            policy,
            watch,
            output,
        } => {
            let name = match policy {
                Some(p) => p,
                None => cluster::only_policy(&client, &ns).await?,
            };
            return get(&client, &ns, &name, watch, output, out, style).await;
        }
        Cmd::List {
            all_namespaces,
            output,
        } => {
            return list(
                &client,
                (!all_namespaces).then_some(&ns),
                output,
                out,
                style,
            )
            .await;
        }
        Cmd::Drains { name } => return drains(&client, &ns, &name, out, style).await,
        Cmd::Check {
            deployment,
            admin_port,
            output,
        } => {
            let report = cluster::check(&client, &ns, &deployment, admin_port).await?;
            return match output {
                Output::Text => Ok(write!(out, "{}", render::check(&report, style))?),
                _ => write_as(output, &report, out),
            };
        }
        Cmd::Pause { policy } => (Command::Pause, policy),
        Cmd::Resume { policy } => (Command::Resume, policy),
        Cmd::Promote { policy, full } => (Command::Promote { full }, policy),
        Cmd::Abort { policy } => (Command::Abort, policy),
        Cmd::Retry { policy } => (Command::Retry, policy),
    };
    let current = cluster::policy(&client, &ns, &policy).await?;
    let change = match command::change(command, &current) {
        Ok(c) => c,
        Err(why) => bail!(why),
    };
    cluster::patch_policy(&client, &ns, &policy, &change.patch).await?;
    writeln!(out, "{}", change.done)?;
    Ok(())
}

fn write_as(output: Output, value: &impl serde::Serialize, out: &mut dyn Write) -> Result<()> {
    match output {
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(value)?)?,
        Output::Yaml => write!(out, "{}", serde_yaml::to_string(value)?)?,
        Output::Text => unreachable!("text is rendered by the caller"),
    }
    Ok(())
}

async fn get(
    client: &Client,
    ns: &str,
    name: &str,
    watch: bool,
    output: Output,
    out: &mut (dyn Write + Send),
    style: Style,
) -> Result<()> {
    let show = |v: &view::RolloutView, out: &mut (dyn Write + Send)| -> Result<()> {
        match output {
            Output::Text => write!(out, "{}", render::rollout(v, Timestamp::now(), style))?,
            _ => write_as(output, v, out)?,
        }
        out.flush()?;
        Ok(())
    };
    let v = cluster::rollout(client, ns, name).await?;
    show(&v, out)?;
    if !watch {
        return Ok(());
    }
    let mut changes = cluster::changes(client, ns, name);
    loop {
        changes.next_batch().await;
        let v = cluster::rollout(client, ns, name).await?;
        if style.colour {
            // Redraw in place on a terminal.
            write!(out, "\x1b[2J\x1b[H")?;
        } else {
            writeln!(out, "---")?;
        }
        show(&v, out)?;
    }
}

async fn list(
    client: &Client,
    ns: Option<&str>,
    output: Output,
    out: &mut (dyn Write + Send),
    style: Style,
) -> Result<()> {
    let views = cluster::rollouts(client, ns).await?;
    if output != Output::Text {
        return write_as(output, &views, out);
    }
    if views.is_empty() {
        writeln!(
            out,
            "no RolloutPolicy found{}",
            ns.map_or(String::new(), |n| format!(" in namespace {n}"))
        )?;
        return Ok(());
    }
    let now = Timestamp::now();
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|(v, created)| {
            vec![
                v.namespace.clone(),
                v.name.clone(),
                v.target.clone(),
                match v.phase.as_str() {
                    "Completed" | "Idle" => v.phase.clone(),
                    p if style.colour => format!("\x1b[33m{p}\x1b[0m"),
                    p => p.to_string(),
                },
                v.step.clone(),
                format!("{}/{}/{}", v.updated, v.ready, v.desired),
                format!("{}/{}", v.drains_forced, v.drains_completed),
                created.map_or("-".into(), |t| render::age(t, now)),
            ]
        })
        .collect();
    write!(
        out,
        "{}",
        render::table(
            &[
                "NAMESPACE",
                "NAME",
                "TARGET",
                "PHASE",
                "STEP",
                "UPDATED/READY/DESIRED",
                "FORCED/DRAINS",
                "AGE"
            ],
            &rows
        )
    )?;
    Ok(())
}

async fn drains(
    client: &Client,
    ns: &str,
    name: &str,
    out: &mut (dyn Write + Send),
    style: Style,
) -> Result<()> {
    let pods = match cluster::policy_if_any(client, ns, name).await? {
        Some(_) => cluster::rollout(client, ns, name).await?.pods,
        None => vec![
            cluster::pod_row(client, ns, name)
                .await
                .with_context(|| format!("{name} is neither a RolloutPolicy nor a pod in {ns}"))?,
        ],
    };
    write!(out, "{}", render::drains(&pods, style))?;
    Ok(())
}
