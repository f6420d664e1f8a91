//! The webhook's TLS: the operator is its own CA. It keeps a CA and a serving certificate in
//! a Secret, re-issues the serving certificate when a third of its validity is left, keeps the
//! MutatingWebhookConfiguration's `caBundle` equal to the CA, and hands the current
//! certificate to the TLS server through [`CertStore`] (no restart on rotation).
//!
//! Both replicas run [`maintain`]: whoever finds the Secret missing or due creates/updates it
//! with an optimistic-concurrency precondition (create, or replace at the read
//! `resourceVersion`); the loser of a race re-reads and uses the winner's certificate.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::json;
use tracing::{info, warn};

use crate::error::{Error, Result};

/// Secret keys.
const CA_CRT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const TLS_CRT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
/// Secret annotation: when the serving certificate expires (RFC 3339).
const NOT_AFTER: &str = "quiesce.dev/not-after";
/// Secret annotation: when the serving certificate was issued (RFC 3339).
const NOT_BEFORE: &str = "quiesce.dev/not-before";
/// Distinguished name of the CA.
const CA_NAME: &str = "quiesce-webhook-ca";

/// Where the certificate lives and who trusts it.
#[derive(Clone, Debug)]
pub struct CertConfig {
    /// Namespace of the operator (the Secret and the Service).
    pub namespace: String,
    /// Secret holding the CA and the serving certificate.
    pub secret: String,
    /// The webhook Service (the certificate's DNS names).
    pub service: String,
    /// The MutatingWebhookConfiguration whose `caBundle` is kept current.
    pub webhook_configuration: String,
    /// Validity of a serving certificate.
    pub validity: Duration,
    /// How often the Secret is checked.
    pub check_every: Duration,
    /// Owner of the Secret (the operator Deployment), so uninstalling removes it.
    pub owner: Option<OwnerReference>,
}

impl CertConfig {
    /// The DNS names the apiserver may use for the Service.
    pub fn dns_names(&self) -> Vec<String> {
        let (s, ns) = (&self.service, &self.namespace);
        vec![
            s.clone(),
            format!("{s}.{ns}"),
            format!("{s}.{ns}.svc"),
            format!("{s}.{ns}.svc.cluster.local"),
        ]
    }
}

/// PEM material of the CA and the serving certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// CA certificate.
    pub ca_crt: String,
    /// CA key.
    pub ca_key: String,
    /// Serving certificate.
    pub tls_crt: String,
    /// Serving key.
    pub tls_key: String,
    /// Serving certificate's start of validity.
    pub not_before: Timestamp,
    /// Serving certificate's end of validity.
    pub not_after: Timestamp,
}

impl Bundle {
    /// Whether the serving certificate should be re-issued at `now`: a third of its validity
    /// or less is left.
    pub fn due(&self, now: Timestamp) -> bool {
        let life = self.not_after.as_second() - self.not_before.as_second();
        now.as_second() >= self.not_after.as_second() - life / 3
    }
}

fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn cert_err(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Certificate(Box::new(e))
}

fn offset(t: Timestamp) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(t.as_second()).map_err(cert_err)
}

/// Issues a serving certificate for `dns_names`, valid from `now` for `validity`, signed by
/// the given CA; with `ca = None` a new CA (valid ten years) is created first.
pub fn issue(
    dns_names: Vec<String>,
    now: Timestamp,
    validity: Duration,
    ca: Option<(&str, &str)>,
) -> Result<Bundle> {
    let (ca_crt, ca_key_pem) = match ca {
        Some((crt, key)) => (crt.to_owned(), key.to_owned()),
        None => {
            let key = KeyPair::generate().map_err(cert_err)?;
            let mut params = ca_params()?;
            params.not_before = offset(now)?;
            params.not_after = offset(
                Timestamp::from_second(now.as_second() + 10 * 365 * 86400).map_err(cert_err)?,
            )?;
            let cert = params.self_signed(&key).map_err(cert_err)?;
            (cert.pem(), key.serialize_pem())
        }
    };
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(cert_err)?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::new(dns_names.clone()).map_err(cert_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        dns_names.first().cloned().unwrap_or_default(),
    );
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let not_after =
        Timestamp::from_second(now.as_second() + validity.as_secs() as i64).map_err(cert_err)?;
    // Issued a minute in the past against clock skew.
    let not_before = Timestamp::from_second(now.as_second() - 60).map_err(cert_err)?;
    params.not_before = offset(not_before)?;
    params.not_after = offset(not_after)?;
    let cert = params.signed_by(&key, &issuer).map_err(cert_err)?;
    Ok(Bundle {
        ca_crt,
        ca_key: ca_key_pem,
        tls_crt: cert.pem(),
        tls_key: key.serialize_pem(),
        not_before,
        not_after,
    })
}

