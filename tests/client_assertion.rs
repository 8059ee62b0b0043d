//! `private_key_jwt` and `client_secret_jwt` against a real provider (`oidc-provider`): every key
//! type and PEM format tokend reads, HMAC assertions, the public keys registered from `tokend
//! jwk`'s own output, a key rotated on disk without a restart, and the failures an operator
//! meets (a key the provider does not know, a key file others can read, a malformed PEM).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Daemon, OidcServer, eventually, get, secret_file};

use tonic::Code;

const TTL: u64 = 3;
const HS_SECRET: &str = "client-secret-for-hmac-assertions-0123456789-abcdefghijklmnop";
/// The algorithms the tests' assertions use; oidc-provider accepts only those it is told to.
const ALGS: &[&str] = &["RS256", "ES256", "ES384", "EdDSA", "HS256", "HS512"];

/// A new private key in `dir/name`, mode 0600, made by OpenSSL in the format named.
fn openssl_key(dir: &Path, name: &str, kind: &str) -> PathBuf {
    let path = dir.join(name);
    let out = path.to_str().unwrap();
    let args: &[&str] = match kind {
        "rsa-pkcs1" => &["genrsa", "-traditional", "-out", out, "2048"],
        "ec-p256-sec1" => &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            out,
        ],
        "ec-p384-pkcs8" => &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            out,
        ],
        "ed25519-pkcs8" => &["genpkey", "-algorithm", "ed25519", "-out", out],
        _ => unreachable!("{kind}"),
    };
    let status = Command::new("openssl")
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run `openssl` ({e}): install OpenSSL (apt install openssl), which makes the test keys"));
    assert!(status.success(), "openssl {args:?} failed");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

