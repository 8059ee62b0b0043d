//! The client assertion keys (`client_key_id`, `client_assertion_alg`,
//! `client_assertion_audience`) and the key file of `private_key_jwt`: refused at load when
//! they cannot work, naming the key.

use super::{ClientConfig, Written};
use crate::oauth::{AssertionAudience, AuthMethod, key_file};

impl ClientConfig {
    /// What the JWT methods need: a key that parses and fits the algorithm, an HMAC for
    /// `client_secret_jwt`, the issuer when the audience is `"issuer"`; and no assertion keys
    /// where no assertion is sent.
    pub(super) fn validate_assertion(&self, w: &Written) -> Result<(), (String, String)> {
        let o = &self.oauth;
        let a = &o.rare().assertion;
        let method = o.auth_method;
        if !matches!(
            method,
            AuthMethod::PrivateKeyJwt | AuthMethod::ClientSecretJwt
        ) {
            let set = [
                ("client_key_id", a.key_id.is_some()),
                ("client_assertion_alg", a.alg.is_some()),
                (
                    "client_assertion_audience",
                    a.audience != AssertionAudience::TokenEndpoint,
                ),
            ];
            return match set.iter().find(|(_, set)| *set) {
                Some((key, _)) => Err((
                    key.to_string(),
                    format!(
                        "only used with auth_method = \"private_key_jwt\" or \"client_secret_jwt\", not \"{}\"",
                        method.as_str()
                    ),
                )),
                None => Ok(()),
            };
        }
        if a.key_id.as_deref() == Some("") {
            return Err(("client_key_id".into(), "must not be empty".into()));
        }
        if a.audience == AssertionAudience::Issuer && o.issuer.is_none() {
            return Err((
                "client_assertion_audience".into(),
                "\"issuer\" needs the issuer key set (or name the audience itself)".into(),
            ));
        }
        if let AssertionAudience::Literal(aud) = &a.audience
            && aud.is_empty()
        {
            return Err((
                "client_assertion_audience".into(),
                "must not be empty".into(),
            ));
        }
        let key_key = w.client_key.key();
        match (method, &o.rare().client_key) {
            (AuthMethod::PrivateKeyJwt, None) => Err((
                "client_key_file".into(),
                "auth_method = \"private_key_jwt\" needs the private key: set client_key_file or client_key_credential".into(),
            )),
            (AuthMethod::PrivateKeyJwt, Some(path)) => {
                let key = key_file::load(path).map_err(|e| (key_key.to_string(), e.to_string()))?;
                key.alg(path, a.alg)
                    .map_err(|e| ("client_assertion_alg".to_string(), e.to_string()))?;
                Ok(())
            }
            (_, Some(_)) => Err((
                key_key.into(),
                "auth_method = \"client_secret_jwt\" signs with the client secret; remove the key".into(),
            )),
            (_, None) => match a.alg {
                Some(alg) if !alg.is_hmac() => Err((
                    "client_assertion_alg".into(),
                    format!(
                        "\"{alg}\" is not an HMAC; auth_method = \"client_secret_jwt\" uses \"HS256\" (the default), \"HS384\" or \"HS512\""
                    ),
                )),
                _ => Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use crate::config::{Config, ConfigError, one_client};

    /// Loads one client, `[clients.c]` with `keys`, in a directory holding `key.pem` (an EC
    /// P-256 key) and `secret`; `{dir}` in `keys` is that directory.
    fn load(keys: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            (
                "key.pem",
                include_str!("../oauth/client_auth/testdata/ec-p256-sec1.pem"),
            ),
            ("secret", "s3cret\n"),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        one_client::load(dir.path(), keys)
    }

    fn refused(keys: &str, key: &str, reason: &str) {
        one_client::assert_refused(load(keys), key, reason);
    }

    #[test]
    fn jwt_methods_are_checked_at_load() {
        let pkjwt = "auth_method = \"private_key_jwt\"\nclient_key_file = \"{dir}/key.pem\"";
        let c = load(&format!("{pkjwt}\nclient_key_id = \"k1\"")).unwrap();
        assert_eq!(
            c.clients["c"].oauth.rare().assertion.key_id.as_deref(),
            Some("k1")
        );
        refused(
            "auth_method = \"private_key_jwt\"",
            "client_key_file",
            "needs the private key",
        );
        refused(
            &format!("{pkjwt}\nclient_assertion_alg = \"RS256\""),
            "client_assertion_alg",
            "key.pem: is an EC P-256 key, which cannot sign RS256",
        );
        refused(
            &format!("{pkjwt}\nclient_assertion_alg = \"HS256\""),
            "client_assertion_alg",
            "cannot sign HS256",
        );
        refused(
            &format!("{pkjwt}\nclient_assertion_audience = \"issuer\""),
            "client_assertion_audience",
            "needs the issuer",
        );
        load(&format!(
            "{pkjwt}\nclient_assertion_audience = \"issuer\"\nissuer = \"https://idp.example.com\""
        ))
        .unwrap();
        refused(
            &format!("{pkjwt}\nclient_secret_file = \"{{dir}}/secret\""),
            "client_secret_file",
            "sends no client secret",
        );

        let csjwt = "auth_method = \"client_secret_jwt\"\nclient_secret_file = \"{dir}/secret\"";
        load(&format!("{csjwt}\nclient_assertion_alg = \"HS512\"")).unwrap();
        refused(
            &format!("{csjwt}\nclient_assertion_alg = \"ES256\""),
            "client_assertion_alg",
            "is not an HMAC",
        );
        refused(
            "auth_method = \"client_secret_jwt\"",
            "client_secret_file",
            "needs a client secret",
        );
        refused(
            &format!("{csjwt}\nclient_key_file = \"{{dir}}/key.pem\""),
            "client_key_file",
            "signs with the client secret",
        );
        refused(
            "client_secret_file = \"{dir}/secret\"\nclient_key_id = \"k1\"",
            "client_key_id",
            "only used with auth_method = \"private_key_jwt\"",
        );
        refused(
            &format!("{pkjwt}\nextra_params = {{ client_assertion = \"x\" }}"),
            "extra_params.client_assertion",
            "set by tokend",
        );
    }
}
