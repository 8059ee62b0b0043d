use std::path::Path;
use std::time::Duration;

use ring::signature::{self, KeyPair};

use super::*;
use crate::secret::ExposeSecret;

fn key(name: &str) -> ClientKey {
    let pem = match name {
        "rsa-pkcs1" => include_str!("../testdata/rsa-pkcs1.pem"),
        "rsa-pkcs8" => include_str!("../testdata/rsa-pkcs8.pem"),
        "ec-p256-sec1" => include_str!("../testdata/ec-p256-sec1.pem"),
        "ec-p384-pkcs8" => include_str!("../testdata/ec-p384-pkcs8.pem"),
        "ed25519-pkcs8" => include_str!("../testdata/ed25519-pkcs8.pem"),
        "rsa-1024-pkcs1" => include_str!("../testdata/rsa-1024-pkcs1.pem"),
        _ => unreachable!(),
    };
    ClientKey::from_pem(Path::new(name), pem.as_bytes()).unwrap()
}

fn decode(part: &str) -> serde_json::Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn settings(kid: Option<&str>, alg: Option<AssertionAlg>) -> AssertionSettings {
    AssertionSettings {
        key_id: kid.map(str::to_string),
        alg,
        audience: AssertionAudience::TokenEndpoint,
    }
}

/// The parts of a compact JWS: header, claims, signing input, signature.
fn split(jwt: &SecretString) -> (serde_json::Value, serde_json::Value, String, Vec<u8>) {
    let parts: Vec<&str> = jwt.expose_secret().split('.').collect();
    assert_eq!(parts.len(), 3, "a compact JWS");
    (
        decode(parts[0]),
        decode(parts[1]),
        format!("{}.{}", parts[0], parts[1]),
        URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
    )
}

#[test]
fn assertions_have_the_claims_rfc_7523_asks_for() {
    let k = key("ec-p256-sec1");
    let signer = Signer::Key {
        key: &k,
        path: Path::new("k.pem"),
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let aud = "https://idp.example.com/token";
    let one = make("billing", aud, &settings(Some("k1"), None), &signer, now).unwrap();
    let (header, claims, _, _) = split(&one);
    assert_eq!(
        header,
        serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": "k1"})
    );
    assert_eq!(claims["iss"], "billing");
    assert_eq!(claims["sub"], "billing");
    assert_eq!(claims["aud"], aud);
    assert_eq!(claims["iat"], 1_800_000_000);
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert!(lifetime > 0 && lifetime <= 60, "{lifetime}");
    let jti = claims["jti"].as_str().unwrap();
    assert!(URL_SAFE_NO_PAD.decode(jti).unwrap().len() >= 16, "{jti}");
    // No kid when none is configured; a fresh jti every time.
    let two = make("billing", aud, &settings(None, None), &signer, now).unwrap();
    let (header, claims2, _, _) = split(&two);
    assert!(header.get("kid").is_none(), "{header}");
    assert_ne!(claims2["jti"], claims["jti"]);
}

#[test]
fn every_key_type_signs_what_its_public_key_verifies() {
    use AssertionAlg::*;
    let cases: &[(
        &str,
        AssertionAlg,
        &'static dyn signature::VerificationAlgorithm,
    )] = &[
        ("rsa-pkcs1", Rs256, &signature::RSA_PKCS1_2048_8192_SHA256),
        ("rsa-pkcs8", Rs256, &signature::RSA_PKCS1_2048_8192_SHA256),
        ("rsa-pkcs8", Rs512, &signature::RSA_PKCS1_2048_8192_SHA512),
        ("rsa-pkcs1", Ps256, &signature::RSA_PSS_2048_8192_SHA256),
        ("ec-p256-sec1", Es256, &signature::ECDSA_P256_SHA256_FIXED),
        ("ec-p384-pkcs8", Es384, &signature::ECDSA_P384_SHA384_FIXED),
        ("ed25519-pkcs8", EdDsa, &signature::ED25519),
    ];
    for (name, alg, verify) in cases {
        let k = key(name);
        let path = Path::new(name);
        let jwt = make(
            "c",
            "aud",
            &settings(None, Some(*alg)),
            &Signer::Key { key: &k, path },
            SystemTime::now(),
        )
        .unwrap();
        let (header, _, input, sig) = split(&jwt);
        assert_eq!(header["alg"], alg.as_str(), "{name}");
        let public: Vec<u8> = match &k {
            ClientKey::Rsa(r) => r.public().as_ref().to_vec(),
            ClientKey::P256(e) | ClientKey::P384(e) => e.public_key().as_ref().to_vec(),
            ClientKey::Ed25519(e) => e.public_key().as_ref().to_vec(),
        };
        signature::UnparsedPublicKey::new(*verify, &public)
            .verify(input.as_bytes(), &sig)
            .unwrap_or_else(|_| panic!("{name} {alg}: signature does not verify"));
        // A signature over anything else does not.
        assert!(
            signature::UnparsedPublicKey::new(*verify, &public)
                .verify(b"other", &sig)
                .is_err()
        );
    }
}

#[test]
fn the_default_alg_follows_the_key_type() {
    for (name, alg) in [
        ("rsa-pkcs1", "RS256"),
        ("ec-p256-sec1", "ES256"),
        ("ec-p384-pkcs8", "ES384"),
        ("ed25519-pkcs8", "EdDSA"),
    ] {
        let k = key(name);
        assert_eq!(k.alg(Path::new(name), None).unwrap().as_str(), alg);
        assert_eq!(k.public_jwk(k.algs()[0], None)["alg"], alg);
    }
}

#[test]
fn an_alg_that_does_not_fit_the_key_is_refused_naming_the_file() {
    let k = key("ec-p256-sec1");
    let err = k
        .alg(Path::new("/etc/tokend/k.pem"), Some(AssertionAlg::Rs256))
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("/etc/tokend/k.pem"), "{text}");
    assert!(
        text.contains("P-256") && text.contains("\"ES256\""),
        "{text}"
    );
    assert!(k.alg(Path::new("k"), Some(AssertionAlg::Es384)).is_err());
    assert!(k.alg(Path::new("k"), Some(AssertionAlg::Hs256)).is_err());
    // And the secret takes only HMACs.
    assert!(matches!(
        alg_for(&Signer::Secret("s"), Some(AssertionAlg::Rs256)),
        Err(AssertionError::NotHmac(AssertionAlg::Rs256))
    ));
}

