//! Reading a token endpoint's reply (RFC 6749 section 5.1 and 5.2) into what tokend needs:
//! the token, its lifetime and its scopes, or a classified error.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::Value;

use crate::secret::{AccessToken, SecretString};

/// Lifetimes above this are clamped: a token that claims to live for years is refreshed daily
/// anyway, which bounds how long a revoked or mis-scoped token stays in use.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Longest provider-supplied text (error_description) kept in an error message.
const MAX_DESCRIPTION: usize = 200;

/// A successful token reply.
#[derive(Debug)]
pub struct TokenReply {
    pub access_token: AccessToken,
    pub token_type: String,
    pub scopes: Vec<String>,
    pub lifetime: Duration,
    /// Where the lifetime came from, for logs.
    pub lifetime_source: LifetimeSource,
    /// A rotated refresh token, when the reply carries one.
    pub refresh_token: Option<SecretString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifetimeSource {
    ExpiresIn,
    JwtExp,
    Default,
}

/// A 2xx reply that cannot be used as a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply is not JSON (content starts with {0:?})")]
    NotJson(String),
    #[error("reply is JSON but not an object")]
    NotObject,
    #[error("reply has no access_token")]
    NoAccessToken,
    #[error("token_type {0:?} is not supported (only Bearer)")]
    UnsupportedTokenType(String),
    #[error("the token's exp claim is {0} s in the past (is this host's clock right?)")]
    AlreadyExpired(u64),
}

/// An OAuth error reply (RFC 6749 section 5.2), with provider text sanitized and bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub error: String,
    pub description: Option<String>,
}

impl std::fmt::Display for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.description {
            Some(d) => write!(f, "{}: {d}", self.error),
            None => f.write_str(&self.error),
        }
    }
}

/// Parses a 2xx reply. `requested_scope` is reported when neither the reply nor the token
/// says which scopes were granted (RFC 6749 5.1: scope may be omitted if identical).
pub fn parse_success(
    body: &[u8],
    requested_scope: Option<&str>,
    default_lifetime: Duration,
    now: SystemTime,
) -> Result<TokenReply, ReplyError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        let head: String = String::from_utf8_lossy(&body[..body.len().min(16)])
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        ReplyError::NotJson(head)
    })?;
    let obj = value.as_object().ok_or(ReplyError::NotObject)?;
    let access_token = match obj.get("access_token") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        _ => return Err(ReplyError::NoAccessToken),
    };
    // RFC 6750 says the type is case-insensitive; some providers omit it for Bearer.
    let token_type = match obj.get("token_type") {
        None | Some(Value::Null) => "Bearer".to_string(),
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => "Bearer".to_string(),
        Some(other) => {
            let shown = other
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| other.to_string());
            return Err(ReplyError::UnsupportedTokenType(
                shown.chars().take(32).collect(),
            ));
        }
    };
    let claims = jwt_claims(&access_token);
    let (lifetime, lifetime_source) = match expires_in(obj.get("expires_in")) {
        Some(secs) => (Duration::from_secs(secs), LifetimeSource::ExpiresIn),
        None => match claims
            .as_ref()
            .and_then(|c| c.get("exp"))
            .and_then(Value::as_f64)
        {
            Some(exp) => {
                let now_secs = now
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                if exp <= now_secs {
                    return Err(ReplyError::AlreadyExpired((now_secs - exp) as u64));
                }
                // Clamped before conversion: an `exp` far in the future must not overflow.
                let secs = (exp - now_secs).min(MAX_LIFETIME.as_secs_f64());
                (Duration::from_secs_f64(secs), LifetimeSource::JwtExp)
            }
            None => (default_lifetime, LifetimeSource::Default),
        },
    };
    let scopes = obj
        .get("scope")
        .and_then(scope_list)
        .or_else(|| {
            let c = claims.as_ref()?;
            c.get("scope").or_else(|| c.get("scp")).and_then(scope_list)
        })
        .or_else(|| requested_scope.map(split_scope))
        .unwrap_or_default();
    let refresh_token = match obj.get("refresh_token") {
        Some(Value::String(t)) if !t.is_empty() => Some(SecretString::from(t.clone())),
        _ => None,
    };
    Ok(TokenReply {
        access_token: AccessToken::new(access_token),
        token_type,
        scopes,
        lifetime: lifetime.min(MAX_LIFETIME),
        lifetime_source,
        refresh_token,
    })
}

