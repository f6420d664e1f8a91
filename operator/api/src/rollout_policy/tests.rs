//! Unit tests of the RolloutPolicy types: serde round-trips and the pure helpers.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use super::*;

fn full_spec() -> RolloutPolicySpec {
    RolloutPolicySpec {
        target_ref: TargetRef::deployment("web"),
        steps: vec![
            Step::admit_count(1),
            Step::pause(Some(30)),
            Step::admit_percent(50),
            Step::pause(None),
            Step::admit_percent(100),
        ],
        readiness: ReadinessSpec {
            min_healthy_seconds: 5,
            fail_open_after_seconds: 600,
        },
        drain: DrainSpec {
            endpoint_timeout_seconds: 10,
            quiet_period_millis: 1500,
            timeout_seconds: 30,
            wait_before_next_step: true,
            mode: DrainMode::Proxy,
            app_shutdown: AppShutdown::Graceful,
        },
        failure: FailureSpec {
            progress_deadline_seconds: 300,
            max_restarts: 2,
            action: FailureAction::Rollback,
        },
        paused: false,
    }
}

#[test]
fn spec_serializes_in_camel_case_with_int_or_percent_steps() {
    let value = serde_json::to_value(full_spec()).unwrap();
    assert_eq!(
        value,
        json!({
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "steps": [
                {"admit": 1},
                {"pause": {"durationSeconds": 30}},
                {"admit": "50%"},
                {"pause": {}},
                {"admit": "100%"},
            ],
            "readiness": {"minHealthySeconds": 5, "failOpenAfterSeconds": 600},
            "drain": {
                "endpointTimeoutSeconds": 10,
                "quietPeriodMillis": 1500,
                "timeoutSeconds": 30,
                "waitBeforeNextStep": true,
                "mode": "Proxy",
                "appShutdown": "Graceful",
            },
            "failure": {"progressDeadlineSeconds": 300, "maxRestarts": 2, "action": "Rollback"},
            "paused": false,
        })
    );
    let back: RolloutPolicySpec = serde_json::from_value(value).unwrap();
    assert_eq!(back, full_spec());
}

#[test]
fn minimal_spec_gets_every_default() {
    let spec: RolloutPolicySpec =
        serde_json::from_value(json!({"targetRef": {"name": "web"}})).unwrap();
    assert_eq!(spec, RolloutPolicySpec::for_deployment("web"));
    assert_eq!(spec.target_ref.api_version, "apps/v1");
    assert_eq!(spec.target_ref.kind, "Deployment");
    assert_eq!(
        spec.drain.endpoint_timeout_seconds,
        defaults::ENDPOINT_TIMEOUT_SECONDS
    );
    assert_eq!(
        spec.drain.quiet_period_millis,
        defaults::QUIET_PERIOD_MILLIS
    );
    assert_eq!(spec.drain.timeout_seconds, defaults::DRAIN_TIMEOUT_SECONDS);
    assert_eq!(spec.drain.mode, DrainMode::Observe);
    assert!(spec.drain.wait_before_next_step);
    assert_eq!(
        spec.readiness.fail_open_after_seconds,
        defaults::FAIL_OPEN_AFTER_SECONDS
    );
    assert_eq!(spec.failure.max_restarts, defaults::MAX_RESTARTS);
    assert_eq!(spec.failure.action, FailureAction::Pause);
    assert!(!spec.paused);
    // Absent steps are not serialized back.
    assert!(serde_json::to_value(&spec).unwrap().get("steps").is_none());
}

#[test]
fn partial_sections_keep_the_other_defaults() {
    let spec: RolloutPolicySpec = serde_json::from_value(json!({
        "targetRef": {"name": "web"},
        "drain": {"timeoutSeconds": 5},
    }))
    .unwrap();
    assert_eq!(spec.drain.timeout_seconds, 5);
    assert_eq!(
        spec.drain.endpoint_timeout_seconds,
        defaults::ENDPOINT_TIMEOUT_SECONDS
    );
}

#[test]
fn resource_round_trips_through_yaml_with_status() {
    let mut policy = RolloutPolicy::new("web", full_spec());
    policy.metadata.namespace = Some("demo".into());
    let mut status = RolloutPolicyStatus {
        observed_generation: Some(3),
        phase: Some(Phase::Progressing),
        stable_revision: Some("6d4cf56db6".into()),
        update_revision: Some("7f9c8b7d5".into()),
        current_step: Some(2),
        desired_replicas: Some(4),
        updated_replicas: Some(2),
        admitted_replicas: Some(2),
        ready_replicas: Some(4),
        drains: Some(DrainStats {
            completed: 2,
            forced: 0,
            last_duration_millis: Some(1200),
            max_duration_millis: Some(1800),
        }),
        message: Some("admitting 2 of 4 pods".into()),
        ..Default::default()
    };
    status.set_condition(condition(
        crate::constants::conditions::PROGRESSING,
        "True",
        1,
    ));
    policy.status = Some(status);

    let yaml = serde_yaml::to_string(&policy).unwrap();
    assert!(yaml.contains("apiVersion: quiesce.dev/v1alpha1"), "{yaml}");
    assert!(yaml.contains("kind: RolloutPolicy"), "{yaml}");
    assert!(yaml.contains("phase: Progressing"), "{yaml}");
    let back: RolloutPolicy = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(back.spec, policy.spec);
    assert_eq!(back.status, policy.status);
}

