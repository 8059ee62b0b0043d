//! DPoP proofs (RFC 9449 section 4.2): a JWT signed for one HTTP request, naming its method and
//! target URI, and, with an access token, the token's hash.

use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::Digest;

use super::{DpopError, DpopKey, nonce};
use crate::host::unix_time::since_epoch;
use crate::oauth::{jti, signing_input};

/// The longest method accepted: real ones are a few letters (`M-SEARCH`, `PROPPATCH`); the
/// bound keeps a caller's string out of a proof.
const MAX_METHOD: usize = 32;

/// The longest `htu` accepted, before and after normalisation: servers refuse request lines
/// and header fields much longer than 8 KiB, and the proof carries it in a header.
const MAX_URI: usize = 8 * 1024;

impl DpopKey {
    /// A proof for a request with method `htm` to `htu`, issued `now`: header `typ`
    /// `dpop+jwt`, `alg` ES256 and the public `jwk`; claims `jti`, `htm`, `htu` (normalised,
    /// without query and fragment: see [`target_uri`]), `iat`, and `ath` with an access token,
    /// `nonce` with a server's nonce.
    pub fn proof(
        &self,
        htm: &str,
        htu: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
        now: SystemTime,
    ) -> Result<String, DpopError> {
        check_method(htm)?;
        let htu = target_uri(htu)?;
        if let Some(nonce) = nonce {
            nonce::check(nonce)?;
        }
        let header = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()});
        let mut claims = serde_json::json!({
            "jti": jti(),
            "htm": htm,
            "htu": htu,
            "iat": since_epoch(now).as_secs(),
        });
        if let Some(token) = access_token {
            if token.is_empty() {
                return Err(DpopError::EmptyAccessToken);
            }
            claims["ath"] = access_token_hash(token).into();
        }
        if let Some(nonce) = nonce {
            claims["nonce"] = nonce.into();
        }
        let input = signing_input(&header, &claims);
        let signature = self.sign(input.as_bytes())?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

/// `ath` (RFC 9449 section 4.2): the base64url SHA-256 of the access token's ASCII text.
fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(token.as_bytes()))
}

/// An HTTP method is a token (RFC 9110 section 9.1), compared case-sensitively, so it is
/// checked, never case-folded: the proof names the method the request is sent with.
fn check_method(method: &str) -> Result<(), DpopError> {
    if method.is_empty() {
        return Err(DpopError::Method("is empty"));
    }
    if method.len() > MAX_METHOD {
        return Err(DpopError::Method("is longer than 32 characters"));
    }
    if !method.bytes().all(is_tchar) {
        return Err(DpopError::Method(
            "is not an HTTP method token (letters, digits and !#$%&'*+-.^_`|~ only)",
        ));
    }
    Ok(())
}

