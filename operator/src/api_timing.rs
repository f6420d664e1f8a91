//! How long the apiserver takes to answer the operator: a tower layer on the kube client that
//! times each request until its response headers, by verb and resource. It tells a slow
//! reconcile that waits on the apiserver apart from one that spends its own time
//! (`reconcile_decision_seconds`). Watches are not timed (their response is the stream).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Method, Request};
use prometheus_client::metrics::{family::Family, histogram::Histogram};

use crate::metrics::ApiCall;

/// The histogram family requests are recorded in.
pub type ApiDurations = Family<ApiCall, Histogram, fn() -> Histogram>;

/// Buckets of API request durations (seconds).
pub fn api_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ])
}

/// The verb and resource of a request to the apiserver, as the apiserver's own metrics name
/// them (`LIST` for a GET of a collection, `pods/status` for a subresource); `None` for a
/// watch. Paths: `/api/v1/[namespaces/NS/]RESOURCE[/NAME[/SUB]]` and
/// `/apis/GROUP/VERSION/[namespaces/NS/]RESOURCE[/NAME[/SUB]]`.
pub fn verb_and_resource(
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Option<(String, String)> {
    let watch = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    if watch {
        return None;
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match parts.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return Some((method.as_str().to_owned(), "other".to_owned())),
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
        [] => ("other".to_owned(), false),
    };
    let verb = if *method == Method::GET && !named {
        "LIST".to_owned()
    } else {
        method.as_str().to_owned()
    };
    Some((verb, resource))
}

/// The layer for [`kube::client::ClientBuilder::with_layer`].
#[derive(Clone)]
pub struct ApiTimingLayer {
    durations: Arc<ApiDurations>,
}

impl ApiTimingLayer {
    /// Records into `durations`.
    pub fn new(durations: Arc<ApiDurations>) -> Self {
        Self { durations }
    }
}

impl<S> tower::Layer<S> for ApiTimingLayer {
    type Service = ApiTiming<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiTiming {
            inner,
            durations: self.durations.clone(),
        }
    }
}

/// See [`ApiTimingLayer`].
#[derive(Clone)]
pub struct ApiTiming<S> {
    inner: S,
    durations: Arc<ApiDurations>,
}

impl<S, B> tower::Service<Request<B>> for ApiTiming<S>
where
    S: tower::Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let labels = verb_and_resource(req.method(), req.uri().path(), req.uri().query());
        let durations = self.durations.clone();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            if let Some((verb, resource)) = labels {
                durations
                    .get_or_create(&ApiCall { verb, resource })
                    .observe(start.elapsed().as_secs_f64());
            }
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vr(method: Method, path: &str, query: Option<&str>) -> Option<(String, String)> {
        verb_and_resource(&method, path, query)
    }

    fn pair(verb: &str, resource: &str) -> Option<(String, String)> {
        Some((verb.to_owned(), resource.to_owned()))
    }

    #[test]
    fn names_requests_as_the_apiserver_does() {
        assert_eq!(
            vr(
                Method::PATCH,
                "/api/v1/namespaces/ns/pods/web-1/status",
                None
            ),
            pair("PATCH", "pods/status")
        );
        assert_eq!(
            vr(
                Method::GET,
                "/api/v1/namespaces/ns/pods",
                Some("labelSelector=a")
            ),
            pair("LIST", "pods")
        );
        assert_eq!(
            vr(Method::GET, "/api/v1/pods", Some("limit=500")),
            pair("LIST", "pods")
        );
        assert_eq!(
            vr(
                Method::GET,
                "/apis/apps/v1/namespaces/ns/deployments/web",
                None
            ),
            pair("GET", "deployments")
        );
        assert_eq!(
            vr(
                Method::PATCH,
                "/apis/quiesce.dev/v1alpha1/namespaces/ns/rolloutpolicies/p/status",
                None
            ),
            pair("PATCH", "rolloutpolicies/status")
        );
        assert_eq!(
            vr(
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/ns/events",
                None
            ),
            pair("POST", "events")
        );
        assert_eq!(
            vr(
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/q/leases/op",
                None
            ),
            pair("PUT", "leases")
        );
        assert_eq!(vr(Method::GET, "/version", None), pair("GET", "other"));
    }

    #[test]
    fn watches_are_not_timed() {
        assert_eq!(
            vr(
                Method::GET,
                "/api/v1/pods",
                Some("labelSelector=x&watch=true&timeoutSeconds=290")
            ),
            None
        );
        assert_eq!(vr(Method::GET, "/api/v1/pods", Some("watch=1")), None);
    }
}
