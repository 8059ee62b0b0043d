//! The pods on this node, from the kubelet: which pod a caller's container belongs to, and that
//! pod's namespace, name, ServiceAccount and labels.
//!
//! The kubelet's `GET /pods` (its authenticated port, 10250) lists every pod of the node, with
//! the IDs of their containers. [`Kubelet`] keeps the last list and answers from it; a pod not
//! in it (a container started since) makes it fetch the list again, at most once per
//! `refresh_interval` and once for all the callers asking at the time. The kubelet's
//! certificate is always verified against `ca_file`; tokend proves itself with the bearer
//! token in `token_file`, read for each request.
//!
//! The kubelet authorizes `GET /pods` as `get` on `nodes/pods` (Kubernetes 1.33 and later, with
//! `KubeletFineGrainedAuthz`) or on `nodes/proxy`; only the first should be granted, since
//! `nodes/proxy` also allows running commands in every container of the node.
//!
//! ```ignore
//! let kubelet = Arc::new(Kubelet::new(&settings)?);
//! if let Some(pod) = kubelet.pod(Some(pod_uid), Some(container_id)).await? {
//!     allow(&pod.namespace, &pod.service_account, &pod.labels);
//! }
//! ```

mod cache;
mod client;
mod pod;
mod settings;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use pod::{ParseError, Pod};
pub use settings::Settings;

use crate::oauth::tls::TlsError;
use crate::secret::SecretError;

/// The largest pod list read: a node's default 110 pods with large specs, managed fields and
/// `last-applied-configuration` annotations come to a few MiB; this leaves room beyond it.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Why the kubelet's pod list could not be had. Messages name files and URLs, never the
/// token or the kubelet's body. Cloned: callers that shared a fetch share its error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KubeletError {
    #[error("kubernetes.{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("kubernetes.ca_file: {0}")]
    Ca(Arc<TlsError>),
    #[error("kubernetes.ca_file: {path}: {reason}")]
    CaUnusable { path: PathBuf, reason: String },
    #[error("the kubelet's bearer token: {0}")]
    Token(Arc<SecretError>),
    #[error(
        "the kubelet's bearer token: {path}: holds characters no bearer token has (spaces, control characters or non-ASCII)"
    )]
    TokenText { path: PathBuf },
    #[error("cannot reach the kubelet at {url}: {reason}{hint}")]
    Connect {
        url: String,
        reason: String,
        hint: String,
    },
    #[error("the kubelet at {url} did not answer within {}", humantime::format_duration(*timeout))]
    Timeout { url: String, timeout: Duration },
    #[error("the kubelet at {url} answered HTTP {status}{}", status_hint(*status))]
    Status { url: String, status: u16 },
    #[error("the kubelet's pod list at {url} is larger than the {limit}-byte limit")]
    TooLarge { url: String, limit: usize },
    #[error("the kubelet's answer at {url} {source}")]
    Parse { url: String, source: ParseError },
    #[error("the kubelet's pod list was not read: the daemon is shutting down")]
    Cancelled,
}

impl KubeletError {
    /// Whether this may pass by itself (the kubelet restarting, a timeout, a file read of the
    /// moment); every other error needs an operator: settings, files, RBAC.
    pub fn is_transient(&self) -> bool {
        match self {
            KubeletError::Token(e) => e.is_transient(),
            KubeletError::Connect { hint, .. } => hint.is_empty(),
            KubeletError::Timeout { .. } | KubeletError::Cancelled => true,
            KubeletError::Status { status, .. } => !matches!(status, 401 | 403 | 404),
            KubeletError::Invalid { .. }
            | KubeletError::Ca(_)
            | KubeletError::CaUnusable { .. }
            | KubeletError::TokenText { .. }
            | KubeletError::TooLarge { .. }
            | KubeletError::Parse { .. } => false,
        }
    }
}

/// What an operator can do about a status.
fn status_hint(status: u16) -> &'static str {
    match status {
        401 => {
            ": the kubelet did not accept tokend's token (the kubelet must authenticate bearer tokens with --authentication-token-webhook, and token_file must hold a current ServiceAccount token)"
        }
        403 => {
            ": tokend's ServiceAccount lacks the RBAC to list the node's pods: grant verb get on resource nodes/pods (Kubernetes 1.33 and later) or, on older clusters, nodes/proxy"
        }
        404 => ": is kubelet_url the kubelet's authenticated port (10250)?",
        _ => "",
    }
}

/// The kubelet client and its cache of the node's pods; share it in an `Arc`.
pub struct Kubelet {
    client: client::Client,
    cache: cache::Cache,
}

/// Which kubelet, for the rules' `Debug`.
impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Kubelet").field(&self.client.url()).finish()
    }
}

impl Kubelet {
    /// Reads `ca_file` and builds the client; nothing is asked of the kubelet yet. Settings are
    /// checked only as far as building needs: [`Settings::validate`] is for the config's load.
    pub fn new(settings: &Settings) -> Result<Kubelet, KubeletError> {
        Ok(Kubelet {
            client: client::Client::new(settings)?,
            cache: cache::Cache::new(settings.refresh_interval),
        })
    }

    /// The pod running `container_id` (a bare 64-hex ID), or else the pod `pod_uid` names (its
    /// UID as the API writes it, or a static pod's UID from its cgroup path). `None` when the
    /// pod list, fetched again if that was allowed, has neither.
    pub async fn pod(
        &self,
        pod_uid: Option<&str>,
        container_id: Option<&str>,
    ) -> Result<Option<Arc<Pod>>, KubeletError> {
        self.cache
            .find(pod_uid, container_id, || self.client.pods())
            .await
    }
}
