//! The sidecar's client of the Kubernetes API: in-cluster configuration as client-go reads it
//! (`KUBERNETES_SERVICE_HOST`/`PORT`, the service account's token and CA), HTTP/1.1 over
//! rustls, and the few requests a sidecar makes — get its pod, patch its pod's status, list and
//! watch ([`watch`]) — decoding only the fields it reads ([`types`]).
//!
//! Why not kube-rs: its client links the kubeconfig loader, exec and OIDC auth (a YAML and a
//! JSONPath parser, regex) even when configured in-cluster, and k8s-openapi's full `Pod`; that
//! was 3.1 of the image's 9.5 MB, and every pod of a managed Deployment carries this binary
//! (docs/benchmarks.md, "The sidecar's own API client"). The operator keeps kube-rs.

pub mod types;
pub mod watch;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::de::DeserializeOwned;

const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The kubelet rewrites a projected token well before it expires (at 80 % of its life); client-go
/// re-reads the file every minute, and so does this client.
const TOKEN_REREAD: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong talking to the apiserver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("in-cluster configuration: {what}")]
    Config {
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("request to the apiserver failed: {}", causes(.0))]
    Request(#[from] hyper_util::client::legacy::Error),
    #[error("reading the apiserver's response failed: {}", causes(.0))]
    Body(#[from] hyper::Error),
    #[error("the apiserver answered {code}: {message}")]
    Status { code: u16, message: String },
    #[error("decoding the apiserver's response failed: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("the apiserver sent nothing for {0:?}")]
    Silent(Duration),
}

/// `e` and its causes, "a: b: c" (hyper's errors say little without their sources, and the
/// log line is where an operator of the sidecar reads them).
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        text = format!("{text}: {cause}");
        next = cause.source();
    }
    text
}

impl Error {
    /// The object does not exist (HTTP 404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Status { code: 404, .. })
    }

    fn config(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Config {
            what: what.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// How a patch body is to be merged (its content type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patch {
    /// Strategic merge: lists such as `status.conditions` merge by their key (`type`).
    Strategic,
    /// Server-side apply, taking ownership of conflicting fields (`force=true`).
    ApplyForce,
}

impl Patch {
    fn content_type(self) -> &'static str {
        match self {
            Patch::Strategic => "application/strategic-merge-patch+json",
            // JSON is YAML: the apiserver takes the apply body under this type.
            Patch::ApplyForce => "application/apply-patch+yaml",
        }
    }
}

/// Where the bearer token comes from.
#[derive(Debug)]
enum Token {
    /// The service account's token file, re-read every [`TOKEN_REREAD`].
    File {
        path: PathBuf,
        cached: Mutex<(String, Instant)>,
    },
    #[cfg(test)]
    Fixed(String),
}

impl Token {
    fn read_file(path: &PathBuf) -> Result<String, Error> {
        std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .map_err(|e| Error::config(format!("reading {}", path.display()), e))
    }

    fn current(&self) -> Result<String, Error> {
        match self {
            Token::File { path, cached } => {
                let mut cached = cached.lock().unwrap_or_else(|p| p.into_inner());
                if cached.1.elapsed() >= TOKEN_REREAD {
                    *cached = (Self::read_file(path)?, Instant::now());
                }
                Ok(cached.0.clone())
            }
            #[cfg(test)]
            Token::Fixed(t) => Ok(t.clone()),
        }
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client of the apiserver; cheap to clone (one connection pool).
#[derive(Clone)]
pub struct ApiClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// `https://host:port`, no trailing slash.
    base: String,
    http: HttpClient,
    token: Token,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.inner.base)
            .finish()
    }
}

