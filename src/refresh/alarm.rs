//! One timer for every sleeping client. A client whose actor has nothing to do until its next
//! refresh or retry has no actor at all: its wake-up time sits here, in a single timer wheel
//! served by one task, which tells the supervisor when it is due. Ten thousand sleeping clients
//! cost ten thousand wheel entries, not ten thousand actors with their mailboxes and timer
//! tasks, and the process stays asleep until the earliest one is due.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{ActorRef, RpcReplyPort};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_util::time::DelayQueue;
use tokio_util::time::delay_queue::Key;

use crate::panics::panic_text;
use crate::refresh::schedule::MAX_WAIT;
use crate::refresh::supervisor::SupervisorMsg;

enum Command {
    /// Wake `client` at the instant, replacing its earlier alarm.
    Set(Arc<str>, Instant),
    Cancel(Arc<str>),
    /// Answered from the wheel's own loop: the watchdog's proof that the wheel still turns.
    Ping(RpcReplyPort<()>),
}

/// The alarms of one supervisor; dropped with it, which ends the task.
pub struct Alarms {
    commands: mpsc::UnboundedSender<Command>,
    task: AbortHandle,
}

impl Alarms {
    /// Starts the timer task; each alarm that goes off is sent to `supervisor` as
    /// [`SupervisorMsg::Wake`]. Should the task ever die, `supervisor` is told with
    /// [`SupervisorMsg::WheelDied`]: without the wheel no sleeping client would wake again.
    pub fn start(supervisor: ActorRef<SupervisorMsg>) -> Alarms {
        let (commands, rx) = mpsc::unbounded_channel();
        let wheel = tokio::spawn(serve(rx, supervisor.clone()));
        let task = wheel.abort_handle();
        tokio::spawn(async move {
            // The wheel ends by itself only when its `Alarms` are dropped, and is aborted by
            // that drop: anything else (a panic) leaves the supervisor without a timer.
            match wheel.await {
                Err(e) if e.is_panic() => {
                    let why = panic_text(&e.into_panic());
                    let _ = supervisor.cast(SupervisorMsg::WheelDied(why));
                }
                _ => {}
            }
        });
        Alarms { commands, task }
    }

    /// Wakes `client` at `at`, or [`MAX_WAIT`] from now if that is sooner: the wheel's range is
    /// finite, and an early wake-up of a client that is not due only puts it back to sleep.
    pub fn set(&self, client: Arc<str>, at: Instant) {
        let at = at.min(crate::refresh::schedule::after(Instant::now(), MAX_WAIT));
        let _ = self.commands.send(Command::Set(client, at));
    }

    pub fn cancel(&self, client: Arc<str>) {
        let _ = self.commands.send(Command::Cancel(client));
    }

    /// Asks the wheel to answer on `reply`; a dead or wedged wheel never does.
    pub fn ping(&self, reply: RpcReplyPort<()>) {
        let _ = self.commands.send(Command::Ping(reply));
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
                Some(Command::Ping(reply)) => {
                    let _ = reply.send(());
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

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::{Actor, ActorProcessingErr};
    use std::time::Duration;

    /// Stands in for the supervisor: forwards what the wheel tells it.
    struct Recorder;

    impl Actor for Recorder {
        type Msg = SupervisorMsg;
        type State = mpsc::UnboundedSender<String>;
        type Arguments = mpsc::UnboundedSender<String>;

        async fn pre_start(
            &self,
            _: ActorRef<SupervisorMsg>,
            out: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(out)
        }

        async fn handle(
            &self,
            _: ActorRef<SupervisorMsg>,
            msg: SupervisorMsg,
            out: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            let _ = out.send(match msg {
                SupervisorMsg::Wake { client } => format!("wake {client}"),
                SupervisorMsg::WheelDied(why) => format!("died: {why}"),
                _ => "other".into(),
            });
            Ok(())
        }
    }

    async fn wheel() -> (Alarms, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (recorder, _) = Actor::spawn(None, Recorder, tx).await.unwrap();
        (Alarms::start(recorder), rx)
    }

    async fn pong(alarms: &Alarms) -> bool {
        let (tx, rx) = ractor::concurrency::oneshot();
        alarms.ping(tx.into());
        tokio::time::timeout(Duration::from_secs(1), rx)
            .await
            .is_ok_and(|r| r.is_ok())
    }

    #[tokio::test(start_paused = true)]
    async fn alarms_beyond_the_wheels_range_are_clamped_not_fatal() {
        let (alarms, mut told) = wheel().await;
        let years = Duration::from_secs(100 * 365 * 86_400);
        alarms.set("far".into(), Instant::now() + years);
        alarms.set("soon".into(), Instant::now() + Duration::from_secs(5));
        assert_eq!(told.recv().await.unwrap(), "wake soon");
        assert!(pong(&alarms).await, "the wheel still turns");
        let start = Instant::now();
        assert_eq!(told.recv().await.unwrap(), "wake far");
        let waited = start.elapsed() + Duration::from_secs(5);
        assert!(
            waited.abs_diff(MAX_WAIT) < Duration::from_secs(1),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wheel_that_dies_says_so_and_stops_answering_pings() {
        let (alarms, mut told) = wheel().await;
        assert!(pong(&alarms).await);
        // What an unclamped alarm of years did to the wheel: DelayQueue panics past its range.
        let years = Duration::from_secs(3 * 365 * 86_400);
        let _ = alarms
            .commands
            .send(Command::Set("hostile".into(), Instant::now() + years));
        let said = told.recv().await.unwrap();
        assert!(said.starts_with("died: "), "{said}");
        assert!(
            said.len() > "died: ".len(),
            "the panic's text is kept: {said}"
        );
        assert!(
            !pong(&alarms).await,
            "a dead wheel must not feed the watchdog"
        );
    }
}
