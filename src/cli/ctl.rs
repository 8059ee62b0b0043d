//! `tokend get`, `tokend status` and `tokend health`: small gRPC clients of a running daemon
//! over its socket.

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
    #[error(
        "the token of client {0:?} has characters outside printable ASCII (RFC 6749 VSCHAR); \
         refusing to print it, as a shell or an HTTP header would take them for more than a token"
    )]
    UnprintableToken(String),
}

/// The daemon's message can carry provider text: shown escaped and bounded, like a table cell.
fn describe_status(status: &tonic::Status) -> String {
    format!(
        "{:?}: {}",
        status.code(),
        display_cell(status.message(), MAX_MESSAGE)
    )
}

/// Widest table cell, in characters: the rest of a long scope list or error is cut, so no
/// value the daemon holds makes the table unreadable (or a format width overflow).
const MAX_CELL: usize = 64;
/// Longest last error (the table's last column) or error message shown.
const MAX_MESSAGE: usize = 400;

/// `text` for a terminal: control characters (and the bidirectional overrides that reorder
/// what is shown) escaped, then cut to `max` characters with an ellipsis.
fn display_cell(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut shown = 0;
    for c in text.chars() {
        let piece: String = if c.is_control() || is_bidi_control(c) {
            c.escape_unicode().collect()
        } else {
            c.into()
        };
        let len = piece.chars().count();
        if shown + len > max {
            out.push('…');
            return out;
        }
        shown += len;
        out.push_str(&piece);
    }
    out
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Connects to the daemon's Unix socket.
pub async fn connect(socket: &Path) -> Result<TokenServiceClient<Channel>, CtlError> {
    Ok(TokenServiceClient::new(channel(socket).await?))
}

/// What a probe asks of `tokend health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The server runs (health service `""`).
    Live,
    /// Every required client holds a valid token (`tokend.v1.TokenService`).
    Ready,
}

/// Whether the daemon answers SERVING for `probe`, asked within `timeout`.
pub async fn health(socket: &Path, probe: Probe, timeout: Duration) -> Result<bool, CtlError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut rpc = tonic_health::pb::health_client::HealthClient::new(channel(socket).await?);
    let service = match probe {
        Probe::Live => "",
        Probe::Ready => crate::serve::health::TOKEN_SERVICE,
    };
    let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
        service: service.into(),
    });
    request.set_timeout(timeout);
    let status = rpc.check(request).await?.into_inner().status();
    Ok(status == ServingStatus::Serving)
}

async fn channel(socket: &Path) -> Result<Channel, CtlError> {
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
    Ok(channel)
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
    printable(client, rpc.get_token(request).await?.into_inner())
}

/// RFC 6749 A.12: an access token is VSCHAR (`%x20-7E`). Anything else printed for
/// `$(tokend get x)` could end an HTTP header and start another, or drive the terminal.
fn printable(client: &str, token: proto::Token) -> Result<proto::Token, CtlError> {
    if token
        .access_token
        .bytes()
        .all(|b| (0x20..=0x7e).contains(&b))
    {
        Ok(token)
    } else {
        Err(CtlError::UnprintableToken(client.to_string()))
    }
}

/// The token as one JSON object, for scripts: the token, its type and scopes, and its expiry
/// both as RFC 3339 and as seconds from now.
/// Every character outside printable ASCII is escaped (`\uXXXX`), so no scope or type the
/// provider chose reaches the terminal as a control character.
pub fn token_json(token: &proto::Token, now: SystemTime) -> String {
    let expires = token.expires_at.as_ref().map(system_time);
    let json = serde_json::json!({
        "client": token.client,
        "access_token": token.access_token,
        "token_type": token.token_type,
        "scopes": token.scopes,
        "expires_at": expires.and_then(crate::serve::service::rfc3339),
        "expires_in": expires.map(|e| e.duration_since(now).unwrap_or_default().as_secs()),
    })
    .to_string();
    ascii_json(&json)
}

