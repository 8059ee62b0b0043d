//! `client_secret_basic` as providers really decode it.
//!
//! RFC 6749 section 2.3.1 has the client form-encode id and secret before joining them with `:`
//! and base64-encoding the pair. oidc-provider and Django OAuth Toolkit form-decode; Authlib
//! decodes with `unquote` (so a `+` stays a `+`: a space is sent as `%20`, which every decoder
//! reads); @node-oauth/oauth2-server, Glewlwyd and many commercial providers do not decode at
//! all and compare against `base64(id:secret)`. With [`BasicEncoding::Auto`], a client whose
//! two encodings differ sends the RFC form first and, when that is refused, the raw one, and
//! keeps whichever was accepted.

use std::future::Future;
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde::Deserialize;

use crate::oauth::FetchError;

/// How a client's id and secret are put into the Basic header (`basic_encoding`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum BasicEncoding {
    /// The RFC form first, the raw one if the provider refuses it; the one accepted is kept.
    #[default]
    Auto,
    /// Always RFC 6749 section 2.3.1 form-encoding.
    Form,
    /// Always `base64(id:secret)`, undecoded.
    Raw,
}

impl TryFrom<String> for BasicEncoding {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "auto" => Ok(BasicEncoding::Auto),
            "form" => Ok(BasicEncoding::Form),
            "raw" => Ok(BasicEncoding::Raw),
            _ => Err(format!(
                "{s:?} is not a Basic encoding; use \"auto\", \"form\" or \"raw\""
            )),
        }
    }
}

/// One way the header is actually sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Form,
    Raw,
}

impl Sent {
    fn describe(self) -> &'static str {
        match self {
            Sent::Form => "RFC 6749 form-encoded",
            Sent::Raw => "raw (base64 of id:secret, not form-encoded)",
        }
    }
}

/// RFC 6749 appendix B form-encoding, with a space as `%20` rather than `+`: Authlib reads
/// the header with `unquote`, which leaves a `+` alone. (A `+` of the input is `%2B`, so every
/// `+` the serializer writes stands for a space.)
fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// The `id:secret` pair as `encoding` writes it, before base64.
pub fn pair(encoding: Sent, client_id: &str, secret: &str) -> String {
    match encoding {
        Sent::Form => format!("{}:{}", form_encode(client_id), form_encode(secret)),
        Sent::Raw => format!("{client_id}:{secret}"),
    }
}

/// The `Authorization` header value for `encoding`.
pub fn authorization(encoding: Sent, client_id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair(encoding, client_id, secret))
    )
}

/// `client_secret_basic` as RFC 6749 section 2.3.1 specifies: id and secret each
/// form-urlencoded, joined by `:`, then base64. Encoding first is what lets an id or secret
/// contain `:`.
pub fn basic_authorization(client_id: &str, secret: &str) -> String {
    authorization(Sent::Form, client_id, secret)
}

/// Why `encoding` cannot work for `client_id`, for the config's validation: a raw pair is split
/// at its first `:`, so an id containing one is read wrong by every server.
pub fn check(encoding: BasicEncoding, client_id: &str) -> Result<(), String> {
    if encoding == BasicEncoding::Raw && client_id.contains(':') {
        return Err(format!(
            "the client id {client_id:?} contains ':', so it cannot be sent raw (the server splits the pair at the first ':'); use \"form\", or auth_method = \"post\""
        ));
    }
    Ok(())
}

/// What `tokend check` should tell the operator about this encoding, if anything.
pub fn note(encoding: BasicEncoding, client_id: &str) -> Option<String> {
    (encoding == BasicEncoding::Auto && client_id.contains(':')).then(|| {
        "contains ':', so it cannot be sent raw in the Basic header: only the RFC 6749 form-encoded header is tried; if the provider does not form-decode, use auth_method = \"post\"".to_string()
    })
}

/// Whether an answer says the client's credentials were not accepted, so the other encoding
/// may be: `invalid_client` (RFC 6749 section 5.2, 401 or, from some servers, 400), or a
/// 401/403 without an OAuth body (what servers that check the header themselves send).
pub fn refused(e: &FetchError) -> bool {
    match e {
        FetchError::OAuth { status, error, .. } => {
            matches!(status, 400 | 401) && error.error == "invalid_client"
        }
        FetchError::Status { status, .. } => matches!(status, 401 | 403),
        _ => false,
    }
}

/// The encoding a client's provider accepted, learned by [`send`] with
/// [`BasicEncoding::Auto`]. Held by the client's token source, so a reload that changes the
/// client (a new source) learns it again.
pub struct Learned {
    client: Arc<str>,
    kept: Mutex<Option<Sent>>,
}

