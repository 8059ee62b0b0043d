//! tokend keeps OAuth 2.0 access tokens fresh for every client configured on a host and hands
//! them to local processes over gRPC.
//!
//! # Layout
//!
//! Data flows one way: config -> supervisor -> one actor per client -> token store -> gRPC.
//!
//! - [`config`]: the TOML file (with `TOKEND_*` environment overrides), parsed and validated once.
//! - [`supervisor`]: runs one token actor per client while it has work, lets it sleep while it
//!   has none, and restarts failed ones within a budget.
//! - [`actor`]: a client's token actor; fetches, schedules refreshes, backs off, publishes.
//! - [`alarm`]: the one timer wheel that wakes sleeping clients when their next attempt is due.
//! - [`schedule`]: pure functions for refresh times and backoff delays.
//! - [`oauth`]: the token endpoint client (grant requests, client auth, reply parsing).
//! - [`limit`]: the request budget each token endpoint's clients share.
//! - [`store`]: per-client `watch` channels the gRPC handlers read without asking the actor.
//! - [`access`]: who may read which client's token (peer credentials, allow-lists).
//! - [`service`]: the `tokend.v1.TokenService` gRPC implementation and status mapping.
//! - [`call_limits`]: caps on the streams and waiting calls callers hold, in all and per uid.
//! - [`sink`]: per-client files rewritten atomically with each new token.
//! - [`listen`]: the Unix socket and loopback TCP listeners.
//! - [`connections`]: what callers can hold open: connection caps (total and per uid), handshake
//!   and idle timeouts, descriptors kept for tokend's own work, HTTP/2 limits.
//! - [`authority`]: makes the `:authority` stock gRPC clients send over a Unix socket (the socket
//!   path) acceptable to tonic's HTTP/2 layer.
//! - [`clients`]: the running set of clients; applies a reloaded config as a difference.
//! - [`systemd`]: readiness, status, watchdog, reload and stop notifications; socket activation.
//! - [`daemon`]: wires the above together and runs until shutdown.
//! - [`authorize`]: `tokend authorize`, the one-time authorization-code flow of refresh-token
//!   clients.
//! - [`ctl`]: the `get` and `status` subcommands, gRPC clients of a running daemon.
//! - [`demo`]: a built-in token endpoint for `tokend demo`, the newcomer's first run.
//! - [`metrics`]: Prometheus metrics on an optional loopback listener.
//! - [`logging`]: text or JSON log output.
//! - [`secret`]: reading secret files, redacted token types, durable writes.
//! - [`atomic_file`]: files written so that whoever shares their directory cannot turn the
//!   write against the host (no symlink or name they plant is followed).
//! - [`offload`]: blocking file work on the blocking pool, with a timeout.

pub mod access;
pub mod actor;
pub mod alarm;
pub mod atomic_file;
pub mod authority;
pub mod authorize;
pub mod call_limits;
pub mod clients;
pub mod config;
pub mod connections;
pub mod ctl;
pub mod daemon;
pub mod demo;
pub mod limit;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod oauth;
pub mod offload;
pub mod schedule;
pub mod secret;
pub mod service;
pub mod sink;
pub mod store;
pub mod supervisor;
pub mod systemd;

/// Code generated from `proto/tokend/v1/tokend.proto`.
pub mod proto {
    tonic::include_proto!("tokend.v1");

    /// The encoded descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tokend_descriptor");
}

pub use config::Config;
pub use daemon::run;
