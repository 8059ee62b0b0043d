//! The credential-injecting proxy: for programs that speak HTTP but not gRPC. Each
//! `[proxy.NAME]` route listens on a Unix socket or a loopback port and sends every request to
//! its upstream API with the client's token (`Authorization: Bearer`, or `DPoP` with a proof
//! signed by the key tokend holds), after deciding, as GetToken does, whether the caller may
//! use it. It never sends an expired token: without a valid one the caller gets 503 and the
//! reason. An upstream's 401 is met once: with a new token (reported as rejected, as
//! `RefreshToken` does), or with the DPoP nonce the upstream asked for.
//!
//! - `settings`: a route as configured.
//! - `listen`: the route's listener, its caps, and who each caller is.
//! - `forward`: one request, its token, the upstream's answer and the one replay.
//! - `headers`: the target URL, hop-by-hop fields, and what a 401 asks for.

mod forward;
mod headers;
mod listen;
mod settings;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use settings::{Listen, RouteSettings};

use crate::oauth::dpop::Nonces;
use crate::serve::connections::Limits;
use crate::serve::listen::{ListenError, SocketFile, bind_tcp};
use crate::serve::service::TokenServiceImpl;

/// Why a route could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("proxy.{route}: {source}")]
    Listen { route: String, source: ListenError },
    #[error("proxy.{route}.ca_file: {source}")]
    Tls {
        route: String,
        source: crate::oauth::tls::TlsError,
    },
    #[error("proxy.{route}: cannot make its HTTP client: {reason}")]
    Client { route: String, reason: String },
}

/// Bound routes, ready to serve.
pub struct Routes {
    routes: Vec<Bound>,
    /// Removed when the routes are dropped.
    _sockets: Vec<SocketFile>,
}

/// A route's listener and HTTP client, made before anything is fetched (a route that cannot
/// listen stops the daemon at start, as the gRPC socket does).
struct Bound {
    name: String,
    settings: RouteSettings,
    listener: listen::Listener,
    http: reqwest::Client,
}

impl Routes {
    /// Binds every route's listener and makes its HTTP client; nothing is served yet.
    pub async fn bind(settings: &BTreeMap<String, RouteSettings>) -> Result<Routes, ProxyError> {
        let mut routes = Vec::new();
        let mut sockets = Vec::new();
        for (name, s) in settings {
            // Validation has checked every value.
            let listen_err = |source| ProxyError::Listen {
                route: name.clone(),
                source,
            };
            let listener = match s.listen().expect("validated") {
                Listen::Unix(path) => {
                    let (l, file) = SocketFile::bind(&path, s.socket_mode().expect("validated"))
                        .map_err(listen_err)?;
                    sockets.push(file);
                    listen::Listener::Unix(l)
                }
                Listen::Tcp(addr) => {
                    listen::Listener::Tcp(bind_tcp(addr).await.map_err(listen_err)?)
                }
            };
            routes.push(Bound {
                name: name.clone(),
                http: http_client(name, s.ca_file.as_ref(), s.timeout)?,
                settings: s.clone(),
                listener,
            });
        }
        Ok(Routes {
            routes,
            _sockets: sockets,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Serves every route with the tokens `tokens` hands out until `stopping` is cancelled;
    /// ends (with why) if one stops.
    pub async fn serve(self, tokens: TokenServiceImpl, stopping: CancellationToken) -> String {
        let _sockets = self._sockets;
        let served = self.routes.into_iter().map(|bound| {
            let s = bound.settings;
            let route = forward::Route {
                client: s.client.clone(),
                upstream: s.upstream().expect("validated"),
                http: bound.http,
                timeout: s.timeout,
                max_replay_body: s.max_replay_body,
                tokens: tokens.clone(),
                nonces: Nonces::default(),
                metrics: crate::metrics::METRICS.proxy_route(&bound.name),
                name: bound.name,
            };
            let limits = Arc::new(Limits::new(s.max_connections, s.max_connections_per_uid));
            Box::pin(listen::serve(
                Arc::new(route),
                bound.listener,
                limits,
                stopping.clone(),
            ))
        });
        let (why, _, _) = futures_util::future::select_all(served).await;
        why
    }
}

/// A route's HTTP client: rustls, the platform's CAs or only `ca_file`'s, no redirects
/// followed (a 3xx goes back to the caller, who decides whether the token should follow),
/// `timeout` between two reads of an answer.
fn http_client(
    route: &str,
    ca_file: Option<&PathBuf>,
    timeout: Duration,
) -> Result<reqwest::Client, ProxyError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .read_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = ca_file {
        let roots = crate::oauth::tls::roots(ca).map_err(|source| ProxyError::Tls {
            route: route.to_string(),
            source,
        })?;
        builder = builder.tls_certs_only(roots);
    }
    builder.build().map_err(|e| ProxyError::Client {
        route: route.to_string(),
        reason: crate::oauth::describe_http_error(&e),
    })
}
