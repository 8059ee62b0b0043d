//! Where tokens come from: the [`TokenSource`] the refresher asks, and [`HttpTokenSource`], which
//! asks a client's token endpoint, one request at a time, within the endpoint's budget, keeping
//! a rotated refresh token safe across the request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::budget::EndpointLimiter;
use super::discovery::{self, DiscoveryError, Metadata};
use super::dpop::DpopHolder;
use super::federated::{self, CredentialSource, Federated, FederatedError, Presented, Role};
use super::request::{Carried, Proofs, request_token};
use super::settings::{ClientSettings, Grant, RequestSettings, SecretSource};
use super::{AuthMethod, FetchError, Redactor, TokenReply, basic, inflight, unsaved};
use crate::host::file_stamp::FileStamp;
use crate::metrics::METRICS;
use crate::secret::{self, AccessToken, ExposeSecret, SecretError};

/// Where tokens come from. The daemon uses [`HttpTokenSource`]; tests drive the token actor's
/// schedule on a paused clock with a scripted source.
pub trait TokenSource: Send + Sync + 'static {
    /// Requests a token. The request holds the source until it is done: a source that only its
    /// keeper holds has nothing in flight.
    fn fetch(
        self: Arc<Self>,
    ) -> Pin<Box<dyn Future<Output = Result<TokenReply, FetchError>> + Send>>;

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
    fn save_unsaved(self: Arc<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(std::future::ready(()))
    }

    /// Whether some credential comes from a command, whose change no file stamp shows: a
    /// client whose credentials were refused then retries on the backoff schedule (each attempt
    /// runs the command, and sends nothing unless it yields another token) instead of waiting
    /// for `operator_retry`.
    fn credentials_from_commands(&self) -> bool {
        false
    }
}

/// Fetches tokens for one configured client from its token endpoint.
pub struct HttpTokenSource {
    /// The shared client, or this client's own for its TLS files ([`super::tls`]).
    http: super::tls::Http,
    /// The client's name in the config, for logs (one copy, shared with `basic`).
    name: Arc<str>,
    client: Arc<ClientSettings>,
    /// The `[refresh]` timings, one copy for every client.
    requests: Arc<RequestSettings>,
    limiter: Arc<EndpointLimiter>,
    /// Held from reading the refresh token until its successor is on disk (or, if that
    /// fails, in [`unsaved`]). The source outlives actor restarts, so a restarted actor's
    /// request waits for one still in flight instead of sending the same refresh token twice.
    in_flight: tokio::sync::Mutex<()>,
    /// The access token last received: a provider knows it and may echo it in an error.
    last_access_token: std::sync::Mutex<Option<AccessToken>>,
    /// The issuer's metadata, for a client without a configured token endpoint: read by the
    /// first fetch, and again by the next after it could not be read or its token endpoint
    /// answered 404 (so a failure is this client's fetch error, under the refresher's backoff).
    metadata: std::sync::Mutex<Option<Arc<Metadata>>>,
    /// Whether the provider's list of auth methods without this client's was warned about.
    warned_auth_method: std::sync::atomic::AtomicBool,
    /// The Basic header encoding the provider accepted (`basic_encoding = "auto"`).
    basic: basic::Learned,
    /// The federated tokens the provider last refused: not sent again until they change or
    /// `operator_retry` has passed, however often the client retries.
    /// (Boxed: a client keeps this slot whether or not it has federated tokens.)
    refused: std::sync::Mutex<Option<Box<Refusal>>>,
    /// A DPoP client's key and the token endpoint's nonce.
    dpop: Option<Box<DpopHolder>>,
}

/// Federated tokens a provider refused.
struct Refusal {
    digest: [u8; 32],
    at: tokio::time::Instant,
    reason: String,
}

impl HttpTokenSource {
    pub fn new(
        http: reqwest::Client,
        name: Arc<str>,
        client: Arc<ClientSettings>,
        requests: Arc<RequestSettings>,
        limiter: Arc<EndpointLimiter>,
    ) -> Self {
        Self {
            http: super::tls::Http::new(http, &client),
            dpop: client
                .rare()
                .dpop_key
                .as_deref()
                .map(|path| Box::new(DpopHolder::new(path))),
            basic: basic::Learned::new(name.clone()),
            name,
            client,
            requests,
            limiter,
            in_flight: tokio::sync::Mutex::new(()),
            last_access_token: std::sync::Mutex::new(None),
            metadata: std::sync::Mutex::new(None),
            warned_auth_method: std::sync::atomic::AtomicBool::new(false),
            refused: std::sync::Mutex::new(None),
        }
    }
}

