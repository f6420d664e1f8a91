//! Every transition of [`plan`], with an injected clock.

use super::*;
use quiesce_api::{FailureAction, Step};

const T0: i64 = 1_700_000_000;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(T0 + secs).unwrap()
}

fn spec(steps: Vec<Step>) -> RolloutPolicySpec {
    let mut s = RolloutPolicySpec::for_deployment("web");
    s.steps = steps;
    s
}

fn target(replicas: i32, update: &str) -> TargetView {
    TargetView {
        name: "web".into(),
        replicas,
        update_revision: Some(update.into()),
        revisions: vec!["old".into(), update.into()],
        termination_grace_period_seconds: 60,
        template_labels: [("app".to_owned(), "web".to_owned())].into(),
        app_ports: vec![AppPort {
            name: Some("http".into()),
            number: 8080,
        }],
    }
}

/// A live, injected pod of `rev`, containers ready since `ready_since` (seconds after T0).
fn pod(name: &str, rev: &str, ready_since: Option<i64>, gate: Option<bool>) -> PodView {
    PodView {
        name: name.into(),
        revision: Some(rev.into()),
        containers_ready_since: ready_since.map(at),
        gate: gate.map(|ready| GateView {
            ready,
            reason: if ready { "Admitted" } else { "WaitingForStep" }.into(),
            last_probe: Some(at(0)),
        }),
        has_gate: true,
        injected: true,
        ..PodView::default()
    }
}

struct World {
    o: Observed,
}

impl World {
    fn new(spec: RolloutPolicySpec, target: TargetView, pods: Vec<PodView>) -> Self {
        Self {
            o: Observed {
                policy: PolicyView {
                    name: "web".into(),
                    generation: Some(1),
                    spec,
                    status: RolloutPolicyStatus::default(),
                    promote: None,
                    abort: false,
                    deleting: false,
                },
                target: TargetState::Found(target),
                pods,
                new_drains: vec![],
                services: vec![],
            },
        }
    }

    /// A world whose status says `stable` is stable and a rollout to `update` started at T0.
    fn rolling(spec: RolloutPolicySpec, replicas: i32, pods: Vec<PodView>) -> Self {
        let mut w = Self::new(spec, target(replicas, "new"), pods);
        w.o.policy.status = RolloutPolicyStatus {
            stable_revision: Some("old".into()),
            update_revision: Some("new".into()),
            phase: Some(Phase::Progressing),
            current_step: (!w.o.policy.spec.steps.is_empty()).then_some(0),
            current_step_start_time: Some(Time(at(0))),
            last_progress_time: Some(Time(at(0))),
            ..Default::default()
        };
        w
    }

    /// Runs the plan and carries its status over (as the apiserver would after the patch).
    fn step(&mut self, now: i64) -> Plan {
        let p = plan(&self.o, at(now));
        self.o.policy.status = p.status.clone();
        self.o.policy.promote = None;
        self.o.policy.abort = false;
        p
    }

    fn pod_mut(&mut self, name: &str) -> &mut PodView {
        self.o.pods.iter_mut().find(|p| p.name == name).unwrap()
    }

    /// Applies the plan's gate actions to the pods.
    fn apply_gates(&mut self, p: &Plan, now: i64) {
        for a in &p.actions {
            if let Action::SetGate {
                pod, ready, reason, ..
            } = a
            {
                self.pod_mut(pod).gate = Some(GateView {
                    ready: *ready,
                    reason: (*reason).into(),
                    last_probe: Some(at(now)),
                });
            }
        }
    }
}

fn admitted(p: &Plan) -> Vec<&str> {
    p.actions.iter().filter_map(Action::admitted_pod).collect()
}

fn held(p: &Plan) -> Vec<(&str, &str)> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::SetGate {
                pod,
                ready: false,
                reason,
                ..
            } => Some((pod.as_str(), *reason)),
            _ => None,
        })
        .collect()
}

fn events(p: &Plan) -> Vec<&str> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::Event { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

fn cond<'a>(p: &'a Plan, type_: &str) -> &'a Condition {
    p.status.condition(type_).unwrap()
}

#[test]
fn first_sight_records_the_stable_revision_and_admits_ready_pods() {
    let mut w = World::new(
        spec(vec![]),
        target(2, "old"),
        vec![pod("a", "old", Some(0), None), pod("b", "old", None, None)],
    );
    let p = w.step(10);
    assert_eq!(p.status.stable_revision.as_deref(), Some("old"));
    assert_eq!(p.status.phase, Some(Phase::Idle));
    assert_eq!(admitted(&p), vec!["a"]);
    assert!(held(&p).is_empty(), "unready stable pods are not written");
    assert_eq!(cond(&p, conditions::ACCEPTED).status, "True");
    assert_eq!(p.status.desired_replicas, Some(2));
    assert_eq!(p.status.ready_replicas, Some(1));
    assert_eq!(p.requeue_after, None, "nothing timed: no requeue");
    assert!(p.status.message.unwrap().contains("no rollout"));
}

#[test]
fn scale_up_outside_a_rollout_is_admitted_without_waiting() {
    let mut s = spec(vec![]);
    s.readiness.min_healthy_seconds = 30;
    let mut w = World::new(s, target(3, "old"), vec![pod("c", "old", Some(9), None)]);
    w.o.policy.status.stable_revision = Some("old".into());
    w.o.policy.status.update_revision = Some("old".into());
    let p = w.step(10);
    assert_eq!(admitted(&p), vec!["c"]);
}

