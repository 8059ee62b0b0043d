//! Provider strings are validated: an access token outside RFC 6749 VSCHAR is never handed out,
//! scope entries outside NQCHAR are dropped (arrays are split too), and CR, LF, ESC or CSI sent
//! in error, error_description, token_type or scope never forge a log line, in text or in JSON
//! output, nor reach `last_error` or a caller.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing_subscriber::layer::SubscriberExt;

use crate::fault::{FaultEndpoint, Reply};
use crate::refresh_tokens::{jwt, start, until};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).to_string()
    }
}

/// tokend's log events on this thread (the paused-clock runtime runs every task on it), as
/// the daemon formats them: text without colour, and JSON.
pub struct Logs {
    text: Buffer,
    json: Buffer,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Logs {
    pub fn capture() -> Logs {
        let (text, json) = (Buffer::default(), Buffer::default());
        let (t, j) = (text.clone(), json.clone());
        let only_tokend = || {
            tracing_subscriber::filter::Targets::new().with_target("tokend", tracing::Level::DEBUG)
        };
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::Layer::with_filter(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || t.clone()),
                only_tokend(),
            ))
            .with(tracing_subscriber::Layer::with_filter(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(move || j.clone()),
                only_tokend(),
            ));
        Logs {
            text,
            json,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    /// Both outputs, one after the other.
    pub fn all(&self) -> String {
        format!("{}{}", self.text.text(), self.json.text())
    }
}

/// Every string in a JSON value.
fn strings(value: &serde_json::Value) -> Vec<&str> {
    match value {
        serde_json::Value::String(s) => vec![s],
        serde_json::Value::Array(items) => items.iter().flat_map(strings).collect(),
        serde_json::Value::Object(map) => map.values().flat_map(strings).collect(),
        _ => vec![],
    }
}

/// Characters that forge a line or drive a terminal.
fn has_controls(s: &str) -> bool {
    s.chars().any(|c| c.is_control() && c != '\n')
}

#[tokio::test(start_paused = true)]
async fn provider_control_characters_never_forge_a_log_line() {
    let logs = Logs::capture();
    let endpoint = FaultEndpoint::start(Reply::token("never", 300)).await;
    let forged = "\r\n2030-01-01T00:00:00.000000Z  INFO tokend: FORGED";
    endpoint.then([
        Reply::json(
            503,
            serde_json::json!({
                "error": format!("temporarily_unavailable{forged}"),
                "error_description": format!("busy{forged} \u{1b}[2J\u{1b}[H \u{9b}31m")
            }),
        ),
        Reply::json(
            200,
            serde_json::json!({"access_token": "at-1", "token_type": format!("mac{forged}\u{1b}[31m")}),
        ),
        Reply::json(
            200,
            serde_json::json!({
                "access_token": "at-2", "expires_in": 600,
                "scope": "ok \r\nFORGED-SCOPE \u{1b}[31mred \u{9b}1m good"
            }),
        ),
    ]);
    let h = start(endpoint, "forging", "forging").await;
    h.requests(3).await;
    let token = until("token", || async { h.get().await.ok() }).await;
    assert_eq!(token.scopes, ["ok", "good"]);
    assert!(!token.token_type.chars().any(char::is_control));
    assert_eq!(h.status().await.scopes, ["ok", "good"]);

    let text = logs.text.text();
    let json = logs.json.text();
    assert!(text.contains("FORGED"), "the attempts were logged: {text}");
    for line in text.lines() {
        assert!(!has_controls(line), "control character in {line:?}");
        assert!(
            !line.starts_with("2030-01-01") && !line.starts_with("FORGED"),
            "forged line {line:?} in:\n{text}"
        );
    }
    for line in json.lines() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line:?}"));
        assert!(
            !strings(&event)
                .iter()
                .any(|s| s.chars().any(char::is_control)),
            "control character in a JSON field: {line:?}"
        );
    }
    assert!(json.contains("ignored scope entries"), "{json}");
}

#[tokio::test(start_paused = true)]
async fn an_access_token_outside_vschar_is_never_handed_out() {
    let endpoint = FaultEndpoint::start(Reply::token("good", 300)).await;
    endpoint.then([Reply::json(
        200,
        serde_json::json!({"access_token": "evil\r\nX-Injected: 1", "expires_in": 300}),
    )]);
    let h = start(endpoint, "crlf_token", "crlf_token").await;
    h.requests(1).await;
    let status = until("failure", || async {
        Some(h.status().await).filter(|s| s.consecutive_failures > 0)
    })
    .await;
    assert!(status.last_error.contains("VSCHAR"), "{status:?}");
    let err = h
        .get()
        .await
        .expect_err("no token until a good one arrives");
    assert!(!err.message().contains("evil"), "{}", err.message());
    h.requests(2).await;
    let token = until("token", || async { h.get().await.ok() }).await;
    assert_eq!(token.access_token, "good");
}

#[tokio::test(start_paused = true)]
async fn scope_arrays_are_split_and_filtered_like_scope_strings() {
    let logs = Logs::capture();
    let endpoint = FaultEndpoint::start(Reply::token("never", 300)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The second seed provider's shape: scopes as an array in the JWT, no expires_in.
    let token = jwt(serde_json::json!({
        "exp": now + 3600,
        "scope": ["profile read:like", "write:like\n", "x\u{1b}[2J", "quo\"te", 7, "ok"]
    }));
    endpoint.then([Reply::json(
        200,
        serde_json::json!({"access_token": token, "refresh_token": "rt-1"}),
    )]);
    let h = start(endpoint, "scope_array", "scope_array").await;
    h.requests(1).await;
    let token = until("token", || async { h.get().await.ok() }).await;
    assert_eq!(token.scopes, ["profile", "read:like", "ok"]);
    let log = logs.all();
    assert!(
        log.contains("ignored scope entries"),
        "a warning says so: {log}"
    );
}
