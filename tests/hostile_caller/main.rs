//! tokend against hostile local callers: each module is one class of attack, made as the attacker
//! would (another uid via `setpriv`, a raw HTTP/2 client, a planted symlink), and asserts that a
//! well-behaved caller on another connection keeps getting its token within a bound and that the
//! daemon's memory and descriptors stay bounded.

#[path = "../common/mod.rs"]
mod common;
#[path = "../fault/mod.rs"]
mod fault;

mod authority;
mod connections;
mod enumeration;
mod files;
mod names;
mod other_uid;
mod refresh_flood;
mod streams;
