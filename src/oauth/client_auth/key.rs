//! A client's private key for `private_key_jwt`: parsed from PEM (PKCS#8, PKCS#1 RSA or SEC1
//! EC) into a ring key pair, which signs assertions and gives the public JWK to register.

use std::path::{Path, PathBuf};

use base64::Engine;
use ring::signature::{self, KeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use super::alg::AssertionAlg;
use crate::secret::SecretError;

/// A private key that cannot be used. Messages name the file and the reason, never any of its
/// content (the PEM parser's own errors can quote a line of the file, so they are not passed on).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Read(#[from] SecretError),
    #[error(
        "{path}: holds no unencrypted PEM private key (\"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\"); an encrypted key must be decrypted first (openssl pkey -in KEY -out PLAIN)"
    )]
    NoKey { path: PathBuf },
    #[error("{path}: is not valid PEM")]
    Malformed { path: PathBuf },
    #[error(
        "{path}: is not a usable private key ({reason}); tokend signs with RSA (2048 to 4096 bits), EC P-256 or P-384, or Ed25519"
    )]
    Unsupported { path: PathBuf, reason: String },
    #[error(
        "{path}: is {kind} key, which cannot sign {alg} assertions; use client_assertion_alg = {fits}, or remove it for the default"
    )]
    AlgMismatch {
        path: PathBuf,
        kind: &'static str,
        alg: AssertionAlg,
        fits: String,
    },
}

impl KeyError {
    /// Whether this may pass by itself (see [`SecretError::is_transient`]); a key that parses
    /// wrong needs an operator.
    pub fn is_transient(&self) -> bool {
        match self {
            KeyError::Read(e) => e.is_transient(),
            KeyError::NoKey { .. }
            | KeyError::Malformed { .. }
            | KeyError::Unsupported { .. }
            | KeyError::AlgMismatch { .. } => false,
        }
    }
}

/// A parsed private key. Its `Debug` names the kind only.
pub enum ClientKey {
    Rsa(signature::RsaKeyPair),
    P256(signature::EcdsaKeyPair),
    P384(signature::EcdsaKeyPair),
    Ed25519(signature::Ed25519KeyPair),
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientKey({})", self.kind())
    }
}

