//! Durations in settings as humantime strings ("30s", "5m"), in TOML and the environment alike.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "{s:?} is not a duration such as \"30s\" or \"5m\": {e}"
        ))
    })
}
