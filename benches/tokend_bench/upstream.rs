//! The proxy part's upstream: a minimal HTTP/1.1 server (hyper, keep-alive) in the benchmark
//! process, on a runtime and CPUs of its own, that answers 200 with a small fixed body to every
//! request carrying the expected `Authorization`, and 401 to any other (which the load counts
//! as a failure). It counts both, and its threads' CPU time can be read from /proc.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::process::{Cpus, cpu_list, thread_cpu_ticks, thread_id};

/// What the upstream answers: small, as a typical JSON API's status call.
pub const BODY: &[u8] = b"{\"status\":\"ok\"}\n";

/// The path the benchmark requests.
pub const PATH: &str = "/v1/status";

#[derive(Default)]
struct Stats {
    answered: AtomicU64,
    refused: AtomicU64,
    /// The runtime's threads, for their CPU time.
    threads: Mutex<Vec<u32>>,
}

pub struct Upstream {
    stats: Arc<Stats>,
    /// Shut down when dropped (in the background: it may be dropped on another runtime).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Upstream {
    /// Serves on `listener` (bound before, so that tokend's config could name it) on a runtime
    /// of its own, its threads pinned to `cpus` (one worker per CPU; as many as this machine
    /// has if unpinned). Answers 200 only to requests whose `Authorization` is `authorization`.
    pub fn start(
        listener: std::net::TcpListener,
        cpus: &Cpus,
        authorization: HeaderValue,
    ) -> Result<Upstream, String> {
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("upstream: {e}"))?;
        let pinned = cpus.as_deref().map(cpu_list).transpose()?;
        let workers = match &pinned {
            Some(list) => list.len().max(1),
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        let set = match &pinned {
            Some(list) => {
                let mut set = nix::sched::CpuSet::new();
                for &cpu in list {
                    set.set(cpu).map_err(|e| format!("CPU {cpu}: {e}"))?;
                }
                Some(set)
            }
            None => None,
        };
        let stats = Arc::new(Stats::default());
        let on_start = {
            let stats = stats.clone();
            move || {
                // Per thread: the threads inherit the load generator's CPUs otherwise.
                if let Some(set) = &set
                    && let Err(e) =
                        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), set)
                {
                    eprintln!("upstream: cannot pin a thread: {e}");
                }
                if let Ok(tid) = thread_id() {
                    stats.threads.lock().expect("not poisoned").push(tid);
                }
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("upstream")
            .on_thread_start(on_start)
            .enable_all()
            .build()
            .map_err(|e| format!("upstream runtime: {e}"))?;
        let serving = stats.clone();
        runtime.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => return eprintln!("upstream: {e}"),
            };
            serve(listener, serving, authorization).await;
        });
        Ok(Upstream {
            stats,
            runtime: Some(runtime),
        })
    }

    /// Requests answered 200.
    pub fn answered(&self) -> u64 {
        self.stats.answered.load(Ordering::Relaxed)
    }

    /// Requests without the expected `Authorization`.
    pub fn refused(&self) -> u64 {
        self.stats.refused.load(Ordering::Relaxed)
    }

    /// CPU time of the upstream's threads so far, in clock ticks.
    pub fn cpu_ticks(&self) -> Result<u64, String> {
        let threads = self.stats.threads.lock().expect("not poisoned").clone();
        let mut ticks = 0;
        for tid in threads {
            ticks +=
                thread_cpu_ticks(tid).map_err(|e| format!("/proc/self/task/{tid}/stat: {e}"))?;
        }
        Ok(ticks)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn serve(listener: tokio::net::TcpListener, stats: Arc<Stats>, authorization: HeaderValue) {
    let authorization = Arc::new(authorization);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("upstream: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (stats, authorization) = (stats.clone(), authorization.clone());
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let ok = request.headers().get(header::AUTHORIZATION) == Some(&*authorization);
            let counter = match ok {
                true => &stats.answered,
                false => &stats.refused,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let status = match ok {
                true => StatusCode::OK,
                false => StatusCode::UNAUTHORIZED,
            };
            let response = Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(BODY)))
                .expect("a status, one header and a body make a response");
            async move { Ok::<_, Infallible>(response) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
