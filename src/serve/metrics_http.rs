//! `GET /metrics` on an optional loopback listener (`[metrics] listen`, open to everyone on the
//! host) and an optional Unix socket (`[metrics] socket`, whose file mode decides who may
//! scrape).

use std::path::Path;

use super::listen::{self, ListenError, SocketFile};

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

/// Serves `GET /metrics` on every listener until the task is aborted (a Unix socket's file is
/// removed then), or until one of them fails.
pub async fn serve(listeners: Vec<Listener>) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                crate::metrics::METRICS.encode(),
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