#[test]
fn a_new_revision_starts_a_rollout_with_an_event() {
    let mut w = World::new(
        spec(vec![Step::admit_count(1), Step::admit_percent(100)]),
        target(3, "new"),
        vec![
            pod("o1", "old", Some(0), Some(true)),
            pod("n1", "new", None, None),
        ],
    );
    w.o.policy.status.stable_revision = Some("old".into());
    w.o.policy.status.update_revision = Some("old".into());
    w.o.policy.status.phase = Some(Phase::Completed);
    let p = w.step(5);
    assert_eq!(p.status.phase, Some(Phase::Progressing));
    assert_eq!(p.status.update_revision.as_deref(), Some("new"));
    assert_eq!(p.status.current_step, Some(0));
    assert_eq!(p.status.current_step_start_time, Some(Time(at(5))));
    assert!(events(&p).contains(&reasons::ROLLOUT_STARTED));
    assert_eq!(cond(&p, conditions::PROGRESSING).status, "True");
    assert_eq!(held(&p), vec![("n1", reasons::CONTAINERS_NOT_READY)]);
}

#[test]
fn an_admit_step_admits_up_to_its_count_and_holds_the_rest() {
    let mut w = World::rolling(
        spec(vec![Step::admit_count(1), Step::admit_percent(100)]),
        3,
        vec![
            pod("o1", "old", Some(0), Some(true)),
            pod("o2", "old", Some(0), Some(true)),
            pod("n1", "new", Some(2), None),
            pod("n2", "new", Some(1), None),
        ],
    );
    let p = w.step(10);
    assert_eq!(admitted(&p), vec!["n2"], "the pod ready longest goes first");
    assert_eq!(held(&p), vec![("n1", reasons::WAITING_FOR_STEP)]);
    assert_eq!(p.status.admitted_replicas, Some(1));
    assert_eq!(p.status.last_progress_time, Some(Time(at(10))));
    assert_eq!(
        p.status.current_step,
        Some(0),
        "the step ends once the admission is observed"
    );
}

#[test]
fn percent_steps_are_recomputed_from_the_current_desired_count() {
    let pods = (0..4)
        .map(|i| pod(&format!("n{i}"), "new", Some(0), None))
        .collect();
    let mut w = World::rolling(
        spec(vec![Step::admit_percent(50), Step::admit_percent(100)]),
        2,
        pods,
    );
    assert_eq!(admitted(&w.step(10)).len(), 1, "50% of 2");
    w.o.policy.status = RolloutPolicyStatus {
        current_step: Some(0),
        ..w.o.policy.status.clone()
    };
    if let TargetState::Found(t) = &mut w.o.target {
        t.replicas = 4;
    }
    let mut fresh = World::rolling(w.o.policy.spec.clone(), 4, w.o.pods.clone());
    fresh.o.target = w.o.target.clone();
    assert_eq!(admitted(&fresh.step(10)).len(), 2, "scaled to 4: 50% is 2");
}

#[test]
fn min_healthy_seconds_delays_admission_and_requeues_when_due() {
    let mut s = spec(vec![]);
    s.readiness.min_healthy_seconds = 5;
    let mut w = World::rolling(s, 1, vec![pod("n1", "new", Some(8), None)]);
    let p = w.step(10);
    assert!(admitted(&p).is_empty());
    assert_eq!(held(&p), vec![("n1", reasons::WAITING_FOR_MIN_HEALTHY)]);
    assert_eq!(p.requeue_after, Some(Duration::from_secs(3)));
    w.apply_gates(&p, 10);
    let p = w.step(13);
    assert_eq!(admitted(&p), vec!["n1"]);
}

#[test]
fn steps_advance_once_admissions_are_observed_and_wait_for_displaced_old_pods() {
    let mut w = World::rolling(
        spec(vec![Step::admit_count(1), Step::admit_percent(100)]),
        2,
        vec![
            pod("o1", "old", Some(0), Some(true)),
            pod("o2", "old", Some(0), Some(true)),
            pod("n1", "new", Some(0), None),
        ],
    );
    let p = w.step(10);
    w.apply_gates(&p, 10);
    // The admission is observed; the old pod has not been removed yet.
    w.o.pods.push(pod("n2", "new", Some(11), None));
    let p = w.step(12);
    assert_eq!(p.status.current_step, Some(1));
    assert!(events(&p).contains(&reasons::STEP_ADVANCED));
    // The recorder folds Events by reason and action: the revision in both keeps the steps of
    // one rollout apart from the same steps of the next in `kubectl describe rp`.
    let advanced = p.actions.iter().find_map(|a| match a {
        Action::Event {
            reason,
            note,
            action,
            ..
        } if *reason == reasons::STEP_ADVANCED => Some((note.as_str(), action.as_str())),
        _ => None,
    });
    assert_eq!(
        advanced,
        Some((
            "revision new: step 0 done (1 of 2 new pods admitted); now at step 1",
            "AdvanceToStep1new"
        ))
    );
    assert_eq!(held(&p), vec![("n2", reasons::WAITING_FOR_DRAIN)]);
    assert!(
        p.status
            .message
            .as_ref()
            .unwrap()
            .contains("remove old pods")
    );
    // The Deployment controller removes o2; its sidecar drains.
    w.pod_mut("o2").terminating = true;
    w.pod_mut("o2").drained = Some(DrainedView { done: false });
    let p = w.step(13);
    assert!(admitted(&p).is_empty());
    assert!(p.status.message.as_ref().unwrap().contains("drain: o2"));
    w.pod_mut("o2").drained = Some(DrainedView { done: true });
    let p = w.step(14);
    assert_eq!(admitted(&p), vec!["n2"]);
}

