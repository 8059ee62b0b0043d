//! How a client proves who it is to the token endpoint.

use serde::Deserialize;

mod alg;
pub mod assertion;
pub mod basic;
mod key;
pub mod key_file;

pub use alg::AssertionAlg;
pub use assertion::{AssertionAudience, AssertionSettings};
pub use basic::basic_authorization;
pub use key::{ClientKey, KeyError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum AuthMethod {
    /// `client_secret_basic`: id and secret in an HTTP Basic header.
    Basic,
    /// `client_secret_post`: id and secret in the form body.
    Post,
    /// A public client (RFC 6749 section 2.1): only `client_id` in the form body, no secret.
    None,
    /// `private_key_jwt` (RFC 7523 section 2.2): a JWT signed with the client's private key.
    PrivateKeyJwt,
    /// `client_secret_jwt`: a JWT signed with the client secret (HMAC).
    ClientSecretJwt,
    /// `tls_client_auth` (RFC 8705 section 2.1): a CA-issued certificate on the TLS connection.
    TlsClientAuth,
    /// `self_signed_tls_client_auth` (RFC 8705 section 2.2): a self-signed certificate.
    SelfSignedTlsClientAuth,
    /// A JWT the platform minted (workload identity federation), read at every request and
    /// sent as the client assertion (RFC 7523 section 2.2), as Entra ID and Google expect.
    FederatedAssertion,
}

impl AuthMethod {
    /// Whether the method authenticates with the client secret (so one must be configured).
    pub fn uses_secret(self) -> bool {
        match self {
            AuthMethod::Basic | AuthMethod::Post | AuthMethod::ClientSecretJwt => true,
            AuthMethod::None
            | AuthMethod::PrivateKeyJwt
            | AuthMethod::TlsClientAuth
            | AuthMethod::SelfSignedTlsClientAuth
            | AuthMethod::FederatedAssertion => false,
        }
    }

    /// Whether the client authenticates with a certificate on the TLS connection (RFC 8705).
    pub fn uses_tls(self) -> bool {
        matches!(
            self,
            AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth
        )
    }

    /// The name providers list it by (RFC 8414 `token_endpoint_auth_methods_supported`): a
    /// federated assertion is, to the provider, a JWT assertion like `private_key_jwt`.
    pub fn metadata_name(self) -> &'static str {
        match self {
            AuthMethod::FederatedAssertion => "private_key_jwt",
            other => other.as_str(),
        }
    }

    /// The RFC 7591 / RFC 8414 name (`token_endpoint_auth_method`), or tokend's own for
    /// `federated_assertion`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Basic => "client_secret_basic",
            AuthMethod::Post => "client_secret_post",
            AuthMethod::None => "none",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
            AuthMethod::ClientSecretJwt => "client_secret_jwt",
            AuthMethod::TlsClientAuth => "tls_client_auth",
            AuthMethod::SelfSignedTlsClientAuth => "self_signed_tls_client_auth",
            AuthMethod::FederatedAssertion => "federated_assertion",
        }
    }
}

/// Every method by the names a config may use: tokend's short one, then the RFC 7591 one.
const NAMES: &[(&str, &str, AuthMethod)] = &[
    ("basic", "client_secret_basic", AuthMethod::Basic),
    ("post", "client_secret_post", AuthMethod::Post),
    ("none", "none", AuthMethod::None),
    (
        "private_key_jwt",
        "private_key_jwt",
        AuthMethod::PrivateKeyJwt,
    ),
    (
        "client_secret_jwt",
        "client_secret_jwt",
        AuthMethod::ClientSecretJwt,
    ),
    (
        "tls_client_auth",
        "tls_client_auth",
        AuthMethod::TlsClientAuth,
    ),
    (
        "self_signed_tls_client_auth",
        "self_signed_tls_client_auth",
        AuthMethod::SelfSignedTlsClientAuth,
    ),
    (
        "federated_assertion",
        "federated_assertion",
        AuthMethod::FederatedAssertion,
    ),
];

// Parsed by hand so that a wrong value is named with the accepted ones.
impl TryFrom<String> for AuthMethod {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        NAMES
            .iter()
            .find(|(short, long, _)| s == *short || s == *long)
            .map(|(_, _, method)| *method)
            .ok_or_else(|| {
                let mut names: Vec<String> =
                    NAMES.iter().map(|(n, _, _)| format!("{n:?}")).collect();
                names.dedup();
                format!(
                    "{s:?} is not an auth method; use one of {}",
                    names.join(", ")
                )
            })
    }
}