/// Runs `tokend` with `args`: (exit code, stdout, stderr).
fn tokend(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The JWK Set `tokend jwk` prints for `key`, as the operator registers it.
fn jwks(key: &Path, kid: Option<&str>) -> serde_json::Value {
    let mut args = vec!["jwk", "--key", key.to_str().unwrap()];
    if let Some(kid) = kid {
        args.extend(["--kid", kid]);
    }
    let (code, out, err) = tokend(&args);
    assert_eq!(code, 0, "tokend jwk: {err}");
    serde_json::from_str(&out).unwrap()
}

fn jwt_client(id: &str, method: &str) -> serde_json::Value {
    serde_json::json!({
        "client_id": id,
        "token_endpoint_auth_method": method,
        "grant_types": ["client_credentials"],
        "scope": "api:read",
    })
}

/// The token requests `client_id` made, as the provider recorded them.
async fn requests_of(idp: &OidcServer, client_id: &str) -> Vec<serde_json::Value> {
    idp.requests()
        .await
        .into_iter()
        .filter(|r| r["client_id"] == client_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_key_type_and_hmac_authenticates() {
    let dir = tempfile::tempdir().unwrap();
    let keys = [
        ("rs256", "rsa-pkcs1", Some("rsa-1")),
        ("es256", "ec-p256-sec1", None),
        ("es384", "ec-p384-pkcs8", Some("ec-384")),
        ("eddsa", "ed25519-pkcs8", None),
    ];
    let mut clients = Vec::new();
    let mut paths = Vec::new();
    for (id, kind, kid) in keys {
        let path = openssl_key(dir.path(), &format!("{id}.pem"), kind);
        let mut c = jwt_client(id, "private_key_jwt");
        c["jwks"] = jwks(&path, kid);
        clients.push(c);
        paths.push(path);
    }
    for id in ["hs256", "hs512"] {
        let mut c = jwt_client(id, "client_secret_jwt");
        c["client_secret"] = HS_SECRET.into();
        clients.push(c);
    }
    let idp = OidcServer::start(serde_json::json!({
        "accessTokenTtl": 60,
        "clientAuthSigningAlgs": ALGS,
        "clients": clients,
    }));
    secret_file(dir.path(), "hs.secret", HS_SECRET);
    let ep = &idp.token_endpoint;
    let mut config = String::new();
    for ((id, _, kid), path) in keys.iter().zip(&paths) {
        config += &format!(
            "[clients.{id}]\ntoken_endpoint = \"{ep}\"\nclient_id = \"{id}\"\nauth_method = \"private_key_jwt\"\nclient_key_file = \"{}\"\nscope = \"api:read\"\n",
            path.display()
        );
        if let Some(kid) = kid {
            config += &format!("client_key_id = \"{kid}\"\n");
        }
        if *id == "es384" {
            // The audience some providers want instead of the token endpoint.
            config += &format!(
                "issuer = \"{}\"\nclient_assertion_audience = \"issuer\"\n",
                idp.issuer
            );
        }
    }
    for (id, alg) in [("hs256", None), ("hs512", Some("HS512"))] {
        config += &format!(
            "[clients.{id}]\ntoken_endpoint = \"{ep}\"\nclient_id = \"{id}\"\nauth_method = \"client_secret_jwt\"\nclient_secret_file = \"{{dir}}/hs.secret\"\nscope = \"api:read\"\n"
        );
        if let Some(alg) = alg {
            config += &format!("client_assertion_alg = \"{alg}\"\n");
        }
    }
    let d = Daemon::start_in(dir, &config).await;
    let mut rpc = d.client().await;

    for (id, method, alg, kid) in [
        ("rs256", "private_key_jwt", "RS256", Some("rsa-1")),
        ("es256", "private_key_jwt", "ES256", None),
        ("es384", "private_key_jwt", "ES384", Some("ec-384")),
        ("eddsa", "private_key_jwt", "EdDSA", None),
        ("hs256", "client_secret_jwt", "HS256", None),
        ("hs512", "client_secret_jwt", "HS512", None),
    ] {
        let token = rpc
            .get_token(get(id))
            .await
            .unwrap_or_else(|e| panic!("{id}: {e:?}\n{}", d.log_text()))
            .into_inner();
        assert_eq!(common::jwt_claims(&token.access_token)["client_id"], id);
        let seen = requests_of(&idp, id).await;
        let ok = seen
            .iter()
            .find(|r| r["status"] == 200)
            .unwrap_or_else(|| panic!("{id}: {seen:?}"));
        assert_eq!(ok["auth_method"], method, "{id}");
        let (header, claims) = (&ok["assertion"]["header"], &ok["assertion"]["claims"]);
        assert_eq!(header["alg"], alg, "{id}");
        assert_eq!(header["typ"], "JWT", "{id}");
        assert_eq!(header.get("kid").and_then(|k| k.as_str()), kid, "{id}");
        assert_eq!(claims["iss"], id);
        assert_eq!(claims["sub"], id);
        let aud = if id == "es384" { &idp.issuer } else { ep };
        assert_eq!(claims["aud"], aud.as_str(), "{id}");
        let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert!(lifetime <= 60, "{id}: {lifetime}");
    }
    // An assertion is a credential: none reaches the log (nor does a token: both are JWTs).
    let log = d.log_text();
    assert!(!log.contains("eyJ"), "a JWT in the log:\n{log}");
    assert!(!log.contains(HS_SECRET));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_replaced_on_disk_is_used_from_the_next_refresh_on() {
    let dir = tempfile::tempdir().unwrap();
    let old = openssl_key(dir.path(), "old.pem", "ec-p256-sec1");
    let new = openssl_key(dir.path(), "new.pem", "ed25519-pkcs8");
    let mut client = jwt_client("rotating", "private_key_jwt");
    client["jwks_uri"] = "self".into();
    client["jwks"] = jwks(&old, None);
    let idp = OidcServer::start(serde_json::json!({
        "accessTokenTtl": TTL,
        "clientAuthSigningAlgs": ALGS,
        "clients": [client],
    }));
    let key = dir.path().join("client.pem");
    std::fs::copy(&old, &key).unwrap();
    let config = format!(
        "[clients.rotating]\ntoken_endpoint = \"{}\"\nclient_id = \"rotating\"\nauth_method = \"private_key_jwt\"\nclient_key_file = \"{}\"\nscope = \"api:read\"\n",
        idp.token_endpoint,
        key.display()
    );
    let d = Daemon::start_in(dir, &config).await;
    let pid = d.pid();
    let mut rpc = d.client().await;
    rpc.get_token(get("rotating")).await.unwrap();
    let algs = |seen: &[serde_json::Value]| -> Vec<(String, u64)> {
        seen.iter()
            .map(|r| {
                (
                    r["assertion"]["header"]["alg"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    r["status"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    assert_eq!(
        algs(&requests_of(&idp, "rotating").await),
        [("ES256".into(), 200)]
    );

    // The operator registers the new key beside the old one, then replaces the file (a rename,
    // as deployment tools do).
    let both = serde_json::json!({"keys": [
        jwks(&old, None)["keys"][0].clone(),
        jwks(&new, None)["keys"][0].clone(),
    ]});
    put_jwks(&idp, "rotating", &both).await;
    let staged = key.with_extension("staged");
    std::fs::copy(&new, &staged).unwrap();
    std::fs::rename(&staged, &key).unwrap();
    eventually(
        Duration::from_secs(15),
        "a refresh with the new key",
        || async {
            let seen = algs(&requests_of(&idp, "rotating").await);
            seen.contains(&("EdDSA".into(), 200)).then_some(())
        },
    )
    .await;
    // Then retires the old key: refreshes go on with the new one.
    put_jwks(&idp, "rotating", &jwks(&new, None)).await;
    let before = requests_of(&idp, "rotating").await.len();
    eventually(
        Duration::from_secs(15),
        "a refresh after the old key is retired",
        || async {
            let seen = algs(&requests_of(&idp, "rotating").await);
            (seen.len() > before + 1).then_some(())
        },
    )
    .await;
    // Every request succeeded: with the old key until the file was replaced (a refresh may have
    // fallen between registering the new key and replacing the file), then with the new one.
    let seen = algs(&requests_of(&idp, "rotating").await);
    let switched = seen.iter().position(|r| r.0 == "EdDSA").unwrap();
    assert!(
        seen[..switched].iter().all(|r| *r == ("ES256".into(), 200))
            && seen[switched..].iter().all(|r| *r == ("EdDSA".into(), 200)),
        "{seen:?}"
    );
    assert_eq!(d.pid(), pid, "no restart");
    rpc.get_token(get("rotating")).await.unwrap();
}

async fn put_jwks(idp: &OidcServer, client_id: &str, set: &serde_json::Value) {
    let status = tokend::testing::http_client()
        .put(format!("{}/_test/jwks/{client_id}", idp.issuer))
        .body(set.to_string())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_the_provider_does_not_know_needs_an_operator_without_a_retry_storm() {
    let dir = tempfile::tempdir().unwrap();
    let registered = openssl_key(dir.path(), "registered.pem", "ec-p256-sec1");
    let other = openssl_key(dir.path(), "other.pem", "ec-p256-sec1");
    let mut client = jwt_client("wrong-key", "private_key_jwt");
    client["jwks"] = jwks(&registered, Some("k1"));
    let mut hs = jwt_client("wrong-secret", "client_secret_jwt");
    hs["client_secret"] = HS_SECRET.into();
    let idp = OidcServer::start(serde_json::json!({
        "accessTokenTtl": 60,
        "clientAuthSigningAlgs": ALGS,
        "clients": [client, hs],
    }));
    secret_file(dir.path(), "wrong.secret", "not-the-secret");
    let config = format!(
        "[clients.wrong-key]\ntoken_endpoint = \"{ep}\"\nclient_id = \"wrong-key\"\nauth_method = \"private_key_jwt\"\nclient_key_file = \"{}\"\nclient_key_id = \"k1\"\n\n[clients.wrong-secret]\ntoken_endpoint = \"{ep}\"\nclient_id = \"wrong-secret\"\nauth_method = \"client_secret_jwt\"\nclient_secret_file = \"{{dir}}/wrong.secret\"\n",
        other.display(),
        ep = idp.token_endpoint
    );
    let d = Daemon::start_in(dir, &config).await;
    let rpc = d.client().await;
    for (client, hint) in [
        (
            "wrong-key",
            format!(
                "private_key_jwt (ES256, kid \"k1\", aud \"{}\") was refused",
                idp.token_endpoint
            ),
        ),
        ("wrong-secret", "client_secret_jwt (HS256".to_string()),
    ] {
        let err = eventually(Duration::from_secs(10), "needs operator", || {
            let mut rpc = rpc.clone();
            async move {
                let e = rpc.get_token(get(client)).await.unwrap_err();
                (e.code() == Code::FailedPrecondition).then_some(e)
            }
        })
        .await;
        let msg = err.message();
        assert!(msg.contains("invalid_client"), "{msg}");
        assert!(msg.contains(&hint), "{msg}");
        if client == "wrong-key" {
            assert!(
                msg.contains(&format!("tokend jwk --key {}", other.display())),
                "{msg}"
            );
        }
    }
    // No retry storm: the refused clients wait for the operator (or for their files to change).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in ["wrong-key", "wrong-secret"] {
        let n = requests_of(&idp, id).await.len();
        assert_eq!(n, 1, "{id}: {n} requests");
    }
    // The operator puts the registered key in place: the client retries at once, without a
    // reload (the key file is one of the credentials it watches).
    let staged = other.with_extension("staged");
    std::fs::copy(&registered, &staged).unwrap();
    std::fs::rename(&staged, &other).unwrap();
    eventually(
        Duration::from_secs(10),
        "a token with the right key",
        || {
            let mut rpc = rpc.clone();
            async move { rpc.get_token(get("wrong-key")).await.ok() }
        },
    )
    .await;
    let log = d.log_text();
    assert!(!log.contains("eyJ"), "a JWT in the log:\n{log}");
}

#[test]
fn key_files_others_can_read_or_that_are_not_keys_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let key = openssl_key(dir.path(), "client.pem", "ed25519-pkcs8");
    let config = dir.path().join("tokend.toml");
    std::fs::write(
        &config,
        format!(
            "[clients.c]\ntoken_endpoint = \"https://idp.example.com/token\"\nclient_id = \"c\"\nauth_method = \"private_key_jwt\"\nclient_key_file = \"{}\"\n",
            key.display()
        ),
    )
    .unwrap();
    let check = || tokend(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(check().0, 0, "{}", check().2);

    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, _, err) = check();
    assert_eq!(code, 78);
    assert!(err.contains("client_key_file"), "{err}");
    assert!(
        err.contains(&format!("{}: is readable by other users", key.display())),
        "{err}"
    );
    // `tokend jwk` holds the file to the same rule.
    let (code, _, err) = tokend(&["jwk", "--key", key.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("readable by other users"), "{err}");

    let body = "MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQC7sekritKEYmaterial";
    std::fs::write(
        &key,
        format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (code, _, err) = check();
    assert_eq!(code, 78);
    assert!(err.contains(&format!("{}: is not", key.display())), "{err}");
    assert!(
        !err.contains("sekrit") && !err.contains("MIIE"),
        "key material in: {err}"
    );
}

/// A token endpoint on 127.0.0.1 that answers every request with 401 invalid_client, quoting
/// the request's `client_assertion` in its description (as a careless provider may).
async fn echoing_endpoint() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0; 4096];
                // The whole request: headers, then Content-Length bytes of body.
                let body = loop {
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break body.to_string();
                        }
                    }
                };
                let assertion = form_urlencoded::parse(body.as_bytes())
                    .find(|(k, _)| k == "client_assertion")
                    .map(|(_, v)| v.to_string())
                    .unwrap_or_default();
                let reply = serde_json::json!({
                    "error": "invalid_client",
                    "error_description": format!("bad assertion {assertion}"),
                })
                .to_string();
                let _ = conn
                    .write_all(
                        format!(
                            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                            reply.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn an_assertion_echoed_by_the_provider_is_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let key = openssl_key(dir.path(), "client.pem", "ec-p384-pkcs8");
    let ep = echoing_endpoint().await;
    let config = format!(
        "[clients.echo]\ntoken_endpoint = \"{ep}\"\nclient_id = \"echo\"\nauth_method = \"private_key_jwt\"\nclient_key_file = \"{}\"\n",
        key.display()
    );
    let d = Daemon::start_in(dir, &config).await;
    let rpc = d.client().await;
    let err = eventually(Duration::from_secs(10), "needs operator", || {
        let mut rpc = rpc.clone();
        async move {
            let e = rpc.get_token(get("echo")).await.unwrap_err();
            (e.code() == Code::FailedPrecondition).then_some(e)
        }
    })
    .await;
    let msg = err.message();
    assert!(msg.contains("bad assertion [redacted]"), "{msg}");
    assert!(!msg.contains("eyJ"), "{msg}");
    assert!(!d.log_text().contains("eyJ"), "{}", d.log_text());
}
