//! A client's token actor: fetches its token, refreshes it before expiry, backs off on failure,
//! and publishes every outcome to the client's slot in the store.
//!
//! The actor runs only while it has work: a request to start or in flight, or rejected
//! credentials to watch. Once it has published and is only waiting for its next refresh or
//! retry, it reports [`Settled`] and the supervisor lets it sleep: the actor
//! stops and the client's wake-up time goes to the shared [`crate::refresh::alarm`] wheel. Everything
//! the actor needs to resume lives in the slot's view (token, state, next attempt, failures),
//! so the actor started at the wake-up carries on where the last one stopped.
//!
//! The actor never waits on the network inside a handler: each token request runs as its own
//! task and reports back with [`TokenMsg::Fetched`], so the mailbox stays responsive and at most
//! one request is in flight per client (single flight is a field, not a lock).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::metrics::METRICS;
use crate::oauth::{FailureKind, FetchError, Grant, TokenReply, TokenSource};
use crate::refresh::{RefreshPolicy, schedule};
use crate::store::{ClientSlot, ClientState, Token};

pub enum TokenMsg {
    /// A retry of rejected credentials is due (the only timer a running actor keeps; other
    /// waits are slept through); stale timers carry an old epoch and are ignored.
    Due { epoch: u64 },
    /// A caller needs a newer token than `generation` (too close to expiry, or rejected by its
    /// API), forwarded by the supervisor. Honoured only while the client is fresh: otherwise a
    /// request is already in flight or deliberately scheduled, and callers wait for it.
    Refresh { generation: u64 },
    /// The outcome of the request started by this actor.
    Fetched(Result<TokenReply, FetchError>),
    /// While the credentials are rejected: have their files changed?
    CheckCredentials,
    /// While the newest refresh token is in memory only: time to try writing it again.
    SaveRefreshToken,
    /// That try is over.
    SaveTried,
}

/// How often a client whose credentials were rejected looks for replaced credential files: a
/// few metadata reads per client in that state, none otherwise. Twice a second, so that a
/// client waiting for its platform to rotate an expired federated token file resumes within a
/// second of the rotation.
const CREDENTIALS_POLL: Duration = Duration::from_millis(500);

/// Between a request's error and an unsaved refresh token's warning in `last_error`, where a
/// restarted actor finds the error again.
const UNSAVED_SEP: &str = "; and: ";

/// Everything a token actor needs: the supervisor's [`ClientArgs`] of the client and its policy.
///
/// [`ClientArgs`]: crate::refresh::supervisor::ClientArgs
pub struct TokenArgs {
    pub slot: Arc<ClientSlot>,
    pub source: Arc<dyn TokenSource>,
    /// Shared by every client (one copy, not one per client).
    pub policy: Arc<RefreshPolicy>,
}

/// What an actor reports whenever it has nothing in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub actor: ActorId,
    /// How many forwarded refresh requests it has handled.
    pub seen: u64,
    /// It waits only for its next attempt (it watches no credentials and saves nothing).
    pub can_sleep: bool,
}

/// Where an actor sends its [`Settled`] reports: whoever starts it maps them into its own
/// messages, so the actor does not know its supervisor's type.
pub type SettledTo = Arc<dyn Fn(Settled) + Send + Sync>;

/// What the supervisor starts an actor with.
pub struct TokenStart {
    pub args: TokenArgs,
    /// Told when the actor has nothing to do until its next attempt.
    pub settled: SettledTo,
}

pub struct TokenActor;

pub struct TokenState {
    args: TokenArgs,
    settled: SettledTo,
    /// How many refresh requests the supervisor forwarded that this actor has handled: the
    /// supervisor puts the actor to sleep only if it has seen every one.
    seen: u64,
    /// Bumped whenever the schedule changes, so an earlier timer that fires late is ignored.
    epoch: u64,
    in_flight: bool,
    failures: u32,
    /// Whether the "needs operator" error was logged already (it is logged once per episode).
    operator_logged: bool,
    /// The credential files' stamp when the last request started.
    stamp_at_fetch: Option<u64>,
    watching_credentials: bool,
    /// A retry of writing an unsaved refresh token is scheduled or running; the actor stays up
    /// until the write succeeds.
    saving: bool,
    save_attempts: u32,
    /// The last request's error, which `last_error` shows together with an unsaved refresh
    /// token's warning.
    failure: Option<String>,
}

