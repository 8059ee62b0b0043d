//! The subcommands that are not the daemon itself: `get` and `status` (gRPC clients of a running
//! daemon), `authorize` (the one-time authorization-code flow, or with `device` the device
//! authorization grant), `demo` (a built-in token endpoint for a newcomer's first run), `jwk`
//! (the public key to register for `private_key_jwt`); `endpoints` resolves a client's
//! endpoints from its config and its issuer's metadata.

pub mod authorize;
pub mod ctl;
pub mod demo;
pub mod device;
pub mod endpoints;
pub mod jwk;
