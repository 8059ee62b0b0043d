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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, error, warn};

use crate::refresh::actor::{Settled, TokenActor, TokenArgs, TokenMsg, TokenStart};
use crate::refresh::alarm::{Alarm, AlarmSender, Alarms};
use crate::store::{ClientState, RefreshWanted};

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

pub enum SupervisorMsg {
    /// Start (or replace) the client `args.slot.name`.
    Start(TokenArgs, RpcReplyPort<()>),
    /// Stop a client for good; replies once its actor has stopped.
    Stop(String, RpcReplyPort<()>),
    /// Scheduled restart after a failure.
    Restart { client: Arc<str> },
    /// A sleeping client's next attempt is due.
    Wake { client: Arc<str> },
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

/// What the supervisor starts with: the clients, and the refresh requests their store slots
/// send.
pub struct SupervisorArgs {
    pub clients: Vec<TokenArgs>,
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
    name: Arc<str>,
    args: TokenArgs,
    run: Run,
    restarts: VecDeque<Instant>,
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
    queue: VecDeque<Arc<str>>,
}

pub struct SupervisorState {
    children: HashMap<Arc<str>, Child>,
    running: HashMap<ActorId, Arc<str>>,
    turns: HashMap<String, Turns>,
    alarms: Alarms,
    /// What every timer wheel, the first and any restarted one, reports to.
    alarm_to: AlarmSender,
    /// When the timer wheel was restarted, within the restart window.
    wheel_restarts: VecDeque<Instant>,
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
        let SupervisorArgs { clients, requests } = args;
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
            children: HashMap::new(),
            running: HashMap::new(),
            turns: HashMap::new(),
            alarms: Alarms::start(alarm_to.clone()),
            alarm_to,
            wheel_restarts: VecDeque::new(),
            _forwarding: forwarding,
        };
        for args in clients {
            state.add(&myself, args).await;
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
            SupervisorMsg::Start(args, reply) => {
                state.remove(&myself, &args.slot.name).await;
                state.add(&myself, args).await;
                let _ = reply.send(());
            }
            SupervisorMsg::Stop(name, reply) => {
                state.remove(&myself, &name).await;
                let _ = reply.send(());
            }
            SupervisorMsg::Restart { client } | SupervisorMsg::Wake { client } => {
                state.wake(&myself, &client).await;
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
            if let Some(child) = state.children.get_mut(&client) {
                child.take_actor();
            }
            state.release_start_and_go_on(&myself, &client).await;
            state.on_exit(&myself, client, &reason);
        }
        Ok(())
    }
}

impl SupervisorState {
    async fn add(&mut self, myself: &ActorRef<SupervisorMsg>, args: TokenArgs) {
        let name: Arc<str> = args.slot.name.clone();
        self.children.insert(
            name.clone(),
            Child {
                name: name.clone(),
                args,
                run: Run::Asleep { refresh: None },
                restarts: VecDeque::new(),
            },
        );
        self.wake(myself, &name).await;
    }

    /// Stops a client's actor on purpose (not counted as a failure), waits for it, and forgets
    /// the client.
    async fn remove(&mut self, myself: &ActorRef<SupervisorMsg>, name: &str) {
        let Some(child) = self.children.get_mut(name) else {
            return;
        };
        let name = child.name.clone();
        self.alarms.cancel(name.clone());
        if let Some(actor) = child.take_actor() {
            self.running.remove(&actor.get_id());
            let _ = actor
                .stop_and_wait(Some("configuration reloaded".into()), None)
                .await;
        }
        self.release_start_and_go_on(myself, &name).await;
        // A queue entry of a removed client is skipped when its turn comes.
        self.children.remove(&name);
    }

    /// The client has work (first start, alarm, restart, refresh request): start its actor,
    /// or queue it for its endpoint's next start.
    async fn wake(&mut self, myself: &ActorRef<SupervisorMsg>, name: &str) {
        let Some(child) = self.children.get_mut(name) else {
            return; // Removed by a reload meanwhile.
        };
        let Run::Asleep { refresh } = child.run else {
            return;
        };
        let endpoint = child.args.source.endpoint();
        let limit = starts_per_endpoint(child.args.policy.endpoint_concurrency);
        let turns = self.turns.entry(endpoint.to_string()).or_default();
        if turns.started >= limit {
            child.run = Run::Queued { refresh };
            turns.queue.push_back(child.name.clone());
            return;
        }
        turns.started += 1;
        child.run = Run::Starting { refresh };
        let name = child.name.clone();
        self.spawn(myself, name).await;
    }

    /// Starts the actor of `name`, which holds one of its endpoint's starts; and should that
    /// fail, the next client in the endpoint's queue, and so on.
    async fn spawn(&mut self, myself: &ActorRef<SupervisorMsg>, name: Arc<str>) {
        let mut next = Some(name);
        while let Some(name) = next.take() {
            next = self.spawn_one(myself, name).await;
        }
    }

