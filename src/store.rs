//! The token store: what each client's actor last published, readable by gRPC handlers without a
//! round trip through the actor's mailbox. One [`Publisher`] per client carries the current
//! view; readers borrow it (the hot path) or wait on it (first fetch, rotation streams).
//! A caller's request for a newer token leaves through the slot's [`Refresher`], a channel
//! whose receiving end belongs to whoever runs the clients: the store holds data, and knows no
//! actor.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::access::{Access, Caller, Decision, Granted};
use crate::host::unix_time::since_epoch;
use crate::metrics::ClientSample;
use crate::oauth::dpop::DpopKey;
use crate::oauth::{Grant, TokenType};
use crate::proto;
use crate::published::{Publisher, Subscriber};
use crate::secret::AccessToken;

/// A token as handed to callers, with both clocks: the monotonic one decides validity (immune
/// to wall-clock jumps), the wall one is what callers are told.
#[derive(Debug)]
pub struct Token {
    /// Increases by one with every token the client receives.
    pub generation: u64,
    pub access_token: AccessToken,
    pub token_type: TokenType,
    /// The granted scopes, space-separated as OAuth writes them (scope tokens hold no spaces):
    /// one allocation rather than one per scope and a vector.
    pub scope: Box<str>,
    pub received_at: Instant,
    pub received_wall: SystemTime,
    /// The wall-clock twin is [`Token::expires_wall`]: worked out, not kept for every token.
    pub expires_at: Instant,
    /// When the actor planned to refresh it; a woken or restarted actor keeps this schedule.
    pub refresh_due: Instant,
    /// The key a DPoP token is bound to: proofs for its requests are signed with it.
    pub dpop_key: Option<Arc<DpopKey>>,
}

impl Token {
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ').filter(|s| !s.is_empty())
    }

    /// When the token expires on the wall clock, as callers are told: as long after it was
    /// received as on the monotonic clock.
    pub fn expires_wall(&self) -> SystemTime {
        self.received_wall + self.expires_at.saturating_duration_since(self.received_at)
    }

    /// How long the token stays valid from `now`; zero once expired.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }

    pub fn is_valid(&self, now: Instant) -> bool {
        self.remaining(now) > Duration::ZERO
    }
}

