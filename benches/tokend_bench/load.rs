//! GetToken over the Unix socket, tokend next to the ceiling: the same load (tonic clients in
//! this process, each stream a task that calls again as soon as an answer arrives) against each
//! server in turn, rounds alternated so that drift in the machine hits both alike.

use std::path::Path;
use std::time::Duration;

use tokend::proto::GetTokenRequest;
use tokio::time::Instant;

use crate::process::{Sample, Server};

/// At most this many connections carry a run's streams: each stands for a calling process, and
/// more streams than this share connections as HTTP/2 means them to.
pub const MAX_CONNECTIONS: usize = 8;

pub fn connections(streams: usize) -> usize {
    streams.clamp(1, MAX_CONNECTIONS)
}

/// One server's figures at one concurrency, over every round.
#[derive(Default)]
pub struct Side {
    /// Calls per second, one figure per round.
    pub rates: Vec<f64>,
    /// Latencies of every measured call, in nanoseconds.
    pub latencies: Vec<u64>,
    /// The server's CPU use, in cores, one figure per round.
    pub cpu: Vec<f64>,
}

impl Side {
    pub fn rate(&self) -> f64 {
        median(&self.rates)
    }

    pub fn cpu(&self) -> f64 {
        median(&self.cpu)
    }

    /// The `q` quantile of latency (0.5, 0.99), in microseconds.
    pub fn latency_us(&mut self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 * q).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[i - 1] as f64 / 1000.0
    }
}

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub struct Timing {
    /// Load before measuring: connections warm, both ends at full speed.
    pub warmup: Duration,
    pub measure: Duration,
}

/// The load generator.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Generator {
    /// nghttp2's h2load (Debian: nghttp2-client): far cheaper per call than any server, so the
    /// server is the bottleneck.
    H2load,
    /// tonic clients in the benchmark process: about as costly per call as the server. For the
    /// proxy part, hyper HTTP/1.1 clients in the benchmark process.
    Tonic,
}

impl Generator {
    /// `chosen`, else h2load if it is installed, else the benchmark's own clients.
    pub fn pick(chosen: Option<Generator>) -> Generator {
        chosen.unwrap_or_else(|| {
            let found = std::process::Command::new("h2load")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            match found {
                true => Generator::H2load,
                false => Generator::Tonic,
            }
        })
    }

    pub fn describe(self) -> &'static str {
        match self {
            Generator::H2load => "h2load (nghttp2)",
            Generator::Tonic => "tonic clients in the benchmark process",
        }
    }

    /// The same for the proxy part's HTTP/1.1 requests.
    pub fn describe_http(self) -> &'static str {
        match self {
            Generator::H2load => "h2load --h1 (nghttp2)",
            Generator::Tonic => "hyper HTTP/1.1 clients in the benchmark process",
        }
    }
}

/// Drives `streams` concurrent GetToken streams at `server` and adds the measured window's
/// figures to `side`.
pub async fn run(
    generator: Generator,
    server: &Server,
    client: &str,
    streams: usize,
    timing: &Timing,
    ticks_per_sec: u64,
    side: &mut Side,
) -> Result<(), String> {
    match generator {
        Generator::H2load => h2load(server, client, streams, timing, ticks_per_sec, side).await,
        Generator::Tonic => tonic(server, client, streams, timing, ticks_per_sec, side).await,
    }
}

