//! The daemon's configuration: TOML through the `config` crate, every key overridable from the
//! environment (`TOKEND_SERVER__SOCKET`, `TOKEND_CLIENTS__BILLING__SCOPE`, ...), parsed once into
//! typed structs and validated before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

/// Environment variables with this prefix override file keys; `__` separates key segments.
const ENV_PREFIX: &str = "TOKEND_";
const ENV_SEPARATOR: &str = "__";

/// How long loading may take, config and secret files together: a local load takes
/// milliseconds even with thousands of clients, so this is a file system (or a user database
/// for `allowed_users`) that hangs.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// Defaults for every client's refresh schedule and retries.
    #[serde(default)]
    pub refresh: RefreshPolicy,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Shared with the running clients (one copy per client, not one per user of it).
    #[serde(default)]
    pub clients: BTreeMap<String, Arc<ClientConfig>>,
    /// The file this was read from; named in messages that tell an operator what to run.
    #[serde(skip)]
    pub source_path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub socket: PathBuf,
    /// Octal file mode applied to the socket after bind.
    pub socket_mode: String,
    /// Optional loopback TCP listener.
    pub tcp: Option<SocketAddr>,
    /// How long `GetToken` waits for a token when the caller set no deadline.
    #[serde(with = "humantime_serde_compat")]
    pub default_wait: Duration,
    /// Under systemd, READY=1 is sent once every required client has a token, or after this
    /// long, with the clients still without one named in STATUS=.
    #[serde(with = "humantime_serde_compat")]
    pub startup_timeout: Duration,
    /// The longest any call waits for a token, whatever deadline the caller sends: a waiting
    /// call holds memory, and a caller must not be able to hold it for hours.
    #[serde(with = "humantime_serde_compat")]
    pub max_wait: Duration,
    /// Open `WatchToken` streams, in all...
    pub max_watch_streams: usize,
    /// ...and per caller uid (TCP callers count as one caller), so one local user cannot take
    /// them all.
    pub max_watch_streams_per_uid: usize,
    /// `GetToken` and `RefreshToken` calls waiting for a token (none usable yet), in all...
    pub max_waiting_calls: usize,
    /// ...and per caller uid.
    pub max_waiting_calls_per_uid: usize,
    /// Open connections on all listeners together; fewer if the open file limit would not
    /// leave a quarter of it (at least 128 descriptors) for token requests, files and sinks.
    pub max_connections: usize,
    /// Open connections per caller uid on the Unix socket (all TCP callers share one such
    /// allowance), so that one user cannot take every connection.
    pub max_connections_per_uid: usize,
    /// A connection that has not sent the HTTP/2 preface and its first SETTINGS by then is
    /// closed.
    #[serde(with = "humantime_serde_compat")]
    pub handshake_timeout: Duration,
    /// A connection with no request open for this long is closed (after one to two times
    /// this); a WatchToken stream is an open request.
    #[serde(with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
    /// Streams one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/tokend/tokend.sock"),
            socket_mode: "0660".into(),
            tcp: None,
            default_wait: Duration::from_secs(30),
            startup_timeout: Duration::from_secs(30),
            max_wait: Duration::from_secs(60),
            // A stream costs about 6 KiB in the daemon (2,000 open, tests/hostile_caller
            // streams.rs): 4,096 of them stay under 26 MiB, and a host whose every process
            // watches a token has far fewer.
            max_watch_streams: 4096,
            max_watch_streams_per_uid: 1024,
            // A waiting call costs less than a stream; these callers are only waiting for a
            // first token or a refresh, a few per process at most.
            max_waiting_calls: 4096,
            max_waiting_calls_per_uid: 1024,
            max_connections: 1024,
            max_connections_per_uid: 128,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
            max_concurrent_streams: 128,
        }
    }
}