/// When the monotonic instant `at` is on the wall clock, read now.
fn wall_at(at: Instant) -> SystemTime {
    let (now, wall) = (Instant::now(), SystemTime::now());
    match at.checked_duration_since(now) {
        Some(ahead) => wall.checked_add(ahead).unwrap_or(wall),
        None => wall.checked_sub(now - at).unwrap_or(wall),
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

impl ClientState {
    /// Every state, in the proto's order (metrics list each, with or without clients in it).
    pub const ALL: [ClientState; 7] = [
        ClientState::Starting,
        ClientState::Fresh,
        ClientState::Refreshing,
        ClientState::BackingOff,
        ClientState::NeedsOperator,
        ClientState::ReauthorizationRequired,
        ClientState::Failed,
    ];

    /// The state's name in metrics and logs: the proto's, so that every place spells it alike.
    pub fn as_str(self) -> &'static str {
        proto::ClientState::from(self).name()
    }
}

impl From<ClientState> for proto::ClientState {
    fn from(state: ClientState) -> proto::ClientState {
        match state {
            ClientState::Starting => proto::ClientState::Starting,
            ClientState::Fresh => proto::ClientState::Fresh,
            ClientState::Refreshing => proto::ClientState::Refreshing,
            ClientState::BackingOff => proto::ClientState::BackingOff,
            ClientState::NeedsOperator => proto::ClientState::NeedsOperator,
            ClientState::ReauthorizationRequired => proto::ClientState::ReauthorizationRequired,
            ClientState::Failed => proto::ClientState::Failed,
        }
    }
}

/// Everything a reader may want about one client, replaced as a whole on every change.
#[derive(Debug, Clone)]
pub struct ClientView {
    pub token: Option<Arc<Token>>,
    pub state: ClientState,
    /// When the next token request is due (refresh or retry); [`ClientView::next_attempt_wall`]
    /// says when that is on the wall clock.
    pub next_attempt: Option<Instant>,
    pub consecutive_failures: u32,
    pub last_error: Option<Box<str>>,
    /// A `Retry-After` longer than the policy allows was capped in this failure episode (and
    /// logged, once).
    pub retry_after_capped: bool,
}

impl ClientView {
    /// When the next token request is due on the wall clock, as callers are told: worked out
    /// when asked, from the monotonic time its timer runs on (so it follows a wall-clock step
    /// made since it was planned, as the timer does not).
    pub fn next_attempt_wall(&self) -> Option<SystemTime> {
        self.next_attempt.map(wall_at)
    }

    /// Whether `generation` is the current token and the client is fresh: only then does a
    /// caller's request for a newer token start one (otherwise a request is already in flight
    /// or scheduled, or the token was already replaced).
    pub fn refreshable(&self, generation: u64) -> bool {
        self.state == ClientState::Fresh
            && self.token.as_ref().map(|t| t.generation) == Some(generation)
    }

    /// The token if it is valid for at least `min_valid` from `now`.
    pub fn usable(&self, now: Instant, min_valid: Duration) -> Option<&Arc<Token>> {
        self.token
            .as_ref()
            .filter(|t| t.is_valid(now) && t.remaining(now) >= min_valid)
    }
}

/// What a slot knows of its client's configuration, beyond fetching tokens.
#[derive(Debug, Clone)]
pub struct SlotSettings {
    pub grant: Grant,
    /// For refresh-token clients, the command that authorizes the client again.
    pub authorize_command: Option<String>,
    pub access: Access,
    /// Whether readiness (systemd, health) waits for this client.
    pub required: bool,
    /// The least time between two token requests callers cause (`refresh.min_interval`).
    pub min_interval: Duration,
}

/// What became of a caller's request for a token newer than the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshRequest {
    /// Sent, coalesced with one already sent or in flight, or moot (the token was replaced):
    /// the view changes when there is news.
    Pending,
    /// A caller-driven request started less than `refresh.min_interval` ago; the next one
    /// starts at this time, unless the token is replaced before.
    Deferred(Instant),
}

/// A caller's request that `client` replace its token `generation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshWanted {
    pub client: Arc<str>,
    pub generation: u64,
}

/// Where slots send their refresh requests. The store defines it and only sends; whoever runs
/// the clients holds the receiving end, and must, because a client's actor may be asleep.
/// Unbounded, as the mailbox it feeds: callers who saw the same token coalesce before sending.
#[derive(Clone)]
pub struct Refresher(mpsc::UnboundedSender<RefreshWanted>);

impl Refresher {
    /// A handle for slots, and the requests they will send through it.
    pub fn channel() -> (Refresher, mpsc::UnboundedReceiver<RefreshWanted>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Refresher(tx), rx)
    }

    fn send(&self, wanted: RefreshWanted) {
        // Nobody receiving means the daemon is stopping: no refresh is coming anyway.
        let _ = self.0.send(wanted);
    }
}

/// The caller-driven token requests of one client. It lives in the slot, not in the actor,
/// because the actor sleeps (stops) between refreshes and would forget it.
#[derive(Default)]
struct RefreshGate {
    /// The generation the last caller-driven request replaced, and when it was sent.
    last: Option<(u64, Instant)>,
    /// The request deferred to the end of the interval: when, and the newest generation
    /// callers asked to replace meanwhile.
    deferred: Option<(Instant, u64)>,
}

