//! Which pods get the gate: stable pods once ready, new pods up to the step's target (oldest
//! ready first, after `minHealthySeconds`), the rest held with a reason and a heartbeat.

use super::*;

impl<'a> Planner<'a> {
    /// Pods not of `update` (or every pod without a rollout): admitted once containers are ready.
    pub(super) fn admit_outside_rollout(&mut self, update: Option<&str>) {
        let mut actions = Vec::new();
        for pod in &self.o.pods {
            if !pod.has_gate || pod.terminating || gate_ready(pod) {
                continue;
            }
            if update.is_some() && pod.revision.as_deref() == update {
                continue;
            }
            if pod.containers_ready_since.is_some() {
                actions.push(Action::SetGate {
                    pod: pod.name.clone(),
                    ready: true,
                    reason: reasons::STABLE_POD,
                    message: match update {
                        Some(_) => "pod of an older revision".to_owned(),
                        None => "no rollout in progress".to_owned(),
                    },
                });
            }
        }
        self.actions.extend(actions);
    }

    /// The last stage (no steps left): every new pod goes in once healthy. With
    /// `minHealthySeconds: 0` nothing is left to wait for but the pod's containers, which the
    /// kubelet already requires for `Ready`: the gate opens at once ("pre-admitted"), so the pod
    /// turns Ready the moment its containers do. Opening it after them costs a kubelet status
    /// round (the kubelet recomputes `Ready` on its next probe result — measured 2 s a pod
    /// with a 2 s probe period, paid once per batch of a rollout).
    pub(super) fn admit_new_final(&mut self, update: &str, desired: i32, admitted: i32) {
        let pre_admit = self.spec.readiness.min_healthy().is_zero();
        self.record_ready_progress(update);
        self.admit_new(update, desired, admitted, pre_admit);
    }

    /// A pre-admitted pod makes progress when its containers turn ready, not when its gate
    /// opened: the progress deadline must still catch new pods that never get ready.
    pub(super) fn record_ready_progress(&mut self, update: &str) {
        let newest_ready = self
            .o
            .pods
            .iter()
            .filter(|p| !p.terminating && p.revision.as_deref() == Some(update) && gate_ready(p))
            .filter_map(|p| p.containers_ready_since)
            .max();
        let last = self.status.last_progress_time.as_ref().map(|t| t.0);
        if let Some(ready) = newest_ready
            && last.is_none_or(|last| ready > last)
        {
            self.status.last_progress_time = Some(Time(ready.min(self.now)));
        }
    }

    /// Admits healthy new pods until `target` are admitted; holds the others. With `pre_admit`,
    /// pods whose containers are not ready yet are admitted too (see [`Self::admit_new_final`]).
    pub(super) fn admit_new(
        &mut self,
        update: &str,
        target: i32,
        mut admitted: i32,
        pre_admit: bool,
    ) {
        self.admit_outside_rollout(Some(update));
        let min_healthy = self.spec.readiness.min_healthy();
        let mut candidates: Vec<&PodView> = self.gated_new(update).collect();
        // Oldest-ready first: the pods that waited longest go in first.
        candidates.sort_by(|a, b| {
            (
                a.containers_ready_since.is_none(),
                a.containers_ready_since,
                &a.name,
            )
                .cmp(&(
                    b.containers_ready_since.is_none(),
                    b.containers_ready_since,
                    &b.name,
                ))
        });
        let mut progressed = false;
        for pod in candidates {
            let (reason, message) = match pod.containers_ready_since {
                None if pre_admit && admitted < target => {
                    admitted += 1;
                    self.actions.push(Action::SetGate {
                        pod: pod.name.clone(),
                        ready: true,
                        reason: reasons::ADMITTED,
                        message: "admitted before its containers are ready (last step, minHealthySeconds 0): Ready follows its containers".to_owned(),
                    });
                    continue;
                }
                None => (
                    reasons::CONTAINERS_NOT_READY,
                    "containers not ready".to_owned(),
                ),
                Some(since) => {
                    let healthy_at = add(since, min_healthy);
                    if self.now < healthy_at {
                        self.timers.push(healthy_at);
                        (
                            reasons::WAITING_FOR_MIN_HEALTHY,
                            format!(
                                "containers ready for less than minHealthySeconds {}",
                                self.spec.readiness.min_healthy_seconds
                            ),
                        )
                    } else if admitted < target {
                        admitted += 1;
                        progressed = true;
                        self.actions.push(Action::SetGate {
                            pod: pod.name.clone(),
                            ready: true,
                            reason: reasons::ADMITTED,
                            message: format!(
                                "admitted at step {} ({admitted} of {target})",
                                self.step_label()
                            ),
                        });
                        continue;
                    } else {
                        (
                            reasons::WAITING_FOR_STEP,
                            format!(
                                "step {} admits {target} new pods, all admitted",
                                self.step_label()
                            ),
                        )
                    }
                }
            };
            self.hold_pod(pod, reason, message);
        }
        if progressed {
            self.status.last_progress_time = Some(Time(self.now));
        }
    }

