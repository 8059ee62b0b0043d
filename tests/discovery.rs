//! Clients configured by their issuer (RFC 8414 / OIDC discovery): against a real
//! `oidc-provider`, an issuer alone is enough, and a document naming another issuer (a mix-up)
//! is refused for that client while the next one keeps working; against a scripted issuer of
//! the test's own, an unreachable document is retried with backoff, and a 404 from the token
//! endpoint makes tokend read the document again and follow the moved endpoint; `tokend check`
//! warns about an unreachable issuer and still exits 0; `tokend authorize` takes the
//! authorization endpoint from the metadata.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::{Daemon, OidcServer, eventually, free_port, get, secret_file};

const SECRET: &str = "d1sc0very-s3cret";

fn provider() -> OidcServer {
    OidcServer::start(serde_json::json!({
        "clients": [{"client_id": "svc", "client_secret": SECRET,
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["client_credentials"], "scope": "api:read"}]
    }))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_issuer_alone_is_enough_and_a_mixed_up_one_is_refused_for_its_client_only() {
    let idp = provider();
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "svc.secret", SECRET);
    // localhost reaches the same server, whose document names 127.0.0.1: not the issuer
    // configured, so not to be trusted with the secret.
    let mixed_up = idp.issuer.replace("127.0.0.1", "localhost");
    let clients = format!(
        r#"
[clients.good]
issuer = "{issuer}"
client_id = "svc"
client_secret_file = "{{dir}}/svc.secret"
scope = "api:read"

[clients.mixup]
issuer = "{mixed_up}"
client_id = "svc"
client_secret_file = "{{dir}}/svc.secret"
scope = "api:read"
required = false
"#,
        issuer = idp.issuer
    );
    let daemon = Daemon::start_in(dir, &clients).await;
    let token = daemon.client().await.get_token(get("good")).await.unwrap();
    assert!(!token.into_inner().access_token.is_empty());
    let error = eventually(Duration::from_secs(10), "mixup's error", || async {
        Some(daemon.status("mixup").await.last_error).filter(|e| !e.is_empty())
    })
    .await;
    assert!(
        error.contains(&format!(
            "names the issuer \"{}\", not \"{mixed_up}\"",
            idp.issuer
        )) && error.contains("must match exactly"),
        "{error}"
    );
    // Only good's requests reached the token endpoint: the mixed-up client sent nothing.
    assert!(idp.requests().await.iter().all(|r| r["status"] == 200));
    let status = daemon
        .client()
        .await
        .get_token(get("mixup"))
        .await
        .unwrap_err();
    assert_ne!(status.code(), tonic::Code::Ok);
    assert!(!daemon.log_text().contains(SECRET));
}

/// An issuer of the test's own: its documents answer 503 `failures` times, then name
/// `/token-N` as the token endpoint, N = how many documents were served; `/token-1` answers
/// 404 when `moved` (the provider moved its endpoint after the first read), others a token.
#[derive(Default)]
struct Script {
    failures: usize,
    moved: bool,
    documents: Vec<Instant>,
    tokens: Vec<String>,
}

struct FakeIssuer {
    url: String,
    script: Arc<Mutex<Script>>,
}

impl FakeIssuer {
    async fn start(failures: usize, moved: bool) -> FakeIssuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/realm", listener.local_addr().unwrap());
        let script = Arc::new(Mutex::new(Script {
            failures,
            moved,
            ..Script::default()
        }));
        let app = axum::Router::new()
            .route(
                "/.well-known/oauth-authorization-server/realm",
                axum::routing::get(document),
            )
            .route(
                "/realm/.well-known/openid-configuration",
                axum::routing::get(document),
            )
            .route("/realm/{token}", axum::routing::post(token))
            .with_state((url.clone(), script.clone()));
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeIssuer { url, script }
    }
}

type Shared = State<(String, Arc<Mutex<Script>>)>;

async fn document(State((issuer, script)): Shared) -> Response {
    let mut s = script.lock().unwrap();
    s.documents.push(Instant::now());
    if s.failures > 0 {
        s.failures -= 1;
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let served = s.documents.len();
    axum::Json(serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/token-{served}"),
        "token_endpoint_auth_methods_supported": ["private_key_jwt"]
    }))
    .into_response()
}

