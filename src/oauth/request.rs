//! One token request: the form body, client authentication, the reply read within a size cap,
//! and provider text redacted of every credential the request carried.

use std::time::{Duration, SystemTime};

use super::client_auth::assertion::{self, ASSERTION_TYPE};
use super::client_auth::{AuthMethod, basic};
use super::dpop::{self, DpopHolder, DpopKey};
use super::federated::{Presented, Role};
use super::settings::{ClientSettings, SecretSource};
use super::{FetchError, MAX_REPLY_BYTES, Redactor, TokenReply, parse_retry_after, reply};
use crate::secret::{self, ExposeSecret, SecretString};

/// A 2xx reply that is a JSON object: the refresh token it rotated to, kept apart from the rest
/// so that it is saved even when the rest is unusable, and the token or why it is unusable.
pub struct Granted {
    pub refresh_token: Option<SecretString>,
    pub token: Result<TokenReply, FetchError>,
    /// Scope entries dropped as malformed, for a warning.
    pub dropped_scopes: usize,
}

/// Grant parameters that are credentials, redacted wherever a provider echoes them.
const CREDENTIAL_PARAMS: &[&str] = &[
    "refresh_token",
    "code",
    "code_verifier",
    "device_code",
    "subject_token",
    "actor_token",
    "assertion",
];

/// What one request carries besides the client's settings.
#[derive(Clone, Copy)]
pub struct Carried<'a> {
    /// The grant's own parameters, `grant_type` first.
    pub grant: &'a [(&'a str, &'a str)],
    /// Whether the configured scope goes along ([`super::Grant::sends_scope`]; the
    /// authorization code and device grants carry the scope settled before).
    pub with_scope: bool,
    /// The client's federated tokens, read for this request: the client assertion of
    /// `federated_assertion` is taken from them, and every one is redacted.
    pub federated: Option<&'a Presented>,
    /// A DPoP client's key: every request sent carries a proof made with it.
    pub dpop: Option<Proofs<'a>>,
}

/// A DPoP client's key and the nonces servers gave it (RFC 9449 section 5).
#[derive(Clone, Copy)]
pub struct Proofs<'a> {
    pub holder: &'a DpopHolder,
    pub key: &'a DpopKey,
}

/// Sends one token request for `c` to `endpoint` (its token endpoint, configured or
/// discovered) with what it carries, authenticating the client as configured, and reads the
/// reply. Provider text in the outcome has every credential of the request redacted, as well
/// as those `redactor` already holds. `learned`: the Basic header encoding this client's
/// provider accepted (see [`basic`]).
pub async fn request_token(
    http: &reqwest::Client,
    c: &ClientSettings,
    endpoint: &str,
    carried: Carried<'_>,
    default_lifetime: Duration,
    redactor: Redactor,
    learned: &basic::Learned,
) -> Result<Granted, FetchError> {
    let (body, content_type, mut redactor) =
        post_form(http, c, endpoint, carried, redactor, learned).await?;
    let obj = reply::parse_object(&body, &content_type, &redactor)?;
    let refresh_token = reply::refresh_token(&obj)?;
    if let Some(rt) = &refresh_token {
        redactor.add(rt.expose_secret());
    }
    let requested_type = c
        .federated
        .as_deref()
        .and_then(|f| f.requested_token_type.as_deref());
    let parsed = reply::parse_token(
        &obj,
        c.scope.as_deref(),
        requested_type,
        carried.dpop.is_some(),
        default_lifetime,
        SystemTime::now(),
        &redactor,
    );
    Ok(match parsed {
        Ok((token, dropped_scopes)) => Granted {
            refresh_token,
            token: Ok(token),
            dropped_scopes,
        },
        Err(e) => Granted {
            refresh_token,
            token: Err(e.into()),
            dropped_scopes: 0,
        },
    })
}