#[test]
fn without_wait_before_next_step_the_next_step_admits_at_once() {
    let mut s = spec(vec![Step::admit_count(1), Step::admit_percent(100)]);
    s.drain.wait_before_next_step = false;
    let mut w = World::rolling(
        s,
        2,
        vec![
            pod("o1", "old", Some(0), Some(true)),
            pod("o2", "old", Some(0), Some(true)),
            pod("n1", "new", Some(0), Some(true)),
            pod("n2", "new", Some(0), None),
        ],
    );
    let p = w.step(12);
    assert_eq!(admitted(&p), vec!["n2"]);
}

#[test]
fn a_timed_pause_holds_then_advances_when_its_time_is_up() {
    let mut w = World::rolling(
        spec(vec![
            Step::admit_count(1),
            Step::pause(Some(30)),
            Step::admit_percent(100),
        ]),
        2,
        vec![
            pod("n1", "new", Some(0), Some(true)),
            pod("n2", "new", Some(0), None),
        ],
    );
    let p = w.step(10);
    assert_eq!(p.status.current_step, Some(1));
    assert_eq!(p.status.phase, Some(Phase::Paused));
    assert_eq!(held(&p), vec![("n2", reasons::PAUSED)]);
    assert_eq!(cond(&p, conditions::PAUSED).reason, reasons::PAUSE_STEP);
    assert_eq!(p.requeue_after, Some(Duration::from_secs(30)));
    w.apply_gates(&p, 10);
    let p = w.step(25);
    assert!(admitted(&p).is_empty(), "the pause holds");
    assert_eq!(p.requeue_after, Some(Duration::from_secs(15)));
    let p = w.step(40);
    assert_eq!(p.status.current_step, Some(2));
    assert_eq!(admitted(&p), vec!["n2"]);
    assert_eq!(p.status.phase, Some(Phase::Progressing));
}

#[test]
fn an_indefinite_pause_waits_for_promote() {
    let mut w = World::rolling(
        spec(vec![
            Step::admit_count(1),
            Step::pause(None),
            Step::admit_percent(100),
        ]),
        2,
        vec![
            pod("n1", "new", Some(0), Some(true)),
            pod("n2", "new", Some(0), None),
        ],
    );
    let p = w.step(10);
    assert_eq!(p.status.phase, Some(Phase::Paused));
    assert!(
        p.status
            .message
            .as_ref()
            .unwrap()
            .contains("quiesce.dev/promote")
    );
    let p = w.step(5000);
    assert!(admitted(&p).is_empty(), "no progress deadline in a pause");
    assert_ne!(p.status.phase, Some(Phase::Failed));
    w.o.policy.promote = Some("step".into());
    let p = w.step(5001);
    assert!(
        p.actions
            .contains(&Action::ClearAnnotation(annotations::PROMOTE))
    );
    assert!(events(&p).contains(&reasons::PROMOTED));
    assert_eq!(admitted(&p), vec!["n2"]);
}

#[test]
fn promote_full_skips_every_step() {
    let mut w = World::rolling(
        spec(vec![
            Step::admit_count(1),
            Step::admit_percent(50),
            Step::admit_percent(100),
        ]),
        4,
        (0..4)
            .map(|i| pod(&format!("n{i}"), "new", Some(0), None))
            .collect(),
    );
    w.o.policy.promote = Some("full".into());
    let p = w.step(10);
    assert_eq!(p.status.current_step, Some(3));
    assert_eq!(admitted(&p).len(), 4);
}

#[test]
fn spec_paused_holds_admission_and_resume_continues() {
    let mut s = spec(vec![Step::admit_percent(100)]);
    s.paused = true;
    let mut w = World::rolling(s, 1, vec![pod("n1", "new", Some(0), None)]);
    let p = w.step(10);
    assert_eq!(p.status.phase, Some(Phase::Paused));
    assert_eq!(held(&p), vec![("n1", reasons::PAUSED)]);
    assert_eq!(cond(&p, conditions::PAUSED).reason, reasons::PAUSED_BY_SPEC);
    assert!(events(&p).contains(&reasons::PAUSED_BY_SPEC));
    w.apply_gates(&p, 10);
    w.o.policy.spec.paused = false;
    let p = w.step(20);
    assert_eq!(admitted(&p), vec!["n1"]);
}

