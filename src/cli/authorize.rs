//! `tokend authorize`: the one-time authorization-code flow that gives a refresh-token client
//! its first refresh token. Builds the authorization URL (with `state`, and PKCE S256 when the
//! client enables it), waits for the browser's redirect on the loopback redirect URI (RFC
//! 8252), or takes a code pasted by hand, exchanges it, and stores the refresh token durably.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::sync::mpsc;

use crate::config::{ClientConfig, Config, redirect_listen_addr};
use crate::host::atomic_file::{self, Trust};
use crate::host::unix_time::since_epoch;
use crate::oauth::{self, FetchError, Grant};
use crate::secret::{self, ExposeSecret};

/// A pending authorization older than this is not trusted for a pasted code: the code it was
/// issued for has long expired anyway.
const PENDING_MAX_AGE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    #[error("no client named {0:?} in the config")]
    UnknownClient(String),
    #[error("client {client:?}: {reason}")]
    Config { client: String, reason: String },
    #[error("cannot listen on the redirect URI {uri}: {source}")]
    Listen { uri: String, source: std::io::Error },
    #[error("no redirect within {} (run again, or paste the code with --code)", humantime::format_duration(*.0))]
    TimedOut(Duration),
    #[error("the provider denied the authorization: {0}")]
    Denied(String),
    #[error(
        "the redirect's state does not match this authorization (a stale browser tab, or a forged redirect); run again"
    )]
    StateMismatch,
    #[error("the redirect carries no {0:?} parameter")]
    NoCode(String),
    #[error("{0}")]
    Pending(String),
    #[error("exchanging the code failed: {0}")]
    Exchange(#[from] FetchError),
    #[error(
        "the token endpoint returned no refresh token (does the client have the refresh_token grant, and the scope the provider requires for it, e.g. offline_access?)"
    )]
    NoRefreshToken,
    #[error(transparent)]
    Store(#[from] secret::SecretError),
    #[error(transparent)]
    Discovery(#[from] oauth::discovery::DiscoveryError),
}

/// What `authorize` remembers between printing the URL and receiving the code, so that a code
/// pasted later (`--code`) can be checked against the state and exchanged with the verifier.
#[derive(Serialize, Deserialize)]
struct Pending {
    state: String,
    verifier: Option<String>,
    created: u64,
}

/// The authorization request: the URL to open, and what checking the answer needs.
pub struct Request {
    pub url: String,
    state: String,
    verifier: Option<String>,
}

fn random_token(bytes: usize) -> String {
    let data: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// PKCE S256 (RFC 7636 section 4.2): BASE64URL(SHA256(verifier)).
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier))
}

/// Builds the authorization URL for `c` with a fresh `state` (and PKCE verifier).
pub fn request(c: &ClientConfig, endpoint: &str, redirect_uri: &str) -> Request {
    let state = random_token(32);
    let verifier = c.authorize().pkce.then(|| random_token(48));
    let mut url = reqwest::Url::parse(endpoint).expect("validated at load");
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code");
        q.append_pair("client_id", &c.oauth.client_id);
        q.append_pair("redirect_uri", redirect_uri);
        if let Some(scope) = &c.oauth.scope {
            q.append_pair("scope", scope);
        }
        q.append_pair("state", &state);
        if let Some(v) = &verifier {
            q.append_pair("code_challenge", &pkce_challenge(v));
            q.append_pair("code_challenge_method", "S256");
        }
    }
    Request {
        url: url.into(),
        state,
        verifier,
    }
}

/// The client's settings `authorize` needs, or which one is missing.
fn client<'a>(
    config: &'a Config,
    name: &str,
) -> Result<(&'a ClientConfig, &'a str, &'a Path), AuthorizeError> {
    let c = config
        .clients
        .get(name)
        .ok_or_else(|| AuthorizeError::UnknownClient(name.to_string()))?;
    let missing = |key: &str| AuthorizeError::Config {
        client: name.to_string(),
        reason: format!("set {key} in [clients.{name}] to authorize it"),
    };
    if c.oauth.grant != Grant::RefreshToken {
        return Err(AuthorizeError::Config {
            client: name.to_string(),
            reason: "only clients with grant = \"refresh_token\" are authorized this way".into(),
        });
    }
    let redirect_uri = c
        .authorize()
        .redirect_uri
        .as_deref()
        .ok_or_else(|| missing("redirect_uri"))?;
    let rt_file = c
        .oauth
        .rare()
        .refresh_token_file
        .as_deref()
        .ok_or_else(|| missing("refresh_token_file"))?;
    Ok((c, redirect_uri, rt_file))
}

fn pending_path(rt_file: &Path) -> PathBuf {
    let mut name = rt_file.file_name().unwrap_or_default().to_os_string();
    name.push(".pending");
    rt_file.with_file_name(name)
}

fn now_secs() -> u64 {
    since_epoch(SystemTime::now()).as_secs()
}

