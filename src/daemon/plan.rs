//! The config turned into what each component takes: the one place that knows both. Components
//! own their settings types and never read the config. Where a type's shape is the file's, the
//! config parses straight into it (a client's `oauth::ClientSettings`, `RefreshPolicy`); the
//! rest is built here.

use std::sync::{Arc, Mutex};

use tracing::error;

use crate::access::Access;
use crate::attest::kubelet::{Kubelet, Settings as KubeletSettings};
use crate::config::{ClientConfig, Config, ServerConfig};
use crate::oauth::budget::EndpointLimiters;
use crate::oauth::{Grant, HttpTokenSource, RequestSettings};
use crate::refresh::RefreshPolicy;
use crate::refresh::clients::{ClientSpec, Clients};
use crate::serve::call_limits::{self, CallLimits};
use crate::serve::connections;
use crate::store::SlotSettings;

/// How every token request is made.
pub fn request_settings(policy: &RefreshPolicy) -> Arc<RequestSettings> {
    Arc::new(RequestSettings {
        timeout: policy.request_timeout,
        default_lifetime: policy.default_lifetime,
        operator_retry: policy.operator_retry,
    })
}

/// The caps of the gRPC service.
pub fn call_limits(server: &ServerConfig) -> CallLimits {
    CallLimits::of(&call_limits::Settings {
        max_wait: server.max_wait,
        max_watch_streams: server.max_watch_streams,
        max_watch_streams_per_uid: server.max_watch_streams_per_uid,
        max_waiting_calls: server.max_waiting_calls,
        max_waiting_calls_per_uid: server.max_waiting_calls_per_uid,
    })
}

/// The limits on callers' connections.
pub fn connections(server: &ServerConfig) -> connections::Settings {
    connections::Settings {
        max_connections: server.max_connections,
        max_connections_per_uid: server.max_connections_per_uid,
        handshake_timeout: server.handshake_timeout,
        idle_timeout: server.idle_timeout,
        max_concurrent_streams: server.max_concurrent_streams,
    }
}

/// The slot settings of a configured client (validated config: names resolve); its pod rules
/// ask `kubelet` (see [`kubelet`]).
pub fn settings_of(
    config: &Config,
    name: &str,
    c: &ClientConfig,
    kubelet: Option<&Arc<Kubelet>>,
) -> SlotSettings {
    SlotSettings {
        grant: c.oauth.grant,
        authorize_command: (c.oauth.grant == Grant::RefreshToken).then(|| {
            let path = config
                .source_path
                .as_ref()
                .map_or("CONFIG".into(), |p| p.display().to_string());
            format!("tokend authorize {name} --config {path}")
        }),
        // Validated at load; should a user or group have vanished since, fail closed: root only.
        access: Access::resolve(c.access_rules(), kubelet).unwrap_or_else(|_| {
            let root = ["0".to_string()];
            let rules = crate::access::Rules {
                allowed_users: &root,
                ..Default::default()
            };
            Access::resolve(rules, None).expect("uid 0")
        }),
        required: c.required,
        min_interval: config.refresh.min_interval,
    }
}

/// The kubelet that pod selectors ask, if any client has one: one client for as long as the
/// `[kubernetes]` settings stay the same (reloads keep its pod list). A kubelet client that
/// cannot be made (its CA file unreadable) is reported and no pod is found: pod rules fail
/// closed until a reload. Asked once per config, not per client.
pub fn kubelet(config: &Config) -> Option<Arc<Kubelet>> {
    static CURRENT: Mutex<Option<(KubeletSettings, Option<Arc<Kubelet>>)>> = Mutex::new(None);
    if !config.names_pods() {
        return None;
    }
    let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((settings, kubelet)) = current.as_ref()
        && *settings == config.kubernetes
    {
        return kubelet.clone();
    }
    let kubelet = match Kubelet::new(&config.kubernetes) {
        Ok(k) => Some(Arc::new(k)),
        Err(e) => {
            error!("pod selectors cannot be answered, so they let no caller in: {e}");
            None
        }
    };
    *current = Some((config.kubernetes.clone(), kubelet.clone()));
    kubelet
}

/// Builds specs for configured clients over `http`; clients of one token endpoint share that
/// endpoint's request budget in `limiters` (kept across reloads), and every client the
/// `requests` timings ([`request_settings`] of the config).
pub fn client_spec(
    config: &Config,
    name: &Arc<str>,
    http: &reqwest::Client,
    limiters: &mut EndpointLimiters,
    requests: &Arc<RequestSettings>,
    kubelet: Option<&Arc<Kubelet>>,
) -> ClientSpec {
    let c = &config.clients[name];
    ClientSpec {
        name: name.clone(),
        settings: settings_of(config, name, c, kubelet),
        // Validated at load, as for the access lists.
        sink: c.file_sink.as_ref().and_then(|s| s.resolve().ok()),
        source: Arc::new(HttpTokenSource::new(
            http.clone(),
            name.clone(),
            c.oauth.clone(),
            requests.clone(),
            limiters.for_endpoint(c.oauth.endpoint_key()),
        )),
    }
}

/// Specs for every configured client, and the endpoints' request budgets they share (which
/// the daemon keeps across reloads).
pub fn client_specs(
    config: &Config,
    http: &reqwest::Client,
) -> (Vec<ClientSpec>, EndpointLimiters) {
    let mut limiters = EndpointLimiters::new(
        config.refresh.endpoint_concurrency,
        config.refresh.endpoint_spacing,
    );
    let kubelet = kubelet(config);
    let requests = request_settings(&config.refresh);
    let specs = config
        .clients
        .keys()
        .map(|name| {
            client_spec(
                config,
                name,
                http,
                &mut limiters,
                &requests,
                kubelet.as_ref(),
            )
        })
        .collect();
    (specs, limiters)
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
        changes.removed.push(name.to_string());
    }
    let policy_changed = old.refresh != new.refresh;
    let kubelet = kubelet(new);
    // One copy for every client the reload starts.
    let policy = Arc::new(new.refresh.clone());
    let requests = request_settings(&new.refresh);
    for (name, c) in &new.clients {
        let mut spec = || client_spec(new, name, http, limiters, &requests, kubelet.as_ref());
        match old.clients.get(name) {
            None => {
                clients.run(spec(), &policy, false).await;
                changes.added.push(name.to_string());
            }
            Some(before) if before.fetch_settings() != c.fetch_settings() => {
                clients.run(spec(), &policy, false).await;
                changes.refetched.push(name.to_string());
            }
            Some(_) if policy_changed => {
                clients.run(spec(), &policy, true).await;
                changes.rescheduled.push(name.to_string());
            }
            Some(before) => {
                // Compared by their rules: which kubelet answers is `kubelet_changed`'s.
                let was = settings_of(old, name, before, None);
                let now = settings_of(new, name, c, kubelet.as_ref());
                let kubelet_changed = old.kubernetes != new.kubernetes
                    && c.access_rules().allow.iter().any(|e| e.names_pods());
                if was.access != now.access || was.required != now.required || kubelet_changed {
                    if let Some(slot) = clients.store.get(name) {
                        slot.set_settings(now);
                    }
                    changes.updated.push(name.to_string());
                }
            }
        }
    }
    changes
}