/// tchar (RFC 9110 section 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `uri` as a proof's `htu`: an absolute `http` or `https` URI without query and fragment
/// (RFC 9449 section 4.2), normalised as the `url` crate (WHATWG URL) writes it: scheme and
/// host lower-cased, a default port dropped, an empty path made `/`, dot segments removed.
/// That is the syntax- and scheme-based normalisation (RFC 3986 sections 6.2.2 and 6.2.3)
/// RFC 9449 section 4.3 asks servers to apply before comparing, and it also matches a server
/// that compares with the URI rebuilt from its request, whose `Host` carries no default port
/// as clients send it. A URI with user information is refused: no request's target has one
/// (RFC 9110 section 4.2.4), and a proof would carry the password.
fn target_uri(uri: &str) -> Result<String, DpopError> {
    let too_long = || DpopError::Uri(format!("is longer than {MAX_URI} bytes"));
    if uri.len() > MAX_URI {
        return Err(too_long());
    }
    // url's messages name the rule broken, never the input.
    let mut url = url::Url::parse(uri)
        .map_err(|e| DpopError::Uri(format!("is not an absolute URI ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(DpopError::Uri(format!(
            "has scheme {:?}; DPoP proofs are for http and https requests",
            url.scheme()
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(DpopError::Uri(
            "holds user information (user:password@), which a request's target never has".into(),
        ));
    }
    url.set_query(None);
    url.set_fragment(None);
    let htu = String::from(url);
    if htu.len() > MAX_URI {
        return Err(too_long());
    }
    Ok(htu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
    use serde_json::{Value, json};
    use std::collections::HashSet;
    use std::time::{Duration, UNIX_EPOCH};

    /// RFC 9449's example access token and its `ath` (section 7.1, figures 12 and 14).
    const RFC_TOKEN: &str = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";
    const RFC_ATH: &str = "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo";
    /// RFC 9449's example proof of a token request (section 5, figure 6), signed with the key
    /// of figure 2: it checks the verifier below against someone else's signer.
    const RFC_PROOF: &str = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg";

    fn key() -> (tempfile::TempDir, DpopKey) {
        let dir = tempfile::tempdir().unwrap();
        let key = DpopKey::load_or_create(&dir.path().join("k.pem")).unwrap();
        (dir, key)
    }

    fn b64(part: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(part).unwrap()
    }

    /// Header and claims of `proof` once its ES256 signature verifies with the header's own
    /// JWK (as a server does, before it compares the JWK's thumbprint with the token's).
    fn verify(proof: &str) -> (Value, Value) {
        let parts: Vec<&str> = proof.split('.').collect();
        assert_eq!(parts.len(), 3, "{proof}");
        let header: Value = serde_json::from_slice(&b64(parts[0])).unwrap();
        let claims: Value = serde_json::from_slice(&b64(parts[1])).unwrap();
        let mut point = vec![4];
        point.extend(b64(header["jwk"]["x"].as_str().unwrap()));
        point.extend(b64(header["jwk"]["y"].as_str().unwrap()));
        let signed = format!("{}.{}", parts[0], parts[1]);
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
            .verify(signed.as_bytes(), &b64(parts[2]))
            .expect("the signature verifies with the embedded JWK");
        (header, claims)
    }

    #[test]
    fn the_verifier_accepts_rfc_9449s_proof() {
        let (header, claims) = verify(RFC_PROOF);
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(claims["htu"], "https://server.example.com/token");
    }

    #[test]
    fn a_proof_verifies_and_holds_exactly_what_rfc_9449_asks() {
        let (_dir, key) = key();
        let now = UNIX_EPOCH + Duration::from_millis(1_562_262_616_900);
        let proof = key
            .proof("POST", "https://server.example.com/token", None, None, now)
            .unwrap();
        let (header, mut claims) = verify(&proof);
        assert_eq!(
            header,
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.jwk()})
        );
        let jti = claims.as_object_mut().unwrap().remove("jti").unwrap();
        assert_eq!(b64(jti.as_str().unwrap()).len(), 16, "128 random bits");
        assert_eq!(
            claims,
            json!({"htm": "POST", "htu": "https://server.example.com/token", "iat": 1_562_262_616u64})
        );

        let proof = key
            .proof(
                "GET",
                "https://resource.example.org/protectedresource?x=1",
                Some(RFC_TOKEN),
                Some("eyJ7S_zG.eyJH0-Z.HX4w-7v"),
                now,
            )
            .unwrap();
        let (_, claims) = verify(&proof);
        assert_eq!(claims["htm"], "GET");
        assert_eq!(
            claims["htu"],
            "https://resource.example.org/protectedresource"
        );
        assert_eq!(claims["ath"], RFC_ATH);
        assert_eq!(claims["nonce"], "eyJ7S_zG.eyJH0-Z.HX4w-7v");
        assert_eq!(claims.as_object().unwrap().len(), 6);
    }

    #[test]
    fn ath_is_rfc_9449s() {
        assert_eq!(access_token_hash(RFC_TOKEN), RFC_ATH);
        let (_dir, key) = key();
        let proof = key.proof("GET", "https://rs/", Some(""), None, SystemTime::now());
        assert!(matches!(proof, Err(DpopError::EmptyAccessToken)));
    }

    #[test]
    fn jtis_do_not_repeat() {
        let (_dir, key) = key();
        let jtis: HashSet<String> = (0..1000)
            .map(|_| {
                let proof = key
                    .proof("GET", "https://rs/", None, None, SystemTime::now())
                    .unwrap();
                let claims: Value =
                    serde_json::from_slice(&b64(proof.split('.').nth(1).unwrap())).unwrap();
                claims["jti"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(jtis.len(), 1000);
    }

    #[test]
    fn htu_has_no_query_or_fragment_and_is_normalised() {
        for (uri, htu) in [
            (
                "https://as.example.com/token",
                "https://as.example.com/token",
            ),
            (
                "https://as.example.com/token?a=1&b=2",
                "https://as.example.com/token",
            ),
            (
                "https://as.example.com/token#frag",
                "https://as.example.com/token",
            ),
            (
                "https://as.example.com/token?#",
                "https://as.example.com/token",
            ),
            (
                "HTTPS://AS.Example.COM/Token",
                "https://as.example.com/Token",
            ),
            (
                "https://as.example.com:443/token",
                "https://as.example.com/token",
            ),
            (
                "http://as.example.com:80/token",
                "http://as.example.com/token",
            ),
            (
                "https://as.example.com:8443/token",
                "https://as.example.com:8443/token",
            ),
            (
                "http://as.example.com:443/token",
                "http://as.example.com:443/token",
            ),
            ("https://as.example.com", "https://as.example.com/"),
            (
                "https://as.example.com/a/./b/../token",
                "https://as.example.com/a/token",
            ),
            ("https://[::1]:443/t?q", "https://[::1]/t"),
            ("https://as.example.com/a b", "https://as.example.com/a%20b"),
        ] {
            assert_eq!(target_uri(uri).unwrap(), htu, "{uri}");
        }
    }

    #[test]
    fn htu_refuses_what_no_http_request_targets() {
        for (uri, reason) in [
            ("/token", "not an absolute URI"),
            ("", "not an absolute URI"),
            ("https://", "not an absolute URI"),
            ("ftp://as.example.com/token", "scheme \"ftp\""),
            ("urn:ietf:params:oauth", "scheme \"urn\""),
            (
                "https://user:hunter2@as.example.com/token",
                "user information",
            ),
        ] {
            let err = target_uri(uri).unwrap_err().to_string();
            assert!(err.contains(reason), "{uri}: {err}");
            assert!(
                !err.contains("hunter2") && !err.contains("as.example"),
                "{err}"
            );
        }
        let long = format!("https://as.example.com/{}", "a".repeat(MAX_URI));
        assert!(
            target_uri(&long)
                .unwrap_err()
                .to_string()
                .contains("longer")
        );
        // Within the bound as written, beyond it once percent-encoded.
        let spaces = format!("https://as.example.com/{}x", " ".repeat(MAX_URI - 30));
        assert!(target_uri(&spaces).is_err());
    }

    #[test]
    fn methods_are_tokens_of_bounded_length_never_case_folded() {
        for ok in ["GET", "POST", "M-SEARCH", "get"] {
            assert!(check_method(ok).is_ok(), "{ok}");
        }
        for bad in ["", "GE T", "GET\r\n", "GÉT", "G\"T", "(GET)"] {
            assert!(check_method(bad).is_err(), "{bad:?}");
        }
        assert!(check_method(&"A".repeat(MAX_METHOD)).is_ok());
        assert!(check_method(&"A".repeat(MAX_METHOD + 1)).is_err());
        let (_dir, key) = key();
        let proof = key.proof("get", "https://rs/", None, None, SystemTime::now());
        assert_eq!(verify(&proof.unwrap()).1["htm"], "get");
        let bad = key.proof("G T", "https://rs/", None, None, SystemTime::now());
        assert!(matches!(bad, Err(DpopError::Method(_))));
        let bad = key.proof("GET", "https://rs/", None, Some("a b"), SystemTime::now());
        assert!(matches!(bad, Err(DpopError::Nonce(_))));
    }

    /// jose (the npm package oidc-provider verifies DPoP with) accepts a proof: signature with
    /// the embedded JWK, `typ`, and the same thumbprint.
    #[test]
    fn jose_verifies_a_proof() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
        assert!(
            dir.join("node_modules/jose").is_dir(),
            "jose is not installed: run `npm ci --prefix tests/oidc` (needs Node.js 20+)"
        );
        let (_dir, key) = key();
        let proof = key
            .proof(
                "POST",
                "https://as.example.com/token?x",
                Some(RFC_TOKEN),
                None,
                SystemTime::now(),
            )
            .unwrap();
        let script = r#"
            import { jwtVerify, EmbeddedJWK, calculateJwkThumbprint } from 'jose';
            const { payload, protectedHeader } = await jwtVerify(
                process.env.PROOF, EmbeddedJWK, { typ: 'dpop+jwt', algorithms: ['ES256'], maxTokenAge: '60s' });
            const jkt = await calculateJwkThumbprint(protectedHeader.jwk, 'sha256');
            console.log(JSON.stringify({ payload, jkt }));
        "#;
        let out = std::process::Command::new("node")
            .current_dir(&dir)
            .args(["--input-type=module", "-e", script])
            .env("PROOF", &proof)
            .output()
            .unwrap_or_else(|e| panic!("cannot run `node` ({e}): install Node.js 20+"));
        assert!(
            out.status.success(),
            "jose refused the proof: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(seen["jkt"], key.thumbprint().as_str());
        assert_eq!(seen["payload"]["htu"], "https://as.example.com/token");
        assert_eq!(seen["payload"]["ath"], RFC_ATH);
    }
}
