//! `tokend authorize NAME --device`: the device authorization grant (RFC 8628), for hosts with
//! no browser and no way back to a loopback redirect. Asks the device authorization endpoint
//! for a user code, shows where to enter it, polls the token endpoint until the person approved
//! (or denied, or the code expired), and stores the refresh token as the browser flow does.
//!
//! Every number the provider sends is bounded: it cannot make tokend poll in a tight loop or
//! wait for years.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::Instant;

use super::authorize::{self, AuthorizeError};
use crate::config::Config;
use crate::oauth::{self, FailureKind, FetchError, Grant, Redactor};
use crate::secret::{ExposeSecret, SecretString};

/// RFC 8628 section 3.4.
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The polling interval when the provider names none (RFC 8628 section 3.2)...
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// ...at least this (a provider asking for less would have tokend hammer it)...
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// ...and at most this, however often it says `slow_down`: a person is waiting.
const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// What `slow_down` adds to the interval, for this and every later request (section 3.5).
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// A code lives at most this long, whatever the provider says (Entra ID: 15 min, Google and
/// the RFC's example: 30 min): nobody waits at a terminal for longer.
const MAX_EXPIRES_IN: Duration = Duration::from_secs(3600);
/// Assumed when the reply has no `expires_in` (it is required; Entra ID's is 900 s).
const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(900);

/// One request, connect to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest user code and URI shown: real ones are 8-9 characters and a short URL.
const MAX_USER_CODE: usize = 64;
const MAX_URI: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Authorize(#[from] AuthorizeError),
    #[error("the device authorization endpoint {0}")]
    Request(String),
    #[error("unusable device authorization reply: {0}")]
    BadReply(&'static str),
    #[error("the authorization was denied (access_denied); run again to retry")]
    Denied,
    #[error(
        "the code expired before it was approved (after {}); run again for a new one",
        humantime::format_duration(*.0)
    )]
    Expired(Duration),
    #[error("polling the token endpoint failed: {0}")]
    Poll(FetchError),
}

/// What the person at a browser needs: shown before polling starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub verification_uri: String,
    /// The URI with the code in it, when the provider gives one (for a QR code or a click).
    pub verification_uri_complete: Option<String>,
    pub user_code: String,
    /// How long the code lives, bounded.
    pub expires_in: Duration,
}

/// The device authorization reply, checked and bounded.
struct DeviceGrant {
    device_code: SecretString,
    prompt: Prompt,
    interval: Duration,
}

