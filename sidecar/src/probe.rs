//! App health checks (HTTP(S) GET, TCP connect, gRPC health v1) and the threshold logic that
//! turns single results into a healthy/unhealthy state.
//!
//! Probes go to the app inside the shared network namespace, by default on the pod IP as the
//! kubelet's do. They reproduce the kubelet's: HTTPS without certificate verification (the
//! handshake's signatures are still checked), the probe's headers (a `Host` header replaces
//! the default one), statuses 200–399. They pause while a drain runs: readiness is 503 anyway,
//! and a probe connection would count as new traffic.

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::{ProbeConfig, ProbeKind};

/// Why one check of the app failed: logged when the app's health changes and shown by
/// `/readyz` as `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No answer within the probe's timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Connecting failed.
    #[error("{0}")]
    Connect(#[source] std::io::Error),
    /// The HTTPS probe's TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(#[source] std::io::Error),
    /// The request could not be built from the probe's path and headers.
    #[error("{0}")]
    Request(#[from] http::Error),
    /// The HTTP exchange failed.
    #[error("{0}")]
    Http(#[from] hyper::Error),
    /// The HTTP probe's answer is outside the healthy range.
    #[error("HTTP status {code}, expected {}-{}", .expected.0, .expected.1)]
    Status { code: u16, expected: (u16, u16) },
    /// The gRPC health service answered with an HTTP error.
    #[error("HTTP status {0}")]
    GrpcHttp(http::StatusCode),
    /// The gRPC call failed (`grpc-status` other than 0, or none).
    #[error("grpc-status {}", .0.as_deref().unwrap_or("missing"))]
    GrpcStatus(Option<String>),
    /// The app's health service says it is not serving.
    #[error("health status {0}, not SERVING")]
    NotServing(u64),
    /// The answer is not a `HealthCheckResponse`.
    #[error("malformed HealthCheckResponse")]
    Malformed,
}

/// Consecutive-result thresholds, like the kubelet's: starts unhealthy.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    success_threshold: u32,
    failure_threshold: u32,
    healthy: bool,
    successes: u32,
    failures: u32,
    ever_healthy: bool,
}

/// Probe interval until the app is healthy for the first time. A new pod waits for its first
/// healthy check (its readiness, its admission, the next batch of the rollout), and with the
/// app's own `periodSeconds` that check comes up to a whole period after the app is up —
/// measured on the cluster: container start → ready took 2 s for a demo app up in a few ms.
/// A refused connect on loopback costs nothing, so check often until then.
pub const STARTUP_INTERVAL: Duration = Duration::from_millis(100);

impl HealthTracker {
    /// A tracker with the given thresholds (at least 1).
    pub fn new(success_threshold: u32, failure_threshold: u32) -> Self {
        Self {
            success_threshold: success_threshold.max(1),
            failure_threshold: failure_threshold.max(1),
            healthy: false,
            successes: 0,
            failures: 0,
            ever_healthy: false,
        }
    }

    /// Records one result; returns the resulting state.
    pub fn record(&mut self, ok: bool) -> bool {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.successes >= self.success_threshold {
                self.healthy = true;
                self.ever_healthy = true;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.failure_threshold {
                self.healthy = false;
            }
        }
        self.healthy
    }

    /// Current state.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// How long until the next probe: [`STARTUP_INTERVAL`] (at most `period`) until the app was
    /// healthy once, then `period`.
    pub fn next_delay(&self, period: Duration) -> Duration {
        if self.ever_healthy {
            period
        } else {
            period.min(STARTUP_INTERVAL)
        }
    }
}

/// Runs one probe, bounded by the configured timeout.
pub async fn probe_once(cfg: &ProbeConfig) -> Result<(), ProbeError> {
    let addr = SocketAddr::new(cfg.host, cfg.port);
    let fut = async {
        match cfg.kind {
            ProbeKind::None => Ok(()),
            ProbeKind::Tcp => TcpStream::connect(addr)
                .await
                .map(|_| ())
                .map_err(ProbeError::Connect),
            ProbeKind::Http => http_probe(addr, cfg).await,
            ProbeKind::Grpc => grpc_probe(addr, &cfg.grpc_service).await,
        }
    };
    match tokio::time::timeout(cfg.timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout(cfg.timeout)),
    }
}

