//! Bounds what callers can hold open: connections in total and per caller, the time one may take
//! to start HTTP/2 and may then sit idle, the descriptors they may take from the rest of tokend,
//! and the HTTP/2 settings that bound what one connection may ask for.
//!
//! Every listener's connections come through [`Connections::incoming`], tokend's own accept
//! loop: a connection over the cap is accepted and closed at once (so the listen backlog never
//! fills and the caller sees the connection end instead of hanging), and running out of
//! descriptors pauses accepting briefly instead of retrying in a busy loop, as tonic's own loop
//! does. An admitted connection is a [`Conn`] that holds its slot until it is dropped and ends
//! itself when the caller has not sent the HTTP/2 preface and first SETTINGS frame within
//! `handshake_timeout`, or has had no request open for a whole `idle_timeout`. Requests are
//! counted by [`TrackRequests`], a tower layer that finds the connection's [`Activity`] in the
//! request's connect info ([`ConnInfo`]); a response (a WatchToken stream included) counts
//! until its body is done.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;
use tonic::transport::server::Connected;
use tracing::{debug, info, warn};

/// The largest request message tokend decodes. Its biggest legitimate request is a
/// RefreshToken carrying the access token a resource server rejected: JWTs with many claims
/// reach several KiB, and a token much over 8-16 KiB could not be sent in the `Authorization`
/// header most HTTP servers accept (nginx and Apache refuse header lines over 8 KiB by
/// default). tonic's default, 4 MiB, would let every open stream make tokend buffer that much.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// hyper's own limit on the streams one connection may make tokend reset for protocol errors
/// (the "MadeYouReset" pattern); tonic leaves it unset, which hyper reads as "no limit".
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Without traffic for this long, tokend pings the caller...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// ...and closes the connection if the ping is not answered within this: the caller's process
/// is gone or stopped, and a WatchToken stream would otherwise keep its slot for good.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long accepting pauses when the process or the system is out of descriptors: long enough
/// not to spin, short enough that a caller barely notices once descriptors are free again.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Connections accepted (and closed as over the cap) in one poll before yielding, so a flood
/// cannot keep the accept loop's task from letting others run.
const ACCEPT_BATCH: usize = 64;

/// Descriptors kept out of the connection cap for everything else: listeners, the runtime's
/// own, logs, token requests (each a connection and a DNS lookup, `endpoint_concurrency` per
/// endpoint), secret and refresh-token files, sinks, the metrics listener. A quarter of the
/// limit, and never fewer than this.
const MIN_RESERVED_FDS: u64 = 128;

/// How often refused connections and failing accepts are reported: one line per burst, not one
/// per connection.
const REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// The client's connection preface (RFC 9113 3.4), which must be followed by a SETTINGS frame.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;

/// Limits on connections and on what one connection may ask for (the `[server]` keys of the
/// same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub max_connections: usize,
    pub max_connections_per_uid: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_concurrent_streams: u32,
}

/// Why no connection can be served at all.
#[derive(Debug, thiserror::Error)]
#[error(
    "the open file limit ({fd_limit}) leaves no descriptors for connections after the {reserved} \
     kept for token requests, secret files and sinks; raise it (LimitNOFILE= under systemd)"
)]
pub struct NoRoom {
    fd_limit: u64,
    reserved: u64,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns the soft limit then in effect.
/// systemd starts services with a soft limit of 1024, far below the hard one; tokend uses
/// neither `select` nor anything else that breaks above 1024.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                warn!("cannot raise the open file limit from {soft} to {hard}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            // Linux's own default: the most that can be assumed.
            warn!("cannot read the open file limit: {e}; assuming 1024");
            1024
        }
    }
}