impl ClientKey {
    /// Parses the first private key in `pem`, read from `path` (named in errors).
    pub fn from_pem(path: &Path, pem: &[u8]) -> Result<ClientKey, KeyError> {
        // Wiped when dropped, as the PEM text it came from is (a `SecretString`).
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| match e {
                rustls_pki_types::pem::Error::NoItemsFound => KeyError::NoKey {
                    path: path.to_path_buf(),
                },
                _ => KeyError::Malformed {
                    path: path.to_path_buf(),
                },
            })?;
        let unsupported = |reason: String| KeyError::Unsupported {
            path: path.to_path_buf(),
            reason,
        };
        let rng = ring::rand::SystemRandom::new();
        match &*der {
            PrivateKeyDer::Pkcs1(der) => signature::RsaKeyPair::from_der(der.secret_pkcs1_der())
                .map(ClientKey::Rsa)
                .map_err(|e| unsupported(format!("RSA key rejected: {}", rsa_reason(e)))),
            PrivateKeyDer::Sec1(der) => Self::from_sec1(der.secret_sec1_der(), &rng)
                .ok_or_else(|| unsupported("not a P-256 or P-384 key with its public key".into())),
            PrivateKeyDer::Pkcs8(der) => Self::from_pkcs8(der.secret_pkcs8_der(), &rng)
                .map_err(|e| unsupported(e.to_string())),
            _ => Err(unsupported("an unknown kind of private key".into())),
        }
    }

    fn from_pkcs8(
        der: &[u8],
        rng: &ring::rand::SystemRandom,
    ) -> Result<ClientKey, ring::error::KeyRejected> {
        use signature::{ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING};
        let rsa = match signature::RsaKeyPair::from_pkcs8(der) {
            Ok(key) => return Ok(ClientKey::Rsa(key)),
            Err(e) => e,
        };
        // An RSA key of the wrong size says so; any other key is not RSA and is tried as EC.
        if rsa.to_string() != "WrongAlgorithm" {
            return Err(rsa);
        }
        if let Ok(key) =
            signature::EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, rng)
        {
            return Ok(ClientKey::P256(key));
        }
        if let Ok(key) =
            signature::EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, der, rng)
        {
            return Ok(ClientKey::P384(key));
        }
        // OpenSSL writes Ed25519 keys as PKCS#8 v1, without the public key; ring derives it.
        signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map(ClientKey::Ed25519)
    }

    /// ring reads EC keys from PKCS#8 only, so the SEC1 `ECPrivateKey` is wrapped in a PKCS#8
    /// `PrivateKeyInfo` for each curve in turn. ring compares the curve named inside the SEC1
    /// key with the wrapper's (and the key's length with the curve's), so only the right one
    /// parses. ring needs the public key inside, which OpenSSL always writes.
    fn from_sec1(sec1: &[u8], rng: &ring::rand::SystemRandom) -> Option<ClientKey> {
        use signature::{ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING};
        // DER of the OIDs id-ecPublicKey (1.2.840.10045.2.1), prime256v1 and secp384r1.
        const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
        const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
        let wrap = |curve: &[u8]| {
            let algorithm = der_tlv(0x30, &[EC_PUBLIC_KEY, curve].concat());
            let version = [0x02, 0x01, 0x00];
            zeroize::Zeroizing::new(der_tlv(
                0x30,
                &[&version[..], &algorithm, &der_tlv(0x04, sec1)].concat(),
            ))
        };
        if let Ok(key) =
            signature::EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &wrap(P256), rng)
        {
            return Some(ClientKey::P256(key));
        }
        signature::EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &wrap(P384), rng)
            .ok()
            .map(ClientKey::P384)
    }

    /// What kind of key this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientKey::Rsa(_) => "an RSA",
            ClientKey::P256(_) => "an EC P-256",
            ClientKey::P384(_) => "an EC P-384",
            ClientKey::Ed25519(_) => "an Ed25519",
        }
    }

    /// The algorithms this key can sign with, the default first.
    pub fn algs(&self) -> &'static [AssertionAlg] {
        use AssertionAlg::*;
        match self {
            ClientKey::Rsa(_) => &[Rs256, Rs384, Rs512, Ps256, Ps384, Ps512],
            ClientKey::P256(_) => &[Es256],
            ClientKey::P384(_) => &[Es384],
            ClientKey::Ed25519(_) => &[EdDsa],
        }
    }

    /// `alg`, or the key's default when unset, if the key can sign with it.
    pub fn alg(&self, path: &Path, alg: Option<AssertionAlg>) -> Result<AssertionAlg, KeyError> {
        let algs = self.algs();
        match alg {
            None => Ok(algs[0]),
            Some(alg) if algs.contains(&alg) => Ok(alg),
            Some(alg) => Err(KeyError::AlgMismatch {
                path: path.to_path_buf(),
                kind: self.kind(),
                alg,
                fits: algs
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(" or "),
            }),
        }
    }

    /// The JWS signature of `message` with `alg` (one of [`ClientKey::algs`]).
    pub fn sign(
        &self,
        alg: AssertionAlg,
        message: &[u8],
    ) -> Result<Vec<u8>, ring::error::Unspecified> {
        let rng = ring::rand::SystemRandom::new();
        match self {
            ClientKey::Rsa(key) => {
                let padding: &'static dyn signature::RsaEncoding = match alg {
                    AssertionAlg::Rs256 => &signature::RSA_PKCS1_SHA256,
                    AssertionAlg::Rs384 => &signature::RSA_PKCS1_SHA384,
                    AssertionAlg::Rs512 => &signature::RSA_PKCS1_SHA512,
                    AssertionAlg::Ps256 => &signature::RSA_PSS_SHA256,
                    AssertionAlg::Ps384 => &signature::RSA_PSS_SHA384,
                    AssertionAlg::Ps512 => &signature::RSA_PSS_SHA512,
                    _ => return Err(ring::error::Unspecified),
                };
                let mut sig = vec![0; key.public().modulus_len()];
                key.sign(padding, &rng, message, &mut sig)?;
                Ok(sig)
            }
            ClientKey::P256(key) | ClientKey::P384(key) => {
                Ok(key.sign(&rng, message)?.as_ref().to_vec())
            }
            ClientKey::Ed25519(key) => Ok(key.sign(message).as_ref().to_vec()),
        }
    }

    /// The public key as a JWK (RFC 7517) for signatures with `alg`, named `kid` if given.
    pub fn public_jwk(&self, alg: AssertionAlg, kid: Option<&str>) -> serde_json::Value {
        let mut jwk = self.jwk_members();
        if let Some(kid) = kid {
            jwk["kid"] = kid.into();
        }
        jwk["use"] = "sig".into();
        jwk["alg"] = alg.as_str().into();
        jwk
    }

    /// The public key as a JWK of its required members only (RFC 7638 section 3.2): what a
    /// DPoP proof embeds and its thumbprint is computed over.
    pub fn jwk_members(&self) -> serde_json::Value {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        match self {
            ClientKey::Rsa(key) => {
                let c: signature::RsaPublicKeyComponents<Vec<u8>> = key.public().into();
                serde_json::json!({"kty": "RSA", "n": b64(&c.n), "e": b64(&c.e)})
            }
            ClientKey::P256(key) | ClientKey::P384(key) => {
                // The uncompressed point: 0x04, then x and y of equal length.
                let point = &key.public_key().as_ref()[1..];
                let (x, y) = point.split_at(point.len() / 2);
                let crv = if matches!(self, ClientKey::P256(_)) {
                    "P-256"
                } else {
                    "P-384"
                };
                serde_json::json!({"kty": "EC", "crv": crv, "x": b64(x), "y": b64(y)})
            }
            ClientKey::Ed25519(key) => {
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(key.public_key().as_ref())})
            }
        }
    }
}

/// Why ring refused an RSA key, in an operator's words.
fn rsa_reason(e: ring::error::KeyRejected) -> String {
    match e.to_string().as_str() {
        "TooSmall" => "smaller than 2048 bits".into(),
        "TooLarge" => "larger than 4096 bits".into(),
        other => other.to_string(),
    }
}

/// One DER element: `tag`, the definite length, `content`.
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}
