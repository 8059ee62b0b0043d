//! Herds: many callers at once for a token that is not there yet. The endpoint holds the
//! daemon's first token request until every call has been sent, so all of them wait cold; then
//! as many callers report the same token rejected. Each herd must cost one token request.

use std::path::Path;
use std::time::Duration;

use tokend::proto::{GetTokenRequest, RefreshTokenRequest, Token};
use tokio::time::Instant;

use crate::endpoint::Endpoint;
use crate::load::{MAX_CONNECTIONS, connect};
use crate::process::{Cpus, client_name, start_tokend};

pub struct Herd {
    pub calls: usize,
    /// Token requests the cold GetToken herd caused (must be 1).
    pub cold_requests: u64,
    /// Token requests the RefreshToken herd caused (must be 1).
    pub refresh_requests: u64,
    /// Time from releasing the token request to the last caller's answer.
    pub cold_release: Duration,
}

/// How long every call has to reach the daemon once it has been sent.
const SETTLE: Duration = Duration::from_millis(500);

pub async fn run(calls: usize, tokend: &Path, cpus: &Cpus) -> Result<Herd, String> {
    let endpoint = Endpoint::start(Duration::ZERO)
        .await
        .map_err(|e| format!("token endpoint: {e}"))?;
    endpoint.set_open(false);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let server = start_tokend(
        tokend,
        dir.path(),
        &endpoint.url,
        1,
        (4, Duration::ZERO),
        cpus,
    )
    .await?;
    let mut rpcs = Vec::new();
    for _ in 0..MAX_CONNECTIONS.min(calls) {
        rpcs.push(connect(&server.socket).await?);
    }
    let client = client_name(0);

    let cold = herd(calls, &endpoint, 1, |i| {
        let mut rpc = rpcs[i % rpcs.len()].clone();
        let client = client.clone();
        async move {
            rpc.get_token(GetTokenRequest {
                client,
                min_valid_seconds: 0,
            })
            .await
        }
    })
    .await?;
    let cold_requests = endpoint.received();

    let rejected = cold.token.access_token.clone();
    let refreshed = herd(calls, &endpoint, cold_requests + 1, |i| {
        let mut rpc = rpcs[i % rpcs.len()].clone();
        let request = RefreshTokenRequest {
            client: client.clone(),
            rejected_access_token: rejected.clone(),
        };
        async move { rpc.refresh_token(request).await }
    })
    .await?;
    if refreshed.token.access_token == rejected {
        return Err("RefreshToken herd: answered the rejected token".into());
    }
    let refresh_requests = endpoint.received() - cold_requests;
    server.stop();
    Ok(Herd {
        calls,
        cold_requests,
        refresh_requests,
        cold_release: cold.release,
    })
}

struct Outcome {
    token: Token,
    release: Duration,
}

/// Sends `calls` calls while the endpoint holds requests, waits until the daemon's request
/// (the `expect`-th the endpoint has seen) is held there, releases it, and checks that every
/// caller got the same token.
async fn herd<F, Fut>(
    calls: usize,
    endpoint: &Endpoint,
    expect: u64,
    call: F,
) -> Result<Outcome, String>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<Token>, tonic::Status>>
        + Send
        + 'static,
{
    endpoint.set_open(false);
    let tasks: Vec<_> = (0..calls).map(|i| tokio::spawn(call(i))).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while endpoint.received() < expect {
        if Instant::now() > deadline {
            return Err(format!(
                "herd: the daemon made no token request (saw {})",
                endpoint.received()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(SETTLE).await;
    if tasks.iter().any(|t| t.is_finished()) {
        return Err("herd: a call was answered before the token request was".into());
    }
    let released = Instant::now();
    endpoint.set_open(true);
    let mut token: Option<Token> = None;
    for task in tasks {
        let answer = task
            .await
            .map_err(|e| e.to_string())?
            .map_err(|s| format!("herd: a call failed: {s}"))?
            .into_inner();
        match &token {
            Some(t) if t.access_token != answer.access_token => {
                return Err("herd: callers got different tokens".into());
            }
            Some(_) => {}
            None => token = Some(answer),
        }
    }
    Ok(Outcome {
        token: token.ok_or("herd: no calls")?,
        release: released.elapsed(),
    })
}
