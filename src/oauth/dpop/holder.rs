//! What a DPoP client holds between requests: its key, read (or made) by the first request
//! that needs it, and the nonces servers asked for.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{DpopError, DpopKey};
use crate::host::offload;

/// Servers whose nonce is remembered: a client talks to its token endpoint and, through
/// the proxy, to a few resource servers; the oldest is forgotten first.
const MAX_SERVERS: usize = 16;

/// How long reading or making the key may take: a key file on a hung mount must not hold a
/// blocking thread (nor the request) for ever.
const KEY_TIMEOUT: Duration = Duration::from_secs(10);

/// One client's DPoP key and the nonces its token endpoint gave it.
pub struct DpopHolder {
    path: PathBuf,
    key: tokio::sync::OnceCell<Arc<DpopKey>>,
    pub nonces: Nonces,
}

/// The nonce each server (an origin: scheme, host, port) last asked proofs to carry.
#[derive(Debug, Default)]
pub struct Nonces(Mutex<Vec<(String, String)>>);

impl std::fmt::Debug for DpopHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopHolder")
            .field("path", &self.path)
            .field("key", &self.key.get())
            .finish_non_exhaustive()
    }
}

impl DpopHolder {
    pub fn new(path: &Path) -> Self {
        DpopHolder {
            path: path.to_path_buf(),
            key: tokio::sync::OnceCell::new(),
            nonces: Nonces::default(),
        }
    }

    /// The key, read or made once ([`DpopKey::load_or_create`]) on the blocking pool. A failure
    /// is kept for no one: the next request tries again, so an operator's fix takes effect.
    pub async fn key(&self) -> Result<Arc<DpopKey>, DpopError> {
        self.key
            .get_or_try_init(|| async {
                let path = self.path.clone();
                let key = offload::run(&self.path, KEY_TIMEOUT, move || {
                    DpopKey::load_or_create(&path)
                })
                .await
                .map_err(|stalled| DpopError::Stalled {
                    path: self.path.clone(),
                    stalled,
                })??;
                tracing::info!(path = %self.path.display(), jkt = %key.thumbprint(), "DPoP key ready");
                Ok(Arc::new(key))
            })
            .await
            .cloned()
    }
}

impl Nonces {
    /// The nonce `server` last asked for, if any.
    pub fn get(&self, server: &str) -> Option<String> {
        let nonces = self.0.lock().unwrap_or_else(|e| e.into_inner());
        nonces
            .iter()
            .find(|(s, _)| s == server)
            .map(|(_, n)| n.clone())
    }

    /// Remembers the nonce `server` sent (checked by [`super::nonce_from_headers`]).
    pub fn remember(&self, server: &str, nonce: String) {
        let mut nonces = self.0.lock().unwrap_or_else(|e| e.into_inner());
        nonces.retain(|(s, _)| s != server);
        if nonces.len() == MAX_SERVERS {
            nonces.remove(0);
        }
        nonces.push((server.to_string(), nonce));
    }
}

/// The origin of `uri` as nonces are kept per server: its scheme, host and port.
pub fn origin(uri: &str) -> String {
    url::Url::parse(uri)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_kept_per_server_and_bounded() {
        let nonces = Nonces::default();
        let a = origin("https://idp.example.com/token?x=1");
        assert_eq!(a, "https://idp.example.com");
        assert_eq!(origin("http://127.0.0.1:80/a"), "http://127.0.0.1");
        nonces.remember(&a, "n1".into());
        nonces.remember(&a, "n2".into());
        assert_eq!(nonces.get(&a).as_deref(), Some("n2"));
        for i in 0..MAX_SERVERS {
            nonces.remember(&format!("https://rs{i}.example"), format!("m{i}"));
        }
        assert_eq!(nonces.get(&a), None, "the oldest server is forgotten");
        assert_eq!(nonces.get("https://rs15.example").as_deref(), Some("m15"));
        assert_eq!(nonces.0.lock().unwrap().len(), MAX_SERVERS);
    }

    #[tokio::test]
    async fn the_key_is_made_once_and_a_failure_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("c.dpop.pem");
        let holder = DpopHolder::new(&path);
        let err = holder.key().await.unwrap_err();
        assert!(err.to_string().contains("sub"), "{err}");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let key = holder.key().await.unwrap();
        assert!(Arc::ptr_eq(&key, &holder.key().await.unwrap()));
        assert_eq!(
            DpopKey::load_or_create(&path).unwrap().thumbprint(),
            key.thumbprint()
        );
    }
}
