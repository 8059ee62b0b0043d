//! `auth_method = "basic"` with nothing else, and a generated-looking secret (`+ / = ~` and a
//! space), against servers that decode the Basic header in each of the ways found in the wild:
//! oidc-provider (RFC 6749 form-decoding), Authlib (`unquote`, so `+` is not a space),
//! @node-oauth/oauth2-server (no decoding) and a server of this file's own that compares the
//! header byte for byte with `echo -n "id:secret" | base64`, as the first seed provider's
//! troubleshooting section has integrators check it. The last runs on tokio's paused clock to
//! count requests over refreshes and operator retries.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::in_process::{InProcess, load_config};
use common::{Daemon, OidcServer, eventually, secret_file};
use tokend::proto::{self, GetTokenRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CLIENT_ID: &str = "svc-app";
/// What a provider's secret generator hands out, plus a space: every character that RFC 6749
/// form-encoding changes and that decoders disagree about.
const SECRET: &str = "a+b/c=d~e f";

/// A `[clients.app]` table: Basic auth (the default, stated), `extra` TOML lines.
fn client(endpoint: &str, secret_file: &std::path::Path, extra: &str) -> String {
    format!(
        "[clients.app]\ntoken_endpoint = \"{endpoint}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"{}\"\nauth_method = \"basic\"\n{extra}\n",
        secret_file.display()
    )
}

async fn daemon(endpoint: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "app.secret", SECRET);
    Daemon::start_in(dir, &client(endpoint, &secret, "")).await
}

async fn token_over_socket(d: &Daemon) -> proto::Token {
    let mut request = tonic::Request::new(GetTokenRequest {
        client: "app".into(),
        min_valid_seconds: 0,
    });
    request.set_timeout(Duration::from_secs(10));
    match d.client().await.get_token(request).await {
        Ok(token) => token.into_inner(),
        Err(e) => panic!("no token: {e}\n{}", d.log_text()),
    }
}

/// A test server in another language (`tests/basic/`), configured with `BASIC_TEST_CONFIG`,
/// that prints `READY {"token_endpoint": ...}` and exits when its stdin closes.
struct ChildServer {
    child: Child,
    _stdin: ChildStdin,
    token_endpoint: String,
}