/// Sends what a request carries to `endpoint` as `c` authenticates there, with the configured
/// parameters, and reads a 2xx reply within the size cap: its body, content type, and a
/// redactor of every credential sent. A non-2xx reply is the error it carries, redacted.
/// Token requests and the device authorization request (RFC 8628 section 3.1, authenticated
/// as token requests are) both go through here.
pub async fn post_form(
    http: &reqwest::Client,
    c: &ClientSettings,
    endpoint: &str,
    carried: Carried<'_>,
    mut redactor: Redactor,
    learned: &basic::Learned,
) -> Result<(Vec<u8>, String, Redactor), FetchError> {
    let Carried {
        grant,
        with_scope,
        federated,
        dpop,
    } = carried;
    let dpop = dpop.map(|proofs| (proofs, endpoint));
    let secret = match &c.secret {
        Some(SecretSource::File(path)) => Some(secret::read_file_async(path).await?),
        Some(SecretSource::Env(var)) => Some(secret::read_env(var)?),
        None => None,
    };
    let assertion = assertion::for_request(c, endpoint, secret.as_ref()).await?;
    // Validation makes a federated_assertion client name its source, and every caller reads
    // it for the request: a missing one is a bug, which the request task reports as a failure.
    let federated_assertion = (c.auth_method == AuthMethod::FederatedAssertion).then(|| {
        federated
            .and_then(|f| f.get(Role::ClientAssertion))
            .expect("the client assertion of a federated_assertion client is read for each request")
    });
    let jwt = assertion.as_ref().map(|a| &a.jwt).or(federated_assertion);
    let body = form_body(c, secret.as_ref(), jwt, grant, with_scope);
    for token in federated.into_iter().flat_map(Presented::secrets) {
        redactor.add(token);
    }
    if let Some(secret) = &secret {
        redactor.add_client_credentials(&c.client_id, secret.expose_secret());
    }
    if let Some(jwt) = jwt {
        redactor.add(jwt.expose_secret());
    }
    for (key, value) in grant {
        if CREDENTIAL_PARAMS.contains(key) {
            redactor.add(value);
        }
    }
    let request = http
        .post(endpoint)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(reqwest::header::ACCEPT, "application/json")
        .body(body);
    let answer = match (c.auth_method, &secret) {
        (AuthMethod::Basic, Some(secret)) => {
            let (request, redactor) = (&request, &redactor);
            basic::send(
                c.basic_encoding,
                learned,
                &c.client_id,
                secret.expose_secret(),
                move |header| {
                    let mut value = reqwest::header::HeaderValue::try_from(header)
                        .expect("base64 is a valid header value");
                    value.set_sensitive(true);
                    let request = request
                        .try_clone()
                        .expect("a request with a String body clones")
                        .header(reqwest::header::AUTHORIZATION, value);
                    exchange(request, redactor, dpop)
                },
            )
            .await
        }
        _ => exchange(request, &redactor, dpop).await,
    };
    match answer {
        Ok((content_type, body)) => Ok((body, content_type, redactor)),
        Err(error) => Err(match &assertion {
            Some(made) => assertion::explain_refusal(c, made, error),
            None => error,
        }),
    }
}

