//! A provider that refuses a federated subject token, echoing it: the token reaches no log,
//! `last_error`, GetToken error or metric; the refused token is not sent again while unchanged
//! (no storm), nor is an expired one ever; a rotated file is used within a second. In-process
//! clients against the fault endpoint over real HTTP, on tokio's paused clock.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokend::proto;
use tonic::Code;

use crate::common::in_process::{InProcess, load_config};
use crate::fault::{FaultEndpoint, Reply};
use crate::refresh_tokens::{jwt, until};
use crate::strings::Logs;

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A service account token as Kubernetes mints them, expiring `exp_in` seconds from now.
fn sa_token(sub: &str, exp_in: i64) -> String {
    jwt(serde_json::json!({
        "iss": "https://kubernetes.default.svc",
        "sub": format!("system:serviceaccount:payments:{sub}"),
        "aud": ["sts.example.com"],
        "exp": unix_now() as i64 + exp_in,
    }))
}

/// Replaces the subject token file as the kubelet does: a new file renamed over the old.
fn rotate(path: &Path, token: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, token).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// One token-exchange client of the fault endpoint, its subject token in `subject`.
async fn start(endpoint: &FaultEndpoint, subject: &str) -> (InProcess, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sa-token");
    rotate(&file, subject);
    let toml = format!(
        "[refresh]\nrequest_timeout = \"10s\"\n\
         [clients.payments]\ntoken_endpoint = \"{}\"\nclient_id = \"payments\"\n\
         auth_method = \"none\"\ngrant = \"token_exchange\"\nsubject_token_file = \"{}\"\n\
         audience = \"https://api.example.com\"\n",
        endpoint.url,
        file.display()
    );
    let config = load_config(dir.path(), &toml);
    (InProcess::from_config(&config).await, file, dir)
}

/// The form parameter `key` of each request the endpoint saw.
fn sent(endpoint: &FaultEndpoint, key: &str) -> Vec<String> {
    endpoint
        .seen()
        .iter()
        .map(|s| {
            form_urlencoded::parse(s.body.as_bytes())
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        })
        .collect()
}

async fn state(app: &InProcess) -> i32 {
    app.status("payments").await.state
}

#[tokio::test(start_paused = true)]
async fn a_refused_subject_token_is_redacted_not_resent_and_its_rotation_used_at_once() {
    let logs = Logs::capture();
    let first = sa_token("api", 3600);
    let endpoint = FaultEndpoint::start(Reply::token("exchanged-1", 300)).await;
    let refusal = Reply::json(
        400,
        serde_json::json!({
            "error": "invalid_request",
            "error_description": format!("subject_token {first} is not trusted"),
        }),
    );
    endpoint.then([refusal.clone(), refusal]);
    let (app, file, _dir) = start(&endpoint, &first).await;
    until("the refusal", || async {
        (state(&app).await == proto::ClientState::NeedsOperator as i32).then_some(())
    })
    .await;
    assert_eq!(sent(&endpoint, "grant_type"), [EXCHANGE]);
    assert_eq!(sent(&endpoint, "subject_token"), [first.as_str()]);
    assert_eq!(
        sent(&endpoint, "subject_token_type"),
        ["urn:ietf:params:oauth:token-type:jwt"]
    );
    assert_eq!(sent(&endpoint, "audience"), ["https://api.example.com"]);
    let status = app.status("payments").await;
    let error = &status.last_error;
    assert!(error.contains("[redacted] is not trusted"), "{error}");
    assert!(
        error.contains(&format!(
            "the provider refused the subject token from {} (sha256:{}, iss \"https://kubernetes.default.svc\", sub \"system:serviceaccount:payments:api\"",
            file.display(),
            tokend::testing::AccessToken::new(first.clone()).fingerprint()
        )),
        "{error}"
    );
    assert!(!error.contains(&first), "{error}");
    let err = app
        .get_within("payments", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(!err.message().contains(&first), "{}", err.message());

    // Unchanged, it is sent again only at refresh.operator_retry (5 minutes).
    tokio::time::sleep(Duration::from_secs(290)).await;
    assert_eq!(endpoint.count(), 1, "the refused token was sent again");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(endpoint.count(), 2);

    // The platform rotates it: exchanged within a second (the file is polled twice a second).
    let second = sa_token("api", 3601);
    assert_ne!(second, first);
    rotate(&file, &second);
    let rotated = tokio::time::Instant::now();
    let token = until("a token", || async {
        app.get_within("payments", Duration::from_millis(10))
            .await
            .ok()
    })
    .await;
    assert_eq!(token.access_token, "exchanged-1");
    assert_eq!(endpoint.count(), 3);
    let waited = endpoint.seen()[2].at - rotated;
    assert!(
        waited <= Duration::from_secs(1),
        "used {waited:?} after the rotation: {:?}",
        endpoint.times_since(app.t0)
    );
    assert_eq!(sent(&endpoint, "subject_token")[2], second);

    let log = logs.all();
    assert!(log.contains("invalid_request"), "{log}");
    for token in [&first, &second] {
        assert!(
            !log.contains(token.as_str()),
            "the log shows a subject token:\n{log}"
        );
        assert!(!tokend::testing::metrics_exposition(&app.clients.store).contains(token.as_str()));
    }
}

#[tokio::test(start_paused = true)]
async fn an_expired_subject_token_is_never_sent() {
    let logs = Logs::capture();
    let endpoint = FaultEndpoint::start(Reply::token("exchanged", 300)).await;
    // Expiring within the request timeout (10 s) is as good as expired.
    let expiring = sa_token("api", 5);
    let (app, file, _dir) = start(&endpoint, &expiring).await;
    until("the refusal", || async {
        (state(&app).await == proto::ClientState::NeedsOperator as i32).then_some(())
    })
    .await;
    let error = app.status("payments").await.last_error;
    assert!(error.contains("expires in"), "{error}");
    assert!(error.contains("it was not sent"), "{error}");
    let expired = sa_token("api", -60);
    rotate(&file, &expired);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let error = app.status("payments").await.last_error;
    assert!(error.contains("expired 1m"), "{error}");
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(endpoint.count(), 0, "an expired subject token was sent");

    let fresh = sa_token("api", 3600);
    rotate(&file, &fresh);
    let rotated = tokio::time::Instant::now();
    until("a token", || async {
        app.get_within("payments", Duration::from_millis(10))
            .await
            .ok()
    })
    .await;
    assert_eq!(sent(&endpoint, "subject_token"), [fresh.as_str()]);
    assert!(endpoint.seen()[0].at - rotated <= Duration::from_secs(1));

    let log = logs.all();
    assert!(log.contains("it was not sent"), "{log}");
    for token in [&expiring, &expired, &fresh] {
        assert!(
            !log.contains(token.as_str()),
            "the log shows a subject token:\n{log}"
        );
    }
}
