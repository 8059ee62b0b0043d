//! Reading a token endpoint's reply (RFC 6749 section 5.1 and 5.2) into what tokend needs:
//! the token, its lifetime and its scopes, or a classified error.

use std::time::{Duration, SystemTime};

use base64::Engine;
use serde_json::{Map, Value};

use super::federated::ACCESS_TOKEN_TYPE;
use super::redact::Redactor;
use crate::host::unix_time::since_epoch;
use crate::secret::{AccessToken, SecretString};

/// Lifetimes above this are clamped: a token that claims to live for years is refreshed daily
/// anyway, which bounds how long a revoked or mis-scoped token stays in use.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Longest provider-supplied text (error_description) kept in an error message.
const MAX_DESCRIPTION: usize = 200;

/// Longest OAuth error code or token_type shown: real ones are a few words.
const MAX_CODE: usize = 40;

/// Longest issued_token_type shown: a URI (RFC 8693's own are under 50 characters).
const MAX_TOKEN_TYPE_URI: usize = 100;

/// Longest content type shown for a reply that is not JSON.
const MAX_CONTENT_TYPE: usize = 60;

/// A longer refresh token is refused rather than saved: the refresh token file is read back
/// with a 64 KiB limit for secret files, and real ones are well under a kilobyte.
const MAX_REFRESH_TOKEN: usize = 16 * 1024;

/// Scope entries kept per token, and the longest entry: both far above what providers grant,
/// and bounded because each token's scopes are held, logged and listed.
const MAX_SCOPES: usize = 256;
const MAX_SCOPE_LEN: usize = 256;

/// The token types tokend hands out, as callers are told them: every other `token_type` is a
/// reply error. A type rather than the provider's string: it is kept with every token, and the
/// three values need no copy of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// RFC 6750; how providers spell it varies, callers are told "Bearer".
    Bearer,
    /// RFC 9449, for a client whose requests carry a DPoP proof.
    Dpop,
    /// RFC 8693's `N_A`: a token exchange's issued token that is not an access token.
    NotApplicable,
}

impl TokenType {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenType::Bearer => "Bearer",
            TokenType::Dpop => "DPoP",
            TokenType::NotApplicable => "N_A",
        }
    }
}

impl std::fmt::Display for TokenType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A successful token reply.
#[derive(Debug)]
pub struct TokenReply {
    pub access_token: AccessToken,
    pub token_type: TokenType,
    pub scopes: Vec<String>,
    pub lifetime: Duration,
    /// Where the lifetime came from, for logs.
    pub lifetime_source: LifetimeSource,
    /// The key a DPoP token (`token_type` DPoP) is bound to.
    pub dpop_key: Option<std::sync::Arc<super::dpop::DpopKey>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifetimeSource {
    ExpiresIn,
    JwtExp,
    Default,
}

/// A 2xx reply that cannot be used as a token. Provider text in it is redacted, escaped and
/// bounded; a body that is not JSON is described, never quoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply is not JSON ({length} bytes of {content_type})")]
    NotJson { length: usize, content_type: String },
    #[error("reply is JSON but not an object")]
    NotObject,
    #[error("reply has no access_token")]
    NoAccessToken,
    #[error(
        "access_token has characters outside RFC 6749 VSCHAR (printable ASCII); it is not handed out"
    )]
    BadAccessToken,
    #[error(
        "refresh_token is not a string of RFC 6749 VSCHAR (printable ASCII) of at most {MAX_REFRESH_TOKEN} bytes; it was not saved"
    )]
    BadRefreshToken,
    #[error("token_type \"{0}\" is not supported (Bearer; DPoP for a client with dpop = true)")]
    UnsupportedTokenType(String),
    #[error(
        "issued_token_type is {got}, not the requested_token_type {wanted} (RFC 8693 section 2.2.1)"
    )]
    IssuedTokenType { got: String, wanted: String },
    #[error("the token's exp claim is {0} s in the past (is this host's clock right?)")]
    AlreadyExpired(u64),
}

/// An OAuth error reply (RFC 6749 section 5.2), with provider text redacted, escaped and
/// bounded.
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

