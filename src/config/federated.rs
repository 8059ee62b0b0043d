//! The federated token keys (`subject_token_*`, `actor_token_*`, `requested_token_type`,
//! `assertion_*`, `client_assertion_*`): each where its grant or auth method uses it, from one
//! source, and a source that can be read safely.

use super::{ClientConfig, Written};
use crate::oauth::federated::{self, CredentialSource, Role};
use crate::oauth::{AuthMethod, Grant};

impl ClientConfig {
    pub(super) fn validate_federated(&self, w: &Written) -> Result<(), (String, String)> {
        let o = &self.oauth;
        let keys = &w.federated;
        for role in [
            Role::Subject,
            Role::Actor,
            Role::Assertion,
            Role::ClientAssertion,
        ] {
            let (file, command) = (
                format!("{}_file", role.key()),
                format!("{}_command", role.key()),
            );
            if keys.set.contains(&file.as_str()) && keys.set.contains(&command.as_str()) {
                return Err((
                    file.clone(),
                    format!("set only one of {file} and {command}, not both"),
                ));
            }
        }
        for (key, written) in &keys.types {
            federated::token_type(written).map_err(|r| (key.to_string(), r))?;
        }
        let f = o.federated.as_deref().cloned().unwrap_or_default();
        let named = |role: Role| format!("{}_file", role.key());
        // Each token where its grant or method uses it, and only there.
        let uses = [
            (
                Role::Subject,
                o.grant == Grant::TokenExchange,
                "grant = \"token_exchange\"",
            ),
            (
                Role::Actor,
                o.grant == Grant::TokenExchange,
                "grant = \"token_exchange\"",
            ),
            (
                Role::Assertion,
                o.grant == Grant::JwtBearer,
                "grant = \"jwt_bearer\"",
            ),
            (
                Role::ClientAssertion,
                o.auth_method == AuthMethod::FederatedAssertion,
                "auth_method = \"federated_assertion\"",
            ),
        ];
        for (role, used, by) in uses {
            let set = f.sources().any(|(r, _)| r == role);
            if set && !used {
                let key = [named(role), format!("{}_command", role.key())]
                    .into_iter()
                    .find(|k| keys.set.contains(&k.as_str()))
                    .unwrap_or_else(|| named(role));
                return Err((key, format!("only used with {by}; remove it")));
            }
            let required = role != Role::Actor;
            if used && required && !set {
                return Err((
                    named(role),
                    format!(
                        "{by} needs the {}: set {key}_file or {key}_command",
                        role.noun(),
                        key = role.key()
                    ),
                ));
            }
        }
        if o.grant != Grant::TokenExchange
            && let Some((key, _)) = keys.types.first()
        {
            return Err((
                key.to_string(),
                "only used with grant = \"token_exchange\"; remove it".into(),
            ));
        }
        if f.actor.is_none() && keys.types.iter().any(|(k, _)| *k == "actor_token_type") {
            return Err((
                "actor_token_type".into(),
                "names the type of an actor token: set actor_token_file or actor_token_command"
                    .into(),
            ));
        }
        for (role, source) in f.sources() {
            check_source(source)
                .map_err(|(suffix, reason)| (format!("{}_{suffix}", role.key()), reason))?;
        }
        Ok(())
    }
}

/// What `tokend check` says of a client's federated sources: a file the platform has not
/// written yet (`KEY: note`).
pub(super) fn notes(c: &ClientConfig) -> impl Iterator<Item = String> + '_ {
    c.oauth
        .federated
        .as_deref()
        .into_iter()
        .flat_map(|f| f.sources())
        .filter_map(|(role, source)| match source {
            CredentialSource::File(path) if std::fs::symlink_metadata(path).is_err() => Some(format!(
                "{}_file: {} does not exist yet; the client waits for it (checked twice a second)",
                role.key(),
                path.display()
            )),
            _ => None,
        })
}

