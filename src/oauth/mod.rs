//! The token endpoint client: builds the grant request for one configured client, sends it over
//! HTTPS (rustls) with a timeout and a cap on the reply size, and classifies the outcome.

pub mod budget;
mod inflight;
pub mod redact;
pub mod reply;
mod retry_after;
mod unsaved;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;

use crate::config::{AuthMethod, ClientConfig, Grant, RefreshPolicy};
use crate::metrics::METRICS;
use crate::oauth::budget::EndpointLimiter;
use crate::secret::{self, AccessToken, ExposeSecret, SecretError, SecretString};
pub use redact::Redactor;
pub use reply::{OAuthError, ReplyError, TokenReply};
pub use retry_after::parse_retry_after;

/// Token replies are a few KiB; anything much larger is a misconfigured endpoint, and reading
/// it whole would let a broken or hostile endpoint exhaust memory.
pub const MAX_REPLY_BYTES: usize = 1024 * 1024;

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
            FetchError::Network(_)
            | FetchError::Timeout(_)
            | FetchError::TooLarge
            | FetchError::Reply(_) => FailureKind::Transient,
        }
    }

    /// Whether only a new authorization (`tokend authorize`) can fix this: the refresh token is
    /// missing, or the provider rejected it (revoked, expired or already used).
    pub fn needs_reauthorization(&self) -> bool {
        match self {
            FetchError::NoRefreshToken(e) => !e.is_transient(),
            FetchError::OAuth { error, .. } => error.error == "invalid_grant",
            _ => false,
        }
    }

    /// A short, bounded label for metrics: the OAuth error code, `http_NNN`, or the kind.
    pub fn label(&self) -> String {
        match self {
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
        }
    }

    /// The delay the endpoint asked for with `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::OAuth { retry_after, .. } | FetchError::Status { retry_after, .. } => {
                *retry_after
            }
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

/// Where tokens come from. The daemon uses [`HttpTokenSource`]; tests drive the token actor's
/// schedule on a paused clock with a scripted source.
pub trait TokenSource: Send + Sync + 'static {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<TokenReply, FetchError>> + Send>>;

    /// A value that changes when the credential files change, so a client stuck on rejected
    /// credentials can retry as soon as an operator replaces them. `None`: nothing to watch.
    fn credentials_stamp(&self) -> Option<u64> {
        None
    }

    /// The token endpoint: clients of one endpoint take turns to start (see
    /// [`crate::refresh::supervisor`]).
    fn endpoint(&self) -> &str {
        ""
    }

    /// Resolves once no request is in flight (waited for at shutdown, so that a rotated
    /// refresh token already on its way back is saved rather than lost).
    fn idle(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }

    /// While the newest refresh token could not be written and is held in memory only: what
    /// is at risk and why, for the client's status. `None` when nothing is at risk.
    fn unsaved(&self) -> Option<String> {
        None
    }

    /// Tries again to write a refresh token held in memory only; resolves when tried.
    fn save_unsaved(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(std::future::ready(()))
    }
}

/// Fetches tokens for one configured client from its token endpoint.
pub struct HttpTokenSource {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// The client's name in the config, for logs.
    name: String,
    client: Arc<ClientConfig>,
    default_lifetime: Duration,
    timeout: Duration,
    limiter: Arc<EndpointLimiter>,
    /// Held from reading the refresh token until its successor is on disk (or, if that
    /// fails, in [`unsaved`]). The source outlives actor restarts, so a restarted actor's
    /// request waits for one still in flight instead of sending the same refresh token twice.
    in_flight: tokio::sync::Mutex<()>,
    /// The access token last received: a provider knows it and may echo it in an error.
    last_access_token: std::sync::Mutex<Option<AccessToken>>,
}

impl HttpTokenSource {
    pub fn new(
        http: reqwest::Client,
        name: &str,
        client: Arc<ClientConfig>,
        policy: &RefreshPolicy,
        limiter: Arc<EndpointLimiter>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                name: name.to_string(),
                client,
                default_lifetime: policy.default_lifetime,
                timeout: policy.request_timeout,
                limiter,
                in_flight: tokio::sync::Mutex::new(()),
                last_access_token: std::sync::Mutex::new(None),
            }),
        }
    }
}

