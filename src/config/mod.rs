//! The daemon's configuration: TOML through the `config` crate, every key overridable from the
//! environment (`TOKEND_SERVER__SOCKET`, `TOKEND_CLIENTS__BILLING__SCOPE`, ...), parsed once into
//! typed structs and validated before anything starts.
//!
//! - this file: the types the file parses into (with the components' own settings types);
//! - `load`: reading the file and the environment overrides;
//! - `validate`: what cannot work, refused with the key and the reason;
//! - `error`: [`ConfigError`], which names the file, the key and the reason.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::oauth::federated::{
    CredentialSource, Federated, JWT_TOKEN_TYPE, TypedSource, token_type,
};
use crate::oauth::{
    AssertionAlg, AssertionAudience, AssertionSettings, AuthMethod, BasicEncoding, ClientSettings,
    Grant, RareSettings, SecretSource,
};
use crate::refresh::RefreshPolicy;
use crate::serve::{call_limits, connections};
use shared::Shared;

mod assertion;
mod error;
mod federated;
mod load;
#[cfg(test)]
mod one_client;
mod shared;
#[cfg(test)]
mod tests;
mod validate;

pub use error::ConfigError;
pub use load::LOAD_TIMEOUT;
pub use validate::redirect_listen_addr;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    /// Defaults for every client's refresh schedule and retries.
    pub refresh: RefreshPolicy,
    pub metrics: MetricsConfig,
    /// Where pods are looked up, for `pod_*` selectors.
    pub kubernetes: crate::attest::kubelet::Settings,
    /// Shared with the running clients (one copy per client, not one per user of it), names
    /// included: a client's store slot and token source hold the name the config has.
    pub clients: BTreeMap<Arc<str>, Arc<ClientConfig>>,
    /// `[proxy.NAME]`: HTTP routes that send requests on to an API with a client's token.
    pub proxy: BTreeMap<String, crate::proxy::RouteSettings>,
    /// The file this was read from; named in messages that tell an operator what to run.
    pub source_path: Option<PathBuf>,
}

/// The file as written: [`Config`]'s sections, with each client's table as it is (validation
/// reads what the tables say beyond the config they make).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    refresh: RefreshPolicy,
    #[serde(default)]
    metrics: MetricsConfig,
    #[serde(default)]
    kubernetes: crate::attest::kubelet::Settings,
    #[serde(default)]
    clients: BTreeMap<String, ClientTable>,
    #[serde(default)]
    proxy: BTreeMap<String, crate::proxy::RouteSettings>,
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
    #[serde(with = "crate::durations")]
    pub default_wait: Duration,
    /// Under systemd, READY=1 is sent once every required client has a token, or after this
    /// long, with the clients still without one named in STATUS=.
    #[serde(with = "crate::durations")]
    pub startup_timeout: Duration,
    /// The longest any call waits for a token, whatever deadline the caller sends: a waiting
    /// call holds memory, and a caller must not be able to hold it for hours.
    #[serde(with = "crate::durations")]
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
    #[serde(with = "crate::durations")]
    pub handshake_timeout: Duration,
    /// A connection with no request open for this long is closed (after one to two times
    /// this); a WatchToken stream is an open request.
    #[serde(with = "crate::durations")]
    pub idle_timeout: Duration,
    /// Streams one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Where tokend keeps what it makes itself (DPoP keys): `$STATE_DIRECTORY` as systemd's
    /// `StateDirectory=` sets it (the first, if it lists several), else `/var/lib/tokend`.
    pub state_directory: PathBuf,
}

// The limits' defaults are the components' own.
impl Default for ServerConfig {
    fn default() -> Self {
        let calls = call_limits::Settings::default();
        let connections = connections::Settings::default();
        Self {
            socket: PathBuf::from("/run/tokend/tokend.sock"),
            socket_mode: "0660".into(),
            tcp: None,
            default_wait: Duration::from_secs(30),
            startup_timeout: Duration::from_secs(30),
            max_wait: calls.max_wait,
            max_watch_streams: calls.max_watch_streams,
            max_watch_streams_per_uid: calls.max_watch_streams_per_uid,
            max_waiting_calls: calls.max_waiting_calls,
            max_waiting_calls_per_uid: calls.max_waiting_calls_per_uid,
            max_connections: connections.max_connections,
            max_connections_per_uid: connections.max_connections_per_uid,
            handshake_timeout: connections.handshake_timeout,
            idle_timeout: connections.idle_timeout,
            max_concurrent_streams: connections.max_concurrent_streams,
            state_directory: default_state_directory(),
        }
    }
}

