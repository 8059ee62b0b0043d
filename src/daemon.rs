//! Wires the parts into a running daemon: listeners (bound, or passed by systemd), the clients
//! from the config, the gRPC services, systemd notifications, reloads on request, and an
//! orderly stop when `shutdown` resolves.

use std::future::Future;
use std::pin::Pin;

use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::clients::{Clients, StartError, client_spec, reconcile};
use crate::config::Config;
use crate::limit::EndpointLimiters;
use crate::listen::{self, ListenError, SocketFile};
use crate::oauth::http_client;
use crate::proto::token_service_server::TokenServiceServer;
use crate::service::TokenServiceImpl;
use crate::systemd::{self, Activated};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot use the sockets systemd passed: {0}")]
    Activation(std::io::Error),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

type Server = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// Runs the daemon until `shutdown` resolves; each item of `reloads` (SIGHUP) re-reads the
/// config file.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
    mut reloads: impl Stream<Item = ()> + Send + Unpin,
) -> Result<(), RunError> {
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

    let metrics = match config.metrics.listen {
        Some(addr) => Some(tokio::spawn(crate::metrics::serve(
            listen::bind_tcp(addr).await?,
        ))),
        None => None,
    };

    let http = http_client();
    let mut limiters = EndpointLimiters::new(
        config.refresh.endpoint_concurrency,
        config.refresh.endpoint_spacing,
    );
    let specs = config
        .clients
        .keys()
        .map(|name| client_spec(&config, name, &http, &mut limiters))
        .collect();
    let clients = Clients::start(specs, &config.refresh).await?;
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
    );
    let mut servers: Vec<Server> = Vec::new();
    for listener in unix {
        let incoming = crate::authority::fix_incoming(UnixListenerStream::new(listener));
        let router = router(&service).await;
        let stop = stopping.clone().cancelled_owned();
        servers.push(Box::pin(
            router.serve_with_incoming_shutdown(incoming, stop),
        ));
    }
    for listener in tcp {
        let router = router(&service).await;
        let stop = stopping.clone().cancelled_owned();
        servers.push(Box::pin(router.serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            stop,
        )));
    }
    let mut servers = futures_util::future::try_join_all(servers);
    let status = tokio::spawn(systemd::report_status(
        clients.store.clone(),
        config.server.startup_timeout,
    ));
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
                r = &mut servers => break r.map(drop),
                () = &mut shutdown => {
                    info!("shutting down");
                    systemd::stopping();
                    stopping.cancel();
                    break servers.await.map(drop);
                }
                Some(()) = reloads.next() => match idle.take() {
                    Some((running, limiters)) => {
                        reloading = Some(Box::pin(reload(running, &clients, &http, limiters)));
                    }
                    None => {
                        info!("reload requested while one is running; it follows when that one is done");
                        reload_again = true;
                    }
                },
                (running, limiters) = async { reloading.as_mut().expect("guarded").await }, if reloading.is_some() => {
                    reloading = None;
                    if std::mem::take(&mut reload_again) {
                        reloading = Some(Box::pin(reload(running, &clients, &http, limiters)));
                    } else {
                        idle = Some((running, limiters));
                    }
                }
                () = &mut watchdog => {}
            }
        }
    };
    status.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    clients.stop().await;
    result.map_err(RunError::from)
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
                let changes = reconcile(clients, &running, &new, http, &mut limiters).await;
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
/// `grpcurl -unix SOCKET list` works without the proto file).
async fn router(service: &TokenServiceImpl) -> tonic::transport::server::Router {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<TokenServiceServer<TokenServiceImpl>>()
        .await;
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
    tonic::transport::Server::builder()
        .add_service(TokenServiceServer::new(service.clone()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
}
