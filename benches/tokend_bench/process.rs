//! The servers under measurement run as processes of their own, so that what /proc says of them
//! (resident memory, CPU time, context switches) is theirs alone: the tokend binary with a
//! generated config, and the ceiling (this benchmark started again with `--serve-ceiling`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// A running server process; killed when dropped, so no run leaves one behind.
pub struct Server {
    child: Child,
    pub pid: u32,
    pub socket: PathBuf,
    log: PathBuf,
}

/// Which CPUs a server may run on (`taskset -c`), if any are chosen.
pub type Cpus = Option<String>;

/// The CPUs a `taskset -c` list names ("0", "1-3", "0,2-3"), for servers pinned thread by thread
/// in this process.
pub fn cpu_list(list: &str) -> Result<Vec<usize>, String> {
    let bad = || format!("{list:?} is not a CPU list");
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let (from, to) = part.split_once('-').unwrap_or((part, part));
        let from: usize = from.trim().parse().map_err(|_| bad())?;
        let to: usize = to.trim().parse().map_err(|_| bad())?;
        if from > to {
            return Err(bad());
        }
        cpus.extend(from..=to);
    }
    Ok(cpus)
}

impl Server {
    /// Starts `program args` (tokend, or the ceiling) under `taskset` when `cpus` is set, with
    /// the malloc settings tokend is deployed with ([`malloc_tunables`]), stderr to `log`.
    pub fn spawn(
        program: &Path,
        args: &[&std::ffi::OsStr],
        cpus: &Cpus,
        socket: PathBuf,
        log: PathBuf,
    ) -> Result<Server, String> {
        let mut command = match cpus {
            // taskset execs the program: the pid stays the server's.
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(program);
                c
            }
            None => Command::new(program),
        };
        let stderr = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = command
            .args(args)
            .env("NO_COLOR", "1")
            .env("GLIBC_TUNABLES", malloc_tunables())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        Ok(Server {
            pid: child.id(),
            child,
            socket,
            log,
        })
    }

    /// Waits until the socket accepts a gRPC connection.
    pub async fn ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if tokend::cli::ctl::connect(&self.socket).await.is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("server exited with {status}: {}", self.log_tail()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "server did not open {} within {timeout:?}: {}",
                    self.socket.display(),
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    pub fn sample(&self) -> Result<Sample, String> {
        Sample::of(self.pid).map_err(|e| format!("cannot read /proc/{}: {e}", self.pid))
    }

    /// Stops the server with SIGTERM (SIGKILL if it lingers) and waits for it.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = Pid::from_raw(self.pid as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// What /proc says of a process at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_kib: u64,
    /// Peak resident memory so far.
    pub hwm_kib: u64,
    /// Context switches of its live threads: every wake-up is one.
    pub switches: u64,
}

impl Sample {
    pub fn of(pid: u32) -> std::io::Result<Sample> {
        let cpu_ticks = stat_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = |key: &str| status_field(&status, key).unwrap_or(0);
        let mut switches = 0;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let path = task?.path().join("status");
            if let Ok(s) = std::fs::read_to_string(path) {
                switches += status_field(&s, "voluntary_ctxt_switches").unwrap_or(0)
                    + status_field(&s, "nonvoluntary_ctxt_switches").unwrap_or(0);
            }
        }
        Ok(Sample {
            cpu_ticks,
            rss_kib: kib("VmRSS"),
            hwm_kib: kib("VmHWM"),
            switches,
        })
    }
}

/// User plus system CPU time in a `stat` file of /proc, in clock ticks.
fn stat_cpu_ticks(stat: &str) -> u64 {
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    tick(11) + tick(12)
}

/// The CPU time of one thread of this process (`/proc/self/task/TID`: `/proc/TID/stat` would
/// count the whole process), in clock ticks.
pub fn thread_cpu_ticks(tid: u32) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))?;
    Ok(stat_cpu_ticks(&stat))
}

