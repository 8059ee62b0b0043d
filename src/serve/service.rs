//! The gRPC `TokenService`: answers from the token store, waits on it when it must, and maps
//! every outcome to the status code callers can act on.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{debug, warn};

use crate::access::{Caller, Granted};
use crate::client_name::{MAX_CLIENT_NAME, is_client_name};
use crate::metrics::{METRICS, WatchGuard};
use crate::oauth::dpop::DpopError;
use crate::proto;
use crate::proto_server::token_service_server::TokenService;
use crate::serve::call_limits::CallLimits;
use crate::serve::connections::caller_of;
use crate::serve::wire::TokenMessage;
use crate::store::{ClientSlot, ClientState, ClientView, RefreshRequest, Token, TokenStore};

/// Answers are given this much before the caller's deadline, so that the caller sees why no
/// token came (UNAVAILABLE with a reason) rather than a bare DEADLINE_EXCEEDED.
const DEADLINE_HEADROOM: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct TokenServiceImpl {
    store: Arc<TokenStore>,
    default_wait: Duration,
    limits: Arc<CallLimits>,
    /// Cancelled at shutdown: `WatchToken` streams never end by themselves, and the server's
    /// graceful stop would otherwise wait for them forever.
    stopping: CancellationToken,
}

impl TokenServiceImpl {
    pub fn new(
        store: Arc<TokenStore>,
        default_wait: Duration,
        stopping: CancellationToken,
    ) -> Self {
        Self {
            store,
            default_wait,
            limits: Arc::new(CallLimits::default()),
            stopping,
        }
    }

    /// Replaces the default caps on streams, waiting calls and waits.
    pub fn with_limits(mut self, limits: CallLimits) -> Self {
        self.limits = Arc::new(limits);
        self
    }

    /// The client's slot, if it exists and `caller` may read it. A client the caller may not
    /// read is answered exactly as a name nobody configured, so that callers cannot tell which
    /// clients exist (ListClients hides them too).
    async fn slot(
        &self,
        client: &str,
        caller: &Caller,
    ) -> Result<(Arc<ClientSlot>, Granted), Status> {
        // Looked up before it is checked: every configured name is valid, so a found one needs
        // no check and the common call pays for none.
        let Some(slot) = self.store.get(client) else {
            return Err(unknown_client(client));
        };
        let Some(granted) = slot.admit(caller).await else {
            warn!(client = %client, caller = %caller, "denied: caller is not allowed to read this client's token");
            return Err(unknown_client(client));
        };
        Ok((slot, granted))
    }

    /// When `client`'s next token request is due, if one is planned.
    pub fn next_attempt(&self, client: &str) -> Option<SystemTime> {
        self.store.get(client)?.view().next_attempt_wall()
    }

    /// How long a call may wait: the caller's deadline less headroom, else the default; never
    /// longer than `server.max_wait`.
    fn wait_budget<T>(&self, request: &Request<T>) -> Duration {
        request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|d| d.saturating_sub(DEADLINE_HEADROOM.min(d / 10)))
            .unwrap_or(self.default_wait)
            .min(self.limits.max_wait)
    }
}

/// NOT_FOUND for a name that is not (visibly to this caller) configured. Only a name that could
/// be configured is repeated back, so the message stays short whatever the caller sent.
fn unknown_client(client: &str) -> Status {
    if !is_client_name(client) {
        return Status::invalid_argument(format!(
            "client must name a configured client: 1 to {MAX_CLIENT_NAME} ASCII letters, digits, '-', '_' and '.'"
        ));
    }
    Status::not_found(format!("no client named {client:?} is configured"))
}

/// Why a call got no token; converted to the status code that tells the caller what to do.
enum NoToken {
    NotYet(String),
    NeedsOperator(String),
    TooShortLived {
        min_valid: Duration,
        lifetime: Duration,
    },
    /// Callers already made this client send a request within `refresh.min_interval`, and the
    /// next one comes after this caller's deadline. `current` is still valid.
    RateLimited {
        client: String,
        current: Arc<Token>,
        next_in: Duration,
    },
    /// Past a cap on waiting calls.
    Refused(Status),
}

