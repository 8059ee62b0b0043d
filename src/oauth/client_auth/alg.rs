//! The JWS algorithms a client assertion may be signed with (RFC 7518 section 3, RFC 8037).

use serde::Deserialize;

/// A `client_assertion_alg`: the JWS `alg` of the assertion and how it is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum AssertionAlg {
    /// RSASSA-PKCS1-v1_5: what every provider accepts for RSA keys.
    Rs256,
    Rs384,
    Rs512,
    /// RSASSA-PSS, which FAPI profiles ask for instead of PKCS#1 v1.5.
    Ps256,
    Ps384,
    Ps512,
    /// ECDSA on P-256 and P-384, signatures as the fixed-size `r || s` JWS wants.
    Es256,
    Es384,
    /// Ed25519 (RFC 8037).
    EdDsa,
    /// HMAC with the client secret, for `client_secret_jwt`.
    Hs256,
    Hs384,
    Hs512,
}

const ALL: &[AssertionAlg] = &[
    AssertionAlg::Rs256,
    AssertionAlg::Rs384,
    AssertionAlg::Rs512,
    AssertionAlg::Ps256,
    AssertionAlg::Ps384,
    AssertionAlg::Ps512,
    AssertionAlg::Es256,
    AssertionAlg::Es384,
    AssertionAlg::EdDsa,
    AssertionAlg::Hs256,
    AssertionAlg::Hs384,
    AssertionAlg::Hs512,
];

impl AssertionAlg {
    /// The JWS name (`alg` header).
    pub fn as_str(self) -> &'static str {
        match self {
            AssertionAlg::Rs256 => "RS256",
            AssertionAlg::Rs384 => "RS384",
            AssertionAlg::Rs512 => "RS512",
            AssertionAlg::Ps256 => "PS256",
            AssertionAlg::Ps384 => "PS384",
            AssertionAlg::Ps512 => "PS512",
            AssertionAlg::Es256 => "ES256",
            AssertionAlg::Es384 => "ES384",
            AssertionAlg::EdDsa => "EdDSA",
            AssertionAlg::Hs256 => "HS256",
            AssertionAlg::Hs384 => "HS384",
            AssertionAlg::Hs512 => "HS512",
        }
    }

    /// Whether the algorithm is an HMAC (keyed with the client secret) rather than a signature
    /// with a private key.
    pub fn is_hmac(self) -> bool {
        matches!(
            self,
            AssertionAlg::Hs256 | AssertionAlg::Hs384 | AssertionAlg::Hs512
        )
    }

    /// The HMAC of `message` keyed with `secret`; `None` for the signature algorithms.
    pub fn hmac(self, secret: &[u8], message: &[u8]) -> Option<Vec<u8>> {
        let alg = match self {
            AssertionAlg::Hs256 => ring::hmac::HMAC_SHA256,
            AssertionAlg::Hs384 => ring::hmac::HMAC_SHA384,
            AssertionAlg::Hs512 => ring::hmac::HMAC_SHA512,
            _ => return None,
        };
        let key = ring::hmac::Key::new(alg, secret);
        Some(ring::hmac::sign(&key, message).as_ref().to_vec())
    }
}

impl std::fmt::Display for AssertionAlg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// Parsed by hand so that a wrong value is named with the accepted ones.
impl TryFrom<String> for AssertionAlg {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        ALL.iter()
            .find(|a| a.as_str() == s)
            .copied()
            .ok_or_else(|| {
                let names: Vec<&str> = ALL.iter().map(|a| a.as_str()).collect();
                format!(
                    "{s:?} is not a client assertion algorithm; use one of {}",
                    names.join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_a_wrong_one_lists_the_right_ones() {
        for alg in ALL {
            assert_eq!(AssertionAlg::try_from(alg.as_str().to_string()), Ok(*alg));
        }
        let err = AssertionAlg::try_from("rs256".to_string()).unwrap_err();
        assert!(err.contains("RS256") && err.contains("EdDSA"), "{err}");
    }
}
