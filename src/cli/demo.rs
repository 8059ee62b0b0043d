//! `tokend demo`: a small token endpoint built into the binary, and the daemon running against
//! it, so a newcomer sees tokens fetched, served and refreshed in one command. The endpoint is
//! for the demo only; tests of real-provider behaviour use a real OAuth server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::json;

use crate::config::{ClientConfig, Config, ServerConfig};
use crate::host::unix_time::since_epoch;
use crate::oauth::AuthMethod;
use crate::refresh::RefreshPolicy;

/// Short enough that refreshes show up in the log within a minute of starting.
pub const DEMO_LIFETIME: Duration = Duration::from_secs(20);
const DEMO_SCOPE: &str = "demo.read demo.write";

/// The demo's two clients: one authenticates with HTTP Basic, one in the form body.
const CLIENTS: [(&str, &str, AuthMethod); 2] = [
    ("demo-basic", "basic:s3cret+demo", AuthMethod::Basic),
    ("demo-post", "post-s3cret%demo", AuthMethod::Post),
];

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the demo token endpoint: {0}")]
    Endpoint(std::io::Error),
    #[error("cannot write the demo's secret files: {0}")]
    Secrets(std::io::Error),
    #[error(transparent)]
    Run(#[from] crate::daemon::RunError),
}

struct Issuer {
    key: [u8; 32],
    issued: AtomicU64,
    issuer: String,
}

/// Starts the demo token endpoint on 127.0.0.1 (a free port); returns its token URL.
pub async fn start_endpoint() -> Result<String, DemoError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(DemoError::Endpoint)?;
    let addr: SocketAddr = listener.local_addr().map_err(DemoError::Endpoint)?;
    let issuer = Arc::new(Issuer {
        key: rand::random(),
        issued: AtomicU64::new(0),
        issuer: format!("http://{addr}"),
    });
    let app = axum::Router::new()
        .route("/token", axum::routing::post(token))
        .with_state(issuer);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}/token"))
}

async fn token(State(issuer): State<Arc<Issuer>>, headers: HeaderMap, body: String) -> Response {
    let form: BTreeMap<String, String> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(decode_basic);
    let (id, secret, method) = match (basic, form.get("client_id"), form.get("client_secret")) {
        (Some((id, secret)), None, None) => (id, secret, AuthMethod::Basic),
        (None, Some(id), Some(secret)) => (id.clone(), secret.clone(), AuthMethod::Post),
        _ => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client"),
    };
    if !CLIENTS.contains(&(id.as_str(), secret.as_str(), method)) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let jwt = issuer.sign(&id);
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({
            "access_token": jwt,
            "token_type": "Bearer",
            "expires_in": DEMO_LIFETIME.as_secs(),
            "scope": DEMO_SCOPE,
        })),
    )
        .into_response()
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, axum::Json(json!({ "error": error }))).into_response()
}

/// Basic credentials, form-decoded as RFC 6749 section 2.3.1 has the client encode them.
fn decode_basic(b64: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (id, secret) = text.split_once(':')?;
    let decode = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((decode(id), decode(secret)))
}