#[test]
fn abort_rolls_back_to_the_stable_revision() {
    let mut w = World::rolling(
        spec(vec![
            Step::admit_count(1),
            Step::pause(None),
            Step::admit_percent(100),
        ]),
        2,
        vec![pod("n1", "new", Some(0), Some(true))],
    );
    w.o.policy.abort = true;
    let p = w.step(10);
    assert!(
        p.actions
            .contains(&Action::ClearAnnotation(annotations::ABORT))
    );
    assert!(p.actions.contains(&Action::Rollback {
        revision: "old".into()
    }));
    assert_eq!(p.status.phase, Some(Phase::RolledBack));
    assert_eq!(cond(&p, conditions::DEGRADED).reason, reasons::ABORTED);
    // The Deployment controller switches back: the old ReplicaSet is the newest again.
    w.o.target = TargetState::Found(target(2, "old"));
    let p = w.step(20);
    assert_eq!(p.status.phase, Some(Phase::RolledBack));
    assert_eq!(p.status.update_revision.as_deref(), Some("old"));
    assert!(p.status.message.unwrap().contains("rolled back"));
}

#[test]
fn abort_without_a_rollout_only_clears_the_annotation() {
    let mut w = World::new(spec(vec![]), target(1, "old"), vec![]);
    w.step(1);
    w.o.policy.abort = true;
    let p = w.step(10);
    assert_eq!(p.actions, vec![Action::ClearAnnotation(annotations::ABORT)]);
}

#[test]
fn too_many_restarts_rolls_back() {
    let mut s = spec(vec![]);
    s.failure.action = FailureAction::Rollback;
    s.failure.max_restarts = 2;
    let mut bad = pod("n1", "new", None, None);
    bad.restarts = 3;
    let mut w = World::rolling(s, 1, vec![bad]);
    let p = w.step(10);
    assert!(p.actions.contains(&Action::Rollback {
        revision: "old".into()
    }));
    assert_eq!(p.status.phase, Some(Phase::RolledBack));
    assert_eq!(
        cond(&p, conditions::DEGRADED).reason,
        reasons::TOO_MANY_RESTARTS
    );
    assert!(
        p.status
            .message
            .as_ref()
            .unwrap()
            .contains("restarted 3 times")
    );
    assert!(events(&p).contains(&reasons::ROLLED_BACK));
}

#[test]
fn progress_deadline_pauses_with_failure_action_pause() {
    let mut s = spec(vec![]);
    s.failure.progress_deadline_seconds = 60;
    let mut w = World::rolling(s, 1, vec![pod("n1", "new", None, None)]);
    let p = w.step(30);
    assert_eq!(p.status.phase, Some(Phase::Progressing));
    assert_eq!(
        p.requeue_after,
        Some(Duration::from_secs(30)),
        "deadline timer"
    );
    let p = w.step(60);
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(
        cond(&p, conditions::DEGRADED).reason,
        reasons::PROGRESS_DEADLINE_EXCEEDED
    );
    assert_eq!(
        cond(&p, conditions::PAUSED).reason,
        reasons::PAUSED_ON_FAILURE
    );
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a, Action::Rollback { .. }))
    );
    // Still failed later: held until promote, abort or a new revision.
    w.pod_mut("n1").containers_ready_since = Some(at(61));
    let p = w.step(70);
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert!(admitted(&p).is_empty());
    w.o.policy.promote = Some("step".into());
    let p = w.step(71);
    assert_eq!(p.status.phase, Some(Phase::Progressing));
    assert_eq!(admitted(&p), vec!["n1"]);
}

#[test]
fn rollback_is_impossible_without_the_stable_replicaset() {
    let mut s = spec(vec![]);
    s.failure.action = FailureAction::Rollback;
    s.failure.progress_deadline_seconds = 10;
    let mut t = target(1, "new");
    t.revisions = vec!["new".into()];
    let mut w = World::rolling(s, 1, vec![]);
    w.o.target = TargetState::Found(t);
    let p = w.step(20);
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert!(p.status.message.unwrap().contains("cannot roll back"));
}

#[test]
fn good_bad_good_starts_a_fresh_rollout_after_a_rollback() {
    let mut w = World::new(spec(vec![]), target(1, "old"), vec![]);
    w.o.policy.status = RolloutPolicyStatus {
        stable_revision: Some("old".into()),
        update_revision: Some("old".into()),
        phase: Some(Phase::RolledBack),
        ..Default::default()
    };
    w.o.target = TargetState::Found(target(1, "good"));
    let p = w.step(10);
    assert_eq!(p.status.phase, Some(Phase::Progressing));
    assert_eq!(cond(&p, conditions::DEGRADED).status, "False");
}

#[test]
fn the_rollout_completes_when_every_pod_is_new_and_admitted() {
    let mut w = World::rolling(
        spec(vec![Step::admit_count(1), Step::admit_percent(100)]),
        2,
        vec![
            pod("n1", "new", Some(0), Some(true)),
            pod("n2", "new", Some(0), Some(true)),
            PodView {
                terminating: true,
                ..pod("o1", "old", Some(0), Some(true))
            },
        ],
    );
    w.o.policy.status.current_step = Some(1);
    let p = w.step(30);
    assert_eq!(p.status.phase, Some(Phase::Completed));
    assert_eq!(p.status.stable_revision.as_deref(), Some("new"));
    assert_eq!(p.status.current_step, None);
    assert!(events(&p).contains(&reasons::ROLLOUT_COMPLETED));
    assert_eq!(cond(&p, conditions::AVAILABLE).status, "True");
    // And stays completed.
    let p = w.step(40);
    assert_eq!(p.status.phase, Some(Phase::Completed));
    assert!(events(&p).is_empty());
}