/// Prints the URL, waits for the redirect (up to `timeout`), exchanges the code and stores the
/// refresh token. `announce` receives the URL to show the operator.
pub async fn interactive(
    config: &Config,
    name: &str,
    timeout: Duration,
    announce: impl FnOnce(&str),
) -> Result<PathBuf, AuthorizeError> {
    let (c, redirect_uri, rt_file) = client(config, name)?;
    let http = super::endpoints::client_http(name, c).await?;
    let endpoint = super::endpoints::resolve(c, &http)
        .await?
        .authorization
        .ok_or_else(|| AuthorizeError::Config {
            client: name.to_string(),
            reason: format!("set authorize_endpoint in [clients.{name}] to authorize it"),
        })?;
    let (addr, path) =
        redirect_listen_addr(redirect_uri).map_err(|reason| AuthorizeError::Config {
            client: name.to_string(),
            reason,
        })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AuthorizeError::Listen {
            uri: redirect_uri.to_string(),
            source,
        })?;
    let req = request(c, &endpoint, redirect_uri);
    let pending = Pending {
        state: req.state.clone(),
        verifier: req.verifier.clone(),
        created: now_secs(),
    };
    secret::write_file_durably(
        &pending_path(rt_file),
        &serde_json::to_string(&pending).expect("serializable"),
    )?;
    announce(&req.url);

    let (tx, mut rx) = mpsc::channel::<HashMap<String, String>>(1);
    let app = axum::Router::new().route(
        &path,
        axum::routing::get(
            move |axum::extract::RawQuery(query): axum::extract::RawQuery| {
                let tx = tx.clone();
                async move {
                    let params: HashMap<String, String> =
                        form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                            .into_owned()
                            .collect();
                    let _ = tx.send(params).await;
                    axum::response::Html(
                        "<!doctype html><title>tokend</title><p>tokend received the answer; \
                     this window can be closed. The terminal says whether it worked.</p>",
                    )
                }
            },
        ),
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let params = tokio::time::timeout(timeout, rx.recv()).await;
    server.abort();
    let params = params
        .map_err(|_| AuthorizeError::TimedOut(timeout))?
        .expect("the handler holds a sender while the server runs");
    let code = code_from_redirect(c, &params, &req.state)?;
    finish(config, name, &code, req.verifier.as_deref()).await
}

/// Exchanges a code pasted by hand: either the bare code or the whole redirect URL (whose
/// `state` is then checked). The PKCE verifier comes from the pending authorization.
pub async fn pasted(config: &Config, name: &str, pasted: &str) -> Result<PathBuf, AuthorizeError> {
    let (c, _, rt_file) = client(config, name)?;
    let pending: Option<Pending> =
        atomic_file::read(&pending_path(rt_file), &Trust::state(), 64 * 1024)
            .ok()
            .flatten()
            .and_then(|text| serde_json::from_slice(&text).ok())
            .filter(|p: &Pending| now_secs().saturating_sub(p.created) < PENDING_MAX_AGE.as_secs());
    let code = match reqwest::Url::parse(pasted.trim()) {
        Ok(url) => {
            let params: HashMap<String, String> = url.query_pairs().into_owned().collect();
            let state = pending.as_ref().map(|p| p.state.as_str()).ok_or_else(|| {
                AuthorizeError::Pending(format!(
                    "no recent authorization to check this redirect against; run `tokend authorize {name}` again"
                ))
            })?;
            code_from_redirect(c, &params, state)?
        }
        Err(_) => pasted.trim().to_string(),
    };
    let verifier = match (c.authorize().pkce, &pending) {
        (false, _) => None,
        (true, Some(p)) => p.verifier.clone(),
        (true, None) => {
            return Err(AuthorizeError::Pending(format!(
                "PKCE needs the verifier of the authorization the code answers; run `tokend authorize {name}` and open the URL it prints"
            )));
        }
    };
    finish(config, name, &code, verifier.as_deref()).await
}

/// The code from a redirect's parameters, after checking for a denial and the state.
fn code_from_redirect(
    c: &ClientConfig,
    params: &HashMap<String, String>,
    state: &str,
) -> Result<String, AuthorizeError> {
    if let Some(error) = params.get("error") {
        let description = params
            .get("error_description")
            .map(|d| {
                format!(
                    ": {}",
                    d.chars()
                        .filter(|c| !c.is_control())
                        .take(200)
                        .collect::<String>()
                )
            })
            .unwrap_or_default();
        // The provider's text reaches the operator's terminal: no control characters.
        let error: String = crate::oauth::redact::escape(error)
            .chars()
            .take(40)
            .collect();
        return Err(AuthorizeError::Denied(format!("{error}{description}")));
    }
    if params.get("state").map(String::as_str) != Some(state) {
        return Err(AuthorizeError::StateMismatch);
    }
    let param = c.authorize().code_param.as_deref().unwrap_or("code");
    params
        .get(param)
        .filter(|code| !code.is_empty())
        .cloned()
        .ok_or_else(|| AuthorizeError::NoCode(param.to_string()))
}