impl Learned {
    /// Nothing learned yet, for the client named `client` in the config (for the log line).
    pub fn new(client: impl Into<Arc<str>>) -> Self {
        Self {
            client: client.into(),
            kept: Mutex::new(None),
        }
    }

    fn get(&self) -> Option<Sent> {
        *self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn keep(&self, encoding: Sent) {
        let before = self
            .kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(encoding);
        if before != Some(encoding) {
            tracing::info!(
                client = %self.client,
                "the token endpoint accepts the Basic header {}; sending it that way from now on",
                encoding.describe()
            );
        }
    }
}

/// What to send first, and what to send if that is refused.
fn attempts(
    setting: BasicEncoding,
    learned: Option<Sent>,
    client_id: &str,
    secret: &str,
) -> (Sent, Option<Sent>) {
    match (setting, learned) {
        (BasicEncoding::Form, _) => (Sent::Form, None),
        (BasicEncoding::Raw, _) => (Sent::Raw, None),
        (BasicEncoding::Auto, Some(kept)) => (kept, None),
        (BasicEncoding::Auto, None) => {
            let same = pair(Sent::Form, client_id, secret) == pair(Sent::Raw, client_id, secret);
            if same || client_id.contains(':') {
                (Sent::Form, None)
            } else {
                (Sent::Form, Some(Sent::Raw))
            }
        }
    }
}

/// Sends a token request with the Basic header `setting` calls for, through `send` (one
/// request with the given header value, its outcome). With [`BasicEncoding::Auto`] and
/// nothing learned, a refused RFC form is followed at once by one raw attempt; both refused is
/// [`FetchError::BasicRefused`]. Answers that refuse the credentials leave any grant unspent
/// (client authentication comes first), so the second attempt may carry the same grant.
pub async fn send<T, F, Fut>(
    setting: BasicEncoding,
    learned: &Learned,
    client_id: &str,
    secret: &str,
    mut send: F,
) -> Result<T, FetchError>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<T, FetchError>>,
{
    let (first, fallback) = attempts(setting, learned.get(), client_id, secret);
    let outcome = send(authorization(first, client_id, secret)).await;
    let Some(fallback) = fallback else {
        return outcome;
    };
    match outcome {
        Ok(v) => {
            learned.keep(first);
            Ok(v)
        }
        Err(e) if refused(&e) => match send(authorization(fallback, client_id, secret)).await {
            Ok(v) => {
                learned.keep(fallback);
                Ok(v)
            }
            Err(e) if refused(&e) => Err(FetchError::BasicRefused(Box::new(e))),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::reply::OAuthError;

    fn decode(header: &str) -> String {
        let b64 = header.strip_prefix("Basic ").unwrap();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn form_encodes_before_base64_with_a_space_as_percent_20() {
        assert_eq!(
            decode(&basic_authorization("plain", "secret")),
            "plain:secret"
        );
        assert_eq!(
            decode(&basic_authorization("id:with:colons", "p+a%s:s")),
            "id%3Awith%3Acolons:p%2Ba%25s%3As"
        );
        assert_eq!(
            decode(&basic_authorization("ïd", "sé cret")),
            "%C3%AFd:s%C3%A9%20cret"
        );
        assert_eq!(
            decode(&authorization(Sent::Form, "app", "a+b/c=d~e f")),
            "app:a%2Bb%2Fc%3Dd%7Ee%20f"
        );
    }

    #[test]
    fn raw_is_the_seed_providers_echo_n_id_colon_secret_base64() {
        // `echo -n "app:a+b/c=d~e f" | base64`
        assert_eq!(
            authorization(Sent::Raw, "app", "a+b/c=d~e f"),
            "Basic YXBwOmErYi9jPWR+ZSBm"
        );
        // Non-ASCII goes as its UTF-8 bytes.
        assert_eq!(
            decode(&authorization(Sent::Raw, "ïd", "sé cret")),
            "ïd:sé cret"
        );
    }

    #[test]
    fn auto_falls_back_only_where_the_encodings_differ_and_raw_can_work() {
        let auto = |learned, id, secret| attempts(BasicEncoding::Auto, learned, id, secret);
        assert_eq!(auto(None, "app", "S3cret-._*"), (Sent::Form, None));
        assert_eq!(
            auto(None, "app", "a+b/c=d~e f"),
            (Sent::Form, Some(Sent::Raw))
        );
        assert_eq!(auto(None, "my app", "s"), (Sent::Form, Some(Sent::Raw)));
        assert_eq!(auto(None, "ïd", "s"), (Sent::Form, Some(Sent::Raw)));
        assert_eq!(auto(None, "urn:app", "a+b"), (Sent::Form, None));
        assert_eq!(auto(Some(Sent::Raw), "app", "a+b"), (Sent::Raw, None));
        assert_eq!(
            attempts(BasicEncoding::Raw, None, "app", "a+b"),
            (Sent::Raw, None)
        );
        assert_eq!(
            attempts(BasicEncoding::Form, Some(Sent::Raw), "app", "a+b"),
            (Sent::Form, None)
        );
    }

    #[test]
    fn an_id_with_a_colon_is_refused_raw_and_noted_with_auto() {
        assert!(
            check(BasicEncoding::Raw, "urn:app")
                .unwrap_err()
                .contains("':'")
        );
        assert!(check(BasicEncoding::Raw, "app").is_ok());
        assert!(check(BasicEncoding::Auto, "urn:app").is_ok());
        assert!(note(BasicEncoding::Auto, "urn:app").is_some());
        assert!(note(BasicEncoding::Auto, "app").is_none());
        assert!(note(BasicEncoding::Form, "urn:app").is_none());
    }

    fn oauth(status: u16, code: &str) -> FetchError {
        FetchError::OAuth {
            status,
            error: OAuthError {
                error: code.into(),
                description: None,
            },
            retry_after: None,
        }
    }

    fn status(status: u16) -> FetchError {
        FetchError::Status {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn refusals_are_invalid_client_or_a_bare_401_or_403() {
        assert!(refused(&oauth(401, "invalid_client")));
        assert!(refused(&oauth(400, "invalid_client")));
        assert!(!refused(&oauth(400, "invalid_grant")));
        assert!(!refused(&oauth(403, "invalid_client")));
        assert!(refused(&status(401)));
        assert!(refused(&status(403)));
        assert!(!refused(&status(400)));
        assert!(!refused(&status(503)));
        assert!(!refused(&FetchError::Network("refused".into())));
    }

    /// Runs [`send`] against a server that accepts only `accepts`, recording the headers.
    async fn run(
        setting: BasicEncoding,
        learned: &Learned,
        secret: &str,
        accepts: Option<Sent>,
    ) -> (Result<(), FetchError>, Vec<String>) {
        let mut seen = Vec::new();
        let want = accepts.map(|e| authorization(e, "app", secret));
        let result = send(setting, learned, "app", secret, |header| {
            let ok = Some(&header) == want.as_ref();
            seen.push(decode(&header));
            async move { if ok { Ok(()) } else { Err(status(401)) } }
        })
        .await;
        (result, seen)
    }

    #[tokio::test]
    async fn auto_retries_once_raw_and_keeps_what_worked() {
        let secret = "a+b/c=d~e f";
        let learned = Learned::new("c");
        let (result, seen) = run(BasicEncoding::Auto, &learned, secret, Some(Sent::Raw)).await;
        assert!(result.is_ok());
        assert_eq!(seen, ["app:a%2Bb%2Fc%3Dd%7Ee%20f", "app:a+b/c=d~e f"]);
        let (result, seen) = run(BasicEncoding::Auto, &learned, secret, Some(Sent::Raw)).await;
        assert!(result.is_ok());
        assert_eq!(seen, ["app:a+b/c=d~e f"], "the kept encoding goes alone");

        let form = Learned::new("c");
        let (result, seen) = run(BasicEncoding::Auto, &form, secret, Some(Sent::Form)).await;
        assert!(result.is_ok());
        assert_eq!(seen.len(), 1);
        assert_eq!(form.get(), Some(Sent::Form));
    }

    #[tokio::test]
    async fn both_refused_says_so_and_suggests_post() {
        let learned = Learned::new("c");
        let (result, seen) = run(BasicEncoding::Auto, &learned, "a+b", None).await;
        let e = result.unwrap_err();
        assert_eq!(seen.len(), 2);
        let text = e.to_string();
        assert!(text.contains("both"), "{text}");
        assert!(text.contains("auth_method = \"post\""), "{text}");
        assert_eq!(e.kind(), crate::oauth::FailureKind::NeedsOperator);
        assert_eq!(learned.get(), None);
        // Nothing learned: the next attempt tries both again (an operator may fix the secret).
        let (_, seen) = run(BasicEncoding::Auto, &learned, "a+b", None).await;
        assert_eq!(seen.len(), 2);
        // Fixed settings never retry.
        let (result, seen) = run(BasicEncoding::Form, &learned, "a+b", Some(Sent::Raw)).await;
        assert!(result.is_err());
        assert_eq!(seen.len(), 1);
    }
}
