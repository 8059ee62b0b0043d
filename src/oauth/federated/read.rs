//! Reading a client's federated tokens for one request: each file re-read, each command run
//! anew (a platform rotates its tokens, and a copy kept past one request is how exchanges start
//! failing an hour in), and each checked before anything is sent. A JWT that has expired, or
//! will before the request could complete, is not sent: the provider would refuse it, and a
//! client that keeps sending it only adds load.

use std::time::{Duration, SystemTime};

use serde_json::Value;
use sha2::Digest;

use super::{CredentialSource, Federated, Role};
use crate::host::command::{self, CommandError};
use crate::host::unix_time::since_epoch;
use crate::secret::{self, ExposeSecret, SecretError, SecretString};

/// A federated token larger than this is not a token (the secret files' limit).
pub const MAX_TOKEN: usize = 64 * 1024;

/// Longest claim value shown when a provider refuses a federated token.
const MAX_CLAIM_SHOWN: usize = 100;

/// Why a client's federated tokens were not sent. Messages carry fingerprints, never a token.
#[derive(Debug, thiserror::Error)]
pub enum FederatedError {
    #[error("{noun}: {source}")]
    File {
        noun: &'static str,
        source: SecretError,
    },
    #[error("{noun} from {from}: {source}")]
    Command {
        noun: &'static str,
        from: String,
        source: CommandError,
    },
    #[error(
        "the {noun} from {from} is not one token: it holds whitespace, control or non-ASCII characters (the source must yield the token alone)"
    )]
    NotAToken { noun: &'static str, from: String },
    #[error(
        "the {noun} from {from} (sha256:{fingerprint}) {when}; it was not sent: waiting for {from} to yield a newer one"
    )]
    Expired {
        noun: &'static str,
        from: String,
        fingerprint: String,
        when: String,
    },
    #[error(
        "the {noun} from {from} (sha256:{fingerprint}) is the one the provider refused {ago} ago ({reason}); it is not sent again until it changes or refresh.operator_retry has passed"
    )]
    Unchanged {
        noun: &'static str,
        from: String,
        fingerprint: String,
        ago: String,
        reason: String,
    },
}

impl FederatedError {
    /// Whether this may pass by itself (an I/O error, a command that failed or hung), so the
    /// request is retried with backoff. A token that is expired, refused or malformed waits
    /// for its source to change.
    pub fn is_transient(&self) -> bool {
        match self {
            FederatedError::File { source, .. } => source.is_transient(),
            FederatedError::Command { source, .. } => source.is_transient(),
            FederatedError::NotAToken { .. }
            | FederatedError::Expired { .. }
            | FederatedError::Unchanged { .. } => false,
        }
    }
}

/// The federated tokens read for one request.
pub struct Presented {
    tokens: Vec<(Role, String, SecretString)>,
}

// Fingerprints only: a `Presented` in a test failure or a log must not show the tokens.
impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = f.debug_list();
        for (role, from, token) in &self.tokens {
            list.entry(&format_args!(
                "{} from {from} (sha256:{})",
                role.noun(),
                secret::fingerprint(token.expose_secret())
            ));
        }
        list.finish()
    }
}

impl Presented {
    /// The token of `role`, if the client has one.
    pub fn get(&self, role: Role) -> Option<&SecretString> {
        self.tokens
            .iter()
            .find(|(r, _, _)| *r == role)
            .map(|(_, _, token)| token)
    }