impl ServerConfig {
    /// The limits [`crate::serve::connections`] enforces.
    pub fn connections(&self) -> crate::serve::connections::Settings {
        crate::serve::connections::Settings {
            max_connections: self.max_connections,
            max_connections_per_uid: self.max_connections_per_uid,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            max_concurrent_streams: self.max_concurrent_streams,
        }
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let counts = [
            ("max_connections", self.max_connections),
            ("max_connections_per_uid", self.max_connections_per_uid),
            (
                "max_concurrent_streams",
                self.max_concurrent_streams as usize,
            ),
        ];
        for (key, value) in counts {
            if value == 0 {
                return Err((format!("server.{key}"), "must be at least 1".into()));
            }
        }
        if self.max_connections_per_uid > self.max_connections {
            return Err((
                "server.max_connections_per_uid".into(),
                format!(
                    "{} is larger than server.max_connections ({})",
                    self.max_connections_per_uid, self.max_connections
                ),
            ));
        }
        for (key, value) in [
            ("handshake_timeout", self.handshake_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if value.is_zero() {
                return Err((format!("server.{key}"), "must be positive".into()));
            }
        }
        Ok(())
    }
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Loopback address to serve `GET /metrics` on; no listener when unset. Anyone on the host
    /// can connect to it and read every client's name and state.
    pub listen: Option<SocketAddr>,
    /// Unix socket to serve `GET /metrics` on, its file mode deciding who may scrape; no
    /// socket when unset.
    pub socket: Option<PathBuf>,
    /// Octal file mode applied to the metrics socket after bind.
    pub socket_mode: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            socket: None,
            socket_mode: "0600".into(),
        }
    }
}

impl MetricsConfig {
    /// The socket mode as a number; valid after [`Config::validate`].
    pub fn socket_mode(&self) -> u32 {
        parse_mode(&self.socket_mode).unwrap_or(0o600)
    }
}

/// An octal file mode such as "0660" (or "0o660"), permission bits only.
fn parse_mode(text: &str) -> Option<u32> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
}

/// When tokens are refreshed and how failures are retried.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefreshPolicy {
    /// A token is refreshed after a random fraction of its lifetime drawn from this range, so
    /// that hosts and clients started together drift apart instead of refreshing in lockstep.
    pub lifetime_fraction: [f64; 2],
    /// ...and never later than this before it expires (a quarter of its lifetime for tokens
    /// shorter than four times this margin).
    #[serde(with = "humantime_serde_compat")]
    pub margin: Duration,
    /// First retry delay after a transient failure; doubles per failure up to `backoff_max`.
    #[serde(with = "humantime_serde_compat")]
    pub backoff_min: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub backoff_max: Duration,
    /// The longest `Retry-After` honoured: the header is the provider's, and a value of years
    /// would stop the client for good (a longer one is logged once and waited for this long).
    #[serde(with = "humantime_serde_compat")]
    pub retry_after_max: Duration,
    /// Retry interval while the endpoint rejects the credentials or grant: such errors need an
    /// operator, so hammering the endpoint only fills its logs.
    #[serde(with = "humantime_serde_compat")]
    pub operator_retry: Duration,
    /// Lifetime assumed when the reply has no `expires_in` and the token is not a JWT with `exp`.
    #[serde(with = "humantime_serde_compat")]
    pub default_lifetime: Duration,
    /// Timeout of one token request, connect to last byte.
    #[serde(with = "humantime_serde_compat")]
    pub request_timeout: Duration,
    /// Token requests that callers cause (`RefreshToken` reports, `GetToken` with
    /// `min_valid_seconds`) start at most once per this interval per client: each one costs
    /// the provider's quota and may rotate a refresh token.
    #[serde(with = "humantime_serde_compat")]
    pub min_interval: Duration,
    /// Clients that share a token endpoint share this many concurrent requests...
    pub endpoint_concurrency: usize,
    /// ...and start them at least this far apart, so a start-up with many clients, a restart
    /// or the end of an outage reaches the provider as a trickle, not a burst.
    #[serde(with = "humantime_serde_compat")]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum AuthMethod {
    /// `client_secret_basic`: id and secret in an HTTP Basic header.
    Basic,
    /// `client_secret_post`: id and secret in the form body.
    Post,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Grant {
    ClientCredentials,
    RefreshToken,
}

// String-typed enums parse by hand so that a wrong value is named with the accepted ones,
// rather than serde's "does not have variant constructor".
impl TryFrom<String> for AuthMethod {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "basic" | "client_secret_basic" => Ok(AuthMethod::Basic),
            "post" | "client_secret_post" => Ok(AuthMethod::Post),
            _ => Err(format!(
                "{s:?} is not an auth method; use \"basic\" or \"post\""
            )),
        }
    }
}

impl TryFrom<String> for Grant {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "client_credentials" => Ok(Grant::ClientCredentials),
            "refresh_token" => Ok(Grant::RefreshToken),
            _ => Err(format!(
                "{s:?} is not a supported grant; use \"client_credentials\" or \"refresh_token\""
            )),
        }
    }
}