#[test]
fn client_secret_jwt_is_an_hmac_of_the_secret() {
    let secret = "a-long-enough-client-secret-for-hs512-use-0123456789abcdef";
    for (alg, hmac) in [
        (None, ring::hmac::HMAC_SHA256),
        (Some(AssertionAlg::Hs384), ring::hmac::HMAC_SHA384),
        (Some(AssertionAlg::Hs512), ring::hmac::HMAC_SHA512),
    ] {
        let jwt = make(
            "c",
            "aud",
            &settings(None, alg),
            &Signer::Secret(secret),
            SystemTime::now(),
        )
        .unwrap();
        let (header, _, input, sig) = split(&jwt);
        assert_eq!(header["alg"], alg.unwrap_or(AssertionAlg::Hs256).as_str());
        let key = ring::hmac::Key::new(hmac, secret.as_bytes());
        ring::hmac::verify(&key, input.as_bytes(), &sig).unwrap();
        let wrong = ring::hmac::Key::new(hmac, b"another secret");
        assert!(ring::hmac::verify(&wrong, input.as_bytes(), &sig).is_err());
    }
}

#[test]
fn bad_key_files_are_refused_without_quoting_them() {
    let err = |pem: &str| {
        ClientKey::from_pem(Path::new("/k.pem"), pem.as_bytes())
            .unwrap_err()
            .to_string()
    };
    let garbled = "-----BEGIN PRIVATE KEY-----\nTUlJQ-sekrit-line!!\n-----END PRIVATE KEY-----\n";
    let text = err(garbled);
    assert!(text.starts_with("/k.pem: "), "{text}");
    assert!(!text.contains("sekrit"), "{text}");
    let text = err("no pem here");
    assert!(text.contains("no unencrypted PEM private key"), "{text}");
    let text =
        err("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n");
    assert!(text.contains("decrypted first"), "{text}");
    // A certificate is not a key.
    let text = err("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    assert!(text.contains("no unencrypted PEM private key"), "{text}");
    // RSA below 2048 bits.
    let small = include_str!("../testdata/rsa-1024-pkcs1.pem");
    let text = err(small);
    assert!(text.contains("smaller than 2048 bits"), "{text}");
    // Debug shows the kind, never key material.
    assert_eq!(
        format!("{:?}", key("ed25519-pkcs8")),
        "ClientKey(an Ed25519)"
    );
}

#[test]
fn the_audience_is_the_endpoint_the_issuer_or_a_value() {
    let ep = "https://idp/token";
    assert_eq!(
        AssertionAudience::from_config(None).resolve(ep, Some("https://idp")),
        Some(ep)
    );
    assert_eq!(
        AssertionAudience::from_config(Some("issuer".into())).resolve(ep, Some("https://idp")),
        Some("https://idp")
    );
    assert_eq!(
        AssertionAudience::from_config(Some("api://x".into())).resolve(ep, None),
        Some("api://x")
    );
}
