//! The token endpoint client: builds the grant request for one configured client, sends it over
//! HTTPS (rustls) with a timeout and a cap on the reply size, and classifies the outcome.
//!
//! - `settings`: what a client's requests need (endpoint, credentials, grant, parameters).
//! - `client_auth`: how the client authenticates (HTTP Basic, form body, signed assertions).
//! - `source`: the [`TokenSource`] the refresher asks, and its HTTP implementation.
//! - `request`: one token request and its reply.
//! - `tls`: a client's own certificate, key and CAs (mTLS, `ca_file`), and its HTTP client.
//! - `discovery`: the issuer's metadata (RFC 8414), for clients configured by their issuer.
//! - `federated`: tokens the platform issues, exchanged or presented instead of a secret.
//! - `dpop`: each DPoP client's key (made once, kept mode 0600) and the proofs signed with it
//!   (RFC 9449), sent with its token requests and signed for callers and the proxy.
//! - `reply`: parsing and judging token endpoint replies.
//! - `error`: what can go wrong, and how it is retried.
//! - `retry_after`, `redact`, `inflight`, `unsaved`, `budget`: Retry-After, redaction of
//!   echoed credentials, in-flight markers, refresh tokens the disk refused, and each endpoint's
//!   request budget.

pub mod budget;
mod client_auth;
pub mod discovery;
pub mod dpop;
mod error;
pub mod federated;
mod inflight;
pub mod redact;
pub mod reply;
mod request;
mod retry_after;
mod settings;
mod source;
pub mod tls;
mod unsaved;

pub use client_auth::assertion::{jti, signing_input};
pub use client_auth::basic::{self, BasicEncoding};
pub use client_auth::{
    AssertionAlg, AssertionAudience, AssertionSettings, AuthMethod, ClientKey, KeyError,
    basic_authorization, key_file,
};
pub use error::{FailureKind, FetchError};
pub use redact::Redactor;
pub use reply::{TokenReply, TokenType};
pub use request::{Carried, Granted, describe as describe_http_error, post_form, request_token};
pub use retry_after::parse_retry_after;
pub use settings::{ClientSettings, Grant, RareSettings, RequestSettings, SecretSource};
pub use source::{HttpTokenSource, TokenSource, http_client};

/// Token replies are a few KiB; anything much larger is a misconfigured endpoint, and reading
/// it whole would let a broken or hostile endpoint exhaust memory.
pub const MAX_REPLY_BYTES: usize = 1024 * 1024;
