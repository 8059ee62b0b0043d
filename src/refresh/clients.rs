//! The running set of clients: their store slots and token actors under the supervisor, started
//! from [`ClientSpec`]s and changed in place by a reload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

use crate::oauth::TokenSource;
use crate::refresh::RefreshPolicy;
use crate::refresh::supervisor::{ClientArgs, Supervisor, SupervisorArgs, SupervisorMsg};
use crate::sink::{self, FileSink};
use crate::store::{ClientSlot, Refresher, SlotSettings, TokenStore};

/// One client to run: its name, its slot settings, where its tokens come from, and the file
/// they are also written to.
pub struct ClientSpec {
    pub name: Arc<str>,
    pub settings: SlotSettings,
    pub source: Arc<dyn TokenSource>,
    pub sink: Option<FileSink>,
}

/// The running token actors, under their supervisor, and the store they publish to.
pub struct Clients {
    pub store: Arc<TokenStore>,
    /// Given to every slot: its refresh requests go to the supervisor.
    refresher: Refresher,
    supervisor: ActorRef<SupervisorMsg>,
    task: JoinHandle<()>,
    /// The sources whose requests the shutdown waits for.
    sources: Mutex<Sources>,
    /// The file sink task of each client that has one.
    sinks: Mutex<HashMap<Arc<str>, JoinHandle<()>>>,
    request_timeout: Duration,
}

/// Every client's token source, and those of replaced and removed clients for as long as the
/// shutdown may need to wait for them.
struct Sources {
    all: Vec<Arc<dyn TokenSource>>,
    /// How many were left by the last sweep: the next comes once there are twice as many, so
    /// that sweeping costs O(1) per source added.
    swept: usize,
}