/// RFC 6749 appendix A: VSCHAR, what access and refresh tokens are made of.
fn is_vschar(c: char) -> bool {
    matches!(c, '\x20'..='\x7e')
}

/// RFC 6749 appendix A: NQCHAR, what a scope token is made of.
fn is_nqchar(c: char) -> bool {
    matches!(c, '\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e')
}

/// Parses a 2xx reply whole. `requested_scope` is reported when neither the reply nor the token
/// says which scopes were granted (RFC 6749 5.1: scope may be omitted if identical). tokend
/// itself reads a reply in steps ([`parse_object`], [`refresh_token`], [`parse_token`]) so
/// that a rotated refresh token is saved before the rest is judged.
pub fn parse_success(
    body: &[u8],
    requested_scope: Option<&str>,
    default_lifetime: Duration,
    now: SystemTime,
) -> Result<TokenReply, ReplyError> {
    let redactor = Redactor::default();
    let obj = parse_object(body, "", &redactor)?;
    refresh_token(&obj)?;
    parse_token(
        &obj,
        requested_scope,
        None,
        false,
        default_lifetime,
        now,
        &redactor,
    )
    .map(|(t, _)| t)
}

/// A 2xx body as a JSON object. `content_type` (the reply's header) describes a body that is
/// not JSON.
pub fn parse_object(
    body: &[u8],
    content_type: &str,
    redactor: &Redactor,
) -> Result<Map<String, Value>, ReplyError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| ReplyError::NotJson {
        length: body.len(),
        content_type: match content_type {
            "" => "no content type".into(),
            t => redactor.clean(t, MAX_CONTENT_TYPE),
        },
    })?;
    match value {
        Value::Object(obj) => Ok(obj),
        _ => Err(ReplyError::NotObject),
    }
}

/// The refresh token a reply rotated to, read before anything else in it so that it can be
/// saved even when the rest is unusable. `Err` when one is there but could not be sent back.
pub fn refresh_token(obj: &Map<String, Value>) -> Result<Option<SecretString>, ReplyError> {
    match obj.get("refresh_token") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(t)) if t.is_empty() => Ok(None),
        Some(Value::String(t)) if t.len() <= MAX_REFRESH_TOKEN && t.chars().all(is_vschar) => {
            Ok(Some(SecretString::from(t.clone())))
        }
        Some(_) => Err(ReplyError::BadRefreshToken),
    }
}