async fn finish(
    config: &Config,
    name: &str,
    code: &str,
    verifier: Option<&str>,
) -> Result<PathBuf, AuthorizeError> {
    let (c, redirect_uri, rt_file) = client(config, name)?;
    let mut grant = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
    ];
    if let Some(v) = verifier {
        grant.push(("code_verifier", v));
    }
    // An mTLS client presents its certificate for the code exchange too.
    let http = super::endpoints::client_http(name, c).await?;
    let token_endpoint = super::endpoints::resolve(c, &http).await?.token;
    let federated = oauth::federated::read_for_client(&c.oauth, config.refresh.request_timeout)
        .await
        .map_err(oauth::FetchError::from)?;
    let granted = oauth::request_token(
        &http,
        &c.oauth,
        &token_endpoint,
        oauth::Carried {
            grant: &grant,
            with_scope: false,
            federated: federated.as_ref(),
            // The daemon's key file is its own (its owner, its directory); the grant this
            // command obtains is bound by the daemon's first refresh.
            dpop: None,
        },
        config.refresh.default_lifetime,
        oauth::Redactor::default(),
        &oauth::basic::Learned::new(name),
    )
    .await?;
    keep(name, rt_file, granted).await
}

/// Stores the refresh token of a granted authorization (the browser's or the device's) and
/// drops the pending one.
pub(super) async fn keep(
    name: &str,
    rt_file: &Path,
    granted: oauth::Granted,
) -> Result<PathBuf, AuthorizeError> {
    // The code is spent once the provider answered: a refresh token in the reply is saved
    // whatever the rest of the reply is like (the daemon fetches its own access token).
    let Some(refresh_token) = granted.refresh_token else {
        return Err(match granted.token {
            Err(e) => AuthorizeError::Exchange(e),
            Ok(_) => AuthorizeError::NoRefreshToken,
        });
    };
    store_refresh_token(rt_file, &refresh_token).await?;
    if let Err(e) = granted.token {
        tracing::warn!(
            client = %name,
            "the refresh token is stored, but the access token that came with it is unusable: {e}"
        );
    }
    let _ = atomic_file::remove(&pending_path(rt_file), &Trust::state());
    Ok(rt_file.to_path_buf())
}

/// How often `authorize` tries to write the refresh token before giving up, and the first
/// pause between tries (doubling): a brief failure (a full disk being cleaned) need not cost
/// the authorization, whose code is spent.
const STORE_ATTEMPTS: u32 = 5;
const STORE_PAUSE: Duration = Duration::from_millis(500);

/// Writes the refresh token durably, retrying a few times: unlike the daemon, this process
/// cannot keep it in memory for long.
async fn store_refresh_token(
    rt_file: &Path,
    refresh_token: &secret::SecretString,
) -> Result<(), secret::SecretError> {
    let mut pause = STORE_PAUSE;
    for _ in 1..STORE_ATTEMPTS {
        match secret::write_file_durably(rt_file, refresh_token.expose_secret()) {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!("cannot store the refresh token, trying again: {e}");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
    secret::write_file_durably(rt_file, refresh_token.expose_secret())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientConfig {
        serde_json::from_value(serde_json::json!({
            "token_endpoint": "https://idp/token", "client_id": "my app",
            "client_secret_env": "X", "grant": "refresh_token",
            "refresh_token_file": "/tmp/rt", "scope": "profile read:like",
            "redirect_uri": "http://127.0.0.1:8765/cb", "pkce": true,
            "code_param": "auth_code"
        }))
        .unwrap()
    }

    #[test]
    fn pkce_matches_the_rfc_7636_example() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn authorization_url_carries_every_parameter() {
        let c = client();
        let r = request(
            &c,
            "https://like.co/in/oauth/?x=1",
            "http://127.0.0.1:8765/cb",
        );
        let url = reqwest::Url::parse(&r.url).unwrap();
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["x"], "1", "existing query kept");
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "my app");
        assert_eq!(q["redirect_uri"], "http://127.0.0.1:8765/cb");
        assert_eq!(q["scope"], "profile read:like");
        assert_eq!(q["state"], r.state);
        assert!(r.state.len() >= 43, "256 bits of state");
        let verifier = r.verifier.unwrap();
        assert!((43..=128).contains(&verifier.len()));
        assert_eq!(q["code_challenge"], pkce_challenge(&verifier));
        assert_eq!(q["code_challenge_method"], "S256");
        // A second request gets a different state.
        assert_ne!(
            request(&c, "https://x/", "http://127.0.0.1:1/").state,
            r.state
        );
    }

    #[test]
    fn redirect_answers_are_checked() {
        let c = client();
        let params = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let ok = params(&[("auth_code", "abc"), ("state", "s1")]);
        assert_eq!(code_from_redirect(&c, &ok, "s1").unwrap(), "abc");
        assert!(matches!(
            code_from_redirect(&c, &ok, "s2"),
            Err(AuthorizeError::StateMismatch)
        ));
        let denied = params(&[("error", "denied"), ("state", "s1")]);
        let err = code_from_redirect(&c, &denied, "s1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the provider denied the authorization: denied"
        );
        let wrong_param = params(&[("code", "abc"), ("state", "s1")]);
        assert!(matches!(
            code_from_redirect(&c, &wrong_param, "s1"),
            Err(AuthorizeError::NoCode(p)) if p == "auth_code"
        ));
    }
}
