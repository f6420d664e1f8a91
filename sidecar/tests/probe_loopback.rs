//! The sidecar's app probe against real loopback servers: an HTTPS app with a self-signed
//! certificate (the kubelet accepts it, so must the sidecar), probe headers on the wire (a
//! `Host` header replaces the default one).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quiesce_sidecar::config::{ProbeConfig, ProbeKind};
use quiesce_sidecar::probe::probe_once;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// Answers 200 when the request is `GET /ready` with `Host: web.example` and `X-Probe: yes`,
/// 503 otherwise; the request head is sent back as the body.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let ok = head.starts_with("get /ready ")
        && head.contains("\r\nhost: web.example\r\n")
        && head.contains("\r\nx-probe: yes\r\n");
    let status = if ok { "200 OK" } else { "503 Unavailable" };
    let _ = s
        .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
        .await;
    let _ = s.shutdown().await;
}

/// An HTTPS server on loopback with a fresh self-signed certificate for `localhost`.
async fn https_app() -> SocketAddr {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    https_app_with(key, rustls::DEFAULT_VERSIONS).await
}

/// An HTTPS server speaking only `versions` of TLS, with `key`'s certificate (ring's server:
/// every cipher suite it has, ChaCha20 first when the client prefers it).
async fn https_app_with(
    key: rcgen::CertifiedKey<rcgen::KeyPair>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> SocketAddr {
    let cert = CertificateDer::from(key.cert.der().to_vec());
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], private)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    answer(tls).await;
                }
            });
        }
    });
    addr
}

fn probe(addr: SocketAddr, https: bool, headers: &[(&str, &str)]) -> ProbeConfig {
    ProbeConfig {
        kind: ProbeKind::Http,
        host: addr.ip(),
        port: addr.port(),
        path: "/ready".into(),
        https,
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        status: (200, 399),
        grpc_service: String::new(),
        period: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
        success_threshold: 1,
        failure_threshold: 1,
    }
}

const HEADERS: &[(&str, &str)] = &[("Host", "web.example"), ("X-Probe", "yes")];

#[tokio::test]
async fn https_with_a_self_signed_certificate_and_headers_is_healthy() {
    let addr = https_app().await;
    // The certificate names localhost, is self-signed, and the probe goes to 127.0.0.1: the
    // kubelet accepts all three, and so does the sidecar.
    assert!(probe_once(&probe(addr, true, HEADERS)).await.is_ok());
    // Without the probe's headers the app answers 503: the headers reached it.
    let err = probe_once(&probe(addr, true, &[])).await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    // Plain HTTP to a TLS port fails (as the kubelet's copy as HTTP used to).
    assert!(probe_once(&probe(addr, false, HEADERS)).await.is_err());
}

#[tokio::test]
async fn an_app_that_speaks_only_tls_1_2_with_a_p384_certificate_is_healthy() {
    // The sidecar's TLS leaves out ChaCha20 and client keys (`tls.rs`); an older app server
    // with TLS 1.2 only and another curve must still be probed as the kubelet would.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let certified = rcgen::CertifiedKey {
        cert,
        signing_key: key,
    };
    let addr = https_app_with(certified, &[&rustls::version::TLS12]).await;
    assert!(probe_once(&probe(addr, true, HEADERS)).await.is_ok());
}

#[tokio::test]
async fn http_probe_headers_on_the_wire() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(answer(tcp));
        }
    });
    assert!(probe_once(&probe(addr, false, HEADERS)).await.is_ok());
    assert!(
        probe_once(&probe(addr, false, &[("X-Probe", "yes")]))
            .await
            .is_err()
    );
    // HTTPS to a plain HTTP port fails (the server waits for a request head that never
    // comes: the probe's timeout ends it, as the kubelet's would).
    assert!(probe_once(&probe(addr, true, HEADERS)).await.is_err());
}
