//! The benchmark's token endpoint, on 127.0.0.1 in this process: accepts any client, issues
//! long-lived tokens (so that an idle daemon has nothing due), and counts what it sees: requests
//! received and answered, and the most it was handling at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Issued tokens are this long, a typical size for a provider's JWT access token (Okta's and
/// Auth0's are 800 to 1,200 bytes): the daemon keeps one per client, so their size is part of
/// its memory.
pub const TOKEN_BYTES: usize = 1024;
/// 24 hours, tokend's cap on lifetimes: refreshes fall due 17 to 19 hours later, never during a
/// run, so an idle daemon has truly nothing to do.
pub const LIFETIME_SECS: u64 = 24 * 3600;
pub const SCOPE: &str = "bench.read bench.write";

struct Stats {
    received: AtomicU64,
    answered: AtomicU64,
    active: AtomicUsize,
    peak: AtomicUsize,
    /// Requests wait while this is false (a herd needs the first token to take a while).
    open: watch::Sender<bool>,
    latency: Duration,
}

pub struct Endpoint {
    pub url: String,
    stats: Arc<Stats>,
    task: JoinHandle<()>,
}

impl Endpoint {
    /// Starts an endpoint that answers each request after `latency` (a real provider takes
    /// milliseconds; it also makes concurrent requests overlap, so the peak shows the cap).
    pub async fn start(latency: Duration) -> std::io::Result<Endpoint> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/token", listener.local_addr()?);
        let stats = Arc::new(Stats {
            received: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            open: watch::channel(true).0,
            latency,
        });
        let app = axum::Router::new()
            .route("/token", axum::routing::post(token))
            .with_state(stats.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Endpoint { url, stats, task })
    }

    pub fn received(&self) -> u64 {
        self.stats.received.load(Ordering::SeqCst)
    }

    pub fn answered(&self) -> u64 {
        self.stats.answered.load(Ordering::SeqCst)
    }

    /// The most requests in progress at one moment.
    pub fn peak(&self) -> usize {
        self.stats.peak.load(Ordering::SeqCst)
    }

    /// Holds requests (`false`) or lets them through (`true`).
    pub fn set_open(&self, open: bool) {
        self.stats.open.send_replace(open);
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Decrements the in-progress count however the handler ends.
struct Active<'a>(&'a Stats);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn token(State(stats): State<Arc<Stats>>) -> Response {
    let n = stats.received.fetch_add(1, Ordering::SeqCst);
    let now = stats.active.fetch_add(1, Ordering::SeqCst) + 1;
    let _active = Active(&stats);
    stats.peak.fetch_max(now, Ordering::SeqCst);
    let _ = stats.open.subscribe().wait_for(|open| *open).await;
    tokio::time::sleep(stats.latency).await;
    let body = serde_json::json!({
        "access_token": token_text(n),
        "token_type": "Bearer",
        "expires_in": LIFETIME_SECS,
        "scope": SCOPE,
    });
    stats.answered.fetch_add(1, Ordering::SeqCst);
    axum::Json(body).into_response()
}

/// A JWT-shaped token of exactly [`TOKEN_BYTES`], distinct for each `n`.
pub fn token_text(n: u64) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let head = b64(r#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = b64(&format!(
        r#"{{"iss":"tokend-bench","sub":"client","scope":"{SCOPE}","jti":{n}}}"#
    ));
    let signature = "s".repeat(43);
    let filler = TOKEN_BYTES - head.len() - claims.len() - signature.len() - 2;
    let token = format!("{head}.{claims}{}.{signature}", "A".repeat(filler));
    debug_assert_eq!(token.len(), TOKEN_BYTES);
    token
}