impl From<NoToken> for Status {
    fn from(e: NoToken) -> Status {
        match e {
            NoToken::NotYet(why) => Status::unavailable(why),
            NoToken::NeedsOperator(why) => Status::failed_precondition(why),
            NoToken::TooShortLived {
                min_valid,
                lifetime,
            } => Status::out_of_range(format!(
                "min_valid_seconds={} cannot be met: the token endpoint issues tokens valid for {}s",
                min_valid.as_secs(),
                lifetime.as_secs()
            )),
            NoToken::RateLimited {
                client, next_in, ..
            } => Status::unavailable(format!(
                "client {client:?}: callers already caused a token request within refresh.min_interval; the next may start in {}s, after this call's deadline",
                next_in.as_secs_f64().ceil()
            )),
            NoToken::Refused(status) => status,
        }
    }
}

/// The reason a client has no usable token, with when the next attempt is, for the caller.
fn explain(slot: &ClientSlot, view: &ClientView) -> NoToken {
    let error = view.last_error.as_deref().unwrap_or("no error recorded");
    let next = match view.next_attempt_wall().map(rfc3339) {
        Some(Some(at)) => format!("; next attempt at {at}"),
        Some(None) => "; next attempt after year 9999".into(),
        None => String::new(),
    };
    let name = &slot.name;
    match view.state {
        ClientState::NeedsOperator => NoToken::NeedsOperator(format!(
            "client {name:?}: the token endpoint rejected the request and an operator must fix it: {error}{next}"
        )),
        ClientState::ReauthorizationRequired => NoToken::NeedsOperator(format!(
            "client {name:?} must be authorized again: {error}; run `{}`",
            slot.settings()
                .authorize_command
                .as_deref()
                .unwrap_or("tokend authorize")
        )),
        ClientState::Failed => NoToken::NotYet(format!("client {name:?}: {error}")),
        ClientState::Starting | ClientState::Refreshing if view.consecutive_failures == 0 => {
            NoToken::NotYet(format!(
                "client {name:?}: no token yet; the token request is still in flight"
            ))
        }
        _ => NoToken::NotYet(format!(
            "client {name:?}: no valid token; {} failed attempt(s), last: {error}{next}",
            view.consecutive_failures
        )),
    }
}

/// Whether waiting could still help: not when an operator must act, the client is dead, or the
/// next attempt comes after the caller has given up.
fn worth_waiting(view: &ClientView, until: Instant) -> bool {
    match view.state {
        ClientState::NeedsOperator | ClientState::ReauthorizationRequired | ClientState::Failed => {
            false
        }
        ClientState::BackingOff => view.next_attempt.is_none_or(|at| at < until),
        _ => true,
    }
}

impl TokenServiceImpl {
    /// A token valid for `min_valid`, waiting for the first fetch or a refresh as needed.
    /// `newer_than` asks for a token of a later generation (a rejected one must be replaced).
    async fn token_for(
        &self,
        slot: &ClientSlot,
        caller: &Caller,
        min_valid: Duration,
        newer_than: Option<u64>,
        wait: Duration,
    ) -> Result<Arc<Token>, NoToken> {
        let until = Instant::now() + wait;
        let mut rx = slot.subscribe();
        let mut asked_for: Option<u64> = None;
        // Taken at the first wait: a call answered without waiting holds nothing.
        let mut place = None;
        loop {
            let view = rx.borrow_and_update().clone();
            let now = Instant::now();
            let newer = |t: &Token| newer_than.is_none_or(|g| t.generation > g);
            if let Some(token) = view.usable(now, min_valid).filter(|t| newer(t)) {
                return Ok(token.clone());
            }
            if let Some(token) = view.token.as_ref().filter(|t| t.is_valid(now)) {
                let lifetime = token
                    .expires_at
                    .saturating_duration_since(token.received_at);
                // Longer than the whole lifetime of the current token, or a token newer than
                // the one we asked to replace still falls short: asking (again) would only cost
                // a request for the same.
                if min_valid > lifetime
                    || (asked_for.is_some_and(|g| token.generation > g) && newer(token))
                {
                    return Err(NoToken::TooShortLived {
                        min_valid,
                        lifetime,
                    });
                }
                if asked_for != Some(token.generation) {
                    asked_for = Some(token.generation);
                    if let RefreshRequest::Deferred(at) = slot.request_refresh(token.generation)
                        && at >= until
                    {
                        return Err(NoToken::RateLimited {
                            client: slot.name.to_string(),
                            current: token.clone(),
                            next_in: at - now,
                        });
                    }
                }
            }
            if !worth_waiting(&view, until) {
                return Err(explain(slot, &view));
            }
            if place.is_none() {
                place = Some(
                    self.limits
                        .waiting
                        .admit(caller)
                        .map_err(|e| NoToken::Refused(e.into()))?,
                );
            }
            match tokio::time::timeout_at(until, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Err(explain(slot, &rx.borrow())),
            }
        }
    }
}

