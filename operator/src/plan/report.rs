//! What the policy reports about its pods besides the rollout: drain statistics, pods that
//! run without the sidecar, a grace period too short for the drain, whether the drain proxy
//! sees the Services' traffic, and sidecars that crash.

use super::*;

impl Planner<'_> {
    pub(super) fn count_drains(&mut self) {
        if self.o.new_drains.is_empty() {
            return;
        }
        let invalid = self.o.new_drains.iter().filter(|d| d.invalid).count();
        if invalid > 0 {
            let note = format!(
                "{invalid} drain report(s) not plausible (unparsable, or a number out of bounds): \
                 counted as drains, their numbers ignored"
            );
            self.actions
                .push(Action::warning(INVALID_DRAIN_REPORT, note));
        }
        let stats = self.status.drains.get_or_insert_with(DrainStats::default);
        for d in &self.o.new_drains {
            if d.forced {
                stats.forced += 1;
            } else {
                stats.completed += 1;
            }
            if let Some(ms) = d.duration_millis {
                stats.last_duration_millis = Some(ms);
                stats.max_duration_millis = Some(stats.max_duration_millis.unwrap_or(0).max(ms));
            }
        }
        // In the policy's Events, between the steps they happened in: a forced drain cut
        // connections, which is what a person reading the rollout's timeline looks for.
        let forced: Vec<&DrainReport> = self.o.new_drains.iter().filter(|d| d.forced).collect();
        if !forced.is_empty() {
            let longest = forced
                .iter()
                .filter(|d| !d.invalid)
                .filter_map(|d| d.duration_millis)
                .max()
                .map(|ms| format!(" after {:.1}s", ms as f64 / 1000.0))
                .unwrap_or_default();
            let note = format!(
                "{} drain(s) forced{longest} at drain.timeoutSeconds {}: connections were still open and were cut (kubectl quiesce drains {} shows where the time went)",
                forced.len(),
                self.spec.drain.timeout_seconds,
                self.o.policy.name
            );
            // One Event per batch: the running total makes each its own series.
            let total = self.status.drains.as_ref().map_or(0, |d| d.forced);
            self.actions.push(
                Action::warning(DRAINS_FORCED, note).with_action(format!("ForceDrain{total}")),
            );
        }
    }

    pub(super) fn check_injection(&mut self) {
        let live: Vec<&PodView> = self.o.pods.iter().filter(|p| !p.terminating).collect();
        let missing = pods_without_sidecar(&self.o.pods);
        if missing.is_empty() {
            self.set(
                conditions::INJECTED,
                true,
                reasons::ALL_PODS_INJECTED,
                format!("all {} pods run the quiesce sidecar", live.len()),
            );
        } else {
            let msg = format!(
                "{} of {} pods run without the quiesce sidecar and are not drained (created while the webhook was unavailable, or opted out): {}",
                missing.len(),
                live.len(),
                missing.join(", ")
            );
            if self.set(
                conditions::INJECTED,
                false,
                reasons::PODS_NOT_INJECTED,
                msg.clone(),
            ) {
                self.actions
                    .push(Action::warning(reasons::PODS_NOT_INJECTED, msg));
            }
        }
    }

    pub(super) fn check_grace_period(&mut self, t: &TargetView) {
        let budget = self.spec.drain.budget_seconds();
        let grace = t.termination_grace_period_seconds;
        if self.spec.drain.grace_period_covers(grace, 0) {
            self.set(
                conditions::DRAIN_BUDGET_SUFFICIENT,
                true,
                reasons::GRACE_PERIOD_SUFFICIENT,
                format!(
                    "terminationGracePeriodSeconds {grace} covers the drain budget of {budget}s"
                ),
            );
        } else {
            let msg = format!(
                "terminationGracePeriodSeconds {grace} of Deployment {} is shorter than the drain budget of {budget}s (endpointTimeoutSeconds + quietPeriod + timeoutSeconds): the kubelet may kill pods mid-drain; raise it to at least {budget} plus the app's own shutdown time",
                t.name
            );
            if self.set(
                conditions::DRAIN_BUDGET_SUFFICIENT,
                false,
                reasons::GRACE_PERIOD_TOO_SHORT,
                msg.clone(),
            ) {
                self.actions
                    .push(Action::warning(reasons::GRACE_PERIOD_TOO_SHORT, msg));
            }
        }
    }

    pub(super) fn check_proxy_takeover(&mut self, t: &TargetView) {
        if self.spec.drain.mode != DrainMode::Proxy {
            self.status
                .conditions
                .retain(|c| c.type_ != conditions::PROXY_TAKEOVER);
            return;
        }
        let (ok, reason, msg) = proxy_takeover(t, &self.o.services);
        if self.set(conditions::PROXY_TAKEOVER, ok, reason, msg.clone()) && !ok {
            self.actions.push(Action::warning(reason, msg));
        }
    }

    pub(super) fn check_sidecars(&mut self) {
        let (ok, reason, msg) = sidecar_health(&self.o.pods);
        if self.set(conditions::SIDECAR_HEALTHY, ok, reason, msg.clone()) && !ok {
            self.actions.push(Action::warning(reason, msg.clone()));
        }
        if !ok {
            self.note = Some(msg);
        }
    }
}

