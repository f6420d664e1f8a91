//! Whether the pod's IP is still a ready endpoint in any EndpointSlice of its namespace: a
//! watch started when a drain starts, dropped when it ends.

use std::collections::HashMap;

use tokio::sync::watch;

use crate::apiserver::{
    ApiClient, endpoint_slices_path,
    types::EndpointSlice,
    watch::{Event, Watcher},
};
use crate::metrics::Metrics;

/// Whether `ip` is a ready endpoint of `slice` (an absent `ready` means ready, per the API).
pub fn ip_ready_in(slice: &EndpointSlice, ip: &str) -> bool {
    slice.endpoints.iter().any(|e| {
        e.addresses.iter().any(|a| a == ip)
            && e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
    })
}

/// A running watch; dropping it stops the watch.
#[derive(Debug)]
pub struct EndpointWatch {
    /// `None` until the first full list; then whether any slice has the IP ready.
    pub ready: watch::Receiver<Option<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EndpointWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching the EndpointSlices of `namespace` for `ip`.
pub fn watch_pod_ip(
    client: ApiClient,
    namespace: &str,
    ip: String,
    metrics: std::sync::Arc<Metrics>,
) -> EndpointWatch {
    let (tx, rx) = watch::channel(None);
    let mut watcher: Watcher<EndpointSlice> =
        Watcher::new(client, endpoint_slices_path(namespace), None);
    let task = tokio::spawn(async move {
        let mut slices: HashMap<String, bool> = HashMap::new();
        let publish = |m: &HashMap<String, bool>| {
            let _ = tx.send(Some(m.values().any(|v| *v)));
        };
        loop {
            match watcher.next().await {
                Ok(Event::Listed(all)) => {
                    slices = all
                        .iter()
                        .map(|s| (s.metadata.name.clone(), ip_ready_in(s, &ip)))
                        .collect();
                    publish(&slices);
                }
                Ok(Event::Applied(s)) => {
                    slices.insert(s.metadata.name.clone(), ip_ready_in(&s, &ip));
                    publish(&slices);
                }
                Ok(Event::Deleted(s)) => {
                    slices.remove(&s.metadata.name);
                    publish(&slices);
                }
                Err(e) => {
                    metrics
                        .api_errors
                        .get_or_create(&vec![("op", "watch_endpointslices")])
                        .inc();
                    tracing::warn!(error = %e, "watching EndpointSlices failed; retrying");
                }
            }
        }
    });
    EndpointWatch { ready: rx, task }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc"}, "addressType": "IPv4", "endpoints": endpoints
        }))
        .unwrap()
    }

    #[test]
    fn ready_terminating_and_absent() {
        let s = slice(serde_json::json!([
            {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.0.0.3"]}
        ]));
        assert!(ip_ready_in(&s, "10.0.0.1"));
        assert!(
            !ip_ready_in(&s, "10.0.0.2"),
            "terminating endpoints are not ready"
        );
        assert!(ip_ready_in(&s, "10.0.0.3"), "absent ready means ready");
        assert!(!ip_ready_in(&s, "10.0.0.9"));
    }
}