#[test]
fn empty_status_serializes_to_an_empty_object() {
    assert_eq!(
        serde_json::to_value(RolloutPolicyStatus::default()).unwrap(),
        json!({})
    );
}

fn condition(type_: &str, status: &str, at: i64) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: "Reason".into(),
        message: String::new(),
        observed_generation: Some(1),
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::from_second(at).unwrap()),
    }
}

#[test]
fn set_condition_keeps_transition_time_unless_status_changes() {
    let mut status = RolloutPolicyStatus::default();
    assert!(status.set_condition(condition("Paused", "False", 10)));
    assert!(!status.set_condition(condition("Paused", "False", 20)));
    assert_eq!(
        status.condition("Paused").unwrap().last_transition_time,
        condition("Paused", "False", 10).last_transition_time
    );
    assert!(status.set_condition(condition("Paused", "True", 30)));
    assert_eq!(
        status.condition("Paused").unwrap().last_transition_time,
        condition("Paused", "True", 30).last_transition_time
    );
    assert!(status.set_condition(condition("Accepted", "True", 40)));
    assert_eq!(status.conditions.len(), 2);
    assert!(status.condition("Degraded").is_none());
}

#[test]
fn admit_parses_counts_and_percents() {
    assert_eq!(Admit::parse(&IntOrString::Int(3)), Ok(Admit::Count(3)));
    assert_eq!(
        Admit::parse(&IntOrString::String("1%".into())),
        Ok(Admit::Percent(1))
    );
    assert_eq!(
        Admit::parse(&IntOrString::String("100%".into())),
        Ok(Admit::Percent(100))
    );
    for bad in ["0%", "101%", "050%", "50", "%", "-5%", "5.5%", ""] {
        assert!(
            Admit::parse(&IntOrString::String(bad.into())).is_err(),
            "{bad}"
        );
    }
    assert!(Admit::parse(&IntOrString::Int(0)).is_err());
    assert!(Admit::parse(&IntOrString::Int(-1)).is_err());
}

#[test]
fn admit_percent_rounds_up_and_counts_clamp() {
    assert_eq!(Admit::Percent(50).resolve(3), 2);
    assert_eq!(Admit::Percent(1).resolve(3), 1);
    assert_eq!(Admit::Percent(34).resolve(3), 2);
    assert_eq!(Admit::Percent(33).resolve(3), 1);
    assert_eq!(Admit::Percent(100).resolve(7), 7);
    assert_eq!(Admit::Percent(25).resolve(0), 0);
    assert_eq!(Admit::Count(5).resolve(3), 3);
    assert_eq!(Admit::Count(2).resolve(3), 2);
    assert_eq!(Admit::Count(2).resolve(-1), 0);
    assert_eq!(Admit::Percent(100).resolve(i32::MAX), i32::MAX);
}

#[test]
fn step_actions() {
    assert_eq!(
        Step::admit_count(2).action(),
        Some(StepAction::Admit(Admit::Count(2)))
    );
    assert_eq!(
        Step::admit_percent(25).action(),
        Some(StepAction::Admit(Admit::Percent(25)))
    );
    assert_eq!(
        Step::pause(Some(30)).action(),
        Some(StepAction::Pause(Some(Duration::from_secs(30))))
    );
    assert_eq!(Step::pause(None).action(), Some(StepAction::Pause(None)));
    let both = Step {
        admit: Some(IntOrString::Int(1)),
        pause: Some(PauseStep::default()),
    };
    assert_eq!(both.action(), None);
    let neither = Step {
        admit: None,
        pause: None,
    };
    assert_eq!(neither.action(), None);
}

#[test]
fn admitted_at_step_is_monotonic_across_counts_and_percents() {
    let spec = full_spec(); // 1, pause, 50%, pause, 100%
    assert_eq!(spec.admitted_at_step(0, 4), 1);
    assert_eq!(spec.admitted_at_step(1, 4), 1);
    assert_eq!(spec.admitted_at_step(2, 4), 2);
    assert_eq!(spec.admitted_at_step(3, 4), 2);
    assert_eq!(spec.admitted_at_step(4, 4), 4);
    assert_eq!(spec.admitted_at_step(9, 4), 4);
    // 50% of 1 replica is 1 — never below the earlier count.
    assert_eq!(spec.admitted_at_step(2, 1), 1);
    let mut pause_first = spec.clone();
    pause_first.steps.insert(0, Step::pause(None));
    assert_eq!(pause_first.admitted_at_step(0, 4), 0);
    assert_eq!(
        RolloutPolicySpec::for_deployment("web").admitted_at_step(0, 5),
        5
    );
}

#[test]
fn drain_budget_rounds_the_quiet_period_up() {
    let drain = full_spec().drain; // 10s + 1500ms + 30s
    assert_eq!(drain.budget_seconds(), 42);
    assert_eq!(DrainSpec::default().budget_seconds(), 41);
    assert!(drain.grace_period_covers(45, 3));
    assert!(!drain.grace_period_covers(30, 0));
    assert_eq!(drain.quiet_period(), Duration::from_millis(1500));
    assert_eq!(drain.endpoint_timeout(), Duration::from_secs(10));
    assert_eq!(drain.timeout(), Duration::from_secs(30));
}

#[test]
fn phase_strings_match_serde() {
    for phase in [
        Phase::Idle,
        Phase::Progressing,
        Phase::Paused,
        Phase::Completed,
        Phase::Failed,
        Phase::RolledBack,
    ] {
        assert_eq!(serde_json::to_value(phase).unwrap(), json!(phase.as_str()));
    }
}