    /// Starts one actor; on failure, returns the client its released start went to.
    async fn spawn_one(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        name: Arc<str>,
    ) -> Option<Arc<str>> {
        let child = self.children.get_mut(&name)?;
        let Run::Starting { refresh } = child.run else {
            return None; // Only a client holding a start is spawned.
        };
        self.alarms.cancel(name.clone());
        let start = TokenStart {
            args: child.args.clone(),
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
                self.running.insert(actor.get_id(), name);
                child.run = Run::Running {
                    actor,
                    holds_start: true,
                    forwarded,
                };
                None
            }
            Err(e) => {
                // Starting failed (pre_start returned an error): count it as a crash.
                let next = self.release_start(&name);
                self.on_exit(myself, name, &format!("failed to start: {e}"));
                next
            }
        }
    }

    /// A caller asks for a token newer than `generation`: forward to the running actor, or
    /// wake the client if the token it would replace is still the current one.
    async fn refresh(&mut self, myself: &ActorRef<SupervisorMsg>, name: &str, generation: u64) {
        let Some(child) = self.children.get_mut(name) else {
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
        let name = child.name.clone();
        self.wake(myself, &name).await;
    }

    async fn settled(&mut self, myself: &ActorRef<SupervisorMsg>, settled: Settled) {
        let Settled {
            actor,
            seen,
            can_sleep,
        } = settled;
        let Some(name) = self.running.get(&actor).cloned() else {
            return; // An actor stopped meanwhile.
        };
        self.release_start_and_go_on(myself, &name).await;
        let Some(child) = self.children.get_mut(&name) else {
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
        match child.args.slot.view().next_attempt {
            Some((at, _)) => {
                debug!(client = %name, in_s = at.saturating_duration_since(Instant::now()).as_secs(), "asleep");
                self.alarms.set(name, at);
            }
            None => warn!(client = %name, "asleep with no next attempt"),
        }
    }

    /// The client's actor no longer holds one of its endpoint's starts: starts the next client
    /// in that endpoint's queue.
    async fn release_start_and_go_on(&mut self, myself: &ActorRef<SupervisorMsg>, name: &str) {
        if let Some(next) = self.release_start(name) {
            self.spawn(myself, next).await;
        }
    }

    /// Gives the start `name` holds to the next client in its endpoint's queue, and returns
    /// that client (to be spawned by the caller).
    fn release_start(&mut self, name: &str) -> Option<Arc<str>> {
        let child = self.children.get_mut(name)?;
        match &mut child.run {
            Run::Starting { refresh } => {
                child.run = Run::Asleep { refresh: *refresh };
            }
            Run::Running { holds_start, .. } if *holds_start => *holds_start = false,
            _ => return None,
        }
        let turns = self.turns.get_mut(child.args.source.endpoint())?;
        turns.started -= 1;
        while let Some(next) = turns.queue.pop_front() {
            let Some(child) = self.children.get_mut(&next) else {
                continue; // Removed while it waited.
            };
            let Run::Queued { refresh } = child.run else {
                continue; // Replaced by a reload while it waited.
            };
            child.run = Run::Starting { refresh };
            turns.started += 1;
            return Some(next);
        }
        None
    }

    /// A new timer wheel in place of one that died, with every sleeping client's alarm set
    /// again from its published next attempt. Past the restart budget the supervisor fails,
    /// and the daemon with it: a wheel that keeps dying is a bug no restart will fix.
    fn restart_wheel(&mut self, why: &str) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        let restarts = &mut self.wheel_restarts;
        while restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            restarts.pop_front();
        }
        if restarts.len() >= MAX_RESTARTS {
            let e = format!(
                "the timer wheel died: {why}; {MAX_RESTARTS} restarts within {}s already",
                RESTART_WINDOW.as_secs()
            );
            error!("{e}; stopping the supervisor");
            return Err(e.into());
        }
        restarts.push_back(now);
        self.alarms = Alarms::start(self.alarm_to.clone());
        let mut asleep = 0;
        for child in self.children.values() {
            if !matches!(child.run, Run::Asleep { .. }) {
                continue;
            }
            if let Some((at, _)) = child.args.slot.view().next_attempt {
                self.alarms.set(child.name.clone(), at);
                asleep += 1;
            }
        }
        error!(
            asleep,
            "the timer wheel died: {why}; restarted it with the sleeping clients' alarms"
        );
        Ok(())
    }

    fn on_exit(&mut self, myself: &ActorRef<SupervisorMsg>, client: Arc<str>, reason: &str) {
        let Some(child) = self.children.get_mut(&client) else {
            return;
        };
        let now = Instant::now();
        while child
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            child.restarts.pop_front();
        }
        if child.restarts.len() >= MAX_RESTARTS {
            error!(
                client = %client,
                "token actor {reason}; {MAX_RESTARTS} restarts within {}s already, giving up on this client",
                RESTART_WINDOW.as_secs()
            );
            child.run = Run::Failed;
            child.args.slot.publish(|v| {
                v.state = ClientState::Failed;
                v.next_attempt = None;
                v.last_error = Some(format!(
                    "token actor {reason}; restart budget ({MAX_RESTARTS} in {}s) exhausted",
                    RESTART_WINDOW.as_secs()
                ));
            });
            return;
        }
        child.restarts.push_back(now);
        warn!(client = %client, restarts = child.restarts.len(), "token actor {reason}; restarting");
        myself.send_after(RESTART_DELAY, move || SupervisorMsg::Restart { client });
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
