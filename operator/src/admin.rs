//! The admin server (plain HTTP on the admin port): `/livez`, `/readyz` (the webhook has a
//! certificate and the policy cache is synced) and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::certs::CertStore;
use crate::metrics::Metrics;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    /// Metrics to expose.
    pub metrics: Arc<Metrics>,
    /// The webhook certificate.
    pub certs: Arc<CertStore>,
    /// Set once the webhook's caches are synced.
    pub caches_synced: Arc<AtomicBool>,
    /// Set when the replica is stopping (its webhook drains).
    pub draining: Arc<AtomicBool>,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping\n".to_owned());
    }
    match (s.certs.ready(), s.caches_synced.load(Ordering::Relaxed)) {
        (true, true) => (StatusCode::OK, "ok\n".to_owned()),
        (cert, caches) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: certificate installed={cert}, caches synced={caches}\n"),
        ),
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    #[tokio::test]
    async fn readiness_waits_for_certificate_and_caches() {
        let state = AdminState {
            metrics: Arc::new(Metrics::default()),
            certs: Arc::new(CertStore::default()),
            caches_synced: Arc::new(AtomicBool::new(true)),
            draining: Arc::new(AtomicBool::new(false)),
        };
        let get = |path: &'static str| {
            let app = router(state.clone());
            async move {
                app.oneshot(Request::get(path).body(Body::empty()).unwrap())
                    .await
                    .unwrap()
                    .status()
            }
        };
        assert_eq!(get("/livez").await, StatusCode::OK);
        assert_eq!(get("/readyz").await, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get("/metrics").await, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_stopping_replica_is_not_ready() {
        let certs = Arc::new(CertStore::default());
        let state = AdminState {
            metrics: Arc::new(Metrics::default()),
            certs,
            caches_synced: Arc::new(AtomicBool::new(true)),
            draining: Arc::new(AtomicBool::new(true)),
        };
        let res = router(state)
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"stopping\n");
    }
}
