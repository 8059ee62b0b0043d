//! Lets stock gRPC clients call over the Unix socket with their library's defaults.
//!
//! gRPC's C core (Python grpcio, Ruby, PHP, C++), grpc-java and grpcurl send the socket path
//! (raw or percent-encoded) as the HTTP/2 `:authority`. That is no valid URI authority, so h2,
//! under tonic, resets every such stream with PROTOCOL_ERROR. [`AuthorityFix`] wraps each
//! accepted Unix connection and rewrites, in the client-to-server bytes, every `:authority`
//! h2 would reject into a placeholder host name of the same length (`localhost` when the
//! length allows); every other byte passes through unchanged, and the
//! server-to-client direction is not touched at all. A client sends the same `:authority` with
//! every request of a connection, so a connection whose first header block h2 takes as sent
//! (`localhost`, as Go, Rust, Node and nghttp2 clients send) has nothing to fix: from then on
//! its bytes are read straight into h2's buffer, unparsed.
//!
//! The rewrite has to keep the server's HPACK dynamic table in step with the client's (clients
//! add `:authority` to it once and then refer to it by index), so the replacement has the same
//! size and representation as the original (the `hpack` submodule explains why that suffices). An empty
//! `:authority` has no same-size replacement: a field that does not add it to the table is
//! dropped (a request without `:authority` is valid), and references to one that was added
//! are dropped; only the one request that adds it fails, as without this module. No known
//! client sends one.
//!
//! Bytes from local callers are untrusted. The filter holds at most one header block of the
//! size h2 takes (a HEADERS frame and the CONTINUATION frames h2 allows, each within h2's frame
//! size: 112 KiB) and costs one pass over each byte, whatever the block holds. It enforces h2's
//! limits by getting out of the way: a frame over h2's SETTINGS_MAX_FRAME_SIZE, one CONTINUATION
//! frame more than h2 takes, or a block h2 could not decode is passed on, with all that follows,
//! unchanged, and h2 ends the connection with its own GOAWAY (FRAME_SIZE_ERROR,
//! ENHANCE_YOUR_CALM, PROTOCOL_ERROR or COMPRESSION_ERROR), as it would without this module.
//! Nothing panics on any input.

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

/// Why the filter stopped rewriting a connection and left it to h2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("HTTP/2 that h2 refuses from the client: {0}")]
pub(crate) struct Malformed(&'static str);

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
    /// The client's stream ended; reported once `out` is drained.
    ended: bool,
}

impl<T> AuthorityFix<T> {
    pub fn new(inner: T) -> Self {
        AuthorityFix {
            inner,
            filter: frames::Filter::default(),
            chunk: Vec::new(),
            out: Vec::new(),
            out_at: 0,
            ended: false,
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
            if this.ended || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.filter.passes_through() {
                // Nothing is held and nothing more is read: straight into the reader's buffer.
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            this.chunk.clear();
            this.chunk.reserve(READ_CHUNK);
            let mut read = ReadBuf::uninit(&mut this.chunk.spare_capacity_mut()[..READ_CHUNK]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let input = read.filled();
            if input.is_empty() {
                this.filter.finish(&mut this.out);
                this.ended = true;
                continue;
            }
            let (rewritten, aside) = (this.filter.rewritten, this.filter.aside.is_some());
            this.filter.process(input, &mut this.out);
            if let (false, Some(why)) = (aside, this.filter.aside) {
                tracing::debug!(
                    "passing a Unix socket connection on unfiltered, for h2 to end: {why}"
                );
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
