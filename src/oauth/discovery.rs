//! Authorization server metadata (RFC 8414, then OpenID Connect Discovery 1.0): where a client
//! configured by its `issuer` finds its endpoints.
//!
//! The document is provider input like a token reply: read within a size cap and a timeout, no
//! redirect followed (the shared client refuses them), its `issuer` compared with the
//! configured one exactly (RFC 8414 section 3.3, the defence against a document that would send
//! this client's credentials to another server), and its endpoints held to the config's rules
//! for URLs.

use std::time::Duration;

use super::client_auth::AuthMethod;
use super::error::FailureKind;
use super::redact::Redactor;

/// Real documents are 2-10 KiB (Keycloak's, among the largest, about 8 KiB); a cap well above
/// that and far below a token reply's keeps a hostile one from holding memory.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// Provider text quoted in a message (a wrong issuer) is cut to this many characters.
const MAX_QUOTED: usize = 200;

/// What tokend takes from the metadata; every endpoint checked as a configured one would be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub token_endpoint: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub device_authorization_endpoint: Option<String>,
    /// `mtls_endpoint_aliases.token_endpoint` (RFC 8705 section 5): where TLS clients go.
    pub mtls_token_endpoint: Option<String>,
    /// `token_endpoint_auth_methods_supported`, when the document lists them.
    pub auth_methods_supported: Option<Vec<String>>,
}

impl Metadata {
    /// The token endpoint for a client of `method`: the mTLS alias for a TLS client when the
    /// provider has one (RFC 8705 section 5: the certificate is only asked for there).
    pub fn token_endpoint_for(&self, method: AuthMethod) -> Option<&str> {
        match (&self.mtls_token_endpoint, method.uses_tls()) {
            (Some(alias), true) => Some(alias),
            _ => self.token_endpoint.as_deref(),
        }
    }

    /// Whether the provider lists the methods it takes and `method` is not among them (an
    /// unlisted method is only worth a warning: lists are often incomplete).
    pub fn leaves_out(&self, method: AuthMethod) -> bool {
        self.auth_methods_supported
            .as_ref()
            .is_some_and(|list| !list.iter().any(|m| m == method.metadata_name()))
    }
}

/// Why one metadata document could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("{0}")]
    Network(String),
    #[error("timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("is not a JSON object")]
    NotJson,
    #[error(
        "names the issuer {found:?}, not {expected:?} as configured; the issuer must match exactly (RFC 8414 section 3.3)"
    )]
    IssuerMismatch { expected: String, found: String },
    #[error("{key}: {reason}")]
    BadEndpoint { key: &'static str, reason: String },
}

impl DocumentError {
    fn kind(&self) -> FailureKind {
        match self {
            DocumentError::Network(_)
            | DocumentError::Timeout(_)
            | DocumentError::TooLarge
            | DocumentError::NotJson => FailureKind::Transient,
            DocumentError::Status(status) => match status {
                408 | 429 | 500.. => FailureKind::Transient,
                _ => FailureKind::NeedsOperator,
            },
            DocumentError::IssuerMismatch { .. } | DocumentError::BadEndpoint { .. } => {
                FailureKind::NeedsOperator
            }
        }
    }
}

/// Why a client's endpoints could not be learnt from its issuer.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("reading the metadata of issuer {issuer} failed: {}", list(.attempts))]
    Failed {
        issuer: String,
        attempts: Vec<(String, DocumentError)>,
    },
    #[error("issuer {issuer}: {reason}")]
    BadIssuer { issuer: String, reason: String },
    #[error("the metadata of issuer {issuer} names no {key}; set {key} in the client's table")]
    Missing { issuer: String, key: &'static str },
}

fn list(attempts: &[(String, DocumentError)]) -> String {
    attempts
        .iter()
        .map(|(url, e)| format!("{url} {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl DiscoveryError {
    /// Transient when any document may yet be read (unreachable, 5xx, garbled), so the
    /// refresher backs off and tries again; otherwise only the operator can fix it.
    pub fn kind(&self) -> FailureKind {
        match self {
            DiscoveryError::Failed { attempts, .. }
                if attempts
                    .iter()
                    .any(|(_, e)| e.kind() == FailureKind::Transient) =>
            {
                FailureKind::Transient
            }
            _ => FailureKind::NeedsOperator,
        }
    }
}

/// Where the metadata is published, in the order tried: RFC 8414 section 3.1 inserts the
/// well-known path before the issuer's path; OIDC Discovery section 4 appends its own to it.
pub fn well_known_urls(issuer: &str) -> Result<[String; 2], DiscoveryError> {
    let bad = |reason: String| DiscoveryError::BadIssuer {
        issuer: issuer.to_string(),
        reason,
    };
    let url = reqwest::Url::parse(issuer).map_err(|e| bad(format!("not a URL: {e}")))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            "an issuer has no query or fragment (RFC 8414 section 2)".into(),
        ));
    }
    let path = url.path().trim_end_matches('/');
    let mut rfc8414 = url.clone();
    rfc8414.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    let mut oidc = url.clone();
    oidc.set_path(&format!("{path}/.well-known/openid-configuration"));
    Ok([rfc8414.into(), oidc.into()])
}

