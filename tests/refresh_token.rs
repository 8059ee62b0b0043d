//! Refresh-token clients end to end: `tokend authorize` through a real `oidc-provider`'s login
//! and consent pages (driven over HTTP), then the daemon rotating the refresh token many times;
//! a revoked grant; and the second seed provider's shape (`auth_code` redirect parameter, no
//! `expires_in`, scopes as a JWT array) against a stand-in of that provider.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::browser::approve_until_redirect;
use common::{Daemon, KillOnDrop, OidcServer, eventually, free_port, get, jwt_claims, secret_file};
use tokend::proto::{self, ListClientsRequest};
use tonic::Code;

const WEB_SECRET: &str = "w3b-s3cret";

fn rotating_provider(redirect_uri: &str, ttl: u64) -> OidcServer {
    OidcServer::start(serde_json::json!({
        "accessTokenTtl": ttl,
        "refreshTokenRotation": true,
        "clients": [{
            "client_id": "web-client", "client_secret": WEB_SECRET,
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["authorization_code", "refresh_token"],
            "redirect_uris": [redirect_uri],
            "scope": "openid offline_access api:read"
        }]
    }))
}

fn web_client(idp: &OidcServer, redirect_uri: &str) -> String {
    format!(
        r#"
[clients.web]
token_endpoint = "{token}"
authorize_endpoint = "{issuer}/auth"
client_id = "web-client"
client_secret_file = "{{dir}}/web.secret"
auth_method = "basic"
grant = "refresh_token"
refresh_token_file = "{{dir}}/web.refresh_token"
scope = "openid offline_access api:read"
redirect_uri = "{redirect_uri}"
pkce = true
"#,
        token = idp.token_endpoint,
        issuer = idp.issuer
    )
}