impl Grant {
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::RefreshToken => "refresh_token",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub token_endpoint: String,
    pub client_id: String,
    pub client_secret_file: Option<PathBuf>,
    pub client_secret_env: Option<String>,
    /// A systemd credential (`LoadCredential=`): the secret is `$CREDENTIALS_DIRECTORY/NAME`.
    pub client_secret_credential: Option<String>,
    #[serde(default = "default_auth_method")]
    pub auth_method: AuthMethod,
    #[serde(default = "default_grant")]
    pub grant: Grant,
    pub refresh_token_file: Option<PathBuf>,
    /// Space-separated scopes to request; omitted from the request when unset.
    pub scope: Option<String>,
    pub audience: Option<String>,
    pub resource: Option<String>,
    /// Further form parameters sent with every token request.
    #[serde(default)]
    pub extra_params: BTreeMap<String, String>,
    /// Allow a non-loopback `http://` token endpoint (secrets then cross the network in clear).
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// For `tokend authorize`: the provider's authorization endpoint...
    pub authorize_endpoint: Option<String>,
    /// ...the loopback redirect URI registered with the provider (RFC 8252), where `tokend
    /// authorize` listens for the browser's redirect...
    pub redirect_uri: Option<String>,
    /// ...whether to use PKCE (S256)...
    #[serde(default)]
    pub pkce: bool,
    /// ...and the query parameter that carries the code (`code`; some providers use another).
    pub code_param: Option<String>,
    /// Who may read this client's token over the Unix socket: user names or numeric uids...
    #[serde(default)]
    pub allowed_users: Vec<String>,
    /// ...and group names or numeric gids (a caller's primary group, or a group it is listed
    /// in). With neither list, every caller that can open the socket may.
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    /// Serve this client on the TCP listener too. TCP callers cannot be identified, so a
    /// client is never served there unless it says so.
    #[serde(default)]
    pub allow_tcp: bool,
    /// Whether systemd readiness waits for this client's first token.
    #[serde(default = "default_true")]
    pub required: bool,
    /// Also write each new token to a file, for consumers that can only read files.
    pub file_sink: Option<crate::sink::FileSinkConfig>,
}

fn default_true() -> bool {
    true
}

impl ClientConfig {
    /// The file the client secret is read from: `client_secret_file`, or the systemd
    /// credential's path.
    pub fn secret_file(&self) -> Option<PathBuf> {
        self.client_secret_file.clone().or_else(|| {
            let name = self.client_secret_credential.as_ref()?;
            Some(PathBuf::from(std::env::var_os("CREDENTIALS_DIRECTORY")?).join(name))
        })
    }

    /// The settings that decide how tokens are fetched (everything but who may read them):
    /// a change here means the client's token must be fetched anew.
    pub fn fetch_settings(&self) -> ClientConfig {
        ClientConfig {
            allowed_users: Vec::new(),
            allowed_groups: Vec::new(),
            allow_tcp: false,
            required: true,
            ..self.clone()
        }
    }
}

fn default_auth_method() -> AuthMethod {
    AuthMethod::Basic
}

fn default_grant() -> Grant {
    Grant::ClientCredentials
}

/// The longest client name a config can hold; callers naming a longer one are refused before
/// the name goes anywhere (a log line, an error message).
pub const MAX_CLIENT_NAME: usize = 128;

/// The upper bound of `server.max_wait`: beyond an hour, a "wait" is a held connection.
const MAX_MAX_WAIT: Duration = Duration::from_secs(3600);

