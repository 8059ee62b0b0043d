//! One request through a route: the caller admitted and given the client's token as
//! GetToken would give it, the request sent upstream with it, and a 401 answered once, with a
//! new token or with the server's DPoP nonce, when the body can be sent again.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use tracing::{info, warn};

use super::headers::{self, Challenge};
use crate::access::Caller;
use crate::metrics::{METRICS, RouteMetrics};
use crate::oauth::dpop::{self, Nonces};
use crate::serve::service::{TokenServiceImpl, dpop_proof, rfc3339};
use crate::store::Token;

/// A token is not sent in its last seconds: it could expire on the way, or by the upstream's
/// clock (tokend counts a lifetime from when the reply arrived, a JWT's `exp` from when it
/// was issued, and neither clock is the upstream's).
const EXPIRY_MARGIN: Duration = Duration::from_secs(2);

/// What callers get: the proxy's own answer, or the upstream's streamed.
pub type Body = Either<Full<Bytes>, reqwest::Body>;

/// A route as it runs.
pub struct Route {
    pub name: String,
    pub client: String,
    pub upstream: url::Url,
    pub http: reqwest::Client,
    pub timeout: Duration,
    pub max_replay_body: usize,
    pub tokens: TokenServiceImpl,
    /// The nonces resource servers asked DPoP proofs to carry.
    pub nonces: Nonces,
    pub metrics: RouteMetrics,
}

/// The request body: held (and so sendable again), or streamed once.
enum Sent {
    Held(Bytes),
    Streamed(Option<Incoming>),
}

impl Sent {
    fn body(&mut self) -> Option<reqwest::Body> {
        match self {
            Sent::Held(bytes) => Some(reqwest::Body::from(bytes.clone())),
            Sent::Streamed(body) => body.take().map(reqwest::Body::wrap),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Sent::Held(_))
    }
}

impl Route {
    /// Answers one request from `caller`.
    pub async fn handle(
        self: Arc<Self>,
        caller: Caller,
        request: Request<Incoming>,
    ) -> Response<Body> {
        let response = self.answer(&caller, request).await;
        self.metrics.answered(response.status().as_u16());
        response
    }

    async fn answer(&self, caller: &Caller, request: Request<Incoming>) -> Response<Body> {
        let target = match (
            request.method(),
            headers::target(&self.upstream, request.uri(), request.version()),
        ) {
            (&Method::CONNECT, _) => {
                return self.refuse(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "CONNECT is not served: this proxy sends requests to its route's upstream"
                        .into(),
                    None,
                );
            }
            (_, Err(e)) => {
                return self.refuse(StatusCode::BAD_REQUEST, "bad_request", e.to_string(), None);
            }
            (_, Ok(target)) => target,
        };
        let mut token = match self
            .tokens
            .current(&self.client, caller, EXPIRY_MARGIN, || self.timeout)
            .await
        {
            Ok((_, token)) => token,
            Err(status) => return self.no_token(caller, status),
        };
        let (parts, body) = request.into_parts();
        let mut sent = match self.hold(body).await {
            Ok(sent) => sent,
            Err(response) => return response,
        };
        let mut forwarded = parts.headers;
        headers::forwardable(&mut forwarded);
        let mut new_token_tried = false;
        let mut nonce_tried = false;
        loop {
            let upstream = match self
                .send(&parts.method, &target, &forwarded, &token, &mut sent)
                .await
            {
                Ok(upstream) => upstream,
                Err(response) => return response,
            };
            if upstream.status() != StatusCode::UNAUTHORIZED || !sent.replayable() {
                return self.pass_back(upstream);
            }
            match headers::challenge(upstream.headers()) {
                Challenge::UseDpopNonce if token.dpop_key.is_some() && !nonce_tried => {
                    // `send` kept the nonce the answer carried; without one there is nothing
                    // to try.
                    if dpop::nonce_from_headers(upstream.headers()).is_none() {
                        return self.pass_back(upstream);
                    }
                    nonce_tried = true;
                    METRICS.proxy_replayed(&self.name, "dpop_nonce");
                    info!(route = %self.name, caller = %caller, "the upstream asked for a DPoP nonce; sending the request again with it");
                }
                Challenge::InvalidToken if !new_token_tried => {
                    new_token_tried = true;
                    let rejected = token.clone();
                    let reported = rejected.access_token.expose();
                    match self
                        .tokens
                        .replacement(&self.client, caller, reported, self.timeout)
                        .await
                    {
                        Ok((_, new)) if new.generation != token.generation => {
                            METRICS.proxy_replayed(&self.name, "new_token");
                            info!(
                                route = %self.name,
                                caller = %caller,
                                rejected = %token.access_token.fingerprint(),
                                fingerprint = %new.access_token.fingerprint(),
                                "the upstream rejected the token (401); sending the request again with a new one"
                            );
                            token = new;
                        }
                        // No newer token (refresh.min_interval holds it back, or the provider
                        // is failing): the caller gets the upstream's answer.
                        _ => return self.pass_back(upstream),
                    }
                }
                _ => return self.pass_back(upstream),
            }
        }
    }