impl ApiClient {
    /// The in-cluster client, configured as client-go's `rest.InClusterConfig`.
    pub fn in_cluster() -> Result<Self, Error> {
        let env = |name: &str| {
            std::env::var(name).map_err(|e| Error::config(format!("reading ${name}"), e))
        };
        let base = base_url(
            &env("KUBERNETES_SERVICE_HOST")?,
            &env("KUBERNETES_SERVICE_PORT")?,
        )?;
        let dir = PathBuf::from(SERVICE_ACCOUNT_DIR);
        let roots = root_store(&dir.join("ca.crt"))?;
        let token_path = dir.join("token");
        let token = Token::read_file(&token_path)?;
        let provider = crate::tls::client_provider();
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::config("TLS versions", e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self::new(
            base,
            tls,
            Token::File {
                path: token_path,
                cached: Mutex::new((token, Instant::now())),
            },
        ))
    }

    fn new(base: String, tls: rustls::ClientConfig, token: Token) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            // `in_cluster` always builds an https URL; plain http is for the unit tests' fake.
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let http = Client::builder(TokioExecutor::new()).build(connector);
        Self {
            inner: Arc::new(Inner { base, http, token }),
        }
    }

    /// A client of a plain-HTTP fake apiserver at `base` (unit tests).
    #[cfg(test)]
    pub(crate) fn for_tests(base: &str) -> Self {
        let provider = crate::tls::client_provider();
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Self::new(base.to_string(), tls, Token::Fixed("test-token".into()))
    }

    /// Sends a request to `path_and_query`; the response's body is not read.
    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Response<Incoming>, Error> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.inner.base))
            .header(header::ACCEPT, "application/json")
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.inner.token.current()?),
            );
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| Error::config(format!("request to {path_and_query}"), e))?;
        Ok(self.inner.http.request(req).await?)
    }

    /// Reads a response: its decoded body when the status is a success, else the error
    /// the apiserver's `Status` body says.
    async fn decode<T: DeserializeOwned>(resp: Response<Incoming>) -> Result<T, Error> {
        if !resp.status().is_success() {
            return Err(failure(resp).await);
        }
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&body)?)
    }

    /// GETs `path_and_query` and decodes the answer.
    pub async fn get<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<T, Error> {
        let resp = self
            .send(Method::GET, path_and_query, None, Bytes::new())
            .await?;
        Self::decode(resp).await
    }

    /// Patches the status subresource of the pod `name` in `namespace` as `field_manager`.
    pub async fn patch_pod_status(
        &self,
        namespace: &str,
        name: &str,
        patch: Patch,
        body: &serde_json::Value,
        field_manager: &str,
    ) -> Result<(), Error> {
        let query = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("fieldManager", field_manager);
            if patch == Patch::ApplyForce {
                q.append_pair("force", "true");
            }
            q.finish()
        };
        let path = format!("{}/status?{query}", pod_path(namespace, name));
        let resp = self
            .send(
                Method::PATCH,
                &path,
                Some(patch.content_type()),
                Bytes::from(serde_json::to_vec(body)?),
            )
            .await?;
        Self::decode::<serde_json::Value>(resp).await.map(drop)
    }
}

/// The path of the pod `name` in `namespace`.
pub fn pod_path(namespace: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{name}")
}

/// The collection path of pods in `namespace`.
pub fn pods_path(namespace: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods")
}

/// The collection path of EndpointSlices in `namespace`.
pub fn endpoint_slices_path(namespace: &str) -> String {
    format!("/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices")
}

/// The apiserver's URL from the service environment variables, an IPv6 address bracketed (as
/// client-go's `net.JoinHostPort`).
pub fn base_url(host: &str, port: &str) -> Result<String, Error> {
    let port: u16 = port
        .trim()
        .parse()
        .map_err(|e| Error::config(format!("$KUBERNETES_SERVICE_PORT {port:?}"), e))?;
    let host = host.trim();
    Ok(match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("https://[{ip}]:{port}"),
        _ => format!("https://{host}:{port}"),
    })
}

/// The cluster's CA bundle.
fn root_store(ca_file: &std::path::Path) -> Result<rustls::RootCertStore, Error> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let what = || format!("reading the CA bundle {}", ca_file.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| Error::config(what(), e))? {
        roots
            .add(cert.map_err(|e| Error::config(what(), e))?)
            .map_err(|e| Error::config(what(), e))?;
    }
    if roots.is_empty() {
        return Err(Error::Config {
            what: format!("{}: no certificate", what()),
            source: None,
        });
    }
    Ok(roots)
}