fn default_state_directory() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .and_then(|dirs| {
            let first = dirs.to_str()?.split(':').next()?.to_string();
            (!first.is_empty()).then(|| PathBuf::from(first))
        })
        .unwrap_or_else(|| PathBuf::from("/var/lib/tokend"))
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
    /// The socket mode as a number; valid in a loaded config ([`Config::load`] validates it).
    pub fn socket_mode(&self) -> u32 {
        crate::host::file_mode::parse(&self.socket_mode, "0600").unwrap_or(0o600)
    }
}

/// One `[clients.NAME]` table as written: every key, flat.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTable {
    /// Optional with `issuer`, whose metadata then names it.
    pub token_endpoint: Option<String>,
    pub client_id: String,
    pub client_secret_file: Option<PathBuf>,
    pub client_secret_env: Option<String>,
    /// A systemd credential (`LoadCredential=`): the secret is `$CREDENTIALS_DIRECTORY/NAME`.
    pub client_secret_credential: Option<String>,
    #[serde(default = "default_auth_method")]
    pub auth_method: AuthMethod,
    /// With auth_method = "basic": "auto" (the default), "form" or "raw".
    pub basic_encoding: Option<BasicEncoding>,
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
    /// `[[clients.NAME.allow]]`: callers matching every selector of any one entry may read
    /// the token too (unit, executable, cgroup, pod, user, group).
    #[serde(default)]
    pub allow: Vec<crate::access::Selectors>,
    /// Serve this client on the TCP listener too. TCP callers cannot be identified, so a
    /// client is never served there unless it says so.
    #[serde(default)]
    pub allow_tcp: bool,
    /// Whether systemd readiness waits for this client's first token, and health readiness
    /// (`tokend.v1.TokenService`) holds only while it has a valid one.
    #[serde(default = "default_true")]
    pub required: bool,
    /// Also write each new token to a file, for consumers that can only read files.
    pub file_sink: Option<crate::sink::FileSinkConfig>,
    /// The authorization server's issuer URL: its metadata (RFC 8414) names the endpoints.
    pub issuer: Option<String>,
    /// For `tokend authorize --device`: the device authorization endpoint (RFC 8628), when
    /// the issuer's metadata does not name it.
    pub device_authorization_endpoint: Option<String>,
    /// The client's private key (PEM) for private_key_jwt and mTLS...
    pub client_key_file: Option<PathBuf>,
    /// ...or the systemd credential that holds it.
    pub client_key_credential: Option<String>,
    /// The client's certificate chain (PEM) for mTLS.
    pub client_cert_file: Option<PathBuf>,
    /// CAs (PEM) trusted for this client's endpoints instead of the platform's store.
    pub ca_file: Option<PathBuf>,
    /// The `kid` of the client assertions (private_key_jwt, client_secret_jwt)...
    pub client_key_id: Option<String>,
    /// ...their `alg` (default: by key type, or HS256 with the secret)...
    pub client_assertion_alg: Option<AssertionAlg>,
    /// ...and their `aud`: unset for the token endpoint, "issuer" for the issuer, or a value.
    pub client_assertion_audience: Option<String>,
    /// grant = "token_exchange": the subject token's file or command (argv, no shell)...
    pub subject_token_file: Option<PathBuf>,
    pub subject_token_command: Option<Vec<String>>,
    /// ...its type (default "jwt")...
    pub subject_token_type: Option<String>,
    /// ...an optional actor token and its type...
    pub actor_token_file: Option<PathBuf>,
    pub actor_token_command: Option<Vec<String>>,
    pub actor_token_type: Option<String>,
    /// ...and the type of token asked for, which the reply must say it issued.
    pub requested_token_type: Option<String>,
    /// grant = "jwt_bearer": the assertion's file or command.
    pub assertion_file: Option<PathBuf>,
    pub assertion_command: Option<Vec<String>>,
    /// auth_method = "federated_assertion": the client assertion's file or command.
    pub client_assertion_file: Option<PathBuf>,
    pub client_assertion_command: Option<Vec<String>>,
    /// Sender-constrained tokens (RFC 9449): tokend holds a key for the client and sends a
    /// DPoP proof with every token request...
    #[serde(default)]
    pub dpop: bool,
    /// ...kept here (default `<server.state_directory>/<client>.dpop.pem`), made at first start.
    pub dpop_key_file: Option<PathBuf>,
}