    /// Every token, to be redacted from provider text.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.tokens.iter().map(|(_, _, t)| t.expose_secret())
    }

    /// A digest of every token together: the same tokens again have the same digest.
    pub fn digest(&self) -> [u8; 32] {
        let mut hasher = sha2::Sha256::new();
        for (_, _, token) in &self.tokens {
            hasher.update(token.expose_secret().as_bytes());
            hasher.update([0]);
        }
        hasher.finalize().into()
    }

    /// The first token and where it came from, for a refusal's message.
    pub fn first(&self) -> Option<(&'static str, &str, String)> {
        self.tokens.first().map(|(role, from, t)| {
            (
                role.noun(),
                from.as_str(),
                secret::fingerprint(t.expose_secret()),
            )
        })
    }

    /// What a provider that refused these tokens was shown, for its operator to compare with
    /// the trust policy: each token's fingerprint and, for a JWT, its `iss`, `sub` and `aud`.
    pub fn describe(&self) -> String {
        self.tokens
            .iter()
            .map(|(role, from, token)| {
                let token = token.expose_secret();
                let mut text = format!(
                    "the {} from {from} (sha256:{}",
                    role.noun(),
                    secret::fingerprint(token)
                );
                if let Some(claims) = crate::oauth::reply::jwt_claims(token) {
                    for claim in ["iss", "sub", "aud"] {
                        if let Some(value) = claims.get(claim) {
                            text.push_str(&format!(", {claim} {}", shown(value)));
                        }
                    }
                }
                text.push(')');
                text
            })
            .collect::<Vec<_>>()
            .join(" and ")
    }
}

