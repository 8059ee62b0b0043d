//! Serving callers: the gRPC `TokenService`, the caps on what callers hold open, the
//! listeners, and the HTTP/2 `:authority` fix stock clients need over a Unix socket. Who may
//! read which client's token is [`crate::access`].
//!
//! - `service`: the `tokend.v1.TokenService` implementation and its status mapping.
//! - `wire`: its `Token` answers, encoded from the store.
//! - `health`: `grpc.health.v1` statuses for probes, readiness from the required clients.
//! - `call_limits`: caps on watch streams and waiting calls, in all and per uid.
//! - `listen`: the Unix socket and loopback TCP listeners.
//! - `metrics_http`: the listeners metrics are scraped on.
//! - `connections`: connection caps, handshake and idle timeouts, HTTP/2 limits.
//! - `h2_authority`: rewrites the `:authority` stock gRPC clients send over a Unix socket (the
//!   socket path) into one tonic's HTTP/2 layer accepts.

pub mod call_limits;
pub mod connections;
pub mod h2_authority;
pub mod health;
pub mod listen;
pub mod metrics_http;
pub mod service;
pub mod wire;
