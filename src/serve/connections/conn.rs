//! An admitted connection: its slot under the caps, its handshake deadline and idle checks.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo, UdsConnectInfo};
use tracing::debug;

use super::limits::Slot;
use crate::access::Caller;
use crate::attest::process::{PeerProcess, Unattested};

/// The client's connection preface (RFC 9113 3.4), which must be followed by a SETTINGS frame.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;

/// The deadlines of a connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    pub(super) handshake: Duration,
    pub(super) idle: Duration,
}

/// What a counted connection tells each request it carries: the listener's own connect info,
/// the peer process read at accept (which [`caller_of`] makes the request's caller of) and the
/// connection's activity (which [`super::TrackRequests`] counts the request in).
#[derive(Debug, Clone)]
pub struct ConnInfo<I> {
    pub(super) inner: I,
    pub(super) activity: Arc<Activity>,
    pub(super) process: Option<PeerProcess>,
}

/// Who sent `request`, from what its connection learnt at accept: a local process (by its
/// credentials and attested process) on the Unix socket, no identity on loopback TCP, and
/// unknown without a counted connection (a call made in this process).
pub fn caller_of<T>(request: &tonic::Request<T>) -> Caller {
    let extensions = request.extensions();
    if let Some(conn) = extensions.get::<ConnInfo<UdsConnectInfo>>() {
        return match &conn.inner.peer_cred {
            Some(cred) => Caller::Local {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
                process: conn
                    .process
                    .as_ref()
                    .map_or(Err(Unattested::Gone), |p| p.0.clone()),
            },
            None => Caller::Unknown,
        };
    }
    if extensions.get::<ConnInfo<TcpConnectInfo>>().is_some() {
        return Caller::Tcp;
    }
    Caller::Unknown
}

/// How many requests a connection has begun and finished.
#[derive(Debug, Default)]
pub(super) struct Activity {
    begun: AtomicU64,
    ended: AtomicU64,
}

impl Activity {
    pub(super) fn begin(self: Arc<Self>) -> OpenRequest {
        self.begun.fetch_add(1, Ordering::Relaxed);
        OpenRequest(self)
    }

    /// Whether no request was open at any time since the previous check, which saw `seen`
    /// requests ended (updated here): none is open now and none ended since (so none was open
    /// then, nor began and ended in between). Counting instead of timestamping keeps the clock
    /// off the path of every request; the price is that a connection is closed between one and
    /// two idle timeouts after its last request.
    fn idle_since(&self, seen: &mut u64) -> bool {
        // `ended` first: a request that begins or ends between the two loads shows as open.
        let ended = self.ended.load(Ordering::Acquire);
        let begun = self.begun.load(Ordering::Relaxed);
        let idle = begun == ended && ended == *seen;
        *seen = ended;
        idle
    }
}

/// A request counted as open until this is dropped (with its response body).
#[derive(Debug)]
pub(super) struct OpenRequest(Arc<Activity>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, Ordering::Release);
    }
}

/// An admitted connection: the stream, its slot under the caps, and its deadlines.
pub struct Conn<T> {
    io: T,
    _slot: Slot,
    activity: Arc<Activity>,
    /// The calling process, as read at accept.
    process: Option<PeerProcess>,
    /// The handshake deadline while `handshake` is `Some`, then the next idle check.
    timer: Pin<Box<Sleep>>,
    /// The waker `timer` was last polled with, cleared when it is reset: while the task reading
    /// is the same, the timer will wake it, and checking `is_elapsed` costs far less than
    /// registering again on every read that finds nothing (several hundred instructions of
    /// each GetToken call).
    timer_waker: Option<Waker>,
    handshake: Option<Handshake>,
    idle_timeout: Duration,
    /// Requests ended as of the last idle check.
    seen: u64,
    /// Ended for being idle: every further read reports end of stream.
    ended: bool,
}

impl<T> Conn<T> {
    pub(super) fn new(io: T, slot: Slot, timeouts: Timeouts, process: Option<PeerProcess>) -> Self {
        Conn {
            io,
            _slot: slot,
            activity: Arc::default(),
            process,
            timer: Box::pin(tokio::time::sleep(timeouts.handshake)),
            timer_waker: None,
            handshake: Some(Handshake::default()),
            idle_timeout: timeouts.idle,
            seen: 0,
            ended: false,
        }
    }

