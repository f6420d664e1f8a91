//! `kubectl quiesce` against the cluster: a person checks what injection will do (`check`),
//! follows a rollout with `get -w`, reads it with `get`/`list`/`drains`, steers it with
//! `pause`/`resume`/`promote`, and is told plainly when a command does not apply. The plugin's own code runs ([`quiesce_kubectl::run`], what the
//! binary's `main` calls), its output is checked line by line.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use quiesce_api::Phase;
use quiesce_e2e::chart;
use quiesce_e2e::fixtures::{self, demo_app};
use quiesce_e2e::harness::{self, apply_yaml, eventually, with_namespace};
use quiesce_e2e::rollout;

const APP: &str = "web";

/// Output shared with a running `get -w`.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// `kubectl quiesce -n <ns> <args>`: its output, or its error as the binary prints it.
async fn quiesce(client: &kube::Client, ns: &str, args: &[&str]) -> Result<String, String> {
    let cli =
        quiesce_kubectl::Cli::try_parse_from(["kubectl-quiesce", "-n", ns].iter().chain(args))
            .map_err(|e| e.to_string())?;
    let mut out = Shared::default();
    quiesce_kubectl::run(client.clone(), cli, &mut out, false)
        .await
        .map_err(|e| format!("{e:#}"))?;
    Ok(out.text())
}