#[test]
fn rollout_undo_by_hand_abandons_the_rollout() {
    let mut w = World::rolling(spec(vec![]), 1, vec![]);
    w.o.target = TargetState::Found(target(1, "old"));
    let p = w.step(10);
    assert_eq!(p.status.phase, Some(Phase::Idle));
    assert_eq!(
        cond(&p, conditions::PROGRESSING).reason,
        reasons::ROLLOUT_ABANDONED
    );
}

#[test]
fn a_new_revision_mid_rollout_restarts_the_steps_from_the_same_stable() {
    let mut w = World::rolling(
        spec(vec![
            Step::admit_count(1),
            Step::pause(None),
            Step::admit_percent(100),
        ]),
        2,
        vec![],
    );
    w.o.policy.status.current_step = Some(1);
    w.o.target = TargetState::Found(target(2, "newer"));
    let p = w.step(10);
    assert_eq!(p.status.stable_revision.as_deref(), Some("old"));
    assert_eq!(p.status.update_revision.as_deref(), Some("newer"));
    assert_eq!(p.status.current_step, Some(0));
}

#[test]
fn target_not_found_and_conflict_are_reported_without_touching_pods() {
    let mut w = World::new(
        spec(vec![]),
        target(1, "old"),
        vec![pod("a", "old", Some(0), None)],
    );
    w.o.target = TargetState::NotFound;
    let p = w.step(1);
    let c = cond(&p, conditions::ACCEPTED);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", reasons::TARGET_NOT_FOUND)
    );
    assert!(c.message.contains("Deployment web not found"));
    assert!(admitted(&p).is_empty());
    assert_eq!(events(&p), vec![reasons::TARGET_NOT_FOUND]);
    let p = w.step(2);
    assert!(events(&p).is_empty(), "the warning is published once");

    w.o.target = TargetState::Conflict {
        winner: "older".into(),
    };
    let p = w.step(3);
    let c = cond(&p, conditions::ACCEPTED);
    assert_eq!(c.reason, reasons::CONFLICT);
    assert!(c.message.contains("RolloutPolicy older already targets"));
    assert!(admitted(&p).is_empty());
}

#[test]
fn an_invalid_spec_is_rejected() {
    let mut s = spec(vec![Step::admit_count(1)]);
    s.steps.push(Step {
        admit: None,
        pause: None,
    });
    let mut w = World::new(s, target(1, "old"), vec![]);
    let p = w.step(1);
    assert_eq!(cond(&p, conditions::ACCEPTED).reason, reasons::INVALID_SPEC);
}

#[test]
fn deleting_the_policy_admits_every_held_pod() {
    let mut w = World::rolling(
        spec(vec![
            Step::admit_count(1),
            Step::pause(None),
            Step::admit_percent(100),
        ]),
        3,
        vec![
            pod("n1", "new", Some(0), Some(true)),
            pod("n2", "new", Some(0), Some(false)),
            pod("n3", "new", None, Some(false)),
        ],
    );
    w.o.policy.deleting = true;
    let p = w.step(10);
    assert_eq!(
        admitted(&p),
        vec!["n2", "n3"],
        "not-yet-ready pods too: nothing left behind"
    );
    assert!(held(&p).is_empty());
}

#[test]
fn deleting_a_policy_in_conflict_leaves_the_pods_to_the_governing_one() {
    let mut w = World::rolling(
        spec(vec![Step::admit_count(1), Step::admit_percent(100)]),
        2,
        vec![pod("n1", "new", Some(0), Some(false))],
    );
    w.o.policy.deleting = true;
    w.o.target = TargetState::Conflict {
        winner: "older".into(),
    };
    let p = w.step(10);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
}

#[test]
fn pods_without_the_sidecar_are_counted() {
    let mut w = World::new(
        spec(vec![]),
        target(2, "old"),
        vec![
            pod("a", "old", Some(0), None),
            PodView {
                injected: false,
                has_gate: false,
                ..pod("b", "old", Some(0), None)
            },
        ],
    );
    let p = w.step(1);
    let c = cond(&p, conditions::INJECTED);
    assert_eq!(c.status, "False");
    assert!(c.message.starts_with("1 of 2 pods"), "{}", c.message);
    assert!(c.message.contains(": b"));
    assert!(events(&p).contains(&reasons::PODS_NOT_INJECTED));
    assert_eq!(p.status.ready_replicas, Some(2));
}

#[test]
fn a_short_grace_period_is_reported() {
    let mut t = target(1, "old");
    t.termination_grace_period_seconds = 30;
    let mut w = World::new(spec(vec![]), t, vec![]);
    let p = w.step(1);
    let c = cond(&p, conditions::DRAIN_BUDGET_SUFFICIENT);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", reasons::GRACE_PERIOD_TOO_SHORT)
    );
    assert!(c.message.contains("drain budget of 41s"), "{}", c.message);
}

#[test]
fn held_pods_get_a_heartbeat_for_the_sidecar_fail_open() {
    let mut s = spec(vec![
        Step::admit_count(1),
        Step::pause(None),
        Step::admit_percent(100),
    ]);
    s.readiness.fail_open_after_seconds = 90;
    let mut w = World::rolling(
        s,
        2,
        vec![
            pod("n1", "new", Some(0), Some(true)),
            pod("n2", "new", Some(0), None),
        ],
    );
    let p = w.step(0);
    assert_eq!(held(&p), vec![("n2", reasons::PAUSED)]);
    w.apply_gates(&p, 0);
    let p = w.step(10);
    assert!(held(&p).is_empty(), "fresh heartbeat: no write");
    assert_eq!(p.requeue_after, Some(Duration::from_secs(20)));
    let p = w.step(30);
    assert_eq!(
        held(&p),
        vec![("n2", reasons::PAUSED)],
        "heartbeat refreshed every 30s"
    );
}

