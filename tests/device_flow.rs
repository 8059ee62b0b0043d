//! `tokend authorize NAME --device` (RFC 8628) against a real `oidc-provider` with its device
//! flow on: a public client (`auth_method = "none"`, no secret, no PKCE) configured by its
//! issuer alone; the person's side (entering the code, signing in, consenting) driven over
//! HTTP; then the daemon refreshing with the stored refresh token as that public client. A
//! denied and an expired code end with a clear message and exit code 1.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::browser::{Answer, answer_pages};
use common::{Daemon, KillOnDrop, OidcServer, eventually};
use tokend::proto::GetTokenRequest;

const TTL: u64 = 3;

fn provider(device_code_ttl: u64) -> OidcServer {
    OidcServer::start(serde_json::json!({
        "accessTokenTtl": TTL,
        "deviceFlow": true,
        "deviceCodeTtl": device_code_ttl,
        "clients": [{
            "client_id": "tv", "token_endpoint_auth_method": "none",
            "grant_types": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
            "scope": "openid offline_access api:read"
        }]
    }))
}

fn client_table(idp: &OidcServer) -> String {
    format!(
        r#"
[clients.tv]
issuer = "{issuer}"
client_id = "tv"
auth_method = "none"
grant = "refresh_token"
refresh_token_file = "{{dir}}/tv.refresh_token"
scope = "openid offline_access api:read"
"#,
        issuer = idp.issuer
    )
}

/// Writes a config with `clients` in `dir` for `tokend authorize`.
fn config_in(dir: &Path, clients: &str) -> PathBuf {
    let path = dir.join("authorize.toml");
    let text = format!(
        "[server]\nsocket = \"{}/unused.sock\"\n{}",
        dir.display(),
        clients.replace("{dir}", &dir.display().to_string())
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The printed prompt: verification URI, user code, and the complete URI.
struct Printed {
    uri: String,
    code: String,
    complete: String,
}

fn start_device_flow(config: &Path) -> (KillOnDrop, Printed) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["authorize", "tv", "--device", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..3 {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        lines.push(line.trim_end().to_string());
    }
    let field = |prefix: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {lines:?}"))
            .to_string()
    };
    let printed = Printed {
        uri: field("Open: "),
        code: field("Code: "),
        complete: field("Or open (code included): "),
    };
    (KillOnDrop(child), printed)
}

/// Waits for the process to end (at most 60 s): its exit code and stderr.
fn finish(mut child: KillOnDrop) -> (i32, String) {
    for _ in 0..600 {
        if let Some(status) = child.0.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr)
                .unwrap();
            return (status.code().unwrap_or(-1), stderr);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("tokend authorize --device did not end within 60 s");
}

#[tokio::test(flavor = "multi_thread")]
async fn device_flow_stores_a_refresh_token_the_daemon_then_uses() {
    let idp = provider(600);
    let dir = tempfile::tempdir().unwrap();
    let clients = client_table(&idp);
    let config = config_in(dir.path(), &clients);
    let (child, printed) = start_device_flow(&config);
    assert_eq!(printed.uri, format!("{}/device", idp.issuer));
    assert!(
        printed.code.len() >= 8
            && printed
                .code
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == '-'),
        "user code {:?}",
        printed.code
    );
    assert_eq!(
        printed.complete,
        format!("{}?user_code={}", printed.uri, printed.code)
    );
    let last = answer_pages(&printed.complete, Answer::Approve).await;
    assert!(last.contains("Sign-in Success"), "last page: {last}");
    let (code, stderr) = finish(child);
    assert_eq!(code, 0, "tokend authorize --device: {stderr}");
    let rt_file = dir.path().join("tv.refresh_token");
    let mode = std::fs::metadata(&rt_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let requests = idp.requests().await;
    let device_grants: Vec<_> = requests
        .iter()
        .filter(|r| r["grant_type"] == "urn:ietf:params:oauth:grant-type:device_code")
        .collect();
    assert!(
        device_grants
            .last()
            .is_some_and(|r| r["status"] == 200 && r["auth_method"] == "none"),
        "{requests:?}"
    );
    // Polled at the default 5 s interval: never a burst.
    let times: Vec<i64> = device_grants
        .iter()
        .map(|r| r["at_ms"].as_i64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[1] - w[0] >= 4500),
        "poll times {times:?}"
    );

    // The daemon refreshes as the public client with the stored refresh token (auth_method
    // "none": only client_id in the body), again once the short-lived token nears its end.
    let daemon = Daemon::start_in(dir, &clients).await;
    let mut grpc = daemon.client().await;
    let mut request = tonic::Request::new(GetTokenRequest {
        client: "tv".into(),
        min_valid_seconds: 0,
    });
    request.set_timeout(Duration::from_secs(10));
    let token = grpc.get_token(request).await.unwrap().into_inner();
    assert!(!token.access_token.is_empty());
    eventually(Duration::from_secs(20), "two refreshes", || async {
        let refreshes: Vec<_> = idp
            .issued_to("tv")
            .await
            .into_iter()
            .filter(|r| r["grant_type"] == "refresh_token")
            .collect();
        assert!(refreshes.iter().all(|r| r["auth_method"] == "none"));
        (refreshes.len() >= 2).then_some(())
    })
    .await;
    assert!(
        !daemon
            .log_text()
            .contains(&std::fs::read_to_string(&rt_file).unwrap())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_code_ends_with_a_clear_message() {
    let idp = provider(600);
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), &client_table(&idp));
    let (child, printed) = start_device_flow(&config);
    answer_pages(&printed.complete, Answer::Abort).await;
    let (code, stderr) = finish(child);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("denied (access_denied)"), "{stderr}");
    assert!(!dir.path().join("tv.refresh_token").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_code_ends_with_a_clear_message() {
    // The code lives 6 s: one poll at 5 s (pending), none past its end.
    let idp = provider(6);
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), &client_table(&idp));
    let (child, _printed) = start_device_flow(&config);
    let (code, stderr) = finish(child);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("the code expired before it was approved (after 6s); run again"),
        "{stderr}"
    );
    let polls = idp
        .requests()
        .await
        .into_iter()
        .filter(|r| r["grant_type"] == "urn:ietf:params:oauth:grant-type:device_code")
        .count();
    assert_eq!(polls, 1);
}