async fn tonic(
    server: &Server,
    client: &str,
    streams: usize,
    timing: &Timing,
    ticks_per_sec: u64,
    side: &mut Side,
) -> Result<(), String> {
    let mut rpcs = Vec::new();
    for _ in 0..connections(streams) {
        rpcs.push(connect(&server.socket).await?);
    }
    let from = Instant::now() + timing.warmup;
    let until = from + timing.measure;
    let tasks: Vec<_> = (0..streams)
        .map(|i| {
            let mut rpc = rpcs[i % rpcs.len()].clone();
            let client = client.to_string();
            tokio::spawn(async move {
                let mut done_in_window = 0u64;
                let mut latencies = Vec::new();
                loop {
                    let start = Instant::now();
                    if start >= until {
                        break;
                    }
                    let request = GetTokenRequest {
                        client: client.clone(),
                        min_valid_seconds: 0,
                    };
                    rpc.get_token(request)
                        .await
                        .map_err(|s| format!("GetToken failed: {s}"))?;
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
    let before = server.sample()?;
    tokio::time::sleep_until(until).await;
    let after = server.sample()?;
    let mut calls = 0;
    for task in tasks {
        let (done, latencies) = task.await.map_err(|e| e.to_string())??;
        calls += done;
        side.latencies.extend(latencies);
    }
    let secs = timing.measure.as_secs_f64();
    side.rates.push(calls as f64 / secs);
    side.cpu
        .push(cpu_secs(&before, &after, ticks_per_sec) / secs);
    Ok(())
}

/// The same load from h2load: a gRPC request body posted on `streams` streams over the same
/// connections, with the headers gRPC needs; per-request latencies come from its log file.
async fn h2load(
    server: &Server,
    client: &str,
    streams: usize,
    timing: &Timing,
    ticks_per_sec: u64,
    side: &mut Side,
) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let body = dir.path().join("request");
    let log = dir.path().join("log");
    let message = prost::Message::encode_to_vec(&GetTokenRequest {
        client: client.to_string(),
        min_valid_seconds: 0,
    });
    // gRPC framing: uncompressed, then the message length (big-endian).
    let mut framed = vec![0];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    std::fs::write(&body, framed).map_err(|e| e.to_string())?;
    let connections = connections(streams);
    let base = format!("unix:{}", server.socket.display());
    let mut command = std::process::Command::new("h2load");
    command
        .args([
            "-B",
            &base,
            "http://localhost/tokend.v1.TokenService/GetToken",
        ])
        .arg("-d")
        .arg(&body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args(["-c", &connections.to_string()])
        .args(["-m", &streams.div_ceil(connections).to_string()]);
    let run = run_h2load(command, &log, timing, || server.sample()).await?;
    side.latencies.extend(run.latencies);
    let secs = timing.measure.as_secs_f64();
    side.rates.push(run.calls as f64 / secs);
    side.cpu
        .push(cpu_secs(&run.before, &run.after, ticks_per_sec) / secs);
    Ok(())
}

/// What one run of a load generator measured.
pub struct Measured<S> {
    /// Requests answered in the measured window.
    pub calls: u64,
    /// Their latencies, in nanoseconds.
    pub latencies: Vec<u64>,
    /// `sample` at the start and at the end of the measured window.
    pub before: S,
    pub after: S,
}

/// Runs `command` (h2load with its target and load) on one thread for `timing`, its log in
/// `log`, and takes `sample` as its measured window starts and ends. Every request must succeed
/// with 200.
pub async fn run_h2load<S>(
    mut command: std::process::Command,
    log: &Path,
    timing: &Timing,
    sample: impl Fn() -> Result<S, String>,
) -> Result<Measured<S>, String> {
    // h2load appends to a log file that is there.
    match std::fs::remove_file(log) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("{}: {e}", log.display()));
        }
        _ => {}
    }
    let started = Instant::now();
    command
        .args(["-t", "1"])
        .arg(format!("--warm-up-time={}ms", timing.warmup.as_millis()))
        .arg(format!("--duration={}ms", timing.measure.as_millis()))
        .arg("--log-file")
        .arg(log)
        .stdin(std::process::Stdio::null());
    let child = tokio::task::spawn_blocking(move || command.output());
    let (sampled, output) = tokio::join!(
        async {
            tokio::time::sleep_until(started + timing.warmup).await;
            let before = sample();
            tokio::time::sleep_until(started + timing.warmup + timing.measure).await;
            (before, sample())
        },
        child
    );
    let output = output
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot run h2load: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!("h2load failed: {stdout}"));
    }
    // "requests: 10 total, 10 started, 10 done, 10 succeeded, 0 failed, 0 errored, 0 timeout"
    let counts = stdout
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .ok_or_else(|| format!("h2load printed no request counts: {stdout}"))?;
    let count = |what: &str| {
        counts
            .split(", ")
            .find_map(|c| c.strip_suffix(what)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    if count(" failed") + count(" errored") + count(" timeout") > 0 || count(" succeeded") == 0 {
        return Err(format!("h2load: calls failed: {counts}"));
    }
    let log = std::fs::read_to_string(log).map_err(|e| e.to_string())?;
    let mut calls = 0;
    let mut latencies = Vec::new();
    for line in log.lines() {
        let mut columns = line.split('\t');
        // Status 0 is h2load's, not the server's: it records `:status` only for headers that
        // arrive in the measured phase, so a call answered in the warm-up whose stream closes
        // just after it is logged as a success with status 0. Failures are "-1" and were
        // counted above.
        let (Some(_), Some("200" | "0"), Some(us)) =
            (columns.next(), columns.next(), columns.next())
        else {
            return Err(format!("h2load: unexpected log line {line:?}"));
        };
        calls += 1;
        latencies.push(us.parse::<u64>().map_err(|e| e.to_string())? * 1000);
    }
    Ok(Measured {
        calls,
        latencies,
        before: sampled.0?,
        after: sampled.1?,
    })
}

pub fn cpu_secs(before: &Sample, after: &Sample, ticks_per_sec: u64) -> f64 {
    after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / ticks_per_sec as f64
}

pub async fn connect(
    socket: &Path,
) -> Result<
    tokend::proto::token_service_client::TokenServiceClient<tonic::transport::Channel>,
    String,
> {
    tokend::cli::ctl::connect(socket)
        .await
        .map_err(|e| e.to_string())
}

/// The encoded size of one GetToken answer, to check that both servers answer alike.
pub async fn answer_size(server: &Server, client: &str) -> Result<usize, String> {
    let mut token = connect(&server.socket)
        .await?
        .get_token(GetTokenRequest {
            client: client.to_string(),
            min_valid_seconds: 0,
        })
        .await
        .map_err(|s| format!("GetToken failed: {s}"))?
        .into_inner();
    // A timestamp's nanoseconds take 1 to 5 bytes by their value, which is the clock's when
    // the token was stamped: counted at their longest, the sizes compare fields, not moments.
    for stamp in [&mut token.expires_at, &mut token.issued_at]
        .into_iter()
        .flatten()
    {
        stamp.nanos = 999_999_999;
    }
    Ok(prost::Message::encoded_len(&token))
}
