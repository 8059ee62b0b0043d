//! The ceiling: a bare tonic server, generated from the same proto, that answers `GetToken` with
//! a constant of the size tokend's answer has. No tonic-based daemon can answer faster, so
//! tokend's throughput is reported as a fraction of it.

use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use tokend::proto::token_service_server::{TokenService, TokenServiceServer};
use tokend::proto::{self, Token};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::endpoint;

/// What tokend answers for the benchmark's client, field for field the same size: the client's
/// name, a token as the endpoint issues them, its scopes, two timestamps.
pub fn constant(client: &str) -> Token {
    let now = SystemTime::now();
    Token {
        client: client.to_string(),
        access_token: endpoint::token_text(0),
        token_type: "Bearer".into(),
        scopes: endpoint::SCOPE.split(' ').map(str::to_string).collect(),
        expires_at: Some((now + Duration::from_secs(endpoint::LIFETIME_SECS)).into()),
        issued_at: Some(now.into()),
    }
}

struct Ceiling {
    token: Token,
}

type Tokens = Pin<Box<dyn tokio_stream::Stream<Item = Result<Token, Status>> + Send>>;

#[tonic::async_trait]
impl TokenService for Ceiling {
    async fn get_token(
        &self,
        _: Request<proto::GetTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        Ok(Response::new(self.token.clone()))
    }

    type WatchTokenStream = Tokens;

    async fn watch_token(
        &self,
        _: Request<proto::WatchTokenRequest>,
    ) -> Result<Response<Tokens>, Status> {
        Err(Status::unimplemented("the ceiling answers GetToken only"))
    }

    async fn refresh_token(
        &self,
        _: Request<proto::RefreshTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        Err(Status::unimplemented("the ceiling answers GetToken only"))
    }

    async fn list_clients(
        &self,
        _: Request<proto::ListClientsRequest>,
    ) -> Result<Response<proto::ListClientsResponse>, Status> {
        Err(Status::unimplemented("the ceiling answers GetToken only"))
    }

    async fn sign_dpop_proof(
        &self,
        _: Request<proto::SignDpopProofRequest>,
    ) -> Result<Response<proto::DpopProof>, Status> {
        Err(Status::unimplemented("the ceiling answers GetToken only"))
    }
}

/// Serves the ceiling on `socket` until the process is killed, on the same runtime tokend's
/// `main` builds.
pub fn serve(socket: &Path, client: &str) -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    runtime.block_on(async {
        let _ = std::fs::remove_file(socket);
        let listener = match tokio::net::UnixListener::bind(socket) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("ceiling: cannot bind {}: {e}", socket.display());
                return std::process::ExitCode::FAILURE;
            }
        };
        let service = TokenServiceServer::new(Ceiling {
            token: constant(client),
        });
        let served = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await;
        match served {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ceiling: {e}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}