fn default_true() -> bool {
    true
}

/// A configured client: how its tokens are requested (one copy, shared with its token source),
/// and everything else the daemon and `tokend authorize` use of its table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "ClientTable")]
pub struct ClientConfig {
    pub oauth: Arc<ClientSettings>,
    /// Who may read the token, when the table names anyone (read through
    /// [`ClientConfig::access_rules`]). Boxed, as the sink and `tokend authorize`'s settings:
    /// most clients have none, and every client's config is held while the daemon runs.
    access: Option<Box<AccessLists>>,
    pub allow_tcp: bool,
    pub required: bool,
    pub file_sink: Option<Box<crate::sink::FileSinkConfig>>,
    /// Read through [`ClientConfig::authorize`].
    authorize: Option<Box<AuthorizeSettings>>,
}

/// Who may read a client's token over the Unix socket.
#[derive(Debug, Clone, PartialEq)]
struct AccessLists {
    allowed_users: Vec<String>,
    allowed_groups: Vec<String>,
    allow: Vec<crate::access::Selectors>,
}

impl AccessLists {
    /// Whether no list names anyone (every caller that can open the socket may read the token).
    fn is_empty(&self) -> bool {
        self.allowed_users.is_empty() && self.allowed_groups.is_empty() && self.allow.is_empty()
    }
}

/// What `tokend authorize` needs of a client beyond its token requests.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorizeSettings {
    pub authorize_endpoint: Option<String>,
    pub device_authorization_endpoint: Option<String>,
    pub redirect_uri: Option<String>,
    pub pkce: bool,
    pub code_param: Option<String>,
}

impl AuthorizeSettings {
    /// Those of a client that sets none.
    const UNSET: AuthorizeSettings = AuthorizeSettings {
        authorize_endpoint: None,
        device_authorization_endpoint: None,
        redirect_uri: None,
        pkce: false,
        code_param: None,
    };
}

impl ClientConfig {
    /// Who may read this client's token, as its table says.
    pub fn access_rules(&self) -> crate::access::Rules<'_> {
        let lists = self.access.as_deref();
        crate::access::Rules {
            allowed_users: lists.map_or(&[], |l| &l.allowed_users),
            allowed_groups: lists.map_or(&[], |l| &l.allowed_groups),
            allow: lists.map_or(&[], |l| &l.allow),
            allow_tcp: self.allow_tcp,
        }
    }

    /// The endpoints, redirect URI and PKCE of `tokend authorize`.
    pub fn authorize(&self) -> &AuthorizeSettings {
        self.authorize
            .as_deref()
            .unwrap_or(&AuthorizeSettings::UNSET)
    }
}

/// What a client's table says that only validation reads, kept while the config is loaded:
/// which of the keys that name one thing were set (to refuse two, or one where it is not
/// used), values as written (to name what is wrong), and the keys that only decide what
/// validation accepts.
#[derive(Debug, Default)]
struct Written {
    /// The keys that name the secret (validation wants exactly one).
    secret: SecretKeys,
    /// The keys that name the private key (validation wants at most one).
    client_key: KeyKeys,
    /// Whether `basic_encoding` was set (validation refuses it with another auth_method).
    basic_encoding: bool,
    /// The federated token keys that were set, and the token type names as written.
    federated: FederatedKeys,
    /// Whether plain http endpoints to other hosts are accepted.
    allow_insecure_http: bool,
    /// `dpop`, which the key file in `oauth.dpop_key` says once the config is made...
    dpop: bool,
    /// ...and whether that file is `dpop_key_file` (else the default, whose message differs).
    dpop_key_file: bool,
}

#[derive(Debug, Default)]
struct SecretKeys {
    file: bool,
    env: bool,
    /// The systemd credential's name.
    credential: Option<String>,
}

#[derive(Debug, Default)]
struct KeyKeys {
    file: bool,
    /// The systemd credential's name.
    credential: Option<String>,
}

/// The federated token keys as written.
#[derive(Debug, Default)]
struct FederatedKeys {
    /// Every `*_file` and `*_command` key set, by name.
    set: Vec<&'static str>,
    /// `subject_token_type`, `actor_token_type` and `requested_token_type` as written.
    types: Vec<(&'static str, String)>,
}

impl SecretKeys {
    /// The key that names the secret (the first set, for messages).
    fn key(&self) -> &'static str {
        if self.file {
            "client_secret_file"
        } else if self.env {
            "client_secret_env"
        } else {
            "client_secret_credential"
        }
    }
}