/// Sends `request` (to `endpoint`, with a DPoP proof if `dpop`) and reads the reply within the
/// size cap: its content type and body when the status is a success, the OAuth error
/// (redacted) or the bare status otherwise. A DPoP client's request refused with
/// `use_dpop_nonce` is sent once more with the nonce the server gave (RFC 9449 section 8), and
/// the nonce is kept for its next requests.
async fn exchange(
    request: reqwest::RequestBuilder,
    redactor: &Redactor,
    dpop: Option<(Proofs<'_>, &str)>,
) -> Result<(String, Vec<u8>), FetchError> {
    let Some((proofs, endpoint)) = dpop else {
        return send(request, redactor).await.and_then(|(reply, _)| reply);
    };
    let server = dpop::origin(endpoint);
    let mut nonce = proofs.holder.nonces.get(&server);
    let mut retried = false;
    loop {
        let proof = proofs
            .key
            .proof("POST", endpoint, None, nonce.as_deref(), SystemTime::now())
            .map_err(FetchError::Dpop)?;
        let attempt = request
            .try_clone()
            .expect("a request with a String body clones")
            .header("DPoP", proof);
        let (result, headers) = send(attempt, redactor).await?;
        let offered = dpop::nonce_from_headers(&headers);
        if let Some(new) = &offered {
            proofs.holder.nonces.remember(&server, new.clone());
        }
        match result {
            Err(FetchError::OAuth { ref error, .. })
                if error.error == "use_dpop_nonce"
                    && !retried
                    && offered.is_some()
                    && offered != nonce =>
            {
                retried = true;
                nonce = offered;
            }
            result => return result,
        }
    }
}

/// One exchange: the reply as [`exchange`] returns it, and the reply's headers. The outer
/// error is a network failure or an oversized reply.
async fn send(
    request: reqwest::RequestBuilder,
    redactor: &Redactor,
) -> Result<(Result<(String, Vec<u8>), FetchError>, http::HeaderMap), FetchError> {
    let mut response = request
        .send()
        .await
        .map_err(|e| FetchError::Network(describe(&e)))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let headers = std::mem::take(response.headers_mut());
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| FetchError::Network(describe(&e)))?
    {
        if body.len() + chunk.len() > MAX_REPLY_BYTES {
            return Err(FetchError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let error = match reply::parse_error(&body, redactor) {
            Some(error) => FetchError::OAuth {
                status: status.as_u16(),
                error,
                retry_after,
            },
            None => FetchError::Status {
                status: status.as_u16(),
                retry_after,
            },
        };
        return Ok((Err(error), headers));
    }
    Ok((Ok((content_type, body)), headers))
}

/// The form body: the grant's parameters, the client's credentials with `client_secret_post`
/// (its id alone for a public client; id and `assertion` for the JWT methods), then scope (`with_scope`), audience, resource, and the configured extra parameters.
fn form_body(
    c: &ClientSettings,
    secret: Option<&SecretString>,
    assertion: Option<&SecretString>,
    grant: &[(&str, &str)],
    with_scope: bool,
) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (key, value) in grant {
        form.append_pair(key, value);
    }
    match c.auth_method {
        AuthMethod::Post => {
            form.append_pair("client_id", &c.client_id);
            if let Some(secret) = secret {
                form.append_pair("client_secret", secret.expose_secret());
            }
        }
        // RFC 8705 section 2: a TLS client names itself in the body, as a public client does.
        AuthMethod::None | AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth => {
            form.append_pair("client_id", &c.client_id);
        }
        // RFC 7523 needs no client_id beside the assertion; some providers (Entra ID) want it.
        AuthMethod::PrivateKeyJwt
        | AuthMethod::ClientSecretJwt
        | AuthMethod::FederatedAssertion => {
            form.append_pair("client_id", &c.client_id);
            if let Some(jwt) = assertion {
                form.append_pair("client_assertion_type", ASSERTION_TYPE);
                form.append_pair("client_assertion", jwt.expose_secret());
            }
        }
        AuthMethod::Basic => {}
    }
    if let Some(scope) = c.scope.as_ref().filter(|_| with_scope) {
        form.append_pair("scope", scope);
    }
    for (key, value) in [
        ("audience", &c.rare().audience),
        ("resource", &c.rare().resource),
    ] {
        if let Some(v) = value {
            form.append_pair(key, v);
        }
    }
    for (key, value) in &c.rare().extra_params {
        form.append_pair(key, value);
    }
    form.finish()
}

/// reqwest's error with its source chain, and what to do about a certificate the client does
/// not trust.
pub fn describe(e: &reqwest::Error) -> String {
    let mut text = super::tls::error_chain(e);
    if let Some(hint) = super::tls::hint(e) {
        text.push_str("; ");
        text.push_str(hint);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_body_per_auth_method() {
        let mut c = ClientSettings {
            secret: Some(SecretSource::Env("X".into())),
            scope: Some("a b".into()),
            rare: crate::oauth::RareSettings {
                extra_params: [("foo".to_string(), "bar".to_string())].into(),
                ..Default::default()
            }
            .boxed(),
            ..ClientSettings::for_tests("https://x/token", "my id", AuthMethod::Post)
        };
        let secret = SecretString::from("s&=cret".to_string());
        let secret = Some(&secret);
        let cc = [("grant_type", "client_credentials")];
        assert_eq!(
            form_body(&c, secret, None, &cc, true),
            "grant_type=client_credentials&client_id=my+id&client_secret=s%26%3Dcret&scope=a+b&foo=bar"
        );
        c.auth_method = AuthMethod::Basic;
        let rt = [("grant_type", "refresh_token"), ("refresh_token", "r/t")];
        assert_eq!(
            form_body(&c, secret, None, &rt, false),
            "grant_type=refresh_token&refresh_token=r%2Ft&foo=bar"
        );
        let code = [("grant_type", "authorization_code"), ("code", "c")];
        assert_eq!(
            form_body(&c, secret, None, &code, false),
            "grant_type=authorization_code&code=c&foo=bar"
        );
        c.auth_method = AuthMethod::None;
        assert_eq!(
            form_body(&c, None, None, &rt, false),
            "grant_type=refresh_token&refresh_token=r%2Ft&client_id=my+id&foo=bar"
        );
    }
}
