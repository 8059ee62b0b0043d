//! A failed token request, and how it should be retried.

use std::time::Duration;

use super::MAX_REPLY_BYTES;
use super::client_auth::assertion::AssertionError;
use super::federated::FederatedError;
use super::reply::{OAuthError, ReplyError};
use super::tls::TlsError;
use crate::secret::SecretError;

/// How a failure should be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// May fix itself (network, 5xx, 429, garbled reply): retry with backoff.
    Transient,
    /// Will not fix itself (bad credentials, revoked grant, wrong endpoint): retry slowly.
    NeedsOperator,
}

/// A failed token request. Messages never carry secrets, tokens or raw reply bodies.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("token endpoint answered {status} {error}")]
    OAuth {
        status: u16,
        error: OAuthError,
        retry_after: Option<Duration>,
    },
    #[error("token endpoint answered HTTP {status} without an OAuth error body")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("token request failed: {0}")]
    Network(String),
    #[error("token request timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("token endpoint reply is larger than {MAX_REPLY_BYTES} bytes")]
    TooLarge,
    #[error("unusable token reply: {0}")]
    Reply(#[from] ReplyError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("no usable refresh token: {0}")]
    NoRefreshToken(SecretError),
    #[error("cannot make the client assertion: {0}")]
    Assertion(#[from] AssertionError),
    /// The provider refused the client's authentication; `hint` says what to check.
    #[error("{source}; {hint}")]
    AuthRefused {
        source: Box<FetchError>,
        hint: String,
    },
    #[error("client TLS files: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Discovery(#[from] super::discovery::DiscoveryError),
    /// `basic_encoding = "auto"`: the Basic header was refused RFC 6749 form-encoded and raw.
    #[error(
        "{0}; the client id and secret were sent in the Basic header both ways (RFC 6749 form-encoded, then raw) and refused both times: check client_id and the secret, or set auth_method = \"post\" to send them in the form body"
    )]
    BasicRefused(Box<FetchError>),
    #[error(transparent)]
    Federated(#[from] FederatedError),
    #[error("DPoP: {0}")]
    Dpop(super::dpop::DpopError),
    /// The provider refused the federated tokens presented; `presented` says which, with
    /// their claims, for comparison with the provider's trust policy.
    #[error("{source}; the provider refused {presented}")]
    FederatedRefused {
        source: Box<FetchError>,
        presented: String,
    },
}

/// OAuth error codes that no retry can fix: the operator must change credentials or config.
const OPERATOR_ERRORS: &[&str] = &[
    "invalid_client",
    "unauthorized_client",
    "invalid_grant",
    "unsupported_grant_type",
    "invalid_scope",
    "invalid_request",
    "invalid_target",
];

impl FetchError {
    pub fn kind(&self) -> FailureKind {
        match self {
            FetchError::BasicRefused(e) => e.kind(),
            // The nonce retry was answered with yet another nonce request: the server's nonces
            // are turning over, which the next attempt can meet.
            FetchError::OAuth { error, .. } if error.error == "use_dpop_nonce" => {
                FailureKind::Transient
            }
            FetchError::OAuth { status, error, .. } => {
                if OPERATOR_ERRORS.contains(&error.error.as_str()) {
                    FailureKind::NeedsOperator
                } else {
                    status_kind(*status)
                }
            }
            FetchError::Status { status, .. } => status_kind(*status),
            FetchError::Secret(e) | FetchError::NoRefreshToken(e) if e.is_transient() => {
                FailureKind::Transient
            }
            FetchError::Secret(_) | FetchError::NoRefreshToken(_) => FailureKind::NeedsOperator,
            FetchError::Assertion(AssertionError::Key(e)) if e.is_transient() => {
                FailureKind::Transient
            }
            FetchError::Assertion(_) => FailureKind::NeedsOperator,
            FetchError::AuthRefused { .. } => FailureKind::NeedsOperator,
            FetchError::Tls(e) if e.is_transient() => FailureKind::Transient,
            FetchError::Tls(_) => FailureKind::NeedsOperator,
            FetchError::Network(_)
            | FetchError::Timeout(_)
            | FetchError::TooLarge
            | FetchError::Reply(_) => FailureKind::Transient,
            FetchError::Discovery(e) => e.kind(),
            FetchError::Dpop(e) if e.is_transient() => FailureKind::Transient,
            FetchError::Dpop(_) => FailureKind::NeedsOperator,
            FetchError::Federated(e) if e.is_transient() => FailureKind::Transient,
            FetchError::Federated(_) | FetchError::FederatedRefused { .. } => {
                FailureKind::NeedsOperator
            }
        }
    }