impl TokenSource for HttpTokenSource {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<TokenReply, FetchError>> + Send>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let _in_flight = inner.in_flight.lock().await;
            if let (Grant::RefreshToken, Some(path)) =
                (inner.client.grant, &inner.client.refresh_token_file)
            {
                let wait = inflight::wait_before_use(path, inner.timeout)
                    .map_err(FetchError::NoRefreshToken)?
                    .max(unsaved::wait_before_use(path, inner.timeout));
                if !wait.is_zero() {
                    tracing::info!(
                        client = %inner.name,
                        wait = %humantime::format_duration(Duration::from_secs(wait.as_secs())),
                        "an earlier refresh request may still be in flight; waiting until it is settled before reusing the refresh token"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
            // Waiting for the endpoint's budget is not part of the request's timeout.
            let _permit = inner.limiter.acquire().await;
            let timeout = inner.timeout;
            let started = tokio::time::Instant::now();
            let result = match tokio::time::timeout(timeout, inner.fetch()).await {
                Ok(result) => result,
                Err(_) => Err(FetchError::Timeout(timeout)),
            };
            METRICS.request_took(&inner.endpoint_label(), started.elapsed());
            result
        })
    }

    fn credentials_stamp(&self) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        use std::os::unix::fs::MetadataExt;
        let c = &self.inner.client;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for path in [c.secret_file(), c.refresh_token_file.clone()]
            .into_iter()
            .flatten()
        {
            std::fs::metadata(path)
                .ok()
                .map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
                .hash(&mut hasher);
        }
        Some(hasher.finish())
    }

    fn endpoint(&self) -> &str {
        &self.inner.client.token_endpoint
    }

    fn idle(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let _in_flight = self.inner.in_flight.lock().await;
            // A last attempt before the process takes the unsaved token with it.
            if let Some(path) = self.inner.refresh_token_file()
                && unsaved::current(path).is_some()
            {
                tracing::error!(
                    client = %self.inner.name,
                    "tokend stops while the newest refresh token is not saved: the grant is likely lost (the file holds a spent one); if so, run `tokend authorize {}` once the refresh token file can be written",
                    self.inner.name
                );
            }
        })
    }

    fn unsaved(&self) -> Option<String> {
        unsaved::warning(self.inner.refresh_token_file()?)
    }

    fn save_unsaved(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            // After any request in flight, which may have rotated the token again.
            let _in_flight = inner.in_flight.lock().await;
            if let Some(path) = inner.refresh_token_file() {
                unsaved::current(path);
            }
        })
    }
}

/// One shared HTTP client for all token endpoints: connection reuse across clients of one
/// provider, rustls with the platform's trust store.
pub fn http_client() -> reqwest::Client {
    // Installing twice is harmless; the first provider wins for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("tokend/", env!("CARGO_PKG_VERSION")))
        // A token endpoint that redirects a POST is misconfigured; following it would resend
        // credentials to wherever it points.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("TLS backend initialises")
}

impl Inner {
    /// The endpoint as metrics name it: without credentials, query or fragment, which may
    /// carry secrets and would split one provider's series.
    fn endpoint_label(&self) -> String {
        match reqwest::Url::parse(&self.client.token_endpoint) {
            Ok(mut url) => {
                url.set_query(None);
                url.set_fragment(None);
                let _ = url.set_username("");
                let _ = url.set_password(None);
                url.to_string()
            }
            Err(_) => String::new(),
        }
    }

    /// The refresh token file, for clients of the refresh-token grant.
    fn refresh_token_file(&self) -> Option<&std::path::Path> {
        match (self.client.grant, &self.client.refresh_token_file) {
            (Grant::RefreshToken, Some(path)) => Some(path),
            _ => None,
        }
    }

