use k8s_openapi::api::core::v1::{
    Container, Event, ObjectReference, Pod, PodCondition, PodReadinessGate, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use quiesce_api::constants::{
    DRAINED_CONDITION, READY_GATE_CONDITION, SIDECAR_CONTAINER_NAME, conditions,
};
use quiesce_api::{DrainReport, DrainStats, Phase, RolloutPolicy, RolloutPolicyStatus, Step};

use super::*;
use crate::render::{self, Style};

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap()
}

fn policy() -> RolloutPolicy {
    let mut p = RolloutPolicy::new("web", quiesce_api::RolloutPolicySpec::for_deployment("web"));
    p.metadata.name = Some("web".into());
    p.metadata.namespace = Some("shop".into());
    p.spec.steps = vec![
        Step::admit_count(1),
        Step::pause(None),
        Step::admit_percent(100),
    ];
    p.status = Some(RolloutPolicyStatus {
        phase: Some(Phase::Paused),
        current_step: Some(1),
        update_revision: Some("new1".into()),
        stable_revision: Some("old1".into()),
        desired_replicas: Some(3),
        updated_replicas: Some(2),
        admitted_replicas: Some(1),
        ready_replicas: Some(3),
        drains: Some(DrainStats {
            completed: 1,
            forced: 0,
            last_duration_millis: Some(1210),
            max_duration_millis: Some(1210),
        }),
        conditions: vec![
            Condition {
                type_: conditions::PAUSED.into(),
                status: "True".into(),
                reason: "PauseStep".into(),
                message: "the phase's story, not a problem".into(),
                last_transition_time: Time(at(0)),
                observed_generation: None,
            },
            Condition {
                type_: conditions::INJECTED.into(),
                status: "False".into(),
                reason: "PodsWithoutSidecar".into(),
                message: "1 pod runs without the sidecar".into(),
                last_transition_time: Time(at(0)),
                observed_generation: None,
            },
        ],
        message: Some("waiting for promotion".into()),
        ..Default::default()
    });
    p
}

/// A pod of `revision`; `gate`: the gate condition's status and reason; `drained`: the
/// drained condition's status and message.
fn pod(
    name: &str,
    revision: &str,
    injected: bool,
    gate: Option<(&str, &str)>,
    drained: Option<(&str, String)>,
) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.labels = Some([("pod-template-hash".to_string(), revision.to_string())].into());
    let mut containers = vec![Container {
        name: "app".into(),
        ..Default::default()
    }];
    if injected {
        containers.push(Container {
            name: SIDECAR_CONTAINER_NAME.into(),
            ..Default::default()
        });
    }
    p.spec = Some(PodSpec {
        containers,
        readiness_gates: injected.then(|| {
            vec![PodReadinessGate {
                condition_type: READY_GATE_CONDITION.into(),
            }]
        }),
        ..Default::default()
    });
    let cond =
        |type_: &str, status: &str, reason: Option<&str>, message: Option<String>| PodCondition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.map(str::to_string),
            message,
            ..Default::default()
        };
    let mut cs = vec![cond("Ready", "True", None, None)];
    if let Some((status, reason)) = gate {
        cs.push(cond(READY_GATE_CONDITION, status, Some(reason), None));
    }
    if let Some((status, message)) = drained {
        cs.push(cond(
            DRAINED_CONDITION,
            status,
            Some("Drained"),
            Some(message),
        ));
    }
    p.status = Some(PodStatus {
        conditions: Some(cs),
        ..Default::default()
    });
    p
}

fn report() -> String {
    DrainReport {
        duration_ms: 1210,
        endpoints_ms: 130,
        quiet_ms: 1080,
        connections_at_start: 4,
        busy_at_start: 4,
        ..Default::default()
    }
    .to_condition_message()
}

fn event(reason: &str, message: &str, t: i64) -> Event {
    Event {
        involved_object: ObjectReference::default(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some("Normal".into()),
        last_timestamp: Some(Time(at(t))),
        count: Some(1),
        ..Default::default()
    }
}

fn view() -> RolloutView {
    let pods = [
        pod(
            "web-old-a",
            "old1",
            true,
            Some(("True", "Admitted")),
            Some(("True", report())),
        ),
        pod(
            "web-new-b",
            "new1",
            true,
            Some(("False", "PausedStep")),
            None,
        ),
        pod("web-new-a", "new1", true, Some(("True", "Admitted")), None),
        pod("web-old-b", "old1", false, None, None),
    ];
    let events = [
        event("StepPaused", "paused at step 2", 20),
        event("RolloutStarted", "rolling out new1", 10),
    ];
    rollout(&policy(), &pods, &events)
}

#[test]
fn the_step_reads_steps_done_of_all_with_what_the_current_one_does() {
    let v = view();
    assert_eq!(v.step, "1/3");
    assert_eq!(v.step_action.as_deref(), Some("pause until promoted"));
    assert_eq!((v.desired, v.updated, v.admitted, v.ready), (3, 2, 1, 3));
}

#[test]
fn pods_new_first_with_gate_and_drain() {
    let v = view();
    let names: Vec<&str> = v.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["web-new-a", "web-new-b", "web-old-a", "web-old-b"]);
    assert_eq!(v.pods[1].gate, "held (PausedStep)");
    assert_eq!(v.pods[0].gate, "open");
    let drain = v.pods[2].drain.as_ref().expect("drained");
    assert_eq!(
        (drain.phase.as_str(), drain.seconds, drain.forced),
        ("drained", Some(1.21), false)
    );
    assert!(!v.pods[3].injected);
    assert_eq!(v.pods[3].gate, "-");
}

#[test]
fn only_unhealthy_conditions_are_problems_and_events_read_oldest_first() {
    let v = view();
    assert_eq!(
        v.problems,
        ["Injected=False (PodsWithoutSidecar): 1 pod runs without the sidecar"]
    );
    let reasons: Vec<&str> = v.events.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(reasons, ["RolloutStarted", "StepPaused"]);
}

#[test]
fn the_text_a_person_reads() {
    let text = render::rollout(&view(), at(30), Style { colour: false });
    for line in [
        "Policy:    shop/web",
        "Phase:     Paused",
        "Step:      1/3 (pause until promoted)",
        "Revisions: old1 (stable) → new1 (update)",
        "Replicas:  3 desired, 2 updated, 1 admitted, 3 ready",
        "Drains:    1 completed, 0 forced, longest 1.21s",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let row = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row {name} in\n{text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        row("web-new-b"),
        "web-new-b new1 (new) Ready held (PausedStep) - 0"
    );
    assert_eq!(
        row("web-old-a"),
        "web-old-a old1 (stable) Ready open drained 1.21s 0"
    );
    assert_eq!(
        row("web-old-b"),
        "web-old-b old1 (stable) Ready - not injected 0"
    );
    assert!(text.contains("10s"), "event ages:\n{text}");
    assert!(!text.contains('\x1b'), "no colour when piped");
    let drains = render::drains(&view().pods, Style { colour: false });
    assert!(drains.contains("drained in 1.21s"), "{drains}");
}
