//! The token store: what each client's actor last published, readable by gRPC handlers without a
//! round trip through the actor's mailbox. One `watch` channel per client carries the current
//! view; readers borrow it (the hot path) or wait on it (first fetch, rotation streams).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ractor::ActorRef;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::actor::TokenMsg;
use crate::config::Grant;
use crate::secret::AccessToken;

/// A token as handed to callers, with both clocks: the monotonic one decides validity (immune
/// to wall-clock jumps), the wall one is what callers are told.
#[derive(Debug)]
pub struct Token {
    /// Increases by one with every token the client receives.
    pub generation: u64,
    pub access_token: AccessToken,
    pub token_type: String,
    pub scopes: Vec<String>,
    pub received_at: Instant,
    pub received_wall: SystemTime,
    pub expires_at: Instant,
    pub expires_wall: SystemTime,
    /// When the actor planned to refresh it; a restarted actor resumes this schedule.
    pub refresh_due: Instant,
}

impl Token {
    /// How long the token stays valid from `now`; zero once expired.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }

    pub fn is_valid(&self, now: Instant) -> bool {
        self.remaining(now) > Duration::ZERO
    }
}

/// What the client is doing, as `ListClients` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    Starting,
    Fresh,
    Refreshing,
    BackingOff,
    NeedsOperator,
    ReauthorizationRequired,
    Failed,
}

/// Everything a reader may want about one client, replaced as a whole on every change.
#[derive(Debug, Clone)]
pub struct ClientView {
    pub token: Option<Arc<Token>>,
    pub state: ClientState,
    /// When the next token request is due (refresh or retry).
    pub next_attempt: Option<(Instant, SystemTime)>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
}

impl ClientView {
    /// The token if it is valid for at least `min_valid` from `now`.
    pub fn usable(&self, now: Instant, min_valid: Duration) -> Option<&Arc<Token>> {
        self.token
            .as_ref()
            .filter(|t| t.is_valid(now) && t.remaining(now) >= min_valid)
    }
}

/// One configured client's published state and the way to ask its actor for a refresh.
pub struct ClientSlot {
    pub name: String,
    pub grant: Grant,
    /// For refresh-token clients, the command that authorizes the client again.
    pub authorize_command: Option<String>,
    view: watch::Sender<ClientView>,
    actor: Mutex<Option<ActorRef<TokenMsg>>>,
}

impl ClientSlot {
    pub fn new(name: String, grant: Grant, authorize_command: Option<String>) -> Self {
        let (view, _) = watch::channel(ClientView {
            token: None,
            state: ClientState::Starting,
            next_attempt: None,
            consecutive_failures: 0,
            last_error: None,
        });
        Self {
            name,
            grant,
            authorize_command,
            view,
            actor: Mutex::new(None),
        }
    }

    /// The current view, cloned (cheap: the token is behind an `Arc`).
    pub fn view(&self) -> ClientView {
        self.view.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<ClientView> {
        self.view.subscribe()
    }

    /// Applies a change and wakes every waiter.
    pub fn publish(&self, change: impl FnOnce(&mut ClientView)) {
        self.view.send_modify(change);
    }

    /// Records which actor serves this client now (a restart replaces it).
    pub fn attach(&self, actor: Option<ActorRef<TokenMsg>>) {
        *self.actor.lock().unwrap_or_else(|e| e.into_inner()) = actor;
    }

    /// Asks the actor to refresh now if `generation` is still the current token: callers that
    /// saw the same token coalesce into one request. Without an actor (between a failure and
    /// its restart) the request is dropped; the restarted actor reschedules anyway.
    pub fn request_refresh(&self, generation: u64) {
        let actor = self.actor.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(actor) = actor {
            let _ = actor.cast(TokenMsg::Refresh { generation });
        }
    }
}

/// All clients' slots, by name.
#[derive(Default)]
pub struct TokenStore {
    clients: BTreeMap<String, Arc<ClientSlot>>,
}

impl TokenStore {
    pub fn new(slots: impl IntoIterator<Item = Arc<ClientSlot>>) -> Self {
        Self {
            clients: slots.into_iter().map(|s| (s.name.clone(), s)).collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ClientSlot>> {
        self.clients.get(name)
    }

    /// Every slot, in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ClientSlot>> {
        self.clients.values()
    }
}
