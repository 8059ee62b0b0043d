//! The supervisor: runs one linked [`TokenActor`] per client, starts and stops them as reloads
//! ask, and restarts one that fails or stops unexpectedly, within a restart budget. The last
//! good token lives in the client's store slot, not in the actor, so it survives the restart
//! and keeps being served.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::time::Instant;
use tracing::{error, warn};

use crate::actor::{TokenActor, TokenArgs, TokenMsg};
use crate::store::ClientState;

/// At most this many restarts of one client within [`RESTART_WINDOW`]; past that the client is
/// marked failed rather than restarted in a loop that would hide a persistent bug.
pub const MAX_RESTARTS: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// Pause before a restart, so a crash on start-up does not spin.
const RESTART_DELAY: Duration = Duration::from_millis(500);

pub enum SupervisorMsg {
    /// Start (or replace) the actor of `args.slot.name`.
    Start(TokenArgs, RpcReplyPort<()>),
    /// Stop a client's actor for good; replies once it has stopped.
    Stop(String, RpcReplyPort<()>),
    /// Scheduled restart after a failure.
    Restart { client: String },
    /// Answered while the supervisor's mailbox is being served (the systemd watchdog asks).
    Ping(RpcReplyPort<()>),
}

pub struct Supervisor;

struct Child {
    args: TokenArgs,
    actor: Option<ActorRef<TokenMsg>>,
    restarts: VecDeque<Instant>,
}

pub struct SupervisorState {
    children: HashMap<String, Child>,
    running: HashMap<ActorId, String>,
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = Vec<TokenArgs>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        clients: Vec<TokenArgs>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            children: HashMap::new(),
            running: HashMap::new(),
        };
        for args in clients {
            state.start(&myself, args).await?;
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
                let name = args.slot.name.clone();
                state.stop(&name).await;
                if let Err(e) = state.start(&myself, args).await {
                    error!(client = %name, "cannot start token actor: {e}");
                }
                let _ = reply.send(());
            }
            SupervisorMsg::Stop(name, reply) => {
                state.stop(&name).await;
                state.children.remove(&name);
                let _ = reply.send(());
            }
            SupervisorMsg::Restart { client } => {
                if let Err(e) = state.spawn(&myself, &client).await {
                    // Spawning itself failed (pre_start returned an error): count it as a crash.
                    state.on_exit(&myself, client, &format!("restart failed: {e}"));
                }
            }
            SupervisorMsg::Ping(reply) => {
                let _ = reply.send(());
            }
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
        // Actors stopped on purpose were removed from `running` first, so only unexpected
        // exits get here.
        if let Some(client) = state.running.remove(&cell.get_id()) {
            if let Some(child) = state.children.get_mut(&client) {
                child.actor = None;
            }
            state.on_exit(&myself, client, &reason);
        }
        Ok(())
    }
}

impl SupervisorState {
    async fn start(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        args: TokenArgs,
    ) -> Result<(), ActorProcessingErr> {
        let name = args.slot.name.clone();
        self.children.insert(
            name.clone(),
            Child {
                args,
                actor: None,
                restarts: VecDeque::new(),
            },
        );
        self.spawn(myself, &name).await
    }

    async fn spawn(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        name: &str,
    ) -> Result<(), ActorProcessingErr> {
        let Some(child) = self.children.get_mut(name) else {
            return Ok(()); // Stopped by a reload while a restart was pending.
        };
        if child.actor.is_some() {
            return Ok(());
        }
        // Unnamed: ractor's registry is process-wide, and names would collide between daemons
        // in one process (tests) without adding anything the store does not already index.
        let (actor, _) =
            Actor::spawn_linked(None, TokenActor, child.args.clone(), myself.get_cell()).await?;
        self.running.insert(actor.get_id(), name.to_string());
        child.actor = Some(actor);
        Ok(())
    }

    /// Stops a client's actor on purpose (not counted as a failure) and waits for it.
    async fn stop(&mut self, name: &str) {
        let Some(actor) = self.children.get_mut(name).and_then(|c| c.actor.take()) else {
            return;
        };
        self.running.remove(&actor.get_id());
        let _ = actor
            .stop_and_wait(Some("configuration reloaded".into()), None)
            .await;
    }

    fn on_exit(&mut self, myself: &ActorRef<SupervisorMsg>, client: String, reason: &str) {
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