impl TokenSource for HttpTokenSource {
    fn fetch(
        self: Arc<Self>,
    ) -> Pin<Box<dyn Future<Output = Result<TokenReply, FetchError>> + Send>> {
        Box::pin(async move {
            let _in_flight = self.in_flight.lock().await;
            if let (Grant::RefreshToken, Some(path)) =
                (self.client.grant, &self.client.rare().refresh_token_file)
            {
                let wait = inflight::wait_before_use(path, self.requests.timeout)
                    .map_err(FetchError::NoRefreshToken)?
                    .max(unsaved::wait_before_use(path, self.requests.timeout));
                if !wait.is_zero() {
                    tracing::info!(
                        client = %self.name,
                        wait = %humantime::format_duration(Duration::from_secs(wait.as_secs())),
                        "an earlier refresh request may still be in flight; waiting until it is settled before reusing the refresh token"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
            // Waiting for the endpoint's budget is not part of the request's timeout.
            let _permit = self.limiter.acquire().await;
            let timeout = self.requests.timeout;
            // Read under the permit, so that the endpoint's concurrency bounds the commands run
            // at once too; bounded by their own limits, not the request's.
            let presented = self.federated(timeout).await?;
            let started = tokio::time::Instant::now();
            let result = match tokio::time::timeout(timeout, self.send(presented.as_ref())).await {
                Ok(result) => result,
                Err(_) => Err(FetchError::Timeout(timeout)),
            };
            METRICS.request_took(&self.endpoint_label(), started.elapsed());
            match &presented {
                Some(presented) => self.judge_federated(presented, result),
                None => result,
            }
        })
    }

    fn credentials_from_commands(&self) -> bool {
        self.client.federated.as_deref().is_some_and(|f| {
            f.sources()
                .any(|(_, s)| matches!(s, CredentialSource::Command(_)))
        })
    }

    fn credentials_stamp(&self) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        let c = &self.client;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let secret_file = match &c.secret {
            Some(SecretSource::File(path)) => Some(&**path),
            Some(SecretSource::Env(_)) | None => None,
        };
        let federated_files = c
            .federated
            .as_deref()
            .into_iter()
            .flat_map(|f| f.sources())
            .filter_map(|(_, source)| match source {
                CredentialSource::File(path) => Some(path.as_path()),
                CredentialSource::Command(_) => None,
            });
        for path in [
            secret_file,
            c.rare().refresh_token_file.as_deref(),
            c.rare().client_key.as_deref(),
        ]
        .into_iter()
        .flatten()
        .chain(super::tls::watched_files(c))
        .chain(federated_files)
        {
            FileStamp::of(path).hash(&mut hasher);
        }
        Some(hasher.finish())
    }

    fn endpoint(&self) -> &str {
        self.client.endpoint_key()
    }

    fn idle(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let _in_flight = self.in_flight.lock().await;
            // A last attempt before the process takes the unsaved token with it.
            if let Some(path) = self.refresh_token_file()
                && unsaved::current(path).is_some()
            {
                tracing::error!(
                    client = %self.name,
                    "tokend stops while the newest refresh token is not saved: the grant is likely lost (the file holds a spent one); if so, run `tokend authorize {}` once the refresh token file can be written",
                    self.name
                );
            }
        })
    }

    fn unsaved(&self) -> Option<String> {
        unsaved::warning(self.refresh_token_file()?)
    }

    fn save_unsaved(self: Arc<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            // After any request in flight, which may have rotated the token again.
            let _in_flight = self.in_flight.lock().await;
            if let Some(path) = self.refresh_token_file() {
                unsaved::current(path);
            }
        })
    }
}

/// One shared HTTP client for all token endpoints: connection reuse across clients of one
/// provider, rustls with the platform's trust store.
pub fn http_client() -> reqwest::Client {
    http_client_builder()
        .build()
        .expect("TLS backend initialises")
}