/// The connection cap in effect: the configured one, but never so many that callers could take
/// the descriptors tokend's own work needs.
pub fn effective_max(configured: usize, fd_limit: u64) -> Result<usize, NoRoom> {
    let reserved = (fd_limit / 4).max(MIN_RESERVED_FDS);
    match fd_limit.saturating_sub(reserved) {
        0 => Err(NoRoom { fd_limit, reserved }),
        room => Ok(configured.min(usize::try_from(room).unwrap_or(usize::MAX))),
    }
}

/// The layers of [`server`]: [`TrackRequests`] for connect info `I`.
pub type Layers<I> = tower::layer::util::Stack<TrackRequests<I>, tower::layer::util::Identity>;

/// tonic's server with tokend's HTTP/2 limits, counting each connection's requests.
pub fn server<I>(settings: &Settings) -> tonic::transport::Server<Layers<I>> {
    tonic::transport::Server::builder()
        .max_concurrent_streams(settings.max_concurrent_streams)
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(TrackRequests(PhantomData))
}

/// Whom a connection counts against, besides the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A Unix socket caller, by the uid the kernel reports for it (SO_PEERCRED).
    Uid(u32),
    /// Every TCP caller: they cannot be told apart, so they share one allowance.
    Tcp,
}

/// Which cap a refused connection hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Total,
    Peer,
}

/// Open connections, in total and per peer; shared by every listener.
#[derive(Debug)]
struct Limits {
    max_total: usize,
    max_per_peer: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Only peers with an open connection: the map stays as small as the set of callers.
    per_peer: HashMap<Peer, usize>,
}

impl Limits {
    fn admit(self: &Arc<Self>, peer: Peer) -> Result<Slot, Refused> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.max_total {
            return Err(Refused::Total);
        }
        if counts.per_peer.get(&peer).copied().unwrap_or(0) >= self.max_per_peer {
            return Err(Refused::Peer);
        }
        counts.total += 1;
        *counts.per_peer.entry(peer).or_insert(0) += 1;
        Ok(Slot {
            limits: self.clone(),
            peer,
        })
    }

    fn release(&self, peer: Peer) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                counts.per_peer.remove(&peer);
            }
        }
    }
}

/// One admitted connection's place under the caps; given back when dropped.
#[derive(Debug)]
struct Slot {
    limits: Arc<Limits>,
    peer: Peer,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.release(self.peer);
    }
}

/// The caps and timeouts every listener's connections share.
#[derive(Debug)]
pub struct Connections {
    limits: Arc<Limits>,
    timeouts: Timeouts,
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    handshake: Duration,
    idle: Duration,
}

impl Connections {
    /// Caps connections at `settings.max_connections`, or fewer if `fd_limit` (the process's
    /// open file limit) would not leave tokend enough descriptors of its own.
    pub fn new(settings: &Settings, fd_limit: u64) -> Result<Connections, NoRoom> {
        let max_total = effective_max(settings.max_connections, fd_limit)?;
        info!(
            max_connections = max_total,
            configured = settings.max_connections,
            max_connections_per_uid = settings.max_connections_per_uid,
            open_file_limit = fd_limit,
            "connection limits"
        );
        Ok(Connections {
            limits: Arc::new(Limits {
                max_total,
                max_per_peer: settings.max_connections_per_uid,
                counts: Mutex::default(),
            }),
            timeouts: Timeouts {
                handshake: settings.handshake_timeout,
                idle: settings.idle_timeout,
            },
        })
    }

    /// The connections `listener` accepts, admitted under the caps.
    pub fn incoming<L: Listen>(&self, listener: L) -> Incoming<L> {
        Incoming {
            listener,
            limits: self.limits.clone(),
            timeouts: self.timeouts,
            pause: None,
            out_of_fds_reported: None,
            refusals: Refusals::default(),
        }
    }
}

/// A listener tokend accepts on.
pub trait Listen {
    type Io;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>>;
    /// Whom the connection counts against; `None` if that cannot be told (it is closed).
    fn peer(io: &Self::Io) -> Option<Peer>;
}

