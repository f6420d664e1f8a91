//! A RolloutPolicy with steps paces a rolling update of the demo app (which exits at once on
//! SIGTERM) under load: no request fails, admissions never exceed the current step, the pause
//! holds, and status, Events and metrics follow each step.

use std::time::{Duration, Instant};

use quiesce_api::{Phase, RolloutPolicy, RolloutPolicySpec, Step};
use quiesce_e2e::chart;
use quiesce_e2e::fixtures::{demo_app, policy};
use quiesce_e2e::harness::{self, apply_yaml, cluster_ip, eventually, with_namespace};
use quiesce_e2e::loadgen::{self, LoadConfig};
use quiesce_e2e::rollout::{self, gate_open, injected, revision};

const APP: &str = "web";
const REPLICAS: i32 = 4;

fn spec() -> RolloutPolicySpec {
    let mut s = RolloutPolicySpec::for_deployment(APP);
    s.steps = vec![
        Step::admit_count(1),
        Step::pause(Some(8)),
        Step::admit_percent(50),
        Step::admit_percent(100),
    ];
    s
}

const POLICY_SPEC: &str = r#"    steps:
      - admit: 1
      - pause: {durationSeconds: 8}
      - admit: "50%"
      - admit: "100%"
    readiness: {minHealthySeconds: 2}
    drain: {endpointTimeoutSeconds: 5, quietPeriodMillis: 1000, timeoutSeconds: 10, waitBeforeNextStep: true}
    failure: {progressDeadlineSeconds: 180, action: Pause}"#;

/// One observation of the rollout.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    phase: Option<Phase>,
    step: Option<i32>,
    admitted_new: i32,
    allowed: i32,
}