/// A claim's value as a refusal's message shows it: escaped and bounded.
fn shown(value: &Value) -> String {
    // Debug escapes a string's control characters; JSON escapes those of other values.
    let text = match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    match text.char_indices().nth(MAX_CLAIM_SHOWN) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// The federated tokens of client `c` for one request, `None` when it has none
/// ([`read_for_request`]).
pub async fn read_for_client(
    c: &crate::oauth::ClientSettings,
    timeout: Duration,
) -> Result<Option<Presented>, FederatedError> {
    match c.federated.as_deref() {
        Some(f) => Ok(Some(read_for_request(f, timeout, SystemTime::now()).await?)),
        None => Ok(None),
    }
}

/// Reads every federated token of `f` for one request: files within the secret files' limits
/// and rules, commands killed after `timeout`. A JWT whose `exp` is before `now + timeout` is
/// refused unsent.
pub async fn read_for_request(
    f: &Federated,
    timeout: Duration,
    now: SystemTime,
) -> Result<Presented, FederatedError> {
    let mut tokens = Vec::new();
    for (role, source) in f.sources() {
        let noun = role.noun();
        let from = source.describe();
        let token = match source {
            CredentialSource::File(path) => secret::read_file_async(path)
                .await
                .map_err(|source| FederatedError::File { noun, source })?,
            CredentialSource::Command(argv) => command::run(argv, timeout, MAX_TOKEN)
                .await
                .map_err(|source| FederatedError::Command {
                    noun,
                    from: from.clone(),
                    source,
                })?,
        };
        let text = token.expose_secret().trim();
        if text.is_empty() || !text.chars().all(|c| c.is_ascii_graphic()) {
            return Err(FederatedError::NotAToken { noun, from });
        }
        if let Some(when) = unusable_by(text, now, timeout) {
            return Err(FederatedError::Expired {
                noun,
                fingerprint: secret::fingerprint(text),
                from,
                when,
            });
        }
        let token = if text.len() == token.expose_secret().len() {
            token
        } else {
            SecretString::from(text.to_string())
        };
        tokens.push((role, from, token));
    }
    Ok(Presented { tokens })
}

/// When `token` is a JWT that has expired at `now`, or will before a request started now could
/// complete (`timeout`): how it is said.
fn unusable_by(token: &str, now: SystemTime, timeout: Duration) -> Option<String> {
    let exp = crate::oauth::reply::jwt_claims(token)?
        .get("exp")?
        .as_f64()?;
    let now = since_epoch(now).as_secs_f64();
    let whole = |secs: f64| humantime::format_duration(Duration::from_secs(secs.max(0.0) as u64));
    if exp <= now {
        Some(format!("expired {} ago", whole(now - exp)))
    } else if exp < now + timeout.as_secs_f64() {
        Some(format!(
            "expires in {}, before a request could complete (refresh.request_timeout {})",
            whole(exp - now),
            humantime::format_duration(timeout)
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::federated::TypedSource;
    use base64::Engine;
    use std::os::unix::fs::PermissionsExt;

    const NOW: u64 = 1_800_000_000;
    const TIMEOUT: Duration = Duration::from_secs(30);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn jwt(claims: serde_json::Value) -> String {
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.c2ln",
            b64(br#"{"alg":"ES256"}"#),
            b64(claims.to_string().as_bytes())
        )
    }

    fn subject_file(dir: &std::path::Path, text: &str) -> Federated {
        let path = dir.join("subject");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Federated {
            subject: Some(TypedSource {
                source: CredentialSource::File(path),
                token_type: super::super::JWT_TOKEN_TYPE.into(),
            }),
            ..Default::default()
        }
    }

    async fn read(f: &Federated) -> Result<Presented, FederatedError> {
        read_for_request(f, TIMEOUT, now()).await
    }

    #[tokio::test]
    async fn a_file_is_read_anew_for_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let first = jwt(serde_json::json!({"sub": "a", "exp": NOW + 3600}));
        let f = subject_file(dir.path(), &format!("{first}\n"));
        let one = read(&f).await.unwrap();
        assert_eq!(one.get(Role::Subject).unwrap().expose_secret(), first);
        assert!(one.get(Role::Actor).is_none());
        let second = jwt(serde_json::json!({"sub": "b", "exp": NOW + 3600}));
        subject_file(dir.path(), &second);
        let two = read(&f).await.unwrap();
        assert_eq!(two.get(Role::Subject).unwrap().expose_secret(), second);
        assert_ne!(one.digest(), two.digest());
        // Opaque tokens (no JWT, no exp) are sent as they are.
        subject_file(dir.path(), "opaque-token_1");
        assert!(read(&f).await.is_ok());
    }

    #[tokio::test]
    async fn an_expired_or_expiring_jwt_is_refused_unsent() {
        let dir = tempfile::tempdir().unwrap();
        let expired = jwt(serde_json::json!({"exp": NOW - 90}));
        let f = subject_file(dir.path(), &expired);
        let err = read(&f).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, FederatedError::Expired { .. }), "{text}");
        assert!(!err.is_transient());
        assert!(text.contains("expired 1m 30s ago"), "{text}");
        assert!(text.contains(&secret::fingerprint(&expired)), "{text}");
        assert!(!text.contains(&expired), "{text}");
        // Closer than the request timeout: it would expire in flight.
        subject_file(dir.path(), &jwt(serde_json::json!({"exp": NOW + 10})));
        let text = read(&f).await.unwrap_err().to_string();
        assert!(
            text.contains("expires in 10s, before a request could complete"),
            "{text}"
        );
        subject_file(dir.path(), &jwt(serde_json::json!({"exp": NOW + 31})));
        assert!(read(&f).await.is_ok());
    }

    #[tokio::test]
    async fn a_source_that_is_not_one_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["token(spiffe://x):\n\teyJ.a.b", "a b", "tök"] {
            let f = subject_file(dir.path(), text);
            let err = read(&f).await.unwrap_err();
            assert!(matches!(err, FederatedError::NotAToken { .. }), "{err}");
            assert!(!err.to_string().contains("eyJ"), "{err}");
        }
        // A missing file is the secret files' error, naming the path, and waits for it.
        let f = Federated {
            assertion: Some(CredentialSource::File(dir.path().join("missing"))),
            ..Default::default()
        };
        let err = read(&f).await.unwrap_err();
        assert!(err.to_string().starts_with("assertion: "), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(!err.is_transient());
    }

    #[test]
    fn a_refusal_names_what_the_tokens_claim_never_the_tokens() {
        let token = jwt(serde_json::json!({
            "iss": "https://oidc.eks.example.com/id/ABC",
            "sub": "system:serviceaccount:payments:api\u{1b}[2J",
            "aud": ["sts.example.com"],
        }));
        let presented = Presented {
            tokens: vec![(
                Role::ClientAssertion,
                "/var/run/secrets/tokens/token".into(),
                SecretString::from(token.clone()),
            )],
        };
        let text = presented.describe();
        assert_eq!(
            text,
            format!(
                "the client assertion from /var/run/secrets/tokens/token (sha256:{}, iss \"https://oidc.eks.example.com/id/ABC\", sub \"system:serviceaccount:payments:api\\u{{1b}}[2J\", aud [\"sts.example.com\"])",
                secret::fingerprint(&token)
            )
        );
        assert!(!text.contains(&token));
    }
}