type TokenStream = Pin<Box<dyn Stream<Item = Result<TokenMessage, Status>> + Send>>;

impl TokenServiceImpl {
    async fn get(
        &self,
        request: Request<proto::GetTokenRequest>,
    ) -> Result<Response<TokenMessage>, Status> {
        let caller = caller_of(&request);
        let wait = || self.wait_budget(&request);
        let req = request.get_ref();
        let min_valid = Duration::from_secs(req.min_valid_seconds.into());
        let (slot, token) = self.current(&req.client, &caller, min_valid, wait).await?;
        Ok(Response::new(TokenMessage::new(slot.name.clone(), token)))
    }

    /// The client's token valid for `min_valid`, for a caller who may read it (audited),
    /// waiting at most `wait()` for one (asked only when there is none: reading the caller's
    /// deadline is most of a call's header work); GetToken's answer, SignDpopProof's and the
    /// proxy's.
    pub async fn current(
        &self,
        client: &str,
        caller: &Caller,
        min_valid: Duration,
        wait: impl FnOnce() -> Duration,
    ) -> Result<(Arc<ClientSlot>, Arc<Token>), Status> {
        let (slot, granted) = self.slot(client, caller).await?;
        // Nearly every call: the current token will do, and the caller's deadline does not
        // matter.
        let token = match slot.usable(Instant::now(), min_valid) {
            Some(token) => token,
            None => {
                self.token_for(&slot, caller, min_valid, None, wait())
                    .await?
            }
        };
        audit(&slot.name, caller, granted, &token);
        Ok((slot, token))
    }

    async fn sign_dpop(
        &self,
        request: Request<proto::SignDpopProofRequest>,
    ) -> Result<Response<proto::DpopProof>, Status> {
        let caller = caller_of(&request);
        let wait = || self.wait_budget(&request);
        let req = request.get_ref();
        let (slot, token) = self
            .current(&req.client, &caller, Duration::ZERO, wait)
            .await?;
        let nonce = Some(req.nonce.as_str()).filter(|n| !n.is_empty());
        let proof = dpop_proof(&slot.name, &token, &req.http_method, &req.http_uri, nonce)?;
        Ok(Response::new(proto::DpopProof {
            proof,
            token: Some(TokenMessage::new(slot.name.clone(), token).to_proto()),
        }))
    }

