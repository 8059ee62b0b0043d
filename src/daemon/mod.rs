//! Wires the parts into a running daemon: listeners (bound, or passed by systemd), the clients
//! from the config, the gRPC services, systemd notifications, reloads on request, and an
//! orderly stop when `shutdown` resolves.

pub mod plan;
pub mod systemd;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use futures_util::FutureExt;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{TcpConnectInfo, UdsConnectInfo};
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthService;
use tracing::{error, info, warn};

use crate::config::{Config, ServerConfig};
use crate::oauth::budget::EndpointLimiters;
use crate::oauth::http_client;
use crate::panics::panic_text;
use crate::proto_server::token_service_server::TokenServiceServer;
use crate::refresh::clients::{Clients, StartError};
use crate::serve::connections::{Connections, MAX_REQUEST_BYTES, NoRoom};
use crate::serve::listen::{self, ListenError, SocketFile};
use crate::serve::service::TokenServiceImpl;
use systemd::Activated;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot use the sockets systemd passed: {0}")]
    Activation(std::io::Error),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    NoRoom(#[from] NoRoom),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ProxyError),
    #[error("{task} stopped: {why}")]
    TaskDied { task: &'static str, why: String },
}

/// The daemon's long-lived tasks. None of them ends while the daemon runs, so one that does
/// (returned or panicked) is fatal: it is named in the error, and the daemon exits non-zero so
/// that systemd restarts it, instead of running on without it. Dropping the set aborts them.
#[derive(Default)]
struct Tasks(tokio::task::JoinSet<(&'static str, String)>);

impl Tasks {
    /// Runs `task`; the text it returns (or its panic's) says why it ended.
    fn spawn(&mut self, name: &'static str, task: impl Future<Output = String> + Send + 'static) {
        self.0.spawn(async move {
            let why = match AssertUnwindSafe(task).catch_unwind().await {
                Ok(why) => why,
                Err(panic) => format!("panicked: {}", panic_text(&*panic)),
            };
            (name, why)
        });
    }

    /// The first task to end, and why; pending while none has (or there are none).
    async fn ended(&mut self) -> RunError {
        match self.0.join_next().await {
            Some(Ok((task, why))) => RunError::TaskDied { task, why },
            Some(Err(e)) => RunError::TaskDied {
                task: "an internal task",
                why: e.to_string(),
            },
            None => std::future::pending().await,
        }
    }
}

type Server = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// Runs the daemon until `shutdown` resolves; each item of `reloads` (SIGHUP) re-reads the
/// config file.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
    mut reloads: impl Stream<Item = ()> + Send + Unpin,
) -> Result<(), RunError> {
    // The connection caps depend on the descriptor limit, raised here.
    let connections = Connections::new(
        &plan::connections(&config.server),
        crate::serve::connections::raise_fd_limit(),
    )?;
    // Listeners first: a daemon that cannot be reached should fail before it fetches anything.
    let activated = systemd::activated_listeners().map_err(RunError::Activation)?;
    let mut unix = Vec::new();
    let mut tcp = Vec::new();
    let mut _socket_file = None;
    if activated.is_empty() {
        let (listener, file) = SocketFile::bind(&config.server.socket, config.socket_mode())?;
        unix.push(listener);
        _socket_file = Some(file);
        if let Some(addr) = config.server.tcp {
            tcp.push(listen::bind_tcp(addr).await?);
        }
    } else {
        for listener in activated {
            match listener {
                Activated::Unix(l) => unix.push(l),
                Activated::Tcp(l) => tcp.push(l),
            }
        }
    }

    let routes = crate::proxy::Routes::bind(&config.proxy).await?;

    let mut tasks = Tasks::default();
    let metrics = crate::serve::metrics_http::bind(
        config.metrics.listen,
        config.metrics.socket.as_deref(),
        config.metrics.socket_mode(),
    )
    .await?;

    let http = http_client();
    let (specs, limiters) = plan::client_specs(&config, &http);
    let clients = Clients::start(specs, &config.refresh).await?;
    if !metrics.is_empty() {
        let store = clients.store.clone();
        tasks.spawn("the metrics listener", async move {
            match crate::serve::metrics_http::serve(metrics, store).await {
                Ok(()) => "it stopped serving".into(),
                Err(e) => e.to_string(),
            }
        });
    }
    info!(
        socket = %config.server.socket.display(),
        socket_activated = _socket_file.is_none(),
        tcp = tcp.len(),
        clients = config.clients.len(),
        "tokend serving"
    );

    let stopping = CancellationToken::new();
    let service = TokenServiceImpl::new(
        clients.store.clone(),
        config.server.default_wait,
        stopping.clone(),
    )
    .with_limits(plan::call_limits(&config.server));
    // One reporter for every listener, so that all answer the same.
    let health = tonic_health::server::HealthReporter::new();
    let health_service = HealthServer::new(HealthService::from_health_reporter(health.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    tasks.spawn("health reporting", {
        let store = clients.store.clone();
        async move {
            crate::serve::health::report(store, health).await;
            "it returned".into()
        }
    });
    if !routes.is_empty() {
        tasks.spawn(
            "the proxy routes",
            routes.serve(service.clone(), stopping.clone()),
        );
    }
    let mut servers: Vec<Server> = Vec::new();
    for listener in unix {
        let incoming = crate::serve::h2_authority::fix_incoming(connections.incoming(listener));
        let router = router::<UdsConnectInfo>(&service, &config.server, &health_service);
        let stop = stopping.clone().cancelled_owned();
        servers.push(Box::pin(
            router.serve_with_incoming_shutdown(incoming, stop),
        ));
    }
    for listener in tcp {
        let router = router::<TcpConnectInfo>(&service, &config.server, &health_service);
        let stop = stopping.clone().cancelled_owned();
        servers.push(Box::pin(
            router.serve_with_incoming_shutdown(connections.incoming(listener), stop),
        ));
    }
    let mut servers = futures_util::future::try_join_all(servers);
    let status = systemd::report_status(clients.store.clone(), config.server.startup_timeout);
    tasks.spawn("systemd status reporting", async move {
        status.await;
        "it returned".into()
    });
    let result = {
        let watchdog = systemd::watchdog(&clients);
        tokio::pin!(shutdown, watchdog);
        // At most one reload runs at a time, as a future of this loop rather than a step of
        // it: while it waits for files, listeners keep accepting and SIGTERM is heard. It owns
        // the running config and the limiters until it is done (`idle` holds them meanwhile).
        // A SIGHUP during a reload asks for one more, which reads the file as it is by then.
        let mut idle = Some((config, limiters));
        let mut reloading: Option<Pin<Box<dyn Future<Output = _> + Send + '_>>> = None;
        let mut reload_again = false;
        loop {
            tokio::select! {
                r = &mut servers => break match r {
                    Ok(_) => Err(RunError::TaskDied {
                        task: "the gRPC listeners",
                        why: "they stopped accepting connections".into(),
                    }),
                    Err(e) => Err(e.into()),
                },
                () = &mut shutdown => {
                    info!("shutting down");
                    systemd::stopping();
                    stopping.cancel();
                    break servers.await.map(drop).map_err(RunError::from);
                }
                reload_requested = reloads.next() => match reload_requested {
                    Some(()) => match idle.take() {
                        Some((running, limiters)) => {
                            reloading = Some(Box::pin(reload(running, &clients, &http, limiters)));
                        }
                        None => {
                            info!("reload requested while one is running; it follows when that one is done");
                            reload_again = true;
                        }
                    },
                    None => break Err(RunError::TaskDied {
                        task: "reload signal handling",
                        why: "the stream of reload requests ended".into(),
                    }),
                },
                (running, limiters) = async { reloading.as_mut().expect("guarded").await }, if reloading.is_some() => {
                    reloading = None;
                    if std::mem::take(&mut reload_again) {
                        reloading = Some(Box::pin(reload(running, &clients, &http, limiters)));
                    } else {
                        idle = Some((running, limiters));
                    }
                }
                () = clients.stopped() => break Err(RunError::TaskDied {
                    task: "the client supervisor",
                    why: "no client would be refreshed again".into(),
                }),
                e = tasks.ended() => break Err(e),
                () = &mut watchdog => {}
            }
        }
    };
    if let Err(e) = &result {
        error!("{e}; exiting so that the service manager restarts tokend");
    }
    drop(tasks);
    clients.stop().await;
    result
}

/// Re-reads the config file (off the async workers: see [`Config::load_async`]). A bad one is
/// reported and changes nothing; a good one is applied client by client. Server settings
/// (sockets) take effect at the next start.
async fn reload(
    mut running: Config,
    clients: &Clients,
    http: &reqwest::Client,
    mut limiters: EndpointLimiters,
) -> (Config, EndpointLimiters) {
    systemd::reloading();
    match running.source_path.clone() {
        None => warn!("reload requested, but this daemon was not started from a config file"),
        Some(path) => match Config::load_async(&path).await {
            Err(e) => error!("reload failed; the running configuration stays in effect: {e}"),
            Ok(mut new) => {
                if new.server != running.server {
                    warn!("[server] settings changed; they take effect when tokend restarts");
                    new.server = running.server.clone();
                }
                if new.proxy != running.proxy {
                    warn!("[proxy] routes changed; they take effect when tokend restarts");
                    new.proxy = running.proxy.clone();
                }
                // The running routes keep their clients.
                if let Some((route, r)) = running
                    .proxy
                    .iter()
                    .find(|(_, r)| !new.clients.contains_key(r.client.as_str()))
                {
                    error!(
                        "reload failed; the running configuration stays in effect: proxy.{route} sends client {:?}'s token, which the new configuration removes (change the route, then restart)",
                        r.client
                    );
                    systemd::ready_again(&clients.store);
                    return (running, limiters);
                }
                let changes = plan::reconcile(clients, &running, &new, http, &mut limiters).await;
                info!(
                    added = ?changes.added,
                    removed = ?changes.removed,
                    refetched = ?changes.refetched,
                    rescheduled = ?changes.rescheduled,
                    access_updated = ?changes.updated,
                    "configuration reloaded"
                );
                running = new;
            }
        },
    }
    systemd::ready_again(&clients.store);
    (running, limiters)
}

/// The services every listener offers: tokend's own, standard health, and reflection (so
/// `grpcurl -unix SOCKET list` works without the proto file). `I` is the listener's connect
/// info.
fn router<I: Clone + Send + Sync + 'static>(
    service: &TokenServiceImpl,
    server: &ServerConfig,
    health: &HealthServer<HealthService>,
) -> tonic::transport::server::Router<crate::serve::connections::Layers<I>> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("embedded descriptors are valid");
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("embedded descriptors are valid");
    crate::serve::connections::server::<I>(&plan::connections(server))
        .add_service(
            TokenServiceServer::new(service.clone()).max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(health.clone())
        .add_service(reflection.max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(reflection_alpha.max_decoding_message_size(MAX_REQUEST_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_or_returns_is_named_with_why() {
        let mut tasks = Tasks::default();
        tasks.spawn("the forever task", std::future::pending());
        tasks.spawn("the panicking task", async { panic!("index out of range") });
        match tasks.ended().await {
            RunError::TaskDied { task, why } => {
                assert_eq!(task, "the panicking task");
                assert_eq!(why, "panicked: index out of range");
            }
            e => panic!("{e}"),
        }
        tasks.spawn("the returning task", async { "it returned".to_string() });
        let e = tasks.ended().await.to_string();
        assert_eq!(e, "the returning task stopped: it returned");
    }
}