/// Runs `tokend authorize CLIENT` and returns the process and the URL it printed.
fn start_authorize(config: &Path, client: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["authorize", client, "--timeout", "60", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if !line.starts_with("http") {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "authorize printed {line:?}, then on stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (child, line.trim().to_string())
}

fn finish_authorize(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "tokend authorize failed: {stderr}");
    stderr
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn authorize_once_then_rotate_refresh_tokens_many_times() {
    let port = free_port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let idp = rotating_provider(&redirect_uri, 2);
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "web.secret", WEB_SECRET);
    let rt_file: PathBuf = dir.path().join("web.refresh_token");
    let d = Daemon::start_in(dir, &web_client(&idp, &redirect_uri)).await;
    let mut rpc = d.client().await;

    // Not yet authorized: callers are told exactly what to run.
    let err = eventually(Duration::from_secs(10), "reauthorization state", || {
        let mut rpc = rpc.clone();
        async move {
            let e = rpc.get_token(get("web")).await.unwrap_err();
            (e.code() == Code::FailedPrecondition).then_some(e)
        }
    })
    .await;
    let config = d.dir.path().join("tokend.toml");
    let command = format!("tokend authorize web --config {}", config.display());
    assert!(err.message().contains(&command), "{}", err.message());
    let (_, status, _) = d.cli(&["status"]);
    assert!(status.contains("reauthorization_required"), "{status}");

    // The one-time approval, through the provider's real pages.
    let (child, url) = start_authorize(&config, "web");
    let query: HashMap<String, String> = reqwest::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(query["code_challenge_method"], "S256");
    approve_until_redirect(&url, &redirect_uri).await;
    let said = finish_authorize(child);
    assert!(said.contains("refresh token stored"), "{said}");
    assert_eq!(mode(&rt_file), 0o600);
    assert!(
        !said.contains(
            &std::fs::read_to_string(&rt_file)
                .unwrap()
                .trim()
                .to_string()
        )
    );

    // The running daemon picks the new refresh token up without a restart.
    let first = eventually(
        Duration::from_secs(10),
        "first token after authorize",
        || {
            let mut rpc = rpc.clone();
            async move { rpc.get_token(get("web")).await.ok() }
        },
    )
    .await
    .into_inner();
    assert_eq!(jwt_claims(&first.access_token)["sub"], "alice");
    assert_eq!(first.scopes, ["api:read"]);

    // Ten rotations: each a new access token and a new refresh token on disk, none rejected.
    let mut stream = rpc
        .watch_token(proto::WatchTokenRequest {
            client: "web".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut refresh_tokens = vec![std::fs::read_to_string(&rt_file).unwrap()];
    let mut access_tokens = vec![];
    while access_tokens.len() < 11 {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a rotation within 10 s")
            .unwrap()
            .unwrap();
        access_tokens.push(next.access_token);
        refresh_tokens.push(std::fs::read_to_string(&rt_file).unwrap());
    }
    access_tokens.dedup();
    assert_eq!(access_tokens.len(), 11);
    refresh_tokens.dedup();
    assert!(
        refresh_tokens.len() >= 10,
        "refresh token rotated on disk each time"
    );
    let refreshes: Vec<_> = idp
        .requests()
        .await
        .into_iter()
        .filter(|r| r["grant_type"] == "refresh_token")
        .collect();
    assert!(refreshes.len() >= 10);
    assert!(
        refreshes.iter().all(|r| r["status"] == 200),
        "{refreshes:?}"
    );

    // A revoked grant: the next refresh gets invalid_grant, and the client asks for a person.
    std::fs::write(&rt_file, "revoked-or-unknown\n").unwrap();
    let status = eventually(Duration::from_secs(10), "reauthorization required", || {
        let mut rpc = rpc.clone();
        async move {
            let list = rpc
                .list_clients(ListClientsRequest {})
                .await
                .unwrap()
                .into_inner();
            let c = list.clients.into_iter().next().unwrap();
            (c.state == proto::ClientState::ReauthorizationRequired as i32).then_some(c)
        }
    })
    .await;
    assert!(
        status.last_error.contains("invalid_grant"),
        "{}",
        status.last_error
    );
    let err = eventually(Duration::from_secs(10), "the last token to expire", || {
        let mut rpc = rpc.clone();
        async move { rpc.get_token(get("web")).await.err() }
    })
    .await;
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains(&command), "{}", err.message());
    let log = d.log_text();
    assert_eq!(
        log.matches("authorization required").count(),
        2,
        "once per episode: {log}"
    );
}

/// A stand-in for the second seed provider (like.co): redirects with `auth_code`, answers
/// without `expires_in`, puts scopes in the JWT as an array, rotates refresh tokens, and takes
/// client credentials in the form body.
mod seed_provider {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::extract::{RawQuery, State};
    use axum::response::{IntoResponse, Redirect, Response};
    use base64::Engine;

    #[derive(Default)]
    pub struct Seed {
        pub codes: Mutex<Vec<String>>,
        pub refresh_token: Mutex<Option<String>>,
        pub issued: Mutex<u32>,
    }

    pub async fn start() -> (String, Arc<Seed>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seed = Arc::new(Seed::default());
        let app = axum::Router::new()
            .route("/in/oauth/", axum::routing::get(authorize))
            .route("/oauth/access_token", axum::routing::post(token))
            .with_state(seed.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (base, seed)
    }

    async fn authorize(State(seed): State<Arc<Seed>>, RawQuery(q): RawQuery) -> Response {
        let q: HashMap<String, String> = form_urlencoded::parse(q.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
        let code = format!("code-{}", seed.codes.lock().unwrap().len());
        seed.codes.lock().unwrap().push(code.clone());
        let mut to = reqwest::Url::parse(&q["redirect_uri"]).unwrap();
        to.query_pairs_mut()
            .append_pair("auth_code", &code)
            .append_pair("state", &q["state"]);
        Redirect::to(to.as_str()).into_response()
    }

    async fn token(State(seed): State<Arc<Seed>>, body: String) -> Response {
        let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        if form.get("client_id").map(String::as_str) != Some("likeco-app")
            || form.get("client_secret").map(String::as_str) != Some("l1ke-s3cret")
        {
            return (
                axum::http::StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({"error": "invalid_client"})),
            )
                .into_response();
        }
        let valid = match form["grant_type"].as_str() {
            "authorization_code" => seed.codes.lock().unwrap().contains(&form["code"]),
            "refresh_token" => {
                seed.refresh_token.lock().unwrap().as_deref()
                    == form.get("refresh_token").map(String::as_str)
            }
            _ => false,
        };
        if !valid {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({"error": "invalid_grant"})),
            )
                .into_response();
        }
        let n = {
            let mut n = seed.issued.lock().unwrap();
            *n += 1;
            *n
        };
        let refresh = format!("rt-{n}");
        *seed.refresh_token.lock().unwrap() = Some(refresh.clone());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let claims = serde_json::json!({
            "user": "someone", "scope": ["profile", "read:like", "write:like"],
            "iat": now, "exp": now + 3600, "jti": n
        });
        let jwt = format!(
            "{}.{}.sig",
            b64(br#"{"alg":"HS256","typ":"JWT"}"#),
            b64(claims.to_string().as_bytes())
        );
        axum::Json(serde_json::json!({
            "user": "someone", "displayName": "Some One",
            "refresh_token": refresh, "access_token": jwt
        }))
        .into_response()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn second_seed_provider_shape() {
    let (base, seed) = seed_provider::start().await;
    let port = free_port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "likeco.secret", "l1ke-s3cret");
    let clients = format!(
        r#"
[clients.likeco]
token_endpoint = "{base}/oauth/access_token"
authorize_endpoint = "{base}/in/oauth/"
client_id = "likeco-app"
client_secret_file = "{{dir}}/likeco.secret"
auth_method = "post"
grant = "refresh_token"
refresh_token_file = "{{dir}}/likeco.refresh_token"
scope = "profile read:like write:like"
redirect_uri = "{redirect_uri}"
code_param = "auth_code"
"#
    );
    let config = dir.path().join("tokend.toml");
    std::fs::write(
        &config,
        clients.replace("{dir}", &dir.path().display().to_string()),
    )
    .unwrap();

    let (child, url) = start_authorize(&config, "likeco");
    // The "browser": the provider redirects straight back with auth_code.
    let http = tokend::testing::http_client();
    let redirect = http.get(&url).send().await.unwrap();
    let location = redirect.headers()["location"].to_str().unwrap().to_string();
    assert!(location.contains("auth_code="), "{location}");
    assert!(
        http.get(&location)
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    finish_authorize(child);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("likeco.refresh_token"))
            .unwrap()
            .trim(),
        "rt-1"
    );

    let d = Daemon::start_in(dir, &clients).await;
    let mut rpc = d.client().await;
    let token = rpc.get_token(get("likeco")).await.unwrap().into_inner();
    assert_eq!(token.scopes, ["profile", "read:like", "write:like"]);
    let lifetime = token.expires_at.unwrap().seconds - token.issued_at.unwrap().seconds;
    assert!(
        (3598..=3600).contains(&lifetime),
        "expiry from the JWT exp: {lifetime}"
    );
    // The daemon's refresh rotated the token, and kept the new one.
    assert_eq!(*seed.issued.lock().unwrap(), 2);
    assert_eq!(
        std::fs::read_to_string(d.dir.path().join("likeco.refresh_token"))
            .unwrap()
            .trim(),
        "rt-2"
    );

    // A denied authorization is a clear error, and stores nothing.
    let config = d.dir.path().join("tokend.toml");
    let (child, _) = start_authorize(&config, "likeco");
    let denied = format!("{redirect_uri}?error=denied&state=whatever");
    http.get(&denied).send().await.unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the provider denied the authorization: denied"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grant_survives_forty_sigkills_at_random_moments() {
    // A rotating provider with a grace period for a just-rotated refresh token (30 s, Okta's
    // default; Auth0 has a reuse interval), 2 s access tokens, and a 400 ms pause before it
    // processes each request so that kills land mid-refresh often (about one round in four).
    // A rotation the daemon never heard of (killed before the reply) is recoverable only within
    // the grace: with 10 s, a run of rounds each killed before its refresh completed outlasted
    // it once in CI, and no client could have done better.
    let port = free_port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let idp = OidcServer::start(serde_json::json!({
        "accessTokenTtl": 2,
        "refreshTokenRotation": true,
        "refreshTokenReuseGrace": 30,
        "tokenDelayMs": 400,
        "clients": [{
            "client_id": "web-client", "client_secret": WEB_SECRET,
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["authorization_code", "refresh_token"],
            "redirect_uris": [redirect_uri],
            "scope": "openid offline_access api:read"
        }]
    }));
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "web.secret", WEB_SECRET);
    let socket = dir.path().join("tokend.sock");
    let config = dir.path().join("tokend.toml");
    let clients =
        web_client(&idp, &redirect_uri).replace("{dir}", &dir.path().display().to_string());
    // A short request timeout bounds how long a restarted daemon waits for a request its
    // killed predecessor left in flight.
    std::fs::write(
        &config,
        format!(
            "[server]\nsocket = \"{}\"\n[refresh]\nrequest_timeout = \"2s\"\n{clients}",
            socket.display()
        ),
    )
    .unwrap();
    let (child, url) = start_authorize(&config, "web");
    approve_until_redirect(&url, &redirect_uri).await;
    finish_authorize(child);

    let serve = |log: &Path| {
        Command::new(env!("CARGO_BIN_EXE_tokend"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "tokend=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    };
    let refreshes = |since_ms: u128, requests: &[serde_json::Value]| {
        requests
            .iter()
            .filter(|r| {
                r["grant_type"] == "refresh_token"
                    && r["at_ms"].as_u64().unwrap() as u128 >= since_ms
            })
            .count()
    };
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    let mut mid_refresh = 0;
    for round in 0..40 {
        let log = dir.path().join(format!("round-{round}.log"));
        let started = now_ms();
        let daemon = KillOnDrop(serve(&log));
        let wait = Duration::from_millis(50 + rand::random::<u64>() % 2950);
        tokio::time::sleep(wait).await;
        drop(daemon); // SIGKILL, and wait for it
        // Requests the provider received in this round, against those the daemon saw through.
        let sent = refreshes(started, &idp.requests().await);
        let finished = std::fs::read_to_string(&log)
            .unwrap()
            .matches("token refreshed")
            .count();
        if sent > finished {
            mid_refresh += 1;
        }
    }
    // Afterwards the grant still works: a daemon starts, gets a token, and keeps rotating.
    let log = dir.path().join("final.log");
    let daemon = KillOnDrop(serve(&log));
    let mut rpc = eventually(Duration::from_secs(10), "the final daemon", || async {
        tokend::cli::ctl::connect(&socket).await.ok()
    })
    .await;
    let token = rpc.get_token(get("web")).await.unwrap().into_inner();
    assert_eq!(jwt_claims(&token.access_token)["sub"], "alice");
    let before = refreshes(0, &idp.requests().await);
    // Two more refreshes, and none in flight (the provider records a request's status when it
    // answers).
    let after = eventually(Duration::from_secs(10), "two more refreshes", || async {
        let requests = idp.requests().await;
        let answered = requests.iter().all(|r| !r["status"].is_null());
        (answered && refreshes(0, &requests) >= before + 2).then_some(requests)
    })
    .await;
    assert!(refreshes(0, &after) >= before + 2, "still rotating");
    drop(daemon);
    // Every refresh the provider processed succeeded; none was refused as a reuse.
    let rejected: Vec<_> = after.iter().filter(|r| r["status"] != 200).collect();
    assert!(rejected.is_empty(), "no refresh was refused: {rejected:?}");
    let graced = after
        .iter()
        .filter(|r| r["reused_within_grace"] == true)
        .count();
    eprintln!(
        "crash test: 40 SIGKILLs, {mid_refresh} landed mid-refresh; {graced} times the refresh token was presented again after the provider had rotated it (accepted in its grace period); {} refreshes in all",
        refreshes(0, &after)
    );
    assert!(
        mid_refresh >= 1,
        "with 400 ms in flight per 1.5 s, some kills land mid-refresh"
    );
}