/// Reads `issuer`'s metadata: the RFC 8414 document, or when that cannot be used the OpenID
/// Connect one; each read within `timeout`.
pub async fn discover(
    http: &reqwest::Client,
    issuer: &str,
    timeout: Duration,
) -> Result<Metadata, DiscoveryError> {
    let mut failed = Vec::new();
    for url in well_known_urls(issuer)? {
        let read = tokio::time::timeout(timeout, document(http, &url, issuer)).await;
        match read.unwrap_or(Err(DocumentError::Timeout(timeout))) {
            Ok(metadata) => return Ok(metadata),
            Err(e) => failed.push((url, e)),
        }
    }
    Err(DiscoveryError::Failed {
        issuer: issuer.to_string(),
        attempts: failed,
    })
}

async fn document(
    http: &reqwest::Client,
    url: &str,
    issuer: &str,
) -> Result<Metadata, DocumentError> {
    let mut response = http
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| DocumentError::Network(super::request::describe(&e)))?;
    if !response.status().is_success() {
        return Err(DocumentError::Status(response.status().as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| DocumentError::Network(super::request::describe(&e)))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(DocumentError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    parse(&body, issuer)
}

/// The metadata in `body`, if it is a JSON object for `issuer` with usable endpoints.
pub fn parse(body: &[u8], issuer: &str) -> Result<Metadata, DocumentError> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| DocumentError::NotJson)?;
    let doc = doc.as_object().ok_or(DocumentError::NotJson)?;
    match doc.get("issuer").and_then(|v| v.as_str()) {
        Some(found) if found == issuer => {}
        found => {
            return Err(DocumentError::IssuerMismatch {
                expected: issuer.to_string(),
                found: Redactor::default().clean(found.unwrap_or("(none)"), MAX_QUOTED),
            });
        }
    }
    let issuer_url = reqwest::Url::parse(issuer).map_err(|_| DocumentError::NotJson)?;
    let endpoint = |obj: &serde_json::Map<String, serde_json::Value>, key: &'static str| {
        endpoint(obj, key, &issuer_url)
    };
    let mtls_token_endpoint = match doc.get("mtls_endpoint_aliases") {
        Some(serde_json::Value::Object(aliases)) => {
            endpoint(aliases, "token_endpoint").map_err(|e| match e {
                DocumentError::BadEndpoint { reason, .. } => DocumentError::BadEndpoint {
                    key: "mtls_endpoint_aliases.token_endpoint",
                    reason,
                },
                other => other,
            })?
        }
        _ => None,
    };
    Ok(Metadata {
        token_endpoint: endpoint(doc, "token_endpoint")?,
        authorization_endpoint: endpoint(doc, "authorization_endpoint")?,
        device_authorization_endpoint: endpoint(doc, "device_authorization_endpoint")?,
        mtls_token_endpoint,
        auth_methods_supported: doc
            .get("token_endpoint_auth_methods_supported")
            .and_then(|v| v.as_array())
            .map(|list| {
                list.iter()
                    .filter_map(|m| m.as_str().map(str::to_string))
                    .collect()
            }),
    })
}