/// Parses an error reply body; `None` when it is not an RFC 6749 5.2 error object.
pub fn parse_error(body: &[u8]) -> Option<OAuthError> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?.as_str()?;
    let description = value
        .get("error_description")
        .and_then(Value::as_str)
        .map(sanitize)
        .filter(|d| !d.is_empty());
    Some(OAuthError {
        error: sanitize(error),
        description,
    })
}

/// Provider text goes into logs and gRPC messages: strip control characters, bound the length.
fn sanitize(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_DESCRIPTION)
        .collect()
}

/// `expires_in` as whole seconds: a positive number or numeric string (some providers quote it).
/// Zero, negative or unparsable values count as absent, so the JWT `exp` or the default applies.
fn expires_in(value: Option<&Value>) -> Option<u64> {
    let secs = match value? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (secs.is_finite() && secs >= 1.0).then(|| secs.min(MAX_LIFETIME.as_secs() as f64) as u64)
}

/// A scope claim or field: a space-separated string, or a JSON array of strings.
fn scope_list(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::String(s) => Some(split_scope(s)),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        ),
        _ => None,
    }
}

fn split_scope(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// The claims of a JWS-compact token, read without verifying the signature: tokend is the
/// token's holder, not its audience, and uses the claims only as hints for expiry and scopes.
fn jwt_claims(token: &str) -> Option<serde_json::Map<String, Value>> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None; // JWE (five parts): claims are encrypted.
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::ExposeSecret;

    const NOW: u64 = 1_700_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn jwt(claims: Value) -> String {
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.sig",
            b64(br#"{"alg":"HS256","typ":"JWT"}"#),
            b64(claims.to_string().as_bytes())
        )
    }

    fn parse(v: Value) -> Result<TokenReply, ReplyError> {
        parse_success(
            v.to_string().as_bytes(),
            Some("req.a req.b"),
            Duration::from_secs(77),
            now(),
        )
    }

    #[test]
    fn first_seed_shape_expires_in_and_scope_string() {
        let r = parse(serde_json::json!({
            "access_token": "abc", "expires_in": 300, "token_type": "Bearer",
            "scope": "guest_conversation.write event_log.read"
        }))
        .unwrap();
        assert_eq!(r.lifetime, Duration::from_secs(300));
        assert_eq!(r.lifetime_source, LifetimeSource::ExpiresIn);
        assert_eq!(r.scopes, ["guest_conversation.write", "event_log.read"]);
        assert_eq!(r.token_type, "Bearer");
        assert!(r.refresh_token.is_none());
    }

    #[test]
    fn second_seed_shape_jwt_exp_and_scope_array() {
        let token = jwt(serde_json::json!({
            "user": "someone", "scope": ["profile", "read:like", "write:like"],
            "iat": NOW - 10, "exp": NOW + 3590
        }));
        let r = parse(serde_json::json!({
            "user": "someone", "refresh_token": "rt-new", "access_token": token
        }))
        .unwrap();
        assert_eq!(r.lifetime, Duration::from_secs(3590));
        assert_eq!(r.lifetime_source, LifetimeSource::JwtExp);
        assert_eq!(r.scopes, ["profile", "read:like", "write:like"]);
        assert_eq!(r.token_type, "Bearer");
        assert_eq!(r.refresh_token.unwrap().expose_secret(), "rt-new");
    }

    #[test]
    fn scp_claim_and_requested_scope_fallbacks() {
        let token = jwt(serde_json::json!({"scp": "x y", "exp": NOW + 60}));
        assert_eq!(
            parse(serde_json::json!({"access_token": token}))
                .unwrap()
                .scopes,
            ["x", "y"]
        );
        let r = parse(serde_json::json!({"access_token": "opaque", "expires_in": "120"})).unwrap();
        assert_eq!(r.scopes, ["req.a", "req.b"]);
        assert_eq!(r.lifetime, Duration::from_secs(120));
    }

    #[test]
    fn odd_expires_in_falls_back_or_clamps() {
        for bad in [
            serde_json::json!(0),
            serde_json::json!(-5),
            serde_json::json!("soon"),
            Value::Null,
        ] {
            let r = parse(serde_json::json!({"access_token": "t", "expires_in": bad})).unwrap();
            assert_eq!(r.lifetime, Duration::from_secs(77), "{bad}");
            assert_eq!(r.lifetime_source, LifetimeSource::Default);
        }
        let r = parse(serde_json::json!({"access_token": "t", "expires_in": 1e12})).unwrap();
        assert_eq!(r.lifetime, MAX_LIFETIME);
        // Found by the property test: an absurd JWT exp once overflowed Duration.
        let far = jwt(serde_json::json!({"exp": 1e300}));
        let r = parse(serde_json::json!({"access_token": far})).unwrap();
        assert_eq!(r.lifetime, MAX_LIFETIME);
    }

    #[test]
    fn unusable_replies_are_errors() {
        let p = |b: &[u8]| parse_success(b, None, Duration::from_secs(1), now()).unwrap_err();
        assert_eq!(
            p(b"<html>oops</html>"),
            ReplyError::NotJson("<html>oops</html".into())
        );
        assert_eq!(p(b""), ReplyError::NotJson(String::new()));
        assert_eq!(p(b"[1]"), ReplyError::NotObject);
        assert_eq!(p(br#"{"token_type":"Bearer"}"#), ReplyError::NoAccessToken);
        assert_eq!(
            p(br#"{"access_token":"t","token_type":"mac"}"#),
            ReplyError::UnsupportedTokenType("mac".into())
        );
        let expired = jwt(serde_json::json!({"exp": NOW - 30}));
        assert_eq!(
            p(serde_json::json!({"access_token": expired})
                .to_string()
                .as_bytes()),
            ReplyError::AlreadyExpired(30)
        );
    }

    #[test]
    fn error_replies_are_parsed_and_sanitized() {
        let e = parse_error(br#"{"error":"invalid_client","error_description":"bad\nsecret"}"#)
            .unwrap();
        assert_eq!(e.error, "invalid_client");
        assert_eq!(e.description.as_deref(), Some("badsecret"));
        assert!(parse_error(b"<html>").is_none());
        assert!(parse_error(br#"{"message":"x"}"#).is_none());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// JSON values of the kinds token endpoints send, and the kinds they should not.
        fn odd_value() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(
                    |f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
                ),
                ".{0,40}".prop_map(Value::from),
                "[0-9]{1,25}".prop_map(Value::from),
                proptest::collection::vec(".{0,10}".prop_map(Value::from), 0..4)
                    .prop_map(Value::from),
            ]
        }

        fn b64(v: &[u8]) -> String {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
        }

        proptest! {
            #[test]
            fn any_bytes_are_an_error_or_a_token_never_a_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse_success(&body, Some("a"), Duration::from_secs(60), now());
                if let Some(e) = parse_error(&body) {
                    prop_assert!(e.description.as_ref().is_none_or(|d| d.chars().count() <= MAX_DESCRIPTION));
                    prop_assert!(!e.error.chars().any(char::is_control));
                }
            }

            #[test]
            fn any_reply_shape_yields_a_bounded_positive_lifetime(
                access_token in ".{0,20}",
                expires_in in odd_value(),
                token_type in odd_value(),
                scope in odd_value(),
                claims in proptest::collection::btree_map("exp|scope|scp|iat", odd_value(), 0..4),
                as_jwt in any::<bool>(),
            ) {
                let token = if as_jwt {
                    let claims: serde_json::Map<String, Value> = claims.into_iter().collect();
                    format!("{}.{}.sig", b64(b"{}"), b64(Value::Object(claims).to_string().as_bytes()))
                } else {
                    access_token
                };
                let reply = serde_json::json!({
                    "access_token": token, "expires_in": expires_in,
                    "token_type": token_type, "scope": scope,
                });
                if let Ok(r) = parse_success(reply.to_string().as_bytes(), None, Duration::from_secs(60), now()) {
                    prop_assert!(r.lifetime > Duration::ZERO);
                    prop_assert!(r.lifetime <= MAX_LIFETIME);
                    prop_assert_eq!(r.token_type, "Bearer");
                }
            }
        }
    }
}