    async fn watch(
        &self,
        request: Request<proto::WatchTokenRequest>,
    ) -> Result<Response<TokenStream>, Status> {
        let caller = caller_of(&request);
        let (slot, _) = self.slot(&request.get_ref().client, &caller).await?;
        let streams = self.limits.streams.admit(&caller)?;
        let name = slot.name.clone();
        let mut last = 0;
        // Weak: a client removed by a reload drops its slot, which ends the stream.
        let weak = Arc::downgrade(&slot);
        let open = WatchGuard::open();
        let changes = slot.subscribe().into_stream();
        drop(slot);
        // Every view change wakes the stream; only a new token generation is sent, and only
        // while the caller may still read it (a reload can take that away). Asked again at
        // each change: what the rules look up is remembered on the connection, so only a
        // reload that brings a new rule makes this wait.
        let checked = {
            let caller = caller.clone();
            futures_util::StreamExt::then(changes, move |view| {
                let (slot, caller) = (weak.upgrade(), caller.clone());
                async move {
                    let granted = match slot {
                        Some(slot) => slot.admit(&caller).await,
                        None => None,
                    };
                    (granted, view)
                }
            })
        };
        let tokens = checked.filter_map(move |(granted, view)| {
            // Moved in so the stream counts as open exactly as long as it exists.
            let _open = (&open, &streams);
            let Some(granted) = granted else {
                warn!(client = %name, caller = %caller, "stream ended: the client was removed or the caller may no longer read it");
                return Some(Err(unknown_client(&name)));
            };
            let token = view
                .token
                .filter(|t| t.generation > last && t.is_valid(Instant::now()))?;
            last = token.generation;
            audit(&name, &caller, granted, &token);
            Some(Ok(TokenMessage::new(name.clone(), token)))
        });
        // tonic ends the response at the first error, so a denial is the stream's last item.
        let stream =
            futures_util::StreamExt::take_until(tokens, self.stopping.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn refresh(
        &self,
        request: Request<proto::RefreshTokenRequest>,
    ) -> Result<Response<TokenMessage>, Status> {
        let wait = self.wait_budget(&request);
        let caller = caller_of(&request);
        let req = request.get_ref();
        if req.rejected_access_token.is_empty() {
            // Checked after the caller is: a caller that may not read the client learns
            // nothing of it.
            self.slot(&req.client, &caller).await?;
            return Err(Status::invalid_argument(
                "rejected_access_token must be the token the API rejected",
            ));
        }
        let (slot, token) = self
            .replacement(&req.client, &caller, &req.rejected_access_token, wait)
            .await?;
        Ok(Response::new(TokenMessage::new(slot.name.clone(), token)))
    }

    /// For a caller whose API rejected `rejected`: a newer token if that is the current one
    /// (reports coalesce, and are rate-limited by `refresh.min_interval`), else the current
    /// token; RefreshToken's answer, and the proxy's after a 401.
    pub async fn replacement(
        &self,
        client: &str,
        caller: &Caller,
        rejected: &str,
        wait: Duration,
    ) -> Result<(Arc<ClientSlot>, Arc<Token>), Status> {
        let (slot, granted) = self.slot(client, caller).await?;
        let current = slot.view().token;
        // Only the current token can be refreshed away; a report about an older one means the
        // caller is behind, and the current token is its answer.
        let newer_than = current
            .filter(|t| t.access_token.expose() == rejected)
            .map(|t| t.generation);
        let token = match self
            .token_for(&slot, caller, Duration::ZERO, newer_than, wait)
            .await
        {
            Ok(token) => token,
            // The report is noted (a request is deferred to the end of the interval); until
            // then the current token is the best answer there is.
            Err(NoToken::RateLimited { current, .. }) => current,
            Err(e) => return Err(e.into()),
        };
        audit(&slot.name, caller, granted, &token);
        Ok((slot, token))
    }

    async fn list(
        &self,
        request: Request<proto::ListClientsRequest>,
    ) -> Result<Response<proto::ListClientsResponse>, Status> {
        let caller = caller_of(&request);
        let now = Instant::now();
        // Clients the caller may not read are not shown at all.
        let mut readable = Vec::new();
        for slot in self.store.all() {
            if slot.admit(&caller).await.is_some() {
                readable.push(slot);
            }
        }
        let clients = readable
            .into_iter()
            .map(|slot| {
                let view = slot.view();
                let token = view.token.as_ref();
                proto::ClientStatus {
                    client: slot.name.to_string(),
                    state: proto::ClientState::from(view.state) as i32,
                    scopes: token.map(|t| scope_list(t)).unwrap_or_default(),
                    expires_at: token.map(|t| t.expires_wall().into()),
                    next_refresh_at: view.next_attempt_wall().map(Into::into),
                    consecutive_failures: view.consecutive_failures,
                    last_error: view.last_error.as_deref().unwrap_or_default().to_string(),
                    grant: slot.settings().grant.name().to_string(),
                    has_valid_token: token.is_some_and(|t| t.is_valid(now)),
                }
            })
            .collect();
        Ok(Response::new(proto::ListClientsResponse { clients }))
    }
}

#[tonic::async_trait]
impl TokenService for TokenServiceImpl {
    async fn get_token(
        &self,
        request: Request<proto::GetTokenRequest>,
    ) -> Result<Response<TokenMessage>, Status> {
        counted("GetToken", self.get(request).await)
    }

    type WatchTokenStream = TokenStream;

    async fn watch_token(
        &self,
        request: Request<proto::WatchTokenRequest>,
    ) -> Result<Response<Self::WatchTokenStream>, Status> {
        counted("WatchToken", self.watch(request).await)
    }

    async fn refresh_token(
        &self,
        request: Request<proto::RefreshTokenRequest>,
    ) -> Result<Response<TokenMessage>, Status> {
        counted("RefreshToken", self.refresh(request).await)
    }

    async fn list_clients(
        &self,
        request: Request<proto::ListClientsRequest>,
    ) -> Result<Response<proto::ListClientsResponse>, Status> {
        counted("ListClients", self.list(request).await)
    }

    async fn sign_dpop_proof(
        &self,
        request: Request<proto::SignDpopProofRequest>,
    ) -> Result<Response<proto::DpopProof>, Status> {
        counted("SignDpopProof", self.sign_dpop(request).await)
    }
}

/// Counts a finished call by method and status code.
fn counted<T>(method: &'static str, result: Result<T, Status>) -> Result<T, Status> {
    let code = result
        .as_ref()
        .map_or_else(Status::code, |_| tonic::Code::Ok);
    METRICS.grpc(method, code);
    result
}

/// The audit record of a token handed out: who got which client's token, by fingerprint, and
/// the rule that let it.
fn audit(client: &str, caller: &Caller, granted: Granted, token: &Token) {
    debug!(
        client = %client,
        caller = %caller,
        rule = %granted,
        fingerprint = %token.access_token.fingerprint(),
        "token handed out"
    );
}

/// A DPoP proof for a request with `method` to `uri` (and the server's `nonce`) with `token`,
/// signed with the key it is bound to. The caller's strings are checked, never echoed.
pub fn dpop_proof(
    client: &str,
    token: &Token,
    method: &str,
    uri: &str,
    nonce: Option<&str>,
) -> Result<String, Status> {
    let Some(key) = &token.dpop_key else {
        return Err(Status::failed_precondition(format!(
            "client {client:?} holds a {} token, not one bound to a DPoP key: set dpop = true for it (and a provider that issues DPoP tokens), or send the token as Bearer without a proof",
            token.token_type
        )));
    };
    key.proof(
        method,
        uri,
        Some(token.access_token.expose()),
        nonce,
        SystemTime::now(),
    )
    .map_err(|e| match e {
        DpopError::Signing => Status::internal(e.to_string()),
        e => Status::invalid_argument(e.to_string()),
    })
}

fn scope_list(token: &Token) -> Vec<String> {
    token.scopes().map(str::to_string).collect()
}

/// `t` in RFC 3339 to the second; `None` after year 9999, which RFC 3339 cannot write (and
/// humantime panics on).
pub fn rfc3339(t: SystemTime) -> Option<String> {
    let last = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    (t <= last).then(|| humantime::format_rfc3339_seconds(t).to_string())
}

/// The `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_after_year_9999_are_not_formatted() {
        let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(
            rfc3339(at(253_402_300_799)).as_deref(),
            Some("9999-12-31T23:59:59Z")
        );
        assert_eq!(rfc3339(at(253_402_300_800)), None);
        assert_eq!(rfc3339(at(i64::MAX as u64)), None);
    }

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }
}
