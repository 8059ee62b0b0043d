//! One timer for every sleeping client. A client whose actor has nothing to do until its next
//! refresh or retry has no actor at all: its wake-up time sits here, in a single timer wheel
//! served by one task, which tells the supervisor when it is due. Ten thousand sleeping clients
//! cost ten thousand wheel entries, not ten thousand actors with their mailboxes and timer
//! tasks, and the process stays asleep until the earliest one is due.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::ActorRef;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_util::time::DelayQueue;
use tokio_util::time::delay_queue::Key;

use crate::supervisor::SupervisorMsg;

enum Command {
    /// Wake `client` at the instant, replacing its earlier alarm.
    Set(Arc<str>, Instant),
    Cancel(Arc<str>),
}

/// The alarms of one supervisor; dropped with it, which ends the task.
pub struct Alarms {
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

impl Alarms {
    /// Starts the timer task; each alarm that goes off is sent to `supervisor` as
    /// [`SupervisorMsg::Wake`].
    pub fn start(supervisor: ActorRef<SupervisorMsg>) -> Alarms {
        let (commands, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(serve(rx, supervisor));
        Alarms { commands, task }
    }

    pub fn set(&self, client: Arc<str>, at: Instant) {
        let _ = self.commands.send(Command::Set(client, at));
    }

    pub fn cancel(&self, client: Arc<str>) {
        let _ = self.commands.send(Command::Cancel(client));
    }
}

impl Drop for Alarms {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut commands: mpsc::UnboundedReceiver<Command>,
    supervisor: ActorRef<SupervisorMsg>,
) {
    let mut queue: DelayQueue<Arc<str>> = DelayQueue::new();
    let mut keys: HashMap<Arc<str>, Key> = HashMap::new();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(Command::Set(client, at)) => {
                    if let Some(key) = keys.remove(&client) {
                        queue.remove(&key);
                    }
                    let key = queue.insert_at(client.clone(), at);
                    keys.insert(client, key);
                }
                Some(Command::Cancel(client)) => {
                    if let Some(key) = keys.remove(&client) {
                        queue.remove(&key);
                    }
                }
            },
            // An empty queue yields `None`, which disables this branch until the next command.
            Some(expired) = queue.next() => {
                let client = expired.into_inner();
                keys.remove(&client);
                let _ = supervisor.cast(SupervisorMsg::Wake { client });
            }
        }
    }
}