    /// Holds every not-yet-admitted new pod; still admits pods of other revisions.
    pub(super) fn hold_new(&mut self, update: &str, hold: Hold, why: &str) {
        self.admit_outside_rollout(Some(update));
        let reason = match hold {
            Hold::Paused => reasons::PAUSED,
            Hold::Drain => reasons::WAITING_FOR_DRAIN,
        };
        let pods: Vec<&PodView> = self.gated_new(update).collect();
        for pod in pods {
            self.hold_pod(pod, reason, why.to_owned());
        }
    }

    /// Writes `False` with `reason` unless already there with a fresh heartbeat.
    pub(super) fn hold_pod(&mut self, pod: &PodView, reason: &'static str, message: String) {
        let heartbeat = heartbeat_interval(self.spec);
        let fresh = pod.gate.as_ref().is_some_and(|g| {
            !g.ready
                && g.reason == reason
                && g.last_probe.is_some_and(|t| self.now < add(t, heartbeat))
        });
        if fresh {
            let last = pod
                .gate
                .as_ref()
                .and_then(|g| g.last_probe)
                .unwrap_or(self.now);
            self.timers.push(add(last, heartbeat));
            return;
        }
        self.timers.push(add(self.now, heartbeat));
        self.actions.push(Action::SetGate {
            pod: pod.name.clone(),
            ready: false,
            reason,
            message,
        });
    }

    /// Live new-revision pods whose gate is still closed.
    fn gated_new<'u>(&self, update: &'u str) -> impl Iterator<Item = &'a PodView> + use<'a, 'u> {
        let observed: &'a Observed = self.o;
        observed.pods.iter().filter(move |p| {
            p.has_gate && !p.terminating && p.revision.as_deref() == Some(update) && !gate_ready(p)
        })
    }

    /// New-revision pods whose gate is already `True`.
    pub(super) fn admitted_new(&self, update: &str) -> i32 {
        let n = self
            .o
            .pods
            .iter()
            .filter(|p| !p.terminating && p.revision.as_deref() == Some(update))
            .filter(|p| gate_ready(p) || !p.has_gate && p.containers_ready_since.is_some())
            .count();
        i32::try_from(n).unwrap_or(i32::MAX)
    }

    /// Fills the replica counts (including this plan's admissions); returns
    /// (updated, admitted, ready).
    pub(super) fn counts(&mut self, update: Option<&str>) -> (i32, i32, i32) {
        let admitted_now: Vec<&str> = self
            .actions
            .iter()
            .filter_map(Action::admitted_pod)
            .collect();
        let live = || self.o.pods.iter().filter(|p| !p.terminating);
        let is_in =
            |p: &PodView| gate_ready(p) || !p.has_gate || admitted_now.contains(&p.name.as_str());
        let revision = update.or(self.status.update_revision.as_deref());
        let updated = live().filter(|p| p.revision.as_deref() == revision).count();
        let admitted = live()
            .filter(|p| p.revision.as_deref() == revision && is_in(p))
            .count();
        let ready = live()
            .filter(|p| p.containers_ready_since.is_some() && is_in(p))
            .count();
        let c = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        self.status.updated_replicas = Some(c(updated));
        self.status.admitted_replicas = Some(c(admitted));
        self.status.ready_replicas = Some(c(ready));
        (c(updated), c(admitted), c(ready))
    }
}