/// JSON text with every non-ASCII character and DEL written as `\uXXXX` escapes (serde_json
/// escapes the C0 controls itself). Outside strings JSON text is ASCII, so this is still the
/// same JSON.
fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() && c != '\x7f' {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// A timestamp from the daemon as a `SystemTime`, clamped into range (before 1970 reads as
/// 1970; SystemTime holds every later `i64` second). Nanoseconds out of range are clamped
/// first: prost would carry them into the seconds, and `i64::MAX` seconds must stay that.
fn system_time(t: &prost_types::Timestamp) -> SystemTime {
    let t = prost_types::Timestamp {
        seconds: t.seconds,
        nanos: t.nanos.clamp(0, 999_999_999),
    };
    SystemTime::try_from(t).map_or(SystemTime::UNIX_EPOCH, |t| t.max(SystemTime::UNIX_EPOCH))
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
                .map(proto::ClientState::name)
                .unwrap_or("unknown");
            [
                display_cell(&c.client, MAX_CELL),
                state.to_string(),
                c.expires_at.as_ref().map_or("-".into(), |t| until(t, now)),
                c.next_refresh_at
                    .as_ref()
                    .map_or("-".into(), |t| until(t, now)),
                c.consecutive_failures.to_string(),
                if c.scopes.is_empty() {
                    "-".into()
                } else {
                    display_cell(&scope_list(&c.scopes), MAX_CELL)
                },
                if c.last_error.is_empty() {
                    "-".into()
                } else {
                    display_cell(&c.last_error, MAX_MESSAGE)
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

/// The scopes space-separated, stopping once more could not be shown anyway: a list of a
/// hundred thousand scopes is not joined into megabytes only to be cut.
fn scope_list(scopes: &[String]) -> String {
    let mut out = String::new();
    for scope in scopes {
        if out.chars().count() > MAX_CELL {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(scope);
    }
    out
}

/// "4m 10s", or "expired" for a time in the past.
fn until(t: &prost_types::Timestamp, now: SystemTime) -> String {
    match system_time(t).duration_since(now) {
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
        assert!(lines[2].contains("needs_operator"), "{table}");
        assert!(lines[2].ends_with("invalid_client"), "{table}");
        // Columns line up: STATE starts at the same offset in every line.
        let col = lines[0].find("STATE").unwrap();
        assert_eq!(&lines[2][col..col + 14], "needs_operator");
    }

    #[test]
    fn status_cuts_huge_cells_and_escapes_control_characters() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let far = Some(prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: i32::MAX,
        });
        let clients = [
            proto::ClientStatus {
                client: "many".into(),
                state: proto::ClientState::Fresh as i32,
                scopes: (0..100_000).map(|i| format!("scope.{i}")).collect(),
                expires_at: far,
                next_refresh_at: Some(prost_types::Timestamp {
                    seconds: i64::MIN,
                    nanos: -1,
                }),
                last_error: "e".repeat(1 << 20),
                ..Default::default()
            },
            proto::ClientStatus {
                client: "odd\x1b[2J".into(),
                state: 99,
                scopes: vec!["a\nb".into(), "\u{202e}c".into(), "\u{9b}31m".into()],
                last_error: "bad\r\nFAKE log line\x07\x7f".into(),
                ..Default::default()
            },
        ];
        let table = render_status(&clients, now);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines.iter().all(|l| l.chars().count() < 1000), "{table}");
        assert!(lines[1].contains("scope.0 scope.1"), "{table}");
        assert!(lines[1].contains("…"), "{table}");
        assert!(lines[1].contains("expired"), "{table}");
        assert!(
            !table.chars().any(|c| c.is_control() && c != '\n'),
            "{table:?}"
        );
        assert!(!table.contains('\u{202e}'), "{table:?}");
        assert!(lines[2].contains("odd\\u{1b}[2J"), "{table}");
        assert!(lines[2].contains("unknown"), "{table}");
        assert!(
            lines[2].ends_with("bad\\u{d}\\u{a}FAKE log line\\u{7}\\u{7f}"),
            "{table}"
        );
    }

    #[test]
    fn get_refuses_tokens_outside_vschar() {
        let token = |t: &str| proto::Token {
            access_token: t.into(),
            ..Default::default()
        };
        assert!(printable("c", token("eyJ.a-b_c~+/= ok")).is_ok());
        for bad in [
            "abc\r\nX-Injected: 1",
            "a\x1b[2Jb",
            "tab\there",
            "del\x7f",
            "é",
        ] {
            let text = printable("c", token(bad)).unwrap_err().to_string();
            assert!(text.contains("\"c\"") && text.contains("VSCHAR"), "{text}");
            assert!(!text.contains(bad), "{text}");
        }
    }

    #[test]
    fn rpc_errors_are_escaped_and_bounded() {
        let status =
            tonic::Status::unavailable(format!("x\x1b]0;pwned\x07{}", "y".repeat(1 << 20)));
        let text = CtlError::Rpc(status).to_string();
        assert!(
            text.starts_with("Unavailable: x\\u{1b}]0;pwned\\u{7}yyy"),
            "{text}"
        );
        assert!(text.chars().count() < 500, "{}", text.len());
        assert!(!text.chars().any(char::is_control));
    }

    #[test]
    fn token_json_is_ascii_and_survives_any_timestamp() {
        let now = SystemTime::UNIX_EPOCH;
        let token = proto::Token {
            client: "c".into(),
            access_token: "t".into(),
            token_type: "Bearer\u{9b}".into(),
            scopes: vec!["\u{1b}[31m".into(), "é\u{7f}😀".into()],
            expires_at: Some(prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: -5,
            }),
            issued_at: None,
        };
        let text = token_json(&token, now);
        assert!(text.bytes().all(|b| (0x20..0x7f).contains(&b)), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["token_type"], "Bearer\u{9b}");
        assert_eq!(v["scopes"], serde_json::json!(["\u{1b}[31m", "é\u{7f}😀"]));
        // After year 9999: no RFC 3339 form, but the seconds are still there.
        assert_eq!(v["expires_at"], serde_json::Value::Null);
        assert_eq!(v["expires_in"], i64::MAX);
    }
}
