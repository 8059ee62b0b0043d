//! Client assertions (RFC 7523 section 2.2, OIDC Core section 9): a short-lived JWT naming the
//! client, signed with its private key (`private_key_jwt`) or MACed with its secret
//! (`client_secret_jwt`), sent in the form body instead of a secret.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::alg::AssertionAlg;
use super::key::{ClientKey, KeyError};
use super::{AuthMethod, key_file};
use crate::oauth::{ClientSettings, FetchError};
use crate::secret::{ExposeSecret, SecretString};

/// `client_assertion_type` for a JWT (RFC 7523 section 2.2).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long an assertion is valid. It is made for one request, sent at once, and a provider
/// must remember its `jti` until it expires (replay detection), so it lives as short as a
/// request with some clock skew can: the 60 s most providers set as their upper bound.
const LIFETIME_SECS: u64 = 60;

/// The `aud` of the assertions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AssertionAudience {
    /// The token endpoint the request is sent to (RFC 7523 section 3).
    #[default]
    TokenEndpoint,
    /// The configured `issuer`, which some providers want instead.
    Issuer,
    /// This value exactly.
    Literal(String),
}

impl AssertionAudience {
    /// The config's value: unset, `"issuer"` or any other string.
    pub fn from_config(value: Option<String>) -> AssertionAudience {
        match value.as_deref() {
            None => AssertionAudience::TokenEndpoint,
            Some("issuer") => AssertionAudience::Issuer,
            Some(_) => AssertionAudience::Literal(value.unwrap_or_default()),
        }
    }

    /// The `aud` for a request to `endpoint` (`None`: `"issuer"` without an issuer, which
    /// validation refuses).
    pub fn resolve<'a>(&'a self, endpoint: &'a str, issuer: Option<&'a str>) -> Option<&'a str> {
        match self {
            AssertionAudience::TokenEndpoint => Some(endpoint),
            AssertionAudience::Issuer => issuer,
            AssertionAudience::Literal(aud) => Some(aud),
        }
    }
}

/// A client's assertion settings beyond its key or secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssertionSettings {
    /// The JWS `kid`, naming the key among those registered for the client.
    pub key_id: Option<String>,
    /// `None`: the key's default (RS256, ES256, ES384, EdDSA), or HS256 with the secret.
    pub alg: Option<AssertionAlg>,
    pub audience: AssertionAudience,
}

/// What an assertion is signed with.
pub enum Signer<'a> {
    Key { key: &'a ClientKey, path: &'a Path },
    Secret(&'a str),
}

/// A failed assertion.
#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(
        "client_assertion_alg = \"{0}\" is not an HMAC; client_secret_jwt uses HS256, HS384 or HS512"
    )]
    NotHmac(AssertionAlg),
    #[error("signing the client assertion failed")]
    Signing,
}

/// The alg an assertion is made with, checked against what signs it.
pub fn alg_for(signer: &Signer, alg: Option<AssertionAlg>) -> Result<AssertionAlg, AssertionError> {
    match signer {
        Signer::Key { key, path } => Ok(key.alg(path, alg)?),
        Signer::Secret(_) => match alg.unwrap_or(AssertionAlg::Hs256) {
            a if a.is_hmac() => Ok(a),
            a => Err(AssertionError::NotHmac(a)),
        },
    }
}

/// A signed assertion for `client_id` to `aud`, issued `now`, valid [`LIFETIME_SECS`].
pub fn make(
    client_id: &str,
    aud: &str,
    settings: &AssertionSettings,
    signer: &Signer,
    now: SystemTime,
) -> Result<SecretString, AssertionError> {
    let alg = alg_for(signer, settings.alg)?;
    let mut header = serde_json::json!({"alg": alg.as_str(), "typ": "JWT"});
    if let Some(kid) = &settings.key_id {
        header["kid"] = kid.as_str().into();
    }
    let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "jti": jti(),
        "iat": iat,
        "exp": iat + LIFETIME_SECS,
    });
    let signing_input = signing_input(&header, &claims);
    let signature = match signer {
        Signer::Key { key, .. } => key
            .sign(alg, signing_input.as_bytes())
            .map_err(|_| AssertionError::Signing)?,
        Signer::Secret(secret) => alg
            .hmac(secret.as_bytes(), signing_input.as_bytes())
            .ok_or(AssertionError::NotHmac(alg))?,
    };
    Ok(SecretString::from(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    )))
}

/// The JWS signing input of a compact JWT (RFC 7515 section 5.1): the base64url header and
/// claims, joined by a dot.
pub fn signing_input(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// A random JWT ID: 128 bits, so that no two JWTs a server sees share one (assertions, DPoP
/// proofs).
pub fn jti() -> String {
    let bytes: [u8; 16] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An assertion made for one request, with what it was made with (for the message when the
/// provider refuses it). `Debug` shows no part of the JWT.
pub struct Made {
    pub jwt: SecretString,
    pub alg: AssertionAlg,
    pub aud: String,
}

/// The assertion for a request of `c` to `endpoint`, if its auth method sends one: signed with
/// its key file (read anew when the file changed) or MACed with `secret`.
pub async fn for_request(
    c: &ClientSettings,
    endpoint: &str,
    secret: Option<&SecretString>,
) -> Result<Option<Made>, FetchError> {
    let key;
    let signer = match (c.auth_method, &c.rare().client_key, secret) {
        (AuthMethod::PrivateKeyJwt, Some(path), _) => {
            key = key_file::load_async(path)
                .await
                .map_err(AssertionError::Key)?;
            Signer::Key { key: &key, path }
        }
        (AuthMethod::ClientSecretJwt, _, Some(secret)) => Signer::Secret(secret.expose_secret()),
        // Validation refuses these methods without their key or secret.
        _ => return Ok(None),
    };
    let aud = c
        .rare()
        .assertion
        .audience
        .resolve(endpoint, c.issuer.as_deref())
        .unwrap_or(endpoint)
        .to_string();
    let alg = alg_for(&signer, c.rare().assertion.alg)?;
    let jwt = make(
        &c.client_id,
        &aud,
        &c.rare().assertion,
        &signer,
        SystemTime::now(),
    )?;
    Ok(Some(Made { jwt, alg, aud }))
}

/// `error` with what to check, when the provider refused the client's assertion.
pub fn explain_refusal(c: &ClientSettings, made: &Made, error: FetchError) -> FetchError {
    let refused = match &error {
        FetchError::OAuth { error, .. } => error.error == "invalid_client",
        FetchError::Status { status, .. } => *status == 401,
        _ => false,
    };
    if !refused {
        return error;
    }
    let kid = c
        .rare()
        .assertion
        .key_id
        .as_ref()
        .map(|k| format!(", kid {k:?}"))
        .unwrap_or_default();
    let hint = match (&c.rare().client_key, c.auth_method) {
        (Some(path), AuthMethod::PrivateKeyJwt) => format!(
            "private_key_jwt ({}{kid}, aud {:?}) was refused: check that the provider has the public key of {} registered for client {:?} (print it with `tokend jwk --key {}`) and accepts {} assertions",
            made.alg,
            made.aud,
            path.display(),
            c.client_id,
            path.display(),
            made.alg
        ),
        _ => format!(
            "client_secret_jwt ({}{kid}, aud {:?}) was refused: check the client secret and that the provider has client {:?} registered for client_secret_jwt with {}",
            made.alg, made.aud, c.client_id, made.alg
        ),
    };
    FetchError::AuthRefused {
        source: Box::new(error),
        hint,
    }
}

#[cfg(test)]
mod tests;