/// The endpoint under `key`, if present: an absolute https URL, or plain http to a loopback
/// host or where the issuer itself is plain http (which the config allowed for this provider;
/// an https issuer is never downgraded).
fn endpoint(
    obj: &serde_json::Map<String, serde_json::Value>,
    key: &'static str,
    issuer: &reqwest::Url,
) -> Result<Option<String>, DocumentError> {
    let bad = |reason: &str| DocumentError::BadEndpoint {
        key,
        reason: reason.to_string(),
    };
    let Some(value) = obj.get(key) else {
        return Ok(None);
    };
    let text = value.as_str().ok_or_else(|| bad("is not a string"))?;
    let url = reqwest::Url::parse(text).map_err(|_| bad("is not a URL"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback || issuer.scheme() == "http" => {}
        "http" => {
            return Err(bad(
                "is plain http to a non-loopback host from an https issuer",
            ));
        }
        _ => return Err(bad("is not an http(s) URL")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("carries credentials"));
    }
    Ok(Some(url.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_urls_follow_both_specs() {
        assert_eq!(
            well_known_urls("https://idp.example.com/realm").unwrap(),
            [
                "https://idp.example.com/.well-known/oauth-authorization-server/realm",
                "https://idp.example.com/realm/.well-known/openid-configuration",
            ]
        );
        assert_eq!(
            well_known_urls("http://127.0.0.1:8080").unwrap(),
            [
                "http://127.0.0.1:8080/.well-known/oauth-authorization-server",
                "http://127.0.0.1:8080/.well-known/openid-configuration",
            ]
        );
        assert_eq!(
            well_known_urls("https://h/a/b/").unwrap()[0],
            "https://h/.well-known/oauth-authorization-server/a/b"
        );
        assert!(well_known_urls("https://h/?x=1").is_err());
        assert!(well_known_urls("not a url").is_err());
    }

    fn doc(v: serde_json::Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    #[test]
    fn a_document_gives_its_endpoints() {
        let m = parse(
            &doc(serde_json::json!({
                "issuer": "https://idp/r",
                "token_endpoint": "https://idp/r/token",
                "authorization_endpoint": "https://idp/r/auth",
                "device_authorization_endpoint": "https://idp/r/device",
                "mtls_endpoint_aliases": {"token_endpoint": "https://mtls.idp/r/token"},
                "token_endpoint_auth_methods_supported": ["private_key_jwt", 3, "none"]
            })),
            "https://idp/r",
        )
        .unwrap();
        assert_eq!(m.token_endpoint.as_deref(), Some("https://idp/r/token"));
        assert_eq!(
            m.authorization_endpoint.as_deref(),
            Some("https://idp/r/auth")
        );
        assert_eq!(
            m.device_authorization_endpoint.as_deref(),
            Some("https://idp/r/device")
        );
        assert_eq!(
            m.token_endpoint_for(AuthMethod::TlsClientAuth),
            Some("https://mtls.idp/r/token")
        );
        assert_eq!(
            m.token_endpoint_for(AuthMethod::PrivateKeyJwt),
            Some("https://idp/r/token")
        );
        assert!(m.leaves_out(AuthMethod::Basic));
        assert!(!m.leaves_out(AuthMethod::None));
    }

    #[test]
    fn hostile_documents_are_refused() {
        let issuer = "https://idp/r";
        let parse = |v| parse(&doc(v), issuer);
        assert!(matches!(
            parse(serde_json::json!({"issuer": "https://evil/r\u{1b}[2J"})),
            Err(DocumentError::IssuerMismatch { found, .. }) if !found.contains('\u{1b}')
        ));
        // A trailing slash is another issuer: the match is exact.
        assert!(matches!(
            parse(serde_json::json!({"issuer": "https://idp/r/"})),
            Err(DocumentError::IssuerMismatch { .. })
        ));
        assert!(matches!(
            parse(serde_json::json!({"token_endpoint": "https://idp/r/token"})),
            Err(DocumentError::IssuerMismatch { .. })
        ));
        for (key, value) in [
            ("token_endpoint", serde_json::json!("http://idp/r/token")),
            ("token_endpoint", serde_json::json!("file:///etc/passwd")),
            ("token_endpoint", serde_json::json!(42)),
            ("authorization_endpoint", serde_json::json!("//idp/auth")),
            ("token_endpoint", serde_json::json!("https://u:p@idp/token")),
        ] {
            let result = parse(serde_json::json!({"issuer": issuer, key: value}));
            assert!(
                matches!(result, Err(DocumentError::BadEndpoint { .. })),
                "{key} = {value}: {result:?}"
            );
        }
        assert!(matches!(
            parse(serde_json::json!({"issuer": issuer,
                "mtls_endpoint_aliases": {"token_endpoint": "http://mtls/token"}})),
            Err(DocumentError::BadEndpoint {
                key: "mtls_endpoint_aliases.token_endpoint",
                ..
            })
        ));
        assert!(matches!(
            parse(serde_json::json!([1])),
            Err(DocumentError::NotJson)
        ));
        assert!(matches!(
            super::parse(b"<html>", issuer),
            Err(DocumentError::NotJson)
        ));
        // Plain http is as good as the issuer's own scheme, or loopback.
        let m = super::parse(
            &doc(serde_json::json!({"issuer": "http://idp.lan",
                "token_endpoint": "http://idp.lan/token"})),
            "http://idp.lan",
        )
        .unwrap();
        assert_eq!(m.token_endpoint.as_deref(), Some("http://idp.lan/token"));
    }

    #[test]
    fn only_unreachable_or_garbled_documents_are_retried_quickly() {
        let failed = |errors: Vec<DocumentError>| DiscoveryError::Failed {
            issuer: "https://idp".into(),
            attempts: errors.into_iter().map(|e| ("u".to_string(), e)).collect(),
        };
        assert_eq!(
            failed(vec![
                DocumentError::Status(404),
                DocumentError::Network("refused".into())
            ])
            .kind(),
            FailureKind::Transient
        );
        assert_eq!(
            failed(vec![DocumentError::Status(404), DocumentError::Status(404)]).kind(),
            FailureKind::NeedsOperator
        );
        let mismatch = || DocumentError::IssuerMismatch {
            expected: "a".into(),
            found: "b".into(),
        };
        assert_eq!(
            failed(vec![DocumentError::Status(404), mismatch()]).kind(),
            FailureKind::NeedsOperator
        );
        assert_eq!(
            failed(vec![DocumentError::Status(503), mismatch()]).kind(),
            FailureKind::Transient
        );
    }
}