impl ChildServer {
    fn start(mut command: Command, ttl: u64) -> ChildServer {
        let config =
            serde_json::json!({"client_id": CLIENT_ID, "client_secret": SECRET, "ttl": ttl});
        let mut child = command
            .env("BASIC_TEST_CONFIG", config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: serde_json::Value = serde_json::from_str(
            line.strip_prefix("READY ")
                .unwrap_or_else(|| panic!("{command:?} failed to start: {line:?}")),
        )
        .unwrap();
        ChildServer {
            child,
            _stdin: stdin,
            token_endpoint: ready["token_endpoint"].as_str().unwrap().to_string(),
        }
    }

    /// The HTTP status of every token request so far.
    async fn statuses(&self) -> Vec<u64> {
        let url = self.token_endpoint.replace("/token", "/_test/requests");
        let body = tokend::testing::http_client()
            .get(url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let requests: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        requests
            .iter()
            .map(|r| r["status"].as_u64().unwrap())
            .collect()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oidc_provider_form_decodes_the_first_header() {
    let idp = OidcServer::start(serde_json::json!({
        "clients": [{"client_id": CLIENT_ID, "client_secret": SECRET,
                     "token_endpoint_auth_method": "client_secret_basic",
                     "grant_types": ["client_credentials"], "scope": "api:read"}]
    }));
    let d = daemon(&idp.token_endpoint).await;
    let token = token_over_socket(&d).await;
    assert_eq!(
        common::jwt_claims(&token.access_token)["client_id"],
        CLIENT_ID
    );
    let requests = idp.requests().await;
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0]["auth_method"], "client_secret_basic");
}

#[tokio::test(flavor = "multi_thread")]
async fn authlib_reads_a_space_sent_as_percent_20() {
    let python = std::env::var("TOKEND_TEST_PYTHON").expect(
        "TOKEND_TEST_PYTHON is not set: run scripts/test, or point it at a python with \
         `pip install -r tests/python/requirements.txt` (Authlib and Flask)",
    );
    let mut command = Command::new(python);
    command.arg(common::repo_root().join("tests/basic/authlib_server.py"));
    let server = ChildServer::start(command, 60);
    let d = daemon(&server.token_endpoint).await;
    assert!(!token_over_socket(&d).await.access_token.is_empty());
    // The RFC form is the one sent first, and Authlib takes it.
    assert_eq!(server.statuses().await, [200]);
}

#[tokio::test(flavor = "multi_thread")]
async fn node_oauth2_server_gets_the_raw_header_after_one_refusal_and_keeps_it() {
    let dir = common::repo_root().join("tests/basic");
    assert!(
        dir.join("node_modules/@node-oauth/oauth2-server").is_dir(),
        "@node-oauth/oauth2-server is not installed: run `npm ci --prefix tests/basic` (needs Node.js 20+)"
    );
    let mut command = Command::new("node");
    command.arg(dir.join("oauth2_server.mjs"));
    // Tokens living 3 s: the daemon refreshes within the test.
    let server = ChildServer::start(command, 3);
    let d = daemon(&server.token_endpoint).await;
    let token = token_over_socket(&d).await;
    assert!(token.access_token.starts_with("nodeoauth-"), "{token:?}");
    let statuses = eventually(Duration::from_secs(15), "two refreshes", || async {
        let s = server.statuses().await;
        (s.len() >= 4).then_some(s)
    })
    .await;
    // The form refused once; then raw, at the start and at every refresh.
    assert_eq!(statuses[..4], [401, 200, 200, 200], "{}", d.log_text());
    let log = d.log_text();
    assert_eq!(
        log.matches("accepts the Basic header raw").count(),
        1,
        "{log}"
    );
    assert!(!log.contains(SECRET), "{log}");
}

/// A token endpoint that accepts only `Authorization: Basic ` followed by exactly what
/// `echo -n "id:secret" | base64` prints, as the seed provider's troubleshooting says, and
/// answers anything else with the 401 its table lists ("Invalid Basic Auth encoding").
struct RawServer {
    url: String,
    /// The Authorization header and the body of each request.
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl RawServer {
    async fn start(client_id: &str, secret: &str) -> RawServer {
        let out = Command::new("bash")
            .args(["-c", "echo -n \"$0\" | base64 -w0"])
            .arg(format!("{client_id}:{secret}"))
            .output()
            .expect("bash and base64 (coreutils)");
        let expected = format!("Basic {}", String::from_utf8(out.stdout).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, expected.clone(), record.clone()));
            }
        });
        RawServer { url, seen }
    }

    /// The Authorization header of each request so far.
    fn seen(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// The body of each request so far.
    fn bodies(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }
}