impl Listen for UnixListener {
    type Io = UnixStream;

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<UnixStream>> {
        UnixListener::poll_accept(self, cx).map_ok(|(stream, _)| stream)
    }

    fn peer(io: &UnixStream) -> Option<Peer> {
        io.peer_cred().ok().map(|cred| Peer::Uid(cred.uid()))
    }
}

impl Listen for TcpListener {
    type Io = TcpStream;

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<TcpStream>> {
        TcpListener::poll_accept(self, cx).map_ok(|(stream, _)| stream)
    }

    fn peer(_: &TcpStream) -> Option<Peer> {
        Some(Peer::Tcp)
    }
}

/// A listener's admitted connections, for `serve_with_incoming_shutdown`. It never yields an
/// error: tonic would only retry at once.
pub struct Incoming<L> {
    listener: L,
    limits: Arc<Limits>,
    timeouts: Timeouts,
    /// Accepting is paused until this fires (out of descriptors).
    pause: Option<Pin<Box<Sleep>>>,
    out_of_fds_reported: Option<Instant>,
    refusals: Refusals,
}

impl<L: Listen + Unpin> Stream for Incoming<L> {
    type Item = io::Result<Conn<L::Io>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(pause) = &mut this.pause {
                ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            for _ in 0..ACCEPT_BATCH {
                let io = match ready!(this.listener.poll_accept(cx)) {
                    Ok(io) => io,
                    Err(e) if out_of_descriptors(&e) => {
                        // With no descriptor free, accept fails even with nobody waiting, so
                        // every free descriptor ends an episode: report by time instead.
                        let now = Instant::now();
                        if this
                            .out_of_fds_reported
                            .is_none_or(|at| now.duration_since(at) >= REPORT_INTERVAL)
                        {
                            warn!(
                                "cannot accept connections: {e}; pausing for {ACCEPT_PAUSE:?} at a time until descriptors are free (reported at most once a minute)"
                            );
                            this.out_of_fds_reported = Some(now);
                        }
                        this.pause = Some(Box::pin(tokio::time::sleep(ACCEPT_PAUSE)));
                        break;
                    }
                    // The caller gave up before the accept (ECONNABORTED and the like).
                    Err(e) => {
                        debug!("accept failed: {e}");
                        continue;
                    }
                };
                let Some(peer) = L::peer(&io) else {
                    debug!("closing a connection whose caller cannot be identified");
                    continue;
                };
                match this.limits.admit(peer) {
                    Ok(slot) => return Poll::Ready(Some(Ok(Conn::new(io, slot, this.timeouts)))),
                    // Dropping `io` closes it at once.
                    Err(refused) => this.refusals.note(peer, refused, &this.limits),
                }
            }
            if this.pause.is_none() {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }
}

fn out_of_descriptors(e: &io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().map(Errno::from_raw).is_some_and(|errno| {
        matches!(
            errno,
            Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM
        )
    })
}

/// Refused connections since the last report.
#[derive(Debug, Default)]
struct Refusals {
    since_report: u64,
    last_report: Option<Instant>,
}

impl Refusals {
    fn note(&mut self, peer: Peer, refused: Refused, limits: &Limits) {
        self.since_report += 1;
        let now = Instant::now();
        if self
            .last_report
            .is_some_and(|at| now.duration_since(at) < REPORT_INTERVAL)
        {
            return;
        }
        let cap = match refused {
            Refused::Total => format!("server.max_connections ({})", limits.max_total),
            Refused::Peer => format!("server.max_connections_per_uid ({})", limits.max_per_peer),
        };
        let from = match peer {
            Peer::Uid(uid) => format!("uid {uid}"),
            Peer::Tcp => "TCP".to_string(),
        };
        warn!(
            refused = self.since_report,
            "closing new connections over {cap}; the latest from {from} (reported at most once a minute)"
        );
        self.since_report = 0;
        self.last_report = Some(now);
    }
}

/// What a counted connection tells each request it carries: the listener's own connect info
/// (which [`TrackRequests`] puts back where handlers look for it) and the connection's activity.
#[derive(Debug, Clone)]
pub struct ConnInfo<I> {
    inner: I,
    activity: Arc<Activity>,
}

/// How many requests a connection has begun and finished.
#[derive(Debug, Default)]
pub struct Activity {
    begun: AtomicU64,
    ended: AtomicU64,
}

impl Activity {
    fn begin(self: Arc<Self>) -> OpenRequest {
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
pub struct OpenRequest(Arc<Activity>);

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
    /// The handshake deadline while `handshake` is `Some`, then the next idle check.
    timer: Pin<Box<Sleep>>,
    handshake: Option<Handshake>,
    idle_timeout: Duration,
    /// Requests ended as of the last idle check.
    seen: u64,
    /// Ended for being idle: every further read reports end of stream.
    ended: bool,
}

impl<T> Conn<T> {
    fn new(io: T, slot: Slot, timeouts: Timeouts) -> Self {
        Conn {
            io,
            _slot: slot,
            activity: Arc::default(),
            timer: Box::pin(tokio::time::sleep(timeouts.handshake)),
            handshake: Some(Handshake::default()),
            idle_timeout: timeouts.idle,
            seen: 0,
            ended: false,
        }
    }

