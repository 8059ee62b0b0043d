//! The `[kubernetes]` settings: where the kubelet is, how tokend proves itself to it, how the
//! kubelet proves itself to tokend, and how often its pod list may be asked for.

use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde::Deserialize;

/// The shortest `refresh_interval`: each refresh lists every pod on the node, and any caller
/// whose pod is unknown causes one.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// How tokend reaches the kubelet of its node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The kubelet's authenticated HTTPS port; the pod list is `{kubelet_url}/pods`.
    pub kubelet_url: String,
    /// The bearer token sent to the kubelet, read afresh for every request: a projected
    /// ServiceAccount token is rotated by the kubelet.
    pub token_file: PathBuf,
    /// The CAs the kubelet's serving certificate must chain to; always verified.
    pub ca_file: PathBuf,
    /// The name (DNS name or IP address) the kubelet's certificate must be valid for, when it is
    /// not the URL's host: a kubelet's certificate names the node, not 127.0.0.1.
    pub tls_server_name: Option<String>,
    /// A pod not in the cached list makes tokend list the pods again, at most this often.
    #[serde(with = "crate::durations")]
    pub refresh_interval: Duration,
    /// One kubelet request, connect to last byte.
    #[serde(with = "crate::durations")]
    pub timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kubelet_url: "https://127.0.0.1:10250".into(),
            token_file: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
            ca_file: "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt".into(),
            tls_server_name: None,
            refresh_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        }
    }
}

impl Settings {
    /// Rejects what cannot work: the key (within `[kubernetes]`) and the reason.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        pods_url(&self.kubelet_url).map_err(|reason| ("kubelet_url", reason))?;
        if let Some(name) = &self.tls_server_name {
            server_name(name).map_err(|reason| ("tls_server_name", reason))?;
        }
        if self.refresh_interval < MIN_REFRESH_INTERVAL {
            return Err((
                "refresh_interval",
                format!(
                    "must be at least {}: every refresh lists all pods of the node",
                    humantime::format_duration(MIN_REFRESH_INTERVAL)
                ),
            ));
        }
        if self.timeout.is_zero() {
            return Err(("timeout", "must be longer than zero".into()));
        }
        Ok(())
    }
}

/// The kubelet's pod list endpoint, `{kubelet_url}/pods`, for a URL that is https, has a host,
/// and has neither credentials, nor a path other than `/`, nor a query or fragment.
pub(super) fn pods_url(kubelet_url: &str) -> Result<url::Url, String> {
    let url =
        url::Url::parse(kubelet_url).map_err(|e| format!("{kubelet_url:?} is not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err(format!(
            "{kubelet_url:?} is not https: the kubelet's authenticated port (10250) speaks only TLS, and the bearer token must not travel in the clear"
        ));
    }
    if url.host().is_none() {
        return Err(format!("{kubelet_url:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Not echoed: the URL holds a secret.
        return Err(
            "carries credentials; tokend authenticates to the kubelet with token_file".into(),
        );
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{kubelet_url:?} has a path, query or fragment; give only scheme, host and port (tokend asks for /pods)"
        ));
    }
    url.join("/pods")
        .map_err(|e| format!("{kubelet_url:?}: cannot add /pods: {e}"))
}

/// `tls_server_name` as rustls verifies it.
pub(super) fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string())
        .map_err(|_| format!("{name:?} is neither a DNS name nor an IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_in_cluster_files_and_valid() {
        let s: Settings = serde_json::from_str("{}").unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(
            pods_url(&s.kubelet_url).unwrap().as_str(),
            "https://127.0.0.1:10250/pods"
        );
    }

    #[test]
    fn durations_and_names_are_read() {
        let s: Settings = serde_json::from_str(
            r#"{"kubelet_url": "https://10.0.0.7:10250/", "refresh_interval": "30s",
                "timeout": "2s", "tls_server_name": "node-7"}"#,
        )
        .unwrap();
        assert_eq!(s.refresh_interval, Duration::from_secs(30));
        assert_eq!(s.timeout, Duration::from_secs(2));
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(
            pods_url(&s.kubelet_url).unwrap().as_str(),
            "https://10.0.0.7:10250/pods"
        );
        assert!(serde_json::from_str::<Settings>(r#"{"skip_verify": true}"#).is_err());
    }

    #[test]
    fn what_cannot_work_is_refused_with_its_key() {
        let with = |f: fn(&mut Settings)| {
            let mut s = Settings::default();
            f(&mut s);
            s.validate().unwrap_err()
        };
        for url in [
            "http://127.0.0.1:10255",
            "https://:10250",
            "https://127.0.0.1:10250/pods",
            "https://127.0.0.1:10250/?a=b",
            "https://u:p@127.0.0.1:10250",
            "127.0.0.1:10250",
        ] {
            let s = Settings {
                kubelet_url: url.into(),
                ..Settings::default()
            };
            let (key, reason) = s.validate().unwrap_err();
            assert_eq!(key, "kubelet_url", "{url}: {reason}");
            assert!(!reason.contains("u:p"), "{reason}");
        }
        assert_eq!(
            with(|s| s.tls_server_name = Some("not a name".into())).0,
            "tls_server_name"
        );
        assert_eq!(
            with(|s| s.refresh_interval = Duration::from_millis(10)).0,
            "refresh_interval"
        );
        assert_eq!(with(|s| s.timeout = Duration::ZERO).0, "timeout");
    }
}
