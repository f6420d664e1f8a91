//! Two Deployments in one namespace, each paced by its own RolloutPolicy, rolled at the same
//! time under load: both rollouts complete, no request fails, and neither policy ever has more
//! new pods admitted than its current step allows — one policy's reconciles do not erase the
//! other's pending gate writes (issue 10, item 10).

use std::time::{Duration, Instant};

use kube::{Api, Client};
use quiesce_api::{Phase, RolloutPolicy, RolloutPolicySpec, Step};
use quiesce_e2e::chart;
use quiesce_e2e::fixtures::{demo_app, policy};
use quiesce_e2e::harness::{self, apply_yaml, cluster_ip, eventually, with_namespace};
use quiesce_e2e::loadgen::{self, LoadConfig};
use quiesce_e2e::rollout::{self, gate_open, injected, revision};

const APPS: [&str; 2] = ["web", "api"];
const REPLICAS: i32 = 4;

const POLICY_SPEC: &str = r#"    steps:
      - admit: 1
      - pause: {durationSeconds: 5}
      - admit: "50%"
      - admit: "100%"
    readiness: {minHealthySeconds: 2}
    drain: {endpointTimeoutSeconds: 5, quietPeriodMillis: 1000, timeoutSeconds: 10, waitBeforeNextStep: true}
    failure: {progressDeadlineSeconds: 180, action: Pause}"#;

/// The steps of [`POLICY_SPEC`], to compute what each step allows.
fn spec(app: &str) -> RolloutPolicySpec {
    let mut s = RolloutPolicySpec::for_deployment(app);
    s.steps = vec![
        Step::admit_count(1),
        Step::pause(Some(5)),
        Step::admit_percent(50),
        Step::admit_percent(100),
    ];
    s
}

/// One observation of one app's rollout: more new pods admitted than the step allows?
#[derive(Debug, Clone)]
struct Sample {
    app: &'static str,
    step: Option<i32>,
    admitted_new: i32,
    allowed: i32,
}

/// Samples `app` once (`None` outside a rollout), and whether its rollout completed.
async fn sample(
    client: &Client,
    ns: &str,
    app: &'static str,
) -> anyhow::Result<(Option<Sample>, bool)> {
    // Pods first, then the status: the operator writes the status before the gates.
    let pods = harness::pods(client, ns, &format!("app={app}")).await?;
    let api: Api<RolloutPolicy> = Api::namespaced(client.clone(), ns);
    let status = api.get(app).await?.status.unwrap_or_default();
    let done = status.phase == Some(Phase::Completed)
        && status.stable_revision == status.update_revision
        && status.update_revision.is_some();
    let rolling = matches!(status.phase, Some(Phase::Progressing | Phase::Paused))
        && status.update_revision != status.stable_revision;
    if !rolling {
        return Ok((None, done));
    }
    let update = status.update_revision.as_deref();
    let admitted_new = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| revision(p) == update && gate_open(p))
        .count() as i32;
    let step = status.current_step.unwrap_or(0).max(0) as usize;
    let s = Sample {
        app,
        step: status.current_step,
        admitted_new,
        allowed: spec(app).admitted_at_step(step, REPLICAS),
    };
    Ok((Some(s), done))
}

#[tokio::test]
async fn two_policies_rolled_at_once_under_load_lose_no_request_and_keep_their_steps() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("op-two-policies", |client, ns| async move {
        for app in APPS {
            apply_yaml(&client, &ns, &policy(app, app, POLICY_SPEC)).await?;
            apply_yaml(&client, &ns, &demo_app(app, REPLICAS, "v1", &[])).await?;
        }
        for app in APPS {
            harness::wait_rollout(&client, &ns, app, Duration::from_secs(120)).await?;
            eventually(
                &format!("{app} v1 pods injected and admitted"),
                Duration::from_secs(60),
                || async {
                    let pods = harness::pods(&client, &ns, &format!("app={app}")).await?;
                    Ok((pods.len() == REPLICAS as usize
                        && pods.iter().all(|p| injected(p) && gate_open(p)))
                    .then_some(()))
                },
            )
            .await?;
        }

        let mut loads = Vec::new();
        for app in APPS {
            let url = format!("http://{}:80", cluster_ip(&client, &ns, app).await?);
            harness::wait_serving(&url, Duration::from_secs(60)).await?;
            loads.push((app, loadgen::spawn(LoadConfig::new(url, 30.0))));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;

        // Both rolled at once.
        let started = Instant::now();
        for app in APPS {
            apply_yaml(&client, &ns, &demo_app(app, REPLICAS, "v2", &[])).await?;
        }
        let mut samples = Vec::new();
        let mut completed = [None; 2];
        while completed.iter().any(Option::is_none) {
            for (i, app) in APPS.into_iter().enumerate() {
                let (s, done) = sample(&client, &ns, app).await?;
                samples.extend(s);
                if done && completed[i].is_none() {
                    completed[i] = Some(started.elapsed());
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(360),
                "rollouts did not complete: {completed:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("rollouts completed: {APPS:?} in {completed:?}");
        for app in APPS {
            harness::wait_rollout(&client, &ns, app, Duration::from_secs(60)).await?;
            eventually(
                &format!("{app} old pods to exit"),
                Duration::from_secs(90),
                || async {
                    let pods = harness::pods(&client, &ns, &format!("app={app}")).await?;
                    Ok((pods.len() == REPLICAS as usize
                        && pods.iter().all(|p| p.metadata.deletion_timestamp.is_none()))
                    .then_some(()))
                },
            )
            .await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;

        // Zero failed requests on either app, and v2 served by both.
        for (app, load) in loads {
            load.stop();
            let summary = load.finish().await;
            println!("{app} load: {}", serde_json::to_string(&summary)?);
            assert_eq!(summary.failed(), 0, "{app}: failed requests: {summary:?}");
            assert!(
                summary.ok_by_version.contains_key("v2"),
                "{app}: {summary:?}"
            );
        }

        // Neither policy ever admitted more than its step allowed.
        let over: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.admitted_new > s.allowed)
            .collect();
        assert!(
            over.is_empty(),
            "admitted more than the step allows: {over:?}"
        );
        for app in APPS {
            assert!(
                samples.iter().any(|s| s.app == app && s.step == Some(1)),
                "{app}: the pause step was observed"
            );
            let status = rollout::policy_status(&client, &ns, app).await?;
            assert_eq!(
                status.admitted_replicas,
                Some(REPLICAS),
                "{app}: {status:?}"
            );
        }
        Ok(())
    })
    .await;
}
