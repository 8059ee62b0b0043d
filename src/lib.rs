//! tokend keeps OAuth 2.0 access tokens fresh for every client configured on a host and hands
//! them to local processes over gRPC.
//!
//! # Layout
//!
//! Data flows one way: config -> refresh (supervisor, one actor per client) -> store -> serve.
//! The crate's surface is [`run`], [`Config`], [`proto`], the command line's [`cli`] and
//! [`logging`], and `testing` (what tests reach inside); every other module is private.
//!
//! - `config`: the TOML file (with `TOKEND_*` environment overrides), parsed and validated once
//!   into the components' own settings types.
//! - `daemon`: wires the parts together and runs until shutdown (with systemd's notifications);
//!   `daemon::plan` is the one place that turns the config into each component's settings.
//! - `refresh`: the supervisor, the per-client actors, the timer wheel, refresh schedules and
//!   policy, and the running client set.
//! - `oauth`: the token endpoint client: settings, client authentication, requests, reply
//!   parsing, in-flight markers, each endpoint's request budget.
//! - `store`: each client's slot, whose published view the gRPC handlers read without asking
//!   an actor.
//! - `access`: who may read which client's token (peer credentials, allow-lists, `[[allow]]`
//!   entries).
//! - `attest`: what a caller is beyond its uid, read once per connection: its process (by
//!   pidfd), its cgroup path (systemd unit, Kubernetes pod and container), its pod at the
//!   kubelet, its executable's digest.
//! - `serve`: the gRPC service, call and connection limits, listeners, the metrics listeners,
//!   the HTTP/2 `:authority` fix.
//! - `cli`: `get`, `status`, `authorize`, `jwk` and `demo`.
//! - `host`: users and groups, atomic files, file modes, offloaded file work, the wall clock.
//! - `proxy`: `[proxy.NAME]` routes: HTTP requests sent on to an API with a client's token,
//!   for callers that do not speak gRPC.
//! - `sink`: per-client files rewritten atomically with each new token.
//! - `secret`: reading secret files, redacted token types, durable writes.
//! - `metrics`: the Prometheus registry, fed plain labels.
//! - `logging`: text or JSON log output.
//! - `client_name`, `durations`, `panics`: what a client name may be, durations in settings,
//!   what a panic said.

mod access;
mod attest;
pub mod cli;
mod client_name;
pub mod config;
mod daemon;
mod durations;
mod host;
pub mod logging;
mod metrics;
mod oauth;
mod panics;
mod proxy;
mod published;
mod refresh;
mod secret;
mod serve;
mod sink;
mod store;
#[cfg(test)]
mod test_tools;
#[doc(hidden)]
pub mod testing;

/// The daemon's side of `TokenService`, generated with [`serve::wire::TokenMessage`] for its
/// `Token` answers and [`proto`]'s types for every other message (build.rs).
mod proto_server {
    include!(concat!(env!("OUT_DIR"), "/server/tokend.v1.rs"));
}

/// Code generated from `proto/tokend/v1/tokend.proto`.
pub mod proto {
    tonic::include_proto!("tokend.v1");

    /// The encoded descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tokend_descriptor");

    impl ClientState {
        /// The state's one spelling in metrics, logs and `tokend status`: its proto name
        /// lower-cased, without the `CLIENT_STATE_` prefix.
        pub fn name(self) -> &'static str {
            match self {
                ClientState::Unspecified => "unspecified",
                ClientState::Starting => "starting",
                ClientState::Fresh => "fresh",
                ClientState::Refreshing => "refreshing",
                ClientState::BackingOff => "backing_off",
                ClientState::NeedsOperator => "needs_operator",
                ClientState::Failed => "failed",
                ClientState::ReauthorizationRequired => "reauthorization_required",
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::ClientState;

        #[test]
        fn state_names_are_the_proto_names() {
            for n in 0.. {
                let Ok(state) = ClientState::try_from(n) else {
                    break;
                };
                let proto = state.as_str_name().strip_prefix("CLIENT_STATE_").unwrap();
                assert_eq!(state.name(), proto.to_lowercase());
            }
        }
    }
}

pub use config::Config;
pub use daemon::run;
