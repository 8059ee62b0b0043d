//! The subcommands that are not the daemon itself: `get` and `status` (gRPC clients of a running
//! daemon), `authorize` (the one-time authorization-code flow), `demo` (a built-in token
//! endpoint for a newcomer's first run), `jwk` (the public key to register for
//! `private_key_jwt`).

pub mod authorize;
pub mod ctl;
pub mod demo;
pub mod jwk;
