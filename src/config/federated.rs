//! The federated token keys (`subject_token_*`, `actor_token_*`, `requested_token_type`,
//! `assertion_*`, `client_assertion_*`): each where its grant or auth method uses it, from one
//! source, and a source that can be read safely.

use super::ClientConfig;
use crate::oauth::federated::{self, CredentialSource, Role};
use crate::oauth::{AuthMethod, Grant};

impl ClientConfig {
    pub(super) fn validate_federated(&self) -> Result<(), (String, String)> {
        let o = &self.oauth;
        let keys = &self.federated_keys;
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
