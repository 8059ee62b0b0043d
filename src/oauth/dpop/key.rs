//! The DPoP key file: read under the secret-file rules, or made once, durably, before first use.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use sha2::Digest;
use zeroize::Zeroizing;

use super::DpopError;
use crate::host::atomic_file::{self, DirError, Entry, Perms, SafeDir, Trust};
use crate::oauth::{AssertionAlg, ClientKey, KeyError};
use crate::secret::{self, ExposeSecret};

/// A client's DPoP key: EC P-256, signing ES256. `Debug` shows its thumbprint only.
pub struct DpopKey {
    /// Always [`ClientKey::P256`].
    key: ClientKey,
    /// The public JWK of the proofs' header: `kty`, `crv`, `x`, `y`.
    jwk: serde_json::Value,
    /// RFC 7638 thumbprint of `jwk`: the `jkt` tokens are bound to.
    jkt: String,
}

impl std::fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopKey").field("jkt", &self.jkt).finish()
    }
}

impl DpopKey {
    /// The key in `path`, made first if there is none. The file's directory must be one only
    /// root, tokend's user and its owner can write (as a refresh token's); an existing file is
    /// read as a secret file is (owner, mode, no FIFO or planted symlink, a size cap), as PEM
    /// (PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY`). A new key is written as PKCS#8 PEM, mode
    /// 0600, fsynced with its directory and never over an existing file, and then read back,
    /// so the key used is the key on disk: the same one after a restart.
    pub fn load_or_create(path: &Path) -> Result<DpopKey, DpopError> {
        let (dir, name) =
            atomic_file::split(path).map_err(|_| DirError::NotAbsolute(path.to_path_buf()))?;
        let dir = SafeDir::open(dir, &Trust::dpop_key())?;
        let create_err = |source| DpopError::Create {
            path: path.to_path_buf(),
            source,
        };
        if dir.entry(name).map_err(create_err)? == Entry::Missing {
            // `false` when another process made one meanwhile: that one is read below.
            dir.create_new(name, generate_pem()?.as_bytes(), Perms::PRIVATE)
                .map_err(create_err)?;
        }
        let pem = secret::read_file(path).map_err(KeyError::Read)?;
        DpopKey::from_pem(path, pem.expose_secret().as_bytes())
    }

    /// Parses a P-256 key from `pem`, read from `path` (named in errors).
    fn from_pem(path: &Path, pem: &[u8]) -> Result<DpopKey, DpopError> {
        let key = ClientKey::from_pem(path, pem)?;
        if !matches!(key, ClientKey::P256(_)) {
            return Err(DpopError::NotP256 {
                path: path.to_path_buf(),
                kind: key.kind(),
            });
        }
        let jwk = key.jwk_members();
        let coordinate = |name| jwk[name].as_str().expect("an EC JWK has x and y");
        let jkt = thumbprint(coordinate("x"), coordinate("y"));
        Ok(DpopKey { key, jwk, jkt })
    }

    /// The public key as the JWK a proof's header carries: `kty` EC, `crv` P-256, `x`, `y`.
    pub fn jwk(&self) -> serde_json::Value {
        self.jwk.clone()
    }

    /// The RFC 7638 SHA-256 thumbprint of [`DpopKey::jwk`], base64url: the `jkt` a provider
    /// binds tokens to (`cnf.jkt`), and the `dpop_jkt` of an authorization request.
    pub fn thumbprint(&self) -> String {
        self.jkt.clone()
    }

    /// The ES256 JWS signature of `message`.
    pub(super) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, DpopError> {
        self.key
            .sign(AssertionAlg::Es256, message)
            .map_err(|_| DpopError::Signing)
    }
}

/// RFC 7638 over a P-256 key's coordinates: the required members in lexicographic order, no
/// whitespace. x and y are base64url, which JSON needs no escapes for.
fn thumbprint(x: &str, y: &str) -> String {
    let members = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(members))
}

