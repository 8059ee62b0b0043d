//! SHA-256 of callers' executables, for `executable_sha256` rules: each file version hashed once
//! on the blocking pool, however many connections run it.
//!
//! A caller's executable is hashed from its path, and the file opened is accepted only if it is
//! the very file version the process was found running at accept ([`FileVersion`]: device,
//! inode, size and times, `ctime` included, which no one can set): a file renamed over the path
//! since, or written in place, does not match and gives no digest.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{OnceCell, Semaphore};

use super::process::{Executable, FileVersion};
use crate::host::offload;

/// Executables larger than this are not hashed (their callers match no `executable_sha256`):
/// a local user must not be able to make tokend read gigabytes per connection.
const MAX_EXECUTABLE_BYTES: u64 = 512 * 1024 * 1024;

/// File versions remembered; past this the memory starts over (a host runs far fewer distinct
/// programs that call tokend, and a user making new files only makes tokend hash again).
const MAX_ENTRIES: usize = 1024;

/// Executables hashed at once: the rest wait, so that hashing takes at most this many threads
/// of the blocking pool.
const CONCURRENT_HASHES: usize = 2;

/// One hash may take this long (a 512 MiB file at a slow disk's speed).
const HASH_TIMEOUT: Duration = Duration::from_secs(30);

type Sha256Digest = [u8; 32];

/// The digests of the executables seen, by file version.
pub struct Digests {
    known: Mutex<HashMap<FileVersion, Arc<OnceCell<Option<Sha256Digest>>>>>,
    hashing: Semaphore,
}

impl Default for Digests {
    fn default() -> Self {
        Digests {
            known: Mutex::new(HashMap::new()),
            hashing: Semaphore::new(CONCURRENT_HASHES),
        }
    }
}

impl Digests {
    /// The SHA-256 of `exe`, or `None` if it cannot be told (too large, changed, unreadable).
    pub async fn of(&self, exe: &Executable) -> Option<Sha256Digest> {
        let cell = {
            let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            if known.len() >= MAX_ENTRIES && !known.contains_key(&exe.file) {
                known.clear();
            }
            known.entry(exe.file).or_default().clone()
        };
        *cell
            .get_or_init(|| async {
                let _permit = self.hashing.acquire().await.ok()?;
                let (path, version) = (exe.path.clone(), exe.file);
                offload::run(&exe.path, HASH_TIMEOUT, move || hash(&path, version))
                    .await
                    .ok()
                    .flatten()
            })
            .await
    }
}

/// Hashes the file at `path` if it is still `version`.
fn hash(path: &std::path::Path, version: FileVersion) -> Option<Sha256Digest> {
    let file = File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    if FileVersion::of(&meta) != version || meta.len() > MAX_EXECUTABLE_BYTES {
        return None;
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    let mut reader = file.take(MAX_EXECUTABLE_BYTES);
    loop {
        match reader.read(&mut buf).ok()? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    // Written while we read: the bytes hashed may be of neither version.
    let after = std::fs::metadata(path).ok()?;
    (FileVersion::of(&after) == version).then(|| hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn exe_of(path: &std::path::Path) -> Executable {
        Executable {
            path: path.to_path_buf(),
            file: FileVersion::of(&std::fs::metadata(path).unwrap()),
        }
    }

    #[tokio::test]
    async fn the_digest_is_of_the_version_the_process_ran() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prog");
        std::fs::write(&path, b"abc").unwrap();
        let digests = Digests::default();
        let exe = exe_of(&path);
        let expected: Sha256Digest = Sha256::digest(b"abc").into();
        assert_eq!(digests.of(&exe).await, Some(expected));
        // Another file renamed over the path: not the version the caller was found running.
        let other = dir.path().join("other");
        std::fs::write(&other, b"abd").unwrap();
        std::fs::rename(&other, &path).unwrap();
        let mut fresh = Digests::default();
        assert_eq!(fresh.of(&exe).await, None);
        // Written in place: size and ctime move on.
        let exe = exe_of(&path);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"!")
            .unwrap();
        fresh = Digests::default();
        assert_eq!(fresh.of(&exe).await, None);
        // The first answer is remembered for the version it was asked for.
        assert_eq!(digests.known.lock().unwrap().len(), 1);
    }
}