/// Whether `name` can be a configured client's name: 1 to [`MAX_CLIENT_NAME`] ASCII letters,
/// digits, '-', '_' and '.'.
pub fn is_client_name(name: &str) -> bool {
    (1..=MAX_CLIENT_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
}

/// Form parameters a client may not override through `extra_params`: tokend sets them itself.
const RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "refresh_token",
    "scope",
    "audience",
    "resource",
];

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
        crate::offload::run(path, LOAD_TIMEOUT, move || Self::load(&owned))
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
        let config: Config = raw.try_deserialize().map_err(|e| {
            let mut err = from_config_error(file, e);
            if from_env {
                err.file = format!("{file} (with TOKEND_* environment overrides)");
            }
            err
        })?;
        config.validate(file)?;
        Ok(config)
    }

    /// Rejects what cannot work, naming the key.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let err = |key: String, reason: String| ConfigError {
            file: file.to_string(),
            key,
            reason,
        };
        u32::from_str_radix(self.server.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                err(
                    "server.socket_mode".into(),
                    format!(
                        "{:?} is not an octal file mode such as \"0660\"",
                        self.server.socket_mode
                    ),
                )
            })?;
        if let Some(tcp) = self.server.tcp
            && !tcp.ip().is_loopback()
        {
            return Err(err(
                "server.tcp".into(),
                format!(
                    "{tcp} is not a loopback address; tokens must not leave the host (use 127.0.0.1 or [::1])"
                ),
            ));
        }
        if let Some(addr) = self.metrics.listen
            && !addr.ip().is_loopback()
        {
            return Err(err(
                "metrics.listen".into(),
                format!("{addr} is not a loopback address (use 127.0.0.1 or [::1])"),
            ));
        }
        if parse_mode(&self.metrics.socket_mode).is_none() {
            return Err(err(
                "metrics.socket_mode".into(),
                format!(
                    "{:?} is not an octal file mode such as \"0600\"",
                    self.metrics.socket_mode
                ),
            ));
        }
        if let Some(socket) = &self.metrics.socket {
            if !socket.is_absolute() {
                return Err(err(
                    "metrics.socket".into(),
                    format!("{} must be an absolute path", socket.display()),
                ));
            }
            if *socket == self.server.socket {
                return Err(err(
                    "metrics.socket".into(),
                    "is server.socket; metrics need a socket of their own".into(),
                ));
            }
        }
        if self.server.default_wait.is_zero() {
            return Err(err("server.default_wait".into(), "must be positive".into()));
        }
        self.server.validate_limits().map_err(|(k, r)| err(k, r))?;
        self.server.validate().map_err(|(k, r)| err(k, r))?;
        self.refresh.validate().map_err(|(k, r)| err(k, r))?;
        for (name, client) in &self.clients {
            client
                .validate(name)
                .map_err(|(k, r)| err(format!("clients.{name}.{k}"), r))?;
        }
        Ok(())
    }

    /// The socket mode as a number; valid after [`Config::validate`].
    pub fn socket_mode(&self) -> u32 {
        u32::from_str_radix(self.server.socket_mode.trim_start_matches("0o"), 8).unwrap_or(0o660)
    }
}

/// The largest `refresh.retry_after_max`: the longest lifetime a token is given
/// ([`crate::oauth::reply::MAX_LIFETIME`]).
const MAX_RETRY_AFTER: Duration = crate::oauth::reply::MAX_LIFETIME;

impl ServerConfig {
    fn validate_limits(&self) -> Result<(), (String, String)> {
        if self.max_wait.is_zero() || self.max_wait > MAX_MAX_WAIT {
            return Err((
                "server.max_wait".into(),
                format!(
                    "must be between 1s and {}",
                    humantime::format_duration(MAX_MAX_WAIT)
                ),
            ));
        }
        if self.default_wait > self.max_wait {
            return Err((
                "server.default_wait".into(),
                format!(
                    "{} is longer than server.max_wait ({})",
                    humantime::format_duration(self.default_wait),
                    humantime::format_duration(self.max_wait)
                ),
            ));
        }
        let caps = [
            (
                "max_watch_streams",
                self.max_watch_streams,
                self.max_watch_streams_per_uid,
            ),
            (
                "max_waiting_calls",
                self.max_waiting_calls,
                self.max_waiting_calls_per_uid,
            ),
        ];
        for (key, total, per_uid) in caps {
            if total == 0 || per_uid == 0 {
                return Err((
                    format!("server.{key}"),
                    "this cap and its _per_uid cap must be at least 1".into(),
                ));
            }
            if per_uid > total {
                return Err((
                    format!("server.{key}_per_uid"),
                    format!("{per_uid} is larger than server.{key} ({total})"),
                ));
            }
        }
        Ok(())
    }
}