async fn answer(mut stream: TcpStream, expected: String, seen: Arc<Mutex<Vec<(String, String)>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Headers, then the body of its Content-Length (small: a form with a grant type).
    let head_end = loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let length: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let authorization = header("authorization").unwrap_or_default();
    let count = {
        let mut seen = seen.lock().unwrap();
        let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string();
        seen.push((authorization.clone(), body));
        seen.len()
    };
    let (status, content_type, body) = if authorization.as_bytes() == expected.as_bytes() {
        let token = serde_json::json!({
            "access_token": format!("raw-{count}"), "token_type": "Bearer", "expires_in": 300
        });
        ("200 OK", "application/json", token.to_string())
    } else {
        (
            "401 Unauthorized",
            "text/plain",
            "Invalid Basic Auth encoding".to_string(),
        )
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The clients of `table` (given the file holding `secret`), in this process; the directory
/// of that file lives as long as the clients.
async fn in_process(
    table: impl Fn(&std::path::Path) -> String,
    secret: &str,
) -> (InProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "app.secret", secret);
    let config = load_config(dir.path(), &table(&secret));
    (InProcess::from_config(&config).await, dir)
}

fn state(s: proto::ClientState) -> i32 {
    s as i32
}

fn decoded(header: &str) -> String {
    use base64::Engine;
    let b64 = header.strip_prefix("Basic ").unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn auto_against_a_raw_server_takes_two_requests_once_then_one_per_refresh() {
    let raw = RawServer::start(CLIENT_ID, SECRET).await;
    let (h, _dir) = in_process(|s| client(&raw.url, s, ""), SECRET).await;
    assert_eq!(h.get("app", 0).await.unwrap().access_token, "raw-2");
    let seen = raw.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        decoded(&seen[0]),
        "svc-app:a%2Bb%2Fc%3Dd%7Ee%20f",
        "the RFC form first"
    );
    assert_eq!(decoded(&seen[1]), format!("{CLIENT_ID}:{SECRET}"));
    // Tokens live 300 s and are refreshed at 70-80% of that: three refreshes in 800 s.
    tokio::time::sleep(Duration::from_secs(800)).await;
    let seen = raw.seen();
    assert_eq!(
        seen.len(),
        5,
        "one request per refresh, with the kept encoding"
    );
    assert!(
        seen[1..]
            .iter()
            .all(|h| decoded(h) == format!("{CLIENT_ID}:{SECRET}"))
    );
    assert_eq!(h.get("app", 0).await.unwrap().access_token, "raw-5");
}

#[tokio::test(start_paused = true)]
async fn a_wrong_secret_is_tried_both_ways_once_and_needs_the_operator() {
    let raw = RawServer::start(CLIENT_ID, SECRET).await;
    let (h, _dir) = in_process(|s| client(&raw.url, s, ""), "a+b/c=d~e wrong").await;
    let err = h.get("app", 0).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let s = h.status("app").await;
    assert_eq!(s.state, state(proto::ClientState::NeedsOperator));
    for want in [
        "HTTP 401",
        "both ways",
        "refused both times",
        "auth_method = \"post\"",
    ] {
        assert!(
            s.last_error.contains(want),
            "{want:?} in {:?}",
            s.last_error
        );
    }
    assert!(!s.last_error.contains("wrong"), "{:?}", s.last_error);
    // Operator errors are retried every `operator_retry` (5 min), two requests each time.
    tokio::time::sleep(Duration::from_secs(290)).await;
    assert_eq!(raw.seen().len(), 2);
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(raw.seen().len(), 4, "no storm");
}

#[tokio::test(start_paused = true)]
async fn form_fails_against_a_raw_server_with_one_request_and_raw_works() {
    let raw = RawServer::start(CLIENT_ID, SECRET).await;
    let (h, _dir) = in_process(|s| client(&raw.url, s, "basic_encoding = \"form\""), SECRET).await;
    assert!(h.get("app", 0).await.is_err());
    let s = h.status("app").await;
    assert_eq!(s.state, state(proto::ClientState::NeedsOperator));
    assert!(s.last_error.contains("HTTP 401"), "{:?}", s.last_error);
    assert!(!s.last_error.contains("both ways"), "{:?}", s.last_error);
    assert_eq!(raw.seen().len(), 1);

    let raw = RawServer::start(CLIENT_ID, SECRET).await;
    let (h, _dir) = in_process(|s| client(&raw.url, s, "basic_encoding = \"raw\""), SECRET).await;
    assert_eq!(h.get("app", 0).await.unwrap().access_token, "raw-1");
    assert_eq!(raw.seen().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_token_refused_with_the_form_header_is_sent_again_raw_and_settled() {
    let raw = RawServer::start(CLIENT_ID, SECRET).await;
    let (h, dir) = in_process(
        |s| {
            let rt = secret_file(s.parent().unwrap(), "app.rt", "rt-1");
            client(
                &raw.url,
                s,
                &format!(
                    "grant = \"refresh_token\"\nrefresh_token_file = \"{}\"",
                    rt.display()
                ),
            )
        },
        SECRET,
    )
    .await;
    let rt = dir.path().join("app.rt");
    let token = eventually(Duration::from_secs(60), "a token", || async {
        h.get("app", 0).await.ok()
    })
    .await;
    assert_eq!(token.access_token, "raw-2");
    // Client authentication failed before the grant was looked at: the same refresh token
    // goes again, and the request is settled (no in-flight marker left to wait on).
    let bodies = raw.bodies();
    assert_eq!(bodies.len(), 2);
    assert!(
        bodies.iter().all(|b| b.contains("refresh_token=rt-1")),
        "{bodies:?}"
    );
    assert!(!rt.with_file_name("app.rt.inflight").exists());
    assert_eq!(std::fs::read_to_string(&rt).unwrap().trim(), "rt-1");
}
