//! `tokend jwk`: the public half of a client's private key as a JWK Set (RFC 7517 section 5),
//! to register with the provider for `private_key_jwt`.

use std::path::Path;

use crate::oauth::{AssertionAlg, KeyError, key_file};

#[derive(Debug, thiserror::Error)]
pub enum JwkError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{0}")]
    Alg(String),
}

/// The JWK Set of the key in `key_file` (read as the daemon reads it), its key named `kid` and
/// marked for `alg` (default: the key type's, as the daemon signs with it).
pub fn jwks(key_path: &Path, kid: Option<&str>, alg: Option<&str>) -> Result<String, JwkError> {
    let alg = alg
        .map(|a| AssertionAlg::try_from(a.to_string()))
        .transpose()
        .map_err(JwkError::Alg)?;
    if let Some(a) = alg.filter(|a| a.is_hmac()) {
        return Err(JwkError::Alg(format!(
            "{a} is for client_secret_jwt, which signs with the client secret and has no public key"
        )));
    }
    let key = key_file::load(key_path)?;
    let alg = key.alg(key_path, alg)?;
    let set = serde_json::json!({"keys": [key.public_jwk(alg, kid)]});
    Ok(serde_json::to_string_pretty(&set).expect("a JSON value serialises"))
}
