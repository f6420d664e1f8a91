//! The person in the loop: a pause step holds until promoted, `spec.paused` holds admission
//! until resumed, abort rolls back to the stable revision; and the failure path: a bad version
//! (never healthy, or crash-looping) is rolled back automatically, and a good version after it
//! rolls out normally (good → bad → good).

use std::time::Duration;

use quiesce_api::Phase;
use quiesce_api::constants::{annotations, conditions, reasons};
use quiesce_e2e::chart;
use quiesce_e2e::fixtures::{demo_app, policy};
use quiesce_e2e::harness::{self, apply_yaml, eventually, with_namespace};
use quiesce_e2e::rollout;
use serde_json::json;

const APP: &str = "web";

#[tokio::test]
async fn pause_promote_and_abort() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("op-control", |client, ns| async move {
        let spec = "    steps: [{admit: 1}, {pause: {}}, {admit: \"100%\"}]\n    drain: {endpointTimeoutSeconds: 5, quietPeriodMillis: 1000, timeoutSeconds: 10}";
        apply_yaml(&client, &ns, &policy(APP, APP, spec)).await?;
        apply_yaml(&client, &ns, &demo_app(APP, 3, "v1", &[])).await?;
        harness::wait_rollout(&client, &ns, APP, Duration::from_secs(120)).await?;

        // v2 stops at the indefinite pause with one pod admitted, and stays there.
        apply_yaml(&client, &ns, &demo_app(APP, 3, "v2", &[])).await?;
        let s = eventually("pause step", Duration::from_secs(120), || async {
            let s = rollout::policy_status(&client, &ns, APP).await?;
            Ok((s.phase == Some(Phase::Paused) && s.current_step == Some(1)).then_some(s))
        })
        .await?;
        assert!(s.message.as_deref().unwrap_or("").contains("waiting for promotion"), "{s:?}");
        for _ in 0..10 {
            assert_eq!(rollout::admitted_new(&client, &ns, APP, APP).await?, 1, "the pause holds");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }

        // spec.paused on top: promote moves the step, but nothing is admitted while paused.
        rollout::patch_policy_spec(&client, &ns, APP, json!({"paused": true})).await?;
        rollout::annotate_policy(&client, &ns, APP, annotations::PROMOTE, "step").await?;
        // CI once timed out here at 30 s with the Promoted Event published and no status
        // seen: the wait is longer and a timeout shows the last status read.
        let last = std::sync::Mutex::new(None);
        let s = eventually("paused by spec", Duration::from_secs(60), || async {
            let s = rollout::policy_status(&client, &ns, APP).await?;
            *last.lock().unwrap() = Some(s.clone());
            Ok((rollout::condition_reason(&s, conditions::PAUSED).as_deref() == Some(reasons::PAUSED_BY_SPEC)
                && s.current_step == Some(2))
            .then_some(s))
        })
        .await
        .map_err(|e| e.context(format!("the last status: {:?}", last.lock().unwrap())))?;
        assert_eq!(s.phase, Some(Phase::Paused));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(rollout::admitted_new(&client, &ns, APP, APP).await?, 1, "spec.paused holds");

        // Resume: the rollout completes.
        rollout::patch_policy_spec(&client, &ns, APP, json!({"paused": false})).await?;
        rollout::wait_phase(&client, &ns, APP, Phase::Completed, Duration::from_secs(180)).await?;
        harness::wait_rollout(&client, &ns, APP, Duration::from_secs(60)).await?;

        // v3 is aborted at its pause: back to v2.
        apply_yaml(&client, &ns, &demo_app(APP, 3, "v3", &[])).await?;
        eventually("v3 at the pause", Duration::from_secs(120), || async {
            let s = rollout::policy_status(&client, &ns, APP).await?;
            Ok((s.phase == Some(Phase::Paused) && s.current_step == Some(1)).then_some(()))
        })
        .await?;
        rollout::annotate_policy(&client, &ns, APP, annotations::ABORT, "true").await?;
        let s = rollout::wait_phase(&client, &ns, APP, Phase::RolledBack, Duration::from_secs(60)).await?;
        assert_eq!(rollout::condition_reason(&s, conditions::DEGRADED).as_deref(), Some(reasons::ABORTED));
        eventually("template back on v2", Duration::from_secs(30), || async {
            Ok((rollout::template_version(&client, &ns, APP).await?.as_deref() == Some("v2")).then_some(()))
        })
        .await?;
        harness::wait_rollout(&client, &ns, APP, Duration::from_secs(120)).await?;
        let s = eventually("stable again", Duration::from_secs(60), || async {
            let s = rollout::policy_status(&client, &ns, APP).await?;
            Ok((s.update_revision == s.stable_revision).then_some(s))
        })
        .await?;
        assert_eq!(s.phase, Some(Phase::RolledBack), "{s:?}");
        let api: kube::Api<quiesce_api::RolloutPolicy> = kube::Api::namespaced(client.clone(), &ns);
        let p = api.get(APP).await?;
        assert!(!p.metadata.annotations.unwrap_or_default().contains_key(annotations::ABORT), "abort annotation consumed");
        println!("pause/promote/abort: {:?}", s.message);
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn bad_versions_are_rolled_back_and_a_good_one_goes_through() {
    let client = harness::client().await.expect("cluster");
    chart::install(&client).await.expect("chart installed");
    with_namespace("op-rollback", |client, ns| async move {
        let spec = "    steps: [{admit: 1}, {admit: \"100%\"}]\n    drain: {endpointTimeoutSeconds: 5, quietPeriodMillis: 1000, timeoutSeconds: 10}\n    failure: {progressDeadlineSeconds: 30, maxRestarts: 1, action: Rollback}";
        apply_yaml(&client, &ns, &policy(APP, APP, spec)).await?;
        apply_yaml(&client, &ns, &demo_app(APP, 2, "v1", &[])).await?;
        harness::wait_rollout(&client, &ns, APP, Duration::from_secs(120)).await?;

        // Never healthy: the progress deadline rolls it back.
        let t = std::time::Instant::now();
        apply_yaml(&client, &ns, &demo_app(APP, 2, "bad-health", &[("FAIL_HEALTH", "true")])).await?;
        let s = rollout::wait_phase(&client, &ns, APP, Phase::RolledBack, Duration::from_secs(120)).await?;
        println!("never-healthy version rolled back after {:.1}s: {:?}", t.elapsed().as_secs_f64(), s.message);
        assert_eq!(
            rollout::condition_reason(&s, conditions::DEGRADED).as_deref(),
            Some(reasons::PROGRESS_DEADLINE_EXCEEDED)
        );
        // The message is written with the phase ("rolling back to revision …") and becomes
        // "rolled back" once the stable pods serve again: either says why.
        let message = s.message.as_deref().unwrap_or("");
        assert!(message.contains("rolling back to revision") || message.contains("rolled back"), "{s:?}");
        eventually("template back on v1", Duration::from_secs(30), || async {
            Ok((rollout::template_version(&client, &ns, APP).await?.as_deref() == Some("v1")).then_some(()))
        })
        .await?;
        harness::wait_rollout(&client, &ns, APP, Duration::from_secs(120)).await?;

        // Crash-looping: too many restarts rolls it back.
        let t = std::time::Instant::now();
        apply_yaml(&client, &ns, &demo_app(APP, 2, "bad-crash", &[("CRASH_AFTER_SECS", "2")])).await?;
        let s = eventually("rollback for restarts", Duration::from_secs(180), || async {
            let s = rollout::policy_status(&client, &ns, APP).await?;
            Ok((s.phase == Some(Phase::RolledBack)
                && rollout::condition_reason(&s, conditions::DEGRADED).as_deref() == Some(reasons::TOO_MANY_RESTARTS))
            .then_some(s))
        })
        .await?;
        println!("crash-looping version rolled back after {:.1}s: {:?}", t.elapsed().as_secs_f64(), s.message);
        harness::wait_rollout(&client, &ns, APP, Duration::from_secs(120)).await?;
        assert_eq!(rollout::template_version(&client, &ns, APP).await?.as_deref(), Some("v1"));

        // Good again.
        apply_yaml(&client, &ns, &demo_app(APP, 2, "v3", &[])).await?;
        let s = rollout::wait_phase(&client, &ns, APP, Phase::Completed, Duration::from_secs(180)).await?;
        assert_eq!(rollout::condition_reason(&s, conditions::DEGRADED).as_deref(), Some(reasons::ROLLOUT_STARTED));
        let reasons_seen: Vec<String> =
            rollout::policy_events(&client, &ns, APP).await?.into_iter().map(|(r, _)| r).collect();
        for want in ["ProgressDeadlineExceeded", "TooManyRestarts", "RolloutCompleted"] {
            assert!(reasons_seen.iter().any(|r| r == want), "event {want} missing in {reasons_seen:?}");
        }
        Ok(())
    })
    .await;
}