impl KeyKeys {
    /// The key that names the private key (for messages).
    fn key(&self) -> &'static str {
        if self.credential.is_some() {
            "client_key_credential"
        } else {
            "client_key_file"
        }
    }
}

impl From<ClientTable> for ClientConfig {
    fn from(t: ClientTable) -> Self {
        client_from(t, &mut Shared::default()).0
    }
}

/// The client a table makes (a DPoP client's key file as written: the default one is
/// [`ConfigFile::into_config`]'s), with the strings `shared` has already, and what else the
/// table says.
fn client_from(t: ClientTable, shared: &mut Shared) -> (ClientConfig, Written) {
    let (federated, federated_keys) = federated_from(&t);
    let written = Written {
        secret: SecretKeys {
            file: t.client_secret_file.is_some(),
            env: t.client_secret_env.is_some(),
            credential: t.client_secret_credential.clone(),
        },
        client_key: KeyKeys {
            file: t.client_key_file.is_some(),
            credential: t.client_key_credential.clone(),
        },
        basic_encoding: t.basic_encoding.is_some(),
        federated: federated_keys,
        allow_insecure_http: t.allow_insecure_http,
        dpop: t.dpop,
        dpop_key_file: t.dpop_key_file.is_some(),
    };
    // Validation refuses more than one secret key, and a secret where the method uses none.
    let secret = match (
        t.client_secret_file,
        t.client_secret_env,
        t.client_secret_credential,
    ) {
        (Some(path), _, _) => Some(SecretSource::File(shared.path(path))),
        (None, Some(var), _) => Some(SecretSource::Env(var)),
        (None, None, Some(name)) => Some(SecretSource::File(shared.path(credential_path(&name)))),
        (None, None, None) => None,
    };
    let access = AccessLists {
        allowed_users: t.allowed_users,
        allowed_groups: t.allowed_groups,
        allow: t.allow,
    };
    let authorize = AuthorizeSettings {
        authorize_endpoint: t.authorize_endpoint,
        device_authorization_endpoint: t.device_authorization_endpoint,
        redirect_uri: t.redirect_uri,
        pkce: t.pkce,
        code_param: t.code_param,
    };
    let client = ClientConfig {
        oauth: Arc::new(ClientSettings {
            token_endpoint: t.token_endpoint.map(|e| shared.string(e)),
            client_id: t.client_id.into(),
            secret,
            auth_method: t.auth_method,
            basic_encoding: t.basic_encoding.unwrap_or_default(),
            grant: t.grant,
            scope: t.scope.map(|s| shared.string(s)),
            issuer: t.issuer.map(|i| shared.string(i)),
            federated,
            rare: RareSettings {
                refresh_token_file: t.refresh_token_file,
                audience: t.audience,
                resource: t.resource,
                extra_params: t.extra_params,
                client_key: t
                    .client_key_file
                    .or_else(|| t.client_key_credential.as_deref().map(credential_path)),
                client_cert: t.client_cert_file,
                ca_file: t.ca_file,
                assertion: AssertionSettings {
                    key_id: t.client_key_id,
                    alg: t.client_assertion_alg,
                    audience: AssertionAudience::from_config(t.client_assertion_audience),
                },
                // Validation refuses a key file without `dpop`.
                dpop_key: t.dpop_key_file.filter(|_| t.dpop),
            }
            .boxed(),
        }),
        access: (!access.is_empty()).then(|| Box::new(access)),
        allow_tcp: t.allow_tcp,
        required: t.required,
        file_sink: t.file_sink.map(Box::new),
        authorize: (authorize != AuthorizeSettings::UNSET).then(|| Box::new(authorize)),
    };
    (client, written)
}

