//! What the tests, the benchmark and the fuzz targets reach inside the crate: the parts of the
//! daemon they run in-process (on tokio's paused clock, with a scripted token source), and the
//! parsers they feed hostile input. Not an API: it changes with the code it names.

pub use crate::daemon::plan::{call_limits, client_specs, reconcile};
pub use crate::oauth::budget::EndpointLimiters;
pub use crate::oauth::redact::Redactor;
pub use crate::oauth::reply::{self, LifetimeSource, OAuthError};
pub use crate::oauth::{
    FetchError, Grant, TokenReply, TokenSource, TokenType, basic_authorization, http_client,
    parse_retry_after,
};
/// The daemon's server trait, whose `Token` answers are [`TokenMessage`]s (the clients' is
/// `proto::token_service_server::TokenService`).
pub use crate::proto_server::token_service_server::TokenService;
pub use crate::refresh::RefreshPolicy;
pub use crate::refresh::clients::{ClientSpec, Clients};
pub use crate::refresh::supervisor::{
    MAX_RESTARTS, RESTART_WINDOW, SupervisorMsg, starts_per_endpoint,
};
pub use crate::secret::AccessToken;
pub use crate::serve::h2_authority::AuthorityFix;
pub use crate::serve::metrics_http::exposition as metrics_exposition;
pub use crate::serve::service::TokenServiceImpl;
pub use crate::serve::wire::TokenMessage;
pub use crate::store::SlotSettings;
