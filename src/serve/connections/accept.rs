//! tokend's own accept loop: admits connections under the caps, closes the others at once, and
//! pauses instead of spinning when descriptors run out.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;
use tracing::{debug, warn};

use super::conn::{Conn, Timeouts};
use super::limits::{Limits, Peer, Refused};
use crate::attest::process::{PeerProcess, Process, boot_time_now};

/// How long accepting pauses when the process or the system is out of descriptors: long enough
/// not to spin, short enough that a caller barely notices once descriptors are free again.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Connections accepted (and closed as over the cap) in one poll before yielding, so a flood
/// cannot keep the accept loop's task from letting others run.
const ACCEPT_BATCH: usize = 64;

/// How often refused connections and failing accepts are reported: one line per burst, not one
/// per connection.
const REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// A listener tokend accepts on.
pub trait Listen {
    type Io;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>>;
    /// Whom the connection counts against; `None` if that cannot be told (it is closed).
    fn peer(io: &Self::Io) -> Option<Peer>;
    /// The calling process, read now that the connection is accepted (local callers only).
    fn process(io: &Self::Io) -> Option<PeerProcess>;
}

impl Listen for UnixListener {
    type Io = UnixStream;

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<UnixStream>> {
        UnixListener::poll_accept(self, cx).map_ok(|(stream, _)| stream)
    }

    fn peer(io: &UnixStream) -> Option<Peer> {
        io.peer_cred().ok().map(|cred| Peer::Uid(cred.uid()))
    }

    fn process(io: &UnixStream) -> Option<PeerProcess> {
        let process = Process::of_peer(io, boot_time_now()).map(Arc::new);
        if let Err(why) = &process {
            debug!("a caller without attributes: {why}");
        }
        Some(PeerProcess(process))
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

    fn process(_: &TcpStream) -> Option<PeerProcess> {
        None
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

impl<L> Incoming<L> {
    pub(super) fn new(listener: L, limits: Arc<Limits>, timeouts: Timeouts) -> Self {
        Incoming {
            listener,
            limits,
            timeouts,
            pause: None,
            out_of_fds_reported: None,
            refusals: Refusals::default(),
        }
    }
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
                    Ok(slot) => {
                        // Read at once: the sooner, the less time the caller has to exec
                        // another program under the same pid.
                        let process = L::process(&io);
                        return Poll::Ready(Some(Ok(Conn::new(io, slot, this.timeouts, process))));
                    }
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
