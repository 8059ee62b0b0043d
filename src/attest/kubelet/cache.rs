//! The pod list as last fetched, and when to fetch it again: for a pod the list does not have,
//! or once the list is older than [`MAX_AGE`], at most once per interval, and one fetch at a
//! time whoever asks. Callers who wait while a fetch is under way take its outcome rather than
//! starting another.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::KubeletError;
use super::pod::{Pod, Pods};

/// A list older than this answers no one: a pod relabelled or deleted since is seen by the next
/// caller within this (a pod once found is remembered on its connection, so this bounds what new
/// connections are told), and a kubelet down for longer fails its callers closed.
pub(super) const MAX_AGE: Duration = Duration::from_secs(60);

pub(super) struct Cache {
    interval: Duration,
    /// The last list fetched and when; replaced whole by each successful fetch.
    pods: Mutex<(Arc<Pods>, Option<Instant>)>,
    /// Held for the length of a fetch: the one place fetches are started.
    last: tokio::sync::Mutex<Last>,
    /// Fetches ended, successful or not; a caller that sees it move while it waits for `last`
    /// shares that fetch's outcome.
    fetches: AtomicU64,
}

/// The last fetch: when it ended and, if it failed, why.
#[derive(Default)]
struct Last {
    ended: Option<Instant>,
    error: Option<KubeletError>,
}

impl Cache {
    pub(super) fn new(interval: Duration) -> Cache {
        Cache {
            interval,
            pods: Mutex::new((Arc::default(), None)),
            last: tokio::sync::Mutex::new(Last::default()),
            fetches: AtomicU64::new(0),
        }
    }

    /// The cached list if it is younger than [`MAX_AGE`].
    fn current(&self) -> Option<Arc<Pods>> {
        let (pods, fetched) = &*self.pods.lock().unwrap_or_else(|e| e.into_inner());
        fetched
            .is_some_and(|t| t.elapsed() < MAX_AGE)
            .then(|| pods.clone())
    }

    fn cached(&self, pod_uid: Option<&str>, container_id: Option<&str>) -> Option<Arc<Pod>> {
        self.current()?.find(pod_uid, container_id)
    }

