//! What a config cannot work with, refused at load (and at reload, leaving the running config in
//! place) with the key and the reason.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ClientConfig, Config, ConfigError, ServerConfig, Written};
use crate::client_name::{MAX_CLIENT_NAME, is_client_name};
use crate::oauth::{AuthMethod, Grant, SecretSource};
use crate::refresh::RefreshPolicy;

/// The upper bound of `server.max_wait`: beyond an hour, a "wait" is a held connection.
const MAX_MAX_WAIT: Duration = Duration::from_secs(3600);

/// Form parameters a client may not override through `extra_params`: tokend sets them itself.
const RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "refresh_token",
    "scope",
    "audience",
    "resource",
    "client_assertion",
    "client_assertion_type",
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "requested_token_type",
    "assertion",
];

impl Config {
    /// Rejects what cannot work, naming the key; `written` is what each client's table says
    /// beyond the client it makes.
    pub(super) fn validate(
        &self,
        file: &str,
        written: &BTreeMap<String, Written>,
    ) -> Result<(), ConfigError> {
        let err = |key: String, reason: String| ConfigError {
            file: file.to_string(),
            key,
            reason,
        };
        crate::host::file_mode::parse(&self.server.socket_mode, "0660")
            .map_err(|e| err("server.socket_mode".into(), e.to_string()))?;
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
        crate::host::file_mode::parse(&self.metrics.socket_mode, "0600")
            .map_err(|e| err("metrics.socket_mode".into(), e.to_string()))?;
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
        validate_refresh(&self.refresh).map_err(|(k, r)| err(k, r))?;
        for (name, client) in &self.clients {
            client
                .validate(name, &written[&**name])
                .map_err(|(k, r)| err(format!("clients.{name}.{k}"), r))?;
        }
        if self.names_pods() {
            self.kubernetes
                .validate()
                .map_err(|(k, r)| err(format!("kubernetes.{k}"), r))?;
        }
        self.validate_proxy()
            .map_err(|(k, r)| err(format!("proxy.{k}"), r))?;
        Ok(())
    }

    /// Each route listens where nothing else does, for a configured client.
    fn validate_proxy(&self) -> Result<(), (String, String)> {
        use crate::proxy::Listen;
        let mut taken: Vec<(Listen, String)> = vec![(
            Listen::Unix(self.server.socket.clone()),
            "server.socket".into(),
        )];
        taken.extend(
            self.metrics
                .socket
                .clone()
                .map(|s| (Listen::Unix(s), "metrics.socket".into())),
        );
        taken.extend(
            self.server
                .tcp
                .map(|a| (Listen::Tcp(a), "server.tcp".into())),
        );
        taken.extend(
            self.metrics
                .listen
                .map(|a| (Listen::Tcp(a), "metrics.listen".into())),
        );
        for (name, route) in &self.proxy {
            if !is_client_name(name) {
                return Err((
                    name.clone(),
                    format!(
                        "route name {name:?} must be 1 to {MAX_CLIENT_NAME} letters, digits, '-', '_' and '.'"
                    ),
                ));
            }
            route
                .validate()
                .map_err(|(k, r)| (format!("{name}.{k}"), r))?;
            if !self.clients.contains_key(route.client.as_str()) {
                return Err((
                    format!("{name}.client"),
                    format!("no client named {:?} is configured", route.client),
                ));
            }
            let listen = route.listen().expect("validated above");
            if let Some((_, by)) = taken.iter().find(|(l, _)| *l == listen) {
                return Err((
                    format!("{name}.listen"),
                    format!("is {by}'s too; each route needs a listener of its own"),
                ));
            }
            taken.push((listen, format!("proxy.{name}.listen")));
        }
        Ok(())
    }

    /// Whether any client allows callers by pod (the kubelet is asked).
    pub fn names_pods(&self) -> bool {
        self.clients
            .values()
            .any(|c| c.access_rules().allow.iter().any(|e| e.names_pods()))
    }
}

