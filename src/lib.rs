//! tokend keeps OAuth 2.0 access tokens fresh for every client configured on a host and hands
//! them to local processes over gRPC.
//!
//! # Layout
//!
//! Data flows one way: config -> refresh (supervisor, one actor per client) -> store -> serve.
//!
//! - [`config`]: the TOML file (with `TOKEND_*` environment overrides), parsed and validated once.
//! - [`refresh`]: the supervisor, the per-client actors, the timer wheel, refresh schedules, and
//!   the running client set.
//! - [`oauth`]: the token endpoint client: grant requests, client authentication, reply
//!   parsing, in-flight markers, each endpoint's request budget.
//! - [`store`]: per-client `watch` channels the gRPC handlers read without asking an actor.
//! - [`access`]: who may read which client's token (peer credentials, allow-lists).
//! - [`serve`]: the gRPC service, call and connection limits, listeners, the HTTP/2
//!   `:authority` fix.
//! - [`cli`]: `get`, `status`, `authorize` and `demo`.
//! - [`daemon`]: wires the above together and runs until shutdown.
//! - [`systemd`]: readiness, status, watchdog, reload and stop notifications; socket activation.
//! - [`sink`]: per-client files rewritten atomically with each new token.
//! - [`secret`]: reading secret files, redacted token types, durable writes.
//! - `accounts`: user and group names (or numbers) to ids.
//! - [`atomic_file`]: files written so that whoever shares their directory cannot turn the
//!   write against the host (no symlink or name they plant is followed).
//! - `file_mode`: octal file modes in settings.
//! - [`offload`]: blocking file work on the blocking pool, with a timeout.
//! - [`metrics`]: Prometheus metrics on an optional listener.
//! - `unix_time`: wall-clock times as Unix time.
//! - [`logging`]: text or JSON log output.

pub mod access;
pub mod cli;
mod client_name;
pub mod config;
pub mod daemon;
mod durations;
pub mod host;
pub mod logging;
pub mod metrics;
pub mod oauth;
mod panics;
pub mod refresh;
pub mod secret;
pub mod serve;
pub mod sink;
pub mod store;

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