    async fn fetch(&self) -> Result<TokenReply, FetchError> {
        let c = &self.client;
        let rt_file = self.refresh_token_file();
        // The newest refresh token: one held in memory because it could not be written wins
        // over the file's, which the provider has already spent.
        let refresh_token = match rt_file {
            Some(path) => Some(match unsaved::current(path) {
                Some(kept) => kept,
                None => {
                    let file = unsaved::stamp(path);
                    let token = secret::read_file_async(path)
                        .await
                        .map_err(FetchError::NoRefreshToken)?;
                    (token, file)
                }
            }),
            None => None,
        };
        let mut grant = vec![("grant_type", c.grant.as_str())];
        if let Some((rt, _)) = &refresh_token {
            grant.push(("refresh_token", rt.expose_secret()));
        }
        // A refresh asks for no scope: omitted, it means the scope already granted (RFC 6749
        // section 6), while asking again fails with invalid_scope wherever consent granted less.
        let with_scope = c.grant == Grant::ClientCredentials;
        if let Some(path) = rt_file {
            if let Err(source) = inflight::mark(path) {
                let error = SecretError::Write {
                    path: path.to_path_buf(),
                    source,
                };
                // With the newest refresh token in memory only, not refreshing saves nothing:
                // the token is lost with the process either way. [`unsaved`] keeps the marker.
                if !unsaved::holds(path) {
                    return Err(error.into());
                }
                tracing::warn!(client = %self.name, "refreshing without an in-flight marker: {error}");
            }
            unsaved::sending(path);
        }
        let known = self
            .last_access_token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let redactor = Redactor::new(known.as_ref().map(AccessToken::expose));
        let result = request_token(
            &self.http,
            c,
            &grant,
            with_scope,
            self.default_lifetime,
            redactor,
        )
        .await;
        let result = match result {
            Ok(granted) => granted,
            Err(e) => {
                // An answer settles the request; a network error may have struck after it was
                // sent, so its marker stays (see `inflight`).
                if let Some(path) = rt_file
                    && !matches!(e, FetchError::Network(_))
                {
                    inflight::clear(path);
                    unsaved::answered(path);
                }
                return Err(e);
            }
        };
        if let Some(path) = rt_file {
            unsaved::answered(path);
            // Saved before anything else in the reply is judged, and before the access token is
            // published: the provider has spent the old refresh token, and a grant whose newest
            // token was dropped needs a person to authorize again.
            if let Some(new) = &result.refresh_token {
                let file = refresh_token.as_ref().and_then(|(_, file)| *file);
                unsaved::save(path, &self.name, new, file);
            }
            inflight::clear(path);
        }
        if result.dropped_scopes > 0 {
            tracing::warn!(
                client = %self.name,
                dropped = result.dropped_scopes,
                "ignored scope entries that are not RFC 6749 scope tokens (NQCHAR), are too long or too many, or echo a credential"
            );
        }
        if let Ok(token) = &result.token {
            *self
                .last_access_token
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(token.access_token.clone());
        }
        result.token
    }
}

/// A 2xx reply that is a JSON object: the refresh token it rotated to, kept apart from the rest
/// so that it is saved even when the rest is unusable, and the token or why it is unusable.
pub struct Granted {
    pub refresh_token: Option<SecretString>,
    pub token: Result<TokenReply, FetchError>,
    /// Scope entries dropped as malformed, for a warning.
    pub dropped_scopes: usize,
}

/// Grant parameters that are credentials, redacted wherever a provider echoes them.
const CREDENTIAL_PARAMS: &[&str] = &["refresh_token", "code", "code_verifier"];

