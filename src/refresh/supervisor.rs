//! The supervisor: keeps one [`TokenActor`] per client running while the client has work, lets
//! it sleep while it has none, starts and stops clients as reloads ask, and restarts an actor
//! that fails or stops unexpectedly, within a restart budget. The last good token lives in the
//! client's store slot, not in the actor, so it survives sleep and restarts alike.
//!
//! A client is in one of the conditions of [`Run`]:
//! - running: its actor is up (fetching, or watching rejected credentials);
//! - waiting its turn: it has work, but its token endpoint already has [`starts_per_endpoint`]
//!   actors started and not yet settled; it starts when one of them settles;
//! - asleep: no actor; its next refresh or retry is an entry in the shared [`Alarms`] (or its
//!   restart is scheduled);
//! - failed: its restart budget is spent.
//!
//! The turn keeps the number of actors alive at once bounded by what the endpoint can serve:
//! 10,000 clients starting together wait as 10,000 queue entries, not as 10,000 actors with
//! their mailboxes, all queued on the same endpoint budget.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, error, warn};

use crate::oauth::TokenSource;
use crate::refresh::RefreshPolicy;
use crate::refresh::actor::{Settled, TokenActor, TokenArgs, TokenMsg, TokenStart};
use crate::refresh::alarm::{Alarm, AlarmSender, Alarms};
use crate::store::{ClientSlot, ClientState, RefreshWanted};

/// At most this many restarts of one client within [`RESTART_WINDOW`]; past that the client is
/// marked failed rather than restarted in a loop that would hide a persistent bug.
pub const MAX_RESTARTS: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// Pause before a restart, so a crash on start-up does not spin.
const RESTART_DELAY: Duration = Duration::from_millis(500);

/// How many actors of one token endpoint may be started and not yet settled: twice what the
/// endpoint serves at once, so that its budget always has the next request queued.
pub fn starts_per_endpoint(endpoint_concurrency: usize) -> usize {
    endpoint_concurrency.max(1) * 2
}

/// A client to run: its store slot, which names it, and where its tokens come from.
pub struct ClientArgs {
    pub slot: Arc<ClientSlot>,
    pub source: Arc<dyn TokenSource>,
}

/// A client's place in the supervisor's table. Its alarm, its place in its endpoint's queue and
/// a scheduled restart carry this instead of a copy of its name, and the timer wheel indexes
/// its entries by it. A removed client's place goes to the next client added, so a late alarm
/// or restart of the removed one may wake the new one early: an actor start that finds nothing
/// due and goes back to sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientId(pub(super) u32);

impl ClientId {
    pub(super) fn index(self) -> usize {
        self.0 as usize
    }
}

pub enum SupervisorMsg {
    /// Start (or replace) a client. The policy is the one every actor started from now on runs
    /// with: there is one for all clients, and a reload that changes it starts each of them
    /// again.
    Start(ClientArgs, Arc<RefreshPolicy>, RpcReplyPort<()>),
    /// Stop a client for good; replies once its actor has stopped.
    Stop(String, RpcReplyPort<()>),
    /// Scheduled restart after a failure.
    Restart { client: ClientId },
    /// A sleeping client's next attempt is due.
    Wake { client: ClientId },
    /// A caller needs a newer token than `generation`.
    Refresh { client: Arc<str>, generation: u64 },
    /// An actor has nothing in flight.
    Settled(Settled),
    /// Answered by the timer wheel, through the supervisor's mailbox: both are live (the
    /// systemd watchdog asks).
    Ping(RpcReplyPort<()>),
    /// The timer wheel's task died (it panicked), with what it said.
    WheelDied(String),
}

pub struct Supervisor;

/// What the supervisor starts with: the clients, the policy their actors run with, and the
/// refresh requests their store slots send.
pub struct SupervisorArgs {
    pub clients: Vec<ClientArgs>,
    pub policy: Arc<RefreshPolicy>,
    pub requests: mpsc::UnboundedReceiver<RefreshWanted>,
}

/// Feeds what a channel receives into the supervisor's mailbox, mapped to one of its messages,
/// so that the sender need not know the supervisor. Ends with the guard (dropped with the
/// supervisor's state), or once the supervisor is gone.
struct Forwarding(AbortHandle);

impl Drop for Forwarding {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn forward<T: Send + 'static>(
    mut from: mpsc::UnboundedReceiver<T>,
    to: ActorRef<SupervisorMsg>,
    map: impl Fn(T) -> SupervisorMsg + Send + 'static,
) -> Forwarding {
    let task = tokio::spawn(async move {
        while let Some(item) = from.recv().await {
            if to.cast(map(item)).is_err() {
                return;
            }
        }
    });
    Forwarding(task.abort_handle())
}

