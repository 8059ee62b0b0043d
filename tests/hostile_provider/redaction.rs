//! A provider that echoes credentials (the client secret plain, form-encoded, base64 and as the
//! whole Basic header, the refresh token sent and received, the access token it issued) in its
//! error text gets none of them into the log, `ListClients.last_error`, a GetToken error or a
//! metric.

use std::time::Duration;

use base64::Engine;
use tonic::Code;

use crate::fault::{FaultEndpoint, Reply};
use crate::refresh_tokens::{SECRET, start, until};
use crate::strings::Logs;

const CLIENT_ID: &str = "my app";
const ACCESS_TOKEN: &str = "AT-issued-1234";
const NEW_REFRESH_TOKEN: &str = "RT-rotated-5678";

/// Every form of the client's credentials that a provider might echo.
fn credentials() -> Vec<String> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let form = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let header = tokend::testing::basic_authorization(CLIENT_ID, SECRET);
    vec![
        SECRET.to_string(),
        form(SECRET),
        b64(SECRET),
        b64(&format!("{CLIENT_ID}:{SECRET}")),
        b64(&format!("{}:{}", form(CLIENT_ID), form(SECRET))),
        header.trim_start_matches("Basic ").to_string(),
        header,
    ]
}

/// What the first requests send: the credentials and the first refresh token.
fn sent() -> Vec<String> {
    let mut all = credentials();
    all.push("rt-0".into());
    all
}

/// What the last request involves: the credentials, the access token issued and the refresh
/// token it rotated to (and the last request sent).
fn later() -> Vec<String> {
    let mut all = credentials();
    all.extend([ACCESS_TOKEN.into(), NEW_REFRESH_TOKEN.into()]);
    all
}

fn assert_clean(what: &str, text: &str, echoes: &[String]) {
    for echo in echoes {
        assert!(
            !text.contains(echo.as_str()),
            "{what} shows {echo:?}:\n{text}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn echoed_credentials_are_redacted_everywhere() {
    let logs = Logs::capture();
    let endpoint = FaultEndpoint::start(Reply::token("never", 300)).await;
    let first = sent().join(" | ");
    let all = later().join(" | ");
    endpoint.then([
        // Echoes in error_description, and one in the error code (a metric label).
        Reply::json(
            503,
            serde_json::json!({"error": "temporarily_unavailable", "error_description": first}),
        ),
        Reply::json(
            500,
            serde_json::json!({"error": credentials()[3], "error_description": first}),
        ),
        // A reply that rotates the refresh token and echoes it, the access token and the
        // secret in a token_type it cannot be used with.
        Reply::json(
            200,
            serde_json::json!({
                "access_token": ACCESS_TOKEN, "refresh_token": NEW_REFRESH_TOKEN,
                "token_type": format!("{NEW_REFRESH_TOKEN} {ACCESS_TOKEN} {SECRET}")
            }),
        ),
        Reply::json(
            200,
            serde_json::json!({"access_token": ACCESS_TOKEN, "expires_in": 2}),
        ),
        // The refresh: rejected, echoing the access token issued and the refresh token sent.
        Reply::json(
            400,
            serde_json::json!({"error": "invalid_grant", "error_description": all}),
        ),
    ]);
    let h = start(endpoint, "echoing", CLIENT_ID).await;

    // Before any token: callers get the error, clean.
    h.requests(1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = h.status().await;
    assert!(
        status.last_error.contains("[redacted]"),
        "{}",
        status.last_error
    );
    assert_clean("last_error", &status.last_error, &sent());
    let err = h.get().await.unwrap_err();
    assert_clean("a GetToken error", err.message(), &sent());

    h.requests(3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_clean("last_error", &h.status().await.last_error, &later());

    // The refresh is rejected: reauthorization required, and once the token has expired
    // callers are told why.
    h.requests(5).await;
    let err = until("FAILED_PRECONDITION", || async {
        h.get()
            .await
            .err()
            .filter(|e| e.code() == Code::FailedPrecondition)
    })
    .await;
    assert!(err.message().contains("invalid_grant"), "{}", err.message());
    assert_clean("a GetToken error", err.message(), &later());
    assert_clean("last_error", &h.status().await.last_error, &later());
    assert_eq!(
        h.sent_refresh_tokens()[4],
        NEW_REFRESH_TOKEN,
        "the rotated token was kept although its reply was unusable"
    );

    let log = logs.all();
    assert!(log.contains("invalid_grant"), "{log}");
    assert_clean("the log", &log, &later());
    assert_clean("the log", &log, &sent());
    assert_clean(
        "the metrics",
        &tokend::testing::metrics_exposition(&h.app.clients.store),
        &sent(),
    );
}

#[tokio::test(start_paused = true)]
async fn a_reply_that_is_not_json_is_described_not_quoted() {
    let endpoint = FaultEndpoint::start(Reply::token("good", 300)).await;
    endpoint.then([Reply::raw(
        200,
        &format!(
            "text/html; note={}",
            form_urlencoded::byte_serialize(SECRET.as_bytes()).collect::<String>()
        ),
        format!("<html>{SECRET} maintenance</html>").as_bytes(),
    )]);
    let h = start(endpoint, "not_json", "not_json").await;
    h.requests(1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let error = h.status().await.last_error;
    assert!(error.contains("bytes of"), "{error}");
    assert!(
        !error.contains("maintenance") && !error.contains("html>"),
        "{error}"
    );
    assert_clean("last_error", &error, &credentials());
}
