//! A request budget per token endpoint: clients that share an endpoint share a cap on concurrent
//! requests and a minimum spacing between request starts, so a start-up with many clients, a
//! restart, or the end of an outage does not stampede the provider.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The budget of one endpoint.
pub struct EndpointLimiter {
    permits: Arc<Semaphore>,
    spacing: Duration,
    /// The earliest start of the next request.
    next_start: Mutex<Instant>,
}

impl EndpointLimiter {
    pub fn new(max_concurrent: usize, spacing: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            spacing,
            next_start: Mutex::new(Instant::now()),
        }
    }

    /// Waits for a slot: a free concurrency permit, then this request's turn in the spacing.
    /// The permit is held until the returned guard is dropped (the request has finished).
    pub async fn acquire(&self) -> OwnedSemaphorePermit {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let start = {
            let mut next = self.next_start.lock().unwrap_or_else(|e| e.into_inner());
            let start = (*next).max(Instant::now());
            *next = start + self.spacing;
            start
        };
        tokio::time::sleep_until(start).await;
        permit
    }
}

/// One limiter per distinct token endpoint URL.
pub struct EndpointLimiters {
    max_concurrent: usize,
    spacing: Duration,
    by_endpoint: HashMap<String, Arc<EndpointLimiter>>,
}

impl EndpointLimiters {
    pub fn new(max_concurrent: usize, spacing: Duration) -> Self {
        Self {
            max_concurrent,
            spacing,
            by_endpoint: HashMap::new(),
        }
    }

    pub fn for_endpoint(&mut self, endpoint: &str) -> Arc<EndpointLimiter> {
        self.by_endpoint
            .entry(endpoint.to_string())
            .or_insert_with(|| Arc::new(EndpointLimiter::new(self.max_concurrent, self.spacing)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn caps_concurrency_and_spaces_starts() {
        let limiter = Arc::new(EndpointLimiter::new(2, Duration::from_millis(100)));
        let active = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let (limiter, active, peak, starts) = (
                    limiter.clone(),
                    active.clone(),
                    peak.clone(),
                    starts.clone(),
                );
                tokio::spawn(async move {
                    let _permit = limiter.acquire().await;
                    starts.lock().unwrap().push(t0.elapsed().as_millis());
                    let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    active.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        let mut starts = starts.lock().unwrap().clone();
        starts.sort();
        // Two at a time, each start at least 100 ms after the previous one.
        assert_eq!(starts, [0, 100, 1000, 1100, 2000, 2100]);
    }

    #[test]
    fn clients_of_one_endpoint_share_a_limiter() {
        let mut limiters = EndpointLimiters::new(4, Duration::ZERO);
        let a = limiters.for_endpoint("https://a/token");
        let b = limiters.for_endpoint("https://b/token");
        assert!(Arc::ptr_eq(&a, &limiters.for_endpoint("https://a/token")));
        assert!(!Arc::ptr_eq(&a, &b));
    }
}