/// The HTTP probe's request (pure): `GET path` with `Host` (the probed address),
/// `User-Agent` and `Connection: close`, then the probe's `headers` — the first of a name
/// replaces a default of that name, later ones of the same name are added.
pub fn http_request(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> Result<http::Request<Empty<Bytes>>, http::Error> {
    let mut req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "quiesce-sidecar")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())?;
    let mut replaced: Vec<http::HeaderName> = Vec::new();
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())?;
        let value = http::HeaderValue::from_str(value)?;
        if replaced.contains(&name) {
            req.headers_mut().append(name, value);
        } else {
            req.headers_mut().insert(name.clone(), value);
            replaced.push(name);
        }
    }
    Ok(req)
}

async fn http_probe(addr: SocketAddr, cfg: &ProbeConfig) -> Result<(), ProbeError> {
    let req = http_request(addr, &cfg.path, &cfg.headers)?;
    let stream = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    let code = if cfg.https {
        let tls = tokio_rustls::TlsConnector::from(insecure_tls_config())
            .connect(ServerName::from(addr.ip()), stream)
            .await
            .map_err(ProbeError::Tls)?;
        send_get(tls, req).await?
    } else {
        send_get(stream, req).await?
    };
    let status = cfg.status;
    if (status.0..=status.1).contains(&code) {
        Ok(())
    } else {
        Err(ProbeError::Status {
            code,
            expected: status,
        })
    }
}

async fn send_get<S>(io: S, req: http::Request<Empty<Bytes>>) -> Result<u16, ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let conn = tokio::spawn(conn);
    let res = send.send_request(req).await;
    conn.abort();
    Ok(res?.status().as_u16())
}

/// The client TLS configuration of HTTPS probes: any certificate is accepted, as the kubelet
/// does for `scheme: HTTPS` (built once).
pub fn insecure_tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = crate::tls::client_provider();
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// Accepts any server certificate (no chain, name or date check) but still checks that the
/// server holds the certificate's key, as Go's `InsecureSkipVerify` (the kubelet's HTTPS probes).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Encodes a `grpc.health.v1.HealthCheckRequest { service }` as one gRPC length-prefixed frame.
pub fn grpc_health_request(service: &str) -> Vec<u8> {
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        let mut len = service.len();
        loop {
            let b = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                msg.push(b);
                break;
            }
            msg.push(b | 0x80);
        }
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    frame
}

/// Decodes the `status` field of a framed `HealthCheckResponse` (1 = SERVING).
pub fn grpc_health_status(frame: &[u8]) -> Option<u64> {
    let len = u32::from_be_bytes(frame.get(1..5)?.try_into().ok()?) as usize;
    let mut msg = frame.get(5..5 + len)?;
    let mut status = 0; // absent field = UNKNOWN
    // Unknown fields of any wire type are skipped; tags are varints (field numbers above 15
    // take more than one byte).
    while !msg.is_empty() {
        let (tag, rest) = read_varint(msg)?;
        msg = match (tag >> 3, tag & 7) {
            (0, _) => return None,
            (1, 0) => {
                let (value, rest) = read_varint(rest)?;
                status = value;
                rest
            }
            (_, 0) => read_varint(rest)?.1,
            (_, 1) => rest.get(8..)?,
            (_, 2) => {
                let (len, rest) = read_varint(rest)?;
                rest.get(usize::try_from(len).ok()?..)?
            }
            (_, 5) => rest.get(4..)?,
            _ => return None,
        };
    }
    Some(status)
}

fn read_varint(b: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, &b[i + 1..]));
        }
    }
    None
}