impl ServerConfig {
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

/// The `[refresh]` values that cannot work.
fn validate_refresh(policy: &RefreshPolicy) -> Result<(), (String, String)> {
    let [lo, hi] = policy.lifetime_fraction;
    if !(0.1..=0.95).contains(&lo) || !(0.1..=0.95).contains(&hi) || lo > hi {
        return Err((
            "refresh.lifetime_fraction".into(),
            format!("[{lo}, {hi}] must be an ascending pair between 0.1 and 0.95"),
        ));
    }
    let positive = [
        ("backoff_min", policy.backoff_min),
        ("backoff_max", policy.backoff_max),
        ("retry_after_max", policy.retry_after_max),
        ("operator_retry", policy.operator_retry),
        ("default_lifetime", policy.default_lifetime),
        ("request_timeout", policy.request_timeout),
        ("min_interval", policy.min_interval),
    ];
    for (key, value) in positive {
        if value.is_zero() {
            return Err((format!("refresh.{key}"), "must be positive".into()));
        }
    }
    if policy.endpoint_concurrency == 0 {
        return Err((
            "refresh.endpoint_concurrency".into(),
            "must be at least 1".into(),
        ));
    }
    if policy.retry_after_max > MAX_RETRY_AFTER {
        return Err((
            "refresh.retry_after_max".into(),
            format!(
                "{} is longer than {}: a token lives at most that long, so waiting longer \
                 for a provider would only leave the client without one",
                humantime::format_duration(policy.retry_after_max),
                humantime::format_duration(MAX_RETRY_AFTER)
            ),
        ));
    }
    if policy.backoff_min > policy.backoff_max {
        return Err((
            "refresh.backoff_min".into(),
            format!(
                "{} is larger than refresh.backoff_max ({})",
                humantime::format_duration(policy.backoff_min),
                humantime::format_duration(policy.backoff_max)
            ),
        ));
    }
    Ok(())
}

impl ClientConfig {
    fn validate(&self, name: &str, w: &Written) -> Result<(), (String, String)> {
        if !is_client_name(name) {
            return Err((
                String::new(),
                format!(
                    "client name {name:?} must be 1 to {MAX_CLIENT_NAME} letters, digits, '-', '_' and '.'"
                ),
            ));
        }
        match (&self.oauth.token_endpoint, &self.oauth.issuer) {
            (Some(endpoint), _) => validate_endpoint(endpoint, w.allow_insecure_http)
                .map_err(|r| ("token_endpoint".to_string(), r))?,
            (None, Some(_)) => {}
            (None, None) => {
                return Err((
                    "token_endpoint".into(),
                    "set token_endpoint, or issuer to read it from the provider's metadata (RFC 8414)".into(),
                ));
            }
        }
        if self.oauth.client_id.is_empty() {
            return Err(("client_id".into(), "must not be empty".into()));
        }
        self.validate_secret(w)?;
        self.validate_auth_method(w)?;
        self.validate_federated(w)?;
        crate::access::Access::resolve(self.access_rules(), None)?;
        self.validate_executables()?;
        if let Some(sink) = &self.file_sink {
            sink.resolve()
                .map_err(|(key, reason)| (format!("file_sink.{key}"), reason))?;
        }
        match (self.oauth.grant, &self.oauth.rare().refresh_token_file) {
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
            (_, Some(_)) if self.oauth.grant != Grant::RefreshToken => {
                return Err((
                    "refresh_token_file".into(),
                    "only used with grant = \"refresh_token\"".into(),
                ));
            }
            _ => {}
        }
        if let Some(path) = &self.oauth.rare().refresh_token_file {
            // Its directory gets the file sinks' rule: written into by tokend, it must not be
            // writable by anyone who could plant a file or swap the token there.
            crate::host::atomic_file::split(path)
                .map_err(|e| e.to_string())
                .and_then(|(dir, _)| {
                    crate::host::atomic_file::SafeDir::open(
                        dir,
                        &crate::host::atomic_file::Trust::state(),
                    )
                    .map_err(|e| e.to_string())
                })
                .map_err(|r| ("refresh_token_file".to_string(), r))?;
        }
        self.validate_dpop(w)?;
        for (key, endpoint) in [
            ("authorize_endpoint", &self.authorize().authorize_endpoint),
            (
                "device_authorization_endpoint",
                &self.authorize().device_authorization_endpoint,
            ),
        ] {
            if let Some(endpoint) = endpoint {
                validate_endpoint(endpoint, w.allow_insecure_http)
                    .map_err(|r| (key.to_string(), r))?;
            }
        }
        if let Some(uri) = &self.authorize().redirect_uri {
            redirect_listen_addr(uri).map_err(|r| ("redirect_uri".to_string(), r))?;
        }
        if let Some(param) = self
            .oauth
            .rare()
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

impl ClientConfig {
    /// A DPoP client's key file is absolute, in a directory only root, tokend's user and its
    /// owner can write (a key planted there would be the key tokens are bound to).
    fn validate_dpop(&self, w: &Written) -> Result<(), (String, String)> {
        if !w.dpop {
            return if w.dpop_key_file {
                Err(("dpop_key_file".into(), "only used with dpop = true".into()))
            } else {
                Ok(())
            };
        }
        let Some(path) = &self.oauth.rare().dpop_key else {
            return Ok(());
        };
        // The default lives in server.state_directory, which is then what to fix.
        let (key, hint) = if w.dpop_key_file {
            ("dpop_key_file", "")
        } else {
            (
                "dpop",
                " (the key's default place, in server.state_directory: create that directory, set server.state_directory, or set dpop_key_file)",
            )
        };
        if !path.is_absolute() {
            return Err((
                key.into(),
                format!("{} must be an absolute path{hint}", path.display()),
            ));
        }
        crate::host::atomic_file::split(path)
            .map_err(|e| e.to_string())
            .and_then(|(dir, _)| {
                crate::host::atomic_file::SafeDir::open(
                    dir,
                    &crate::host::atomic_file::Trust::dpop_key(),
                )
                .map_err(|e| e.to_string())
            })
            .map(|_| ())
            .map_err(|r| (key.to_string(), format!("{r}{hint}")))
    }

    /// The client secret's keys: exactly one where the auth method uses a secret, none where it
    /// does not, and a source that can be read.
    fn validate_secret(&self, w: &Written) -> Result<(), (String, String)> {
        let method = self.oauth.auth_method;
        let keys = &w.secret;
        let sources = [keys.file, keys.env, keys.credential.is_some()];
        match sources.iter().filter(|s| **s).count() {
            0 if method.uses_secret() => {
                // A federated grant is often all a provider asks for (Google's STS).
                let or_none = match self.oauth.grant {
                    Grant::TokenExchange | Grant::JwtBearer => {
                        ", or auth_method = \"none\" if the provider does not authenticate the client"
                    }
                    Grant::ClientCredentials | Grant::RefreshToken => "",
                };
                return Err((
                    "client_secret_file".into(),
                    format!(
                        "auth_method = \"{}\" needs a client secret: set client_secret_file, client_secret_env or client_secret_credential{or_none}",
                        method.as_str()
                    ),
                ));
            }
            0 => return Ok(()),
            1 if !method.uses_secret() => {
                return Err((
                    keys.key().into(),
                    format!(
                        "auth_method = \"{}\" sends no client secret; remove it",
                        method.as_str()
                    ),
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
        if let Some(SecretSource::File(path)) = &self.oauth.secret
            && keys.file
            && !path.is_absolute()
        {
            return Err((
                "client_secret_file".into(),
                format!("{} must be an absolute path", path.display()),
            ));
        }
        if let Some(name) = &keys.credential {
            check_credential_name(name).map_err(|r| ("client_secret_credential".to_string(), r))?;
        }
        if let Some(SecretSource::File(path)) = &self.oauth.secret {
            crate::secret::check_file(path).map_err(|e| (keys.key().to_string(), e.to_string()))?;
        }
        if let Some(SecretSource::Env(var)) = &self.oauth.secret
            && std::env::var_os(var).is_none_or(|v| v.is_empty())
        {
            return Err((
                "client_secret_env".into(),
                format!("environment variable {var} is not set or empty"),
            ));
        }
        Ok(())
    }

    /// What an auth method needs besides the secret.
    fn validate_auth_method(&self, w: &Written) -> Result<(), (String, String)> {
        self.validate_key_files(w)?;
        self.validate_assertion(w)?;
        self.validate_tls(w)?;
        self.validate_basic_encoding(w)
            .map_err(|r| ("basic_encoding".to_string(), r))?;
        if self.oauth.auth_method == AuthMethod::None
            && self.oauth.grant == Grant::ClientCredentials
        {
            return Err((
                "auth_method".into(),
                "a public client (auth_method = \"none\") cannot use grant = \"client_credentials\", which needs client authentication (RFC 6749 section 4.4)".into(),
            ));
        }
        Ok(())
    }
}

impl ClientConfig {
    /// The key, certificate and CA files: absolute paths; the private key one or the other of
    /// its two keys, held to the secret files' rules.
    fn validate_key_files(&self, w: &Written) -> Result<(), (String, String)> {
        let o = &self.oauth;
        if let Some(name) = &w.client_key.credential {
            if w.client_key.file {
                return Err((
                    "client_key_file".into(),
                    "set only one of client_key_file and client_key_credential, not both".into(),
                ));
            }
            check_credential_name(name).map_err(|r| ("client_key_credential".to_string(), r))?;
        }
        let key_key = w.client_key.key();
        let method = o.auth_method;
        // client_secret_jwt has its own message (the secret signs): see `validate_assertion`.
        if o.rare().client_key.is_some()
            && !(method.uses_tls()
                || matches!(
                    method,
                    AuthMethod::PrivateKeyJwt | AuthMethod::ClientSecretJwt
                ))
        {
            return Err((
                key_key.to_string(),
                format!(
                    "only used with auth_method = \"private_key_jwt\", \"tls_client_auth\" or \"self_signed_tls_client_auth\", not \"{}\"; remove it",
                    method.as_str()
                ),
            ));
        }
        for (key, path) in [
            (key_key, &o.rare().client_key),
            ("client_cert_file", &o.rare().client_cert),
            ("ca_file", &o.rare().ca_file),
        ] {
            if let Some(path) = path
                && !path.is_absolute()
            {
                return Err((
                    key.to_string(),
                    format!("{} must be an absolute path", path.display()),
                ));
            }
        }
        if let Some(path) = &o.rare().client_key {
            crate::secret::check_file(path).map_err(|e| (key_key.to_string(), e.to_string()))?;
        }
        if let Some(issuer) = &o.issuer {
            validate_endpoint(issuer, w.allow_insecure_http)
                .map_err(|r| ("issuer".to_string(), r))?;
            crate::oauth::discovery::well_known_urls(issuer)
                .map_err(|e| ("issuer".to_string(), e.to_string()))?;
        }
        Ok(())
    }
}

impl ClientConfig {
    /// `basic_encoding`: only with `auth_method = "basic"`, and one that can carry the id.
    fn validate_basic_encoding(&self, w: &Written) -> Result<(), String> {
        let o = &self.oauth;
        if w.basic_encoding && o.auth_method != AuthMethod::Basic {
            return Err(format!(
                "only used with auth_method = \"basic\", not \"{}\"; remove it",
                o.auth_method.as_str()
            ));
        }
        crate::oauth::basic::check(o.basic_encoding, &o.client_id)
    }
}

impl Config {
    /// What works but an operator should know, for `tokend check`: `clients.NAME.KEY: note`.
    /// Each client's `[[allow]]` entries, one line each, for `tokend check`.
    pub fn explain_access(&self) -> Vec<String> {
        let entries = self.clients.iter().flat_map(|(name, c)| {
            c.access_rules()
                .allow
                .iter()
                .enumerate()
                .map(move |(i, entry)| format!("clients.{name}.allow[{i}]: {}", entry.explain()))
        });
        // Who may use a route is who may read its client's token: said so, with where it goes.
        let routes = self.proxy.iter().map(|(name, route)| {
            format!(
                "proxy.{name}: {} -> {} with client {:?}'s token, for the callers that client admits",
                route.listen, route.upstream, route.client
            )
        });
        entries.chain(routes).collect()
    }

    pub fn notes(&self) -> Vec<String> {
        let basic = self
            .clients
            .iter()
            .filter(|(_, c)| c.oauth.auth_method == AuthMethod::Basic)
            .filter_map(|(name, c)| {
                crate::oauth::basic::note(c.oauth.basic_encoding, &c.oauth.client_id)
                    .map(|note| format!("clients.{name}.client_id: {note}"))
            });
        let federated = self.clients.iter().flat_map(|(name, c)| {
            super::federated::notes(c).map(move |n| format!("clients.{name}.{n}"))
        });
        let executables = self.clients.iter().flat_map(|(name, c)| {
            c.access_rules().allow.iter().enumerate().filter_map(move |(i, entry)| {
                let exe = entry.executable.as_ref()?;
                std::fs::symlink_metadata(exe).is_err().then(|| {
                    format!(
                        "clients.{name}.allow[{i}].executable: {} does not exist (yet); no caller matches until it does",
                        exe.display()
                    )
                })
            })
        });
        basic.chain(federated).chain(executables).collect()
    }
}

/// A systemd credential name: one path component under `$CREDENTIALS_DIRECTORY`, which must be
/// set (by `LoadCredential=`).
pub(super) fn check_credential_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(format!("{name:?} is not a credential name"));
    }
    if std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
        return Err("needs systemd's LoadCredential= (CREDENTIALS_DIRECTORY is not set)".into());
    }
    Ok(())
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

impl ClientConfig {
    /// The mTLS methods' certificate and key, and `ca_file`: present where needed, only where
    /// used, and readable as the daemon will read them (the certificate belongs to the key).
    fn validate_tls(&self, w: &Written) -> Result<(), (String, String)> {
        let o = &self.oauth;
        let method = o.auth_method.as_str();
        if o.auth_method.uses_tls() {
            if o.rare().client_cert.is_none() {
                return Err((
                    "client_cert_file".into(),
                    format!(
                        "auth_method = \"{method}\" needs client_cert_file (the client's certificate chain, PEM) and client_key_file"
                    ),
                ));
            }
            if o.rare().client_key.is_none() {
                return Err((
                    "client_key_file".into(),
                    format!(
                        "auth_method = \"{method}\" needs client_key_file (or client_key_credential): the certificate's private key, PEM"
                    ),
                ));
            }
            // Plain http has no handshake to present the certificate in.
            if o.token_endpoint
                .as_deref()
                .and_then(|e| reqwest::Url::parse(e).ok())
                .is_some_and(|u| u.scheme() == "http")
            {
                return Err((
                    "token_endpoint".into(),
                    format!(
                        "auth_method = \"{method}\" presents the client certificate in the TLS handshake: use an https:// token endpoint"
                    ),
                ));
            }
        } else if o.rare().client_cert.is_some() {
            return Err((
                "client_cert_file".into(),
                format!(
                    "only used with auth_method = \"tls_client_auth\" or \"self_signed_tls_client_auth\", not \"{method}\""
                ),
            ));
        }
        crate::oauth::tls::check(o).map_err(|(file, e)| {
            let key = match file {
                crate::oauth::tls::TlsFile::Cert => "client_cert_file",
                crate::oauth::tls::TlsFile::Ca => "ca_file",
                crate::oauth::tls::TlsFile::Key => w.client_key.key(),
            };
            (key.to_string(), e.to_string())
        })
    }
}

impl ClientConfig {
    /// An `executable` that is a symbolic link would never match: a process is known by the
    /// real path of the program it runs.
    fn validate_executables(&self) -> Result<(), (String, String)> {
        for (i, entry) in self.access_rules().allow.iter().enumerate() {
            let Some(exe) = &entry.executable else {
                continue;
            };
            if let Ok(real) = std::fs::canonicalize(exe)
                && real != *exe
            {
                return Err((
                    format!("allow[{i}].executable"),
                    format!(
                        "{} leads to {}: callers are known by the real path of their program; write that",
                        exe.display(),
                        real.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}
