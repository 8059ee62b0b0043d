//! HTTP/1.1 requests through tokend's proxy (one `[proxy.NAME]` route on loopback TCP) to an
//! upstream in this process, next to the same requests sent straight to the upstream with the
//! client's token in a fixed `Authorization` header. Each of N concurrent streams is a
//! keep-alive connection with one request at a time; rounds alternate between the two paths.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokend::proto::GetTokenRequest;
use tokio::time::Instant;

use crate::endpoint::Endpoint;
use crate::load::{self, Generator, Measured, Side, Timing};
use crate::process::{Cpus, Extra, Sample, client_name, start_tokend_with};
use crate::table::Table;
use crate::upstream::{self, Upstream};

/// The route's name in tokend's config.
const ROUTE: &str = "bench";

/// How long one request may take before the run fails (the loops end even if a server hangs).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Settings<'a> {
    pub tokend: &'a Path,
    pub streams: &'a [usize],
    pub rounds: usize,
    pub timing: &'a Timing,
    pub generator: Generator,
    /// tokend's CPUs and the upstream's.
    pub proxy_cpus: &'a Cpus,
    pub upstream_cpus: &'a Cpus,
    /// CPUs on the machine (the load generator has those after the first when pinned).
    pub cpus: usize,
    pub ticks_per_sec: u64,
}

/// Both paths' figures at one concurrency.
#[derive(Default)]
pub struct Sides {
    /// Through the proxy; its CPU is tokend's.
    pub proxy: Side,
    /// Straight to the upstream; its CPU is the upstream's.
    pub direct: Side,
    /// The upstream's CPU in the proxy rounds, in cores, one figure per round.
    pub upstream_in_proxy: Vec<f64>,
}

/// CPU time of both servers at one moment.
struct Cpu {
    tokend: Sample,
    upstream_ticks: u64,
}

pub async fn run(s: &Settings<'_>, table: &mut Table) -> Result<(), String> {
    let client = client_name(0);
    let endpoint = Endpoint::start(Duration::ZERO)
        .await
        .map_err(|e| format!("token endpoint: {e}"))?;
    // The upstream's port and the route's, before tokend's config names them.
    let upstream_listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("upstream: cannot bind 127.0.0.1: {e}"))?;
    let upstream_addr = upstream_listener.local_addr().map_err(|e| e.to_string())?;
    let proxy_addr = free_port()?;
    let most = s.streams.iter().copied().max().unwrap_or(1);
    let extra = Extra {
        // The route is TCP, where callers cannot be identified.
        client: "allow_tcp = true\n".into(),
        tables: format!(
            "\n[proxy.{ROUTE}]\nlisten = \"{proxy_addr}\"\nupstream = \"http://{upstream_addr}\"\n\
             client = \"{client}\"\nmax_connections = {0}\nmax_connections_per_uid = {0}\n",
            (2 * most).max(512),
        ),
    };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let tokend = start_tokend_with(
        s.tokend,
        dir.path(),
        &endpoint.url,
        1,
        (4, Duration::ZERO),
        s.proxy_cpus,
        &extra,
    )
    .await?;
    // The token the proxy sends is the header the direct requests carry, and the only one
    // the upstream accepts.
    let token = load::connect(&tokend.socket)
        .await?
        .get_token(GetTokenRequest {
            client: client.clone(),
            min_valid_seconds: 0,
        })
        .await
        .map_err(|s| format!("GetToken failed: {s}"))?
        .into_inner()
        .access_token;
    let authorization = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|e| format!("the token is no header value: {e}"))?;
    let upstream = Upstream::start(upstream_listener, s.upstream_cpus, authorization.clone())?;
    // One request each way: both must be answered alike before anything is measured.
    for (path, addr, auth) in [
        ("direct", upstream_addr, Some(&authorization)),
        ("through the proxy", proxy_addr, None),
    ] {
        let mut sender = connect(addr).await?;
        let answered = request(&mut sender, addr, auth).await;
        answered.map_err(|e| format!("a request {path}: {e}: {}", tokend.log_tail()))?;
    }
    let who = s.generator.describe_http();
    table.note(match (s.proxy_cpus, s.upstream_cpus) {
        (Some(proxy), Some(up)) => format!(
            "Proxy: tokend pinned to CPU {proxy}, the upstream (a hyper HTTP/1.1 server in the \
             benchmark process, {} thread(s)) to CPU {up}, the load generator ({who}) to {}.",
            crate::process::cpu_list(up)?.len(),
            match s.cpus {
                2 => "CPU 1 too: on 2 CPUs the upstream and the load generator share one".into(),
                n => format!("CPUs 1-{}", n - 1),
            },
        ),
        _ => format!(
            "Proxy: tokend, the upstream (a hyper HTTP/1.1 server in the benchmark process) and \
             the load generator ({who}) share every CPU."
        ),
    });
    table.note(format!(
        "Proxy: GET {} answered 200 with {} bytes; the tokend column is through the route \
         (loopback TCP, which adds the {}-byte token), the ceiling column straight to the \
         upstream with the same `Authorization` header. N streams are N keep-alive \
         connections with one request at a time; {} alternated round(s) of {} s per path after \
         {} s of warm-up; throughput is the median of the rounds. Ratio: proxy requests/s over \
         direct. CPU: tokend's per request through the proxy (and the upstream's in the same \
         rounds), the upstream's per request direct.",
        upstream::PATH,
        upstream::BODY.len(),
        token.len(),
        s.rounds,
        s.timing.measure.as_secs_f64(),
        s.timing.warmup.as_secs_f64(),
    ));
    let sample = || {
        Ok(Cpu {
            tokend: tokend.sample()?,
            upstream_ticks: upstream.cpu_ticks()?,
        })
    };
    for &streams in s.streams {
        eprintln!("proxy: {streams} stream(s)...");
        let mut sides = Sides::default();
        for round in 0..s.rounds {
            // Alternate which path goes first, too.
            let proxy_first = round % 2 == 1;
            for proxy_turn in [proxy_first, !proxy_first] {
                let (addr, auth) = match proxy_turn {
                    true => (proxy_addr, None),
                    false => (upstream_addr, Some(&authorization)),
                };
                let answered = upstream.answered();
                let measured = match s.generator {
                    Generator::H2load => {
                        h2load(addr, auth, streams, s.timing, &sample, dir.path()).await?
                    }
                    Generator::Tonic => {
                        hyper_clients(addr, auth, streams, s.timing, &sample).await?
                    }
                };
                // Warm-up included: every request counted must have reached the upstream.
                let answered = upstream.answered() - answered;
                if answered < measured.calls {
                    return Err(format!(
                        "the load generator counted {} answers, the upstream gave {answered}",
                        measured.calls
                    ));
                }
                let secs = s.timing.measure.as_secs_f64();
                let cores = |ticks: u64| ticks as f64 / s.ticks_per_sec as f64 / secs;
                let upstream_cores = cores(
                    measured
                        .after
                        .upstream_ticks
                        .saturating_sub(measured.before.upstream_ticks),
                );
                let side = match proxy_turn {
                    true => {
                        sides.upstream_in_proxy.push(upstream_cores);
                        let tokend_ticks = measured
                            .after
                            .tokend
                            .cpu_ticks
                            .saturating_sub(measured.before.tokend.cpu_ticks);
                        sides.proxy.cpu.push(cores(tokend_ticks));
                        &mut sides.proxy
                    }
                    false => {
                        sides.direct.cpu.push(upstream_cores);
                        &mut sides.direct
                    }
                };
                side.rates.push(measured.calls as f64 / secs);
                side.latencies.extend(measured.latencies);
            }
        }
        table.proxy(streams, &mut sides);
    }
    if upstream.refused() > 0 {
        return Err(format!(
            "the upstream saw {} request(s) without the client's token (and {} with it)",
            upstream.refused(),
            upstream.answered()
        ));
    }
    tokend.stop();
    Ok(())
}