impl Actor for TokenActor {
    type Msg = TokenMsg;
    type State = TokenState;
    type Arguments = TokenStart;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        start: TokenStart,
    ) -> Result<Self::State, ActorProcessingErr> {
        let TokenStart { args, settled } = start;
        let view = args.slot.view();
        let mut state = TokenState {
            args,
            settled,
            seen: 0,
            epoch: 0,
            in_flight: false,
            failures: view.consecutive_failures,
            operator_logged: matches!(
                view.state,
                ClientState::NeedsOperator | ClientState::ReauthorizationRequired
            ),
            stamp_at_fetch: None,
            watching_credentials: false,
            saving: false,
            save_attempts: 0,
            // A failure (not a warning alone) is in last_error while failures are counted.
            failure: view
                .last_error
                .as_deref()
                .filter(|_| view.consecutive_failures > 0)
                .and_then(|e| e.split(UNSAVED_SEP).next())
                .map(str::to_string),
        };
        let now = Instant::now();
        if matches!(
            view.state,
            ClientState::NeedsOperator | ClientState::ReauthorizationRequired
        ) {
            state.stamp_at_fetch = state.args.source.credentials_stamp();
            state.watching_credentials = true;
            myself.send_after(CREDENTIALS_POLL, || TokenMsg::CheckCredentials);
        }
        // Woken (or restarted) before anything is due, for instance by a caller's refresh
        // request or after a crash: keep the schedule, never refetch a token that is fresh.
        match (&view.token, view.next_attempt) {
            (Some(token), _) if view.state == ClientState::Fresh && token.refresh_due > now => {}
            (_, Some(at)) if at > now && view.state != ClientState::Refreshing => {
                if state.watching_credentials {
                    state.schedule(&myself, at - now);
                }
            }
            _ => state.start_fetch(&myself),
        }
        state.watch_unsaved(&myself);
        state.settle(&myself);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TokenMsg::Due { epoch } if epoch == state.epoch && !state.in_flight => {
                state.start_fetch(&myself);
            }
            TokenMsg::Due { .. } => {}
            TokenMsg::Refresh { generation } => {
                state.seen += 1;
                if !state.in_flight && state.args.slot.view().refreshable(generation) {
                    debug!(client = %state.args.slot.name, "refresh requested by a caller");
                    state.start_fetch(&myself);
                }
            }
            TokenMsg::Fetched(Ok(reply)) => {
                state.on_token(reply);
                state.watch_unsaved(&myself);
            }
            TokenMsg::Fetched(Err(e)) => {
                state.on_failure(&myself, e);
                state.watch_unsaved(&myself);
            }
            TokenMsg::CheckCredentials => state.check_credentials(&myself),
            TokenMsg::SaveRefreshToken => {
                let save = state.args.source.clone().save_unsaved();
                let myself = myself.clone();
                tokio::spawn(async move {
                    save.await;
                    let _ = myself.cast(TokenMsg::SaveTried);
                });
            }
            TokenMsg::SaveTried => state.saved_or_not(&myself),
        }
        state.settle(&myself);
        Ok(())
    }
}

impl TokenState {
    fn start_fetch(&mut self, myself: &ActorRef<TokenMsg>) {
        self.epoch += 1;
        self.in_flight = true;
        self.stamp_at_fetch = self.args.source.credentials_stamp();
        self.args.slot.publish(|v| {
            v.state = if v.token.is_some() {
                ClientState::Refreshing
            } else {
                ClientState::Starting
            };
            v.next_attempt = None;
        });
        let request = self.args.source.clone().fetch();
        let myself = myself.clone();
        tokio::spawn(async move {
            // The request runs in a task of its own so that a panic in it (a bug, not a reply)
            // still reports back and cannot leave the client waiting forever.
            let outcome = match tokio::spawn(request).await {
                Ok(result) => result,
                Err(e) => Err(FetchError::Network(format!(
                    "token request task failed: {e}"
                ))),
            };
            // The actor may have stopped meanwhile (shutdown); the outcome is then moot.
            let _ = myself.cast(TokenMsg::Fetched(outcome));
        });
    }

