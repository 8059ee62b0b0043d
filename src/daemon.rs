//! Wires the parts into a running daemon: store slots and the supervisor from the config, the
//! gRPC services on the listeners, and an orderly stop when `shutdown` resolves.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ractor::Actor;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tracing::info;

use ractor::ActorRef;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::actor::TokenArgs;
use crate::config::{Config, Grant, RefreshPolicy};
use crate::limit::EndpointLimiters;
use crate::listen::{self, ListenError, SocketFile};
use crate::oauth::{HttpTokenSource, TokenSource, http_client};
use crate::proto::token_service_server::TokenServiceServer;
use crate::service::TokenServiceImpl;
use crate::store::{ClientSlot, TokenStore};
use crate::supervisor::{Supervisor, SupervisorMsg};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot start the supervisor: {0}")]
    Supervisor(String),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Runs the daemon until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    // Bind first: a daemon that cannot be reached should fail before it fetches anything.
    let (unix, _socket_file) = SocketFile::bind(&config.server.socket, config.socket_mode())?;
    let tcp = match config.server.tcp {
        Some(addr) => Some(listen::bind_tcp(addr).await?),
        None => None,
    };

    let specs = client_specs(&config, &http_client());
    let clients = Clients::start(specs, &config.refresh).await?;

    info!(
        socket = %config.server.socket.display(),
        tcp = ?config.server.tcp,
        clients = config.clients.len(),
        "tokend serving"
    );
    let stopping = CancellationToken::new();
    let service = TokenServiceImpl::new(
        clients.store.clone(),
        config.server.default_wait,
        stopping.clone(),
    );
    let unix_server = router(&service).await.serve_with_incoming_shutdown(
        crate::authority::fix_incoming(UnixListenerStream::new(unix)),
        stopping.clone().cancelled_owned(),
    );
    let tcp_server = async {
        match tcp {
            Some(listener) => {
                router(&service)
                    .await
                    .serve_with_incoming_shutdown(
                        TcpListenerStream::new(listener),
                        stopping.clone().cancelled_owned(),
                    )
                    .await
            }
            None => Ok(()),
        }
    };
    let servers = async { tokio::try_join!(unix_server, tcp_server) };
    tokio::pin!(servers);
    let result = tokio::select! {
        r = &mut servers => r.map(drop),
        () = shutdown => {
            info!("shutting down");
            stopping.cancel();
            servers.await.map(drop)
        }
    };
    clients.stop().await;
    result.map_err(RunError::from)
}

/// A token source per configured client, fetching over `http`; clients of one token endpoint
/// share that endpoint's request budget.
pub fn client_specs(config: &Config, http: &reqwest::Client) -> Vec<ClientSpec> {
    let mut limiters = EndpointLimiters::new(
        config.refresh.endpoint_concurrency,
        config.refresh.endpoint_spacing,
    );
    config
        .clients
        .iter()
        .map(|(name, c)| ClientSpec {
            name: name.clone(),
            grant: c.grant,
            authorize_command: (c.grant == Grant::RefreshToken).then(|| {
                let config = config
                    .source_path
                    .as_ref()
                    .map_or("CONFIG".into(), |p| p.display().to_string());
                format!("tokend authorize {name} --config {config}")
            }),
            source: Arc::new(HttpTokenSource::new(
                http.clone(),
                c.clone(),
                &config.refresh,
                limiters.for_endpoint(&c.token_endpoint),
            )),
        })
        .collect()
}

/// One client to run: its name, grant, and where its tokens come from.
pub struct ClientSpec {
    pub name: String,
    pub grant: Grant,
    /// What an operator runs when a refresh-token client must be authorized again.
    pub authorize_command: Option<String>,
    pub source: Arc<dyn TokenSource>,
}

/// The running token actors, under their supervisor, and the store they publish to.
pub struct Clients {
    pub store: Arc<TokenStore>,
    supervisor: ActorRef<SupervisorMsg>,
    task: JoinHandle<()>,
    sources: Vec<Arc<dyn TokenSource>>,
    request_timeout: Duration,
}

impl Clients {
    pub async fn start(specs: Vec<ClientSpec>, policy: &RefreshPolicy) -> Result<Self, RunError> {
        let slots: Vec<Arc<ClientSlot>> = specs
            .iter()
            .map(|s| {
                Arc::new(ClientSlot::new(
                    s.name.clone(),
                    s.grant,
                    s.authorize_command.clone(),
                ))
            })
            .collect();
        let sources = specs.iter().map(|s| s.source.clone()).collect();
        let args = specs
            .into_iter()
            .zip(&slots)
            .map(|(spec, slot)| TokenArgs {
                slot: slot.clone(),
                source: spec.source,
                policy: policy.clone(),
            })
            .collect();
        let (supervisor, task) = Actor::spawn(None, Supervisor, args)
            .await
            .map_err(|e| RunError::Supervisor(e.to_string()))?;
        Ok(Self {
            store: Arc::new(TokenStore::new(slots)),
            supervisor,
            task,
            sources,
            request_timeout: policy.request_timeout,
        })
    }

    /// The supervisor, for tests that need to reach its children.
    pub fn supervisor(&self) -> &ActorRef<SupervisorMsg> {
        &self.supervisor
    }

    /// Stops every actor and waits until they are gone, then for requests still in flight
    /// (bounded by the request timeout): a refresh token rotated by a request already sent
    /// arrives in its reply, and must be saved rather than dropped with the process.
    pub async fn stop(self) {
        self.supervisor.stop(Some("daemon shutting down".into()));
        let _ = self.task.await;
        let idle = futures_util::future::join_all(self.sources.iter().map(|s| s.idle()));
        let _ = tokio::time::timeout(self.request_timeout, idle).await;
    }
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
