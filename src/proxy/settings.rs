//! One `[proxy.NAME]` route as configured: where callers connect, where requests go, whose
//! token they carry.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A route: callers speak HTTP/1.1 or h2c to `listen`; each request goes to `upstream` with
/// the token of `client`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// `"unix:/run/tokend/NAME.sock"`, or a loopback `"127.0.0.1:PORT"` / `"[::1]:PORT"`.
    pub listen: String,
    /// Octal file mode of the Unix socket after bind.
    #[serde(default = "default_socket_mode")]
    pub socket_mode: String,
    /// The API's base URL: `https://`, or `http://` to a loopback address only. A request for
    /// `/a/b?q` goes to `<upstream path>/a/b?q`.
    pub upstream: String,
    /// The tokend client whose token is sent.
    pub client: String,
    /// CAs (PEM) trusted for the upstream instead of the platform's store.
    pub ca_file: Option<PathBuf>,
    /// How long the upstream may take to start its answer, and then between two reads.
    #[serde(default = "default_timeout", with = "crate::durations")]
    pub timeout: Duration,
    /// Request bodies up to this size are held until the answer, so that the request can be
    /// sent again after a 401; larger ones are streamed and a 401 is returned as it is.
    #[serde(default = "default_max_replay_body")]
    pub max_replay_body: usize,
    /// Connections open at once on this route, in all and per caller uid.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_max_connections_per_uid")]
    pub max_connections_per_uid: usize,
}

fn default_socket_mode() -> String {
    "0660".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_replay_body() -> usize {
    1024 * 1024
}

fn default_max_connections() -> usize {
    512
}

fn default_max_connections_per_uid() -> usize {
    128
}

/// Where a route listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// Largest `max_replay_body`: each request in flight may hold this much.
const MAX_MAX_REPLAY_BODY: usize = 64 * 1024 * 1024;

impl RouteSettings {
    /// Where to listen, or why `listen` is not a place to.
    pub fn listen(&self) -> Result<Listen, String> {
        if let Some(path) = self.listen.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!(
                    "{:?}: the socket path must be absolute (\"unix:/run/tokend/NAME.sock\")",
                    self.listen
                ));
            }
            return Ok(Listen::Unix(path));
        }
        let addr: SocketAddr = self.listen.parse().map_err(|_| {
            format!(
                "{:?} is neither \"unix:/absolute/path.sock\" nor an IP address and port",
                self.listen
            )
        })?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{addr} is not a loopback address: anyone who can reach it could use the client's token; use 127.0.0.1 or [::1], or a Unix socket"
            ));
        }
        Ok(Listen::Tcp(addr))
    }

    /// The upstream base URL, or why it cannot be one.
    pub fn upstream(&self) -> Result<url::Url, String> {
        let url = url::Url::parse(&self.upstream)
            .map_err(|e| format!("{:?} is not an absolute URL ({e})", self.upstream))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not hold user information (user:password@)".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("must not have a query or fragment: it is a base URL".into());
        }
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        };
        match url.scheme() {
            "https" => Ok(url),
            "http" if loopback => Ok(url),
            "http" => Err(format!(
                "{:?}: the token would cross the network in clear; use https (http only to a loopback address)",
                self.upstream
            )),
            other => Err(format!("has scheme {other:?}; use https")),
        }
    }

    /// The socket mode as a number, or why it is not one.
    pub fn socket_mode(&self) -> Result<u32, String> {
        crate::host::file_mode::parse(&self.socket_mode, "0660").map_err(|e| e.to_string())
    }

    /// What cannot work: the key (within the route) and the reason.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        self.listen().map_err(|r| ("listen", r))?;
        self.upstream().map_err(|r| ("upstream", r))?;
        self.socket_mode().map_err(|r| ("socket_mode", r))?;
        if let Some(path) = &self.ca_file
            && !path.is_absolute()
        {
            return Err((
                "ca_file",
                format!("{} must be an absolute path", path.display()),
            ));
        }
        if self.timeout.is_zero() {
            return Err(("timeout", "must be longer than zero".into()));
        }
        if self.max_replay_body > MAX_MAX_REPLAY_BODY {
            return Err((
                "max_replay_body",
                format!(
                    "must be at most {MAX_MAX_REPLAY_BODY} bytes: every request in flight may hold this much"
                ),
            ));
        }
        if self.max_connections == 0 || self.max_connections_per_uid == 0 {
            return Err((
                "max_connections",
                "max_connections and max_connections_per_uid must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(listen: &str, upstream: &str) -> RouteSettings {
        RouteSettings {
            listen: listen.into(),
            socket_mode: default_socket_mode(),
            upstream: upstream.into(),
            client: "c".into(),
            ca_file: None,
            timeout: default_timeout(),
            max_replay_body: default_max_replay_body(),
            max_connections: 4,
            max_connections_per_uid: 2,
        }
    }

    #[test]
    fn listen_is_a_unix_socket_or_loopback() {
        let ok = |l: &str| route(l, "https://api.example.com").listen().unwrap();
        assert_eq!(
            ok("unix:/run/tokend/api.sock"),
            Listen::Unix("/run/tokend/api.sock".into())
        );
        assert_eq!(
            ok("127.0.0.1:8080"),
            Listen::Tcp("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(ok("[::1]:8080"), Listen::Tcp("[::1]:8080".parse().unwrap()));
        let err = |l: &str| route(l, "https://api.example.com").validate().unwrap_err();
        assert_eq!(err("0.0.0.0:8080").0, "listen");
        assert!(err("0.0.0.0:8080").1.contains("not a loopback"));
        assert!(err("unix:relative.sock").1.contains("absolute"));
        assert!(err("localhost:80").1.contains("neither"));
    }

    #[test]
    fn upstream_is_https_or_loopback_http() {
        let check = |u: &str| route("127.0.0.1:1", u).validate();
        assert!(check("https://api.example.com/v1").is_ok());
        assert!(check("http://127.0.0.1:9000").is_ok());
        assert!(check("http://[::1]:9000/x").is_ok());
        assert!(check("http://localhost:9000").is_ok());
        for (bad, why) in [
            ("http://api.example.com", "in clear"),
            ("https://u:p@api.example.com", "user information"),
            ("https://api.example.com/?k=v", "query"),
            ("ftp://api.example.com", "scheme"),
            ("api.example.com", "absolute URL"),
        ] {
            let (key, reason) = check(bad).unwrap_err();
            assert_eq!(key, "upstream", "{bad}");
            assert!(reason.contains(why), "{bad}: {reason}");
        }
    }
}