/// The error a non-success response stands for (its body read).
async fn failure(resp: Response<Incoming>) -> Error {
    let status = resp.status();
    match resp.into_body().collect().await {
        Ok(body) => status_error(status, &body.to_bytes()),
        Err(e) => e.into(),
    }
}

/// The error a non-success response stands for: the `message` of its `Status` body if it
/// has one.
fn status_error(status: StatusCode, body: &[u8]) -> Error {
    #[derive(serde::Deserialize)]
    struct Status {
        message: Option<String>,
    }
    let message = serde_json::from_slice::<Status>(body)
        .ok()
        .and_then(|s| s.message)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    Error::Status {
        code: status.as_u16(),
        message,
    }
}

#[cfg(test)]
pub(crate) mod fake;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_brackets_ipv6_and_keeps_names() {
        assert_eq!(
            base_url("10.96.0.1", "443").unwrap(),
            "https://10.96.0.1:443"
        );
        assert_eq!(
            base_url("fd00::1", "6443").unwrap(),
            "https://[fd00::1]:6443"
        );
        assert_eq!(
            base_url("kubernetes.default.svc", "443").unwrap(),
            "https://kubernetes.default.svc:443"
        );
        let err = base_url("10.96.0.1", "https").unwrap_err().to_string();
        assert!(err.contains("KUBERNETES_SERVICE_PORT"), "{err}");
    }

    #[test]
    fn a_status_body_gives_the_message_and_anything_else_its_start() {
        let e = status_error(
            StatusCode::NOT_FOUND,
            br#"{"kind":"Status","message":"pods \"web-1\" not found","code":404}"#,
        );
        assert!(e.is_not_found());
        assert_eq!(
            e.to_string(),
            r#"the apiserver answered 404: pods "web-1" not found"#
        );
        let e = status_error(StatusCode::BAD_GATEWAY, b"upstream gone");
        assert_eq!(e.to_string(), "the apiserver answered 502: upstream gone");
    }

    #[test]
    fn a_missing_ca_bundle_is_a_clear_error() {
        let e = root_store(std::path::Path::new("/nonexistent/ca.crt")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.crt"), "{e}");
    }

    #[tokio::test]
    async fn requests_carry_the_token_and_patches_their_content_type_and_manager() {
        let fake = fake::FakeApiserver::start(|req| {
            let ok = req.headers.get("authorization").map(|v| v == "Bearer test-token");
            assert_eq!(ok, Some(true), "bearer token");
            match (req.method.as_str(), req.path_and_query.as_str()) {
                ("GET", "/api/v1/namespaces/shop/pods/web-1") => {
                    fake::Reply::json(200, serde_json::json!({"metadata": {"name": "web-1"}}))
                }
                ("PATCH", "/api/v1/namespaces/shop/pods/web-1/status?fieldManager=quiesce-sidecar&force=true") => {
                    assert_eq!(req.headers["content-type"], "application/apply-patch+yaml");
                    assert_eq!(req.body, serde_json::json!({"status": {}}));
                    fake::Reply::json(200, serde_json::json!({}))
                }
                _ => fake::Reply::json(404, serde_json::json!({"message": "no such thing"})),
            }
        })
        .await;
        let client = ApiClient::for_tests(&fake.base);
        let pod: types::Pod = client.get(&pod_path("shop", "web-1")).await.unwrap();
        assert_eq!(pod.metadata.name, "web-1");
        client
            .patch_pod_status(
                "shop",
                "web-1",
                Patch::ApplyForce,
                &serde_json::json!({"status": {}}),
                "quiesce-sidecar",
            )
            .await
            .unwrap();
        let missing = client
            .get::<types::Pod>(&pod_path("shop", "web-2"))
            .await
            .unwrap_err();
        assert!(missing.is_not_found(), "{missing}");
    }
}
