//! tokend against a real OAuth server (`oidc-provider`, JWT access tokens living 4 s): both
//! client authentication methods, proactive refresh, every gRPC method and status code, health
//! and reflection, the CLI, and that no secret or token reaches the log.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Daemon, OidcServer, eventually, jwt_claims, secret_file};
use tokend::proto::token_service_client::TokenServiceClient;
use tokend::proto::{
    self, GetTokenRequest, ListClientsRequest, RefreshTokenRequest, WatchTokenRequest,
};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

const TTL: u64 = 4;
// Non-ASCII and the characters RFC 6749 2.3.1 encoding exists for.
const BASIC_SECRET: &str = "s3cr:t+%é";
const POST_SECRET: &str = "p0st+s3cr&t=%";

fn provider() -> OidcServer {
    OidcServer::start(serde_json::json!({
        "accessTokenTtl": TTL,
        "clients": [
            {"client_id": "basic-client", "client_secret": BASIC_SECRET,
             "token_endpoint_auth_method": "client_secret_basic",
             "grant_types": ["client_credentials"], "scope": "api:read api:write"},
            {"client_id": "post-client", "client_secret": POST_SECRET,
             "token_endpoint_auth_method": "client_secret_post",
             "grant_types": ["client_credentials"], "scope": "api:read"}
        ]
    }))
}

/// Daemon config for the two good clients, plus `extra` TOML.
async fn daemon(idp: &OidcServer, extra: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "wrong.secret", "not-the-secret");
    secret_file(dir.path(), "basic.secret", BASIC_SECRET);
    secret_file(dir.path(), "post.secret", POST_SECRET);
    let clients = format!(
        r#"
[clients.basic]
token_endpoint = "{ep}"
client_id = "basic-client"
client_secret_file = "{{dir}}/basic.secret"
auth_method = "basic"
scope = "api:read api:write"

[clients.post]
token_endpoint = "{ep}"
client_id = "post-client"
client_secret_file = "{{dir}}/post.secret"
auth_method = "post"
scope = "api:read"
{extra}
"#,
        ep = idp.token_endpoint
    );
    Daemon::start_in(dir, &clients).await
}

fn get(client: &str, min_valid: u32) -> tonic::Request<GetTokenRequest> {
    let mut r = tonic::Request::new(GetTokenRequest {
        client: client.into(),
        min_valid_seconds: min_valid,
    });
    r.set_timeout(Duration::from_secs(10));
    r
}