#[tokio::test]
async fn stepped_rollout_under_load_loses_no_request() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("op-rollout", |client, ns| async move {
        apply_yaml(&client, &ns, &policy(APP, APP, POLICY_SPEC)).await?;
        apply_yaml(&client, &ns, &demo_app(APP, REPLICAS, "v1", &[])).await?;
        harness::wait_rollout(&client, &ns, APP, Duration::from_secs(120)).await?;
        eventually(
            "v1 pods injected and admitted",
            Duration::from_secs(60),
            || async {
                let pods = harness::pods(&client, &ns, &format!("app={APP}")).await?;
                Ok((pods.len() == REPLICAS as usize
                    && pods.iter().all(|p| injected(p) && gate_open(p)))
                .then_some(()))
            },
        )
        .await?;
        let status = rollout::policy_status(&client, &ns, APP).await?;
        assert_eq!(status.phase, Some(Phase::Idle), "{status:?}");

        let url = format!("http://{}:80", cluster_ip(&client, &ns, APP).await?);
        harness::wait_serving(&url, Duration::from_secs(60)).await?;
        let load = loadgen::spawn(LoadConfig::new(url, 40.0));
        tokio::time::sleep(Duration::from_secs(2)).await;

        let started = Instant::now();
        apply_yaml(&client, &ns, &demo_app(APP, REPLICAS, "v2", &[])).await?;
        let spec = spec();
        let api: kube::Api<RolloutPolicy> = kube::Api::namespaced(client.clone(), &ns);
        let mut samples = Vec::new();
        let completed = loop {
            // Pods first, then the status: the operator writes the status before the gates.
            let pods = harness::pods(&client, &ns, &format!("app={APP}")).await?;
            let status = api.get(APP).await?.status.unwrap_or_default();
            let rolling = matches!(status.phase, Some(Phase::Progressing | Phase::Paused))
                && status.update_revision != status.stable_revision;
            if rolling {
                let update = status.update_revision.clone();
                let admitted_new = pods
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .filter(|p| revision(p) == update.as_deref() && gate_open(p))
                    .count() as i32;
                let step = status.current_step.unwrap_or(0).max(0) as usize;
                samples.push(Sample {
                    at: started.elapsed(),
                    phase: status.phase,
                    step: status.current_step,
                    admitted_new,
                    allowed: spec.admitted_at_step(step, REPLICAS),
                });
            }
            if status.phase == Some(Phase::Completed)
                && status.stable_revision == status.update_revision
            {
                break started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "rollout did not complete: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        harness::wait_rollout(&client, &ns, APP, Duration::from_secs(60)).await?;
        eventually("old pods to exit", Duration::from_secs(90), || async {
            let pods = harness::pods(&client, &ns, &format!("app={APP}")).await?;
            Ok((pods.len() == REPLICAS as usize
                && pods.iter().all(|p| p.metadata.deletion_timestamp.is_none()))
            .then_some(()))
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        load.stop();
        let summary = load.finish().await;
        println!("rollout completed in {:.1}s", completed.as_secs_f64());
        println!("load: {}", serde_json::to_string(&summary)?);

        // Zero failed requests, and v2 served.
        assert_eq!(
            summary.failed(),
            0,
            "failed requests during the paced rollout: {summary:?}"
        );
        assert!(summary.ok_by_version.contains_key("v2"), "{summary:?}");

        // Admissions never exceeded the step in effect.
        let over: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.admitted_new > s.allowed)
            .collect();
        assert!(
            over.is_empty(),
            "admitted more than the step allows: {over:?}"
        );
        // The pause held for its duration with nothing admitted.
        let paused: Vec<&Sample> = samples.iter().filter(|s| s.step == Some(1)).collect();
        assert!(!paused.is_empty(), "the pause step was observed");
        // Exactly the one pod of step 0 admitted; the first sample of the pause may predate
        // its gate (the operator writes the status, then the gate).
        assert!(
            paused
                .iter()
                .all(|s| s.phase == Some(Phase::Paused) && s.admitted_new <= 1)
                && paused.last().is_some_and(|s| s.admitted_new == 1),
            "{paused:?}"
        );
        let held = paused.last().unwrap().at - paused.first().unwrap().at;
        assert!(held >= Duration::from_secs(6), "pause held {held:?}");
        // Every step was walked (a step can pass between two samples: the Events say it).
        for step in [0, 1, 3] {
            assert!(
                samples.iter().any(|s| s.step == Some(step)),
                "step {step} observed"
            );
        }

        // Status, Events and metrics.
        let status = rollout::policy_status(&client, &ns, APP).await?;
        assert_eq!(status.admitted_replicas, Some(REPLICAS));
        assert!(
            status
                .message
                .as_deref()
                .unwrap_or("")
                .contains("rollout complete"),
            "{status:?}"
        );
        let drains = status.drains.clone().unwrap_or_default();
        println!("drains: {drains:?}");
        let reasons: Vec<String> = rollout::policy_events(&client, &ns, APP)
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        for want in ["RolloutStarted", "StepAdvanced", "RolloutCompleted"] {
            assert!(
                reasons.iter().any(|r| r == want),
                "event {want} missing in {reasons:?}"
            );
        }
        let metrics = chart::leader_metrics(&client).await?;
        let admissions = chart::metric_value(
            &metrics,
            "quiesce_operator_admissions_total",
            &[("namespace", ns.as_str()), ("reason", "Admitted")],
        )
        .unwrap_or(0.0);
        println!("leader admissions metric for {ns}: {admissions}");
        assert!(admissions >= 1.0, "admissions metric: {metrics}");
        assert_eq!(
            chart::metric_value(
                &metrics,
                "quiesce_operator_policy_phase",
                &[("namespace", ns.as_str()), ("phase", "Completed")]
            ),
            Some(1.0)
        );
        if let Some(count) = chart::metric_value(
            &metrics,
            "quiesce_operator_reconcile_duration_seconds_count",
            &[],
        ) {
            let sum = chart::metric_value(
                &metrics,
                "quiesce_operator_reconcile_duration_seconds_sum",
                &[],
            )
            .unwrap_or(0.0);
            println!(
                "reconciles: {count}, mean reconcile latency {:.2} ms",
                1000.0 * sum / count.max(1.0)
            );
        }
        Ok(())
    })
    .await;
}
