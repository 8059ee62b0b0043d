//! Blocking file work (secret files; the config file and the secrets it names) kept off the
//! async workers. A file on a hung mount can block `open`, `stat` or `read` for ever; on a worker
//! thread that stalls every task scheduled there, and two such files wedge the daemon. Each call
//! here runs on tokio's blocking pool under a timeout. A call that timed out keeps its thread
//! until the kernel returns, so meanwhile further calls for the same file fail at once instead
//! of taking a thread each: the pool is finite, and DNS lookups need it too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Why blocking work gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum Stalled {
    #[error("did not finish within {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    #[error("an earlier attempt has not returned yet")]
    StillStuck,
    #[error("was cancelled: the daemon is shutting down")]
    Cancelled,
}

/// Files with calls that timed out and have not returned: how many such calls each.
static STUCK: Mutex<BTreeMap<PathBuf, usize>> = Mutex::new(BTreeMap::new());

fn stuck() -> MutexGuard<'static, BTreeMap<PathBuf, usize>> {
    STUCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A call's progress; changed only under [`STUCK`]'s lock, so that the timeout and a late
/// return agree on whether the call was counted as stuck.
const RUNNING: u8 = 0;
const RETURNED: u8 = 1;
const COUNTED: u8 = 2;

/// Runs `work` (which touches `file`) on the blocking pool and waits at most `timeout`.
/// A panic in `work` is a bug and resumes here.
pub async fn run<T: Send + 'static>(
    file: &Path,
    timeout: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Stalled> {
    if stuck().contains_key(file) {
        return Err(Stalled::StillStuck);
    }
    let progress = Arc::new(AtomicU8::new(RUNNING));
    let task = tokio::task::spawn_blocking({
        let progress = progress.clone();
        let file = file.to_path_buf();
        move || {
            let out = work();
            let mut stuck = stuck();
            if progress.swap(RETURNED, Ordering::Relaxed) == COUNTED
                && let Some(n) = stuck.get_mut(&file)
            {
                *n -= 1;
                if *n == 0 {
                    stuck.remove(&file);
                }
            }
            out
        }
    });
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(_)) => Err(Stalled::Cancelled),
        Err(_) => {
            let mut stuck = stuck();
            if progress.load(Ordering::Relaxed) == RUNNING {
                progress.store(COUNTED, Ordering::Relaxed);
                *stuck.entry(file.to_path_buf()).or_default() += 1;
            }
            Err(Stalled::TimedOut(timeout))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stuck_file_holds_one_thread_and_is_refused_until_it_returns() {
        let file = Path::new("/offload-test/hung");
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let call = tokio::spawn(run(file, Duration::from_secs(5), move || {
            let _ = blocked.recv();
            "late"
        }));
        // The blocking call holds back the paused clock's auto-advance: move it by hand.
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(matches!(
            call.await.unwrap(),
            Err(Stalled::TimedOut(d)) if d == Duration::from_secs(5)
        ));
        assert!(matches!(
            run(file, Duration::from_secs(5), || "again").await,
            Err(Stalled::StillStuck)
        ));
        // Other files are not affected.
        assert_eq!(
            run(
                Path::new("/offload-test/other"),
                Duration::from_secs(5),
                || 1
            )
            .await
            .unwrap(),
            1
        );
        release.send(()).unwrap();
        // Once the stuck call returns, the file may be tried again.
        let mut tries = 0;
        loop {
            match run(file, Duration::from_secs(5), || "fresh").await {
                Ok(v) => break assert_eq!(v, "fresh"),
                Err(Stalled::StillStuck) if tries < 100_000 => {
                    tries += 1;
                    std::thread::yield_now();
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(!stuck().contains_key(file));
    }
}