impl Sources {
    fn add(&mut self, source: Arc<dyn TokenSource>) {
        self.all.push(source);
        if self.all.len() > 2 * self.swept {
            // A source only this list holds has no client and no request in flight (a request
            // holds its source): its `idle` would have nothing to wait for, and nothing to say
            // unless its newest refresh token is unsaved.
            self.all
                .retain(|s| Arc::strong_count(s) > 1 || s.unsaved().is_some());
            self.swept = self.all.len();
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start the supervisor: {0}")]
pub struct StartError(String);

impl Clients {
    pub async fn start(specs: Vec<ClientSpec>, policy: &RefreshPolicy) -> Result<Self, StartError> {
        let store = Arc::new(TokenStore::default());
        let (refresher, requests) = Refresher::channel();
        let sources = Sources {
            all: specs.iter().map(|s| s.source.clone()).collect(),
            swept: specs.len(),
        };
        let mut sinks = HashMap::new();
        let clients = specs
            .into_iter()
            .map(|spec| {
                let slot = Arc::new(ClientSlot::new(
                    spec.name,
                    spec.settings,
                    refresher.clone(),
                    store.changed.clone(),
                ));
                store.insert(slot.clone());
                if let Some(sink) = spec.sink {
                    sinks.insert(slot.name.clone(), sink::spawn(&slot, sink));
                }
                ClientArgs {
                    slot,
                    source: spec.source,
                }
            })
            .collect();
        let args = SupervisorArgs {
            clients,
            policy: Arc::new(policy.clone()),
            requests,
        };
        let (supervisor, task) = Actor::spawn(None, Supervisor, args)
            .await
            .map_err(|e| StartError(e.to_string()))?;
        Ok(Self {
            store,
            refresher,
            supervisor,
            task,
            sources: Mutex::new(sources),
            sinks: Mutex::new(sinks),
            request_timeout: policy.request_timeout,
        })
    }

    /// The supervisor, for tests that need to reach its children and the watchdog's ping.
    pub fn supervisor(&self) -> &ActorRef<SupervisorMsg> {
        &self.supervisor
    }

    /// Starts a client's actor on `spec`, replacing any running one. `keep_token`: the client's
    /// slot keeps its token, waiters and streams (only the schedule policy changed); otherwise
    /// it is forgotten and fetched anew, while waiters and streams stay attached.
    pub async fn run(&self, spec: ClientSpec, policy: &Arc<RefreshPolicy>, keep_token: bool) {
        let slot = match self.store.get(&spec.name) {
            Some(slot) => {
                slot.set_settings(spec.settings);
                if !keep_token {
                    slot.reset();
                }
                slot
            }
            None => {
                let slot = Arc::new(ClientSlot::new(
                    spec.name,
                    spec.settings,
                    self.refresher.clone(),
                    self.store.changed.clone(),
                ));
                self.store.insert(slot.clone());
                slot
            }
        };
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(spec.source.clone());
        {
            let mut sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(old) = sinks.remove(&*slot.name) {
                old.abort();
            }
            if let Some(sink) = spec.sink {
                sinks.insert(slot.name.clone(), sink::spawn(&slot, sink));
            }
        }
        let client = ClientArgs {
            slot,
            source: spec.source,
        };
        let _ = ractor::call!(
            self.supervisor,
            SupervisorMsg::Start,
            client,
            policy.clone()
        );
    }

    /// Stops a client and removes it: callers get NOT_FOUND, its streams end.
    pub async fn remove(&self, name: &str) {
        let _ = ractor::call!(self.supervisor, SupervisorMsg::Stop, name.to_string());
        if let Some(sink) = self
            .sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
        {
            sink.abort();
        }
        self.store.remove(name);
    }

    /// Whether the supervisor serves its mailbox and its timer wheel turns: the ping goes
    /// through both (for the systemd watchdog).
    pub async fn responsive(&self, within: Duration) -> bool {
        matches!(
            ractor::call_t!(
                self.supervisor,
                SupervisorMsg::Ping,
                within.as_millis() as u64
            ),
            Ok(())
        )
    }

    /// Resolves if the supervisor stops (it never does before [`Clients::stop`] unless it
    /// failed): without it no client is refreshed again.
    pub async fn stopped(&self) {
        let _ = self.supervisor.wait(None).await;
    }

    /// Stops every actor and waits until they are gone, then for requests still in flight
    /// (bounded by the request timeout): a refresh token rotated by a request already sent
    /// arrives in its reply, and must be saved rather than dropped with the process.
    pub async fn stop(self) {
        self.supervisor.stop(Some("daemon shutting down".into()));
        let _ = self.task.await;
        let sources = self
            .sources
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .all;
        let idle = futures_util::future::join_all(sources.iter().map(|s| s.idle()));
        let _ = tokio::time::timeout(self.request_timeout, idle).await;
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;

    use super::*;
    use crate::oauth::{FetchError, TokenReply};

    struct Fake {
        unsaved: bool,
    }

    impl TokenSource for Fake {
        fn fetch(
            self: Arc<Self>,
        ) -> Pin<Box<dyn Future<Output = Result<TokenReply, FetchError>> + Send>> {
            Box::pin(std::future::pending())
        }

        fn unsaved(&self) -> Option<String> {
            self.unsaved.then(|| "unsaved".into())
        }
    }

    fn fake(unsaved: bool) -> Arc<dyn TokenSource> {
        Arc::new(Fake { unsaved })
    }

    #[test]
    fn reloads_let_replaced_sources_go_unless_busy_or_unsaved() {
        // What the supervisor holds: each client's current source.
        let mut clients = vec![fake(false), fake(true), fake(false)];
        let mut sources = Sources {
            all: clients.clone(),
            swept: clients.len(),
        };
        // A request of the first source is in flight; the second's refresh token is unsaved.
        let in_flight = clients[0].clone();
        let unsaved = Arc::downgrade(&clients[1]);
        for _reload in 0..100 {
            for client in &mut clients {
                *client = fake(false);
                sources.add(client.clone());
                // Three clients and the two replaced sources kept, and at most as many again
                // until the next sweep.
                assert!(sources.all.len() <= 2 * 5, "{}", sources.all.len());
            }
        }
        assert!(sources.all.iter().any(|s| Arc::ptr_eq(s, &in_flight)));
        assert!(unsaved.upgrade().is_some());
    }
}
