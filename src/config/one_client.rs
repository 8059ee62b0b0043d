//! For tests of one client's keys: a config of `[clients.c]` alone, loaded from a directory
//! the test filled.

use std::path::Path;

use super::{Config, ConfigError};

/// Loads `[clients.c]` (endpoint `https://idp.example.com/token`, client id `c`) with `keys`,
/// written to `dir/tokend.toml`; `{dir}` in `keys` is `dir`.
pub fn load(dir: &Path, keys: &str) -> Result<Config, ConfigError> {
    let path = dir.join("tokend.toml");
    let text = format!(
        "[clients.c]\ntoken_endpoint = \"https://idp.example.com/token\"\nclient_id = \"c\"\n{}\n",
        keys.replace("{dir}", &dir.display().to_string())
    );
    std::fs::write(&path, text).unwrap();
    Config::load_with_env(&path, [])
}

/// That `result` is the refusal of `clients.c.KEY` for `reason`.
pub fn assert_refused(result: Result<Config, ConfigError>, key: &str, reason: &str) {
    let err = result.unwrap_err();
    assert_eq!(err.key, format!("clients.c.{key}"), "{err}");
    assert!(err.reason.contains(reason), "{err}");
}
