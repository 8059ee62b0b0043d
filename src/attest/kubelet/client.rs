//! One request for the kubelet's pod list: the bearer token read afresh, the kubelet's
//! certificate verified against `ca_file` (for `tls_server_name` when set), the body read up
//! to a cap and parsed off the async workers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::pod::{self, Pods};
use super::settings::{Settings, pods_url, server_name};
use super::{KubeletError, MAX_RESPONSE_BYTES};
use crate::oauth::tls::{certificate_error, error_chain};
use crate::secret::{self, ExposeSecret};

/// What to do about a kubelet certificate for another name than the one checked.
const WRONG_NAME: &str = "; the kubelet's certificate is not for the name tokend checked: set \
                          tls_server_name to a name it holds (usually the node's name or IP)";

/// What to do about a kubelet certificate from a CA not in `ca_file`: by default a kubelet
/// serves a certificate it signed itself.
const OTHER_CA: &str = "its serving certificate must be signed by one (serverTLSBootstrap: true in \
                        the kubelet's config has the cluster's CA sign it)";

pub(super) struct Client {
    http: reqwest::Client,
    url: reqwest::Url,
    token_file: PathBuf,
    ca_file: PathBuf,
    timeout: Duration,
}

impl Client {
    pub(super) fn url(&self) -> &str {
        self.url.as_str()
    }

    pub(super) fn new(settings: &Settings) -> Result<Client, KubeletError> {
        let invalid = |key, reason| KubeletError::Invalid { key, reason };
        let url = pods_url(&settings.kubelet_url).map_err(|r| invalid("kubelet_url", r))?;
        let name = match &settings.tls_server_name {
            Some(name) => Some(server_name(name).map_err(|r| invalid("tls_server_name", r))?),
            None => None,
        };
        let tls = tls_config(settings, name)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("tokend/", env!("CARGO_PKG_VERSION")))
            // The kubelet is on this node: never through a proxy from the environment, and a
            // redirect would carry the token elsewhere.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| KubeletError::CaUnusable {
                path: settings.ca_file.clone(),
                reason: error_chain(&e),
            })?;
        Ok(Client {
            http,
            url,
            token_file: settings.token_file.clone(),
            ca_file: settings.ca_file.clone(),
            timeout: settings.timeout,
        })
    }

    /// Lists the kubelet's pods.
    pub(super) async fn pods(&self) -> Result<Pods, KubeletError> {
        let token = secret::read_file_async(&self.token_file)
            .await
            .map_err(|e| KubeletError::Token(Arc::new(e)))?;
        // reqwest would refuse such a header with a less helpful error.
        if !token.expose_secret().bytes().all(|b| b.is_ascii_graphic()) {
            return Err(KubeletError::TokenText {
                path: self.token_file.clone(),
            });
        }
        // `bearer_auth` marks the header sensitive: hyper's HPACK never indexes it.
        let sent = self
            .http
            .get(self.url.clone())
            .bearer_auth(token.expose_secret())
            .send();
        let response = sent.await.map_err(|e| self.failed(&e))?;
        drop(token);
        let status = response.status();
        if !status.is_success() {
            return Err(KubeletError::Status {
                url: self.url.to_string(),
                status: status.as_u16(),
            });
        }
        let body = self.body(response).await?;
        let parsed = tokio::task::spawn_blocking(move || pod::parse(&body)).await;
        match parsed {
            Ok(Ok(pods)) => Ok(pods),
            Ok(Err(source)) => Err(KubeletError::Parse {
                url: self.url.to_string(),
                source,
            }),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(KubeletError::Cancelled),
        }
    }

    /// The body, refused as soon as it passes [`MAX_RESPONSE_BYTES`].
    async fn body(&self, mut response: reqwest::Response) -> Result<Vec<u8>, KubeletError> {
        let too_large = || KubeletError::TooLarge {
            url: self.url.to_string(),
            limit: MAX_RESPONSE_BYTES,
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.failed(&e))? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn failed(&self, e: &reqwest::Error) -> KubeletError {
        let url = self.url.to_string();
        if e.is_timeout() {
            return KubeletError::Timeout {
                url,
                timeout: self.timeout,
            };
        }
        use CertificateError::{
            BadSignature, NotValidForName, NotValidForNameContext, UnknownIssuer,
        };
        let hint = match certificate_error(e) {
            Some(NotValidForName | NotValidForNameContext { .. }) => WRONG_NAME.to_string(),
            Some(UnknownIssuer | BadSignature) => format!(
                "; the kubelet's certificate is not from a CA in {}: {OTHER_CA}",
                self.ca_file.display()
            ),
            _ => String::new(),
        };
        KubeletError::Connect {
            url,
            reason: error_chain(e),
            hint,
        }
    }
}

/// TLS that trusts only `ca_file`, verifying the kubelet's certificate for the URL's host, or
/// for `name` when set.
fn tls_config(
    settings: &Settings,
    name: Option<ServerName<'static>>,
) -> Result<rustls::ClientConfig, KubeletError> {
    let path = &settings.ca_file;
    let unusable = |reason: String| KubeletError::CaUnusable {
        path: path.clone(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = crate::oauth::tls::certificates(path, "CA certificate")
        .map_err(|e| KubeletError::Ca(Arc::new(e)))?;
    for cert in certs {
        roots.add(cert).map_err(|e| {
            unusable(format!(
                "holds a certificate rustls cannot use as a CA: {e}"
            ))
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| unusable(e.to_string()))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| unusable(e.to_string()))?;
    let builder = match name {
        None => builder.with_webpki_verifier(verifier),
        Some(name) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(VerifyAs {
                name,
                inner: verifier,
            })),
    };
    let mut config = builder.with_no_client_auth();
    // One request per refresh; HTTP/2 would buy nothing.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The web PKI verifier, checking the certificate for a fixed name instead of the URL's host:
/// every other check (chain to `ca_file`, validity, signatures) is the verifier's own.
#[derive(Debug)]
struct VerifyAs {
    name: ServerName<'static>,
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for VerifyAs {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _url_host: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}