impl RefreshPolicy {
    fn validate(&self) -> Result<(), (String, String)> {
        let [lo, hi] = self.lifetime_fraction;
        if !(0.1..=0.95).contains(&lo) || !(0.1..=0.95).contains(&hi) || lo > hi {
            return Err((
                "refresh.lifetime_fraction".into(),
                format!("[{lo}, {hi}] must be an ascending pair between 0.1 and 0.95"),
            ));
        }
        let positive = [
            ("backoff_min", self.backoff_min),
            ("backoff_max", self.backoff_max),
            ("retry_after_max", self.retry_after_max),
            ("operator_retry", self.operator_retry),
            ("default_lifetime", self.default_lifetime),
            ("request_timeout", self.request_timeout),
            ("min_interval", self.min_interval),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                return Err((format!("refresh.{key}"), "must be positive".into()));
            }
        }
        if self.endpoint_concurrency == 0 {
            return Err((
                "refresh.endpoint_concurrency".into(),
                "must be at least 1".into(),
            ));
        }
        if self.retry_after_max > MAX_RETRY_AFTER {
            return Err((
                "refresh.retry_after_max".into(),
                format!(
                    "{} is longer than {}: a token lives at most that long, so waiting longer \
                     for a provider would only leave the client without one",
                    humantime::format_duration(self.retry_after_max),
                    humantime::format_duration(MAX_RETRY_AFTER)
                ),
            ));
        }
        if self.backoff_min > self.backoff_max {
            return Err((
                "refresh.backoff_min".into(),
                format!(
                    "{} is larger than refresh.backoff_max ({})",
                    humantime::format_duration(self.backoff_min),
                    humantime::format_duration(self.backoff_max)
                ),
            ));
        }
        Ok(())
    }
}

impl ClientConfig {
    fn validate(&self, name: &str) -> Result<(), (String, String)> {
        if !is_client_name(name) {
            return Err((
                String::new(),
                format!(
                    "client name {name:?} must be 1 to {MAX_CLIENT_NAME} letters, digits, '-', '_' and '.'"
                ),
            ));
        }
        validate_endpoint(&self.token_endpoint, self.allow_insecure_http)
            .map_err(|r| ("token_endpoint".to_string(), r))?;
        if self.client_id.is_empty() {
            return Err(("client_id".into(), "must not be empty".into()));
        }
        let sources = [
            self.client_secret_file.is_some(),
            self.client_secret_env.is_some(),
            self.client_secret_credential.is_some(),
        ];
        match sources.iter().filter(|s| **s).count() {
            0 => {
                return Err((
                    "client_secret_file".into(),
                    "a client secret is required: set client_secret_file, client_secret_env or client_secret_credential".into(),
                ));
            }
            1 => {}
            _ => {
                return Err((
                    "client_secret_file".into(),
                    "set only one of client_secret_file, client_secret_env and client_secret_credential, not both".into(),
                ));
            }
        }
        if let Some(path) = &self.client_secret_file
            && !path.is_absolute()
        {
            return Err((
                "client_secret_file".into(),
                format!("{} must be an absolute path", path.display()),
            ));
        }
        if let Some(name) = &self.client_secret_credential {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err((
                    "client_secret_credential".into(),
                    format!("{name:?} is not a credential name"),
                ));
            }
            if std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
                return Err((
                    "client_secret_credential".into(),
                    "needs systemd's LoadCredential= (CREDENTIALS_DIRECTORY is not set)".into(),
                ));
            }
        }
        if let Some(path) = self.secret_file() {
            let key = if self.client_secret_file.is_some() {
                "client_secret_file"
            } else {
                "client_secret_credential"
            };
            crate::secret::check_file(&path).map_err(|e| (key.to_string(), e.to_string()))?;
        }
        if let Some(var) = &self.client_secret_env
            && std::env::var_os(var).is_none_or(|v| v.is_empty())
        {
            return Err((
                "client_secret_env".into(),
                format!("environment variable {var} is not set or empty"),
            ));
        }
        crate::serve::access::Access::resolve(
            &self.allowed_users,
            &self.allowed_groups,
            self.allow_tcp,
        )
        .map_err(|(key, reason)| (key.to_string(), reason))?;
        if let Some(sink) = &self.file_sink {
            sink.resolve()
                .map_err(|(key, reason)| (format!("file_sink.{key}"), reason))?;
        }
        match (self.grant, &self.refresh_token_file) {
            (Grant::RefreshToken, None) => {
                return Err((
                    "refresh_token_file".into(),
                    "grant = \"refresh_token\" needs refresh_token_file".into(),
                ));
            }
            (Grant::RefreshToken, Some(path)) if !path.is_absolute() => {
                return Err((
                    "refresh_token_file".into(),
                    format!("{} must be an absolute path", path.display()),
                ));
            }
            (Grant::ClientCredentials, Some(_)) => {
                return Err((
                    "refresh_token_file".into(),
                    "only used with grant = \"refresh_token\"".into(),
                ));
            }
            _ => {}
        }
        if let Some(path) = &self.refresh_token_file {
            // Its directory gets the file sinks' rule: written into by tokend, it must not be
            // writable by anyone who could plant a file or swap the token there.
            crate::atomic_file::split(path)
                .map_err(|e| e.to_string())
                .and_then(|(dir, _)| {
                    crate::atomic_file::SafeDir::open(dir, &crate::atomic_file::Trust::state())
                        .map_err(|e| e.to_string())
                })
                .map_err(|r| ("refresh_token_file".to_string(), r))?;
        }
        if let Some(endpoint) = &self.authorize_endpoint {
            validate_endpoint(endpoint, self.allow_insecure_http)
                .map_err(|r| ("authorize_endpoint".to_string(), r))?;
        }
        if let Some(uri) = &self.redirect_uri {
            redirect_listen_addr(uri).map_err(|r| ("redirect_uri".to_string(), r))?;
        }
        if let Some(param) = self
            .extra_params
            .keys()
            .find(|k| RESERVED_PARAMS.contains(&k.as_str()))
        {
            return Err((
                format!("extra_params.{param}"),
                "is set by tokend itself and cannot be overridden".into(),
            ));
        }
        Ok(())
    }
}