    /// The body held in memory if it is known to fit `max_replay_body`, else streamed.
    async fn hold(&self, body: Incoming) -> Result<Sent, Response<Body>> {
        use http_body::Body as _;
        let fits = body
            .size_hint()
            .upper()
            .is_some_and(|n| n <= self.max_replay_body as u64);
        if !fits {
            return Ok(Sent::Streamed(Some(body)));
        }
        match Limited::new(body, self.max_replay_body).collect().await {
            Ok(collected) => Ok(Sent::Held(collected.to_bytes())),
            Err(e) => Err(self.refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("reading the request body failed: {e}"),
                None,
            )),
        }
    }

    /// Sends the request upstream with `token`; the proxy's own answer if none came.
    async fn send(
        &self,
        method: &Method,
        target: &url::Url,
        forwarded: &http::HeaderMap,
        token: &Token,
        sent: &mut Sent,
    ) -> Result<reqwest::Response, Response<Body>> {
        let mut request = self
            .http
            .request(method.clone(), target.as_str())
            .headers(forwarded.clone());
        let scheme = match &token.dpop_key {
            Some(_) => {
                let origin = dpop::origin(target.as_str());
                let nonce = self.nonces.get(&origin);
                let proof = dpop_proof(
                    &self.client,
                    token,
                    method.as_str(),
                    target.as_str(),
                    nonce.as_deref(),
                )
                .map_err(|status| {
                    self.refuse(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        status.message().to_string(),
                        None,
                    )
                })?;
                request = request.header("dpop", proof);
                "DPoP"
            }
            None => "Bearer",
        };
        let mut authorization =
            HeaderValue::try_from(format!("{scheme} {}", token.access_token.expose()))
                .expect("access tokens are VSCHAR, which header values allow");
        authorization.set_sensitive(true);
        request = request.header(header::AUTHORIZATION, authorization);
        if let Some(body) = sent.body() {
            request = request.body(body);
        }
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, request.send()).await;
        self.metrics.upstream_took(started.elapsed());
        let response = match result {
            Ok(Ok(response)) => response,
            // The caller's path and query may hold what it would not see logged.
            Ok(Err(e)) if !e.is_timeout() => {
                let e = e.without_url();
                return Err(self.refuse(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    format!(
                        "the upstream could not be reached: {}",
                        crate::oauth::describe_http_error(&e)
                    ),
                    None,
                ));
            }
            Ok(Err(_)) | Err(_) => {
                return Err(self.refuse(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    format!(
                        "the upstream did not answer within {}",
                        humantime::format_duration(self.timeout)
                    ),
                    None,
                ));
            }
        };
        if token.dpop_key.is_some()
            && let Some(nonce) = dpop::nonce_from_headers(response.headers())
        {
            self.nonces.remember(&dpop::origin(target.as_str()), nonce);
        }
        Ok(response)
    }

    /// The upstream's answer, streamed to the caller without its hop-by-hop fields.
    fn pass_back(&self, upstream: reqwest::Response) -> Response<Body> {
        let response: Response<reqwest::Body> = upstream.into();
        let (mut parts, body) = response.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers);
        Response::from_parts(parts, Either::Right(body))
    }

    /// The answer when the caller gets no token: 403 for a caller who may not have it (said as
    /// GetToken says it), 503 with the reason and the next attempt otherwise.
    fn no_token(&self, caller: &Caller, status: tonic::Status) -> Response<Body> {
        use tonic::Code;
        match status.code() {
            Code::NotFound | Code::InvalidArgument | Code::PermissionDenied => {
                warn!(route = %self.name, client = %self.client, caller = %caller, "proxy request refused: the caller may not use this client's token");
                self.refuse(
                    StatusCode::FORBIDDEN,
                    "caller",
                    format!(
                        "{caller} may not use the token of client {:?} (its allowed_users, allowed_groups and allow entries decide)",
                        self.client
                    ),
                    None,
                )
            }
            _ => {
                let next = self.tokens.next_attempt(&self.client);
                let retry_after = next.and_then(|at| at.duration_since(SystemTime::now()).ok());
                warn!(route = %self.name, client = %self.client, caller = %caller, "proxy request answered 503: {}", status.message());
                self.refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_token",
                    status.message().to_string(),
                    Some((next, retry_after)),
                )
            }
        }
    }

    /// The proxy's own answer: `status` with a JSON body `{"error", "reason", "route"}` (and
    /// `next_attempt_at` with `Retry-After` when a token is awaited), counted and logged.
    fn refuse(
        &self,
        status: StatusCode,
        reason: &'static str,
        text: String,
        next: Option<(Option<SystemTime>, Option<Duration>)>,
    ) -> Response<Body> {
        METRICS.proxy_refused(&self.name, reason);
        if !matches!(reason, "caller" | "no_token") {
            warn!(route = %self.name, "proxy request answered {}: {text}", status.as_u16());
        }
        let mut body = serde_json::json!({
            "error": reason,
            "reason": text,
            "route": self.name,
            "client": self.client,
        });
        let mut response = Response::builder().status(status);
        if let Some((at, wait)) = next {
            body["next_attempt_at"] = at.and_then(rfc3339).into();
            if let Some(wait) = wait {
                response = response.header(header::RETRY_AFTER, wait.as_secs().max(1));
            }
        }
        response
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-store")
            .body(Either::Left(Full::new(Bytes::from(
                body.to_string() + "\n",
            ))))
            .expect("a status, two fixed headers and a body make a response")
    }
}
