//! The daemon's parts in this process (clients, supervisor, the gRPC service without a socket),
//! for tests on tokio's paused clock: built from a config file as `tokend serve` builds them, or
//! from client specs with a token source of the test's own.

use std::path::Path;
use std::time::Duration;

use tokend::Config;
use tokend::config::ServerConfig;
use tokend::proto::{self, GetTokenRequest, ListClientsRequest};
use tokend::testing::RefreshPolicy;
use tokend::testing::{ClientSpec, Clients};
use tokend::testing::{TokenService, TokenServiceImpl};
use tokend::testing::{call_limits, client_specs};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Request;

use super::secret_file;

pub struct InProcess {
    pub service: TokenServiceImpl,
    pub clients: Clients,
    /// Just before the clients started: the zero of the times a test measures.
    pub t0: Instant,
    /// The config and secret files, when [`InProcess::start_on`] wrote them.
    _dir: Option<tempfile::TempDir>,
}

/// A `[clients.NAME]` table: `name` on `token_endpoint`, its client id its name, its secret in
/// `secret_file`.
pub fn client_table(name: &str, token_endpoint: &str, secret_file: &Path) -> String {
    format!(
        "[clients.{name}]\ntoken_endpoint = \"{token_endpoint}\"\nclient_id = \"{name}\"\nclient_secret_file = \"{}\"\n",
        secret_file.display()
    )
}

/// Writes `toml` to `dir/tokend.toml` and loads it (without environment overrides).
pub fn load_config(dir: &Path, toml: &str) -> Config {
    let path = dir.join("tokend.toml");
    std::fs::write(&path, toml).unwrap();
    Config::load_with_env(&path, []).unwrap()
}

impl InProcess {
    /// Every client of `names` on `token_endpoint`; `settings`: TOML put before the client
    /// tables (`[server]` and `[refresh]` keys).
    pub async fn start(token_endpoint: &str, names: &[&str], settings: &str) -> InProcess {
        let clients: Vec<_> = names.iter().map(|name| (*name, token_endpoint)).collect();
        Self::start_on(&clients, settings).await
    }

    /// Each client `(name, token_endpoint)` of `clients`, all with the secret `s3cret`; as
    /// [`InProcess::start`] otherwise.
    pub async fn start_on(clients: &[(&str, &str)], settings: &str) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let secret = secret_file(dir.path(), "secret", "s3cret");
        let mut toml = format!("{settings}\n");
        for (name, token_endpoint) in clients {
            toml.push_str(&client_table(name, token_endpoint, &secret));
        }
        let config = load_config(dir.path(), &toml);
        InProcess {
            _dir: Some(dir),
            ..Self::from_config(&config).await
        }
    }

    /// The clients of `config`, as the daemon starts them.
    pub async fn from_config(config: &Config) -> InProcess {
        let (specs, _) = client_specs(config, &tokend::testing::http_client());
        Self::build(specs, &config.refresh, &config.server).await
    }

    /// The clients of `specs`, served with the `[server]` defaults.
    pub async fn from_specs(specs: Vec<ClientSpec>, policy: &RefreshPolicy) -> InProcess {
        Self::build(specs, policy, &ServerConfig::default()).await
    }

    async fn build(
        specs: Vec<ClientSpec>,
        policy: &RefreshPolicy,
        server: &ServerConfig,
    ) -> InProcess {
        let t0 = Instant::now();
        let clients = Clients::start(specs, policy).await.unwrap();
        let service = TokenServiceImpl::new(
            clients.store.clone(),
            server.default_wait,
            CancellationToken::new(),
        )
        .with_limits(call_limits(server));
        InProcess {
            service,
            clients,
            t0,
            _dir: None,
        }
    }

    /// GetToken for `client`, wanting `min_valid_seconds` of validity left.
    pub async fn get(
        &self,
        client: &str,
        min_valid_seconds: u32,
    ) -> Result<proto::Token, tonic::Status> {
        self.get_token(get_request(client, min_valid_seconds)).await
    }

    /// GetToken for `client`, with a deadline (`grpc-timeout`) of `deadline`.
    pub async fn get_within(
        &self,
        client: &str,
        deadline: Duration,
    ) -> Result<proto::Token, tonic::Status> {
        let mut request = get_request(client, 0);
        request.set_timeout(deadline);
        self.get_token(request).await
    }

    async fn get_token(
        &self,
        request: Request<GetTokenRequest>,
    ) -> Result<proto::Token, tonic::Status> {
        self.service
            .get_token(request)
            .await
            .map(|r| r.into_inner().to_proto())
    }

    /// What ListClients says of `client`.
    pub async fn status(&self, client: &str) -> proto::ClientStatus {
        let list = self
            .service
            .list_clients(Request::new(ListClientsRequest {}))
            .await
            .unwrap()
            .into_inner();
        list.clients
            .into_iter()
            .find(|c| c.client == client)
            .unwrap_or_else(|| panic!("ListClients has no {client}"))
    }

    /// Seconds since [`InProcess::t0`].
    pub fn elapsed(&self) -> f64 {
        (Instant::now() - self.t0).as_secs_f64()
    }
}

fn get_request(client: &str, min_valid_seconds: u32) -> Request<GetTokenRequest> {
    Request::new(GetTokenRequest {
        client: client.into(),
        min_valid_seconds,
    })
}
