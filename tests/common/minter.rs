//! A platform's token service for the federation tests: an ES256 key pair whose public JWK Set
//! the test provider trusts (`federation.jwksFile` of `tests/oidc/server.mjs`), JWTs minted
//! with it (any lifetime, already expired included), and files written as a platform writes
//! them (a temporary file renamed over the old one, mode 0600) so a test can rotate a token
//! under a running daemon. For command sources, [`Minter::command`] is an argv that mints a
//! fresh JWT at every run (`tests/oidc/mint.mjs`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

/// The `iss` the test provider is told to trust.
pub const ISSUER: &str = "https://platform.test";
/// The `aud` the test provider is told to want.
pub const AUDIENCE: &str = "tokend-test";

/// One signing key of the platform.
pub struct Minter {
    key: EcdsaKeyPair,
    /// The key as PKCS#8 DER, for `mint.mjs`.
    pkcs8: Vec<u8>,
    pub kid: String,
    rng: SystemRandom,
}

/// A minted JWT and the claims a test looks for at the provider.
#[derive(Clone, Debug)]
pub struct Minted {
    pub token: String,
    pub jti: String,
    pub exp: i64,
}

impl Minted {
    /// The SHA-256 of the token in hex, as the test provider records it (tokend's
    /// fingerprint is its first 8 digits).
    pub fn sha256(&self) -> String {
        hex(ring::digest::digest(&ring::digest::SHA256, self.token.as_bytes()).as_ref())
    }

    /// tokend's fingerprint of the token.
    pub fn fingerprint(&self) -> String {
        self.sha256()[..8].to_string()
    }
}

impl Minter {
    /// A new P-256 key named `kid`.
    pub fn new(kid: &str) -> Minter {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap()
            .as_ref()
            .to_vec();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng).unwrap();
        Minter {
            key,
            pkcs8,
            kid: kid.to_string(),
            rng,
        }
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> serde_json::Value {
        // An uncompressed point: 0x04, then x and y, 32 bytes each.
        let point = self.key.public_key().as_ref();
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            "kid": self.kid,
            "alg": "ES256",
            "use": "sig",
        })
    }

    /// A JWT from the platform ([`ISSUER`], for [`AUDIENCE`]) about `sub`, expiring
    /// `lifetime_secs` from now (negative: already expired).
    pub fn mint(&self, sub: &str, lifetime_secs: i64) -> Minted {
        self.mint_for(ISSUER, sub, AUDIENCE, lifetime_secs)
    }

    /// A JWT with these `iss`, `sub` and `aud`, a fresh `jti`, `iat` now and `exp`
    /// `lifetime_secs` from now.
    pub fn mint_for(&self, iss: &str, sub: &str, aud: &str, lifetime_secs: i64) -> Minted {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut nonce = [0u8; 16];
        self.rng.fill(&mut nonce).unwrap();
        let jti = hex(&nonce);
        let exp = now + lifetime_secs;
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let claims = serde_json::json!({
            "iss": iss, "sub": sub, "aud": aud, "iat": now, "exp": exp, "jti": jti,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        // ring's FIXED encoding is r || s, as JWS ES256 wants it (RFC 7518 section 3.4).
        let signature = self.key.sign(&self.rng, input.as_bytes()).unwrap();
        Minted {
            token: format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())),
            jti,
            exp,
        }
    }

    /// Writes the private key (PKCS#8 PEM, mode 0600) to `path`, for `mint.mjs`.
    pub fn write_private_key(&self, path: &Path) {
        let b64 = STANDARD.encode(&self.pkcs8);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        );
        write_atomically(path, pem.as_bytes());
    }

    /// An argv that mints a fresh JWT with this key at every run (`tests/oidc/mint.mjs` under
    /// Node, both by absolute path): `key` is where [`Minter::write_private_key`] wrote the
    /// key; each run appends its `jti` to `log`.
    pub fn command(
        &self,
        key: &Path,
        (iss, sub, aud): (&str, &str, &str),
        lifetime_secs: i64,
        log: &Path,
    ) -> Vec<String> {
        let script = super::repo_root().join("tests/oidc/mint.mjs");
        [
            node().display().to_string(),
            script.display().to_string(),
            "--key".into(),
            key.display().to_string(),
            "--iss".into(),
            iss.into(),
            "--sub".into(),
            sub.into(),
            "--aud".into(),
            aud.into(),
            format!("--lifetime={lifetime_secs}"),
            "--kid".into(),
            self.kid.clone(),
            "--log".into(),
            log.display().to_string(),
        ]
        .into()
    }
}

/// Writes the JWK Set of `trusted` to `path`: the keys the provider accepts.
pub fn write_jwks(path: &Path, trusted: &[&Minter]) {
    let keys: Vec<serde_json::Value> = trusted.iter().map(|m| m.jwk()).collect();
    write_atomically(
        path,
        serde_json::json!({ "keys": keys }).to_string().as_bytes(),
    );
}

/// Writes `minted` to `path` as a platform rotates its token file: a new file beside it,
/// mode 0600, renamed over the old one (a reader sees the old token or the new, never half).
pub fn write_token(path: &Path, minted: &Minted) {
    write_atomically(path, minted.token.as_bytes());
}

/// Writes `bytes` to a temporary file beside `path` (mode 0600) and renames it to `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) {
    let dir = path.parent().expect("a file in a directory");
    let mut name = path.file_name().unwrap().to_os_string();
    name.push(".tmp");
    let tmp = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Node's absolute path (a command source names its program so), from `PATH`.
pub fn node() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("node"))
        .find(|p| p.is_file())
        .map(|p| p.canonicalize().unwrap())
        .expect("`node` is not on PATH: install Node.js 20+ (it runs tests/oidc/mint.mjs)")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