/// Runs the device flow for client `name`: `announce` shows the prompt; the refresh token is
/// stored in the client's refresh_token_file, whose path is returned.
pub async fn authorize(
    config: &Config,
    name: &str,
    announce: impl FnOnce(&Prompt),
) -> Result<PathBuf, DeviceError> {
    let c = config
        .clients
        .get(name)
        .ok_or_else(|| AuthorizeError::UnknownClient(name.to_string()))?;
    let config_error = |reason: String| AuthorizeError::Config {
        client: name.to_string(),
        reason,
    };
    if c.oauth.grant != Grant::RefreshToken {
        return Err(config_error(
            "only clients with grant = \"refresh_token\" are authorized this way".into(),
        )
        .into());
    }
    let rt_file = c
        .oauth
        .rare()
        .refresh_token_file
        .as_deref()
        .ok_or_else(|| config_error(format!("set refresh_token_file in [clients.{name}]")))?;
    let http = super::endpoints::client_http(name, c)
        .await
        .map_err(AuthorizeError::from)?;
    let endpoints = super::endpoints::resolve(c, &http)
        .await
        .map_err(AuthorizeError::from)?;
    let device_endpoint = endpoints.device_authorization.ok_or_else(|| {
        config_error(format!(
            "set device_authorization_endpoint in [clients.{name}] (or issuer, when the provider's metadata names one)"
        ))
    })?;
    // The client authenticates here as at the token endpoint (RFC 8628 section 3.1); the Basic
    // encoding the device endpoint accepts is the one the polls use.
    let learned = oauth::basic::Learned::new(name);
    // A federated client assertion is read anew for each request, as the daemon does.
    let federated = || async {
        oauth::federated::read_for_client(&c.oauth, REQUEST_TIMEOUT)
            .await
            .map_err(FetchError::from)
    };
    let presented = federated()
        .await
        .map_err(|e| DeviceError::Request(answer(&e)))?;
    let sent = tokio::time::timeout(
        REQUEST_TIMEOUT,
        oauth::post_form(
            &http,
            &c.oauth,
            &device_endpoint,
            oauth::Carried {
                grant: &[],
                with_scope: true,
                federated: presented.as_ref(),
                // The daemon's key file is its own (its owner, its directory); the grant this
                // command obtains is bound by the daemon's first refresh.
                dpop: None,
            },
            Redactor::default(),
            &learned,
        ),
    )
    .await
    .map_err(|_| DeviceError::Request(format!("did not answer within {REQUEST_TIMEOUT:?}")))?;
    let (body, _, _) = sent.map_err(|e| DeviceError::Request(answer(&e)))?;
    let grant = parse_grant(&body)?;
    announce(&grant.prompt);
    let device_code = grant.device_code.expose_secret();
    let params = [
        ("grant_type", DEVICE_CODE_GRANT),
        ("device_code", device_code),
    ];
    let granted = poll(
        || async {
            let presented = federated().await?;
            tokio::time::timeout(
                REQUEST_TIMEOUT,
                oauth::request_token(
                    &http,
                    &c.oauth,
                    &endpoints.token,
                    oauth::Carried {
                        grant: &params,
                        with_scope: false,
                        federated: presented.as_ref(),
                        // The daemon's key file is its own (its owner, its directory); the grant this
                        // command obtains is bound by the daemon's first refresh.
                        dpop: None,
                    },
                    config.refresh.default_lifetime,
                    Redactor::new([device_code]),
                    &learned,
                ),
            )
            .await
            .unwrap_or(Err(FetchError::Timeout(REQUEST_TIMEOUT)))
        },
        grant.interval,
        grant.prompt.expires_in,
    )
    .await?;
    Ok(authorize::keep(name, rt_file, granted).await?)
}

/// An error answer as the device endpoint's (the shared error text names the token endpoint).
fn answer(e: &FetchError) -> String {
    match e {
        FetchError::OAuth { status, error, .. } => format!("answered {status} {error}"),
        FetchError::Status { status, .. } => {
            format!("answered HTTP {status} without an OAuth error body")
        }
        other => format!("could not be asked: {other}"),
    }
}

fn parse_grant(body: &[u8]) -> Result<DeviceGrant, DeviceError> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| DeviceError::BadReply("not JSON"))?;
    let obj = doc
        .as_object()
        .ok_or(DeviceError::BadReply("not a JSON object"))?;
    let text = |key: &str| obj.get(key).and_then(Value::as_str);
    let device_code = text("device_code")
        .filter(|c| !c.is_empty())
        .ok_or(DeviceError::BadReply("no device_code"))?;
    let user_code = text("user_code")
        .filter(|c| !c.is_empty() && c.len() <= MAX_USER_CODE)
        .ok_or(DeviceError::BadReply(
            "no user_code, or a longer one than 64 bytes",
        ))?;
    // Google's early replies said verification_url.
    let verification_uri = text("verification_uri")
        .or_else(|| text("verification_url"))
        .and_then(shown_uri)
        .ok_or(DeviceError::BadReply("no http(s) verification_uri"))?;
    Ok(DeviceGrant {
        device_code: SecretString::from(device_code.to_string()),
        prompt: Prompt {
            verification_uri,
            verification_uri_complete: text("verification_uri_complete").and_then(shown_uri),
            user_code: oauth::redact::escape(user_code),
            expires_in: seconds(obj, "expires_in")
                .unwrap_or(DEFAULT_EXPIRES_IN)
                .min(MAX_EXPIRES_IN),
        },
        interval: seconds(obj, "interval")
            .unwrap_or(DEFAULT_INTERVAL)
            .clamp(MIN_INTERVAL, MAX_INTERVAL),
    })
}