/// One configured client's published state and the way to ask for a refresh.
pub struct ClientSlot {
    /// Shared with the refresh requests that carry it.
    pub name: Arc<str>,
    settings: RwLock<Arc<SlotSettings>>,
    view: Publisher<ClientView>,
    refresher: Refresher,
    /// Made at the first caller-driven request: most clients never see one.
    gate: OnceLock<Arc<Mutex<RefreshGate>>>,
    /// Shared by every slot of a store: counts every change (systemd status, health).
    changed: Changes,
    /// Token requests answered with a token, and failed ones (metrics).
    succeeded: AtomicU64,
    failed: AtomicU64,
}

impl ClientSlot {
    /// A slot whose refresh requests go to `refresher`; `changed` counts its every change.
    pub fn new(
        name: Arc<str>,
        settings: SlotSettings,
        refresher: Refresher,
        changed: Changes,
    ) -> Self {
        let view = Publisher::new(ClientView {
            token: None,
            state: ClientState::Starting,
            next_attempt: None,
            consecutive_failures: 0,
            last_error: None,
            retry_after_capped: false,
        });
        Self {
            name,
            settings: RwLock::new(Arc::new(settings)),
            view,
            refresher,
            gate: OnceLock::new(),
            changed,
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> Arc<SlotSettings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the settings in place (a reload that changed only who may read the token).
    pub fn set_settings(&self, settings: SlotSettings) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
    }

    /// Whether `caller` may read the token, with what is known without a lookup.
    pub fn decide(&self, caller: &Caller) -> Decision {
        // Under the lock rather than through `settings()`: every call asks, and the clone of
        // the `Arc` would be two atomic operations for nothing.
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .access
            .decide(caller)
    }

    /// Whether `caller` may read the token, looking up its pod or executable digest if a rule
    /// needs them; why it may.
    pub async fn admit(&self, caller: &Caller) -> Option<Granted> {
        match self.decide(caller) {
            Decision::Allowed(granted) => Some(granted),
            Decision::Denied => None,
            Decision::Lookup => self.settings().access.admit(caller).await,
        }
    }

    /// Forgets the token and state: the client's fetch settings changed, so what it held no
    /// longer answers for it. Waiters and `WatchToken` streams stay attached.
    pub fn reset(&self) {
        self.publish(|v| {
            v.token = None;
            v.state = ClientState::Starting;
            v.next_attempt = None;
            v.consecutive_failures = 0;
            v.last_error = None;
            v.retry_after_capped = false;
        });
    }

    /// The current view, cloned (cheap: the token is behind an `Arc`).
    pub fn view(&self) -> ClientView {
        self.view.borrow().clone()
    }

    /// The current token if it is valid for at least `min_valid` from `now`: the hot path, a
    /// borrow of the view, without subscribing to it or copying it.
    pub fn usable(&self, now: Instant, min_valid: Duration) -> Option<Arc<Token>> {
        self.view.borrow().usable(now, min_valid).cloned()
    }

    pub fn subscribe(&self) -> Subscriber<ClientView> {
        self.view.subscribe()
    }

    /// Applies a change and wakes every waiter.
    pub fn publish(&self, change: impl FnOnce(&mut ClientView)) {
        self.view.modify(change);
        bump(&self.changed);
    }

    /// Counts a token request that ended, for metrics.
    pub fn count_request(&self, succeeded: bool) {
        let count = if succeeded {
            &self.succeeded
        } else {
            &self.failed
        };
        count.fetch_add(1, Ordering::Relaxed);
    }

    /// The client's series for a metrics scrape.
    fn sample(&self) -> ClientSample {
        let view = self.view.borrow();
        ClientSample {
            client: self.name.clone(),
            state: view.state.as_str(),
            expires_unix: view
                .token
                .as_ref()
                .map(|t| since_epoch(t.expires_wall()).as_secs_f64()),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    /// Asks for a refresh if `generation` is still the current, fresh token. Callers that saw
    /// the same token coalesce into one request (here, and again in the actor, which alone
    /// knows whether a request is in flight), and callers together start at most one request
    /// per `min_interval`: a later one is deferred to the end of the interval. What callers
    /// caused is kept across restarts and reloads: neither reopens the gate.
    pub fn request_refresh(&self, generation: u64) -> RefreshRequest {
        if !self.view.borrow().refreshable(generation) {
            return RefreshRequest::Pending;
        }
        let min_interval = self
            .settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .min_interval;
        let now = Instant::now();
        let shared_gate = self.gate.get_or_init(Arc::default);
        let mut gate = shared_gate.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, newest)) = gate.deferred.as_mut()
            && *at > now
        {
            *newest = (*newest).max(generation);
            return RefreshRequest::Deferred(*at);
        }
        if let Some((last, sent)) = gate.last
            && now < sent + min_interval
        {
            if last == generation {
                return RefreshRequest::Pending;
            }
            let at = sent + min_interval;
            gate.deferred = Some((at, generation));
            let gate = shared_gate.clone();
            let view = self.view.subscribe();
            let client = self.name.clone();
            let refresher = self.refresher.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let generation = {
                    let mut gate = gate.lock().unwrap_or_else(|e| e.into_inner());
                    let generation = gate.deferred.take().map_or(generation, |(_, g)| g);
                    // Only a request that will go out counts against the interval; a token
                    // replaced meanwhile (its scheduled refresh) makes this one moot.
                    if view.borrow().refreshable(generation) {
                        gate.last = Some((generation, Instant::now()));
                    }
                    generation
                };
                refresher.send(RefreshWanted { client, generation });
            });
            return RefreshRequest::Deferred(at);
        }
        gate.last = Some((generation, now));
        drop(gate);
        self.refresher.send(RefreshWanted {
            client: self.name.clone(),
            generation,
        });
        RefreshRequest::Pending
    }
}

