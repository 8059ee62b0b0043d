//! Rotated refresh tokens that are not on disk yet.
//!
//! A provider that rotates refresh tokens spends the old one as it issues the new one. When
//! writing the new one fails (disk full, read-only filesystem, EIO), the file still holds the
//! spent token: sending it would be refused (a person must authorize again) or, with reuse
//! detection, revoke the grant. So the new token is kept here until a write succeeds, by
//! refresh token file and for the whole process: it outlives actor restarts and reloads that
//! build a new token source for the client, and every request for that file sends it instead
//! of the file's. Only the end of the process loses it, which is why saving is retried.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::metrics::METRICS;
use crate::secret::{self, ExposeSecret, SecretString};

/// One version of a refresh token file: a rewrite by rename (tokend's, `tokend authorize`'s)
/// changes the inode, an edit in place the size or modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

/// The file at `path` as it is now; `None` if it cannot be looked at.
pub fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
    })
}

#[derive(Clone)]
struct Entry {
    token: SecretString,
    client: String,
    /// The file as it was when the spent token was read from it. Another version there means
    /// someone else wrote it (`tokend authorize`, an operator): a newer grant that wins.
    file: Option<FileStamp>,
    /// Why the last write failed.
    error: String,
    /// A request carrying `token` went out and was not answered (it timed out or was cut
    /// off): the provider may still process it, so it is not sent again before a request
    /// timeout has passed. This is the in-flight marker's job on disk, which may not be
    /// writable now either.
    sent: Option<Instant>,
}

static UNSAVED: LazyLock<Mutex<HashMap<PathBuf, Entry>>> = LazyLock::new(Default::default);

fn entries() -> MutexGuard<'static, HashMap<PathBuf, Entry>> {
    UNSAVED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Saves `token`, the newest refresh token for `path`, or keeps it here when writing fails.
/// `file`: the version of the file the spent token was read from.
pub fn save(path: &Path, client: &str, token: &SecretString, file: Option<FileStamp>) {
    match secret::write_file_durably(path, token.expose_secret()) {
        Ok(()) => {
            if entries().remove(path).is_some() {
                info!(client = %client, path = %path.display(), "refresh token saved");
                METRICS.refresh_token_unsaved(client, false);
            }
        }
        Err(e) => {
            let entry = Entry {
                token: token.clone(),
                client: client.to_string(),
                file: entries().get(path).map_or(file, |old| old.file),
                error: e.to_string(),
                sent: None,
            };
            entries().insert(path.to_path_buf(), entry);
            METRICS.refresh_token_unsaved(client, true);
            error!(
                client = %client,
                "cannot save the rotated refresh token ({e}); keeping it in memory, sending it next and retrying the write: it is lost if tokend stops before a write succeeds"
            );
        }
    }
}

/// The refresh token to send for `path` if the file's is spent: the unsaved one, after another
/// attempt to save it. `None`: the file's is the one to use (nothing was unsaved, the write
/// succeeded now, or someone else has written a newer grant into the file).
pub fn current(path: &Path) -> Option<(SecretString, Option<FileStamp>)> {
    let entry = entries().get(path).cloned()?;
    let client = &entry.client;
    let now_file = stamp(path);
    if now_file.is_some() && now_file != entry.file {
        // Written since the spent token was read: by an earlier write of ours whose last step
        // failed (the file then holds this very token), or by someone else.
        let ours =
            secret::read_file(path).is_ok_and(|t| t.expose_secret() == entry.token.expose_secret());
        if !ours {
            warn!(
                client = %client,
                path = %path.display(),
                "the refresh token file was replaced while tokend held a newer unsaved refresh token; using the file's (a new authorization)"
            );
        }
        forget(path, &entry);
        return None;
    }
    match secret::write_file_durably(path, entry.token.expose_secret()) {
        Ok(()) => {
            info!(client = %client, path = %path.display(), "the unsaved refresh token is saved now");
            forget(path, &entry);
            None
        }
        Err(e) => {
            warn!(client = %client, "still cannot save the rotated refresh token: {e}");
            if let Some(kept) = entries().get_mut(path) {
                kept.error = e.to_string();
            }
            Some((entry.token, entry.file))
        }
    }
}

/// Drops `entry` unless a newer token replaced it meanwhile.
fn forget(path: &Path, entry: &Entry) {
    let mut all = entries();
    if all
        .get(path)
        .is_some_and(|e| e.token.expose_secret() == entry.token.expose_secret())
    {
        all.remove(path);
        METRICS.refresh_token_unsaved(&entry.client, false);
    }
}

/// Whether a refresh token for `path` is held in memory only.
pub fn holds(path: &Path) -> bool {
    entries().contains_key(path)
}

/// For the client's status: what is at risk and why.
pub fn warning(path: &Path) -> Option<String> {
    entries().get(path).map(|e| {
        format!(
            "the newest refresh token is not saved ({}); it is kept in memory and the write is retried, but it is lost if tokend stops first",
            e.error
        )
    })
}

/// A request carrying the unsaved token for `path` is about to be sent.
pub fn sending(path: &Path) {
    if let Some(e) = entries().get_mut(path) {
        e.sent = Some(Instant::now());
    }
}

/// The request sent with the unsaved token was answered.
pub fn answered(path: &Path) {
    if let Some(e) = entries().get_mut(path) {
        e.sent = None;
    }
}

/// How long to wait before the unsaved token may be sent again: the rest of `timeout` since
/// a request with it went unanswered, or zero.
pub fn wait_before_use(path: &Path, timeout: Duration) -> Duration {
    entries()
        .get(path)
        .and_then(|e| e.sent)
        .map_or(Duration::ZERO, |sent| {
            timeout.saturating_sub(sent.elapsed())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_that_cannot_be_written_is_kept_until_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rt");
        std::fs::write(&path, "spent\n").unwrap();
        let file = stamp(&path);
        // A directory where the file's directory should be: no write can succeed, not even
        // root's.
        let blocked = dir.path().join("sub");
        std::fs::write(&blocked, "a file, not a directory").unwrap();
        let unwritable = blocked.join("rt");
        save(
            &unwritable,
            "c",
            &SecretString::from("rt-1"),
            stamp(&unwritable),
        );
        assert!(holds(&unwritable));
        assert!(warning(&unwritable).unwrap().contains("not saved"));
        let (kept, _) = current(&unwritable).unwrap();
        assert_eq!(kept.expose_secret(), "rt-1");
        // Writable again: the next look saves it and lets the file's be used.
        std::fs::remove_file(&blocked).unwrap();
        std::fs::create_dir(&blocked).unwrap();
        assert!(current(&unwritable).is_none());
        assert!(!holds(&unwritable));
        assert_eq!(
            secret::read_file(&unwritable).unwrap().expose_secret(),
            "rt-1"
        );
        // A file replaced by someone else (a new authorization) wins over the unsaved token.
        entries().insert(
            path.clone(),
            Entry {
                token: SecretString::from("rt-old-grant"),
                client: "c".into(),
                file,
                error: "EIO".into(),
                sent: None,
            },
        );
        secret::write_file_durably(&path, "rt-new-grant").unwrap();
        assert!(current(&path).is_none());
        assert!(!holds(&path));
        assert_eq!(
            secret::read_file(&path).unwrap().expose_secret(),
            "rt-new-grant"
        );
    }
}