/// How every token endpoint client is set up; [`super::tls`] adds a client's own TLS files.
pub(super) fn http_client_builder() -> reqwest::ClientBuilder {
    // Installing twice is harmless; the first provider wins for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("tokend/", env!("CARGO_PKG_VERSION")))
        // A token endpoint that redirects a POST is misconfigured; following it would resend
        // credentials to wherever it points.
        .redirect(reqwest::redirect::Policy::none())
}

impl HttpTokenSource {
    /// The endpoint as metrics name it: without credentials, query or fragment, which may
    /// carry secrets and would split one provider's series.
    fn endpoint_label(&self) -> String {
        match reqwest::Url::parse(self.client.endpoint_key()) {
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
        match (self.client.grant, &self.client.rare().refresh_token_file) {
            (Grant::RefreshToken, Some(path)) => Some(path),
            _ => None,
        }
    }

    /// The token endpoint: the configured one, or the one the issuer's metadata names.
    async fn token_endpoint(&self, http: &reqwest::Client) -> Result<String, FetchError> {
        let c = &self.client;
        if let Some(endpoint) = &c.token_endpoint {
            return Ok(endpoint.to_string());
        }
        let issuer = c.issuer.as_deref().unwrap_or_default();
        let cached = self
            .metadata
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let metadata = match cached {
            Some(m) => m,
            None => {
                let m = Arc::new(discovery::discover(http, issuer, self.requests.timeout).await?);
                if m.leaves_out(c.auth_method)
                    && !self
                        .warned_auth_method
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(
                        client = %self.name,
                        "the metadata of issuer {issuer} does not list auth_method {:?} among its token_endpoint_auth_methods_supported; if requests fail with invalid_client, use one it lists",
                        c.auth_method.as_str()
                    );
                }
                *self.metadata.lock().unwrap_or_else(|e| e.into_inner()) = Some(m.clone());
                m
            }
        };
        metadata
            .token_endpoint_for(c.auth_method)
            .map(str::to_string)
            .ok_or_else(|| {
                DiscoveryError::Missing {
                    issuer: issuer.to_string(),
                    key: "token_endpoint",
                }
                .into()
            })
    }

    /// After the discovered token endpoint answered 404: the metadata read anew, and the
    /// endpoint it now names if that is another one (the provider moved it).
    async fn moved_token_endpoint(&self, http: &reqwest::Client, tried: &str) -> Option<String> {
        if self.client.token_endpoint.is_some() {
            return None;
        }
        *self.metadata.lock().unwrap_or_else(|e| e.into_inner()) = None;
        match self.token_endpoint(http).await {
            Ok(endpoint) if endpoint != tried => {
                tracing::info!(
                    client = %self.name,
                    "the token endpoint answered 404; the issuer's metadata now names another, trying it"
                );
                Some(endpoint)
            }
            _ => None,
        }
    }

    /// The client's federated tokens for this request; refused unsent when they are the ones
    /// the provider last refused, within `operator_retry` of that.
    async fn federated(&self, timeout: Duration) -> Result<Option<Presented>, FetchError> {
        let Some(presented) = federated::read_for_client(&self.client, timeout).await? else {
            return Ok(None);
        };
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(refusal) = refused.as_ref()
            && refusal.digest == presented.digest()
            && refusal.at.elapsed() < self.requests.operator_retry
            && let Some((noun, from, fingerprint)) = presented.first()
        {
            return Err(FederatedError::Unchanged {
                noun,
                from: from.to_string(),
                fingerprint,
                ago: humantime::format_duration(Duration::from_secs(
                    refusal.at.elapsed().as_secs(),
                ))
                .to_string(),
                reason: refusal.reason.clone(),
            }
            .into());
        }
        Ok(Some(presented))
    }