    /// Called while the caller has nothing to read: ends the connection if its deadline passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.timer.as_mut().poll(cx).is_ready() {
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
            let next = Instant::now() + self.idle_timeout;
            self.timer.as_mut().reset(next);
        }
        Poll::Pending
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
                    let next = Instant::now() + this.idle_timeout;
                    this.timer.as_mut().reset(next);
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

/// Counts each connection's open requests (see [`Activity`]) and gives handlers the listener's
/// connect info `I` back in place of [`ConnInfo<I>`].
pub struct TrackRequests<I>(PhantomData<fn() -> I>);

impl<I> Clone for TrackRequests<I> {
    fn clone(&self) -> Self {
        TrackRequests(PhantomData)
    }
}

impl<S, I> tower::Layer<S> for TrackRequests<I> {
    type Service = Tracked<S, I>;

    fn layer(&self, inner: S) -> Tracked<S, I> {
        Tracked {
            inner,
            _info: PhantomData,
        }
    }
}

/// The service [`TrackRequests`] makes.
pub struct Tracked<S, I> {
    inner: S,
    _info: PhantomData<fn() -> I>,
}

impl<S: Clone, I> Clone for Tracked<S, I> {
    fn clone(&self) -> Self {
        Tracked {
            inner: self.inner.clone(),
            _info: PhantomData,
        }
    }
}

impl<S, I, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Tracked<S, I>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    I: Clone + Send + Sync + 'static,
{
    type Response = http::Response<InFlight<ResBody>>;
    type Error = S::Error;
    type Future = Tracking<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let open = request
            .extensions_mut()
            .remove::<ConnInfo<I>>()
            .map(|info| {
                request.extensions_mut().insert(info.inner);
                info.activity.begin()
            });
        Tracking {
            response: self.inner.call(request),
            open,
        }
    }
}

pin_project_lite::pin_project! {
    /// A response on its way, its request counted as open.
    pub struct Tracking<F> {
        #[pin]
        response: F,
        open: Option<OpenRequest>,
    }
}

impl<F, B, E> Future for Tracking<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<InFlight<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.response.poll(cx));
        let open = this.open.take();
        Poll::Ready(response.map(|r| r.map(|body| InFlight { body, _open: open })))
    }
}

pin_project_lite::pin_project! {
    /// A response body whose request counts as open until the body is dropped.
    pub struct InFlight<B> {
        #[pin]
        body: B,
        _open: Option<OpenRequest>,
    }
}

impl<B: http_body::Body> http_body::Body for InFlight<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests;