#[test]
fn conditions_keep_their_transition_time_while_unchanged() {
    let mut w = World::new(spec(vec![]), target(1, "old"), vec![]);
    let p = w.step(1);
    let t1 = cond(&p, conditions::ACCEPTED).last_transition_time.clone();
    let p = w.step(50);
    assert_eq!(cond(&p, conditions::ACCEPTED).last_transition_time, t1);
    assert_eq!(p.status.observed_generation, Some(1));
}

#[test]
fn drains_are_added_up() {
    let mut w = World::new(spec(vec![]), target(1, "old"), vec![]);
    w.o.new_drains = vec![
        DrainReport {
            forced: false,
            duration_millis: Some(1200),
            invalid: false,
        },
        DrainReport {
            forced: true,
            duration_millis: Some(30000),
            invalid: false,
        },
    ];
    let p = w.step(1);
    let forced_events: Vec<&str> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Event { reason, note, .. } if *reason == DRAINS_FORCED => Some(note.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(forced_events.len(), 1, "one Warning for the forced drain");
    assert!(
        forced_events[0].starts_with("1 drain(s) forced after 30.0s"),
        "{forced_events:?}"
    );
    let d = p.status.drains.unwrap();
    assert_eq!((d.completed, d.forced), (1, 1));
    assert_eq!(d.max_duration_millis, Some(30000));
}

#[test]
fn completed_drains_alone_raise_no_warning() {
    let mut w = World::new(spec(vec![]), target(1, "old"), vec![]);
    w.o.new_drains = vec![DrainReport {
        forced: false,
        duration_millis: Some(900),
        invalid: false,
    }];
    let p = w.step(1);
    assert!(!events(&p).contains(&DRAINS_FORCED));
}

#[test]
fn an_invalid_drain_report_counts_as_a_drain_without_numbers_and_is_reported() {
    let mut w = World::new(spec(vec![]), target(1, "old"), vec![]);
    let valid = DrainReport {
        forced: false,
        duration_millis: Some(1200),
        invalid: false,
    };
    w.o.new_drains = vec![
        valid,
        DrainReport {
            forced: false,
            duration_millis: None,
            invalid: true,
        },
    ];
    let p = w.step(1);
    let d = p.status.drains.clone().unwrap();
    assert_eq!(d.completed, 2, "the drain happened");
    assert_eq!(
        (d.last_duration_millis, d.max_duration_millis),
        (Some(1200), Some(1200))
    );
    assert!(events(&p).contains(&INVALID_DRAIN_REPORT));
    w.o.new_drains = vec![valid];
    assert!(!events(&w.step(2)).contains(&INVALID_DRAIN_REPORT));
}

/// A world paused after step 1: `n1` admitted, `n2` held by the operator since 10 s, then
/// opened by the app at 15 s.
fn paused_with_a_foreign_gate() -> World {
    let mut w = World::rolling(
        spec(vec![
            Step::admit_count(1),
            Step::pause(None),
            Step::admit_percent(100),
        ]),
        2,
        vec![
            pod("n1", "new", Some(0), Some(true)),
            pod("n2", "new", Some(0), None),
        ],
    );
    let p = w.step(10);
    assert_eq!(held(&p), vec![("n2", reasons::PAUSED)]);
    w.apply_gates(&p, 10);
    let n2 = w.pod_mut("n2");
    n2.held_since = Some(at(10));
    n2.gate = Some(GateView {
        ready: true,
        reason: reasons::ADMITTED.into(),
        last_probe: Some(at(15)),
    });
    w
}

#[test]
fn a_gate_opened_by_someone_else_while_held_is_reset_and_reported() {
    let mut w = paused_with_a_foreign_gate();
    let p = w.step(20);
    assert_eq!(held(&p), vec![("n2", reasons::PAUSED)], "reset to False");
    assert_eq!(p.gate_resets, vec!["n2".to_owned()]);
    assert!(events(&p).contains(&GATE_RESET));
    assert_eq!(p.status.admitted_replicas, Some(1), "n2 does not count");
    assert_eq!(p.status.phase, Some(Phase::Paused));
}

#[test]
fn a_foreign_gate_the_step_allows_is_admitted_without_a_reset() {
    let mut w = paused_with_a_foreign_gate();
    w.o.policy.promote = Some("true".into());
    let p = w.step(20);
    assert_eq!(admitted(&p), vec!["n2"]);
    assert!(p.gate_resets.is_empty());
    assert!(!events(&p).contains(&GATE_RESET));
}

#[test]
fn a_fail_open_after_the_operators_silence_is_trusted() {
    let mut w = paused_with_a_foreign_gate();
    let fail_open = w.o.policy.spec.readiness.fail_open_after().as_secs();
    let after = 10 + i64::try_from(fail_open).unwrap();
    let p = w.step(after);
    assert!(p.gate_resets.is_empty(), "the sidecar may open it by now");
    assert_eq!(p.status.admitted_replicas, Some(2));
    // Without the operator's memory of holding it (a restart), the gate is trusted too.
    let mut w = paused_with_a_foreign_gate();
    w.pod_mut("n2").held_since = None;
    assert!(w.step(20).gate_resets.is_empty());
}

fn service(name: &str, selector: &[(&str, &str)], target: TargetPort) -> ServiceView {
    ServiceView {
        name: name.into(),
        selector: selector
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ports: vec![ServicePortView { port: 80, target }],
    }
}

fn proxy_world(services: Vec<ServiceView>) -> World {
    let mut s = spec(vec![]);
    s.drain.mode = DrainMode::Proxy;
    let mut w = World::new(s, target(1, "old"), vec![]);
    w.o.services = services;
    w
}

#[test]
fn proxy_takeover_holds_when_every_selecting_service_targets_a_named_port() {
    let mut w = proxy_world(vec![
        service("web", &[("app", "web")], TargetPort::Name("http".into())),
        // Selects other pods: not about this target, numeric or not.
        service("api", &[("app", "api")], TargetPort::Number(8080)),
        // No selector (hand-made endpoints): ignored.
        service("external", &[], TargetPort::Number(8080)),
    ]);
    let p = w.step(1);
    let c = cond(&p, conditions::PROXY_TAKEOVER);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", reasons::ALL_SERVICES_NAMED)
    );
    assert!(c.message.ends_with(": web"), "{}", c.message);
    assert!(!events(&p).contains(&reasons::NUMERIC_TARGET_PORT));
}

