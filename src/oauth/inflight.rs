//! A marker beside a refresh token file while a refresh request is in flight.
//!
//! A refresh whose outcome is unknown (the process was killed, or the request timed out after
//! it was sent) may still be processed by the provider, which then rotates the refresh token
//! and, with reuse detection, revokes the whole grant if the old token arrives again while the
//! first request is being handled. So before using a refresh token, tokend waits until any
//! request a previous attempt left in flight has certainly been settled (one request timeout
//! after it was sent), and only then sends the same token again. If the provider did process
//! it, the answer is lost either way: providers with a reuse grace period (Okta, Auth0) accept
//! the old token once more; strict ones answer invalid_grant, and the client asks for
//! `tokend authorize`.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::host::atomic_file::{Durability, Perms, SafeDir, Trust};
use crate::host::unix_time::since_epoch;
use crate::secret::SecretError;

/// A marker holds a decimal timestamp and a newline; anything longer is not one of ours.
const MAX_MARKER: u64 = 64;

/// The refresh token file's directory (reached safely: it may be shared) and the marker's
/// name in it.
fn marker(refresh_token_file: &Path) -> std::io::Result<(SafeDir, OsString)> {
    let (dir, name) = SafeDir::of_file(refresh_token_file, &Trust::state())?;
    let mut marker = name.to_os_string();
    marker.push(".inflight");
    Ok((dir, marker))
}

fn now_ms() -> u128 {
    since_epoch(SystemTime::now()).as_millis()
}

/// How long to wait before the refresh token may be sent again: the rest of `timeout` since
/// a request that was left in flight, or zero. A marker that cannot be read for a reason of the
/// moment (descriptors or memory short, EIO) is an error, retried with backoff: waiting the
/// full timeout each time would hold the client back long after the condition has passed.
pub fn wait_before_use(
    refresh_token_file: &Path,
    timeout: Duration,
) -> Result<Duration, SecretError> {
    // Not followed if it is a symlink, not waited on if it is a FIFO: anything but a marker
    // of ours reads as unreadable.
    let read = marker(refresh_token_file).and_then(|(dir, name)| dir.read(&name, MAX_MARKER));
    let text = match read {
        Ok(None) => return Ok(Duration::ZERO),
        Ok(Some(bytes)) => String::from_utf8(bytes).unwrap_or_default(),
        Err(source) => {
            let error = SecretError::Read {
                path: refresh_token_file.to_path_buf(),
                source,
            };
            if error.is_transient() {
                return Err(error);
            }
            String::new()
        }
    };
    let Ok(sent) = text.trim().parse::<u128>() else {
        return Ok(timeout); // Unreadable: assume the worst, wait the full timeout.
    };
    let age = Duration::from_millis(now_ms().saturating_sub(sent).min(u64::MAX as u128) as u64);
    Ok(timeout.saturating_sub(age))
}

/// Records that a request with the refresh token is about to be sent. Surviving a crash of
/// the process is what matters (the page cache keeps it); after a power loss the request is
/// long settled, so no fsync.
pub fn mark(refresh_token_file: &Path) -> std::io::Result<()> {
    let (dir, name) = marker(refresh_token_file)?;
    dir.replace(
        &name,
        format!("{}\n", now_ms()).as_bytes(),
        Perms::PRIVATE,
        Durability::ProcessCrash,
    )
}

/// The request's outcome is known (an answer arrived): no wait is owed any more.
pub fn clear(refresh_token_file: &Path) {
    if let Ok((dir, name)) = marker(refresh_token_file) {
        let _ = dir.remove(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_marker_asks_for_the_rest_of_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let rt = dir.path().join("rt");
        let timeout = Duration::from_secs(30);
        assert_eq!(wait_before_use(&rt, timeout).unwrap(), Duration::ZERO);
        mark(&rt).unwrap();
        let wait = wait_before_use(&rt, timeout).unwrap();
        assert!(
            wait > Duration::from_secs(29) && wait <= timeout,
            "{wait:?}"
        );
        clear(&rt);
        assert_eq!(wait_before_use(&rt, timeout).unwrap(), Duration::ZERO);
        std::fs::write(
            dir.path().join("rt.inflight"),
            format!("{}\n", now_ms() - 60_000),
        )
        .unwrap();
        assert_eq!(
            wait_before_use(&rt, timeout).unwrap(),
            Duration::ZERO,
            "an old marker is settled"
        );
    }
}