/// A source that can be read as the daemon will: a file by an absolute path, held to the
/// secret files' rules if it is there already (a platform may write it only once the daemon
/// runs: a missing one is the client's error, retried when it appears); a command that can be
/// run safely.
fn check_source(source: &CredentialSource) -> Result<(), (&'static str, String)> {
    match source {
        CredentialSource::File(path) => {
            if !path.is_absolute() {
                return Err((
                    "file",
                    format!("{} must be an absolute path", path.display()),
                ));
            }
            match crate::secret::check_file(path) {
                Err(crate::secret::SecretError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Ok(())
                }
                Err(e) => Err(("file", e.to_string())),
                Ok(()) => Ok(()),
            }
        }
        CredentialSource::Command(argv) => {
            if argv.first().is_none_or(|p| p.is_empty()) {
                return Err((
                    "command",
                    "must name a program: [\"/usr/bin/program\", \"arg\", ...]".into(),
                ));
            }
            crate::host::command::check(argv).map_err(|e| ("command", e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use crate::config::{Config, ConfigError, one_client};
    use crate::oauth::federated::{CredentialSource, JWT_TOKEN_TYPE};
    use crate::oauth::{AuthMethod, Grant};

    /// Loads `[clients.c]` with `keys`, in a directory holding `token` (mode 0600) and
    /// `exposed` (mode 0644); `{dir}` in `keys` is that directory.
    fn load(keys: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        for (name, mode) in [("token", 0o600), ("exposed", 0o644)] {
            let path = dir.path().join(name);
            std::fs::write(&path, "eyJ.x.y\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        one_client::load(dir.path(), keys)
    }

    fn refused(keys: &str, key: &str, reason: &str) {
        one_client::assert_refused(load(keys), key, reason);
    }

    const EXCHANGE: &str = "grant = \"token_exchange\"\nauth_method = \"none\"";

    #[test]
    fn a_token_exchange_client_without_a_secret() {
        let c = load(&format!(
            "{EXCHANGE}\nsubject_token_file = \"{{dir}}/token\"\nrequested_token_type = \"access_token\"\naudience = \"api\""
        ))
        .unwrap();
        let o = &c.clients["c"].oauth;
        assert_eq!(o.grant, Grant::TokenExchange);
        let f = o.federated.as_deref().unwrap();
        let subject = f.subject.as_ref().unwrap();
        assert!(matches!(&subject.source, CredentialSource::File(p) if p.ends_with("token")));
        assert_eq!(subject.token_type, JWT_TOKEN_TYPE);
        assert_eq!(
            f.requested_token_type.as_deref(),
            Some("urn:ietf:params:oauth:token-type:access_token")
        );
        // The grant's URN names it too; a file the platform writes later is accepted, noted.
        let c = load(
            "grant = \"urn:ietf:params:oauth:grant-type:token-exchange\"\nauth_method = \"none\"\nsubject_token_file = \"{dir}/later\"",
        )
        .unwrap();
        let notes = c.notes();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with("clients.c.subject_token_file: ")
                && notes[0].ends_with(
                    "/later does not exist yet; the client waits for it (checked twice a second)"
                ),
            "{notes:?}"
        );
    }

    #[test]
    fn federated_keys_are_checked_at_load() {
        refused(
            "grant = \"token_exchange\"\nsubject_token_file = \"{dir}/token\"",
            "client_secret_file",
            "or auth_method = \"none\" if the provider does not authenticate the client",
        );
        refused(
            EXCHANGE,
            "subject_token_file",
            "grant = \"token_exchange\" needs the subject token: set subject_token_file or subject_token_command",
        );
        refused(
            &format!(
                "{EXCHANGE}\nsubject_token_file = \"{{dir}}/token\"\nsubject_token_command = [\"/bin/cat\"]"
            ),
            "subject_token_file",
            "set only one of subject_token_file and subject_token_command",
        );
        refused(
            "client_secret_env = \"HOME\"\nsubject_token_file = \"{dir}/token\"",
            "subject_token_file",
            "only used with grant = \"token_exchange\"",
        );
        refused(
            &format!(
                "{EXCHANGE}\nsubject_token_file = \"{{dir}}/token\"\nassertion_file = \"{{dir}}/token\""
            ),
            "assertion_file",
            "only used with grant = \"jwt_bearer\"",
        );
        refused(
            &format!(
                "{EXCHANGE}\nsubject_token_file = \"{{dir}}/token\"\nsubject_token_type = \"JWT\""
            ),
            "subject_token_type",
            "is not a token type",
        );
        refused(
            &format!(
                "{EXCHANGE}\nsubject_token_file = \"{{dir}}/token\"\nactor_token_type = \"jwt\""
            ),
            "actor_token_type",
            "set actor_token_file or actor_token_command",
        );
        refused(
            "client_secret_env = \"HOME\"\nrequested_token_type = \"jwt\"",
            "requested_token_type",
            "only used with grant = \"token_exchange\"",
        );
        refused(
            &format!("{EXCHANGE}\nsubject_token_file = \"token\""),
            "subject_token_file",
            "must be an absolute path",
        );
        refused(
            &format!("{EXCHANGE}\nsubject_token_file = \"{{dir}}/exposed\""),
            "subject_token_file",
            "is readable by other users",
        );
        refused(
            &format!(
                "{EXCHANGE}\nsubject_token_file = \"{{dir}}/token\"\nrefresh_token_file = \"{{dir}}/rt\""
            ),
            "refresh_token_file",
            "only used with grant = \"refresh_token\"",
        );
        refused(
            &format!(
                "{EXCHANGE}\nsubject_token_file = \"{{dir}}/token\"\nextra_params = {{ subject_token = \"x\" }}"
            ),
            "extra_params.subject_token",
            "is set by tokend itself",
        );
    }

    #[test]
    fn jwt_bearer_and_federated_assertion() {
        let c = load(
            "grant = \"jwt_bearer\"\nauth_method = \"none\"\nassertion_file = \"{dir}/token\"",
        )
        .unwrap();
        assert_eq!(c.clients["c"].oauth.grant, Grant::JwtBearer);
        refused(
            "grant = \"jwt_bearer\"\nauth_method = \"none\"",
            "assertion_file",
            "grant = \"jwt_bearer\" needs the assertion",
        );
        let c =
            load("auth_method = \"federated_assertion\"\nclient_assertion_file = \"{dir}/token\"")
                .unwrap();
        let o = &c.clients["c"].oauth;
        assert_eq!(o.auth_method, AuthMethod::FederatedAssertion);
        assert!(o.secret.is_none());
        refused(
            "auth_method = \"federated_assertion\"",
            "client_assertion_file",
            "auth_method = \"federated_assertion\" needs the client assertion",
        );
        refused(
            "auth_method = \"federated_assertion\"\nclient_assertion_file = \"{dir}/token\"\nclient_secret_env = \"HOME\"",
            "client_secret_env",
            "sends no client secret",
        );
        refused(
            "client_secret_env = \"HOME\"\nclient_assertion_file = \"{dir}/token\"",
            "client_assertion_file",
            "only used with auth_method = \"federated_assertion\"",
        );
    }
}