#[test]
fn a_numeric_target_port_is_reported_with_the_service_and_the_fix() {
    let mut w = proxy_world(vec![
        service("web", &[("app", "web")], TargetPort::Name("http".into())),
        service("web-direct", &[("app", "web")], TargetPort::Number(8080)),
        service("web-debug", &[("app", "web")], TargetPort::Number(9090)),
    ]);
    let p = w.step(1);
    let c = cond(&p, conditions::PROXY_TAKEOVER);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", reasons::NUMERIC_TARGET_PORT)
    );
    assert!(
        c.message
            .contains("set targetPort: http instead of 8080 in Service web-direct"),
        "{}",
        c.message
    );
    assert!(
        c.message.contains(
            "name container port 9090 (containers[].ports[].name) and set targetPort to that name instead of 9090 in Service web-debug"
        ),
        "{}",
        c.message
    );
    assert!(!c.message.contains("Service web "), "the named one is fine");
    assert!(events(&p).contains(&reasons::NUMERIC_TARGET_PORT));
    // Reported once: no second Warning while it stays False.
    let p = w.step(2);
    assert!(events(&p).is_empty());
    assert_eq!(
        cond(&p, conditions::PROXY_TAKEOVER).last_transition_time,
        Time(at(1))
    );
}

#[test]
fn a_template_without_named_ports_cannot_be_taken_over() {
    let mut w = proxy_world(vec![service(
        "web",
        &[("app", "web")],
        TargetPort::Number(8080),
    )]);
    if let TargetState::Found(t) = &mut w.o.target {
        t.app_ports = vec![AppPort {
            name: None,
            number: 8080,
        }];
    }
    let p = w.step(1);
    let c = cond(&p, conditions::PROXY_TAKEOVER);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", reasons::NO_NAMED_PORT)
    );
    assert!(c.message.contains("Observe mode"), "{}", c.message);
    assert!(c.message.contains("(Services: web)"), "{}", c.message);
}

#[test]
fn observe_mode_has_no_proxy_takeover_condition() {
    let mut w = proxy_world(vec![service(
        "web",
        &[("app", "web")],
        TargetPort::Number(8080),
    )]);
    let p = w.step(1);
    assert_eq!(cond(&p, conditions::PROXY_TAKEOVER).status, "False");
    // Back to Observe: the condition goes away.
    w.o.policy.spec.drain.mode = DrainMode::Observe;
    let p = w.step(2);
    assert!(p.status.condition(conditions::PROXY_TAKEOVER).is_none());
    assert!(events(&p).is_empty());
}

fn crash_looping(p: PodView, restarts: i32, termination: &str) -> PodView {
    PodView {
        restarts,
        sidecar: Some(SidecarView {
            restarts,
            crash_looping: true,
            last_termination: Some(termination.into()),
        }),
        ..p
    }
}

fn healthy_sidecar(p: PodView) -> PodView {
    PodView {
        sidecar: Some(SidecarView::default()),
        ..p
    }
}