/// The federated sources of a table (the file when both keys are set: validation refuses that
/// with the keys' names), and which keys were set.
fn federated_from(t: &ClientTable) -> (Option<Box<Federated>>, FederatedKeys) {
    let mut keys = FederatedKeys::default();
    let mut source =
        |file: &Option<PathBuf>, command: &Option<Vec<String>>, names: [&'static str; 2]| {
            for (set, name) in [(file.is_some(), names[0]), (command.is_some(), names[1])] {
                if set {
                    keys.set.push(name);
                }
            }
            match (file, command) {
                (Some(path), _) => Some(CredentialSource::File(path.clone())),
                (None, Some(argv)) => Some(CredentialSource::Command(argv.clone())),
                (None, None) => None,
            }
        };
    let subject = source(
        &t.subject_token_file,
        &t.subject_token_command,
        ["subject_token_file", "subject_token_command"],
    );
    let actor = source(
        &t.actor_token_file,
        &t.actor_token_command,
        ["actor_token_file", "actor_token_command"],
    );
    let assertion = source(
        &t.assertion_file,
        &t.assertion_command,
        ["assertion_file", "assertion_command"],
    );
    let client_assertion = source(
        &t.client_assertion_file,
        &t.client_assertion_command,
        ["client_assertion_file", "client_assertion_command"],
    );
    for (key, value) in [
        ("subject_token_type", &t.subject_token_type),
        ("actor_token_type", &t.actor_token_type),
        ("requested_token_type", &t.requested_token_type),
    ] {
        if let Some(value) = value {
            keys.types.push((key, value.clone()));
        }
    }
    // Validation refuses a type that is not one; here it is kept as written meanwhile.
    let typed = |source: Option<CredentialSource>, written: &Option<String>| {
        source.map(|source| TypedSource {
            source,
            token_type: written
                .as_deref()
                .map_or(Ok(JWT_TOKEN_TYPE.to_string()), token_type)
                .unwrap_or_else(|_| written.clone().unwrap_or_default()),
        })
    };
    let f = Federated {
        subject: typed(subject, &t.subject_token_type),
        actor: typed(actor, &t.actor_token_type),
        requested_token_type: t
            .requested_token_type
            .as_deref()
            .map(|v| token_type(v).unwrap_or_else(|_| v.to_string())),
        assertion,
        client_assertion,
    };
    let any = f != Federated::default();
    (any.then(|| Box::new(f)), keys)
}

impl ClientConfig {
    /// The settings that decide how tokens are fetched (everything but who may read them, and
    /// whether readiness waits for them): a change here means the client's token must be
    /// fetched anew.
    pub fn fetch_settings(&self) -> FetchSettings<'_> {
        FetchSettings {
            oauth: &self.oauth,
            file_sink: self.file_sink.as_deref(),
            authorize: self.authorize(),
        }
    }
}

/// A client's [`ClientConfig::fetch_settings`], to compare.
#[derive(Debug, PartialEq)]
pub struct FetchSettings<'a> {
    oauth: &'a ClientSettings,
    file_sink: Option<&'a crate::sink::FileSinkConfig>,
    authorize: &'a AuthorizeSettings,
}

/// A systemd credential's file: `$CREDENTIALS_DIRECTORY/NAME` (validation refuses the name when
/// the variable is unset).
pub fn credential_path(name: &str) -> PathBuf {
    std::env::var_os("CREDENTIALS_DIRECTORY")
        .map_or_else(PathBuf::new, PathBuf::from)
        .join(name)
}

fn default_auth_method() -> AuthMethod {
    AuthMethod::Basic
}

fn default_grant() -> Grant {
    Grant::ClientCredentials
}

impl ConfigFile {
    /// The config the file makes, and what each client's table says that only validation
    /// reads (by client name). A DPoP client's key file is `dpop_key_file`, else
    /// `<server.state_directory>/<client>.dpop.pem`.
    fn into_config(self) -> (Config, BTreeMap<String, Written>) {
        let mut written = BTreeMap::new();
        let mut shared = Shared::default();
        let clients = self
            .clients
            .into_iter()
            .map(|(name, table)| {
                let (mut client, w) = client_from(table, &mut shared);
                if w.dpop && client.oauth.rare().dpop_key.is_none() {
                    let path = self.server.state_directory.join(format!("{name}.dpop.pem"));
                    Arc::make_mut(&mut client.oauth).rare_mut().dpop_key = Some(path);
                }
                written.insert(name.clone(), w);
                (name.into(), Arc::new(client))
            })
            .collect();
        let config = Config {
            server: self.server,
            refresh: self.refresh,
            metrics: self.metrics,
            kubernetes: self.kubernetes,
            clients,
            proxy: self.proxy,
            source_path: None,
        };
        (config, written)
    }
}

impl Config {
    /// The socket mode as a number; valid in a loaded config ([`Config::load`] validates it).
    pub fn socket_mode(&self) -> u32 {
        crate::host::file_mode::parse(&self.server.socket_mode, "0660").unwrap_or(0o660)
    }
}
