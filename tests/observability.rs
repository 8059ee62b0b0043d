//! What operators watch: the Prometheus endpoint after refreshes and failures, JSON logs, the
//! file sink under rotation, and `tokend get --json`, with the real binary against a real
//! OAuth server.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Daemon, KillOnDrop, OidcServer, eventually, free_port, sample, scrape, secret_file};
use tokend::proto::{GetTokenRequest, WatchTokenRequest};

fn provider(ttl: u64) -> OidcServer {
    OidcServer::start(serde_json::json!({
        "accessTokenTtl": ttl,
        "clients": [{"client_id": "good", "client_secret": "s3cret",
                     "token_endpoint_auth_method": "client_secret_basic",
                     "grant_types": ["client_credentials"], "scope": "api:read"}]
    }))
}

fn client(name: &str, endpoint: &str, secret: &str, extra: &str) -> String {
    format!(
        "[clients.{name}]\ntoken_endpoint = \"{endpoint}\"\nclient_id = \"good\"\nclient_secret_file = \"{{dir}}/{secret}\"\nscope = \"api:read\"\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_refreshes_failures_and_calls_with_labels() {
    let idp = provider(2);
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "good.secret", "s3cret");
    secret_file(dir.path(), "wrong.secret", "wrong");
    let port = free_port();
    let clients = [
        format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
        client("good", &idp.token_endpoint, "good.secret", ""),
        client("bad", &idp.token_endpoint, "wrong.secret", ""),
        client("down", "http://127.0.0.1:1/token", "good.secret", ""),
    ]
    .concat();
    let d = Daemon::start_in(dir, &clients).await;
    let mut rpc = d.client().await;
    for _ in 0..3 {
        rpc.get_token(GetTokenRequest {
            client: "good".into(),
            min_valid_seconds: 0,
        })
        .await
        .unwrap();
    }
    let missing = rpc
        .get_token(GetTokenRequest {
            client: "nope".into(),
            min_valid_seconds: 0,
        })
        .await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);
    let stream = rpc
        .watch_token(WatchTokenRequest {
            client: "good".into(),
        })
        .await
        .unwrap();

    // After at least one refresh of the 2 s token:
    let text = eventually(
        Duration::from_secs(10),
        "a refresh in the metrics",
        || async {
            let text = scrape(port).await;
            (sample(
                &text,
                r#"tokend_token_refreshes_total{client="good",result="success"}"#,
            )? >= 2.0)
                .then_some(text)
        },
    )
    .await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let expiry = sample(
        &text,
        r#"tokend_token_expiry_timestamp_seconds{client="good"}"#,
    )
    .unwrap();
    assert!(
        expiry > now - 1.0 && expiry <= now + 3.0,
        "expiry {expiry} vs now {now}"
    );
    // By endpoint: both clients of the provider count.
    let duration = format!(
        r#"tokend_token_request_duration_seconds_count{{endpoint="{}"}}"#,
        idp.token_endpoint
    );
    assert!(
        sample(&text, &duration).unwrap() >= 3.0,
        "{duration} in\n{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"tokend_token_endpoint_errors_total{client="bad",kind="needs_operator",error="invalid_client"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"tokend_token_endpoint_errors_total{client="down",kind="transient",error="network"}"#
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"tokend_token_refreshes_total{client="bad",result="failure"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"tokend_client_state{client="bad",state="needs_operator"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"tokend_client_state{client="bad",state="fresh"}"#),
        None,
        "only the current state has a series"
    );
    assert_eq!(
        sample(&text, r#"tokend_clients{state="needs_operator"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"tokend_client_state{client="down",state="backing_off"}"#
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &text,
            r#"tokend_grpc_requests_total{method="GetToken",code="Ok"}"#
        )
        .unwrap()
            >= 3.0
    );
    assert_eq!(
        sample(
            &text,
            r#"tokend_grpc_requests_total{method="GetToken",code="NotFound"}"#
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, "tokend_watch_streams_active"), Some(1.0));
    assert_eq!(
        sample(
            &text,
            &format!(
                r#"tokend_build_info{{version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0)
    );

    drop(stream);
    eventually(Duration::from_secs(5), "the stream to close", || async {
        (sample(&scrape(port).await, "tokend_watch_streams_active")? == 0.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line_with_the_client_named() {
    let idp = provider(2);
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "good.secret", "s3cret");
    let socket = dir.path().join("tokend.sock");
    let config = dir.path().join("tokend.toml");
    let text = format!(
        "[server]\nsocket = \"{}\"\n{}",
        socket.display(),
        client("good", &idp.token_endpoint, "good.secret", "")
    )
    .replace("{dir}", &dir.path().display().to_string());
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("log.json");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        .env("RUST_LOG", "tokend=debug")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let daemon = KillOnDrop(child);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually(
        Duration::from_secs(10),
        "two refreshes in the log",
        || async { (read().matches("token refreshed").count() >= 2).then_some(()) },
    )
    .await;
    drop(daemon);
    let mut refreshed = 0;
    for line in read().lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        if v["message"] == "token refreshed" {
            refreshed += 1;
            assert_eq!(v["client"], "good", "{line}");
            assert!(
                v["fingerprint"].as_str().is_some_and(|f| f.len() == 8),
                "{line}"
            );
        }
    }
    assert!(refreshed >= 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn file_sink_is_rewritten_atomically_on_every_rotation() {
    let idp = provider(2);
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "good.secret", "s3cret");
    let json_path = dir.path().join("good.json");
    let bare_path = dir.path().join("good.token");
    let clients = [
        client(
            "good",
            &idp.token_endpoint,
            "good.secret",
            &format!(
                "[clients.good.file_sink]\npath = \"{}\"\nmode = \"0640\"\nformat = \"json\"",
                json_path.display()
            ),
        ),
        client(
            "bare",
            &idp.token_endpoint,
            "good.secret",
            &format!(
                "[clients.bare.file_sink]\npath = \"{}\"",
                bare_path.display()
            ),
        ),
    ]
    .concat();
    let d = Daemon::start_in(dir, &clients).await;

    // A reader polling as fast as it can for three rotations never sees a partial file.
    let mut seen = HashSet::new();
    let mut reads = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < deadline {
        match std::fs::read_to_string(&json_path) {
            Ok(text) => {
                reads += 1;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("partial file ({e}): {text:?}"));
                let token = v["access_token"].as_str().unwrap().to_string();
                assert_eq!(v["token_type"], "Bearer");
                assert_eq!(v["scopes"], serde_json::json!(["api:read"]));
                assert!(v["expires_at_unix"].as_u64().is_some() && v["expires_at"].is_string());
                seen.insert(token);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("{e}"),
        }
        tokio::task::yield_now().await;
    }
    assert!(seen.len() >= 3, "{} tokens in {reads} reads", seen.len());
    let mode = std::fs::metadata(&json_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);

    // The bare format is the token and a newline, mode 0600 by default, and the current token.
    let mut rpc = d.client().await;
    let current = rpc
        .get_token(GetTokenRequest {
            client: "bare".into(),
            min_valid_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let written = eventually(
        Duration::from_secs(5),
        "the current token in the file",
        || async {
            let text = std::fs::read_to_string(&bare_path).ok()?;
            (text == format!("{current}\n")).then_some(text)
        },
    )
    .await;
    assert!(written.ends_with('\n'));
    assert_eq!(
        std::fs::metadata(&bare_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // No temporary files left beside them.
    let leftovers: Vec<_> = std::fs::read_dir(d.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn get_json_prints_token_type_scopes_and_expiry() {
    let idp = provider(60);
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "good.secret", "s3cret");
    let d = Daemon::start_in(dir, &client("good", &idp.token_endpoint, "good.secret", "")).await;
    let (code, out, err) = d.cli(&["get", "good", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["client"], "good");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["scopes"], serde_json::json!(["api:read"]));
    let expires_in = v["expires_in"].as_u64().unwrap();
    assert!((55..=60).contains(&expires_in), "{expires_in}");
    assert!(v["access_token"].as_str().unwrap().len() > 20);
}
