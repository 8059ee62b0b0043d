//! Federated credentials: tokens a platform issues to the workload (a Kubernetes service
//! account token, a SPIFFE JWT-SVID, a CI job's OIDC token), presented to the provider instead
//! of a stored secret: as the subject of a token exchange (RFC 8693), as a JWT bearer grant
//! (RFC 7523 section 2.1), or as the client's assertion (`federated_assertion`).
//!
//! - this file: where each is configured to come from, and the token type names;
//! - `read`: reading them for one request (never cached past it), and what is refused unsent.

mod read;

use std::path::PathBuf;

pub use read::{FederatedError, Presented, read_for_client};

/// Where one federated token comes from, at every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// Re-read for every request, held to the secret files' rules.
    File(PathBuf),
    /// An argv run without a shell; its standard output is the token.
    Command(Vec<String>),
}

impl CredentialSource {
    /// What names the source in messages: the file's path or the command's program.
    pub fn describe(&self) -> String {
        match self {
            CredentialSource::File(path) => path.display().to_string(),
            CredentialSource::Command(argv) => {
                format!("command {}", argv.first().map_or("", String::as_str))
            }
        }
    }
}

/// A token and the RFC 8693 type it is presented as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedSource {
    pub source: CredentialSource,
    /// A token type URI (`urn:ietf:params:oauth:token-type:jwt`, ...).
    pub token_type: String,
}

/// A client's federated credentials, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Federated {
    /// `grant = "token_exchange"`: the subject token (required there)...
    pub subject: Option<TypedSource>,
    /// ...the actor token (optional)...
    pub actor: Option<TypedSource>,
    /// ...and the token type asked for (`requested_token_type`), whose reply is checked.
    pub requested_token_type: Option<String>,
    /// `grant = "jwt_bearer"`: the assertion.
    pub assertion: Option<CredentialSource>,
    /// `auth_method = "federated_assertion"`: the client assertion, a JWT minted by the
    /// platform.
    pub client_assertion: Option<CredentialSource>,
}

impl Federated {
    /// Every source, named by what it is (for messages) and its config key prefix.
    pub fn sources(&self) -> impl Iterator<Item = (Role, &CredentialSource)> {
        [
            (Role::Subject, self.subject.as_ref().map(|t| &t.source)),
            (Role::Actor, self.actor.as_ref().map(|t| &t.source)),
            (Role::Assertion, self.assertion.as_ref()),
            (Role::ClientAssertion, self.client_assertion.as_ref()),
        ]
        .into_iter()
        .filter_map(|(role, source)| Some((role, source?)))
    }
}

/// Which federated token a source supplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Subject,
    Actor,
    Assertion,
    ClientAssertion,
}

impl Role {
    /// As messages name it.
    pub fn noun(self) -> &'static str {
        match self {
            Role::Subject => "subject token",
            Role::Actor => "actor token",
            Role::Assertion => "assertion",
            Role::ClientAssertion => "client assertion",
        }
    }

    /// The config keys' prefix (`subject_token` of `subject_token_file`, ...).
    pub fn key(self) -> &'static str {
        match self {
            Role::Subject => "subject_token",
            Role::Actor => "actor_token",
            Role::Assertion => "assertion",
            Role::ClientAssertion => "client_assertion",
        }
    }
}

/// RFC 8693 section 3's token type identifiers, by the short names a config may use.
const TOKEN_TYPES: &[(&str, &str)] = &[
    ("jwt", "urn:ietf:params:oauth:token-type:jwt"),
    ("access_token", ACCESS_TOKEN_TYPE),
    (
        "refresh_token",
        "urn:ietf:params:oauth:token-type:refresh_token",
    ),
    ("id_token", "urn:ietf:params:oauth:token-type:id_token"),
    ("saml1", "urn:ietf:params:oauth:token-type:saml1"),
    ("saml2", "urn:ietf:params:oauth:token-type:saml2"),
];

/// The type of a token usable as an access token.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The default subject and actor token type: what every platform above issues.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// A configured token type: a short name of [`TOKEN_TYPES`], or an absolute URI as it is
/// (RFC 8693 lets providers define their own, e.g. Google's
/// `urn:ietf:params:aws:token-type:aws4_request`).
pub fn token_type(value: &str) -> Result<String, String> {
    if let Some((_, uri)) = TOKEN_TYPES.iter().find(|(short, _)| *short == value) {
        return Ok(uri.to_string());
    }
    match url::Url::parse(value) {
        Ok(_) if value.chars().all(|c| c.is_ascii_graphic()) => Ok(value.to_string()),
        _ => {
            let names: Vec<String> = TOKEN_TYPES.iter().map(|(n, _)| format!("{n:?}")).collect();
            Err(format!(
                "{value:?} is not a token type: use one of {} or a URI such as {JWT_TOKEN_TYPE}",
                names.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_types_by_short_name_or_uri() {
        assert_eq!(token_type("jwt").unwrap(), JWT_TOKEN_TYPE);
        assert_eq!(token_type("access_token").unwrap(), ACCESS_TOKEN_TYPE);
        assert_eq!(
            token_type("urn:ietf:params:aws:token-type:aws4_request").unwrap(),
            "urn:ietf:params:aws:token-type:aws4_request"
        );
        let err = token_type("JWT").unwrap_err();
        assert!(err.contains("\"saml2\""), "{err}");
        assert!(token_type("urn:x y").is_err());
    }
}