/// Sends one token request for `c` with the grant's own parameters (`grant_type` first),
/// authenticating the client as configured, and reads the reply. `with_scope` adds the
/// configured scope (only client credentials ask for it at the token endpoint; other grants
/// carry the scope settled at the authorization endpoint). Provider text in the outcome has
/// every credential of the request redacted, as well as those `redactor` already holds.
pub async fn request_token(
    http: &reqwest::Client,
    c: &ClientConfig,
    grant: &[(&str, &str)],
    with_scope: bool,
    default_lifetime: Duration,
    mut redactor: Redactor,
) -> Result<Granted, FetchError> {
    let secret = match (c.secret_file(), &c.client_secret_env) {
        (Some(path), _) => secret::read_file_async(&path).await?,
        (None, Some(var)) => secret::read_env(var)?,
        (None, None) => unreachable!("validated: one secret source is set"),
    };
    let body = form_body(c, &secret, grant, with_scope);
    let mut request = http
        .post(&c.token_endpoint)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(reqwest::header::ACCEPT, "application/json")
        .body(body);
    if c.auth_method == AuthMethod::Basic {
        request = request.header(
            reqwest::header::AUTHORIZATION,
            basic_authorization(&c.client_id, secret.expose_secret()),
        );
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| FetchError::Network(describe(&e)))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| FetchError::Network(describe(&e)))?
    {
        if body.len() + chunk.len() > MAX_REPLY_BYTES {
            return Err(FetchError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    redactor.add_client_credentials(&c.client_id, secret.expose_secret());
    for (key, value) in grant {
        if CREDENTIAL_PARAMS.contains(key) {
            redactor.add(value);
        }
    }
    if !status.is_success() {
        return Err(match reply::parse_error(&body, &redactor) {
            Some(error) => FetchError::OAuth {
                status: status.as_u16(),
                error,
                retry_after,
            },
            None => FetchError::Status {
                status: status.as_u16(),
                retry_after,
            },
        });
    }
    let obj = reply::parse_object(&body, &content_type, &redactor)?;
    let refresh_token = reply::refresh_token(&obj)?;
    if let Some(rt) = &refresh_token {
        redactor.add(rt.expose_secret());
    }
    let parsed = reply::parse_token(
        &obj,
        c.scope.as_deref(),
        default_lifetime,
        SystemTime::now(),
        &redactor,
    );
    Ok(match parsed {
        Ok((token, dropped_scopes)) => Granted {
            refresh_token,
            token: Ok(token),
            dropped_scopes,
        },
        Err(e) => Granted {
            refresh_token,
            token: Err(e.into()),
            dropped_scopes: 0,
        },
    })
}

/// The form body: the grant's parameters, the client's credentials with `client_secret_post`,
/// then scope (`with_scope`), audience, resource, and the configured extra parameters.
fn form_body(
    c: &ClientConfig,
    secret: &SecretString,
    grant: &[(&str, &str)],
    with_scope: bool,
) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (key, value) in grant {
        form.append_pair(key, value);
    }
    if c.auth_method == AuthMethod::Post {
        form.append_pair("client_id", &c.client_id);
        form.append_pair("client_secret", secret.expose_secret());
    }
    if let Some(scope) = c.scope.as_ref().filter(|_| with_scope) {
        form.append_pair("scope", scope);
    }
    for (key, value) in [("audience", &c.audience), ("resource", &c.resource)] {
        if let Some(v) = value {
            form.append_pair(key, v);
        }
    }
    for (key, value) in &c.extra_params {
        form.append_pair(key, value);
    }
    form.finish()
}

/// `client_secret_basic` as RFC 6749 section 2.3.1 specifies: id and secret each
/// form-urlencoded, joined by `:`, then base64. Encoding first is what lets an id or secret
/// contain `:`; many clients skip it and fail against strict servers.
pub fn basic_authorization(client_id: &str, secret: &str) -> String {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(client_id), encode(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// reqwest's error text with its source chain, which carries the useful part ("connection
/// refused"). No secret can be in it: credentials travel in headers and body, never the URL.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_basic(header: &str) -> String {
        let b64 = header.strip_prefix("Basic ").unwrap();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn basic_auth_form_encodes_before_base64() {
        assert_eq!(
            decode_basic(&basic_authorization("plain", "secret")),
            "plain:secret"
        );
        assert_eq!(
            decode_basic(&basic_authorization("id:with:colons", "p+a%s:s")),
            "id%3Awith%3Acolons:p%2Ba%25s%3As"
        );
        assert_eq!(
            decode_basic(&basic_authorization("ïd", "sé cret")),
            "%C3%AFd:s%C3%A9+cret"
        );
    }

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

    #[test]
    fn form_body_per_auth_method() {
        let mut c: ClientConfig = serde_json::from_value(serde_json::json!({
            "token_endpoint": "https://x/token", "client_id": "my id",
            "client_secret_env": "X", "auth_method": "post", "scope": "a b",
            "extra_params": {"foo": "bar"}
        }))
        .unwrap();
        let secret = SecretString::from("s&=cret".to_string());
        let cc = [("grant_type", "client_credentials")];
        assert_eq!(
            form_body(&c, &secret, &cc, true),
            "grant_type=client_credentials&client_id=my+id&client_secret=s%26%3Dcret&scope=a+b&foo=bar"
        );
        c.auth_method = AuthMethod::Basic;
        let rt = [("grant_type", "refresh_token"), ("refresh_token", "r/t")];
        assert_eq!(
            form_body(&c, &secret, &rt, false),
            "grant_type=refresh_token&refresh_token=r%2Ft&foo=bar"
        );
        let code = [("grant_type", "authorization_code"), ("code", "c")];
        assert_eq!(
            form_body(&c, &secret, &code, false),
            "grant_type=authorization_code&code=c&foo=bar"
        );
    }

    #[test]
    fn metrics_name_the_endpoint_without_credentials_or_query() {
        let c: ClientConfig = serde_json::from_value(serde_json::json!({
            "token_endpoint": "https://user:pw@idp.example.com/oauth/token?key=k#f",
            "client_id": "a", "client_secret_env": "X"
        }))
        .unwrap();
        let source = HttpTokenSource::new(
            http_client(),
            "a",
            Arc::new(c),
            &RefreshPolicy::default(),
            Arc::new(EndpointLimiter::new(1, Duration::ZERO)),
        );
        assert_eq!(
            source.inner.endpoint_label(),
            "https://idp.example.com/oauth/token"
        );
    }
}