    /// After a request that presented federated tokens: a refusal of them is remembered (so
    /// they are not sent again unchanged) and said with what they claim; a token clears it.
    fn judge_federated(
        &self,
        presented: &Presented,
        result: Result<TokenReply, FetchError>,
    ) -> Result<TokenReply, FetchError> {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(token) => {
                *refused = None;
                Ok(token)
            }
            Err(e) if self.blames_federated(&e) => {
                *refused = Some(Box::new(Refusal {
                    digest: presented.digest(),
                    at: tokio::time::Instant::now(),
                    reason: e.label(),
                }));
                Err(FetchError::FederatedRefused {
                    source: Box::new(e),
                    presented: presented.describe(),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Whether a provider's answer says that the federated tokens were refused: the grant
    /// (`invalid_grant`; RFC 8693 says `invalid_request` for a subject or actor token it does
    /// not accept) or, for `federated_assertion`, the client (`invalid_client`).
    fn blames_federated(&self, e: &FetchError) -> bool {
        let FetchError::OAuth { error, .. } = e else {
            return false;
        };
        let c = &self.client;
        match error.error.as_str() {
            "invalid_grant" => matches!(c.grant, Grant::TokenExchange | Grant::JwtBearer),
            "invalid_request" => c.grant == Grant::TokenExchange,
            "invalid_client" => c.auth_method == AuthMethod::FederatedAssertion,
            _ => false,
        }
    }

    /// Sends the token request, and once more to where the issuer's metadata moved the
    /// endpoint if it answered 404.
    async fn send(&self, presented: Option<&Presented>) -> Result<TokenReply, FetchError> {
        let c = &self.client;
        // Before any refresh token is marked as sent: bad TLS files or a bad DPoP key send
        // nothing.
        let http = self.http.get(&self.name).await?;
        let dpop_key = match &self.dpop {
            Some(holder) => Some(holder.key().await.map_err(FetchError::Dpop)?),
            None => None,
        };
        let endpoint = self.token_endpoint(&http).await?;
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
        let mut grant = vec![("grant_type", c.grant.grant_type())];
        if let Some((rt, _)) = &refresh_token {
            grant.push(("refresh_token", rt.expose_secret()));
        }
        if let (Some(presented), Some(f)) = (presented, c.federated.as_deref()) {
            grant.extend(federated_params(presented, f));
        }
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
        let proofs = self
            .dpop
            .as_deref()
            .zip(dpop_key.as_deref())
            .map(|(holder, key)| Proofs { holder, key });
        let request = |endpoint: String| {
            let (http, grant, redactor) = (&http, &grant, redactor.clone());
            async move {
                request_token(
                    http,
                    c,
                    &endpoint,
                    Carried {
                        grant,
                        with_scope: c.grant.sends_scope(),
                        federated: presented,
                        dpop: proofs,
                    },
                    self.requests.default_lifetime,
                    redactor,
                    &self.basic,
                )
                .await
            }
        };
        let mut result = request(endpoint.clone()).await;
        // A 404 is an answer: nothing was granted, so the request may go to the moved endpoint.
        if let Err(FetchError::OAuth { status: 404, .. } | FetchError::Status { status: 404, .. }) =
            &result
            && let Some(moved) = self.moved_token_endpoint(&http, &endpoint).await
        {
            result = request(moved).await;
        }
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
        let mut token = result.token;
        // A DPoP token is bound to the key that proved possession of it: callers' proofs
        // (SignDpopProof, the proxy) are signed with the same key.
        if let Ok(token) = &mut token
            && token.token_type == super::TokenType::Dpop
        {
            token.dpop_key = dpop_key;
        }
        if let Ok(token) = &token {
            *self
                .last_access_token
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(token.access_token.clone());
        }
        token
    }
}

/// The grant parameters of the federated tokens (RFC 8693 section 2.1, RFC 7523 section 2.1);
/// the client assertion is the client authentication's.
fn federated_params<'a>(
    presented: &'a Presented,
    f: &'a Federated,
) -> impl Iterator<Item = (&'static str, &'a str)> {
    let token = |role| presented.get(role).map(|t| t.expose_secret());
    let subject = f.subject.as_ref().zip(token(Role::Subject));
    let actor = f.actor.as_ref().zip(token(Role::Actor));
    [
        subject.map(|(_, t)| ("subject_token", t)),
        subject.map(|(s, _)| ("subject_token_type", s.token_type.as_str())),
        actor.map(|(_, t)| ("actor_token", t)),
        actor.map(|(a, _)| ("actor_token_type", a.token_type.as_str())),
        f.requested_token_type
            .as_deref()
            .map(|t| ("requested_token_type", t)),
        token(Role::Assertion).map(|t| ("assertion", t)),
    ]
    .into_iter()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::federated::TypedSource;
    use crate::oauth::reply::OAuthError;
    use std::os::unix::fs::PermissionsExt;

    fn source_of(c: ClientSettings) -> HttpTokenSource {
        HttpTokenSource::new(
            http_client(),
            "a".into(),
            Arc::new(c),
            Arc::new(RequestSettings {
                timeout: Duration::from_secs(30),
                default_lifetime: Duration::from_secs(300),
                operator_retry: Duration::from_secs(300),
            }),
            Arc::new(EndpointLimiter::new(1, Duration::ZERO)),
        )
    }

    fn oauth_error(code: &str) -> FetchError {
        FetchError::OAuth {
            status: 400,
            error: OAuthError {
                error: code.into(),
                description: None,
            },
            retry_after: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_subject_token_is_not_sent_again_until_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subject");
        let write = |text: &str| {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        write("subject-1");
        let source = source_of(ClientSettings {
            grant: Grant::TokenExchange,
            federated: Some(Box::new(Federated {
                subject: Some(TypedSource {
                    source: CredentialSource::File(path.clone()),
                    token_type: federated::JWT_TOKEN_TYPE.into(),
                }),
                ..Default::default()
            })),
            ..ClientSettings::for_tests("https://sts.example.com/token", "a", AuthMethod::None)
        });
        let timeout = Duration::from_secs(30);
        let presented = source.federated(timeout).await.unwrap().unwrap();
        let params: Vec<_> =
            federated_params(&presented, source.client.federated.as_deref().unwrap()).collect();
        assert_eq!(
            params,
            [
                ("subject_token", "subject-1"),
                ("subject_token_type", federated::JWT_TOKEN_TYPE)
            ]
        );
        // Errors that do not blame the subject token leave it sendable.
        for code in ["invalid_scope", "invalid_client", "server_error"] {
            let e = source
                .judge_federated(&presented, Err(oauth_error(code)))
                .unwrap_err();
            assert!(matches!(e, FetchError::OAuth { .. }), "{code}: {e}");
        }
        assert!(source.federated(timeout).await.is_ok());
        let refused = source
            .judge_federated(&presented, Err(oauth_error("invalid_request")))
            .unwrap_err();
        assert!(matches!(refused, FetchError::FederatedRefused { .. }));
        assert_eq!(refused.kind(), crate::oauth::FailureKind::NeedsOperator);
        let text = refused.to_string();
        assert!(
            text.contains("the provider refused the subject token from"),
            "{text}"
        );
        assert!(!text.contains("subject-1"), "{text}");
        let again = source.federated(timeout).await.unwrap_err();
        assert!(
            matches!(
                again,
                FetchError::Federated(FederatedError::Unchanged { .. })
            ),
            "{again}"
        );
        assert!(again.to_string().contains("invalid_request"), "{again}");
        // A rotated token is sent; so is the same one once operator_retry has passed.
        write("subject-2");
        assert!(source.federated(timeout).await.is_ok());
        write("subject-1");
        assert!(source.federated(timeout).await.is_err());
        tokio::time::advance(Duration::from_secs(301)).await;
        let presented = source.federated(timeout).await.unwrap().unwrap();
        // A token clears the refusal.
        source
            .judge_federated(&presented, Err(oauth_error("invalid_request")))
            .unwrap_err();
        let token = TokenReply {
            access_token: AccessToken::new("at".into()),
            token_type: crate::oauth::TokenType::Bearer,
            scopes: Vec::new(),
            lifetime: Duration::from_secs(60),
            lifetime_source: crate::oauth::reply::LifetimeSource::ExpiresIn,
            dpop_key: None,
        };
        source.judge_federated(&presented, Ok(token)).unwrap();
        assert!(source.federated(timeout).await.is_ok());
    }

    #[test]
    fn metrics_name_the_endpoint_without_credentials_or_query() {
        let c = ClientSettings {
            secret: Some(SecretSource::Env("X".into())),
            ..ClientSettings::for_tests(
                "https://user:pw@idp.example.com/oauth/token?key=k#f",
                "a",
                AuthMethod::Basic,
            )
        };
        let source = source_of(c);
        assert_eq!(
            source.endpoint_label(),
            "https://idp.example.com/oauth/token"
        );
    }
}