/// A new P-256 key as PKCS#8 PEM, which `openssl pkey -in KEY -text` reads. The text is wiped
/// when dropped; ring's own PKCS#8 document cannot be (it offers no mutable access).
fn generate_pem() -> Result<Zeroizing<String>, DpopError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| DpopError::Generate)?;
    let b64 = Zeroizing::new(STANDARD.encode(pkcs8.as_ref()));
    // Allocated once, so no reallocation leaves a copy behind.
    let mut pem = Zeroizing::new(String::with_capacity(2 * b64.len() + 64));
    pem.push_str("-----BEGIN PRIVATE KEY-----\n");
    // PEM's 64-column lines (RFC 7468 section 2); base64 is ASCII, so every chunk is a str.
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// RFC 9449's example key (section 4.1, figure 2) and its thumbprint (section 6.1, figure 9).
    const RFC_X: &str = "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs";
    const RFC_Y: &str = "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA";
    const RFC_JKT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    use crate::test_tools::openssl;

    /// The uncompressed point openssl reads from the key file: the last 65 bytes of its DER
    /// SubjectPublicKeyInfo.
    fn openssl_point(key: &Path) -> Vec<u8> {
        let dir = key.parent().unwrap();
        let der = openssl(
            dir,
            &[
                "pkey",
                "-in",
                key.to_str().unwrap(),
                "-pubout",
                "-outform",
                "DER",
            ],
        );
        der[der.len() - 65..].to_vec()
    }

    fn jwk_point(key: &DpopKey) -> Vec<u8> {
        let jwk = key.jwk();
        let mut point = vec![4];
        for c in ["x", "y"] {
            point.extend(URL_SAFE_NO_PAD.decode(jwk[c].as_str().unwrap()).unwrap());
        }
        point
    }

    #[test]
    fn the_thumbprint_is_rfc_9449s() {
        assert_eq!(thumbprint(RFC_X, RFC_Y), RFC_JKT);
    }

    #[test]
    fn a_new_key_is_private_pkcs8_and_the_same_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("billing.dpop.pem");
        let made = DpopKey::load_or_create(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600);
        let pem = std::fs::read_to_string(&path).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        assert!(pem.lines().all(|l| l.len() <= 64));
        let again = DpopKey::load_or_create(&path).unwrap();
        assert_eq!(again.thumbprint(), made.thumbprint());
        assert_eq!(again.jwk(), made.jwk());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            pem,
            "not rewritten"
        );
        let jwk = made.jwk();
        let mut members: Vec<_> = jwk.as_object().unwrap().keys().cloned().collect();
        members.sort();
        assert_eq!(members, ["crv", "kty", "x", "y"]);
        assert_eq!((&jwk["kty"], &jwk["crv"]), (&"EC".into(), &"P-256".into()));
        let x = jwk["x"].as_str().unwrap();
        assert_eq!(made.thumbprint(), thumbprint(x, jwk["y"].as_str().unwrap()));
        // openssl reads the file tokend wrote, and sees the public key the JWK names.
        assert_eq!(openssl_point(&path), jwk_point(&made));
        let debug = format!("{made:?}");
        assert_eq!(debug, format!("DpopKey {{ jkt: {:?} }}", made.thumbprint()));
        assert!(!debug.contains(x));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }

    #[test]
    fn keys_openssl_made_are_used_and_other_curves_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        openssl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "p256.pem",
            ],
        );
        openssl(d, &["ec", "-in", "p256.pem", "-out", "sec1.pem"]);
        for name in ["p256.pem", "sec1.pem"] {
            let path = d.join(name);
            chmod(&path, 0o600);
            let key = DpopKey::load_or_create(&path).unwrap();
            assert_eq!(jwk_point(&key), openssl_point(&path), "{name}");
        }
        openssl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-out",
                "p384.pem",
            ],
        );
        let path = d.join("p384.pem");
        chmod(&path, 0o600);
        let err = DpopKey::load_or_create(&path).unwrap_err();
        assert!(matches!(err, DpopError::NotP256 { .. }), "{err}");
        assert!(
            err.to_string().contains("p384.pem: is an EC P-384 key"),
            "{err}"
        );
    }

    #[test]
    fn a_key_others_can_read_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        DpopKey::load_or_create(&path).unwrap();
        let before = std::fs::read(&path).unwrap();
        chmod(&path, 0o644);
        let err = DpopKey::load_or_create(&path).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("k.pem") && text.contains("readable by other users"),
            "{text}"
        );
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert_eq!(std::fs::read(&path).unwrap(), before, "never replaced");
    }

    #[test]
    fn a_directory_others_can_write_is_refused_before_anything_is_made() {
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o777);
        let path = dir.path().join("k.pem");
        let err = DpopKey::load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, DpopError::Dir(DirError::Writable { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("a DPoP key's directory"), "{err}");
        assert!(!path.exists());
        let err = DpopKey::load_or_create(Path::new("k.pem")).unwrap_err();
        assert!(
            matches!(err, DpopError::Dir(DirError::NotAbsolute(_))),
            "{err}"
        );
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // No writer ever opens it: a blocking open would wait for ever.
        let err = DpopKey::load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("k.pem: is a FIFO"), "{err}");
    }

    #[test]
    fn a_garbage_key_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(&path, "not a key at all\n").unwrap();
        chmod(&path, 0o600);
        let err = DpopKey::load_or_create(&path).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("k.pem") && text.contains("no unencrypted PEM private key"),
            "{text}"
        );
        assert!(!text.contains("not a key at all"), "{text}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "not a key at all\n",
            "a bad key is the operator's to fix, never overwritten"
        );
    }
}
