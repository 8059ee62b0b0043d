//! Private key files, read as secret files are (permissions, no symlink or FIFO tricks, a size
//! cap, off the async workers) and parsed once per version of the file: a key replaced on disk
//! is used from the next request on, without a restart or reload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::key::{ClientKey, KeyError};
use crate::host::file_stamp::FileStamp;
use crate::host::offload;
use crate::secret::{self, ExposeSecret, SecretError};

/// Parsed keys by file, each with the stamp of the version it was parsed from. One entry per
/// key file the config names (clients that share a file share its entry).
static PARSED: Mutex<BTreeMap<PathBuf, Parsed>> = Mutex::new(BTreeMap::new());

struct Parsed {
    stamp: FileStamp,
    key: Arc<ClientKey>,
}

/// Reads and parses the key at `path`, or returns the one parsed from the same version of it.
pub fn load(path: &Path) -> Result<Arc<ClientKey>, KeyError> {
    let before = FileStamp::of(path);
    let cached = PARSED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(path)
        .filter(|p| Some(p.stamp) == before)
        .map(|p| p.key.clone());
    if let Some(key) = cached {
        return Ok(key);
    }
    let pem = secret::read_file(path)?;
    let key = Arc::new(ClientKey::from_pem(path, pem.expose_secret().as_bytes())?);
    // Stamped with what was seen before the read: if the file changed meanwhile, the next
    // call sees a different stamp and reads it again.
    if let Some(before) = before {
        PARSED.lock().unwrap_or_else(|e| e.into_inner()).insert(
            path.to_path_buf(),
            Parsed {
                stamp: before,
                key: key.clone(),
            },
        );
    }
    Ok(key)
}

/// [`load`] for the daemon: on the blocking pool, within [`secret::READ_TIMEOUT`].
pub async fn load_async(path: &Path) -> Result<Arc<ClientKey>, KeyError> {
    let owned = path.to_path_buf();
    offload::run(path, secret::READ_TIMEOUT, move || load(&owned))
        .await
        .map_err(|source| {
            KeyError::Read(SecretError::Stalled {
                path: path.to_path_buf(),
                source,
            })
        })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(path: &Path, pem: &str, mode: u32) {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, pem).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn a_replaced_key_is_parsed_anew_and_an_exposed_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.key");
        write(&path, include_str!("testdata/ec-p256-sec1.pem"), 0o600);
        let first = load(&path).unwrap();
        assert_eq!(first.kind(), "an EC P-256");
        // The same version of the file: the key parsed before.
        assert!(Arc::ptr_eq(&first, &load(&path).unwrap()));
        write(&path, include_str!("testdata/ed25519-pkcs8.pem"), 0o600);
        assert_eq!(load(&path).unwrap().kind(), "an Ed25519");
        // A chmod alone changes no content, and is seen all the same.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.contains("client.key") && err.contains("readable by other users"),
            "{err}"
        );
    }
}
