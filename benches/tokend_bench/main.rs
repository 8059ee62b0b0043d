//! tokend's benchmark: GetToken throughput and latency over the Unix socket next to a bare tonic
//! server (the ceiling), HTTP requests through the proxy next to the same requests sent straight
//! to its upstream, thousands of clients (memory, idle CPU, start-up, the endpoint budget), and
//! herds of callers (one token request each). Prints one table with the machine it ran on.
//!
//! ```sh
//! cargo bench --bench tokend_bench                 # the full run, about 6 minutes
//! cargo bench --bench tokend_bench -- --tiny       # a few seconds: does everything work?
//! cargo bench --bench tokend_bench -- --help       # sections, durations, budget, pinning
//! ```
//!
//! Not a test: figures depend on the machine and on what else runs on it. CI only checks that a
//! tiny run completes.

mod ceiling;
mod endpoint;
mod herd;
mod load;
mod process;
mod proxy;
mod scale;
mod table;
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::process::{Cpus, Server, client_name};
use crate::table::Table;

#[derive(Parser)]
#[command(
    about = "Benchmarks tokend: GetToken next to a bare tonic server, the proxy next to direct \
             requests, scale, herds"
)]
struct Args {
    /// A run of a few seconds with small numbers: shows that everything works, measures nothing.
    #[arg(long)]
    tiny: bool,
    /// Which parts to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "get-token,proxy,scale,herd"
    )]
    only: Vec<Part>,
    /// Concurrent GetToken streams (for the proxy: keep-alive connections), one measurement each.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    streams: Vec<usize>,
    /// Alternated rounds per concurrency (each measures the ceiling and tokend once; the proxy
    /// and direct requests once).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds measured per server and round.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Numbers of configured clients for the scale part.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    clients: Vec<usize>,
    /// Seconds of idleness measured after every client has its token.
    #[arg(long, default_value_t = 60)]
    idle: u64,
    /// `[refresh] endpoint_concurrency` for the scale part (tokend's default).
    #[arg(long, default_value_t = 4)]
    endpoint_concurrency: usize,
    /// `[refresh] endpoint_spacing` for the scale part, in milliseconds: tokend's default, which
    /// makes 10,000 clients take 100 s by design.
    #[arg(long, default_value_t = 10)]
    endpoint_spacing_ms: u64,
    /// How long the benchmark's token endpoint takes to answer, in milliseconds.
    #[arg(long, default_value_t = 5)]
    endpoint_latency_ms: u64,
    /// Callers in each herd.
    #[arg(long, default_value_t = 1000)]
    herd: usize,
    /// The load generator: h2load when it is installed, else tonic clients (for the proxy:
    /// hyper clients).
    #[arg(long, value_enum)]
    load: Option<load::Generator>,
    /// Do not pin the GetToken and proxy servers and the load generator to separate CPUs.
    #[arg(long)]
    no_pin: bool,
    /// The tokend binary to measure (another build, to compare).
    #[arg(long, default_value = env!("CARGO_BIN_EXE_tokend"))]
    tokend: PathBuf,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
    /// Internal: serve the ceiling on this socket (the benchmark starts itself with it).
    #[arg(long, hide = true)]
    serve_ceiling: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    GetToken,
    Proxy,
    Scale,
    Herd,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Some(socket) = &args.serve_ceiling {
        return ceiling::serve(socket, &client_name(0));
    }
    if args.tiny {
        args.streams = vec![1, 8];
        args.rounds = 1;
        args.seconds = 0.2;
        args.clients = vec![50];
        args.idle = 1;
        args.herd = 20;
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    // The load generator runs here, so it gets CPUs the servers do not: set before the runtime
    // starts, every thread inherits it.
    let pin = !args.no_pin
        && cpus >= 2
        && (args.only.contains(&Part::GetToken) || args.only.contains(&Part::Proxy))
        && has_taskset()
        && pin_self(1..cpus)
            .inspect_err(|e| eprintln!("cannot pin the load generator ({e}); running unpinned"))
            .is_ok();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    match runtime.block_on(run(&args, pin, cpus)) {
        Ok(table) => {
            println!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Servers are pinned with `taskset` (util-linux), which execs them: their pid stays theirs.
fn has_taskset() -> bool {
    let found = std::process::Command::new("taskset")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("taskset not found (util-linux); running unpinned");
    }
    found
}

fn pin_self(cpus: std::ops::Range<usize>) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for cpu in cpus {
        set.set(cpu)?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

async fn run(args: &Args, pin: bool, cpus: usize) -> Result<Table, String> {
    let ticks = process::clock_ticks();
    let mut table = Table::new(machine(cpus, args), args.tiny);
    // Servers under load get CPU 0; the others may use every CPU.
    let (load_cpus, other_cpus): (Cpus, Cpus) = if pin {
        (Some("0".into()), Some(format!("0-{}", cpus - 1)))
    } else {
        (None, None)
    };
    if args.only.contains(&Part::GetToken) {
        get_token(args, &load_cpus, cpus, ticks, &mut table).await?;
    }
    if args.only.contains(&Part::Proxy) {
        // tokend gets CPU 0 as in GetToken; the upstream the last CPU, which it shares with the
        // load generator on two CPUs.
        let upstream_cpus: Cpus = pin.then(|| (cpus - 1).to_string());
        let settings = proxy::Settings {
            tokend: &args.tokend,
            streams: &args.streams,
            rounds: args.rounds,
            timing: &timing(args),
            generator: load::Generator::pick(args.load),
            proxy_cpus: &load_cpus,
            upstream_cpus: &upstream_cpus,
            cpus,
            ticks_per_sec: ticks,
        };
        proxy::run(&settings, &mut table).await?;
    }
    if args.only.contains(&Part::Scale) {
        let settings = scale::Settings {
            tokend: &args.tokend,
            budget: (
                args.endpoint_concurrency,
                Duration::from_millis(args.endpoint_spacing_ms),
            ),
            endpoint_latency: Duration::from_millis(args.endpoint_latency_ms),
            idle: Duration::from_secs(args.idle),
            cpus: &other_cpus,
            ticks_per_sec: ticks,
        };
        table.note(format!(
            "Scale: clients share one token endpoint in the benchmark process that answers in \
             {} ms with {}-byte tokens valid 24 h; endpoint_concurrency = {}, \
             endpoint_spacing = {} ms; memory read 1 s after the last token, CPU over the {} s \
             after that; GLIBC_TUNABLES={} ({}).",
            args.endpoint_latency_ms,
            endpoint::TOKEN_BYTES,
            args.endpoint_concurrency,
            args.endpoint_spacing_ms,
            args.idle,
            process::malloc_tunables(),
            if process::tunables_overridden() {
                "from the benchmark's environment"
            } else {
                "as deployed: config/systemd/tokend.service"
            },
        ));
        for &clients in &args.clients {
            eprintln!("scale: {clients} clients...");
            let result = scale::run(clients, &settings).await?;
            table.scale(&result, args.endpoint_concurrency, ticks);
        }
    }
    if args.only.contains(&Part::Herd) {
        eprintln!("herd: {} callers...", args.herd);
        let result = herd::run(args.herd, &args.tokend, &other_cpus).await?;
        table.herd(&result);
    }
    Ok(table)
}

async fn get_token(
    args: &Args,
    pinned: &Cpus,
    cpus: usize,
    ticks: u64,
    table: &mut Table,
) -> Result<(), String> {
    let client = client_name(0);
    let endpoint = endpoint::Endpoint::start(Duration::ZERO)
        .await
        .map_err(|e| format!("token endpoint: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let tokend_dir = dir.path().join("tokend");
    std::fs::create_dir(&tokend_dir).map_err(|e| e.to_string())?;
    let tokend = process::start_tokend(
        &args.tokend,
        &tokend_dir,
        &endpoint.url,
        1,
        (4, Duration::ZERO),
        pinned,
    )
    .await?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let socket = dir.path().join("ceiling.sock");
    let serve = ["--serve-ceiling".as_ref(), socket.as_os_str()];
    let log = dir.path().join("ceiling.log");
    let mut ceiling = Server::spawn(&me, &serve, pinned, socket.clone(), log)?;
    ceiling.ready(Duration::from_secs(10)).await?;
    let sizes = (
        load::answer_size(&tokend, &client).await?,
        load::answer_size(&ceiling, &client).await?,
    );
    if sizes.0 != sizes.1 {
        return Err(format!(
            "tokend answers {} bytes, the ceiling {}: not the same RPC",
            sizes.0, sizes.1
        ));
    }
    let generator = load::Generator::pick(args.load);
    let who = generator.describe();
    table.note(match pinned {
        Some(_) => format!(
            "GetToken: each server pinned to CPU 0, the load generator ({who}) to the other \
             CPU(s): on {cpus} CPUs they would otherwise compete."
        ),
        None => format!(
            "GetToken: servers and load generator ({who}) share {cpus} CPU(s): the load \
             generator competes with the server."
        ),
    });
    let timing = timing(args);
    table.note(format!(
        "GetToken: {} alternated round(s) of {} s per server after {} s of warm-up; N streams \
         over min(N, {}) connections; both answers are {} bytes; throughput is the median of \
         the rounds. Ratio: tokend's calls/s over the ceiling's; for CPU, the ceiling's CPU \
         per call over tokend's (1.00: as cheap as the ceiling).",
        args.rounds,
        args.seconds,
        timing.warmup.as_secs_f64(),
        load::MAX_CONNECTIONS,
        sizes.0,
    ));
    for &streams in &args.streams {
        eprintln!("GetToken: {streams} stream(s)...");
        let mut sides = (load::Side::default(), load::Side::default());
        for round in 0..args.rounds {
            // Alternate which server goes first, too.
            let tokend_first = round % 2 == 1;
            for tokend_turn in [tokend_first, !tokend_first] {
                let (server, side) = match tokend_turn {
                    true => (&tokend, &mut sides.0),
                    false => (&ceiling, &mut sides.1),
                };
                load::run(generator, server, &client, streams, &timing, ticks, side).await?;
            }
        }
        table.get_token(streams, &mut sides.0, &mut sides.1);
    }
    tokend.stop();
    ceiling.stop();
    Ok(())
}

/// Warm-up and measured window of each round of GetToken and the proxy.
fn timing(args: &Args) -> load::Timing {
    load::Timing {
        warmup: Duration::from_secs_f64((args.seconds / 4.0).min(0.5)),
        measure: Duration::from_secs_f64(args.seconds),
    }
}

/// The machine, the build, and the date.
fn machine(cpus: usize, args: &Args) -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|x| x.1.trim())
        })
        .unwrap_or("unknown CPU");
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .map_or(0.0, |kib: f64| kib / 1024.0 / 1024.0);
    let kernel = read("/proc/sys/kernel/osrelease");
    let profile = if cfg!(debug_assertions) {
        "debug build: figures mean nothing"
    } else {
        "release build"
    };
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    format!(
        "tokend {} ({profile}), {}, {date}\nmachine: {model}, {cpus} CPU(s), {mem_gib:.1} GiB, \
         Linux {}",
        env!("CARGO_PKG_VERSION"),
        args.tokend.display(),
        kernel.trim(),
    )
}
