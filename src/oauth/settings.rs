//! What the token endpoint client needs to know of a client: its endpoint, credentials, grant
//! and the parameters it sends. The config parses into these types; nothing here reads it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::client_auth::basic::BasicEncoding;
use super::client_auth::{AssertionAudience, AssertionSettings, AuthMethod};
use super::federated::Federated;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Grant {
    ClientCredentials,
    RefreshToken,
    /// RFC 8693: a token the platform issued (the subject token) exchanged for an access token.
    TokenExchange,
    /// RFC 7523 section 2.1: a JWT the platform issued, presented as the authorization grant.
    JwtBearer,
}

/// Every grant: its config name, then its `grant_type` (which a config may use too).
const GRANTS: &[(&str, &str, Grant)] = &[
    (
        "client_credentials",
        "client_credentials",
        Grant::ClientCredentials,
    ),
    ("refresh_token", "refresh_token", Grant::RefreshToken),
    (
        "token_exchange",
        "urn:ietf:params:oauth:grant-type:token-exchange",
        Grant::TokenExchange,
    ),
    (
        "jwt_bearer",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
        Grant::JwtBearer,
    ),
];

// Parsed by hand so that a wrong value is named with the accepted ones, rather than serde's
// "does not have variant constructor".
impl TryFrom<String> for Grant {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        GRANTS
            .iter()
            .find(|(name, grant_type, _)| s == *name || s == *grant_type)
            .map(|(_, _, grant)| *grant)
            .ok_or_else(|| {
                let names: Vec<String> = GRANTS.iter().map(|(n, _, _)| format!("{n:?}")).collect();
                format!(
                    "{s:?} is not a supported grant; use one of {}",
                    names.join(", ")
                )
            })
    }
}

impl Grant {
    /// The name a config uses, and status shows.
    pub fn name(self) -> &'static str {
        self.entry().0
    }

    /// The `grant_type` form parameter.
    pub fn grant_type(self) -> &'static str {
        self.entry().1
    }

    fn entry(self) -> &'static (&'static str, &'static str, Grant) {
        GRANTS
            .iter()
            .find(|(_, _, g)| *g == self)
            .expect("every grant is in GRANTS")
    }

    /// Whether the request asks for the configured scope. A refresh asks for none: omitted, it
    /// means the scope already granted (RFC 6749 section 6), while asking again fails with
    /// invalid_scope wherever consent granted less.
    pub fn sends_scope(self) -> bool {
        self != Grant::RefreshToken
    }
}

/// Where the client secret is read, each time a request is made (so a rotated secret is used
/// without a reload). The file is shared by the clients that name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(Arc<Path>),
    Env(String),
}

/// One client as its token requests need it. Strings many clients have alike (the endpoint,
/// the issuer, the scope) are shared: the config holds one copy of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// Set explicitly; when unset, the issuer's metadata names it (validation wants one of the
    /// two).
    pub token_endpoint: Option<Arc<str>>,
    pub client_id: Box<str>,
    /// The client secret, for the methods that use one ([`AuthMethod::uses_secret`]).
    pub secret: Option<SecretSource>,
    pub auth_method: AuthMethod,
    /// How `client_secret_basic` encodes id and secret in the header.
    pub basic_encoding: BasicEncoding,
    pub grant: Grant,
    /// Space-separated scopes to request; omitted from the request when unset.
    pub scope: Option<Arc<str>>,
    /// The issuer (RFC 8414), whose metadata names the endpoints `token_endpoint` leaves unset.
    pub issuer: Option<Arc<str>>,
    /// Tokens the platform issues, presented as the grant or the client's authentication
    /// (boxed: most clients have none, and every client's settings are held).
    pub federated: Option<Box<Federated>>,
    /// The settings most clients leave unset, read through [`ClientSettings::rare`]; `None`
    /// when all are (boxed, as `federated`).
    pub rare: Option<Box<RareSettings>>,
}

/// The settings of a client that most clients leave unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RareSettings {
    /// Where the refresh token is kept (refresh-token grant only).
    pub refresh_token_file: Option<PathBuf>,
    pub audience: Option<String>,
    pub resource: Option<String>,
    /// Further form parameters sent with every token request.
    pub extra_params: BTreeMap<String, String>,
    /// The client's private key (PEM), for `private_key_jwt` and mTLS.
    pub client_key: Option<PathBuf>,
    /// The client's certificate chain (PEM), for mTLS.
    pub client_cert: Option<PathBuf>,
    /// CAs (PEM) trusted for this client's endpoints instead of the platform's store.
    pub ca_file: Option<PathBuf>,
    /// `kid`, `alg` and `aud` of the client assertions (private_key_jwt, client_secret_jwt).
    pub assertion: AssertionSettings,
    /// The DPoP key file (RFC 9449): set, every token request carries a proof signed with it.
    pub dpop_key: Option<PathBuf>,
}

/// The [`RareSettings`] of a client that sets none.
static UNSET: RareSettings = RareSettings {
    refresh_token_file: None,
    audience: None,
    resource: None,
    extra_params: BTreeMap::new(),
    client_key: None,
    client_cert: None,
    ca_file: None,
    assertion: AssertionSettings {
        key_id: None,
        alg: None,
        audience: AssertionAudience::TokenEndpoint,
    },
    dpop_key: None,
};

impl RareSettings {
    /// The value of [`ClientSettings::rare`]: `None` when every setting is unset.
    pub fn boxed(self) -> Option<Box<RareSettings>> {
        (self != UNSET).then(|| Box::new(self))
    }
}

impl ClientSettings {
    /// What names the client's provider before discovery: the configured token endpoint, else
    /// the issuer. Clients that share it share a request budget and take turns to start.
    pub fn endpoint_key(&self) -> &str {
        self.token_endpoint
            .as_deref()
            .or(self.issuer.as_deref())
            .unwrap_or("")
    }

    /// The settings most clients leave unset.
    pub fn rare(&self) -> &RareSettings {
        self.rare.as_deref().unwrap_or(&UNSET)
    }

    /// The same, to set one (boxed here if none was set: set one, so that `rare` stays `None`
    /// exactly when all are unset, as equality needs).
    pub fn rare_mut(&mut self) -> &mut RareSettings {
        self.rare.get_or_insert_default()
    }
}

#[cfg(test)]
impl ClientSettings {
    /// A client-credentials client of `endpoint` with nothing optional set, for unit tests to
    /// fill in what they test (one place to grow when a setting is added).
    pub fn for_tests(endpoint: &str, client_id: &str, auth_method: AuthMethod) -> Self {
        ClientSettings {
            token_endpoint: Some(endpoint.into()),
            client_id: client_id.into(),
            secret: None,
            auth_method,
            basic_encoding: Default::default(),
            grant: Grant::ClientCredentials,
            scope: None,
            issuer: None,
            federated: None,
            rare: None,
        }
    }
}

/// How every request is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestSettings {
    /// One request, connect to last byte.
    pub timeout: Duration,
    /// Assumed when a reply has no `expires_in` and the token is not a JWT with `exp`.
    pub default_lifetime: Duration,
    /// How long credentials a provider refused are not sent again unchanged.
    pub operator_retry: Duration,
}