#[test]
fn a_restarting_sidecar_is_reported_with_its_pod_and_last_termination() {
    let mut w = World::new(
        spec(vec![]),
        target(2, "old"),
        vec![
            healthy_sidecar(pod("a", "old", Some(0), Some(true))),
            crash_looping(
                pod("b", "old", Some(0), Some(true)),
                4,
                "invalid QUIESCE_PROXY_PORTS:\n  15001:x",
            ),
        ],
    );
    let p = w.step(1);
    let c = cond(&p, conditions::SIDECAR_HEALTHY);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", reasons::SIDECAR_CRASH_LOOPING)
    );
    assert!(
        c.message.contains(
            "pod b restarted it 4 times and is in CrashLoopBackOff (last termination: invalid QUIESCE_PROXY_PORTS: 15001:x)"
        ),
        "{}",
        c.message
    );
    assert!(c.message.contains("in 1 of 2 pods"), "{}", c.message);
    assert!(events(&p).contains(&reasons::SIDECAR_CRASH_LOOPING));
    let message = p.status.message.clone().unwrap();
    assert!(message.starts_with("no rollout in progress"), "{message}");
    assert!(message.contains("; SidecarHealthy=False: the quiesce sidecar restarted"));

    // Still crash-looping: no second Warning, the transition time stays, the note is not stacked.
    let p = w.step(30);
    assert!(!events(&p).contains(&reasons::SIDECAR_CRASH_LOOPING));
    assert_eq!(
        cond(&p, conditions::SIDECAR_HEALTHY).last_transition_time,
        Time(at(1))
    );
    assert_eq!(
        p.status
            .message
            .unwrap()
            .matches("SidecarHealthy=False")
            .count(),
        1
    );

    // The pod was replaced by a healthy one: True again, the note is gone.
    w.o.pods[1] = healthy_sidecar(pod("c", "old", Some(0), Some(true)));
    let p = w.step(60);
    let c = cond(&p, conditions::SIDECAR_HEALTHY);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", reasons::SIDECAR_RUNNING)
    );
    assert_eq!(c.last_transition_time, Time(at(60)));
    assert!(!p.status.message.unwrap().contains("SidecarHealthy"));
}

#[test]
fn many_restarting_sidecars_are_named_up_to_three() {
    let pods = (0..5)
        .map(|i| {
            crash_looping(
                pod(&format!("p{i}"), "old", Some(0), Some(true)),
                i + 1,
                "Error, exit code 1",
            )
        })
        .collect();
    let mut w = World::new(spec(vec![]), target(5, "old"), pods);
    let p = w.step(1);
    let m = &cond(&p, conditions::SIDECAR_HEALTHY).message;
    assert!(
        m.contains("in 5 of 5 pods: pod p4 restarted it 5 times"),
        "{m}"
    );
    assert!(m.contains("; and 2 more"), "{m}");
    assert!(!m.contains("pod p0"), "{m}");
}

#[test]
fn sidecar_restarts_of_new_pods_count_toward_max_restarts() {
    let mut s = spec(vec![Step::admit_count(1), Step::admit_percent(100)]);
    s.failure.max_restarts = 2;
    s.failure.action = FailureAction::Pause;
    let mut w = World::rolling(
        s,
        2,
        vec![
            pod("o1", "old", Some(0), Some(true)),
            crash_looping(pod("n1", "new", None, None), 3, "Error, exit code 1"),
        ],
    );
    let p = w.step(5);
    let c = cond(&p, conditions::DEGRADED);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", reasons::TOO_MANY_RESTARTS)
    );
    assert!(
        c.message
            .contains("pod n1 of revision new restarted 3 times (its quiesce sidecar)"),
        "{}",
        c.message
    );
}

#[test]
fn the_last_stage_pre_admits_new_pods_when_min_healthy_is_zero() {
    let mut w = World::rolling(
        spec(vec![]),
        1,
        vec![
            pod("o1", "old", Some(0), Some(true)),
            pod("n1", "new", None, None),
        ],
    );
    w.o.pods[0].terminating = true;
    let p = w.step(5);
    assert_eq!(
        admitted(&p),
        vec!["n1"],
        "gate opened before its containers"
    );
    w.apply_gates(&p, 5);
    let p = w.step(6);
    assert_eq!(
        p.status.phase,
        Some(Phase::Progressing),
        "not complete while the admitted pod's containers are not ready"
    );
    assert_eq!(
        p.status.last_progress_time,
        Some(Time(at(0))),
        "opening the gate early is not progress"
    );
    w.pod_mut("n1").containers_ready_since = Some(at(8));
    let p = w.step(9);
    assert_eq!(p.status.phase, Some(Phase::Completed));
    assert_eq!(p.status.last_progress_time, Some(Time(at(9))));
}

#[test]
fn a_pre_admitted_pod_makes_progress_when_its_containers_turn_ready() {
    let mut s = spec(vec![]);
    s.failure.progress_deadline_seconds = 60;
    let mut w = World::rolling(
        s,
        2,
        vec![pod("n1", "new", None, None), pod("n2", "new", None, None)],
    );
    let p = w.step(1);
    assert_eq!(admitted(&p), vec!["n1", "n2"]);
    w.apply_gates(&p, 1);
    w.pod_mut("n1").containers_ready_since = Some(at(40));
    let p = w.step(41);
    assert_eq!(p.status.last_progress_time, Some(Time(at(40))));
    // n2 never gets ready: the deadline counts from n1's readiness.
    let p = w.step(99);
    assert_eq!(p.status.phase, Some(Phase::Progressing));
    let p = w.step(100);
    assert_eq!(
        cond(&p, conditions::DEGRADED).reason,
        reasons::PROGRESS_DEADLINE_EXCEEDED
    );
}

#[test]
fn with_min_healthy_seconds_the_gate_waits_for_ready_containers() {
    let mut s = spec(vec![]);
    s.readiness.min_healthy_seconds = 5;
    let mut w = World::rolling(s, 1, vec![pod("n1", "new", None, None)]);
    let p = w.step(1);
    assert_eq!(held(&p), vec![("n1", reasons::CONTAINERS_NOT_READY)]);
}
