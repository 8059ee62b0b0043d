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
        token: c.oauth.token_endpoint.clone().unwrap_or_else(|| {
            metadata
                .and_then(|m| m.token_endpoint_for(c.oauth.auth_method))
                .unwrap_or_default()
                .to_string()
        }),
        authorization: c
            .authorize_endpoint
            .clone()
            .or_else(|| metadata.and_then(|m| m.authorization_endpoint.clone())),
        device_authorization: c
            .device_authorization_endpoint
            .clone()
            .or_else(|| metadata.and_then(|m| m.device_authorization_endpoint.clone())),
    };
    let Some(issuer) = &c.oauth.issuer else {
        return Ok(configured(None));
    };
    let all_set = c.oauth.token_endpoint.is_some()
        && c.authorize_endpoint.is_some()
        && c.device_authorization_endpoint.is_some();
    if all_set {
        return Ok(configured(None));
    }
    let metadata = discovery::discover(http, issuer, DISCOVERY_TIMEOUT).await?;
    let endpoints = configured(Some(&metadata));
    if endpoints.token.is_empty() {
        return Err(DiscoveryError::Missing {
            issuer: issuer.clone(),
            key: "token_endpoint",
        });
    }
    Ok(endpoints)
}