async fn watch(
    rpc: &mut TokenServiceClient<Channel>,
    client: &str,
) -> tonic::Streaming<proto::Token> {
    rpc.watch_token(WatchTokenRequest {
        client: client.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

fn unix_secs(t: &Option<prost_types::Timestamp>) -> f64 {
    let t = t.as_ref().expect("timestamp set");
    t.seconds as f64 + t.nanos as f64 / 1e9
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread")]
async fn both_client_auth_methods_get_jwt_access_tokens() {
    let idp = provider();
    let d = daemon(&idp, "").await;
    let mut rpc = d.client().await;

    let basic = rpc.get_token(get("basic", 0)).await.unwrap().into_inner();
    assert_eq!(basic.token_type, "Bearer");
    assert_eq!(basic.scopes, ["api:read", "api:write"]);
    let claims = jwt_claims(&basic.access_token);
    assert_eq!(claims["client_id"], "basic-client");
    let left = unix_secs(&basic.expires_at) - now_secs();
    assert!(left > 0.0 && left <= TTL as f64 + 1.0, "expires in {left}");

    let post = rpc.get_token(get("post", 0)).await.unwrap().into_inner();
    assert_eq!(jwt_claims(&post.access_token)["client_id"], "post-client");
    assert_eq!(post.scopes, ["api:read"]);

    // The provider saw each client authenticate the way it is registered.
    let requests = idp.requests().await;
    let method = |id: &str| {
        requests
            .iter()
            .find(|r| r["client_id"] == id && r["status"] == 200)
            .map(|r| r["auth_method"].clone())
    };
    assert_eq!(method("basic-client").unwrap(), "client_secret_basic");
    assert_eq!(method("post-client").unwrap(), "client_secret_post");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_refreshed_before_expiry_with_one_request_per_lifetime() {
    let idp = provider();
    let d = daemon(&idp, "").await;
    let mut rpc = d.client().await;
    let mut stream = watch(&mut rpc, "basic").await;
    let mut seen: Vec<proto::Token> = Vec::new();
    let watch = async {
        while seen.len() < 4 {
            let t = stream.next().await.expect("stream open").expect("token");
            seen.push(t);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), watch)
        .await
        .expect("4 tokens within 30 s");
    for pair in seen.windows(2) {
        assert_ne!(pair[0].access_token, pair[1].access_token);
        // The replacement arrived while the previous token was still valid, with margin.
        let before_expiry = unix_secs(&pair[0].expires_at) - unix_secs(&pair[1].issued_at);
        assert!(
            before_expiry >= 0.5,
            "refreshed only {before_expiry:.2}s before expiry"
        );
        let age = unix_secs(&pair[1].issued_at) - unix_secs(&pair[0].issued_at);
        assert!(age >= 0.6 * TTL as f64, "refreshed after only {age:.2}s");
    }
    // One token request per token: the provider issued exactly the tokens we saw (one more
    // may be in flight at the moment we ask).
    let issued = idp.issued_to("basic-client").await.len();
    assert!(
        (seen.len()..=seen.len() + 1).contains(&issued),
        "{issued} requests for {} tokens",
        seen.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_method_and_status_code() {
    let idp = provider();
    let extra = r#"
[clients.wrong-secret]
token_endpoint = "TOKEN_ENDPOINT"
client_id = "basic-client"
client_secret_file = "{dir}/wrong.secret"

[clients.down]
token_endpoint = "http://127.0.0.1:1/token"
client_id = "nobody"
client_secret_file = "{dir}/wrong.secret"
"#
    .replace("TOKEN_ENDPOINT", &idp.token_endpoint);
    let d = daemon(&idp, &extra).await;
    let mut rpc = d.client().await;

    // GetToken: OK, NOT_FOUND, INVALID_ARGUMENT, OUT_OF_RANGE.
    rpc.get_token(get("basic", 0)).await.unwrap();
    let code = |r: Result<tonic::Response<proto::Token>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(code(rpc.get_token(get("missing", 0)).await), Code::NotFound);
    assert_eq!(code(rpc.get_token(get("", 0)).await), Code::InvalidArgument);
    assert_eq!(
        code(rpc.get_token(get("basic", 60)).await),
        Code::OutOfRange
    );

    // FAILED_PRECONDITION: the provider rejects the credentials; an operator must act.
    let err = eventually(Duration::from_secs(10), "invalid_client", || {
        let mut rpc = rpc.clone();
        async move {
            let e = rpc.get_token(get("wrong-secret", 0)).await.unwrap_err();
            (e.code() == Code::FailedPrecondition).then_some(e)
        }
    })
    .await;
    assert!(
        err.message().contains("invalid_client"),
        "{}",
        err.message()
    );

    // UNAVAILABLE: the endpoint is unreachable; the caller's deadline bounds the wait.
    let mut req = get("down", 0);
    req.set_timeout(Duration::from_secs(2));
    let err = rpc.get_token(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("token request failed"),
        "{}",
        err.message()
    );

    // RefreshToken: concurrent reports of the current token cause one request. The scheduled
    // refreshes go on meanwhile, so count only requests made while the reports were pending.
    let current = rpc.get_token(get("basic", 0)).await.unwrap().into_inner();
    let started_ms = now_secs() * 1000.0;
    let reports = (0..10).map(|_| {
        let mut rpc = rpc.clone();
        let rejected = current.access_token.clone();
        async move {
            rpc.refresh_token(RefreshTokenRequest {
                client: "basic".into(),
                rejected_access_token: rejected,
            })
            .await
            .unwrap()
            .into_inner()
        }
    });
    let replaced = futures::future::join_all(reports).await;
    let ended_ms = now_secs() * 1000.0;
    assert!(
        replaced
            .iter()
            .all(|t| t.access_token == replaced[0].access_token)
    );
    assert_ne!(replaced[0].access_token, current.access_token);
    let during = idp
        .issued_to("basic-client")
        .await
        .into_iter()
        .filter(|r| (started_ms..=ended_ms).contains(&r["at_ms"].as_f64().unwrap()))
        .count();
    assert_eq!(during, 1, "one token request for ten reports");
    let empty = rpc
        .refresh_token(RefreshTokenRequest {
            client: "basic".into(),
            rejected_access_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);

    // ListClients: every client with its state.
    let list = rpc
        .list_clients(ListClientsRequest {})
        .await
        .unwrap()
        .into_inner()
        .clients;
    let by_name = |n: &str| list.iter().find(|c| c.client == n).unwrap();
    assert_eq!(list.len(), 4);
    assert!(by_name("basic").has_valid_token);
    assert_eq!(by_name("basic").scopes, ["api:read", "api:write"]);
    assert_eq!(
        by_name("wrong-secret").state,
        proto::ClientState::NeedsOperator as i32
    );
    assert!(
        by_name("wrong-secret")
            .last_error
            .contains("invalid_client")
    );
    assert_eq!(by_name("down").state, proto::ClientState::BackingOff as i32);
    assert!(by_name("down").consecutive_failures >= 1);
    assert!(by_name("down").next_refresh_at.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_reflection_are_served() {
    let idp = provider();
    let d = daemon(&idp, "").await;
    let channel = d.channel().await;

    // Ready once the required client (every client is, by default) holds its token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    eventually(Duration::from_secs(10), "TokenService SERVING", || {
        let mut health = health.clone();
        async move {
            let status = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "tokend.v1.TokenService".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            (status == serving).then_some(())
        }
    })
    .await;
    let overall = health
        .check(tonic_health::pb::HealthCheckRequest { service: "".into() })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(overall, serving);

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply: {reply:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"tokend.v1.TokenService"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_get_prints_only_the_token_and_status_shows_clients() {
    let idp = provider();
    let d = daemon(&idp, "").await;
    let (code, out, err) = d.cli(&["get", "basic"]);
    assert_eq!(code, 0, "{err}");
    let token = out.strip_suffix('\n').expect("one trailing newline");
    assert!(
        !token.contains(char::is_whitespace),
        "only the token: {out:?}"
    );
    assert_eq!(jwt_claims(token)["client_id"], "basic-client");

    let (code, out, err) = d.cli(&["get", "nope"]);
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no client named \"nope\""), "{err}");

    // Both clients have a token once `get` answered for each.
    assert_eq!(d.cli(&["get", "post"]).0, 0);
    let (code, out, _) = d.cli(&["status"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("CLIENT"), "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("basic ") && l.contains("fresh")),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("post ") && l.contains("api:read")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn log_never_contains_secrets_or_tokens_and_sigterm_stops_cleanly() {
    let idp = provider();
    let mut d = daemon(&idp, "").await;
    let mut rpc = d.client().await;
    let mut tokens = vec![];
    for client in ["basic", "post"] {
        tokens.push(
            rpc.get_token(get(client, 0))
                .await
                .unwrap()
                .into_inner()
                .access_token,
        );
    }
    // An open WatchToken stream must not hold up the shutdown.
    let mut stream = watch(&mut rpc, "basic").await;
    stream.next().await.unwrap().unwrap();
    // Wait for a refresh, so that its log lines (and its token) are checked too.
    let refreshed = tokio::time::timeout(Duration::from_secs(3 * TTL), async {
        loop {
            let t = stream.next().await.expect("stream open").expect("token");
            if t.access_token != tokens[0] {
                return t.access_token;
            }
        }
    })
    .await
    .expect("a refreshed token within three lifetimes");
    tokens.push(refreshed);
    assert_eq!(d.stop(), Some(0), "clean exit on SIGTERM");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "watch stream ended with the daemon");
    assert!(!d.socket.exists(), "socket file removed on exit");
    let log = d.log_text();
    assert!(log.contains("token refreshed"), "debug log captured: {log}");
    for secret in [BASIC_SECRET, POST_SECRET] {
        assert!(!log.contains(secret), "client secret in log");
    }
    for token in &tokens {
        // Any long piece of a token would be a leak, not only the whole of it.
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "token in log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tokend_health_answers_probes_by_the_required_clients() {
    let idp = provider();
    let down = |required: bool| {
        format!(
            "[clients.down]\ntoken_endpoint = \"http://127.0.0.1:1/token\"\nclient_id = \"x\"\nclient_secret_file = \"{{dir}}/basic.secret\"\nrequired = {required}\n"
        )
    };
    // A required client that cannot get a token keeps the daemon not ready, but alive.
    let d = daemon(&idp, &down(true)).await;
    let mut rpc = d.client().await;
    for client in ["basic", "post"] {
        rpc.get_token(get(client, 0)).await.unwrap();
    }
    let (code, _, err) = d.cli(&["health"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not ready"), "{err}");
    let (code, _, err) = d.cli(&["health", "--live"]);
    assert_eq!(code, 0, "{err}");

    // The same client, optional: ready once the others hold their tokens.
    let d = daemon(&idp, &down(false)).await;
    eventually(
        Duration::from_secs(10),
        "tokend health exiting 0",
        || async { (d.cli(&["health"]).0 == 0).then_some(()) },
    )
    .await;

    // No daemon at all: not live either, with one line saying why.
    let socket = d.dir.path().join("elsewhere.sock");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["health", "--live", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach tokend"), "{err}");
}