/// An endpoint must be an absolute http(s) URL; plain http only to loopback unless allowed.
fn validate_endpoint(endpoint: &str, allow_insecure_http: bool) -> Result<(), String> {
    let url =
        reqwest::Url::parse(endpoint).map_err(|e| format!("{endpoint:?} is not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Domain(d)) => d == "localhost",
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if loopback || allow_insecure_http {
                Ok(())
            } else {
                Err(format!(
                    "{endpoint} uses plain http to a non-loopback host, which would send the client secret in clear; use https (or set allow_insecure_http = true)"
                ))
            }
        }
        other => Err(format!("scheme {other:?} is not http or https")),
    }
}

/// Where `tokend authorize` listens for a redirect URI: it must be `http://` to a loopback
/// address with an explicit port (RFC 8252 section 7.3), so the code never leaves the host.
pub fn redirect_listen_addr(uri: &str) -> Result<(std::net::SocketAddr, String), String> {
    let url = reqwest::Url::parse(uri).map_err(|e| format!("{uri:?} is not a URL: {e}"))?;
    let ip: std::net::IpAddr = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.into(),
        Some(url::Host::Ipv6(ip)) => ip.into(),
        Some(url::Host::Domain("localhost")) => std::net::Ipv4Addr::LOCALHOST.into(),
        _ => std::net::Ipv4Addr::UNSPECIFIED.into(),
    };
    if url.scheme() != "http" || !ip.is_loopback() {
        return Err(format!(
            "{uri} must be http:// to a loopback address such as http://127.0.0.1:8765/callback"
        ));
    }
    let port = url
        .port()
        .ok_or_else(|| format!("{uri} needs an explicit port"))?;
    Ok((std::net::SocketAddr::new(ip, port), url.path().to_string()))
}

