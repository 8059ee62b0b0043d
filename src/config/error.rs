//! A configuration that could not be used: the file, the dotted key and the reason, also for
//! what the `config` crate and serde report.

/// A configuration that could not be used, with where and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    /// The config file, or "environment" for an override.
    pub file: String,
    /// Dotted key path, e.g. `clients.billing.client_secret_file`.
    pub key: String,
    pub reason: String,
}

pub(super) fn from_config_error(file: &str, e: config::ConfigError) -> ConfigError {
    let located = |key: Option<String>, reason: String| ConfigError {
        file: file.to_string(),
        key: key
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "(top level)".into()),
        reason,
    };
    match e {
        config::ConfigError::At { error, key, .. } => {
            let inner = from_config_error(file, *error);
            let key = key.or(Some(inner.key).filter(|k| k != "(top level)"));
            located(key, inner.reason)
        }
        config::ConfigError::Type {
            key,
            unexpected,
            expected,
            ..
        } => located(key, format!("expected {expected}, found {unexpected}")),
        config::ConfigError::Message(msg) => match msg.rsplit_once(" for key `") {
            // Serde's messages carry the key at the end.
            Some((reason, key)) => located(
                Some(key.trim_end_matches('`').to_string()),
                reason.to_string(),
            ),
            None => located(None, msg),
        },
        config::ConfigError::FileParse { cause, .. } => ConfigError {
            file: file.to_string(),
            key: "(syntax)".into(),
            // The TOML error draws the line with a caret; the first and last lines say it all.
            reason: {
                let text = cause.to_string();
                let lines: Vec<&str> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect();
                match (lines.first(), lines.last()) {
                    (Some(first), Some(last)) if lines.len() > 1 => format!("{first}: {last}"),
                    _ => text.trim().to_string(),
                }
            },
        },
        other => located(None, other.to_string()),
    }
}