/// The bundle stored in a Secret, if complete.
pub fn from_secret(secret: &Secret) -> Option<Bundle> {
    let data = secret.data.as_ref()?;
    let get = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    let ann = secret.metadata.annotations.as_ref()?;
    Some(Bundle {
        ca_crt: get(CA_CRT)?,
        ca_key: get(CA_KEY)?,
        tls_crt: get(TLS_CRT)?,
        tls_key: get(TLS_KEY)?,
        not_before: ann.get(NOT_BEFORE)?.parse().ok()?,
        not_after: ann.get(NOT_AFTER)?.parse().ok()?,
    })
}

fn to_secret(cfg: &CertConfig, b: &Bundle, resource_version: Option<String>) -> Secret {
    let data: BTreeMap<String, ByteString> = [
        (CA_CRT, &b.ca_crt),
        (CA_KEY, &b.ca_key),
        (TLS_CRT, &b.tls_crt),
        (TLS_KEY, &b.tls_key),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
    .collect();
    let mut s: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": cfg.secret,
            "namespace": cfg.namespace,
            "labels": {quiesce_api::constants::labels::MANAGED_BY: quiesce_api::constants::labels::MANAGED_BY_VALUE},
            "annotations": {NOT_BEFORE: b.not_before.to_string(), NOT_AFTER: b.not_after.to_string()},
        },
        "type": "kubernetes.io/tls",
    }))
    .expect("static secret shape");
    s.metadata.resource_version = resource_version;
    s.metadata.owner_references = cfg.owner.clone().map(|o| vec![o]);
    s.data = Some(data);
    s
}

/// The serving certificate handed to rustls; swapped on rotation.
#[derive(Debug, Default)]
pub struct CertStore {
    current: RwLock<Option<(String, Arc<CertifiedKey>)>>,
}

impl CertStore {
    /// Installs `bundle`'s serving certificate (no-op when unchanged).
    pub fn install(&self, bundle: &Bundle) -> Result<()> {
        if self
            .current
            .read()
            .expect("cert lock")
            .as_ref()
            .is_some_and(|(pem, _)| *pem == bundle.tls_crt)
        {
            return Ok(());
        }
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(bundle.tls_crt.as_bytes())
                .collect::<std::result::Result<_, _>>()
                .map_err(cert_err)?;
        let key = PrivateKeyDer::from_pem_slice(bundle.tls_key.as_bytes()).map_err(cert_err)?;
        let key = any_supported_type(&key).map_err(cert_err)?;
        *self.current.write().expect("cert lock") = Some((
            bundle.tls_crt.clone(),
            Arc::new(CertifiedKey::new(certs, key)),
        ));
        info!(not_after = %bundle.not_after, "webhook serving certificate installed");
        Ok(())
    }

    /// Whether a certificate is installed (the webhook is ready to serve).
    pub fn ready(&self) -> bool {
        self.current.read().expect("cert lock").is_some()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .expect("cert lock")
            .as_ref()
            .map(|(_, k)| k.clone())
    }
}