async fn token(
    State((_, script)): Shared,
    axum::extract::Path(path): axum::extract::Path<String>,
) -> Response {
    let mut s = script.lock().unwrap();
    s.tokens.push(path.clone());
    if s.moved && s.tokens.len() == 1 {
        return StatusCode::NOT_FOUND.into_response();
    }
    axum::Json(serde_json::json!({
        "access_token": "fake-access-token", "token_type": "Bearer", "expires_in": 3600
    }))
    .into_response()
}

fn fake_client(issuer: &FakeIssuer) -> String {
    format!(
        r#"
[clients.fake]
issuer = "{}"
client_id = "fake"
client_secret_file = "{{dir}}/fake.secret"
"#,
        issuer.url
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_document_is_retried_with_backoff() {
    // Four documents refused: two fetches fail (each tries both well-known URLs).
    let issuer = FakeIssuer::start(4, false).await;
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "fake.secret", SECRET);
    let daemon = Daemon::start_in(dir, &fake_client(&issuer)).await;
    let token = daemon.client().await.get_token(get("fake")).await.unwrap();
    assert_eq!(token.into_inner().access_token, "fake-access-token");
    let s = issuer.script.lock().unwrap();
    assert_eq!(
        s.documents.len(),
        5,
        "two failed fetches, then one document"
    );
    assert_eq!(s.tokens, ["token-5"]);
    // Fetches at t0, after the first backoff, after the doubled one: not a storm.
    let first_gap = s.documents[2] - s.documents[1];
    let second_gap = s.documents[4] - s.documents[3];
    assert!(first_gap >= Duration::from_millis(500), "{first_gap:?}");
    assert!(second_gap > first_gap, "{first_gap:?} then {second_gap:?}");
    drop(s);
    // The provider does not list basic: one warning, and the request is made anyway.
    let log = daemon.log_text();
    assert_eq!(
        log.matches("does not list auth_method \"client_secret_basic\"")
            .count(),
        1,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_404_from_the_token_endpoint_reads_the_document_again() {
    let issuer = FakeIssuer::start(0, true).await;
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "fake.secret", SECRET);
    let daemon = Daemon::start_in(dir, &fake_client(&issuer)).await;
    let token = daemon.client().await.get_token(get("fake")).await.unwrap();
    assert_eq!(token.into_inner().access_token, "fake-access-token");
    let s = issuer.script.lock().unwrap();
    assert_eq!(s.tokens, ["token-1", "token-2"]);
    assert_eq!(s.documents.len(), 2);
    assert!(
        daemon
            .log_text()
            .contains("the token endpoint answered 404")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_warns_about_an_unreachable_issuer_and_passes() {
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "svc.secret", SECRET);
    let config = dir.path().join("tokend.toml");
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            r#"
[clients.offline]
issuer = "http://127.0.0.1:{port}/realm"
client_id = "svc"
client_secret_file = "{dir}/svc.secret"
"#,
            dir = dir.path().display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "tokend: warning: client \"offline\": reading the metadata of issuer http://127.0.0.1:{port}/realm failed: http://127.0.0.1:{port}/.well-known/oauth-authorization-server/realm "
        )) && stderr.contains("/realm/.well-known/openid-configuration"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok, 1 client(s)"));
}

#[tokio::test(flavor = "multi_thread")]
async fn authorize_takes_the_authorization_endpoint_from_the_issuer() {
    let port = free_port();
    let redirect_uri = format!("http://127.0.0.1:{port}/cb");
    let idp = OidcServer::start(serde_json::json!({
        "clients": [{"client_id": "web", "client_secret": SECRET,
            "grant_types": ["authorization_code", "refresh_token"],
            "redirect_uris": [redirect_uri], "scope": "openid offline_access"}]
    }));
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "web.secret", SECRET);
    let config = dir.path().join("tokend.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[clients.web]
issuer = "{issuer}"
client_id = "web"
client_secret_file = "{dir}/web.secret"
grant = "refresh_token"
refresh_token_file = "{dir}/web.refresh_token"
redirect_uri = "{redirect_uri}"
"#,
            issuer = idp.issuer,
            dir = dir.path().display()
        ),
    )
    .unwrap();
    let mut child = common::KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
            .args(["authorize", "web", "--timeout", "30", "--config"])
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(
        line.starts_with(&format!(
            "{}/auth?response_type=code&client_id=web",
            idp.issuer
        )),
        "authorize printed {line:?}"
    );
}