    fn on_token(&mut self, reply: TokenReply) {
        self.in_flight = false;
        self.failures = 0;
        self.operator_logged = false;
        let now = Instant::now();
        let wall = SystemTime::now();
        let delay = schedule::refresh_delay(&self.args.policy, reply.lifetime, rand::random());
        let slot = &self.args.slot;
        // Parsed lifetimes are capped, but a token source is not obliged to cap them.
        let expires_at = schedule::after(now, reply.lifetime);
        let scope = reply.scopes.join(" ");
        let refresh_due = schedule::after(now, delay);
        slot.count_request(true);
        info!(
            client = %slot.name,
            fingerprint = %reply.access_token.fingerprint(),
            expires_in = %humantime::format_duration(Duration::from_secs(reply.lifetime.as_secs())),
            lifetime_from = ?reply.lifetime_source,
            refresh_in = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
            scopes = %scope,
            token_type = %reply.token_type,
            "token refreshed"
        );
        self.failure = None;
        let last_error = self.args.source.unsaved().map(String::into_boxed_str);
        slot.publish(|v| {
            let generation = v.token.as_ref().map_or(1, |t| t.generation + 1);
            v.token = Some(Arc::new(Token {
                generation,
                access_token: reply.access_token,
                token_type: reply.token_type,
                scope: scope.into(),
                received_at: now,
                received_wall: wall,
                expires_at,
                refresh_due,
                dpop_key: reply.dpop_key,
            }));
            v.state = ClientState::Fresh;
            v.next_attempt = Some(refresh_due);
            v.consecutive_failures = 0;
            v.retry_after_capped = false;
            v.last_error = last_error;
        });
    }

    fn on_failure(&mut self, myself: &ActorRef<TokenMsg>, e: FetchError) {
        self.in_flight = false;
        self.failures = self.failures.saturating_add(1);
        let kind = e.kind();
        let policy = &self.args.policy;
        let delay = match kind {
            FailureKind::Transient => {
                schedule::backoff_delay(policy, self.failures, e.retry_after(), rand::random())
            }
            // A command's next token shows only by running it: retry on the backoff schedule
            // (the source sends nothing until the token changes), at most as slowly as others.
            FailureKind::NeedsOperator if self.args.source.credentials_from_commands() => {
                schedule::backoff_delay(policy, self.failures, e.retry_after(), rand::random())
                    .min(schedule::operator_delay(policy, e.retry_after()))
            }
            FailureKind::NeedsOperator => schedule::operator_delay(policy, e.retry_after()),
        };
        let slot = &self.args.slot;
        let capped = e
            .retry_after()
            .filter(|asked| *asked > policy.retry_after_max);
        // Once per episode: a provider that keeps asking for years would otherwise fill the log.
        let log_capped = capped.is_some() && !slot.view().retry_after_capped;
        if let Some(asked) = capped.filter(|_| log_capped) {
            warn!(
                client = %slot.name,
                asked = %humantime::format_duration(asked),
                honoured = %humantime::format_duration(policy.retry_after_max),
                "the token endpoint's Retry-After is longer than refresh.retry_after_max; capped"
            );
        }
        let settings = slot.settings();
        let reauthorize = kind == FailureKind::NeedsOperator
            && settings.grant == Grant::RefreshToken
            && e.needs_reauthorization();
        let state = match kind {
            FailureKind::Transient => ClientState::BackingOff,
            FailureKind::NeedsOperator if reauthorize => ClientState::ReauthorizationRequired,
            FailureKind::NeedsOperator => ClientState::NeedsOperator,
        };
        let name = &slot.name;
        slot.count_request(false);
        METRICS.token_failed(
            name,
            match kind {
                FailureKind::Transient => "transient",
                FailureKind::NeedsOperator => "needs_operator",
            },
            e.label(),
        );
        let retry_in = humantime::format_duration(Duration::from_millis(delay.as_millis() as u64));
        match state {
            ClientState::ReauthorizationRequired if !self.operator_logged => {
                self.operator_logged = true;
                let command = settings
                    .authorize_command
                    .as_deref()
                    .unwrap_or("tokend authorize");
                error!(client = %name, "refresh token unusable, authorization required: {e}; run `{command}`");
            }
            ClientState::NeedsOperator if !self.operator_logged => {
                self.operator_logged = true;
                error!(client = %name, retry_in = %retry_in, "token request rejected, operator action needed: {e}");
            }
            ClientState::BackingOff => {
                warn!(client = %name, failures = self.failures, retry_in = %retry_in, "refresh failed: {e}");
            }
            _ => {
                debug!(client = %name, retry_in = %retry_in, "token request still rejected: {e}");
            }
        }
        let now = Instant::now();
        if state != ClientState::BackingOff {
            // Replacing the credential file (or running `tokend authorize`) is the operator's
            // fix: notice it within a poll instead of after operator_retry. The actor stays up
            // to watch, and keeps its own retry timer meanwhile.
            self.schedule(myself, delay);
            if !self.watching_credentials {
                self.watching_credentials = true;
                myself.send_after(CREDENTIALS_POLL, || TokenMsg::CheckCredentials);
            }
        }
        let failures = self.failures;
        self.failure = Some(e.to_string());
        let last_error = self.last_error();
        self.args.slot.publish(|v| {
            v.state = state;
            v.next_attempt = Some(schedule::after(now, delay));
            v.consecutive_failures = failures;
            v.retry_after_capped |= capped.is_some();
            v.last_error = last_error;
        });
    }

