//! One timer for every sleeping client. A client whose actor has nothing to do until its next
//! refresh or retry has no actor at all: its wake-up time sits here, in a single timer wheel
//! served by one task, which says so to whoever started it when it is due. Ten thousand sleeping clients
//! cost ten thousand wheel entries, not ten thousand actors with their mailboxes and timer
//! tasks, and the process stays asleep until the earliest one is due.

use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_util::time::DelayQueue;
use tokio_util::time::delay_queue::Key;

use crate::panics::panic_text;
use crate::refresh::schedule::MAX_WAIT;
use crate::refresh::supervisor::ClientId;

/// What the wheel tells whoever started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alarm {
    /// The client's wake-up time has come.
    Due(ClientId),
    /// The wheel's task died (it panicked), with what it said: without the wheel no sleeping
    /// client would wake again.
    WheelDied(String),
}

/// Where the wheel sends its [`Alarm`]s; the starter holds the receiving end.
pub type AlarmSender = mpsc::UnboundedSender<Alarm>;

enum Command {
    /// Wake `client` at the instant, replacing its earlier alarm.
    Set(ClientId, Instant),
    Cancel(ClientId),
    /// Called from the wheel's own loop: the watchdog's proof that the wheel still turns.
    Ping(Box<dyn FnOnce() + Send>),
}

/// The alarms of one supervisor; dropped with it, which ends the task.
pub struct Alarms {
    commands: mpsc::UnboundedSender<Command>,
    task: AbortHandle,
}

impl Alarms {
    /// Starts the timer task; each alarm that goes off is sent to `to` as [`Alarm::Due`], and
    /// should the task ever die, [`Alarm::WheelDied`] is. `clients`: how many ids there are,
    /// so that the wheel is sized once for all of them asleep.
    pub fn start(to: AlarmSender, clients: usize) -> Alarms {
        let (commands, rx) = mpsc::unbounded_channel();
        let wheel = tokio::spawn(serve(rx, to.clone(), clients));
        let task = wheel.abort_handle();
        tokio::spawn(async move {
            // The wheel ends by itself only when its `Alarms` are dropped, and is aborted by
            // that drop: anything else (a panic) leaves the supervisor without a timer.
            match wheel.await {
                Err(e) if e.is_panic() => {
                    let why = panic_text(&e.into_panic());
                    let _ = to.send(Alarm::WheelDied(why));
                }
                _ => {}
            }
        });
        Alarms { commands, task }
    }

    /// Wakes `client` at `at`, or [`MAX_WAIT`] from now if that is sooner: the wheel's range is
    /// finite, and an early wake-up of a client that is not due only puts it back to sleep.
    pub fn set(&self, client: ClientId, at: Instant) {
        let at = at.min(crate::refresh::schedule::after(Instant::now(), MAX_WAIT));
        let _ = self.commands.send(Command::Set(client, at));
    }

    pub fn cancel(&self, client: ClientId) {
        let _ = self.commands.send(Command::Cancel(client));
    }

    /// Asks the wheel to call `answer`; a dead or wedged wheel never does.
    pub fn ping(&self, answer: impl FnOnce() + Send + 'static) {
        let _ = self.commands.send(Command::Ping(Box::new(answer)));
    }
}

impl Drop for Alarms {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut commands: mpsc::UnboundedReceiver<Command>, to: AlarmSender, clients: usize) {
    let mut queue = DelayQueue::with_capacity(clients);
    // Each client's entry in `queue`, by id: ids are dense, so a table, not a map.
    let mut keys: Vec<Option<Key>> = vec![None; clients];
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(Command::Set(client, at)) => {
                    let i = client.index();
                    if i >= keys.len() {
                        keys.resize(i + 1, None);
                    }
                    match &keys[i] {
                        Some(key) => queue.reset_at(key, at),
                        None => keys[i] = Some(queue.insert_at(client, at)),
                    }
                }
                Some(Command::Cancel(client)) => {
                    if let Some(key) = keys.get_mut(client.index()).and_then(Option::take) {
                        queue.remove(&key);
                    }
                }
                Some(Command::Ping(answer)) => answer(),
            },
            // An empty queue yields `None`, which disables this branch until the next command.
            Some(expired) = queue.next() => {
                let client = expired.into_inner();
                keys[client.index()] = None;
                let _ = to.send(Alarm::Due(client));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::oneshot;

    const FAR: ClientId = ClientId(0);
    const SOON: ClientId = ClientId(1);

    fn wheel() -> (Alarms, mpsc::UnboundedReceiver<Alarm>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Alarms::start(tx, 1), rx)
    }

    async fn pong(alarms: &Alarms) -> bool {
        let (tx, rx) = oneshot::channel();
        alarms.ping(move || {
            let _ = tx.send(());
        });
        tokio::time::timeout(Duration::from_secs(1), rx)
            .await
            .is_ok_and(|r| r.is_ok())
    }

    #[tokio::test(start_paused = true)]
    async fn alarms_beyond_the_wheels_range_are_clamped_not_fatal() {
        let (alarms, mut told) = wheel();
        let years = Duration::from_secs(100 * 365 * 86_400);
        alarms.set(FAR, Instant::now() + years);
        alarms.set(SOON, Instant::now() + Duration::from_secs(5));
        assert_eq!(told.recv().await.unwrap(), Alarm::Due(SOON));
        assert!(pong(&alarms).await, "the wheel still turns");
        let start = Instant::now();
        assert_eq!(told.recv().await.unwrap(), Alarm::Due(FAR));
        let waited = start.elapsed() + Duration::from_secs(5);
        assert!(
            waited.abs_diff(MAX_WAIT) < Duration::from_secs(1),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wheel_that_dies_says_so_and_stops_answering_pings() {
        let (alarms, mut told) = wheel();
        assert!(pong(&alarms).await);
        // What an unclamped alarm of years did to the wheel: DelayQueue panics past its range.
        let years = Duration::from_secs(3 * 365 * 86_400);
        let _ = alarms
            .commands
            .send(Command::Set(FAR, Instant::now() + years));
        let Alarm::WheelDied(why) = told.recv().await.unwrap() else {
            panic!("the wheel was expected to die");
        };
        assert!(!why.is_empty(), "the panic's text is kept: {why:?}");
        assert!(
            !pong(&alarms).await,
            "a dead wheel must not feed the watchdog"
        );
    }
}
