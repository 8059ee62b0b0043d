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
//! counted by [`TrackRequests`], a tower layer that finds the connection's counters in the
//! request's connect info ([`ConnInfo`]); a response (a WatchToken stream included) counts
//! until its body is done.
//!
//! `limits` counts connections, `accept` is the accept loop, `conn` the admitted connection,
//! `requests` the layer.

mod accept;
mod conn;
mod limits;
mod requests;

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

pub use accept::{Incoming, Listen};
pub use conn::caller_of;
pub use limits::{Limits, Peer};
pub use requests::TrackRequests;

use conn::Timeouts;

/// The largest request message tokend decodes. Its biggest legitimate request is a
/// RefreshToken carrying the access token a resource server rejected: JWTs with many claims
/// reach several KiB, and a token much over 8-16 KiB could not be sent in the `Authorization`
/// header most HTTP servers accept (nginx and Apache refuse header lines over 8 KiB by
/// default). tonic's default, 4 MiB, would let every open stream make tokend buffer that much.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// hyper's own limit on the streams one connection may make tokend reset for protocol errors
/// (the "MadeYouReset" pattern); tonic leaves it unset, which hyper reads as "no limit".
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Descriptors kept out of the connection cap for everything else: listeners, the runtime's
/// own, logs, token requests (each a connection and a DNS lookup, `endpoint_concurrency` per
/// endpoint), secret and refresh-token files, sinks, the metrics listener. A quarter of the
/// limit, and never fewer than this.
const MIN_RESERVED_FDS: u64 = 128;

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

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_connections: 1024,
            max_connections_per_uid: 128,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
            max_concurrent_streams: 128,
        }
    }
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
///
/// It sends no keepalive pings, like gRPC servers by default (two hours in gRPC core). Every
/// listener is local: when a caller's process dies the kernel ends its Unix or loopback
/// connection at once, so a ping could only find a process that is stopped or hung, and the
/// streams such a process holds count against its own uid's caps exactly as a live one's do.
/// hyper's ping bookkeeping, which times every frame, cost 5-10% of GetToken throughput.
pub fn server<I>(settings: &Settings) -> tonic::transport::Server<Layers<I>> {
    tonic::transport::Server::builder()
        .max_concurrent_streams(settings.max_concurrent_streams)
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .layer(TrackRequests::new())
}

/// The caps and timeouts every listener's connections share.
#[derive(Debug)]
pub struct Connections {
    limits: Arc<Limits>,
    timeouts: Timeouts,
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
            limits: Arc::new(Limits::new(max_total, settings.max_connections_per_uid)),
            timeouts: Timeouts {
                handshake: settings.handshake_timeout,
                idle: settings.idle_timeout,
            },
        })
    }

    /// The connections `listener` accepts, admitted under the caps.
    pub fn incoming<L: Listen>(&self, listener: L) -> Incoming<L> {
        Incoming::new(listener, self.limits.clone(), self.timeouts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_keeps_descriptors_in_reserve() {
        // systemd's default soft limit, if it cannot be raised: a quarter stays free.
        assert_eq!(effective_max(1024, 1024).unwrap(), 768);
        assert_eq!(effective_max(100, 1024).unwrap(), 100);
        // Small limits keep at least 128.
        assert_eq!(effective_max(1024, 256).unwrap(), 128);
        assert_eq!(effective_max(1024, 16384).unwrap(), 1024);
        assert_eq!(effective_max(1 << 20, u64::MAX).unwrap(), 1 << 20);
        let err = effective_max(1024, 128).unwrap_err();
        assert!(err.to_string().contains("LimitNOFILE"), "{err}");
    }
}
