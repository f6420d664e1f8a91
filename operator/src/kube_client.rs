//! The operator's Kubernetes client, in-cluster only: the `KUBERNETES_SERVICE_*` address and the
//! service account's CA and token, as client-go's `rest.InClusterConfig`.
//!
//! Built from kube's parts (`Config::incluster`, its base-URI layer and retry policy) rather
//! than `Config::infer` + `ClientBuilder::try_from`: those link kube's kubeconfig reader (a YAML
//! parser) and its auth plugins (exec, auth-provider with a JSONPath engine and regex) into
//! every binary, though an operator in a pod uses none of them (docs/benchmarks.md, "The
//! sidecar's TLS, features per image, and the operator's own client"). What the plugins did for a pod is [`BearerToken`] here: the
//! projected token file, re-read as client-go does.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ClientBuilder, ConfigExt};
use rustls::pki_types::CertificateDer;
use tower::retry::RetryLayer;
use tower::{BoxError, Layer, Service, ServiceBuilder};

use crate::api_timing::ApiTimingLayer;

/// How long a read token is used before the file is read again (client-go and kube re-read
/// the projected token, which the kubelet rotates well before it expires, once a minute).
pub const TOKEN_REREAD: Duration = Duration::from_secs(60);

/// The client of the apiserver the operator's pod runs against, every request timed by
/// `timing`.
pub fn in_cluster(timing: &ApiTimingLayer) -> Result<kube::Client> {
    let config = kube::Config::incluster()
        .context("in-cluster Kubernetes configuration (the operator runs in a pod)")?;
    let token_file = config
        .auth_info
        .token_file
        .clone()
        .context("in-cluster configuration without a token file")?;
    let token = BearerToken::from_file(Path::new(&token_file), TOKEN_REREAD)?;

    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(config.connect_timeout);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(config.root_cert.as_deref().unwrap_or_default())?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    let http: HttpClient<_, Body> = HttpClient::builder(TokioExecutor::new()).build(connector);

    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .layer(token)
        .map_err(BoxError::from)
        .service(http);
    Ok(ClientBuilder::new(service, config.default_namespace)
        .with_layer(timing)
        .build())
}

/// TLS to the apiserver, verified against the service account's CA (read at start, as
/// client-go's in-cluster configuration does). Not kube's `rustls_client_config`: it first asks
/// the exec plugin for a client certificate, which links the plugin machinery.
fn tls_config(ca_certificates: &[Vec<u8>]) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for der in ca_certificates {
        roots
            .add(CertificateDer::from(der.clone()))
            .context("the service account's CA certificate")?;
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `Authorization: Bearer` from a token file, re-read every `reread`; when a re-read fails the
/// last token is kept (the file may be replaced while it is read).
#[derive(Clone)]
pub struct BearerToken {
    path: PathBuf,
    reread: Duration,
    cached: Arc<Mutex<(HeaderValue, Instant)>>,
}

impl BearerToken {
    /// Reads the token now: a missing or unreadable file is an error at start.
    pub fn from_file(path: &Path, reread: Duration) -> Result<Self> {
        let header = read_header(path)?;
        Ok(Self {
            path: path.to_owned(),
            reread,
            cached: Arc::new(Mutex::new((header, Instant::now()))),
        })
    }

    /// The header for a request now.
    pub fn header(&self) -> HeaderValue {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if cached.1.elapsed() >= self.reread {
            if let Ok(fresh) = read_header(&self.path) {
                cached.0 = fresh;
            }
            cached.1 = Instant::now();
        }
        cached.0.clone()
    }
}

fn read_header(path: &Path) -> Result<HeaderValue> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let mut header = HeaderValue::try_from(format!("Bearer {}", token.trim()))
        .with_context(|| format!("the token in {} is not a header value", path.display()))?;
    header.set_sensitive(true);
    Ok(header)
}

impl<S> Layer<S> for BearerToken {
    type Service = WithBearerToken<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithBearerToken {
            inner,
            token: self.clone(),
        }
    }
}

/// A service that sets [`BearerToken`]'s header on every request.
#[derive(Clone)]
pub struct WithBearerToken<S> {
    inner: S,
    token: BearerToken,
}

impl<S, B> Service<Request<B>> for WithBearerToken<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        req.headers_mut().insert(AUTHORIZATION, self.token.header());
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_reread_after_its_interval_and_kept_when_the_file_is_gone() {
        let dir = std::env::temp_dir().join(format!("quiesce-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "first\n").unwrap();

        let cached = BearerToken::from_file(&file, Duration::from_secs(3600)).unwrap();
        std::fs::write(&file, "second").unwrap();
        assert_eq!(cached.header(), "Bearer first", "within the interval");
        assert!(cached.header().is_sensitive());

        let fresh = BearerToken::from_file(&file, Duration::ZERO).unwrap();
        std::fs::write(&file, "third").unwrap();
        assert_eq!(fresh.header(), "Bearer third", "re-read when due");
        std::fs::remove_file(&file).unwrap();
        assert_eq!(
            fresh.header(),
            "Bearer third",
            "a failed re-read keeps the last"
        );

        let err = BearerToken::from_file(&file, TOKEN_REREAD).err().unwrap();
        assert!(
            format!("{err:#}").contains("reading the token file"),
            "{err:#}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn every_request_carries_the_token() {
        let dir = std::env::temp_dir().join(format!("quiesce-token-req-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "abc").unwrap();
        let token = BearerToken::from_file(&file, TOKEN_REREAD).unwrap();
        let (mock, mut handle) = tower_test::mock::pair::<Request<()>, ()>();
        let mut svc = token.layer(mock);
        let call = tokio::spawn(async move {
            use tower::ServiceExt;
            svc.ready().await.unwrap().call(Request::new(())).await
        });
        let (req, respond) = handle.next_request().await.unwrap();
        assert_eq!(req.headers()[AUTHORIZATION], "Bearer abc");
        respond.send_response(());
        call.await.unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