/// The token in a 2xx reply's object, and how many scope entries were dropped as malformed
/// (for a warning). `redactor` holds the request's credentials and the refresh token received;
/// the reply's access token is added to it here. `requested_type`: a token exchange's
/// `requested_token_type`, which the reply's `issued_token_type` must be; a token of another
/// type than an access token may then have `token_type` `N_A` (RFC 8693 section 2.2.1).
/// `dpop`: the request carried a DPoP proof, so `token_type` DPoP is accepted (RFC 9449
/// section 5; a server that does not support DPoP answers Bearer, which stays accepted).
pub fn parse_token(
    obj: &Map<String, Value>,
    requested_scope: Option<&str>,
    requested_type: Option<&str>,
    dpop: bool,
    default_lifetime: Duration,
    now: SystemTime,
    redactor: &Redactor,
) -> Result<(TokenReply, usize), ReplyError> {
    let access_token = match obj.get("access_token") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        _ => return Err(ReplyError::NoAccessToken),
    };
    if !access_token.chars().all(is_vschar) {
        return Err(ReplyError::BadAccessToken);
    }
    let mut redactor = redactor.clone();
    redactor.add(&access_token);
    if let Some(wanted) = requested_type {
        let got = obj.get("issued_token_type");
        if got.and_then(Value::as_str) != Some(wanted) {
            return Err(ReplyError::IssuedTokenType {
                got: match got {
                    Some(Value::String(t)) => {
                        format!("{:?}", redactor.clean(t, MAX_TOKEN_TYPE_URI))
                    }
                    Some(_) => "not a string".into(),
                    None => "missing".into(),
                },
                wanted: wanted.to_string(),
            });
        }
    }
    let not_an_access_token = requested_type.is_some_and(|t| t != ACCESS_TOKEN_TYPE);
    // RFC 6750 says the type is case-insensitive; some providers omit it for Bearer.
    let token_type = match obj.get("token_type") {
        None | Some(Value::Null) => TokenType::Bearer,
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => TokenType::Bearer,
        Some(Value::String(t)) if t == "N_A" && not_an_access_token => TokenType::NotApplicable,
        Some(Value::String(t)) if dpop && t.eq_ignore_ascii_case("dpop") => TokenType::Dpop,
        Some(other) => {
            let shown = other
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| other.to_string());
            return Err(ReplyError::UnsupportedTokenType(
                redactor.clean(&shown, MAX_CODE),
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
                let now_secs = since_epoch(now).as_secs_f64();
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
    let mut scopes = Scopes::new(&redactor);
    let listed = obj.get("scope").is_some_and(|v| scopes.read(v))
        || claims.as_ref().is_some_and(|c| {
            c.get("scope")
                .or_else(|| c.get("scp"))
                .is_some_and(|v| scopes.read(v))
        });
    if !listed && let Some(requested) = requested_scope {
        scopes.split(requested, false);
    }
    Ok((
        TokenReply {
            access_token: AccessToken::new(access_token),
            token_type,
            scopes: scopes.kept,
            lifetime: lifetime.min(MAX_LIFETIME),
            lifetime_source,
            dpop_key: None,
        },
        scopes.dropped,
    ))
}

/// Parses an error reply body; `None` when it is not an RFC 6749 5.2 error object.
pub fn parse_error(body: &[u8], redactor: &Redactor) -> Option<OAuthError> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?.as_str()?;
    let description = value
        .get("error_description")
        .and_then(Value::as_str)
        .map(|d| redactor.clean(d, MAX_DESCRIPTION))
        .filter(|d| !d.is_empty());
    Some(OAuthError {
        error: redactor.clean(error, MAX_CODE),
        description,
    })
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

/// Granted scopes as read from a reply: entries that are not RFC 6749 scope tokens (NQCHAR),
/// are too long or too many, or carry a credential of the request are dropped and counted.
struct Scopes<'a> {
    redactor: &'a Redactor,
    kept: Vec<String>,
    dropped: usize,
}

impl<'a> Scopes<'a> {
    fn new(redactor: &'a Redactor) -> Self {
        Scopes {
            redactor,
            kept: Vec::new(),
            dropped: 0,
        }
    }

    /// A scope field or claim: a space-separated string, or a JSON array of strings (whose
    /// entries are split too: an array is no promise that they hold no spaces). `false`
    /// when the value is neither, so the next source of scopes applies.
    fn read(&mut self, value: &Value) -> bool {
        match value {
            Value::String(s) => self.split(s, true),
            Value::Array(items) => {
                for item in items {
                    match item.as_str() {
                        Some(s) => self.split(s, true),
                        None => self.dropped += 1,
                    }
                }
            }
            _ => return false,
        }
        true
    }

    /// RFC 6749 3.3: scope tokens separated by spaces. `from_provider`: the text came from
    /// the reply, and may echo a credential (the configured scope may not: it is no echo).
    fn split(&mut self, s: &str, from_provider: bool) {
        for entry in s.split(' ').filter(|e| !e.is_empty()) {
            let fits = entry.len() <= MAX_SCOPE_LEN && self.kept.len() < MAX_SCOPES;
            let echo = from_provider && self.redactor.finds(entry);
            if fits && entry.chars().all(is_nqchar) && !echo {
                self.kept.push(entry.to_string());
            } else {
                self.dropped += 1;
            }
        }
    }
}

/// The claims of a JWS-compact token, read without verifying the signature: tokend is the
/// token's holder, not its audience, and uses the claims only as hints for expiry and scopes.
pub(crate) fn jwt_claims(token: &str) -> Option<serde_json::Map<String, Value>> {
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
    use std::time::UNIX_EPOCH;

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
        assert_eq!(r.token_type, TokenType::Bearer);
    }

    #[test]
    fn second_seed_shape_jwt_exp_and_scope_array() {
        let token = jwt(serde_json::json!({
            "user": "someone", "scope": ["profile", "read:like", "write:like"],
            "iat": NOW - 10, "exp": NOW + 3590
        }));
        let reply = serde_json::json!({
            "user": "someone", "refresh_token": "rt-new", "access_token": token
        });
        let r = parse(reply.clone()).unwrap();
        assert_eq!(r.lifetime, Duration::from_secs(3590));
        assert_eq!(r.lifetime_source, LifetimeSource::JwtExp);
        assert_eq!(r.scopes, ["profile", "read:like", "write:like"]);
        assert_eq!(r.token_type, TokenType::Bearer);
        let rt = refresh_token(reply.as_object().unwrap()).unwrap().unwrap();
        assert_eq!(rt.expose_secret(), "rt-new");
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
        let not_json = p(b"<html>oops</html>");
        assert_eq!(
            not_json,
            ReplyError::NotJson {
                length: 17,
                content_type: "no content type".into()
            }
        );
        assert!(!not_json.to_string().contains("html"), "{not_json}");
        assert!(matches!(p(b""), ReplyError::NotJson { length: 0, .. }));
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
        let none = Redactor::default();
        let e = parse_error(
            br#"{"error":"invalid_client","error_description":"bad\nsecret"}"#,
            &none,
        )
        .unwrap();
        assert_eq!(e.error, "invalid_client");
        assert_eq!(e.description.as_deref(), Some("bad\\nsecret"));
        assert!(parse_error(b"<html>", &none).is_none());
        assert!(parse_error(br#"{"message":"x"}"#, &none).is_none());
    }

    #[test]
    fn echoed_credentials_are_redacted_from_error_replies() {
        let mut r = Redactor::new(["rt-sent"]);
        r.add_client_credentials("app", "s3cret");
        let body = serde_json::json!({
            "error": "bad_s3cret",
            "error_description": "you sent s3cret and rt-sent\r\nINFO forged \u{1b}[2J"
        });
        let e = parse_error(body.to_string().as_bytes(), &r).unwrap();
        assert_eq!(e.error, "bad_[redacted]");
        assert_eq!(
            e.description.as_deref(),
            Some("you sent [redacted] and [redacted]\\r\\nINFO forged \\u{1b}[2J")
        );
    }

    #[test]
    fn tokens_outside_vschar_are_refused() {
        let p = |v: Value| {
            let obj = v.as_object().unwrap().clone();
            let r = Redactor::default();
            (
                refresh_token(&obj),
                parse_token(&obj, None, None, false, Duration::from_secs(60), now(), &r)
                    .map(|_| ()),
            )
        };
        let (rt, token) = p(serde_json::json!({
            "access_token": "good\r\nX-Injected: 1", "refresh_token": "rt-2"
        }));
        assert_eq!(rt.unwrap().unwrap().expose_secret(), "rt-2");
        assert_eq!(token.unwrap_err(), ReplyError::BadAccessToken);
        for bad in [
            serde_json::json!("rt\n2"),
            serde_json::json!("ré"),
            serde_json::json!(7),
            serde_json::json!("x".repeat(MAX_REFRESH_TOKEN + 1)),
        ] {
            let (rt, _) = p(serde_json::json!({"access_token": "t", "refresh_token": bad}));
            assert_eq!(rt.unwrap_err(), ReplyError::BadRefreshToken);
        }
        let (rt, token) = p(serde_json::json!({"access_token": "a b~", "refresh_token": ""}));
        assert!(rt.unwrap().is_none());
        assert!(token.is_ok(), "VSCHAR includes the space");
    }

    #[test]
    fn token_type_is_shown_escaped_bounded_and_redacted() {
        let obj = serde_json::json!({
            "access_token": "at-1", "token_type": format!("mac\r\n\u{1b}[31mat-1{}", "y".repeat(100))
        });
        let err = parse_token(
            obj.as_object().unwrap(),
            None,
            None,
            false,
            Duration::from_secs(1),
            now(),
            &Redactor::default(),
        )
        .unwrap_err();
        let ReplyError::UnsupportedTokenType(shown) = &err else {
            panic!("{err:?}")
        };
        assert!(
            shown.starts_with("mac\\r\\n\\u{1b}[31m[redacted]y"),
            "{shown}"
        );
        assert_eq!(shown.chars().count(), MAX_CODE + 1);
    }

    #[test]
    fn a_token_exchange_reply_is_of_the_requested_type() {
        let saml = "urn:ietf:params:oauth:token-type:saml2";
        let parse = |reply: Value, requested: Option<&str>| {
            parse_token(
                reply.as_object().unwrap(),
                None,
                requested,
                false,
                Duration::from_secs(60),
                now(),
                &Redactor::default(),
            )
            .map(|(r, _)| r.token_type)
        };
        let na = serde_json::json!({
            "access_token": "PHNhbWw", "token_type": "N_A", "issued_token_type": saml
        });
        assert_eq!(
            parse(na.clone(), Some(saml)).unwrap(),
            TokenType::NotApplicable
        );
        // N_A only when a token of another type than an access token was asked for.
        assert!(matches!(
            parse(na.clone(), None),
            Err(ReplyError::UnsupportedTokenType(t)) if t == "N_A"
        ));
        let at = serde_json::json!({
            "access_token": "at", "token_type": "N_A", "issued_token_type": ACCESS_TOKEN_TYPE
        });
        assert!(parse(at, Some(ACCESS_TOKEN_TYPE)).is_err());
        let err = parse(na, Some(ACCESS_TOKEN_TYPE)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "issued_token_type is \"{saml}\", not the requested_token_type {ACCESS_TOKEN_TYPE} (RFC 8693 section 2.2.1)"
            )
        );
        let missing = serde_json::json!({"access_token": "at", "token_type": "Bearer"});
        assert!(
            parse(missing.clone(), Some(ACCESS_TOKEN_TYPE))
                .unwrap_err()
                .to_string()
                .starts_with("issued_token_type is missing")
        );
        // Without a requested type, issued_token_type is not looked at.
        assert_eq!(parse(missing, None).unwrap(), TokenType::Bearer);
    }

    #[test]
    fn scope_entries_outside_nqchar_are_dropped() {
        let secret = Redactor::new(["s3cret"]);
        let parse_scopes = |scope: Value| {
            let obj = serde_json::json!({"access_token": "at-xyz-123", "scope": scope});
            parse_token(
                obj.as_object().unwrap(),
                None,
                None,
                false,
                Duration::from_secs(1),
                now(),
                &secret,
            )
            .map(|(r, dropped)| (r.scopes, dropped))
            .unwrap()
        };
        let (scopes, dropped) = parse_scopes(serde_json::json!(
            "a  b\tc d\r\ne q\"uote back\\slash x\u{1b}[2J é s3cret ok"
        ));
        assert_eq!(scopes, ["a", "ok"]);
        assert_eq!(dropped, 7);
        // Arrays are split like strings, and non-strings dropped.
        let (scopes, dropped) = parse_scopes(serde_json::json!(["read write", "x\ny", 3, "admin"]));
        assert_eq!(scopes, ["read", "write", "admin"]);
        assert_eq!(dropped, 2);
        let many: Vec<String> = (0..MAX_SCOPES + 5).map(|i| format!("s{i}")).collect();
        let (scopes, dropped) = parse_scopes(serde_json::json!(many.join(" ")));
        assert_eq!((scopes.len(), dropped), (MAX_SCOPES, 5));
        let (scopes, dropped) = parse_scopes(serde_json::json!("x".repeat(MAX_SCOPE_LEN + 1)));
        assert_eq!((scopes.len(), dropped), (0, 1));
        // The JWT's array claim (the second seed provider) is filtered the same way.
        let token =
            jwt(serde_json::json!({"scope": ["profile", "read:like\r\nforged"], "exp": NOW + 60}));
        let obj = serde_json::json!({"access_token": token});
        let (r, dropped) = parse_token(
            obj.as_object().unwrap(),
            None,
            None,
            false,
            Duration::from_secs(1),
            now(),
            &secret,
        )
        .unwrap();
        assert_eq!((r.scopes, dropped), (vec!["profile".to_string()], 1));
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

        /// Where a valid reply's lifetime comes from, and the lifetime expected of it.
        #[derive(Debug, Clone)]
        enum Lifetime {
            /// `expires_in` seconds, sent as a number or (as some providers do) a string.
            ExpiresIn { secs: u64, quoted: bool },
            /// A JWT access token whose `exp` is `secs` after now.
            JwtExp { secs: u64 },
            /// Neither: the default applies.
            Default,
        }

        fn lifetime() -> impl Strategy<Value = Lifetime> {
            prop_oneof![
                (1..200_000u64, any::<bool>())
                    .prop_map(|(secs, quoted)| Lifetime::ExpiresIn { secs, quoted }),
                (1..200_000u64).prop_map(|secs| Lifetime::JwtExp { secs }),
                Just(Lifetime::Default),
            ]
        }

        proptest! {
            #[test]
            fn any_bytes_are_an_error_or_a_token_never_a_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse_success(&body, Some("a"), Duration::from_secs(60), now());
                if let Some(e) = parse_error(&body, &Redactor::default()) {
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
                    prop_assert_eq!(r.token_type, TokenType::Bearer);
                }
            }

            /// Replies valid by construction parse, with their fields. Opaque tokens have no
            /// `.` (so none reads as a JWT) and are longer than any scope entry (so no entry can
            /// be taken for an echo of the token and dropped).
            #[test]
            fn any_valid_reply_parses_with_its_fields(
                opaque in "[\\x20-\\x2d\\x2f-\\x7e]{21,60}",
                lifetime in lifetime(),
                token_type in prop_oneof![Just(None), Just(Some("Bearer")), Just(Some("bearer")), Just(Some("BEARER"))],
                scopes in proptest::collection::vec("[\\x21\\x23-\\x5b\\x5d-\\x7e]{1,20}", 0..6),
                scope_form in 0..3u8,
            ) {
                let token = match &lifetime {
                    Lifetime::JwtExp { secs } => format!(
                        "{}.{}.sig",
                        b64(b"{}"),
                        b64(serde_json::json!({"exp": NOW + secs}).to_string().as_bytes())
                    ),
                    _ => opaque,
                };
                let mut reply = serde_json::json!({"access_token": token});
                if let Lifetime::ExpiresIn { secs, quoted } = &lifetime {
                    reply["expires_in"] = if *quoted { Value::from(secs.to_string()) } else { Value::from(*secs) };
                }
                if let Some(t) = token_type {
                    reply["token_type"] = Value::from(t);
                }
                // The scope as a space-separated string, as an array, or left out (then the
                // requested scope is reported).
                let expected_scopes = match scope_form {
                    0 => {
                        reply["scope"] = Value::from(scopes.join(" "));
                        scopes.clone()
                    }
                    1 => {
                        reply["scope"] = Value::from(scopes.clone());
                        scopes.clone()
                    }
                    _ => vec!["req.a".to_string(), "req.b".to_string()],
                };
                let default = Duration::from_secs(77);
                let r = parse_success(reply.to_string().as_bytes(), Some("req.a req.b"), default, now());
                let r = match r {
                    Ok(r) => r,
                    Err(e) => return Err(TestCaseError::fail(format!("{reply} did not parse: {e}"))),
                };
                let (want_lifetime, want_source) = match lifetime {
                    Lifetime::ExpiresIn { secs, .. } => (Duration::from_secs(secs).min(MAX_LIFETIME), LifetimeSource::ExpiresIn),
                    Lifetime::JwtExp { secs } => (Duration::from_secs(secs).min(MAX_LIFETIME), LifetimeSource::JwtExp),
                    Lifetime::Default => (default, LifetimeSource::Default),
                };
                prop_assert_eq!(r.access_token.expose(), token.as_str());
                prop_assert_eq!(r.token_type, TokenType::Bearer);
                prop_assert_eq!(r.scopes, expected_scopes);
                prop_assert_eq!(r.lifetime, want_lifetime);
                prop_assert_eq!(r.lifetime_source, want_source);
            }
        }
    }
}
