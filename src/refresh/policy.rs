//! The `[refresh]` settings: when tokens are refreshed, how failures are retried, and how
//! clients share their token endpoints.

use std::time::Duration;

use serde::Deserialize;

/// When tokens are refreshed and how failures are retried.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefreshPolicy {
    /// A token is refreshed after a random fraction of its lifetime drawn from this range, so
    /// that hosts and clients started together drift apart instead of refreshing in lockstep.
    pub lifetime_fraction: [f64; 2],
    /// ...and never later than this before it expires (a quarter of its lifetime for tokens
    /// shorter than four times this margin).
    #[serde(with = "crate::durations")]
    pub margin: Duration,
    /// First retry delay after a transient failure; doubles per failure up to `backoff_max`.
    #[serde(with = "crate::durations")]
    pub backoff_min: Duration,
    #[serde(with = "crate::durations")]
    pub backoff_max: Duration,
    /// The longest `Retry-After` honoured: the header is the provider's, and a value of years
    /// would stop the client for good (a longer one is logged once and waited for this long).
    #[serde(with = "crate::durations")]
    pub retry_after_max: Duration,
    /// Retry interval while the endpoint rejects the credentials or grant: such errors need an
    /// operator, so hammering the endpoint only fills its logs.
    #[serde(with = "crate::durations")]
    pub operator_retry: Duration,
    /// Lifetime assumed when the reply has no `expires_in` and the token is not a JWT with `exp`.
    #[serde(with = "crate::durations")]
    pub default_lifetime: Duration,
    /// Timeout of one token request, connect to last byte.
    #[serde(with = "crate::durations")]
    pub request_timeout: Duration,
    /// Token requests that callers cause (`RefreshToken` reports, `GetToken` with
    /// `min_valid_seconds`) start at most once per this interval per client: each one costs
    /// the provider's quota and may rotate a refresh token.
    #[serde(with = "crate::durations")]
    pub min_interval: Duration,
    /// Clients that share a token endpoint share this many concurrent requests...
    pub endpoint_concurrency: usize,
    /// ...and start them at least this far apart, so a start-up with many clients, a restart
    /// or the end of an outage reaches the provider as a trickle, not a burst.
    #[serde(with = "crate::durations")]
    pub endpoint_spacing: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            lifetime_fraction: [0.70, 0.80],
            margin: Duration::from_secs(30),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            retry_after_max: Duration::from_secs(600),
            operator_retry: Duration::from_secs(300),
            default_lifetime: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            min_interval: Duration::from_secs(5),
            endpoint_concurrency: 4,
            endpoint_spacing: Duration::from_millis(10),
        }
    }
}