    /// The last request's error and an unsaved refresh token's warning, as `last_error`.
    fn last_error(&self) -> Option<Box<str>> {
        let text = match (&self.failure, self.args.source.unsaved()) {
            (Some(e), Some(w)) => Some(format!("{e}{UNSAVED_SEP}{w}")),
            (e, w) => e.clone().or(w),
        };
        text.map(String::into_boxed_str)
    }

    /// While the newest refresh token is in memory only, retries writing it with backoff (the
    /// source also tries before each request), and keeps the actor up to do so.
    fn watch_unsaved(&mut self, myself: &ActorRef<TokenMsg>) {
        if self.in_flight || self.args.source.unsaved().is_none() {
            return;
        }
        // An actor that stays up keeps its own timer for the next attempt (a sleeping one has
        // the alarm wheel's).
        if let Some(at) = self.args.slot.view().next_attempt {
            self.schedule(myself, at.saturating_duration_since(Instant::now()));
        }
        if self.saving {
            return;
        }
        self.saving = true;
        self.save_attempts = self.save_attempts.saturating_add(1);
        let delay =
            schedule::backoff_delay(&self.args.policy, self.save_attempts, None, rand::random());
        myself.send_after(delay, || TokenMsg::SaveRefreshToken);
    }

    fn saved_or_not(&mut self, myself: &ActorRef<TokenMsg>) {
        self.saving = false;
        if self.args.source.unsaved().is_none() {
            self.save_attempts = 0;
        }
        let last_error = self.last_error();
        self.args.slot.publish(|v| v.last_error = last_error);
        self.watch_unsaved(myself);
    }

    /// While the credentials are rejected: retry at once when their files change.
    fn check_credentials(&mut self, myself: &ActorRef<TokenMsg>) {
        let state = self.args.slot.view().state;
        let stuck = matches!(
            state,
            ClientState::NeedsOperator | ClientState::ReauthorizationRequired
        );
        if !stuck || self.in_flight {
            self.watching_credentials = false;
            return;
        }
        if self.args.source.credentials_stamp() != self.stamp_at_fetch {
            info!(client = %self.args.slot.name, "credentials changed; retrying now");
            self.watching_credentials = false;
            self.start_fetch(myself);
        } else {
            myself.send_after(CREDENTIALS_POLL, || TokenMsg::CheckCredentials);
        }
    }

    /// Tells the supervisor that nothing is in flight: the client's next attempt is published,
    /// and unless credentials are being watched the actor may sleep until then.
    fn settle(&self, myself: &ActorRef<TokenMsg>) {
        if self.in_flight {
            return;
        }
        (self.settled)(Settled {
            actor: myself.get_id(),
            seen: self.seen,
            can_sleep: !self.watching_credentials && !self.saving,
        });
    }

    /// Arms the retry timer of a running actor (rejected credentials); a new schedule makes
    /// earlier timers stale.
    fn schedule(&mut self, myself: &ActorRef<TokenMsg>, delay: Duration) {
        self.epoch += 1;
        let epoch = self.epoch;
        myself.send_after(delay, move || TokenMsg::Due { epoch });
    }
}
