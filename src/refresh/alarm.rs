//! One timer for every sleeping client. A client whose actor has nothing to do until its next
//! refresh or retry has no actor at all: its wake-up time sits here, in a single timer wheel
//! served by one task, which says so to whoever started it when it is due. Ten thousand sleeping clients
//! cost ten thousand wheel entries, not ten thousand actors with their mailboxes and timer
//! tasks, and the process stays asleep until the earliest one is due.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_util::time::DelayQueue;
use tokio_util::time::delay_queue::Key;

use crate::panics::panic_text;
use crate::refresh::schedule::MAX_WAIT;
/// What the wheel tells whoever started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alarm {
    /// The client's wake-up time has come.
    Due(Arc<str>),
    /// The wheel's task died (it panicked), with what it said: without the wheel no sleeping
    /// client would wake again.
    WheelDied(String),
}

/// Where the wheel sends its [`Alarm`]s; the starter holds the receiving end.
pub type AlarmSender = mpsc::UnboundedSender<Alarm>;

enum Command {
    /// Wake `client` at the instant, replacing its earlier alarm.
    Set(Arc<str>, Instant),
    Cancel(Arc<str>),
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
    /// should the task ever die, [`Alarm::WheelDied`] is.
    pub fn start(to: AlarmSender) -> Alarms {
        let (commands, rx) = mpsc::unbounded_channel();
        let wheel = tokio::spawn(serve(rx, to.clone()));
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
    pub fn set(&self, client: Arc<str>, at: Instant) {
        let at = at.min(crate::refresh::schedule::after(Instant::now(), MAX_WAIT));
        let _ = self.commands.send(Command::Set(client, at));
    }

    pub fn cancel(&self, client: Arc<str>) {
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

async fn serve(mut commands: mpsc::UnboundedReceiver<Command>, to: AlarmSender) {
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
                Some(Command::Ping(answer)) => answer(),
            },
            // An empty queue yields `None`, which disables this branch until the next command.
            Some(expired) = queue.next() => {
                let client = expired.into_inner();
                keys.remove(&client);
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

    fn wheel() -> (Alarms, mpsc::UnboundedReceiver<Alarm>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Alarms::start(tx), rx)
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
        alarms.set("far".into(), Instant::now() + years);
        alarms.set("soon".into(), Instant::now() + Duration::from_secs(5));
        assert_eq!(told.recv().await.unwrap(), Alarm::Due("soon".into()));
        assert!(pong(&alarms).await, "the wheel still turns");
        let start = Instant::now();
        assert_eq!(told.recv().await.unwrap(), Alarm::Due("far".into()));
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
            .send(Command::Set("hostile".into(), Instant::now() + years));
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