/// A URI fit for a terminal: an http(s) URL, bounded, in its serialized form (which
/// percent-encodes anything a terminal could read as a control).
fn shown_uri(text: &str) -> Option<String> {
    let url = reqwest::Url::parse(text).ok()?;
    let shown: String = url.into();
    (shown.starts_with("https://") || shown.starts_with("http://"))
        .then_some(shown)
        .filter(|s| s.len() <= MAX_URI)
}

/// A whole number of seconds (some providers send it as a string).
fn seconds(obj: &Map<String, Value>, key: &str) -> Option<Duration> {
    let value = obj.get(key)?;
    value
        .as_u64()
        .or_else(|| value.as_str()?.parse().ok())
        .map(|s| Duration::from_secs(s.min(MAX_EXPIRES_IN.as_secs())))
}

/// Asks (`ask`: one token request) every `interval` until it grants, honouring
/// `authorization_pending` (ask again) and `slow_down` (5 s more between requests, as after a
/// network error, RFC 8628 section 3.5), until `expires_in` has passed.
async fn poll<T, F, Fut>(
    mut ask: F,
    interval: Duration,
    expires_in: Duration,
) -> Result<T, DeviceError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, FetchError>>,
{
    let deadline = Instant::now() + expires_in;
    let mut interval = interval;
    loop {
        let next = Instant::now() + interval;
        if next > deadline {
            return Err(DeviceError::Expired(expires_in));
        }
        tokio::time::sleep_until(next).await;
        let error = match tokio::time::timeout_at(deadline, ask()).await {
            Err(_) => return Err(DeviceError::Expired(expires_in)),
            Ok(Ok(granted)) => return Ok(granted),
            Ok(Err(e)) => e,
        };
        match &error {
            FetchError::OAuth { error: e, .. } => match e.error.as_str() {
                "authorization_pending" => {}
                "slow_down" => interval = (interval + SLOW_DOWN_STEP).min(MAX_INTERVAL),
                "access_denied" => return Err(DeviceError::Denied),
                "expired_token" => return Err(DeviceError::Expired(expires_in)),
                _ => return Err(DeviceError::Poll(error)),
            },
            e if e.kind() == FailureKind::Transient => {
                tracing::warn!("polling the token endpoint failed, trying again more slowly: {e}");
                interval = (interval + SLOW_DOWN_STEP).min(MAX_INTERVAL);
            }
            _ => return Err(DeviceError::Poll(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::reply::OAuthError;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    fn oauth(code: &str) -> FetchError {
        FetchError::OAuth {
            status: 400,
            error: OAuthError {
                error: code.into(),
                description: None,
            },
            retry_after: None,
        }
    }

    /// Polls a scripted endpoint on the paused clock: the outcome, and when (seconds after the
    /// start) each request was made.
    async fn run(
        script: Vec<Result<&'static str, FetchError>>,
        interval: u64,
        expires_in: u64,
    ) -> (Result<&'static str, DeviceError>, Vec<u64>) {
        let start = Instant::now();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let times = Arc::new(Mutex::new(Vec::new()));
        let result = poll(
            || {
                let (script, times) = (script.clone(), times.clone());
                async move {
                    times
                        .lock()
                        .unwrap()
                        .push((Instant::now() - start).as_secs());
                    script
                        .lock()
                        .unwrap()
                        .pop_front()
                        .unwrap_or_else(|| Err(oauth("authorization_pending")))
                }
            },
            Duration::from_secs(interval),
            Duration::from_secs(expires_in),
        )
        .await;
        let times = times.lock().unwrap().clone();
        (result, times)
    }

    #[tokio::test(start_paused = true)]
    async fn pending_then_granted_at_the_interval() {
        let (result, times) = run(
            vec![
                Err(oauth("authorization_pending")),
                Err(oauth("authorization_pending")),
                Ok("granted"),
            ],
            5,
            600,
        )
        .await;
        assert_eq!(result.unwrap(), "granted");
        assert_eq!(times, [5, 10, 15]);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_down_adds_five_seconds_for_good() {
        let (result, times) = run(
            vec![
                Err(oauth("slow_down")),
                Err(oauth("authorization_pending")),
                Err(oauth("slow_down")),
                Err(oauth("authorization_pending")),
                Ok("granted"),
            ],
            5,
            600,
        )
        .await;
        assert_eq!(result.unwrap(), "granted");
        assert_eq!(times, [5, 15, 25, 40, 55]);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_when_the_code_expires() {
        let (result, times) = run(vec![], 5, 22).await;
        assert!(matches!(result, Err(DeviceError::Expired(d)) if d == Duration::from_secs(22)));
        assert_eq!(times, [5, 10, 15, 20]);
        let (result, times) = run(vec![Err(oauth("expired_token"))], 5, 600).await;
        assert!(matches!(result, Err(DeviceError::Expired(_))));
        assert_eq!(times, [5]);
    }

    #[tokio::test(start_paused = true)]
    async fn denial_and_other_errors_stop_at_once() {
        let (result, _) = run(vec![Err(oauth("access_denied"))], 5, 600).await;
        assert!(matches!(result, Err(DeviceError::Denied)));
        let (result, times) = run(vec![Err(oauth("invalid_client"))], 5, 600).await;
        assert!(matches!(result, Err(DeviceError::Poll(_))));
        assert_eq!(times, [5]);
        // A network error slows down, as slow_down does.
        let (result, times) = run(
            vec![Err(FetchError::Network("refused".into())), Ok("granted")],
            5,
            600,
        )
        .await;
        assert_eq!(result.unwrap(), "granted");
        assert_eq!(times, [5, 15]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hostile_server_cannot_make_it_poll_fast_or_forever() {
        let grant = parse_grant(
            serde_json::json!({
                "device_code": "d", "user_code": "AB\u{1b}[2JCD",
                "verification_uri": "https://idp/device",
                "expires_in": u64::MAX, "interval": 0
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(grant.interval, MIN_INTERVAL);
        assert_eq!(grant.prompt.expires_in, MAX_EXPIRES_IN);
        assert!(!grant.prompt.user_code.contains('\u{1b}'));
        // slow_down forever: the interval stops growing at the cap, the code's life ends it.
        let script = (0..1000).map(|_| Err(oauth("slow_down"))).collect();
        let (result, times) = run(script, 1, 3600).await;
        assert!(matches!(result, Err(DeviceError::Expired(_))));
        let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.iter().all(|g| *g <= MAX_INTERVAL.as_secs()),
            "{gaps:?}"
        );
        assert!(times.len() < 3600 / 30, "{} requests", times.len());
        let slow = parse_grant(
            br#"{"device_code":"d","user_code":"u","verification_uri":"https://i/d","interval":"86400"}"#,
        )
        .unwrap();
        assert_eq!(slow.interval, MAX_INTERVAL);
        assert_eq!(slow.prompt.expires_in, DEFAULT_EXPIRES_IN);
    }

    #[test]
    fn replies_without_what_the_person_needs_are_refused() {
        for body in [
            &br#"{"user_code":"u","verification_uri":"https://i/d"}"#[..],
            br#"{"device_code":"d","verification_uri":"https://i/d"}"#,
            br#"{"device_code":"d","user_code":"u","verification_uri":"javascript:alert(1)"}"#,
            br#"{"device_code":"d","user_code":"u"}"#,
            br#"[]"#,
            b"<html>",
        ] {
            assert!(
                parse_grant(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let g = parse_grant(
            br#"{"device_code":"d","user_code":"WDJB-MJHT","verification_url":"https://i/d",
                "verification_uri_complete":"https://i/d?user_code=WDJB-MJHT","expires_in":1800}"#,
        )
        .unwrap();
        assert_eq!(g.prompt.verification_uri, "https://i/d");
        assert_eq!(
            g.prompt.verification_uri_complete.as_deref(),
            Some("https://i/d?user_code=WDJB-MJHT")
        );
        assert_eq!(g.prompt.expires_in, Duration::from_secs(1800));
        assert_eq!(g.interval, DEFAULT_INTERVAL);
    }
}