async fn grpc_probe(addr: SocketAddr, service: &str) -> Result<(), ProbeError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let req = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, "quiesce-sidecar")
        .body(Full::new(Bytes::from(grpc_health_request(service))))?;
    let result = async {
        let res = send.send_request(req).await?;
        if res.status() != http::StatusCode::OK {
            return Err(ProbeError::GrpcHttp(res.status()));
        }
        let header_status = res.headers().get("grpc-status").cloned();
        let collected = res.into_body().collect().await?;
        let grpc_status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status").cloned())
            .or(header_status);
        match grpc_status.as_ref().and_then(|v| v.to_str().ok()) {
            Some("0") => {}
            other => return Err(ProbeError::GrpcStatus(other.map(str::to_owned))),
        }
        match grpc_health_status(&collected.to_bytes()) {
            Some(1) => Ok(()),
            Some(s) => Err(ProbeError::NotServing(s)),
            None => Err(ProbeError::Malformed),
        }
    }
    .await;
    conn.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_often_until_healthy_once_then_at_the_period() {
        let period = Duration::from_secs(2);
        let mut t = HealthTracker::new(2, 1);
        assert_eq!(t.next_delay(period), STARTUP_INTERVAL);
        t.record(true);
        assert_eq!(t.next_delay(period), STARTUP_INTERVAL, "not healthy yet");
        t.record(true);
        assert_eq!(t.next_delay(period), period);
        t.record(false);
        assert!(!t.healthy());
        assert_eq!(t.next_delay(period), period, "unhealthy later: the period");
        // A period shorter than the startup interval is kept.
        let fast = Duration::from_millis(50);
        assert_eq!(HealthTracker::new(1, 1).next_delay(fast), fast);
    }

    #[test]
    fn thresholds_like_the_kubelet() {
        let mut t = HealthTracker::new(2, 3);
        assert!(!t.healthy());
        assert!(!t.record(true));
        assert!(t.record(true));
        assert!(t.record(false));
        assert!(t.record(false));
        assert!(t.record(true), "a success resets the failure streak");
        assert!(t.record(false));
        assert!(t.record(false));
        assert!(!t.record(false));
        assert!(!t.record(true));
        assert!(t.record(true));
    }

    #[test]
    fn grpc_health_frames() {
        assert_eq!(grpc_health_request(""), vec![0, 0, 0, 0, 0]);
        assert_eq!(
            grpc_health_request("ab"),
            vec![0, 0, 0, 0, 4, 0x0a, 2, b'a', b'b']
        );
        let long = "x".repeat(200);
        let f = grpc_health_request(&long);
        assert_eq!(&f[5..8], &[0x0a, 0xc8, 0x01]);
        assert_eq!(grpc_health_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(grpc_health_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        assert_eq!(grpc_health_status(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(grpc_health_status(&[0, 0, 0, 0, 9]), None);
    }

    #[test]
    fn the_probes_headers_replace_the_defaults_and_repeat() {
        let addr: SocketAddr = "[fd00::7]:8443".parse().unwrap();
        let req = http_request(addr, "/ready", &[]).unwrap();
        assert_eq!(req.headers()["host"], "[fd00::7]:8443");
        let h = |n: &str, v: &str| (n.to_owned(), v.to_owned());
        let req = http_request(
            addr,
            "/ready",
            &[
                h("Host", "web.example"),
                h("User-Agent", "kube-probe/1.33"),
                h("X-A", "1"),
                h("X-A", "2"),
            ],
        )
        .unwrap();
        assert_eq!(req.headers()["host"], "web.example");
        assert_eq!(req.headers()["user-agent"], "kube-probe/1.33");
        let xa: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        assert_eq!(req.headers()["connection"], "close");
        assert!(http_request(addr, "/", &[h("bad name", "x")]).is_err());
    }

    #[tokio::test]
    async fn http_and_tcp_probes_against_a_loopback_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]);
                    let code = if req.starts_with("GET /ok ") {
                        "200 OK"
                    } else {
                        "503 Unavailable"
                    };
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {code}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let mut cfg = ProbeConfig {
            kind: ProbeKind::Http,
            host: addr.ip(),
            port: addr.port(),
            path: "/ok".into(),
            https: false,
            headers: Vec::new(),
            status: (200, 399),
            grpc_service: String::new(),
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 1,
        };
        assert!(probe_once(&cfg).await.is_ok());
        cfg.path = "/bad".into();
        let err = probe_once(&cfg).await.unwrap_err();
        assert!(matches!(err, ProbeError::Status { code: 503, .. }), "{err}");
        assert_eq!(err.to_string(), "HTTP status 503, expected 200-399");
        cfg.kind = ProbeKind::Tcp;
        assert!(probe_once(&cfg).await.is_ok());
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        cfg.port = closed.port();
        assert!(probe_once(&cfg).await.is_err());
    }
}
