//! tokend against a hostile token endpoint: each module is one class of attack, tried over real
//! HTTP on 127.0.0.1 (the fault endpoint, or the real daemon against it), and asserts that the
//! attacked client gets a clear error, nothing is lost or leaked, and other clients are untouched.

#[path = "../common/mod.rs"]
mod common;
#[path = "../fault/mod.rs"]
mod fault;

mod federated;
mod redaction;
mod refresh_tokens;
mod secret_files;
mod strings;
mod supervision;
mod times;