/// All clients' slots, by name. Reloads add and remove slots; readers take an `Arc` out.
#[derive(Default)]
pub struct TokenStore {
    clients: RwLock<BTreeMap<Arc<str>, Arc<ClientSlot>>>,
    /// Counts changes to any client's view or to the set of clients: every task that follows
    /// them (systemd status, health) subscribes and misses none.
    pub changed: Changes,
}

/// A count of changes, watched by whoever must follow them.
pub type Changes = Arc<watch::Sender<u64>>;

fn bump(changes: &watch::Sender<u64>) {
    changes.send_modify(|n| *n = n.wrapping_add(1));
}

impl TokenStore {
    pub fn get(&self, name: &str) -> Option<Arc<ClientSlot>> {
        self.read().get(name).cloned()
    }

    /// Every slot, in name order.
    pub fn all(&self) -> Vec<Arc<ClientSlot>> {
        self.read().values().cloned().collect()
    }

    pub fn insert(&self, slot: Arc<ClientSlot>) {
        self.clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(slot.name.clone(), slot);
        bump(&self.changed);
    }

    pub fn remove(&self, name: &str) -> Option<Arc<ClientSlot>> {
        let removed = self
            .clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        bump(&self.changed);
        removed
    }

    /// Every client's series for a metrics scrape, in name order.
    pub fn samples(&self) -> Vec<ClientSample> {
        self.read().values().map(|slot| slot.sample()).collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Arc<str>, Arc<ClientSlot>>> {
        self.clients.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn monotonic_instants_read_as_wall_times_ahead_and_behind() {
        let at = Instant::now();
        let wall = SystemTime::now();
        // The wall clock runs on during the call: a second's slack either way.
        let near = |got: SystemTime, want: SystemTime| {
            let off = got.duration_since(want).unwrap_or_else(|e| e.duration());
            assert!(
                off < Duration::from_secs(1),
                "{got:?} is {off:?} from {want:?}"
            );
        };
        near(
            wall_at(at + Duration::from_secs(90)),
            wall + Duration::from_secs(90),
        );
        tokio::time::advance(Duration::from_secs(300)).await;
        // Five minutes on the monotonic clock since `at`, which is now that far behind.
        near(wall_at(at), wall - Duration::from_secs(300));
    }
}