    /// The pod from the cached list, or from a list fetched with `fetch` if the cached one
    /// lacks it and no fetch ended within the interval. A miss within the interval is `None`,
    /// or the error of the last fetch if it failed (the kubelet is not asked again so soon).
    pub(super) async fn find<F, Fut>(
        &self,
        pod_uid: Option<&str>,
        container_id: Option<&str>,
        fetch: F,
    ) -> Result<Option<Arc<Pod>>, KubeletError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Pods, KubeletError>>,
    {
        if pod_uid.is_none() && container_id.is_none() {
            return Ok(None);
        }
        let seen = self.fetches.load(Ordering::Acquire);
        if let Some(pod) = self.cached(pod_uid, container_id) {
            return Ok(Some(pod));
        }
        let mut last = self.last.lock().await;
        if let Some(pod) = self.cached(pod_uid, container_id) {
            return Ok(Some(pod));
        }
        let shared = self.fetches.load(Ordering::Acquire) != seen;
        let recent = last.ended.is_some_and(|t| t.elapsed() < self.interval);
        if shared || recent {
            return match &last.error {
                Some(e) => Err(e.clone()),
                None => Ok(None),
            };
        }
        // A caller that gives up here (its request cancelled) leaves no trace: the next one
        // fetches.
        let outcome = fetch().await;
        let ended = Instant::now();
        last.ended = Some(ended);
        self.fetches.fetch_add(1, Ordering::Release);
        match outcome {
            Ok(pods) => {
                let pods = Arc::new(pods);
                *self.pods.lock().unwrap_or_else(|e| e.into_inner()) = (pods.clone(), Some(ended));
                if last.error.take().is_some() {
                    tracing::info!(
                        pods = pods.len(),
                        "the kubelet's pod list is readable again"
                    );
                }
                Ok(pods.find(pod_uid, container_id))
            }
            Err(e) => {
                // At most one line per interval: fetches are that far apart.
                tracing::warn!(retry_in = ?self.interval, "cannot list the kubelet's pods: {e}");
                last.error = Some(e.clone());
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::pod::parse;
    use super::*;
    use std::sync::atomic::AtomicUsize;

    const INTERVAL: Duration = Duration::from_secs(5);

    fn list(pods: &[(&str, u8)]) -> Pods {
        let items: Vec<String> = pods
            .iter()
            .map(|(uid, c)| {
                format!(
                    r#"{{"metadata":{{"uid":"{uid}","name":"{uid}"}},"status":{{"containerStatuses":[{{"containerID":"containerd://{}"}}]}}}}"#,
                    id(*c)
                )
            })
            .collect();
        parse(format!(r#"{{"items":[{}]}}"#, items.join(",")).as_bytes()).unwrap()
    }

    fn id(c: u8) -> String {
        format!("{c:02x}").repeat(32)
    }

    /// A kubelet whose list the test sets, counting fetches.
    #[derive(Default)]
    struct Fake {
        pods: Mutex<Vec<(&'static str, u8)>>,
        fetches: AtomicUsize,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Fake {
        async fn fetch(&self) -> Result<Pods, KubeletError> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(KubeletError::Status {
                    url: "https://kubelet/pods".into(),
                    status: 503,
                });
            }
            Ok(list(&self.pods.lock().unwrap()))
        }
        fn set(&self, pods: &[(&'static str, u8)]) {
            *self.pods.lock().unwrap() = pods.to_vec();
        }
        fn count(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }
    }

    async fn find(cache: &Cache, fake: &Fake, uid: &str) -> Result<Option<Arc<Pod>>, KubeletError> {
        cache.find(Some(uid), None, || fake.fetch()).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_miss_fetches_at_most_once_per_interval() {
        let (cache, fake) = (Cache::new(INTERVAL), Fake::default());
        fake.set(&[("a", 1)]);
        assert_eq!(find(&cache, &fake, "a").await.unwrap().unwrap().uid, "a");
        assert_eq!(fake.count(), 1);
        // Hits do not fetch while the list is young.
        tokio::time::advance(INTERVAL * 10).await;
        assert!(
            cache
                .find(None, Some(&id(1)), || fake.fetch())
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(fake.count(), 1);
        // A pod that appears: the first miss fetches (the last fetch is long past)...
        fake.set(&[("a", 1), ("b", 2)]);
        assert_eq!(find(&cache, &fake, "b").await.unwrap().unwrap().uid, "b");
        assert_eq!(fake.count(), 2);
        // ...and misses within the interval of it do not, though the kubelet has the pod now.
        fake.set(&[("a", 1), ("b", 2), ("c", 3)]);
        for _ in 0..10 {
            assert!(find(&cache, &fake, "c").await.unwrap().is_none());
        }
        tokio::time::advance(INTERVAL - Duration::from_millis(1)).await;
        assert!(find(&cache, &fake, "c").await.unwrap().is_none());
        assert_eq!(fake.count(), 2);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(find(&cache, &fake, "c").await.unwrap().is_some());
        assert_eq!(fake.count(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_gone_from_a_newer_list_is_gone() {
        let (cache, fake) = (Cache::new(INTERVAL), Fake::default());
        fake.set(&[("a", 1), ("b", 2)]);
        assert!(find(&cache, &fake, "a").await.unwrap().is_some());
        fake.set(&[("b", 2)]);
        tokio::time::advance(INTERVAL).await;
        // A miss for another pod brings the newer list, without "a".
        assert!(find(&cache, &fake, "z").await.unwrap().is_none());
        assert_eq!(fake.count(), 2);
        assert!(find(&cache, &fake, "a").await.unwrap().is_none());
        assert!(
            cache
                .find(None, Some(&id(1)), || fake.fetch())
                .await
                .unwrap()
                .is_none()
        );
        assert!(find(&cache, &fake, "b").await.unwrap().is_some());
        assert_eq!(fake.count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_share_one_fetch() {
        let cache = Cache::new(Duration::ZERO);
        let fake = Fake::default();
        fake.set(&[("a", 1)]);
        let gate = tokio::sync::Semaphore::new(0);
        // Every caller is waiting before the one fetch may end.
        let slow = || async {
            let _ = gate.acquire().await.unwrap();
            fake.fetch().await
        };
        let calls = futures_util::future::join_all((0..50).map(|i| {
            let slow = &slow;
            let cache = &cache;
            async move {
                let uid = if i % 2 == 0 { "a" } else { "missing" };
                cache.find(Some(uid), None, slow).await
            }
        }));
        let open = async {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            gate.add_permits(50);
        };
        let (results, ()) = tokio::join!(calls, open);
        assert_eq!(fake.count(), 1, "even with a zero interval");
        let found = results.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
        assert_eq!(found, 25);
        assert!(results.iter().all(|r| r.is_ok()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_fetch_answers_misses_with_its_error_until_the_interval_ends() {
        let (cache, fake) = (Cache::new(INTERVAL), Fake::default());
        fake.set(&[("a", 1)]);
        assert!(find(&cache, &fake, "a").await.unwrap().is_some());
        tokio::time::advance(INTERVAL).await;
        fake.fail.store(true, Ordering::SeqCst);
        assert!(find(&cache, &fake, "b").await.is_err());
        // The same error, without asking again; the cached list still answers hits.
        let err = find(&cache, &fake, "b").await.unwrap_err();
        assert!(err.to_string().contains("503"), "{err}");
        assert!(find(&cache, &fake, "a").await.unwrap().is_some());
        assert_eq!(fake.count(), 2);
        // Not for ever: a list past its age answers no one while the kubelet fails.
        tokio::time::advance(MAX_AGE).await;
        assert!(find(&cache, &fake, "a").await.is_err());
        assert_eq!(fake.count(), 3);
        fake.fail.store(false, Ordering::SeqCst);
        tokio::time::advance(INTERVAL).await;
        assert!(find(&cache, &fake, "b").await.unwrap().is_none());
        assert_eq!(fake.count(), 4);
        // Nothing to look for asks nothing.
        assert!(
            cache
                .find(None, None, || fake.fetch())
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(fake.count(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hit_from_a_list_past_its_age_fetches_it_again() {
        let (cache, fake) = (Cache::new(INTERVAL), Fake::default());
        fake.set(&[("a", 1)]);
        assert!(find(&cache, &fake, "a").await.unwrap().is_some());
        tokio::time::advance(MAX_AGE - Duration::from_millis(1)).await;
        assert!(find(&cache, &fake, "a").await.unwrap().is_some());
        assert_eq!(fake.count(), 1);
        // Deleted meanwhile: the first caller after the list's age learns it.
        fake.set(&[]);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(find(&cache, &fake, "a").await.unwrap().is_none());
        assert_eq!(fake.count(), 2);
    }
}
