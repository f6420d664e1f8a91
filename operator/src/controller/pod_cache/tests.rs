//! The namespace watches against a mock apiserver: what they request, when they start and stop.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::json;

use super::*;

/// A pod list of `namespace` holding the pods `names`.
fn pod_list(namespace: &str, names: &[&str]) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "PodList",
        "metadata": {"resourceVersion": "7"},
        "items": names.iter().map(|n| json!({
            "metadata": {"name": n, "namespace": namespace, "uid": format!("{n}-uid"),
                         "labels": {"pod-template-hash": "abc"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": "web-abc", "uid": "rs-uid", "controller": true}]},
        })).collect::<Vec<_>>(),
    })
}

/// A mock apiserver that answers every pod LIST of namespace `shop` with `names` and keeps
/// every WATCH open; it records the request URIs.
fn apiserver(names: &'static [&'static str]) -> (Client, Arc<Mutex<Vec<String>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut open_watches = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let uri = request.uri().to_string();
            log.lock().unwrap().push(uri.clone());
            if uri.contains("watch=true") {
                open_watches.push(send);
            } else if uri.starts_with("/api/v1/namespaces/shop/pods") {
                let body = serde_json::to_vec(&pod_list("shop", names)).unwrap();
                send.send_response(Response::builder().body(Body::from(body)).unwrap());
            } else {
                let body = serde_json::to_vec(&pod_list("", &[])).unwrap();
                send.send_response(Response::builder().body(Body::from(body)).unwrap());
            }
        }
    });
    (Client::new(service, "default"), seen)
}

fn web_abc() -> Vec<String> {
    vec!["web-abc".to_owned()]
}

fn names(pods: Vec<Arc<CachedPod>>) -> Vec<String> {
    let mut names: Vec<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_namespace_is_watched_from_its_first_policy_to_its_last() {
    let (client, seen) = apiserver(&["old-1", "old-2"]);
    let (cache, _touched) = PodCache::watch(client);
    // No policy: nothing of the namespace is listed or held.
    assert!(cache.owned_by("shop", &web_abc()).is_empty());
    assert!(seen.lock().unwrap().is_empty());

    let shop = BTreeSet::from(["shop".to_owned()]);
    assert_eq!(cache.watch_namespaces(&shop), 1);
    assert!(
        cache.listed("shop").await,
        "the namespace's pods are listed"
    );
    assert_eq!(
        names(cache.owned_by("shop", &web_abc())),
        ["old-1", "old-2"]
    );
    assert!(cache.get("shop", "old-1").is_some());
    assert!(
        cache.owned_by("shop", &["web-other".to_owned()]).is_empty(),
        "only the pods of the ReplicaSets asked for"
    );
    assert!(cache.owned_by("other", &web_abc()).is_empty());
    let list = seen.lock().unwrap()[0].clone();
    assert!(
        list.starts_with("/api/v1/namespaces/shop/pods?")
            && list.contains("labelSelector=pod-template-hash%2C%21quiesce.dev%2Fpolicy"),
        "namespaced LIST of the pods the webhook did not inject: {list}"
    );
    // A second call with the same namespaces starts nothing new.
    assert_eq!(cache.watch_namespaces(&shop), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let lists = |seen: &Mutex<Vec<String>>| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|u| !u.contains("watch=true"))
            .count()
    };
    assert_eq!(lists(&seen), 1);

    // The last policy goes: the watch stops and its pods are dropped.
    assert_eq!(cache.watch_namespaces(&BTreeSet::new()), 0);
    assert!(cache.owned_by("shop", &web_abc()).is_empty());
    assert!(cache.get("shop", "old-1").is_none());
}

#[tokio::test]
async fn a_reconcile_in_a_namespace_not_yet_watched_starts_its_watch() {
    let (client, _) = apiserver(&["old-1"]);
    let (cache, _touched) = PodCache::watch(client);
    assert!(cache.listed("shop").await);
    assert_eq!(names(cache.owned_by("shop", &web_abc())), ["old-1"]);
}

#[test]
fn pods_are_watched_in_each_namespace_holding_a_policy_once() {
    let policy = |ns: &str, name: &str| {
        let mut p = quiesce_api::RolloutPolicy::new(
            name,
            quiesce_api::RolloutPolicySpec::for_deployment(name),
        );
        p.metadata.namespace = Some(ns.into());
        Arc::new(p)
    };
    let namespaces = policy_namespaces(&[policy("b", "x"), policy("a", "y"), policy("b", "z")]);
    assert_eq!(
        namespaces.into_iter().collect::<Vec<_>>(),
        vec!["a".to_string(), "b".to_string()]
    );
    assert!(policy_namespaces(&[]).is_empty());
}

#[test]
fn the_two_selectors_are_disjoint() {
    assert_eq!(injected_selector(), "quiesce.dev/policy");
    assert_eq!(
        not_injected_selector(),
        "pod-template-hash,!quiesce.dev/policy"
    );
}
