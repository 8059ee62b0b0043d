//! The loopback resource server (`tests/oidc/resource_server.mjs`): an API that accepts the
//! OIDC test server's tokens, Bearer or DPoP-bound with verified proofs, and says what it got.

use std::process::{Child, ChildStdin};
use std::time::Duration;

use super::{OidcServer, repo_root, spawn_node};

pub struct ResourceServer {
    child: Child,
    _stdin: ChildStdin,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl ResourceServer {
    /// Trusts `idp`'s tokens; `require_nonce`: DPoP proofs must carry its nonce.
    pub fn start(idp: &OidcServer, require_nonce: bool) -> ResourceServer {
        let script = repo_root().join("tests/oidc/resource_server.mjs");
        let mut env = vec![("ISSUER", idp.issuer.clone())];
        if require_nonce {
            env.push(("REQUIRE_NONCE", "1".into()));
        }
        let (child, stdin, ready) = spawn_node(&script, &env, Duration::from_secs(15))
            .unwrap_or_else(|tail| panic!("the resource server did not start:\n{tail}"));
        ResourceServer {
            child,
            _stdin: stdin,
            url: ready["url"].as_str().unwrap().to_string(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> serde_json::Value {
        let response = tokend::testing::http_client()
            .request(method, format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        let body = response.bytes().await.unwrap();
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)
    }

    /// Every request it answered (but its test routes'):
    /// `{method, path, status, error, token_jti, scheme, dpop, has_nonce}`.
    pub async fn requests(&self) -> Vec<serde_json::Value> {
        match self.call(reqwest::Method::GET, "/_test/requests").await {
            serde_json::Value::Array(all) => all,
            other => panic!("/_test/requests: {other}"),
        }
    }

    /// Makes the token it accepted last a superseded one; its jti.
    pub async fn supersede(&self) -> String {
        let answer = self.call(reqwest::Method::POST, "/_test/supersede").await;
        answer["superseded"]
            .as_str()
            .expect("a token was accepted")
            .to_string()
    }
}

impl Drop for ResourceServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