fn from_config_error(file: &str, e: config::ConfigError) -> ConfigError {
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

/// Durations as humantime strings ("30s", "5m") in TOML and the environment.
mod humantime_serde_compat {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        path
    }

    fn secret(dir: &tempfile::TempDir) -> PathBuf {
        let path = write(dir, "secret", "s3cret\n");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        path
    }

    fn client_toml(secret: &Path, extra: &str) -> String {
        format!(
            "[clients.billing]\ntoken_endpoint = \"https://idp.example.com/token\"\nclient_id = \"billing\"\nclient_secret_file = \"{}\"\n{extra}\n",
            secret.display()
        )
    }

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "tokend.toml", text);
        Config::load_with_env(
            &path,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn example_config_parses() {
        // The shipped example documents every key; it must stay loadable in shape (its secret
        // paths do not exist here, which is the only error allowed).
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tokend.toml"),
        )
        .unwrap();
        let err = load(&text, &[]).unwrap_err();
        assert!(err.key.ends_with("client_secret_file"), "{err}");
    }

    #[test]
    fn defaults_and_fields() {
        let dir = tempfile::tempdir().unwrap();
        let s = secret(&dir);
        let c = load(
            &client_toml(&s, "scope = \"a b\"\nauth_method = \"post\""),
            &[],
        )
        .unwrap();
        let b = &c.clients["billing"];
        assert_eq!(b.auth_method, AuthMethod::Post);
        assert_eq!(b.grant, Grant::ClientCredentials);
        assert_eq!(b.scope.as_deref(), Some("a b"));
        assert_eq!(c.server.socket, PathBuf::from("/run/tokend/tokend.sock"));
        assert_eq!(c.socket_mode(), 0o660);
        assert_eq!(c.refresh.margin, Duration::from_secs(30));
        assert_eq!(c.refresh.retry_after_max, Duration::from_secs(600));
    }

    #[test]
    fn metrics_socket_keys_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let s = secret(&dir);
        let with = |metrics: &str| {
            load(
                &format!("[metrics]\n{metrics}\n{}", client_toml(&s, "")),
                &[],
            )
        };
        let c = with("socket = \"/run/tokend/metrics.sock\"").unwrap();
        assert_eq!(c.metrics.socket_mode(), 0o600, "private by default");
        let key = |metrics: &str| with(metrics).unwrap_err().key;
        assert_eq!(key("socket_mode = \"rw\""), "metrics.socket_mode");
        assert_eq!(key("socket = \"metrics.sock\""), "metrics.socket");
        assert_eq!(
            key("socket = \"/run/tokend/tokend.sock\""),
            "metrics.socket"
        );
    }

    #[test]
    fn refresh_token_directories_others_can_write_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = secret(&dir);
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let extra = format!(
            "grant = \"refresh_token\"\nrefresh_token_file = \"{}/rt\"",
            state.display()
        );
        let err = load(&client_toml(&s, &extra), &[]).unwrap_err();
        assert_eq!(err.key, "clients.billing.refresh_token_file");
        assert!(err.reason.contains("writable by everyone"), "{err}");
        std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        assert!(load(&client_toml(&s, &extra), &[]).is_ok());
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let dir = tempfile::tempdir().unwrap();
        let s = secret(&dir);
        let c = load(
            &client_toml(&s, ""),
            &[
                ("TOKEND_CLIENTS__BILLING__SCOPE", "from.env"),
                ("TOKEND_SERVER__SOCKET", "/tmp/x.sock"),
                ("TOKEND_REFRESH__MARGIN", "10s"),
                // Not a key: must be ignored rather than rejected as unknown.
                ("TOKEND_SOCKET", "/tmp/ignored.sock"),
            ],
        )
        .unwrap();
        assert_eq!(c.clients["billing"].scope.as_deref(), Some("from.env"));
        assert_eq!(c.server.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.refresh.margin, Duration::from_secs(10));
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let s = secret(&dir);
        let cases: &[(String, &str, &str)] = &[
            (
                client_toml(&s, "grant = \"password\""),
                "clients.billing.grant",
                "\"password\" is not a supported grant",
            ),
            (
                client_toml(&s, "auth_method = \"bearer\""),
                "clients.billing.auth_method",
                "\"basic\" or \"post\"",
            ),
            (
                format!("{}\n[[oops", client_toml(&s, "")),
                "(syntax)",
                "line 7",
            ),
            (
                client_toml(&s, "scopes = \"x\""),
                "clients.billing",
                "scopes",
            ),
            (
                client_toml(&s, "client_secret_env = \"X\""),
                "clients.billing.client_secret_file",
                "not both",
            ),
            (
                client_toml(&s, "").replace("https://idp", "http://idp"),
                "clients.billing.token_endpoint",
                "plain http",
            ),
            (
                client_toml(&s, "grant = \"refresh_token\""),
                "clients.billing.refresh_token_file",
                "needs refresh_token_file",
            ),
            (
                client_toml(&s, "[clients.billing.extra_params]\ngrant_type = \"x\""),
                "clients.billing.extra_params.grant_type",
                "cannot be overridden",
            ),
            (
                format!("[server]\ntcp = \"0.0.0.0:7707\"\n{}", client_toml(&s, "")),
                "server.tcp",
                "loopback",
            ),
            (
                format!(
                    "[refresh]\nbackoff_min = \"2m\"\nbackoff_max = \"1m\"\n{}",
                    client_toml(&s, "")
                ),
                "refresh.backoff_min",
                "larger",
            ),
            (
                format!(
                    "[refresh]\nretry_after_max = \"2d\"\n{}",
                    client_toml(&s, "")
                ),
                "refresh.retry_after_max",
                "longer than 1day",
            ),
            (
                format!(
                    "[refresh]\nretry_after_max = \"0s\"\n{}",
                    client_toml(&s, "")
                ),
                "refresh.retry_after_max",
                "must be positive",
            ),
            (
                format!("[refresh]\nmargin = \"soon\"\n{}", client_toml(&s, "")),
                "refresh.margin",
                "not a duration",
            ),
            (
                format!(
                    "[server]\nmax_watch_streams = 10\nmax_watch_streams_per_uid = 20\n{}",
                    client_toml(&s, "")
                ),
                "server.max_watch_streams_per_uid",
                "larger than server.max_watch_streams",
            ),
            (
                format!("[server]\nmax_waiting_calls = 0\n{}", client_toml(&s, "")),
                "server.max_waiting_calls",
                "at least 1",
            ),
            (
                format!("[server]\ndefault_wait = \"2m\"\n{}", client_toml(&s, "")),
                "server.default_wait",
                "longer than server.max_wait",
            ),
            (
                format!("[server]\nmax_wait = \"2h\"\n{}", client_toml(&s, "")),
                "server.max_wait",
                "between 1s and 1h",
            ),
            (
                format!("[refresh]\nmin_interval = \"0s\"\n{}", client_toml(&s, "")),
                "refresh.min_interval",
                "positive",
            ),
            (
                client_toml(&s, "").replace("billing", &"b".repeat(129)),
                "clients.",
                "1 to 128 letters",
            ),
            (
                client_toml(Path::new("/nonexistent/secret"), ""),
                "clients.billing.client_secret_file",
                "/nonexistent/secret",
            ),
        ];
        for (text, key, reason) in cases {
            let err = load(text, &[]).expect_err(text);
            assert!(err.file.ends_with("tokend.toml"), "{err}");
            assert!(err.key.starts_with(key), "want key {key}, got {err}");
            assert!(err.to_string().contains(reason), "want {reason:?} in {err}");
        }
    }

    #[test]
    fn client_names_are_short_and_plain() {
        assert!(is_client_name("billing-svc_2.prod"));
        assert!(is_client_name(&"a".repeat(MAX_CLIENT_NAME)));
        for bad in ["", "a b", "a/b", "bill\ning", "b\u{e9}", "a\0"] {
            assert!(!is_client_name(bad), "{bad:?}");
        }
        assert!(!is_client_name(&"a".repeat(MAX_CLIENT_NAME + 1)));
    }

    #[test]
    fn http_to_loopback_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let s = secret(&dir);
        let text = client_toml(&s, "").replace("https://idp.example.com", "http://127.0.0.1:9");
        load(&text, &[]).unwrap();
    }

    #[test]
    fn connection_limits_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let s = secret(&dir);
        let c = load(&client_toml(&s, ""), &[]).unwrap();
        assert_eq!(c.server.max_connections, 1024);
        assert_eq!(c.server.max_concurrent_streams, 128);
        let cases = [
            (
                "max_connections = 0",
                "server.max_connections",
                "at least 1",
            ),
            (
                "max_connections = 10\nmax_connections_per_uid = 11",
                "server.max_connections_per_uid",
                "larger than server.max_connections (10)",
            ),
            (
                "max_concurrent_streams = 0",
                "server.max_concurrent_streams",
                "at least 1",
            ),
            ("idle_timeout = \"0s\"", "server.idle_timeout", "positive"),
            (
                "handshake_timeout = \"0s\"",
                "server.handshake_timeout",
                "positive",
            ),
        ];
        for (server, key, reason) in cases {
            let text = format!("[server]\n{server}\n{}", client_toml(&s, ""));
            let err = load(&text, &[]).expect_err(&text);
            assert_eq!(err.key, key, "{err}");
            assert!(err.reason.contains(reason), "want {reason:?} in {err}");
        }
    }

    #[test]
    fn unreadable_file_is_named() {
        let err = Config::load_with_env(Path::new("/nonexistent/tokend.toml"), []).unwrap_err();
        assert_eq!(err.file, "/nonexistent/tokend.toml");
        assert!(err.reason.contains("cannot read"), "{err}");
    }
}