struct Child {
    args: ClientArgs,
    run: Run,
    /// Boxed: most clients are never restarted.
    restarts: Option<Box<Restarts>>,
}

/// When an actor (or the timer wheel) was restarted, within [`RESTART_WINDOW`].
#[derive(Default)]
struct Restarts(VecDeque<Instant>);

impl Restarts {
    /// Counts a restart at `now`, and returns how many there are within the window; or `None`
    /// if [`MAX_RESTARTS`] are already, which is the end of the budget.
    fn count(&mut self, now: Instant) -> Option<usize> {
        while self
            .0
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            self.0.pop_front();
        }
        if self.0.len() >= MAX_RESTARTS {
            return None;
        }
        self.0.push_back(now);
        Some(self.0.len())
    }
}

/// The clients by [`ClientId`], and their ids by name. Sized once for the clients the
/// supervisor starts with, rather than grown by doubling as they are added.
struct Children {
    by_id: Vec<Option<Child>>,
    /// The places of removed clients, for the next ones added.
    free: Vec<ClientId>,
    /// The ids by name: a table of ids alone, hashed by the names in `by_id` (a map would hold
    /// another handle on every name: 25 B a bucket where this takes 5).
    ids: HashTable<ClientId>,
    hasher: RandomState,
}

impl Children {
    fn with_capacity(clients: usize) -> Self {
        Self {
            by_id: Vec::with_capacity(clients),
            free: Vec::new(),
            ids: HashTable::with_capacity(clients),
            hasher: RandomState::new(),
        }
    }

    /// How many places there are, free ones included: what a table indexed by id spans.
    fn places(&self) -> usize {
        self.by_id.len()
    }

    fn id(&self, name: &str) -> Option<ClientId> {
        let hash = self.hasher.hash_one(name);
        self.ids
            .find(hash, |&id| name_of(&self.by_id, id) == name)
            .copied()
    }

    fn get_mut(&mut self, id: ClientId) -> Option<&mut Child> {
        self.by_id.get_mut(id.index())?.as_mut()
    }

    fn iter(&self) -> impl Iterator<Item = (ClientId, &Child)> {
        self.by_id
            .iter()
            .zip(0..)
            .filter_map(|(child, i)| Some((ClientId(i), child.as_ref()?)))
    }

    /// Adds a client whose name is not taken (one of that name is removed first).
    fn insert(&mut self, child: Child) -> ClientId {
        let hash = self.hasher.hash_one(&*child.args.slot.name);
        let id = match self.free.pop() {
            Some(id) => {
                self.by_id[id.index()] = Some(child);
                id
            }
            None => {
                let id =
                    ClientId(u32::try_from(self.by_id.len()).expect("fewer than 2^32 clients"));
                self.by_id.push(Some(child));
                id
            }
        };
        let (by_id, hasher) = (&self.by_id, &self.hasher);
        self.ids
            .insert_unique(hash, id, |&id| hasher.hash_one(name_of(by_id, id)));
        id
    }

    fn remove(&mut self, id: ClientId) {
        let Some(child) = self.by_id.get_mut(id.index()).and_then(Option::take) else {
            return;
        };
        let hash = self.hasher.hash_one(&*child.args.slot.name);
        if let Ok(entry) = self.ids.find_entry(hash, |&i| i == id) {
            entry.remove();
        }
        self.free.push(id);
    }
}

/// The name of a client in `by_id`, which the id table holds only ids of.
fn name_of(by_id: &[Option<Child>], id: ClientId) -> &str {
    let child = by_id[id.index()].as_ref();
    &child
        .expect("the id table holds present clients")
        .args
        .slot
        .name
}

/// The condition a client is in, each holding only what that condition needs (a queued client
/// has no actor, a failed one holds no start). `refresh`: a caller's refresh request, delivered
/// once the actor runs.
enum Run {
    /// No actor: its next attempt is an alarm, or its restart is scheduled.
    Asleep { refresh: Option<u64> },
    /// In its endpoint's queue, waiting for a start.
    Queued { refresh: Option<u64> },
    /// Holds one of its endpoint's starts without an actor: about to be spawned, or its actor
    /// has just exited.
    Starting { refresh: Option<u64> },
    /// Its actor is up. `holds_start`: started and not yet settled; `forwarded`: refresh
    /// requests forwarded to it.
    Running {
        actor: ActorRef<TokenMsg>,
        holds_start: bool,
        forwarded: u64,
    },
    /// The restart budget is spent: nothing starts it again but a reload.
    Failed,
}