impl Issuer {
    /// An HS256 JWT with the claims a real provider's access token carries.
    fn sign(&self, client_id: &str) -> String {
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let now = since_epoch(SystemTime::now()).as_secs();
        let claims = json!({
            "iss": self.issuer,
            "sub": client_id,
            "aud": "tokend-demo",
            "iat": now,
            "exp": now + DEMO_LIFETIME.as_secs(),
            "scope": DEMO_SCOPE,
            "jti": self.issued.fetch_add(1, Ordering::Relaxed),
        });
        let signing_input = format!(
            "{}.{}",
            b64(br#"{"alg":"HS256","typ":"JWT"}"#),
            b64(claims.to_string().as_bytes())
        );
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(signing_input.as_bytes());
        format!("{signing_input}.{}", b64(&mac.finalize().into_bytes()))
    }
}

/// The daemon's config for the demo: both clients against `token_endpoint`, secrets in files
/// under `secrets_dir`.
pub fn config(
    token_endpoint: &str,
    socket: &Path,
    secrets_dir: &Path,
) -> Result<Config, DemoError> {
    let mut clients = BTreeMap::new();
    for (id, secret, method) in CLIENTS {
        let path = secrets_dir.join(format!("{id}.secret"));
        crate::secret::write_file_durably(&path, secret).map_err(|e| match e {
            crate::secret::SecretError::Write { source, .. } => DemoError::Secrets(source),
            other => DemoError::Secrets(std::io::Error::other(other.to_string())),
        })?;
        clients.insert(
            id.into(),
            // Parsed as a config table would be, so that every key not named keeps its default.
            Arc::new(
                serde_json::from_value::<ClientConfig>(serde_json::json!({
                    "token_endpoint": token_endpoint,
                    "client_id": id,
                    "client_secret_file": path,
                    "auth_method": method.as_str(),
                }))
                .expect("the demo's client table is valid"),
            ),
        );
    }
    Ok(Config {
        server: ServerConfig {
            socket: socket.to_path_buf(),
            socket_mode: "0600".into(),
            ..ServerConfig::default()
        },
        refresh: RefreshPolicy::default(),
        metrics: Default::default(),
        kubernetes: Default::default(),
        proxy: Default::default(),
        clients,
        source_path: None,
    })
}

/// What `tokend demo` prints once the daemon is up.
pub fn instructions(socket: &Path, token_endpoint: &str) -> String {
    let s = socket.display();
    format!(
        "tokend demo: a token endpoint at {token_endpoint} issues {}s JWTs to two clients,\n\
         demo-basic (HTTP Basic client auth) and demo-post (credentials in the form body).\n\
         The daemon serves them on {s}; watch this log for refreshes.\n\n\
         In another terminal:\n\
         \x20 tokend get demo-basic --socket {s}\n\
         \x20 tokend status --socket {s}\n\
         \x20 curl -H \"Authorization: Bearer $(tokend get demo-post --socket {s})\" https://...\n\n\
         From Python (pip install grpcio grpcio-tools; stubs from proto/tokend/v1/tokend.proto):\n\
         \x20 import grpc; from tokend.v1 import tokend_pb2 as pb, tokend_pb2_grpc as rpc\n\
         \x20 ch = grpc.insecure_channel(\"unix:{s}\")\n\
         \x20 print(rpc.TokenServiceStub(ch).GetToken(pb.GetTokenRequest(client=\"demo-basic\")).access_token)\n\n\
         Ctrl-C stops the demo.\n",
        DEMO_LIFETIME.as_secs()
    )
}

/// The socket the demo uses unless told otherwise: in the user's temp directory, so the demo
/// needs no privileges.
pub fn default_socket() -> PathBuf {
    std::env::temp_dir().join("tokend-demo.sock")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::basic_authorization;

    #[test]
    fn basic_credentials_round_trip_through_rfc6749_encoding() {
        let header = basic_authorization("demo-basic", "basic:s3cret+demo");
        let decoded = decode_basic(header.strip_prefix("Basic ").unwrap()).unwrap();
        assert_eq!(decoded, ("demo-basic".into(), "basic:s3cret+demo".into()));
    }

    #[test]
    fn signed_token_carries_exp_and_scope() {
        let issuer = Issuer {
            key: [7; 32],
            issued: AtomicU64::new(0),
            issuer: "http://127.0.0.1:1".into(),
        };
        let reply = json!({ "access_token": issuer.sign("demo-post") }).to_string();
        let parsed = crate::oauth::reply::parse_success(
            reply.as_bytes(),
            None,
            Duration::from_secs(1),
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(parsed.scopes, ["demo.read", "demo.write"]);
        assert!(
            parsed.lifetime <= DEMO_LIFETIME
                && parsed.lifetime >= DEMO_LIFETIME - Duration::from_secs(2)
        );
    }
}
