//! A route's listener: connections admitted under the route's caps, each caller identified
//! once (peer credentials and the attested process, as the gRPC socket does), and HTTP/1.1 or
//! h2c served on it until the caller or the daemon stops.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::forward::Route;
use crate::access::Caller;
use crate::attest::process::{Process, boot_time_now};
use crate::metrics::METRICS;
use crate::serve::connections::{Limits, Peer};

/// How long a caller may take to send a request's headers (HTTP/1.1), so a connection that
/// sends nothing does not hold its place.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The most a caller's request head may take (HTTP/1.1 buffer; HTTP/2 header list).
const MAX_HEAD: usize = 64 * 1024;

/// Streams one h2c connection may have open at once.
const MAX_STREAMS: u32 = 64;

/// A route's listener.
pub enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// Accepts on `listener` until `stopping` is cancelled; each connection is served on a task
/// of its own, which ends with the connection or at `stopping`.
pub async fn serve(
    route: Arc<Route>,
    listener: Listener,
    limits: Arc<Limits>,
    stopping: CancellationToken,
) -> String {
    loop {
        let accepted = tokio::select! {
            () = stopping.cancelled() => return "it was stopped".into(),
            accepted = accept(&listener) => accepted,
        };
        let (io, caller, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                debug!(route = %route.name, "accept failed: {e}");
                // Out of descriptors: pause rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = limits.admit(peer) else {
            METRICS.proxy_refused(&route.name, "connections");
            debug!(route = %route.name, "closing a connection over the route's max_connections or max_connections_per_uid");
            continue;
        };
        let (route, stopping) = (route.clone(), stopping.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let name = route.name.clone();
            let service = hyper::service::service_fn(move |request| {
                let (route, caller) = (route.clone(), caller.clone());
                async move { Ok::<_, Infallible>(route.handle(caller, request).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(MAX_STREAMS)
                .max_header_list_size(MAX_HEAD as u32);
            let connection = builder.serve_connection(io, service);
            tokio::select! {
                () = stopping.cancelled() => {}
                result = connection => if let Err(e) = result {
                    debug!(route = %name, "connection ended: {e}");
                },
            }
        });
    }
}

/// The I/O of a connection, boxed so that both listeners' connections are served alike.
type Io = TokioIo<Box<dyn ReadWrite>>;

trait ReadWrite: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ReadWrite for T {}

/// The next connection, its caller and whom it counts against.
async fn accept(listener: &Listener) -> std::io::Result<(Io, Caller, Peer)> {
    match listener {
        Listener::Unix(l) => {
            let (stream, _) = l.accept().await?;
            let cred = stream.peer_cred()?;
            // Read at once, as on the gRPC socket: the sooner, the less time the caller has to
            // exec another program under the same pid.
            let process = Process::of_peer(&stream, boot_time_now()).map(Arc::new);
            if let Err(why) = &process {
                debug!("a proxy caller without attributes: {why}");
            }
            let caller = Caller::Local {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
                process,
            };
            let io: Box<dyn ReadWrite> = Box::new(stream);
            Ok((TokioIo::new(io), caller, Peer::Uid(cred.uid())))
        }
        Listener::Tcp(l) => {
            let (stream, _) = l.accept().await?;
            if let Err(e) = stream.set_nodelay(true) {
                warn!("cannot set TCP_NODELAY on a proxy connection: {e}");
            }
            let io: Box<dyn ReadWrite> = Box::new(stream);
            Ok((TokioIo::new(io), Caller::Tcp, Peer::Tcp))
        }
    }
}
