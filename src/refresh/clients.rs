//! The running set of clients: their store slots and token actors under the supervisor, built
//! from the config at start and changed in place by a reload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

use crate::config::{ClientConfig, Config, Grant, RefreshPolicy};
use crate::oauth::budget::EndpointLimiters;
use crate::oauth::{HttpTokenSource, TokenSource};
use crate::refresh::actor::TokenArgs;
use crate::refresh::supervisor::{Supervisor, SupervisorArgs, SupervisorMsg};
use crate::serve::access::Access;
use crate::sink::{self, FileSink};
use crate::store::{ClientSlot, Refresher, SlotSettings, TokenStore};

/// One client to run: its name, its slot settings, where its tokens come from, and the file
/// they are also written to.
pub struct ClientSpec {
    pub name: String,
    pub settings: SlotSettings,
    pub source: Arc<dyn TokenSource>,
    pub sink: Option<FileSink>,
}

/// The slot settings of a configured client (validated config: names resolve).
pub fn settings_of(config: &Config, name: &str, c: &ClientConfig) -> SlotSettings {
    SlotSettings {
        grant: c.grant,
        authorize_command: (c.grant == Grant::RefreshToken).then(|| {
            let path = config
                .source_path
                .as_ref()
                .map_or("CONFIG".into(), |p| p.display().to_string());
            format!("tokend authorize {name} --config {path}")
        }),
        // Validated at load; should a user or group have vanished since, fail closed: root only.
        access: Access::resolve(&c.allowed_users, &c.allowed_groups, c.allow_tcp)
            .unwrap_or_else(|_| Access::resolve(&["0".into()], &[], false).expect("uid 0")),
        required: c.required,
        min_interval: config.refresh.min_interval,
    }
}

/// Builds specs for configured clients over `http`; clients of one token endpoint share that
/// endpoint's request budget in `limiters` (kept across reloads).
pub fn client_spec(
    config: &Config,
    name: &str,
    http: &reqwest::Client,
    limiters: &mut EndpointLimiters,
) -> ClientSpec {
    let c = &config.clients[name];
    ClientSpec {
        name: name.to_string(),
        settings: settings_of(config, name, c),
        // Validated at load, as for the access lists.
        sink: c.file_sink.as_ref().and_then(|s| s.resolve().ok()),
        source: Arc::new(HttpTokenSource::new(
            http.clone(),
            name,
            c.clone(),
            &config.refresh,
            limiters.for_endpoint(&c.token_endpoint),
        )),
    }
}

/// Specs for every configured client.
pub fn client_specs(config: &Config, http: &reqwest::Client) -> Vec<ClientSpec> {
    let mut limiters = EndpointLimiters::new(
        config.refresh.endpoint_concurrency,
        config.refresh.endpoint_spacing,
    );
    config
        .clients
        .keys()
        .map(|name| client_spec(config, name, http, &mut limiters))
        .collect()
}

/// The running token actors, under their supervisor, and the store they publish to.
pub struct Clients {
    pub store: Arc<TokenStore>,
    /// Given to every slot: its refresh requests go to the supervisor.
    refresher: Refresher,
    supervisor: ActorRef<SupervisorMsg>,
    task: JoinHandle<()>,
    /// Every source ever started, to wait for their requests at shutdown.
    sources: Mutex<Vec<Arc<dyn TokenSource>>>,
    /// The file sink task of each client that has one.
    sinks: Mutex<HashMap<String, JoinHandle<()>>>,
    request_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start the supervisor: {0}")]
pub struct StartError(String);

impl Clients {
    pub async fn start(specs: Vec<ClientSpec>, policy: &RefreshPolicy) -> Result<Self, StartError> {
        let store = Arc::new(TokenStore::default());
        let (refresher, requests) = Refresher::channel();
        let policy = Arc::new(policy.clone());
        let sources = specs.iter().map(|s| s.source.clone()).collect();
        let mut sinks = HashMap::new();
        let args = specs
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
                TokenArgs {
                    slot,
                    source: spec.source,
                    policy: policy.clone(),
                }
            })
            .collect();
        let args = SupervisorArgs {
            clients: args,
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
            .push(spec.source.clone());
        {
            let mut sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(old) = sinks.remove(&slot.name) {
                old.abort();
            }
            if let Some(sink) = spec.sink {
                sinks.insert(slot.name.clone(), sink::spawn(&slot, sink));
            }
        }
        let args = TokenArgs {
            slot,
            source: spec.source,
            policy: policy.clone(),
        };
        let _ = ractor::call!(self.supervisor, SupervisorMsg::Start, args);
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
        if let Some(slot) = self.store.remove(name) {
            crate::metrics::METRICS.forget(name, slot.view().state);
        }
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
        let sources = std::mem::take(&mut *self.sources.lock().unwrap_or_else(|e| e.into_inner()));
        let idle = futures_util::future::join_all(sources.iter().map(|s| s.idle()));
        let _ = tokio::time::timeout(self.request_timeout, idle).await;
    }
}

/// What a reload changed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub refetched: Vec<String>,
    pub rescheduled: Vec<String>,
    pub updated: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

/// Applies the difference between `old` and `new` (both validated) to the running clients:
/// added clients start, removed ones stop, clients whose fetch settings changed fetch anew,
/// a changed refresh policy restarts actors but keeps their tokens, and changes to who may
/// read a token apply in place. Untouched clients keep their tokens and streams.
pub async fn reconcile(
    clients: &Clients,
    old: &Config,
    new: &Config,
    http: &reqwest::Client,
    limiters: &mut EndpointLimiters,
) -> Changes {
    let mut changes = Changes::default();
    for name in old.clients.keys().filter(|n| !new.clients.contains_key(*n)) {
        clients.remove(name).await;
        changes.removed.push(name.clone());
    }
    let policy_changed = old.refresh != new.refresh;
    // One copy for every client the reload starts.
    let policy = Arc::new(new.refresh.clone());
    for (name, c) in &new.clients {
        let mut spec = || client_spec(new, name, http, limiters);
        match old.clients.get(name) {
            None => {
                clients.run(spec(), &policy, false).await;
                changes.added.push(name.clone());
            }
            Some(before) if before.fetch_settings() != c.fetch_settings() => {
                clients.run(spec(), &policy, false).await;
                changes.refetched.push(name.clone());
            }
            Some(_) if policy_changed => {
                clients.run(spec(), &policy, true).await;
                changes.rescheduled.push(name.clone());
            }
            Some(before) => {
                let (was, now) = (settings_of(old, name, before), settings_of(new, name, c));
                if was.access != now.access || was.required != now.required {
                    if let Some(slot) = clients.store.get(name) {
                        slot.set_settings(now);
                    }
                    changes.updated.push(name.clone());
                }
            }
        }
    }
    changes
}