/// The starts of one token endpoint.
#[derive(Default)]
struct Turns {
    started: usize,
    queue: VecDeque<ClientId>,
}

pub struct SupervisorState {
    children: Children,
    /// What every actor is started with: the policy of the latest start.
    policy: Arc<RefreshPolicy>,
    running: HashMap<ActorId, ClientId>,
    turns: HashMap<String, Turns>,
    alarms: Alarms,
    /// What every timer wheel, the first and any restarted one, reports to.
    alarm_to: AlarmSender,
    wheel_restarts: Restarts,
    /// Refresh requests and alarms into the mailbox.
    _forwarding: [Forwarding; 2],
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let SupervisorArgs {
            clients,
            policy,
            requests,
        } = args;
        let (alarm_to, alarms) = mpsc::unbounded_channel();
        let forwarding = [
            forward(requests, myself.clone(), |r: RefreshWanted| {
                SupervisorMsg::Refresh {
                    client: r.client,
                    generation: r.generation,
                }
            }),
            forward(alarms, myself.clone(), |alarm| match alarm {
                Alarm::Due(client) => SupervisorMsg::Wake { client },
                Alarm::WheelDied(why) => SupervisorMsg::WheelDied(why),
            }),
        ];
        let mut state = SupervisorState {
            children: Children::with_capacity(clients.len()),
            policy,
            running: HashMap::new(),
            turns: HashMap::new(),
            alarms: Alarms::start(alarm_to.clone(), clients.len()),
            alarm_to,
            wheel_restarts: Restarts::default(),
            _forwarding: forwarding,
        };
        for client in clients {
            state.add(&myself, client).await;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Start(client, policy, reply) => {
                state.policy = policy;
                state.remove(&myself, &client.slot.name).await;
                state.add(&myself, client).await;
                let _ = reply.send(());
            }
            SupervisorMsg::Stop(name, reply) => {
                state.remove(&myself, &name).await;
                let _ = reply.send(());
            }
            SupervisorMsg::Restart { client } | SupervisorMsg::Wake { client } => {
                state.wake(&myself, client).await;
            }
            SupervisorMsg::Refresh { client, generation } => {
                state.refresh(&myself, &client, generation).await;
            }
            SupervisorMsg::Settled(settled) => state.settled(&myself, settled).await,
            SupervisorMsg::Ping(reply) => state.alarms.ping(move || {
                let _ = reply.send(());
            }),
            SupervisorMsg::WheelDied(why) => state.restart_wheel(&why)?,
        }
        Ok(())
    }

    // The default stops the supervisor when any child exits; a client's crash must stay that
    // client's problem.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, e) => (cell, format!("failed: {e}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                format!(
                    "stopped: {}",
                    reason.unwrap_or_else(|| "no reason given".into())
                ),
            ),
            _ => return Ok(()),
        };
        // Actors stopped on purpose (asleep, reloaded) were removed from `running` first, so
        // only unexpected exits get here.
        if let Some(client) = state.running.remove(&cell.get_id()) {
            if let Some(child) = state.children.get_mut(client) {
                child.take_actor();
            }
            state.release_start_and_go_on(&myself, client).await;
            state.on_exit(&myself, client, &reason);
        }
        Ok(())
    }
}

impl SupervisorState {
    async fn add(&mut self, myself: &ActorRef<SupervisorMsg>, args: ClientArgs) {
        let id = self.children.insert(Child {
            args,
            run: Run::Asleep { refresh: None },
            restarts: None,
        });
        self.wake(myself, id).await;
    }

    /// Stops a client's actor on purpose (not counted as a failure), waits for it, and forgets
    /// the client.
    async fn remove(&mut self, myself: &ActorRef<SupervisorMsg>, name: &str) {
        let Some(id) = self.children.id(name) else {
            return;
        };
        self.alarms.cancel(id);
        if let Some(actor) = self.children.get_mut(id).and_then(Child::take_actor) {
            self.running.remove(&actor.get_id());
            let _ = actor
                .stop_and_wait(Some("configuration reloaded".into()), None)
                .await;
        }
        self.release_start_and_go_on(myself, id).await;
        // A queue entry of a removed client is skipped when its turn comes.
        self.children.remove(id);
    }