    /// Whether only a new authorization (`tokend authorize`) can fix this: the refresh token is
    /// missing, or the provider rejected it (revoked, expired or already used).
    pub fn needs_reauthorization(&self) -> bool {
        match self {
            FetchError::BasicRefused(e) => e.needs_reauthorization(),
            FetchError::NoRefreshToken(e) => !e.is_transient(),
            FetchError::OAuth { error, .. } => error.error == "invalid_grant",
            _ => false,
        }
    }

    /// A short, bounded label for metrics: the OAuth error code, `http_NNN`, or the kind.
    pub fn label(&self) -> String {
        match self {
            FetchError::BasicRefused(e) => e.label(),
            FetchError::OAuth { error, .. } => error
                .error
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(40)
                .collect(),
            FetchError::Status { status, .. } => format!("http_{status}"),
            FetchError::Network(_) => "network".into(),
            FetchError::Timeout(_) => "timeout".into(),
            FetchError::TooLarge => "too_large".into(),
            FetchError::Reply(_) => "bad_reply".into(),
            FetchError::Secret(e) | FetchError::NoRefreshToken(e) if e.is_transient() => {
                "credentials_io".into()
            }
            FetchError::Secret(_) | FetchError::NoRefreshToken(_) => "credentials".into(),
            FetchError::Assertion(AssertionError::Key(e)) if e.is_transient() => {
                "credentials_io".into()
            }
            FetchError::Assertion(_) => "credentials".into(),
            FetchError::AuthRefused { source, .. } => source.label(),
            FetchError::Tls(e) if e.is_transient() => "credentials_io".into(),
            FetchError::Tls(_) => "credentials".into(),
            FetchError::Discovery(_) => "discovery".into(),
            FetchError::Dpop(e) if e.is_transient() => "credentials_io".into(),
            FetchError::Dpop(_) => "dpop".into(),
            FetchError::Federated(e) if e.is_transient() => "credentials_io".into(),
            FetchError::Federated(_) => "federated".into(),
            FetchError::FederatedRefused { source, .. } => source.label(),
        }
    }

    /// The delay the endpoint asked for with `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::BasicRefused(e) => e.retry_after(),
            FetchError::OAuth { retry_after, .. } | FetchError::Status { retry_after, .. } => {
                *retry_after
            }
            FetchError::AuthRefused { source, .. }
            | FetchError::FederatedRefused { source, .. } => source.retry_after(),
            _ => None,
        }
    }
}

fn status_kind(status: u16) -> FailureKind {
    match status {
        408 | 429 => FailureKind::Transient,
        400..=499 => FailureKind::NeedsOperator,
        _ => FailureKind::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        let oauth = |status, code: &str| FetchError::OAuth {
            status,
            error: OAuthError {
                error: code.into(),
                description: None,
            },
            retry_after: None,
        };
        assert_eq!(
            oauth(401, "invalid_client").kind(),
            FailureKind::NeedsOperator
        );
        assert_eq!(
            oauth(400, "invalid_grant").kind(),
            FailureKind::NeedsOperator
        );
        assert_eq!(
            oauth(503, "temporarily_unavailable").kind(),
            FailureKind::Transient
        );
        let status = |status| FetchError::Status {
            status,
            retry_after: None,
        };
        assert_eq!(status(429).kind(), FailureKind::Transient);
        assert_eq!(status(502).kind(), FailureKind::Transient);
        assert_eq!(status(404).kind(), FailureKind::NeedsOperator);
        assert_eq!(FetchError::TooLarge.kind(), FailureKind::Transient);
        let io = |errno: i32| SecretError::Read {
            path: "/etc/tokend/secret".into(),
            source: std::io::Error::from_raw_os_error(errno),
        };
        // Out of descriptors says nothing about the credentials.
        let emfile = FetchError::Secret(io(nix::libc::EMFILE));
        assert_eq!(emfile.kind(), FailureKind::Transient);
        assert_eq!(emfile.label(), "credentials_io");
        let rt_emfile = FetchError::NoRefreshToken(io(nix::libc::EMFILE));
        assert_eq!(rt_emfile.kind(), FailureKind::Transient);
        assert!(!rt_emfile.needs_reauthorization());
        let missing = FetchError::NoRefreshToken(io(nix::libc::ENOENT));
        assert_eq!(missing.kind(), FailureKind::NeedsOperator);
        assert!(missing.needs_reauthorization());
        assert_eq!(
            FetchError::Secret(io(nix::libc::ENOENT)).label(),
            "credentials"
        );
    }
}
