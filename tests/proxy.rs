//! The credential-injecting proxy against real parts: oidc-provider as the token endpoint, a
//! loopback resource server that accepts only the current token and verifies DPoP proofs
//! (jose), and stock callers: curl over the Unix socket, Python requests and httpx, Node's
//! fetch. Also SignDpopProof for callers that send the token themselves.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::resource::ResourceServer;
use common::{Daemon, OidcServer, eventually, free_port, jwt_claims, repo_root, secret_file};
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

/// The client `api` (its token endpoint `idp`), `client_extra` TOML lines in its table, and
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
allow_tcp = true
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
    let metrics = format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"");
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

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn scrape(port: u16) -> String {
    tokend::testing::http_client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