    /// The client has work (first start, alarm, restart, refresh request): start its actor,
    /// or queue it for its endpoint's next start.
    async fn wake(&mut self, myself: &ActorRef<SupervisorMsg>, id: ClientId) {
        let Some(child) = self.children.get_mut(id) else {
            return; // Removed by a reload meanwhile.
        };
        let Run::Asleep { refresh } = child.run else {
            return;
        };
        let endpoint = child.args.source.endpoint();
        let limit = starts_per_endpoint(self.policy.endpoint_concurrency);
        let turns = self.turns.entry(endpoint.to_string()).or_default();
        if turns.started >= limit {
            child.run = Run::Queued { refresh };
            turns.queue.push_back(id);
            return;
        }
        turns.started += 1;
        child.run = Run::Starting { refresh };
        self.spawn(myself, id).await;
    }

    /// Starts the actor of `id`, which holds one of its endpoint's starts; and should that
    /// fail, the next client in the endpoint's queue, and so on.
    async fn spawn(&mut self, myself: &ActorRef<SupervisorMsg>, id: ClientId) {
        let mut next = Some(id);
        while let Some(id) = next.take() {
            next = self.spawn_one(myself, id).await;
        }
    }

    /// Starts one actor; on failure, returns the client its released start went to.
    async fn spawn_one(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: ClientId,
    ) -> Option<ClientId> {
        let child = self.children.get_mut(id)?;
        let Run::Starting { refresh } = child.run else {
            return None; // Only a client holding a start is spawned.
        };
        self.alarms.cancel(id);
        let start = TokenStart {
            args: TokenArgs {
                slot: child.args.slot.clone(),
                source: child.args.source.clone(),
                policy: self.policy.clone(),
            },
            settled: {
                let supervisor = myself.clone();
                Arc::new(move |settled| {
                    let _ = supervisor.cast(SupervisorMsg::Settled(settled));
                })
            },
        };
        // Unnamed: ractor's registry is process-wide, and names would collide between daemons
        // in one process (tests) without adding anything the store does not already index.
        match Actor::spawn_linked(None, TokenActor, start, myself.get_cell()).await {
            Ok((actor, _)) => {
                let mut forwarded = 0;
                if let Some(generation) = refresh {
                    forwarded += 1;
                    let _ = actor.cast(TokenMsg::Refresh { generation });
                }
                self.running.insert(actor.get_id(), id);
                child.run = Run::Running {
                    actor,
                    holds_start: true,
                    forwarded,
                };
                None
            }
            Err(e) => {
                // Starting failed (pre_start returned an error): count it as a crash.
                let next = self.release_start(id);
                self.on_exit(myself, id, &format!("failed to start: {e}"));
                next
            }
        }
    }

    /// A caller asks for a token newer than `generation`: forward to the running actor, or
    /// wake the client if the token it would replace is still the current one.
    async fn refresh(&mut self, myself: &ActorRef<SupervisorMsg>, name: &str, generation: u64) {
        let Some(id) = self.children.id(name) else {
            return;
        };
        let Some(child) = self.children.get_mut(id) else {
            return;
        };
        if let Run::Running {
            actor, forwarded, ..
        } = &mut child.run
        {
            *forwarded += 1;
            let _ = actor.cast(TokenMsg::Refresh { generation });
            return;
        }
        if !child.args.slot.view().refreshable(generation) {
            return;
        }
        if let Run::Asleep { refresh } | Run::Queued { refresh } | Run::Starting { refresh } =
            &mut child.run
        {
            *refresh = Some(generation);
        }
        self.wake(myself, id).await;
    }

    async fn settled(&mut self, myself: &ActorRef<SupervisorMsg>, settled: Settled) {
        let Settled {
            actor,
            seen,
            can_sleep,
        } = settled;
        let Some(&id) = self.running.get(&actor) else {
            return; // An actor stopped meanwhile.
        };
        self.release_start_and_go_on(myself, id).await;
        let Some(child) = self.children.get_mut(id) else {
            return;
        };
        // A refresh request forwarded after the actor reported is still in its mailbox: the
        // actor reports again once it has handled it.
        let Run::Running { forwarded, .. } = child.run else {
            return;
        };
        if !can_sleep || seen != forwarded {
            return;
        }
        let Some(actor) = child.take_actor() else {
            return;
        };
        self.running.remove(&actor.get_id());
        actor.stop(Some("asleep until its next attempt".into()));
        let name = &child.args.slot.name;
        match child.args.slot.view().next_attempt {
            Some(at) => {
                debug!(client = %name, in_s = at.saturating_duration_since(Instant::now()).as_secs(), "asleep");
                self.alarms.set(id, at);
            }
            None => warn!(client = %name, "asleep with no next attempt"),
        }
    }