/// One pass: make sure the Secret holds a valid, not-due certificate, install it, and keep the
/// webhook configuration's `caBundle` equal to the CA.
pub async fn ensure(client: &Client, cfg: &CertConfig, store: &CertStore) -> Result<Bundle> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let now = Timestamp::now();
    let bundle = match secrets.get_opt(&cfg.secret).await? {
        Some(secret) => match from_secret(&secret) {
            Some(b) if !b.due(now) => b,
            existing => {
                let ca = existing
                    .as_ref()
                    .map(|b| (b.ca_crt.as_str(), b.ca_key.as_str()));
                let fresh = issue(cfg.dns_names(), now, cfg.validity, ca)
                    .or_else(|_| issue(cfg.dns_names(), now, cfg.validity, None))?;
                let s = to_secret(cfg, &fresh, secret.metadata.resource_version.clone());
                match secrets
                    .replace(&cfg.secret, &PostParams::default(), &s)
                    .await
                {
                    Ok(_) => {
                        info!(secret = %cfg.secret, "webhook serving certificate rotated");
                        fresh
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        from_secret(&secrets.get(&cfg.secret).await?).ok_or_else(|| {
                            Error::Certificate("secret changed under us and is incomplete".into())
                        })?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        },
        None => {
            let fresh = issue(cfg.dns_names(), now, cfg.validity, None)?;
            match secrets
                .create(&PostParams::default(), &to_secret(cfg, &fresh, None))
                .await
            {
                Ok(_) => {
                    info!(secret = %cfg.secret, "webhook CA and serving certificate created");
                    fresh
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    from_secret(&secrets.get(&cfg.secret).await?).ok_or_else(|| {
                        Error::Certificate("secret created concurrently is incomplete".into())
                    })?
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    store.install(&bundle)?;
    sync_ca_bundle(client, cfg, &bundle.ca_crt).await?;
    Ok(bundle)
}

/// Patches every webhook of the configuration whose `caBundle` differs from `ca_pem`.
async fn sync_ca_bundle(client: &Client, cfg: &CertConfig, ca_pem: &str) -> Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(mwc) = api.get_opt(&cfg.webhook_configuration).await? else {
        warn!(name = %cfg.webhook_configuration, "MutatingWebhookConfiguration not found; caBundle not set");
        return Ok(());
    };
    let want = ByteString(ca_pem.as_bytes().to_vec());
    let stale: Vec<String> = mwc
        .webhooks
        .iter()
        .flatten()
        .filter(|w| w.client_config.ca_bundle.as_ref() != Some(&want))
        .map(|w| w.name.clone())
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    let patch = json!({"webhooks": stale.iter().map(|name| json!({
        "name": name,
        "clientConfig": {"caBundle": want},
    })).collect::<Vec<_>>()});
    api.patch(
        &cfg.webhook_configuration,
        &PatchParams::default(),
        &Patch::Strategic(&patch),
    )
    .await?;
    info!(name = %cfg.webhook_configuration, webhooks = ?stale, "caBundle updated");
    Ok(())
}

/// Runs [`ensure`] now and then every `check_every`, forever; a failed check is tried again
/// with the operator's retry policy ([`crate::retry`]).
pub async fn maintain(client: Client, cfg: CertConfig, store: Arc<CertStore>) {
    let mut backoff = crate::retry::Backoff::default();
    loop {
        let wait = match ensure(&client, &cfg, &store).await {
            Ok(_) => {
                backoff.reset();
                cfg.check_every
            }
            Err(err) => {
                let wait = backoff.next_wait();
                warn!(error = %err, retry_in = ?wait, "webhook certificate check failed");
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn issues_a_chain_rustls_accepts_and_rotates_under_the_same_ca() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let names = vec![
            "quiesce-webhook".to_owned(),
            "quiesce-webhook.q.svc".to_owned(),
        ];
        let b = issue(names.clone(), now, Duration::from_secs(90 * 86400), None).unwrap();
        assert!(!b.due(now));
        assert!(b.due(Timestamp::from_second(now.as_second() + 61 * 86400).unwrap()));
        let store = CertStore::default();
        store.install(&b).unwrap();
        assert!(store.ready());
        let again = issue(
            names,
            now,
            Duration::from_secs(90 * 86400),
            Some((&b.ca_crt, &b.ca_key)),
        )
        .unwrap();
        assert_eq!(again.ca_crt, b.ca_crt);
        assert_ne!(again.tls_crt, b.tls_crt);
        // The new leaf verifies against the old CA.
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(b.ca_crt.as_bytes()).unwrap())
            .unwrap();
        let leaf = CertificateDer::from_pem_slice(again.tls_crt.as_bytes()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let at = rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(1_800_000_100));
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &rustls::pki_types::ServerName::try_from("quiesce-webhook.q.svc").unwrap(),
                &[],
                at,
            )
            .unwrap();
    }
}