/// The calling thread's id, from `/proc/thread-self` (a link to `PID/task/TID`).
pub fn thread_id() -> std::io::Result<u32> {
    let link = std::fs::read_link("/proc/thread-self")?;
    link.file_name()
        .and_then(|n| n.to_str()?.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("/proc/thread-self is {}", link.display())))
}

fn status_field(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Clock ticks per second, the unit of /proc CPU times.
pub fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Config beyond the clients: lines in every client's table, and tables after them.
#[derive(Default)]
pub struct Extra {
    pub client: String,
    pub tables: String,
}

/// The daemon's config: `clients` clients named `c00000`... against `endpoint`, sharing one
/// secret file, with the given request budget, and `extra`.
pub fn write_config(
    dir: &Path,
    endpoint: &str,
    clients: usize,
    budget: (usize, Duration),
    extra: &Extra,
) -> Result<(PathBuf, PathBuf), String> {
    let socket = dir.join("tokend.sock");
    let secret = dir.join("client.secret");
    let config = dir.join("tokend.toml");
    let io = |e: std::io::Error| format!("{}: {e}", dir.display());
    std::fs::write(&secret, "bench-secret").map_err(io)?;
    // tokend refuses secret files that others may read.
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(io)?;
    let mut text = format!(
        "[server]\nsocket = \"{}\"\nsocket_mode = \"0600\"\n\n[refresh]\n\
         endpoint_concurrency = {}\nendpoint_spacing = \"{}\"\n",
        socket.display(),
        budget.0,
        humantime::format_duration(budget.1),
    );
    for i in 0..clients {
        let _ = write!(
            text,
            "\n[clients.{}]\ntoken_endpoint = \"{endpoint}\"\nclient_id = \"{0}\"\n\
             client_secret_file = \"{}\"\n{}",
            client_name(i),
            secret.display(),
            extra.client,
        );
    }
    text.push_str(&extra.tables);
    std::fs::write(&config, text).map_err(io)?;
    Ok((config, socket))
}

pub fn client_name(i: usize) -> String {
    format!("c{i:05}")
}

/// Starts the tokend binary on a config written by [`write_config`].
pub async fn start_tokend(
    tokend: &Path,
    dir: &Path,
    endpoint: &str,
    clients: usize,
    budget: (usize, Duration),
    cpus: &Cpus,
) -> Result<Server, String> {
    let extra = Extra::default();
    start_tokend_with(tokend, dir, endpoint, clients, budget, cpus, &extra).await
}

/// [`start_tokend`] with `extra` in its config.
pub async fn start_tokend_with(
    tokend: &Path,
    dir: &Path,
    endpoint: &str,
    clients: usize,
    budget: (usize, Duration),
    cpus: &Cpus,
    extra: &Extra,
) -> Result<Server, String> {
    let (config, socket) = write_config(dir, endpoint, clients, budget, extra)?;
    let args = ["serve".as_ref(), "--config".as_ref(), config.as_os_str()];
    let mut server = Server::spawn(tokend, &args, cpus, socket, dir.join("tokend.log"))?;
    server.ready(Duration::from_secs(60)).await?;
    Ok(server)
}

/// The malloc settings every server runs with: those tokend is deployed with
/// (`config/systemd/tokend.service`, and the Containerfile), unless the benchmark's own
/// environment sets `GLIBC_TUNABLES` (to measure others).
pub fn malloc_tunables() -> String {
    std::env::var("GLIBC_TUNABLES").unwrap_or_else(|_| deployed_tunables().to_string())
}

pub fn tunables_overridden() -> bool {
    std::env::var_os("GLIBC_TUNABLES").is_some()
}

fn deployed_tunables() -> &'static str {
    include_str!("../../config/systemd/tokend.service")
        .lines()
        .find_map(|l| l.strip_prefix("Environment=GLIBC_TUNABLES="))
        .expect("config/systemd/tokend.service sets GLIBC_TUNABLES")
}