/// Whether the drain proxy sees the Services' traffic to the target's pods (`drain.mode:
/// Proxy`). The webhook renames the app containers' *named* TCP ports and gives their names to
/// the sidecar's proxy listeners, so a Service whose `targetPort` is a name reaches the proxy
/// (the EndpointSlice controller resolves names per pod), while a numeric `targetPort` goes
/// straight to the app. Services whose selector does not match the pod template's labels, and
/// Services without a selector, are not about these pods and are ignored.
pub fn proxy_takeover(t: &TargetView, services: &[ServiceView]) -> ConditionDecision {
    let named: Vec<(&str, i32)> = t
        .app_ports
        .iter()
        .filter_map(|p| Some((p.name.as_deref().filter(|n| !n.is_empty())?, p.number)))
        .collect();
    let mut selecting: Vec<&ServiceView> = services
        .iter()
        .filter(|s| {
            !s.selector.is_empty()
                && s.selector
                    .iter()
                    .all(|(k, v)| t.template_labels.get(k) == Some(v))
        })
        .collect();
    selecting.sort_by(|a, b| a.name.cmp(&b.name));
    let names = || {
        selecting
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if named.is_empty() {
        let services = if selecting.is_empty() {
            String::new()
        } else {
            format!(" (Services: {})", names())
        };
        return (
            false,
            reasons::NO_NAMED_PORT,
            format!(
                "Deployment {} declares no named container port, so the drain proxy takes over nothing and its pods drain in Observe mode: name the app's port (containers[].ports[].name, e.g. http) and set targetPort to that name in its Services{services}",
                t.name
            ),
        );
    }
    let mut fixes = Vec::new();
    for s in &selecting {
        for p in &s.ports {
            let TargetPort::Number(number) = p.target else {
                continue;
            };
            let fix = match named.iter().find(|(_, n)| *n == number) {
                Some((name, _)) => {
                    format!(
                        "set targetPort: {name} instead of {number} in Service {}",
                        s.name
                    )
                }
                None => format!(
                    "name container port {number} (containers[].ports[].name) and set targetPort to that name instead of {number} in Service {}",
                    s.name
                ),
            };
            fixes.push(format!(
                "Service {} port {} targets port {number} by number, so its traffic bypasses the drain proxy (drained as in Observe mode): {fix}",
                s.name, p.port
            ));
        }
    }
    if !fixes.is_empty() {
        return (false, reasons::NUMERIC_TARGET_PORT, fixes.join("; "));
    }
    let msg = if selecting.is_empty() {
        format!(
            "no Service selects the pods of Deployment {}; the proxy serves named ports {}",
            t.name,
            named.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        )
    } else {
        format!(
            "every Service selecting the pods targets a named port the drain proxy serves: {}",
            names()
        )
    };
    (true, reasons::ALL_SERVICES_NAMED, msg)
}

/// Separates the status message from the note about crash-looping sidecars.
pub(super) const NOTE_MARKER: &str = "; SidecarHealthy=False: ";

/// Longest termination message quoted per pod.
const MAX_TERMINATION_MESSAGE: usize = 200;

/// Pods named in `SidecarHealthy=False`; the rest are counted.
const MAX_PODS_NAMED: usize = 3;

/// The `SidecarHealthy` condition: `False` while the quiesce sidecar of any pod has restarted
/// or is in `CrashLoopBackOff`, naming the pods (crash-looping first, then most restarts) with
/// the sidecar's last termination.
pub fn sidecar_health(pods: &[PodView]) -> ConditionDecision {
    let with_sidecar = pods.iter().filter(|p| p.sidecar.is_some()).count();
    let mut bad: Vec<(&PodView, &SidecarView)> = pods
        .iter()
        .filter_map(|p| Some((p, p.sidecar.as_ref()?)))
        .filter(|(_, s)| s.restarts > 0 || s.crash_looping)
        .collect();
    if bad.is_empty() {
        return (
            true,
            reasons::SIDECAR_RUNNING,
            format!("the quiesce sidecar runs without restarts in all {with_sidecar} pods"),
        );
    }
    bad.sort_by(|(a, sa), (b, sb)| {
        (!sa.crash_looping, -sa.restarts, &a.name).cmp(&(!sb.crash_looping, -sb.restarts, &b.name))
    });
    let described: Vec<String> = bad
        .iter()
        .take(MAX_PODS_NAMED)
        .map(|(p, s)| {
            let mut d = format!(
                "pod {} restarted it {} time{}",
                p.name,
                s.restarts,
                if s.restarts == 1 { "" } else { "s" }
            );
            if s.crash_looping {
                d.push_str(" and is in CrashLoopBackOff");
            }
            if let Some(t) = &s.last_termination {
                d.push_str(&format!(
                    " (last termination: {})",
                    one_line(t, MAX_TERMINATION_MESSAGE)
                ));
            }
            d
        })
        .collect();
    let more = match bad.len().saturating_sub(MAX_PODS_NAMED) {
        0 => String::new(),
        n => format!("; and {n} more"),
    };
    (
        false,
        reasons::SIDECAR_CRASH_LOOPING,
        format!(
            "the quiesce sidecar restarted in {} of {with_sidecar} pods: {}{more}; see kubectl logs POD -c quiesce-sidecar --previous",
            bad.len(),
            described.join("; ")
        ),
    )
}
