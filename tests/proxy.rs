//! The credential-injecting proxy against real parts: oidc-provider as the token endpoint, a
//! loopback resource server that accepts only the current token and verifies DPoP proofs
//! (jose), and stock callers: curl over the Unix socket, Python requests and httpx, Node's
//! fetch. Also SignDpopProof for callers that send the token themselves.

mod common;
mod fault;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::resource::ResourceServer;
use common::{
    Daemon, OidcServer, eventually, free_port, jwt_claims, repo_root, sample, scrape, secret_file,
};
use fault::{FaultEndpoint, Reply};
use tokend::proto::SignDpopProofRequest;
use tonic::Code;

const SECRET: &str = "api-s3cret";

fn provider(extra: serde_json::Value) -> OidcServer {
    let mut config = serde_json::json!({
        "accessTokenTtl": 60,
        "clients": [
            {"client_id": "api-client", "client_secret": SECRET,
             "grant_types": ["client_credentials"], "scope": "api:read"}
        ]
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    OidcServer::start(config)
}

/// What curl got: status, headers (lower-cased names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `curl --unix-socket SOCKET http://proxy/PATH` with `args`, run under `wrapper` (e.g.
/// setpriv to another uid).
fn curl_as(wrapper: &[&str], socket: &Path, path: &str, args: &[&str]) -> Answer {
    let (program, pre) = match wrapper.split_first() {
        Some((first, rest)) => (
            *first,
            rest.iter().chain(["curl"].iter()).copied().collect(),
        ),
        None => ("curl", Vec::new()),
    };
    let out = Command::new(program)
        .args(pre)
        .args(["-sS", "-i", "--max-time", "30", "--unix-socket"])
        .arg(socket)
        .args(args)
        .arg(format!("http://proxy{path}"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl ({e}): install curl"));
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

fn curl(socket: &Path, path: &str, args: &[&str]) -> Answer {
    curl_as(&[], socket, path, args)
}

/// The client `api` (its token endpoint `idp`), `client_extra` TOML lines in its table (and
/// any tables after), and
/// routes `api` (Unix socket `{dir}/api.sock`, mode 0666) and `api-tcp` (loopback `port`) to
/// the resource server.
async fn daemon(
    dir: tempfile::TempDir,
    idp: &OidcServer,
    rs: &ResourceServer,
    port: u16,
    client_extra: &str,
) -> Daemon {
    secret_file(dir.path(), "api.secret", SECRET);
    let config = format!(
        r#"
[clients.api]
token_endpoint = "{ep}"
client_id = "api-client"
client_secret_file = "{{dir}}/api.secret"
scope = "api:read"
{client_extra}

[proxy.api]
listen = "unix:{{dir}}/api.sock"
socket_mode = "0666"
upstream = "{rs}"
client = "api"
max_replay_body = 4096
timeout = "5s"

[proxy.api-tcp]
listen = "127.0.0.1:{port}"
upstream = "{rs}/"
client = "api"
"#,
        ep = idp.token_endpoint,
        rs = rs.url,
    );
    Daemon::start_in(dir, &config).await
}

fn python() -> String {
    std::env::var("TOKEND_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("TOKEND_TEST_PYTHON is unset: run the tests with scripts/test, which installs requests and httpx in a virtualenv")
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn stock_http_callers_reach_the_api_with_the_clients_token_and_nothing_of_their_own() {
    let idp = provider(serde_json::json!({}));
    let rs = ResourceServer::start(&idp, false);
    let port = free_port();
    let metrics_port = free_port();
    let metrics = format!("allow_tcp = true\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"");
    let d = daemon(tempfile::tempdir().unwrap(), &idp, &rs, port, &metrics).await;
    let socket = d.dir.path().join("api.sock");
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o666
    );

    // curl, with credentials and hop-by-hop fields of its own that must not reach the API.
    let got = curl(
        &socket,
        "/things/1?x=y",
        &[
            "-H",
            "Authorization: Bearer forged",
            "-H",
            "DPoP: forged",
            "-H",
            "Connection: x-caller-hop",
            "-H",
            "X-Caller-Hop: 1",
            "-H",
            "X-End-To-End: kept",
        ],
    );
    assert_eq!(got.status, 200, "{}", got.body);
    let echo = got.json();
    assert_eq!(echo["path"], "/things/1");
    assert_eq!(echo["query"], "x=y");
    assert_eq!(echo["token"]["client_id"], "api-client");
    let headers = &echo["headers"];
    let sent = headers["authorization"].as_str().unwrap();
    assert!(sent.starts_with("Bearer ey"), "{sent}");
    assert_eq!(jwt_claims(&sent[7..])["client_id"], "api-client");
    assert!(headers.get("dpop").is_none(), "{headers}");
    assert!(headers.get("x-caller-hop").is_none(), "{headers}");
    assert_eq!(headers["x-end-to-end"], "kept");
    assert_eq!(headers["host"], rs.url.trim_start_matches("http://"));

    // Hop-by-hop fields of the answer stay with the proxy; redirects go back to the caller.
    let out = curl(&socket, "/headers-out", &[]);
    assert_eq!(out.status, 200);
    assert_eq!(out.header("x-end-to-end"), Some("1"));
    assert_eq!(out.header("x-hop"), None);
    assert_eq!(out.header("keep-alive"), None);
    let redirect = curl(&socket, "/redirect", &[]);
    assert_eq!(redirect.status, 302);
    assert_eq!(redirect.header("location"), Some("/elsewhere"));
    // A streamed answer arrives whole; an upload larger than max_replay_body is streamed.
    let stream = curl(&socket, "/stream?chunks=3&delay_ms=50", &[]);
    assert_eq!(stream.body, "chunk 0\nchunk 1\nchunk 2\n");
    let big = "b".repeat(100_000);
    let upload = curl(&socket, "/upload", &["--data-binary", &big]);
    assert_eq!(upload.json()["body_length"], 100_000);
    // Paths that would leave the base path, and requests naming a host, are refused.
    let dots = curl(&socket, "/a/%2e%2e/admin", &["--path-as-is"]);
    assert_eq!(dots.status, 400, "{}", dots.body);
    assert_eq!(dots.json()["error"], "bad_request");

    // Python requests (TCP), httpx (Unix socket, GET and a 100 kB POST), Node fetch (TCP).
    let tcp = format!("http://127.0.0.1:{port}");
    let out = Command::new(python())
        .arg(repo_root().join("tests/python/proxy_callers.py"))
        .args([tcp.as_str(), socket.to_str().unwrap(), "/py"])
        .output()
        .unwrap();
    let lines = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{lines}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node = Command::new("node")
        .arg(repo_root().join("tests/node/proxy_fetch.mjs"))
        .args([tcp.as_str(), "/js"])
        .output()
        .unwrap();
    let node_lines = String::from_utf8(node.stdout).unwrap();
    assert!(
        node.status.success(),
        "{node_lines}{}",
        String::from_utf8_lossy(&node.stderr)
    );
    let calls: Vec<serde_json::Value> = lines
        .lines()
        .chain(node_lines.lines())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let libs: Vec<_> = calls
        .iter()
        .map(|c| format!("{} {}", c["lib"], c["method"]))
        .collect();
    assert_eq!(
        libs,
        [
            r#""requests" "GET""#,
            r#""httpx" "GET""#,
            r#""httpx" "POST""#,
            r#""fetch" "GET""#,
            r#""fetch" "POST""#
        ]
    );
    for call in &calls {
        assert_eq!(call["status"], 200, "{call}");
        assert_eq!(call["body"]["token"]["client_id"], "api-client", "{call}");
    }
    assert_eq!(calls[2]["body"]["body_length"], 100_000);

    // Counted per route and status class.
    let metrics = scrape(metrics_port).await;
    assert_eq!(
        sample(
            &metrics,
            r#"tokend_proxy_requests_total{route="api",class="2xx"}"#
        ),
        Some(6.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"tokend_proxy_requests_total{route="api",class="3xx"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"tokend_proxy_refusals_total{route="api",reason="bad_request"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"tokend_proxy_requests_total{route="api-tcp",class="2xx"}"#
        ),
        Some(3.0)
    );
    assert!(metrics.contains(r#"tokend_proxy_upstream_duration_seconds_count{route="api"}"#));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_token_is_replaced_once_and_the_request_sent_again_if_its_body_was_held() {
    let idp = provider(serde_json::json!({}));
    let rs = ResourceServer::start(&idp, false);
    let d = daemon(
        tempfile::tempdir().unwrap(),
        &idp,
        &rs,
        free_port(),
        "[refresh]\nmin_interval = \"1s\"",
    )
    .await;
    let socket = d.dir.path().join("api.sock");
    let first = curl(&socket, "/one", &[]).json();
    let first_jti = first["token"]["jti"].as_str().unwrap().to_string();

    // The API stops accepting the token: the proxy reports it, gets a new one, and the
    // caller sees only the answer to the request sent again (with its held body).
    assert_eq!(rs.supersede().await, first_jti);
    let replayed = curl(&socket, "/two", &["--data-binary", "small body"]);
    assert_eq!(replayed.status, 200, "{}", replayed.body);
    let echo = replayed.json();
    assert_ne!(echo["token"]["jti"], first_jti.as_str());
    assert_eq!(echo["body_length"], 10);
    let two: Vec<_> = rs
        .requests()
        .await
        .into_iter()
        .filter(|r| r["path"] == "/two")
        .map(|r| (r["status"].as_u64().unwrap(), r["token_jti"].clone()))
        .collect();
    assert_eq!(two.len(), 2, "{two:?}");
    assert_eq!(two[0], (401, first_jti.clone().into()));
    assert_eq!(two[1].0, 200);
    assert!(d.log_text().contains(
        "the upstream rejected the token (401); sending the request again with a new one"
    ));

    // A body larger than max_replay_body is streamed once: the 401 goes back as it came.
    rs.supersede().await;
    let big = "b".repeat(10_000);
    let streamed = curl(&socket, "/three", &["--data-binary", &big]);
    assert_eq!(streamed.status, 401);
    assert!(
        streamed
            .header("www-authenticate")
            .unwrap()
            .contains("invalid_token"),
        "{:?}",
        streamed.headers
    );
    // An API that refuses every token is asked twice, never more.
    let bare = curl(&socket, "/bare401", &[]);
    assert_eq!(bare.status, 401);
    let tries = rs
        .requests()
        .await
        .into_iter()
        .filter(|r| r["path"] == "/bare401")
        .count();
    assert_eq!(tries, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_valid_token_the_proxy_answers_503_and_never_sends_an_expired_one() {
    let idp = provider(serde_json::json!({"accessTokenTtl": 4}));
    let rs = ResourceServer::start(&idp, false);
    let d = daemon(
        tempfile::tempdir().unwrap(),
        &idp,
        &rs,
        free_port(),
        "[refresh]\nbackoff_min = \"30s\"\nbackoff_max = \"60s\"",
    )
    .await;
    let socket = d.dir.path().join("api.sock");
    assert_eq!(curl(&socket, "/before", &[]).status, 200);
    // The provider goes away; once the token expires, callers are told why and when.
    drop(idp);
    let refused = eventually(
        Duration::from_secs(10),
        "a 503 once the token expired",
        || {
            let got = curl(&socket, "/during", &[]);
            async move { (got.status == 503).then_some(got) }
        },
    )
    .await;
    let body = refused.json();
    assert_eq!(body["error"], "no_token");
    assert_eq!(body["client"], "api");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains("no valid token") && reason.contains("next attempt at"),
        "{reason}"
    );
    assert!(body["next_attempt_at"].is_string(), "{body}");
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // No request with an expired token reached the API (which allows no clock skew): the
    // proxy stops sending a token before its last seconds.
    let statuses: Vec<_> = rs
        .requests()
        .await
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_the_client_does_not_allow_are_refused_403_and_audited() {
    let idp = provider(serde_json::json!({}));
    let rs = ResourceServer::start(&idp, false);
    let dir = tempfile::tempdir().unwrap();
    // Others may reach the socket (mode 0666) through the directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let port = free_port();
    let d = daemon(dir, &idp, &rs, port, "allowed_users = [\"root\"]").await;
    let socket = d.dir.path().join("api.sock");
    assert_eq!(curl(&socket, "/root", &[]).status, 200);
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let refused = curl_as(&nobody, &socket, "/nobody", &[]);
    assert_eq!(refused.status, 403, "{}", refused.body);
    let body = refused.json();
    assert_eq!(body["error"], "caller");
    assert!(
        body["reason"].as_str().unwrap().contains("uid 65534"),
        "{body}"
    );
    let log = d.log_text();
    assert!(
        log.lines().any(|l| l.contains("proxy request refused")
            && l.contains("uid 65534")
            && l.contains("route=api")),
        "{log}"
    );
    // TCP callers cannot be identified: a client is served there only with allow_tcp.
    let tcp = tokend::testing::http_client()
        .get(format!("http://127.0.0.1:{port}/tcp"))
        .send()
        .await
        .unwrap();
    assert_eq!(tcp.status(), 403);
    let paths: Vec<_> = rs
        .requests()
        .await
        .iter()
        .map(|r| r["path"].clone())
        .collect();
    assert_eq!(paths, ["/root"]);
}

/// A daemon whose client `api` has `dpop = true`, its key in `keys`.
async fn dpop_daemon(idp: &OidcServer, rs: &ResourceServer, keys: &Path) -> Daemon {
    let extra = format!(
        "dpop = true\ndpop_key_file = \"{}/api.dpop.pem\"",
        keys.display()
    );
    daemon(tempfile::tempdir().unwrap(), idp, rs, free_port(), &extra).await
}

#[tokio::test(flavor = "multi_thread")]
async fn dpop_tokens_are_bound_to_a_key_that_stays_in_tokend_and_proofs_meet_nonces() {
    // Both servers want nonces: the token endpoint (oidc-provider) and the API.
    let idp = provider(serde_json::json!({"dpopNonce": true}));
    let rs = ResourceServer::start(&idp, true);
    let keys = tempfile::tempdir().unwrap();
    let mut d = dpop_daemon(&idp, &rs, keys.path()).await;
    let socket = d.dir.path().join("api.sock");

    // The key was made by the first token request, mode 0600, and the token is bound to it.
    let mut rpc = d.client().await;
    let token = rpc
        .get_token(common::get("api"))
        .await
        .unwrap()
        .into_inner();
    let key_file = keys.path().join("api.dpop.pem");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(token.token_type, "DPoP");
    let jkt = jwt_claims(&token.access_token)["cnf"]["jkt"]
        .as_str()
        .expect("a DPoP-bound token")
        .to_string();
    // The token request was sent again with the nonce oidc-provider asked for.
    let asked: Vec<_> = idp
        .requests()
        .await
        .into_iter()
        .filter(|r| r["client_id"] == "api-client")
        .map(|r| {
            (
                r["status"].clone(),
                r["dpop"]["nonce"].is_string(),
                r["dpop"]["jkt"].clone(),
            )
        })
        .collect();
    assert_eq!(asked[0].0, 400, "{asked:?}");
    assert!(!asked[0].1);
    assert_eq!(asked[1].0, 200);
    assert!(asked[1].1);
    assert_eq!(asked[1].2, jkt.as_str());

    // Through the proxy: `Authorization: DPoP` with a proof, the API's nonce met by one replay.
    let got = curl(&socket, "/dpop?q=1", &["-X", "POST", "--data-binary", "{}"]);
    assert_eq!(got.status, 200, "{}", got.body);
    let echo = got.json();
    assert_eq!(echo["token"]["jkt"], jkt.as_str());
    assert!(echo["dpop"]["nonce"].is_string(), "{echo}");
    assert!(
        echo["headers"]["authorization"]
            .as_str()
            .unwrap()
            .starts_with("DPoP ")
    );
    let seen: Vec<_> = rs
        .requests()
        .await
        .into_iter()
        .map(|r| (r["status"].clone(), r["error"].clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (401.into(), "use_dpop_nonce".into()),
            (200.into(), serde_json::Value::Null)
        ]
    );
    // The nonce is remembered: the next request needs no replay.
    assert_eq!(curl(&socket, "/again", &[]).status, 200);
    assert_eq!(rs.requests().await.len(), 3);

    // SignDpopProof, for a caller that sends the token itself: first without the API's nonce,
    // which the API then gives, then with it.
    let http = tokend::testing::http_client();
    let url = format!("{}/direct?page=2", rs.url);
    let sign = |nonce: &str| SignDpopProofRequest {
        client: "api".into(),
        http_method: "GET".into(),
        http_uri: url.clone(),
        nonce: nonce.into(),
    };
    let signed = rpc.sign_dpop_proof(sign("")).await.unwrap().into_inner();
    let bound = signed.token.unwrap();
    assert_eq!(bound.token_type, "DPoP");
    let claims = jwt_claims(&signed.proof);
    assert_eq!(claims["htm"], "GET");
    assert_eq!(
        claims["htu"],
        format!("{}/direct", rs.url),
        "no query in htu"
    );
    let send = |proof: String, token: String| {
        http.get(&url)
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof)
            .send()
    };
    let first = send(signed.proof, bound.access_token.clone())
        .await
        .unwrap();
    // The proxy met the nonce before; a direct caller may hold an older one, or none.
    let nonce = match first.status().as_u16() {
        200 => None,
        401 => Some(first.headers()["dpop-nonce"].to_str().unwrap().to_string()),
        other => panic!("direct call answered {other}"),
    };
    if let Some(nonce) = nonce {
        let signed = rpc
            .sign_dpop_proof(sign(&nonce))
            .await
            .unwrap()
            .into_inner();
        let token = signed.token.unwrap().access_token;
        assert_eq!(send(signed.proof, token).await.unwrap().status(), 200);
    }
    // Bad input names what is wrong, never echoing it.
    for (request, what) in [
        (
            SignDpopProofRequest {
                http_method: "G ET".into(),
                ..sign("")
            },
            "http_method",
        ),
        (
            SignDpopProofRequest {
                http_uri: "ftp://x/secret-path".into(),
                ..sign("")
            },
            "http_uri",
        ),
        (
            SignDpopProofRequest {
                http_uri: "https://u:pw@x/".into(),
                ..sign("")
            },
            "http_uri",
        ),
        (
            SignDpopProofRequest {
                nonce: "a b".into(),
                ..sign("")
            },
            "nonce",
        ),
    ] {
        let status = rpc.sign_dpop_proof(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(what), "{status:?}");
        assert!(!status.message().contains("secret-path") && !status.message().contains("pw"));
    }
    let unknown = rpc
        .sign_dpop_proof(SignDpopProofRequest {
            client: "nope".into(),
            ..sign("")
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // The same key after a restart: tokens stay bound to the same thumbprint.
    d.stop();
    let d = dpop_daemon(&idp, &rs, keys.path()).await;
    let mut rpc = d.client().await;
    let again = rpc
        .get_token(common::get("api"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jwt_claims(&again.access_token)["cnf"]["jkt"], jkt.as_str());
    // The key is nowhere in the log.
    let pem = std::fs::read_to_string(&key_file).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!d.log_text().contains(&body[..40]));
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_dpop_proof_refuses_a_bearer_client() {
    let idp = provider(serde_json::json!({}));
    let rs = ResourceServer::start(&idp, false);
    let d = daemon(tempfile::tempdir().unwrap(), &idp, &rs, free_port(), "").await;
    let mut rpc = d.client().await;
    let status = rpc
        .sign_dpop_proof(SignDpopProofRequest {
            client: "api".into(),
            http_method: "GET".into(),
            http_uri: format!("{}/x", rs.url),
            nonce: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("dpop = true"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_upstream_or_caller_costs_one_request_or_one_connection() {
    let idp = provider(serde_json::json!({}));
    let upstream = FaultEndpoint::start(Reply::raw(200, "text/plain", b"ok")).await;
    let base = upstream.url.trim_end_matches("/token");
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "api.secret", SECRET);
    let config = format!(
        r#"
[clients.api]
token_endpoint = "{ep}"
client_id = "api-client"
client_secret_file = "{{dir}}/api.secret"

[proxy.hostile]
listen = "unix:{{dir}}/hostile.sock"
upstream = "{base}"
client = "api"
timeout = "1s"
max_connections_per_uid = 3
"#,
        ep = idp.token_endpoint
    );
    let d = Daemon::start_in(dir, &config).await;
    let socket = d.dir.path().join("hostile.sock");

    // An upstream that does not answer in time, or hangs up, is the caller's 504 or 502.
    upstream.then([
        Reply::raw(200, "text/plain", b"late").after(Duration::from_secs(5)),
        Reply::Drop,
        Reply::Stall {
            body: b"half of a body".to_vec(),
        },
    ]);
    let late = curl(&socket, "/late", &[]);
    assert_eq!(late.status, 504, "{}", late.body);
    assert_eq!(late.json()["error"], "upstream_timeout");
    let dropped = curl(&socket, "/dropped", &[]);
    assert_eq!(dropped.status, 502, "{}", dropped.body);
    assert_eq!(dropped.json()["error"], "upstream_unreachable");
    // One that stops sending mid-body: the caller's transfer ends in an error, within the
    // route's timeout, and nothing else is held.
    let stalled = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--unix-socket"])
        .arg(&socket)
        .arg("http://proxy/stalled")
        .output()
        .unwrap();
    assert!(
        !stalled.status.success(),
        "a truncated answer must not look complete"
    );
    assert!(
        !String::from_utf8_lossy(&stalled.stderr).contains("Operation timed out"),
        "the proxy, not curl's own limit, ends it: {}",
        String::from_utf8_lossy(&stalled.stderr)
    );
    // The token went to the upstream, which is the route's own, and nowhere else.
    let seen = upstream.seen();
    assert!(seen.iter().all(|s| {
        s.authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Bearer "))
    }));

    // h2c callers are served as HTTP/1.1 ones are.
    let h2 = curl(&socket, "/h2", &["--http2-prior-knowledge"]);
    assert_eq!((h2.status, h2.body.as_str()), (200, "ok"));

    // Connections past max_connections_per_uid are closed at once; the held ones count.
    use std::io::Read;
    let held: Vec<_> = (0..3)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
        .collect();
    let mut over = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(over.read(&mut byte).unwrap(), 0, "closed without an answer");
    drop(held);
    let again = eventually(
        Duration::from_secs(5),
        "a connection once others closed",
        || {
            let got = curl(&socket, "/again", &[]);
            async move { (got.status == 200).then_some(()) }
        },
    );
    again.await;
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_change_at_restart_and_a_reload_cannot_take_a_routes_client_away() {
    let idp = provider(serde_json::json!({}));
    let rs = ResourceServer::start(&idp, false);
    let d = daemon(tempfile::tempdir().unwrap(), &idp, &rs, free_port(), "").await;
    let socket = d.dir.path().join("api.sock");
    let check = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["check", "--config"])
        .arg(d.config_path())
        .output()
        .unwrap();
    assert!(check.status.success());
    let out = String::from_utf8(check.stdout).unwrap();
    assert!(
        out.contains(&format!(
            "proxy.api: unix:{} -> {} with client \"api\"'s token",
            socket.display(),
            rs.url
        )),
        "{out}"
    );
    // The client renamed, the routes following it: valid, but the running routes would lose
    // their client, so the reload is refused and they keep working.
    let config = std::fs::read_to_string(d.config_path()).unwrap();
    let renamed = config
        .replace("[clients.api]", "[clients.renamed]")
        .replace("client = \"api\"", "client = \"renamed\"");
    std::fs::write(d.config_path(), renamed).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    eventually(Duration::from_secs(10), "the reload refused", || async {
        d.log_text()
            .contains("proxy.api sends client \"api\"'s token, which the new configuration removes")
            .then_some(())
    })
    .await;
    assert_eq!(curl(&socket, "/still", &[]).status, 200);
}
