//! A value one owner changes and many read or wait on: what `tokio::sync::watch` does, for the
//! one use tokend has (every client's view in the store), at less than half its size. A watch
//! channel's shared state carries eight notifiers so that thousands of receivers of one value
//! do not contend; a client's view has a handful of waiters at most, and 10,000 clients paid
//! 416 bytes each for it. Here: the value under a lock, a version, and one notifier.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use tokio::sync::Notify;

struct Shared<T> {
    value: RwLock<T>,
    /// Counts changes; a subscriber compares it with the last it saw.
    version: AtomicU64,
    /// The publisher is gone: no change will come.
    closed: AtomicBool,
    changed: Notify,
}

/// The owner's end: changes the value and wakes whoever waits. Dropping it ends every
/// subscriber's wait.
pub struct Publisher<T> {
    shared: Arc<Shared<T>>,
}

/// A reader's end, which remembers the version it last saw.
pub struct Subscriber<T> {
    shared: Arc<Shared<T>>,
    seen: u64,
}

/// The publisher was dropped, and every change it made has been seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the publisher is gone")]
pub struct Closed;

impl<T> Shared<T> {
    fn read(&self) -> RwLockReadGuard<'_, T> {
        // A panic while changing the value left a whole value (changes are closures that
        // assign fields): reading it is safe.
        self.value.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T> Publisher<T> {
    pub fn new(value: T) -> Self {
        Publisher {
            shared: Arc::new(Shared {
                value: RwLock::new(value),
                version: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                changed: Notify::new(),
            }),
        }
    }

    /// The current value, borrowed: hold it briefly, every change waits for it.
    pub fn borrow(&self) -> RwLockReadGuard<'_, T> {
        self.shared.read()
    }

    /// Applies `change` and wakes every subscriber waiting for one.
    pub fn modify(&self, change: impl FnOnce(&mut T)) {
        {
            let mut value = self.shared.value.write().unwrap_or_else(|e| e.into_inner());
            change(&mut value);
            // Under the lock: a subscriber that sees the new version reads the new value.
            self.shared.version.fetch_add(1, Ordering::Release);
        }
        self.shared.changed.notify_waiters();
    }

    /// A subscriber that has seen the current value: it waits for the next change.
    pub fn subscribe(&self) -> Subscriber<T> {
        Subscriber {
            seen: self.shared.version.load(Ordering::Acquire),
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Publisher<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.changed.notify_waiters();
    }
}

impl<T> Subscriber<T> {
    /// The current value, borrowed, marked as seen.
    pub fn borrow_and_update(&mut self) -> RwLockReadGuard<'_, T> {
        let value = self.shared.read();
        // Read under the lock, which changes hold while they bump it: the version matches the
        // value borrowed.
        self.seen = self.shared.version.load(Ordering::Acquire);
        value
    }

    /// The current value, borrowed, without marking it as seen.
    pub fn borrow(&self) -> RwLockReadGuard<'_, T> {
        self.shared.read()
    }

    /// Waits until the value changed since this subscriber last saw it, and marks it seen; an
    /// error once the publisher is gone and nothing new is left to see.
    pub async fn changed(&mut self) -> Result<(), Closed> {
        loop {
            let notified = self.shared.changed.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the checks, so that a change made between them and the wait
            // still wakes it (`notify_waiters` wakes only registered waiters).
            notified.as_mut().enable();
            let version = self.shared.version.load(Ordering::Acquire);
            if version != self.seen {
                self.seen = version;
                return Ok(());
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(Closed);
            }
            notified.await;
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Subscriber<T> {
    /// The current value, then each change (the latest, when several came between two polls),
    /// ending once the publisher is gone: what `tokio_stream`'s `WatchStream::new` yields.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = T> + Send + 'static {
        futures_util::stream::unfold((self, true), |(mut sub, first)| async move {
            if !first {
                sub.changed().await.ok()?;
            }
            let value = sub.borrow_and_update().clone();
            Some((value, (sub, false)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::time::Duration;

    #[tokio::test]
    async fn a_subscriber_waits_for_the_next_change_only() {
        let publisher = Publisher::new(1);
        let mut sub = publisher.subscribe();
        // Seen at subscription: no change yet.
        assert!(
            tokio::time::timeout(Duration::from_millis(10), sub.changed())
                .await
                .is_err()
        );
        publisher.modify(|v| *v = 2);
        sub.changed().await.unwrap();
        assert_eq!(*sub.borrow(), 2);
        // Marked seen by `changed`.
        assert!(
            tokio::time::timeout(Duration::from_millis(10), sub.changed())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_change_wakes_a_waiting_subscriber() {
        let publisher = Arc::new(Publisher::new(0));
        let mut sub = publisher.subscribe();
        let waiter = tokio::spawn(async move {
            sub.changed().await.unwrap();
            *sub.borrow_and_update()
        });
        tokio::task::yield_now().await;
        publisher.modify(|v| *v = 7);
        assert_eq!(waiter.await.unwrap(), 7);
    }

    #[tokio::test]
    async fn changes_made_before_a_drop_are_seen_then_the_wait_ends() {
        let publisher = Publisher::new(0);
        let mut sub = publisher.subscribe();
        publisher.modify(|v| *v = 1);
        drop(publisher);
        assert_eq!(sub.changed().await, Ok(()));
        assert_eq!(*sub.borrow_and_update(), 1);
        assert_eq!(sub.changed().await, Err(Closed));
    }

    #[tokio::test]
    async fn dropping_the_publisher_wakes_a_waiter() {
        let publisher = Publisher::new(0);
        let mut sub = publisher.subscribe();
        let waiter = tokio::spawn(async move { sub.changed().await });
        tokio::task::yield_now().await;
        drop(publisher);
        assert_eq!(waiter.await.unwrap(), Err(Closed));
    }

    #[tokio::test]
    async fn the_stream_yields_the_current_value_then_the_latest_change() {
        let publisher = Publisher::new(0);
        let mut stream = Box::pin(publisher.subscribe().into_stream());
        assert_eq!(stream.next().await, Some(0));
        publisher.modify(|v| *v = 1);
        publisher.modify(|v| *v = 2);
        assert_eq!(stream.next().await, Some(2));
        drop(publisher);
        assert_eq!(stream.next().await, None);
    }
}
