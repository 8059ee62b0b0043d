//! `tokend get` and `tokend status`: small gRPC clients of a running daemon over its socket.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::proto::{self, token_service_client::TokenServiceClient};

/// Where `get` and `status` look for the daemon unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/tokend/tokend.sock";

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach tokend at {path}: {reason}")]
    Connect { path: PathBuf, reason: String },
    #[error("{}", describe_status(.0))]
    Rpc(#[from] tonic::Status),
}

fn describe_status(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Connects to the daemon's Unix socket.
pub async fn connect(socket: &Path) -> Result<TokenServiceClient<Channel>, CtlError> {
    let path = socket.to_path_buf();
    // The URI is a placeholder: the connector ignores it and dials the socket. Its authority
    // ("localhost") is what the HTTP/2 layer sends, and tonic's server accepts it.
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| CtlError::Connect {
            path: socket.to_path_buf(),
            reason: std::error::Error::source(&e)
                .map(ToString::to_string)
                .unwrap_or_else(|| e.to_string()),
        })?;
    Ok(TokenServiceClient::new(channel))
}

/// The client's current access token.
pub async fn get(
    socket: &Path,
    client: &str,
    min_valid: u32,
    timeout: Duration,
) -> Result<proto::Token, CtlError> {
    let mut rpc = connect(socket).await?;
    let mut request = tonic::Request::new(proto::GetTokenRequest {
        client: client.to_string(),
        min_valid_seconds: min_valid,
    });
    request.set_timeout(timeout);
    Ok(rpc.get_token(request).await?.into_inner())
}

/// The token as one JSON object, for scripts: the token, its type and scopes, and its expiry
/// both as RFC 3339 and as seconds from now.
pub fn token_json(token: &proto::Token, now: SystemTime) -> String {
    let expires = token.expires_at.as_ref().map(|t| {
        SystemTime::UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32)
    });
    serde_json::json!({
        "client": token.client,
        "access_token": token.access_token,
        "token_type": token.token_type,
        "scopes": token.scopes,
        "expires_at": expires.map(|e| humantime::format_rfc3339_seconds(e).to_string()),
        "expires_in": expires.map(|e| e.duration_since(now).unwrap_or_default().as_secs()),
    })
    .to_string()
}

/// Every client's status, rendered as a table.
pub async fn status(socket: &Path) -> Result<String, CtlError> {
    let mut rpc = connect(socket).await?;
    let clients = rpc
        .list_clients(proto::ListClientsRequest {})
        .await?
        .into_inner()
        .clients;
    Ok(render_status(&clients, SystemTime::now()))
}

fn render_status(clients: &[proto::ClientStatus], now: SystemTime) -> String {
    let header = [
        "CLIENT",
        "STATE",
        "EXPIRES IN",
        "NEXT",
        "FAILS",
        "SCOPES",
        "LAST ERROR",
    ];
    let rows: Vec<[String; 7]> = clients
        .iter()
        .map(|c| {
            let state = proto::ClientState::try_from(c.state)
                .map(state_name)
                .unwrap_or("unknown");
            [
                c.client.clone(),
                state.to_string(),
                c.expires_at.as_ref().map_or("-".into(), |t| until(t, now)),
                c.next_refresh_at
                    .as_ref()
                    .map_or("-".into(), |t| until(t, now)),
                c.consecutive_failures.to_string(),
                if c.scopes.is_empty() {
                    "-".into()
                } else {
                    c.scopes.join(" ")
                },
                if c.last_error.is_empty() {
                    "-".into()
                } else {
                    c.last_error.clone()
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let last = cells.len() - 1;
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

fn state_name(state: proto::ClientState) -> &'static str {
    match state {
        proto::ClientState::Unspecified => "unknown",
        proto::ClientState::Starting => "starting",
        proto::ClientState::Fresh => "fresh",
        proto::ClientState::Refreshing => "refreshing",
        proto::ClientState::BackingOff => "backing-off",
        proto::ClientState::NeedsOperator => "needs-operator",
        proto::ClientState::Failed => "failed",
        proto::ClientState::ReauthorizationRequired => "reauthorize",
    }
}

/// "4m 10s", or "expired" for a time in the past.
fn until(t: &prost_types::Timestamp, now: SystemTime) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
    match at.duration_since(now) {
        Ok(d) => humantime::format_duration(Duration::from_secs(d.as_secs())).to_string(),
        Err(_) => "expired".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_json_has_every_field() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = proto::Token {
            client: "c".into(),
            access_token: "t".into(),
            token_type: "Bearer".into(),
            scopes: vec!["a".into()],
            expires_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_300,
                nanos: 0,
            }),
            issued_at: None,
        };
        let v: serde_json::Value = serde_json::from_str(&token_json(&token, now)).unwrap();
        assert_eq!(v["access_token"], "t");
        assert_eq!(v["scopes"], serde_json::json!(["a"]));
        assert_eq!(v["expires_at"], "2023-11-14T22:18:20Z");
        assert_eq!(v["expires_in"], 300);
    }

    #[test]
    fn status_table_aligns_and_shows_state() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let ts = |s| {
            Some(prost_types::Timestamp {
                seconds: s,
                nanos: 0,
            })
        };
        let clients = [
            proto::ClientStatus {
                client: "billing".into(),
                state: proto::ClientState::Fresh as i32,
                scopes: vec!["a".into(), "b".into()],
                expires_at: ts(1250),
                next_refresh_at: ts(1200),
                ..Default::default()
            },
            proto::ClientStatus {
                client: "x".into(),
                state: proto::ClientState::NeedsOperator as i32,
                consecutive_failures: 3,
                last_error: "invalid_client".into(),
                ..Default::default()
            },
        ];
        let table = render_status(&clients, now);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("billing  fresh "), "{table}");
        assert!(lines[1].contains("4m 10s"), "{table}");
        assert!(lines[2].contains("needs-operator"), "{table}");
        assert!(lines[2].ends_with("invalid_client"), "{table}");
        // Columns line up: STATE starts at the same offset in every line.
        let col = lines[0].find("STATE").unwrap();
        assert_eq!(&lines[2][col..col + 14], "needs-operator");
    }
}