    /// Called while the caller has nothing to read: ends the connection if its deadline passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let registered = self
                .timer_waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()));
            if registered && !self.timer.is_elapsed() {
                return Poll::Pending;
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                self.timer_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if self.handshake.is_some() {
                debug!("closing a connection that sent no HTTP/2 preface and SETTINGS in time");
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface and SETTINGS within server.handshake_timeout",
                )));
            }
            if self.activity.idle_since(&mut self.seen) {
                debug!("closing a connection idle for server.idle_timeout");
                self.ended = true;
                return Poll::Ready(Ok(()));
            }
            self.reset_timer();
        }
    }

    /// Sets the next idle check one idle timeout from now.
    fn reset_timer(&mut self) {
        let next = Instant::now() + self.idle_timeout;
        self.timer.as_mut().reset(next);
        self.timer_waker = None;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Conn<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => this.poll_deadline(cx),
            Poll::Ready(Ok(())) => {
                if let Some(handshake) = &mut this.handshake
                    && handshake.read(&buf.filled()[before..])
                {
                    this.handshake = None;
                    this.reset_timer();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Conn<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for Conn<T> {
    type ConnectInfo = ConnInfo<T::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnInfo {
            inner: self.io.connect_info(),
            activity: self.activity.clone(),
            process: self.process.clone(),
        }
    }
}

/// How far the caller has got through the preface and the frame header of its first frame
/// (SETTINGS; h2 rejects anything else). Only the length is read: h2 checks the rest.
#[derive(Debug, Default)]
struct Handshake {
    seen: usize,
    header: [u8; FRAME_HEADER_LEN],
}

impl Handshake {
    /// Takes the next bytes the caller sent; true once the first frame is complete.
    fn read(&mut self, bytes: &[u8]) -> bool {
        let header_end = PREFACE_LEN + FRAME_HEADER_LEN;
        for (i, &b) in bytes.iter().enumerate() {
            let at = self.seen + i;
            if at >= header_end {
                break;
            }
            if at >= PREFACE_LEN {
                self.header[at - PREFACE_LEN] = b;
            }
        }
        self.seen = self.seen.saturating_add(bytes.len());
        self.seen >= header_end && self.seen >= header_end + self.frame_len()
    }

    fn frame_len(&self) -> usize {
        usize::from(self.header[0]) << 16
            | usize::from(self.header[1]) << 8
            | usize::from(self.header[2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::connections::limits::{Limits, Peer};

    fn limits(max_total: usize, max_per_peer: usize) -> Arc<Limits> {
        Arc::new(Limits::new(max_total, max_per_peer))
    }

    #[test]
    fn handshake_completes_with_the_first_frame() {
        let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // SETTINGS with two settings (12 bytes).
        preface.extend_from_slice(&[0, 0, 12, 4, 0, 0, 0, 0, 0]);
        preface.extend_from_slice(&[0; 12]);
        let mut whole = Handshake::default();
        assert!(whole.read(&preface));
        // Byte by byte, it completes exactly at the last byte of the frame.
        let mut split = Handshake::default();
        for (i, b) in preface.iter().enumerate() {
            assert_eq!(split.read(&[*b]), i == preface.len() - 1, "byte {i}");
        }
        // An empty SETTINGS completes with its header.
        let mut empty = Handshake::default();
        assert!(!empty.read(&preface[..PREFACE_LEN]));
        assert!(empty.read(&[0, 0, 0, 4, 0, 0, 0, 0, 0]));
        // A frame header claiming 16 MiB: not complete until that much arrived.
        let mut big = Handshake::default();
        assert!(!big.read(&preface[..PREFACE_LEN]));
        assert!(!big.read(&[0xff, 0xff, 0xff, 4, 0, 0, 0, 0, 0]));
        assert!(!big.read(&vec![0; 1 << 20]));
    }

    #[test]
    fn idle_means_no_request_since_the_last_check() {
        let activity = Arc::new(Activity::default());
        let mut seen = 0;
        assert!(activity.idle_since(&mut seen));
        let open = activity.clone().begin();
        assert!(!activity.idle_since(&mut seen), "a request is open");
        assert!(!activity.idle_since(&mut seen), "still open");
        drop(open);
        assert!(
            !activity.idle_since(&mut seen),
            "a request ended since the last check"
        );
        assert!(activity.idle_since(&mut seen));
        drop(activity.clone().begin());
        assert!(
            !activity.idle_since(&mut seen),
            "one began and ended in between"
        );
        assert!(activity.idle_since(&mut seen));
    }

    const TIMEOUTS: Timeouts = Timeouts {
        handshake: Duration::from_secs(5),
        idle: Duration::from_secs(60),
    };

    fn conn() -> (Conn<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (server, client) = tokio::io::duplex(1024);
        let slot = limits(1, 1).admit(Peer::Tcp).unwrap();
        (Conn::new(server, slot, TIMEOUTS, None), client)
    }

    fn handshake() -> Vec<u8> {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        bytes
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_caller_is_cut_off_at_the_handshake_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut conn, mut client) = conn();
        let start = Instant::now();
        // Most of the preface is not enough.
        client.write_all(&handshake()[..30]).await.unwrap();
        let mut buf = [0; 64];
        assert_eq!(conn.read(&mut buf).await.unwrap(), 30);
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), TIMEOUTS.handshake);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_ends_and_a_busy_one_does_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut conn, mut client) = conn();
        client.write_all(&handshake()).await.unwrap();
        let mut buf = [0; 64];
        assert_eq!(conn.read(&mut buf).await.unwrap(), handshake().len());
        let start = Instant::now();

        // A request open (a WatchToken stream) across several idle timeouts.
        let activity = conn.activity.clone();
        let open = activity.clone().begin();
        let read = tokio::time::timeout(TIMEOUTS.idle * 5, conn.read(&mut buf)).await;
        assert!(read.is_err(), "closed while a request was open");
        // The request ends; the connection ends one to two idle timeouts later, as end of stream.
        drop(open);
        let ended = Instant::now();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 0);
        let idle = ended.elapsed();
        assert!(
            idle >= TIMEOUTS.idle && idle <= TIMEOUTS.idle * 2,
            "closed {idle:?} after the last request"
        );
        assert_eq!(conn.read(&mut buf).await.unwrap(), 0, "stays ended");
        assert!(start.elapsed() >= TIMEOUTS.idle * 6);
    }
}
