//! A client's endpoints as `tokend authorize` and `tokend check` need them: the configured
//! ones, and for those left unset the ones its issuer's metadata names (RFC 8414).

use std::time::Duration;

use crate::config::ClientConfig;
use crate::oauth::FetchError;
use crate::oauth::discovery::{self, DiscoveryError, Metadata};

/// How long the metadata may take to read from the command line.
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where one client's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub token: String,
    pub authorization: Option<String>,
    pub device_authorization: Option<String>,
}

/// The HTTP client for `c`'s requests from the command line: with its own certificate (mTLS)
/// and CAs (`ca_file`) when it has them, as the daemon's.
pub async fn client_http(name: &str, c: &ClientConfig) -> Result<reqwest::Client, FetchError> {
    Ok(
        crate::oauth::tls::Http::new(crate::oauth::http_client(), &c.oauth)
            .get(name)
            .await?,
    )
}

/// The client's endpoints, reading the issuer's metadata only when the config leaves one unset;
/// a configured endpoint always wins over the document's.
pub async fn resolve(
    c: &ClientConfig,
    http: &reqwest::Client,
) -> Result<Endpoints, DiscoveryError> {
    let configured = |metadata: Option<&Metadata>| Endpoints {
        token: c
            .oauth
            .token_endpoint
            .as_deref()
            .map(str::to_string)
            .unwrap_or_else(|| {
                metadata
                    .and_then(|m| m.token_endpoint_for(c.oauth.auth_method))
                    .unwrap_or_default()
                    .to_string()
            }),
        authorization: c
            .authorize()
            .authorize_endpoint
            .clone()
            .or_else(|| metadata.and_then(|m| m.authorization_endpoint.clone())),
        device_authorization: c
            .authorize()
            .device_authorization_endpoint
            .clone()
            .or_else(|| metadata.and_then(|m| m.device_authorization_endpoint.clone())),
    };
    let Some(issuer) = &c.oauth.issuer else {
        return Ok(configured(None));
    };
    let all_set = c.oauth.token_endpoint.is_some()
        && c.authorize().authorize_endpoint.is_some()
        && c.authorize().device_authorization_endpoint.is_some();
    if all_set {
        return Ok(configured(None));
    }
    let metadata = discovery::discover(http, issuer, DISCOVERY_TIMEOUT).await?;
    let endpoints = configured(Some(&metadata));
    if endpoints.token.is_empty() {
        return Err(DiscoveryError::Missing {
            issuer: issuer.to_string(),
            key: "token_endpoint",
        });
    }
    Ok(endpoints)
}

/// How long `tokend check` waits for one issuer's metadata: it only warns.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// What `tokend check` warns about the clients configured by their issuer: metadata that cannot
/// be read or used (the daemon would retry it: a warning, not an error), and auth methods the
/// provider does not list. One line per client, in the config's order.
pub async fn warnings(config: &crate::Config) -> Vec<String> {
    let http = crate::oauth::http_client();
    let mut issuers = tokio::task::JoinSet::new();
    let mut seen = std::collections::BTreeSet::new();
    for c in config.clients.values() {
        if let Some(issuer) = c.oauth.issuer.clone()
            && seen.insert(issuer.clone())
        {
            let http = http.clone();
            issuers.spawn(async move {
                let read = discovery::discover(&http, &issuer, CHECK_TIMEOUT).await;
                (issuer, read)
            });
        }
    }
    let read: std::collections::BTreeMap<_, _> = issuers.join_all().await.into_iter().collect();
    let mut out = Vec::new();
    for (name, c) in &config.clients {
        let Some(issuer) = &c.oauth.issuer else {
            continue;
        };
        let warning = match &read[issuer] {
            Err(e) => Some(e.to_string()),
            Ok(m)
                if c.oauth.token_endpoint.is_none()
                    && m.token_endpoint_for(c.oauth.auth_method).is_none() =>
            {
                Some(format!(
                    "the metadata of issuer {issuer} names no token_endpoint; set token_endpoint"
                ))
            }
            Ok(m) if m.leaves_out(c.oauth.auth_method) => Some(format!(
                "the metadata of issuer {issuer} does not list auth_method {:?} among its token_endpoint_auth_methods_supported",
                c.oauth.auth_method.as_str()
            )),
            Ok(_) => None,
        };
        out.extend(warning.map(|w| format!("client {name:?}: {w}")));
    }
    out
}
