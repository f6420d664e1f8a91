//! The pure parts of the scale benchmark (`make bench-scale`, `src/bin/scalebench/`):
//! quantiles of Prometheus histograms between two scrapes and of measured latencies, and the
//! objects it creates on kwok's simulated nodes.

use std::time::Duration;

/// The cumulative buckets `(le, count)` of histogram `name` in a `/metrics` text (all series
/// summed, `+Inf` last).
pub fn histogram_buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    histogram_buckets_where(text, name, &[])
}

/// [`histogram_buckets`] of the series that carry every label of `labels`.
pub fn histogram_buckets_where(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in text.lines().filter(|l| l.starts_with(&prefix)).filter(|l| {
        wanted
            .iter()
            .all(|w| l.contains(&format!("{{{w}")) || l.contains(&format!(",{w}")))
    }) {
        let Some(le) = line
            .split("le=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
        else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse() {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        let Some(count) = line.rsplit(' ').next().and_then(|c| c.parse::<f64>().ok()) else {
            continue;
        };
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += count,
            None => buckets.push((le, count)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// `after - before`, bucket by bucket (the observations between two scrapes).
pub fn bucket_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|(le, c)| {
            let was = before
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, (c - was).max(0.0))
        })
        .collect()
}

/// The `q` quantile of cumulative buckets, interpolated linearly inside the bucket as
/// Prometheus' `histogram_quantile` does; `None` without observations. A quantile in the
/// `+Inf` bucket is the highest finite bound.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            let fraction = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * fraction);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

/// The `q` quantile of measured durations (nearest rank); `None` when there are none.
pub fn quantile(q: f64, values: &mut [Duration]) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

/// Annotation, label and taint of kwok's nodes: kwok manages the nodes with the annotation,
/// the benchmark's pods select the label and tolerate the taint (nothing else lands there).
pub const KWOK_NODE_KEY: &str = "kwok.x-k8s.io/node";

/// A simulated node for kwok: room for `pods` pods.
pub fn kwok_node(name: &str, pods: usize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_KEY: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name},
        },
        "spec": {"taints": [{"key": KWOK_NODE_KEY, "value": "fake", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": {"cpu": "1k", "memory": "1Ti", "pods": pods.to_string()},
            "capacity": {"cpu": "1k", "memory": "1Ti", "pods": pods.to_string()},
        },
    })
}

/// Deployment `name` of `replicas` pods on kwok's nodes, serving `version` (a template
/// change rolls it). The image is never pulled: kwok only plays the pods' lifecycle.
pub fn kwok_deployment(name: &str, replicas: i32, version: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"type": "kwok"},
                    "tolerations": [{"key": KWOK_NODE_KEY, "operator": "Exists", "effect": "NoSchedule"}],
                    "terminationGracePeriodSeconds": 60,
                    "containers": [{
                        "name": "app",
                        "image": "quiesce.local/scale-app:never-pulled",
                        "env": [{"name": "VERSION", "value": version}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
                    }],
                },
            },
        },
    })
}

/// A RolloutPolicy for Deployment `name` without steps: the gate admits each new pod once it is
/// ready, waiting for the old ones to drain (which kwok's pods do at once).
pub fn kwok_policy(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "quiesce.dev/v1alpha1",
        "kind": "RolloutPolicy",
        "metadata": {"name": name},
        "spec": {"targetRef": {"name": name}, "minHealthySeconds": 0},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "\
# TYPE x_seconds histogram
x_seconds_bucket{le=\"0.01\"} 5
x_seconds_bucket{le=\"0.1\"} 9
x_seconds_bucket{le=\"+Inf\"} 10
x_seconds_sum 1.2
x_seconds_count 10
y_seconds_bucket{le=\"0.01\"} 100
";

    #[test]
    fn histogram_quantiles_interpolate_inside_buckets() {
        let b = histogram_buckets(METRICS, "x_seconds");
        assert_eq!(b, vec![(0.01, 5.0), (0.1, 9.0), (f64::INFINITY, 10.0)]);
        assert_eq!(histogram_quantile(0.5, &b), Some(0.01));
        let p = histogram_quantile(0.7, &b).unwrap();
        assert!((p - 0.055).abs() < 1e-9, "halfway into (0.01, 0.1]: {p}");
        assert_eq!(
            histogram_quantile(0.99, &b),
            Some(0.1),
            "+Inf: highest bound"
        );
        assert_eq!(histogram_quantile(0.5, &[]), None);
    }

    #[test]
    fn a_delta_counts_only_the_observations_between_scrapes() {
        let before = vec![(0.01, 5.0), (0.1, 9.0), (f64::INFINITY, 10.0)];
        let after = vec![(0.01, 5.0), (0.1, 19.0), (f64::INFINITY, 20.0)];
        let d = bucket_delta(&before, &after);
        assert_eq!(d, vec![(0.01, 0.0), (0.1, 10.0), (f64::INFINITY, 10.0)]);
        let p = histogram_quantile(0.5, &d).unwrap();
        assert!((p - 0.055).abs() < 1e-9, "{p}");
    }

    #[test]
    fn series_chosen_by_labels() {
        let text = "h_bucket{verb=\"PATCH\",resource=\"pods/status\",le=\"0.1\"} 3\n\
                    h_bucket{verb=\"PATCH\",resource=\"pods/status\",le=\"+Inf\"} 4\n\
                    h_bucket{verb=\"PATCH\",resource=\"pods\",le=\"0.1\"} 5\n\
                    h_bucket{verb=\"PATCH\",resource=\"pods\",le=\"+Inf\"} 5\n\
                    h_bucket{verb=\"GET\",resource=\"pods/status\",le=\"+Inf\"} 9\n";
        assert_eq!(
            histogram_buckets_where(text, "h", &[("verb", "PATCH"), ("resource", "pods/status")]),
            vec![(0.1, 3.0), (f64::INFINITY, 4.0)]
        );
        assert_eq!(
            histogram_buckets_where(text, "h", &[("resource", "pods")]),
            vec![(0.1, 5.0), (f64::INFINITY, 5.0)]
        );
    }

    #[test]
    fn series_of_one_histogram_are_summed() {
        let text = "h_bucket{a=\"1\",le=\"1\"} 2\nh_bucket{a=\"2\",le=\"1\"} 3\nh_bucket{a=\"1\",le=\"+Inf\"} 2\nh_bucket{a=\"2\",le=\"+Inf\"} 4\n";
        assert_eq!(
            histogram_buckets(text, "h"),
            vec![(1.0, 5.0), (f64::INFINITY, 6.0)]
        );
    }

    #[test]
    fn nearest_rank_quantiles() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(0.5, &mut v), Some(Duration::from_millis(50)));
        assert_eq!(quantile(0.99, &mut v), Some(Duration::from_millis(99)));
        assert_eq!(quantile(0.5, &mut []), None);
    }
}
