//! Reading a config: the file, then `TOKEND_*` environment overrides, then validation.

use std::path::Path;
use std::time::Duration;

use super::error::{ConfigError, from_config_error};
use super::{Config, ConfigFile};

/// Environment variables with this prefix override file keys; `__` separates key segments.
const ENV_PREFIX: &str = "TOKEND_";
const ENV_SEPARATOR: &str = "__";

/// How long loading may take, config and secret files together: a local load takes
/// milliseconds even with thousands of clients, so this is a file system (or a user database
/// for `allowed_users`) that hangs.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

impl Config {
    /// Reads `path`, applies `TOKEND_*` overrides from the process environment, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// [`Config::load`] for the daemon: on the blocking pool, within [`LOAD_TIMEOUT`], so that
    /// a config or secret file on a hung file system fails the start or the reload with a
    /// message instead of blocking the daemon.
    pub async fn load_async(path: &Path) -> Result<Config, ConfigError> {
        let owned = path.to_path_buf();
        crate::host::offload::run(path, LOAD_TIMEOUT, move || Self::load(&owned))
            .await
            .map_err(|e| ConfigError {
                file: path.display().to_string(),
                key: "(file)".into(),
                reason: format!(
                    "reading the config and the secret files it names {e}; is one on a hung file system?"
                ),
            })?
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "(file)".into(),
            reason: format!("cannot read: {e}"),
        })?;
        let mut config = Self::from_toml_str(&text, &file, env)?;
        config.source_path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates config text; `file` names it in errors. What [`Config::load`] does
    /// after reading the file (and what the config fuzz target feeds).
    pub fn from_toml_str(
        text: &str,
        file: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        // Only variables that name a nested key (`TOKEND_SECTION__KEY`) are overrides, so that
        // unrelated `TOKEND_*` variables (the CLI's `TOKEND_SOCKET`) are not mistaken for keys.
        let overrides: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| {
                k.strip_prefix(ENV_PREFIX)
                    .is_some_and(|rest| rest.contains(ENV_SEPARATOR))
            })
            .collect();
        let from_env = !overrides.is_empty();
        let raw = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
                    .prefix_separator("_")
                    .separator(ENV_SEPARATOR)
                    .source(Some(overrides)),
            )
            .build()
            .map_err(|e| from_config_error(file, e))?;
        let parsed: ConfigFile = raw.try_deserialize().map_err(|e| {
            let mut err = from_config_error(file, e);
            if from_env {
                err.file = format!("{file} (with TOKEND_* environment overrides)");
            }
            err
        })?;
        let (config, written) = parsed.into_config();
        config.validate(file, &written)?;
        Ok(config)
    }
}