    /// The client's actor no longer holds one of its endpoint's starts: starts the next client
    /// in that endpoint's queue.
    async fn release_start_and_go_on(&mut self, myself: &ActorRef<SupervisorMsg>, id: ClientId) {
        if let Some(next) = self.release_start(id) {
            self.spawn(myself, next).await;
        }
    }

    /// Gives the start `id` holds to the next client in its endpoint's queue, and returns that
    /// client (to be spawned by the caller).
    fn release_start(&mut self, id: ClientId) -> Option<ClientId> {
        let child = self.children.get_mut(id)?;
        match &mut child.run {
            Run::Starting { refresh } => {
                child.run = Run::Asleep { refresh: *refresh };
            }
            Run::Running { holds_start, .. } if *holds_start => *holds_start = false,
            _ => return None,
        }
        // Its own handle on the source, as the queue's clients are looked up below.
        let source = child.args.source.clone();
        let endpoint = source.endpoint();
        let turns = self.turns.get_mut(endpoint)?;
        turns.started -= 1;
        while let Some(next) = turns.queue.pop_front() {
            let Some(child) = self.children.get_mut(next) else {
                continue; // Removed while it waited.
            };
            // Replaced by a reload while it waited, or the entry is a removed client's whose
            // place went to a client queued at another endpoint: that one's start is not this
            // endpoint's to give.
            let Run::Queued { refresh } = child.run else {
                continue;
            };
            if child.args.source.endpoint() != endpoint {
                continue;
            }
            child.run = Run::Starting { refresh };
            turns.started += 1;
            return Some(next);
        }
        // Drained: the buffer a start-up's herd grew is given back, not kept for the next one.
        turns.queue = VecDeque::new();
        None
    }

    /// A new timer wheel in place of one that died, with every sleeping client's alarm set
    /// again from its published next attempt. Past the restart budget the supervisor fails,
    /// and the daemon with it: a wheel that keeps dying is a bug no restart will fix.
    fn restart_wheel(&mut self, why: &str) -> Result<(), ActorProcessingErr> {
        if self.wheel_restarts.count(Instant::now()).is_none() {
            let e = format!(
                "the timer wheel died: {why}; {MAX_RESTARTS} restarts within {}s already",
                RESTART_WINDOW.as_secs()
            );
            error!("{e}; stopping the supervisor");
            return Err(e.into());
        }
        self.alarms = Alarms::start(self.alarm_to.clone(), self.children.places());
        let mut asleep = 0;
        for (id, child) in self.children.iter() {
            if !matches!(child.run, Run::Asleep { .. }) {
                continue;
            }
            if let Some(at) = child.args.slot.view().next_attempt {
                self.alarms.set(id, at);
                asleep += 1;
            }
        }
        error!(
            asleep,
            "the timer wheel died: {why}; restarted it with the sleeping clients' alarms"
        );
        Ok(())
    }

    fn on_exit(&mut self, myself: &ActorRef<SupervisorMsg>, id: ClientId, reason: &str) {
        let Some(child) = self.children.get_mut(id) else {
            return;
        };
        let client = &child.args.slot.name;
        let restarts = child.restarts.get_or_insert_default();
        let Some(restarts) = restarts.count(Instant::now()) else {
            error!(
                client = %client,
                "token actor {reason}; {MAX_RESTARTS} restarts within {}s already, giving up on this client",
                RESTART_WINDOW.as_secs()
            );
            child.run = Run::Failed;
            child.args.slot.publish(|v| {
                v.state = ClientState::Failed;
                v.next_attempt = None;
                v.last_error = Some(
                    format!(
                        "token actor {reason}; restart budget ({MAX_RESTARTS} in {}s) exhausted",
                        RESTART_WINDOW.as_secs()
                    )
                    .into(),
                );
            });
            return;
        };
        warn!(client = %client, restarts, "token actor {reason}; restarting");
        myself.send_after(RESTART_DELAY, move || SupervisorMsg::Restart { client: id });
    }
}

impl Child {
    /// The running actor, if any, leaving the client without one; a start it held stays held
    /// until released.
    fn take_actor(&mut self) -> Option<ActorRef<TokenMsg>> {
        match std::mem::replace(&mut self.run, Run::Failed) {
            Run::Running {
                actor, holds_start, ..
            } => {
                let refresh = None;
                self.run = if holds_start {
                    Run::Starting { refresh }
                } else {
                    Run::Asleep { refresh }
                };
                Some(actor)
            }
            other => {
                self.run = other;
                None
            }
        }
    }
}
