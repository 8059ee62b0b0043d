//! `GET /metrics` on an optional loopback listener (`[metrics] listen`, open to everyone on the
//! host) and an optional Unix socket (`[metrics] socket`, whose file mode decides who may
//! scrape).

use std::path::Path;
use std::sync::Arc;

use super::listen::{self, ListenError, SocketFile};
use crate::metrics::METRICS;
use crate::store::{ClientState, TokenStore};

/// A listener metrics are served on.
pub enum Listener {
    /// Loopback TCP: anyone on the host can scrape.
    Tcp(tokio::net::TcpListener),
    /// A Unix socket, whose file mode decides who can scrape; its file goes with it.
    Unix(tokio::net::UnixListener, SocketFile),
}

/// Binds the metrics listeners configured: a loopback address, a Unix socket with `mode`, both
/// or none.
pub async fn bind(
    tcp: Option<std::net::SocketAddr>,
    socket: Option<&Path>,
    mode: u32,
) -> Result<Vec<Listener>, ListenError> {
    let mut listeners = Vec::new();
    if let Some(addr) = tcp {
        listeners.push(Listener::Tcp(listen::bind_tcp(addr).await?));
    }
    if let Some(path) = socket {
        let (listener, file) = SocketFile::bind(path, mode)?;
        listeners.push(Listener::Unix(listener, file));
    }
    Ok(listeners)
}

/// Every metric, with the series of `store`'s clients: what a scrape gets.
pub fn exposition(store: &TokenStore) -> String {
    METRICS.encode(store.samples(), &ClientState::ALL.map(ClientState::as_str))
}

/// Serves `GET /metrics`, with the series of `store`'s clients, on every listener until the
/// task is aborted (a Unix socket's file is removed then), or until one of them fails.
pub async fn serve(listeners: Vec<Listener>, store: Arc<TokenStore>) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                exposition(&store),
            )
        }),
    );
    let servers = listeners.into_iter().map(|listener| {
        let app = app.clone();
        let server: std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> =
            match listener {
                Listener::Tcp(l) => Box::pin(async move { axum::serve(l, app).await }),
                Listener::Unix(l, file) => Box::pin(async move {
                    let _file = file;
                    axum::serve(l, app).await
                }),
            };
        server
    });
    futures_util::future::try_join_all(servers).await.map(drop)
}
