//! Lets stock gRPC clients call over the Unix socket with their library's defaults.
//!
//! gRPC's C core (Python grpcio, Ruby, PHP, C++), grpc-java and grpcurl send the socket path
//! (raw or percent-encoded) as the HTTP/2 `:authority`. That is no valid URI authority, so h2,
//! under tonic, resets every such stream with PROTOCOL_ERROR. [`AuthorityFix`] wraps each
//! accepted Unix connection and rewrites, in the client-to-server bytes, every `:authority`
//! h2 would reject into a placeholder host name of the same length (`localhost` when the
//! length allows); every other byte passes through unchanged, and the
//! server-to-client direction is not touched at all.
//!
//! The rewrite has to keep the server's HPACK dynamic table in step with the client's (clients
//! add `:authority` to it once and then refer to it by index), so the replacement has the same
//! size and representation as the original (the `hpack` submodule explains why that suffices). An empty
//! `:authority` has no same-size replacement: a field that does not add it to the table is
//! dropped (a request without `:authority` is valid), and references to one that was added
//! are dropped; only the one request that adds it fails, as without this module. No known
//! client sends one.
//!
//! Bytes from local callers are untrusted. A malformed stream ends the connection with an
//! `InvalidData` read error, as h2 itself would end it; nothing is buffered beyond one read and
//! one header block (128 KiB), and nothing panics on any input.

mod frames;
mod hpack;
#[cfg(test)]
mod tests;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

/// How much is read from the socket at once.
const READ_CHUNK: usize = 16 * 1024;

/// Why a client's byte stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed HTTP/2 from the client: {0}")]
pub struct Malformed(&'static str);

/// Maps a listener's accepted connections through [`AuthorityFix`].
pub fn fix_incoming<S, T>(incoming: S) -> impl Stream<Item = io::Result<AuthorityFix<T>>>
where
    S: Stream<Item = io::Result<T>>,
{
    incoming.map(|conn| conn.map(AuthorityFix::new))
}

/// A server-side connection whose client's `:authority` fields are made acceptable to h2.
#[derive(Debug)]
pub struct AuthorityFix<T> {
    inner: T,
    filter: frames::Filter,
    chunk: Vec<u8>,
    /// Filtered bytes not yet handed to the reader, from `out_at` on.
    out: Vec<u8>,
    out_at: usize,
    /// The client's stream ended (`None`) or was malformed; reported once `out` is drained.
    end: Option<Option<Malformed>>,
}

impl<T> AuthorityFix<T> {
    pub fn new(inner: T) -> Self {
        AuthorityFix {
            inner,
            filter: frames::Filter::default(),
            chunk: Vec::new(),
            out: Vec::new(),
            out_at: 0,
            end: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityFix<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_at < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_at);
                buf.put_slice(&this.out[this.out_at..this.out_at + n]);
                this.out_at += n;
                if this.out_at == this.out.len() {
                    this.out.clear();
                    this.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            match this.end {
                Some(None) => return Poll::Ready(Ok(())),
                Some(Some(e)) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
                None => {}
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            this.chunk.clear();
            this.chunk.reserve(READ_CHUNK);
            let mut read = ReadBuf::uninit(&mut this.chunk.spare_capacity_mut()[..READ_CHUNK]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let input = read.filled();
            if input.is_empty() {
                this.filter.finish(&mut this.out);
                this.end = Some(None);
                continue;
            }
            let rewritten = this.filter.rewritten;
            if let Err(e) = this.filter.process(input, &mut this.out) {
                tracing::debug!("ending a Unix socket connection: {e}");
                this.end = Some(Some(e));
            }
            if rewritten == 0 && this.filter.rewritten > 0 {
                tracing::debug!(
                    "rewriting this connection's invalid :authority (the socket path, as gRPC's \
                     C core, grpc-java and grpcurl send it) to a same-length placeholder host"
                );
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The wrapped connection's own connect info (for a Unix socket, `UdsConnectInfo` with the
/// peer's credentials).
impl<T: Connected> Connected for AuthorityFix<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
