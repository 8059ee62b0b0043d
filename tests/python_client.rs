//! A Python program (grpcio, stubs generated from `proto/` at test time) gets a token, lists
//! clients, checks health and watches a rotation over the daemon's Unix socket, with the daemon
//! running against a real OAuth server. The interface exists for other languages; this proves
//! it there.

mod common;

use std::process::Command;

use common::{Daemon, OidcServer, repo_root, secret_file};

#[tokio::test(flavor = "multi_thread")]
async fn python_grpcio_client_gets_and_watches_tokens() {
    let idp = OidcServer::start(serde_json::json!({
        "accessTokenTtl": 4,
        "clients": [{"client_id": "py-client", "client_secret": "py-s3cret",
                     "token_endpoint_auth_method": "client_secret_post",
                     "grant_types": ["client_credentials"], "scope": "api:read"}]
    }));
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "py.secret", "py-s3cret");
    let d = Daemon::start_in(
        dir,
        &format!(
            "[clients.py]\ntoken_endpoint = \"{}\"\nclient_id = \"py-client\"\n\
             client_secret_file = \"{{dir}}/py.secret\"\nauth_method = \"post\"\nscope = \"api:read\"\n",
            idp.token_endpoint
        ),
    )
    .await;
    let script = repo_root().join("tests/python/tokend_client_check.py");
    let out = tokio::task::spawn_blocking(move || {
        // scripts/test provides a virtualenv with the pinned packages.
        Command::new(std::env::var("TOKEND_TEST_PYTHON").unwrap_or_else(|_| "python3".into()))
            .arg(script)
            .arg("--socket")
            .arg(&d.socket)
            .args(["--client", "py", "--watch", "2"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e}): install Python 3.11+"))
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(2),
        "Python gRPC packages missing: run `pip install -r tests/python/requirements.txt`: {stderr}"
    );
    assert!(out.status.success(), "python client failed: {stderr}");
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["ok"], true);
    assert_eq!(result["client"], "py");
    assert_eq!(result["scopes"], serde_json::json!(["api:read"]));
    assert_eq!(result["watched"], 2);
}