/// The pod rows of `get` output whose revision is `role` (`new`, `stable`), columns joined by
/// one space.
fn rows(text: &str, role: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(APP) && l.contains(&format!("({role})")))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[tokio::test]
async fn a_person_follows_and_steers_a_rollout_with_kubectl_quiesce() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("plugin", |client, ns| async move {
        let spec = "    steps: [{admit: 1}, {pause: {}}, {admit: \"100%\"}]\n    drain: {endpointTimeoutSeconds: 5, quietPeriodMillis: 1000, timeoutSeconds: 10}";
        fixtures::demo_app_with_policy(&client, &ns, APP, spec, 3).await?;
        let q = |args: &'static [&'static str]| quiesce(&client, &ns, args);

        // The dry run of injection runs the webhook's own code on the template.
        let check = q(&["check", APP]).await.map_err(anyhow::Error::msg)?;
        eprintln!("{check}");
        for part in [
            "deployment/web, governed by RolloutPolicy web",
            "adds the readiness gate quiesce.dev/ready",
            "drains in Observe mode",
        ] {
            assert!(check.contains(part), "missing {part:?}:\n{check}");
        }
        let e = q(&["check", "nope"]).await.expect_err("no such Deployment");
        assert!(e.contains("no Deployment nope"), "{e}");

        // The policy's counts follow the pods' readiness by one reconcile.
        let list = eventually("the policy's counts", Duration::from_secs(30), || async {
            let list = q(&["list"]).await.map_err(anyhow::Error::msg)?;
            Ok(list.contains(" 3/3/3 ").then_some(list))
        })
        .await?;
        eprintln!("{list}");
        assert!(list.starts_with("NAMESPACE"), "{list}");
        let row = list.lines().nth(1).unwrap_or_default();
        assert!(row.contains(&ns) && row.contains(" web "), "{list}");
        let e = q(&["promote", APP]).await.expect_err("nothing to promote");
        assert!(e.contains("no rollout in progress"), "{e}");

        // `get -w` follows the rollout from here (plain frames separated by `---` when piped).
        let watched = Shared::default();
        let watch = {
            let (client, ns, mut out) = (client.clone(), ns.clone(), watched.clone());
            tokio::spawn(async move {
                let cli = quiesce_kubectl::Cli::try_parse_from([
                    "kubectl-quiesce", "-n", &ns, "get", "-w",
                ])
                .unwrap();
                quiesce_kubectl::run(client, cli, &mut out, false).await
            })
        };

        apply_yaml(&client, &ns, &demo_app(APP, 3, "v2", &[])).await?;
        eventually("the pause step", Duration::from_secs(120), || async {
            let s = rollout::policy_status(&client, &ns, APP).await?;
            Ok((s.phase == Some(Phase::Paused) && s.current_step == Some(1)
                && s.admitted_replicas == Some(1))
            .then_some(()))
        })
        .await?;

        // The admitted pod turns Ready on the kubelet's next sync after its gate opened (2 s
        // here; CI once saw it take over 30 s, so the wait is generous and a failure shows
        // the last `get` and, through `with_namespace`, the pods, Events and operator log).
        let last_get = Mutex::new(String::new());
        let get = eventually("the admitted pod Ready", Duration::from_secs(90), || async {
            let get = q(&["get", APP]).await.map_err(anyhow::Error::msg)?;
            *last_get.lock().unwrap() = get.clone();
            Ok(rows(&get, "new").iter().any(|r| r.contains(" Ready open ")).then_some(get))
        })
        .await
        .map_err(|e| e.context(format!("the last `get`:\n{}", last_get.lock().unwrap())))?;
        eprintln!("{get}");
        for line in [
            format!("Policy:    {ns}/{APP}"),
            "Phase:     Paused".into(),
            "Step:      1/3 (pause until promoted)".into(),
            "Replicas:  3 desired, ".into(),
        ] {
            assert!(get.contains(&line), "missing {line:?}:\n{get}");
        }
        let new = rows(&get, "new");
        assert!(
            new.iter().filter(|r| r.contains(" Ready open ")).count() == 1,
            "one new pod admitted:\n{get}"
        );
        assert!(rows(&get, "stable").len() >= 2, "old pods listed:\n{get}");
        assert!(get.contains("REASON"), "the policy's Events:\n{get}");

        // `kubectl get rp` tells the same story in one line (the CRD's printer columns).
        let out = tokio::process::Command::new("kubectl")
            .args(["get", "rp", APP, "-n", &ns])
            .output()
            .await?;
        let table = String::from_utf8_lossy(&out.stdout);
        eprintln!("{table}");
        let words = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        let mut lines = table.lines();
        assert_eq!(
            words(lines.next().unwrap_or_default()),
            ["NAME", "TARGET", "PHASE", "STEP", "DESIRED", "UPDATED", "READY", "DRAINS", "FORCED", "AGE"],
            "{table}"
        );
        let row = words(lines.next().unwrap_or_default());
        assert_eq!(row[..5], ["web", "web", "Paused", "1", "3"], "{table}");

        let json = q(&["get", APP, "-o", "json"]).await.map_err(anyhow::Error::msg)?;
        let v: serde_json::Value = serde_json::from_str(&json)?;
        assert_eq!(v["step"], "1/3", "{v}");
        assert_eq!(v["phase"], "Paused", "{v}");

        // pause / resume, each refused when it does not apply.
        let out = q(&["pause", APP]).await.map_err(anyhow::Error::msg)?;
        assert!(out.contains("web paused"), "{out}");
        let e = q(&["pause", APP]).await.expect_err("already paused");
        assert!(e.contains("already paused"), "{e}");
        let out = q(&["resume", APP]).await.map_err(anyhow::Error::msg)?;
        assert!(out.contains("web resumed"), "{out}");
        let e = q(&["retry", APP]).await.expect_err("nothing failed");
        assert!(e.contains("no failed rollout"), "{e}");

        let out = q(&["promote", APP, "--full"]).await.map_err(anyhow::Error::msg)?;
        assert!(out.contains("promoted fully"), "{out}");
        rollout::wait_phase(&client, &ns, APP, Phase::Completed, Duration::from_secs(180)).await?;
        harness::wait_rollout(&client, &ns, APP, Duration::from_secs(60)).await?;

        // Each old pod's drain, with where its time went.
        let drains = eventually("drain reports", Duration::from_secs(60), || async {
            let d = q(&["drains", APP]).await.map_err(anyhow::Error::msg)?;
            Ok((d.matches("drained in").count() >= 1).then_some(d))
        })
        .await?;
        eprintln!("{drains}");
        assert!(drains.contains("(endpoints "), "{drains}");
        let e = q(&["abort", APP]).await.expect_err("nothing to abort");
        assert!(e.contains("no rollout in progress to abort"), "{e}");

        // The watch saw the pause and the end, each frame whole.
        let text = eventually("the watch to show the end", Duration::from_secs(30), || async {
            let t = watched.text();
            Ok(t.contains("Phase:     Completed").then_some(t))
        })
        .await?;
        watch.abort();
        assert!(text.contains("Phase:     Paused"), "{text}");
        assert!(text.matches("\n---\n").count() >= 2, "frames:\n{text}");
        assert!(!text.contains('\x1b'), "no colour when not on a terminal");
        Ok(())
    })
    .await;
}