/// A loopback port nothing listens on (bound and released: tokend binds it next).
fn free_port() -> Result<SocketAddr, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot bind 127.0.0.1: {e}"))?;
    listener.local_addr().map_err(|e| e.to_string())
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// One keep-alive HTTP/1.1 connection to `addr`; its I/O runs on a task that ends when the
/// sender is dropped.
async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// `GET PATH` on `sender`, which must be answered 200 with the upstream's body.
async fn request(
    sender: &mut Sender,
    addr: SocketAddr,
    authorization: Option<&HeaderValue>,
) -> Result<(), String> {
    let mut builder = Request::get(upstream::PATH).header(header::HOST, addr.to_string());
    if let Some(value) = authorization {
        builder = builder.header(header::AUTHORIZATION, value.clone());
    }
    let request = builder
        .body(Empty::new())
        .expect("a path and two headers make a request");
    let answered = async {
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body))
    };
    let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, answered)
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    if status != StatusCode::OK || body != upstream::BODY {
        return Err(format!(
            "answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(())
}

/// `streams` hyper connections to `addr`, each a task that sends the next request as soon as
/// an answer arrives.
async fn hyper_clients<S>(
    addr: SocketAddr,
    authorization: Option<&HeaderValue>,
    streams: usize,
    timing: &Timing,
    sample: impl Fn() -> Result<S, String>,
) -> Result<Measured<S>, String> {
    let mut senders = Vec::new();
    for _ in 0..streams {
        senders.push(connect(addr).await?);
    }
    let from = Instant::now() + timing.warmup;
    let until = from + timing.measure;
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            let authorization = authorization.cloned();
            tokio::spawn(async move {
                let mut done_in_window = 0u64;
                let mut latencies = Vec::new();
                loop {
                    let start = Instant::now();
                    if start >= until {
                        break;
                    }
                    request(&mut sender, addr, authorization.as_ref()).await?;
                    let end = Instant::now();
                    if end > from && end <= until {
                        done_in_window += 1;
                    }
                    if start >= from && end <= until {
                        latencies.push((end - start).as_nanos() as u64);
                    }
                }
                Ok::<_, String>((done_in_window, latencies))
            })
        })
        .collect();
    tokio::time::sleep_until(from).await;
    let before = sample()?;
    tokio::time::sleep_until(until).await;
    let after = sample()?;
    let mut calls = 0;
    let mut latencies = Vec::new();
    for task in tasks {
        let (done, measured) = task.await.map_err(|e| e.to_string())??;
        calls += done;
        latencies.extend(measured);
    }
    Ok(Measured {
        calls,
        latencies,
        before,
        after,
    })
}

/// The same load from `h2load --h1`: `streams` connections, one request at a time on each.
async fn h2load<S>(
    addr: SocketAddr,
    authorization: Option<&HeaderValue>,
    streams: usize,
    timing: &Timing,
    sample: impl Fn() -> Result<S, String>,
    dir: &Path,
) -> Result<Measured<S>, String> {
    let log = dir.join("h2load.log");
    let mut command = std::process::Command::new("h2load");
    command
        .arg("--h1")
        .args(["-c", &streams.to_string(), "-m", "1"]);
    if let Some(value) = authorization {
        let value = value.to_str().map_err(|e| e.to_string())?;
        command.args(["-H", &format!("authorization: {value}")]);
    }
    command.arg(format!("http://{addr}{}", upstream::PATH));
    load::run_h2load(command, &log, timing, sample).await
}
