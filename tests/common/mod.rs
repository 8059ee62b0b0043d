//! Shared harness for the black-box tests: a real OAuth server (`oidc-provider` under Node),
//! the real `tokend` binary on a temporary Unix socket, and gRPC clients for it; the daemon's
//! parts in the test's own process, for tokio's paused clock ([`in_process`]); and a stand-in
//! for systemd's notify socket ([`notify`]).
//!
//! Missing components fail the test with what to install; nothing is skipped.

#![allow(dead_code)] // Each test file uses a different part of the harness.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use tokend::proto::token_service_client::TokenServiceClient;
use tonic::transport::Channel;

pub mod browser;
pub mod cgroups;
pub mod in_process;
pub mod minter;
pub mod notify;
pub mod resource;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running `oidc-provider` on 127.0.0.1; stopped when dropped (its stdin closes).
pub struct OidcServer {
    child: Child,
    _stdin: ChildStdin,
    pub issuer: String,
    pub token_endpoint: String,
}

impl OidcServer {
    /// Starts the server with `config` (schema at the top of `tests/oidc/server.mjs`).
    pub fn start(config: serde_json::Value) -> OidcServer {
        let dir = repo_root().join("tests/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed: run `npm ci --prefix tests/oidc` (needs Node.js 20+)"
        );
        // About one start in sixty under Node 20 hangs for good inside `new Provider(...)`
        // (its main thread waiting on a lock, before it listens for requests): such a start
        // is killed and tried afresh. A start takes about a second.
        let mut stderr_tail = String::new();
        for _ in 0..3 {
            match Self::try_start(&dir, &config, Duration::from_secs(15)) {
                Ok(server) => return server,
                Err(tail) => stderr_tail = tail,
            }
        }
        panic!("oidc-provider did not print READY in three tries; its stderr ends:\n{stderr_tail}");
    }

    /// One start, waiting `limit` for READY; the end of its stderr when it fails.
    fn try_start(
        dir: &Path,
        config: &serde_json::Value,
        limit: Duration,
    ) -> Result<OidcServer, String> {
        let env = [("OIDC_TEST_CONFIG", config.to_string())];
        let (child, stdin, ready) = spawn_node(&dir.join("server.mjs"), &env, limit)?;
        Ok(OidcServer {
            child,
            _stdin: stdin,
            issuer: ready["issuer"].as_str().unwrap().to_string(),
            token_endpoint: ready["token_endpoint"].as_str().unwrap().to_string(),
        })
    }

    /// Every token request the server has seen: `{client_id, grant_type, at_ms, status, ...}`.
    pub async fn requests(&self) -> Vec<serde_json::Value> {
        let body = tokend::testing::http_client()
            .get(format!("{}/_test/requests", self.issuer))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// Token requests from `client_id` that succeeded.
    pub async fn issued_to(&self, client_id: &str) -> Vec<serde_json::Value> {
        self.requests()
            .await
            .into_iter()
            .filter(|r| r["client_id"] == client_id && r["status"] == 200)
            .collect()
    }
}

/// Runs `node SCRIPT` (on port 0, with `env`) and waits `limit` for its `READY {json}` line:
/// the child, its stdin (which it exits at the end of) and the JSON. The end of its stderr
/// when it does not get ready.
pub fn spawn_node(
    script: &Path,
    env: &[(&str, String)],
    limit: Duration,
) -> Result<(Child, ChildStdin, serde_json::Value), String> {
    // Its stderr goes to a file read back only if it fails to start, to say why.
    let mut stderr = tempfile::tempfile().unwrap();
    let mut child = Command::new("node")
        .arg(script)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("PORT", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr.try_clone().unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `node` ({e}): install Node.js 20+"));
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let ready = rx
        .recv_timeout(limit)
        .ok()
        .and_then(|line| line.strip_prefix("READY ").map(str::to_string))
        .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok());
    let Some(ready) = ready else {
        let _ = child.kill();
        let _ = child.wait();
        let mut text = String::new();
        use std::io::{Read, Seek};
        let _ = stderr.rewind();
        let _ = stderr.read_to_string(&mut text);
        let mut tail: Vec<&str> = text.lines().rev().take(30).collect();
        tail.reverse();
        return Err(tail.join("\n"));
    };
    Ok((child, stdin, ready))
}

impl Drop for OidcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `tokend serve` process on a temporary socket; stopped with SIGTERM when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub log: PathBuf,
}

/// How a test daemon is started beyond its clients.
#[derive(Default)]
pub struct DaemonOptions<'a> {
    /// Further `[server]` keys, as TOML lines.
    pub server: &'a str,
    /// A command the daemon is run under, e.g. `["prlimit", "--nofile=256:256"]`; it must exec
    /// the daemon (keeping its pid).
    pub wrapper: &'a [&'a str],
    /// Extra environment variables for the daemon.
    pub env: &'a [(&'a str, &'a str)],
}

/// Writes a secret file with mode 0600 and returns its path.
pub fn secret_file(dir: &Path, name: &str, secret: &str) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    writeln!(f, "{secret}").unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

impl Daemon {
    /// Starts the daemon with `clients` (TOML `[clients.*]` tables; `{dir}` is replaced by the
    /// daemon's temporary directory) and waits until its socket answers.
    pub async fn start(clients: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, clients).await
    }

    pub async fn start_in(dir: tempfile::TempDir, clients: &str) -> Daemon {
        Self::start_with(dir, &DaemonOptions::default(), clients).await
    }

    /// As [`Daemon::start_in`], with further `[server]` keys (`server`, TOML lines).
    pub async fn start_with_server(dir: tempfile::TempDir, server: &str, clients: &str) -> Daemon {
        let options = DaemonOptions {
            server,
            ..DaemonOptions::default()
        };
        Self::start_with(dir, &options, clients).await
    }

    /// As [`Daemon::start_in`], with extra environment variables for the daemon.
    pub async fn start_in_with_env(
        dir: tempfile::TempDir,
        clients: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        let options = DaemonOptions {
            env,
            ..DaemonOptions::default()
        };
        Self::start_with(dir, &options, clients).await
    }

    /// As [`Daemon::start_in`], with further `[server]` keys and a command to run it under.
    pub async fn start_with(
        dir: tempfile::TempDir,
        options: &DaemonOptions<'_>,
        clients: &str,
    ) -> Daemon {
        let socket = dir.path().join("tokend.sock");
        let log = dir.path().join("tokend.log");
        let config = format!(
            "[server]\nsocket = \"{}\"\n{}\n\n{}",
            socket.display(),
            options.server,
            clients.replace("{dir}", &dir.path().display().to_string())
        );
        let config_path = dir.path().join("tokend.toml");
        std::fs::write(&config_path, config).unwrap();
        let (program, wrapper_args) = match options.wrapper {
            [program, args @ ..] => (*program, args),
            [] => (env!("CARGO_BIN_EXE_tokend"), &[][..]),
        };
        let mut command = Command::new(program);
        if !options.wrapper.is_empty() {
            command.args(wrapper_args).arg(env!("CARGO_BIN_EXE_tokend"));
        }
        let child = command
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "tokend=debug,info")
            .env("NO_COLOR", "1")
            .envs(options.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut daemon = Daemon {
            child: Some(child),
            dir,
            socket,
            log,
        };
        for _ in 0..200 {
            if tokend::cli::ctl::connect(&daemon.socket).await.is_ok() {
                return daemon;
            }
            if let Some(status) = daemon.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("tokend exited with {status}: {}", daemon.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "tokend did not open its socket within 10 s: {}",
            daemon.log_text()
        );
    }

    /// The daemon's process id, for signals and `prlimit --pid` (a wrapper such as `prlimit`
    /// execs it, keeping the id).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon is running").id()
    }

    /// The config file the daemon was started with (rewrite it, then SIGHUP, to reload).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("tokend.toml")
    }

    pub async fn client(&self) -> TokenServiceClient<Channel> {
        tokend::cli::ctl::connect(&self.socket).await.unwrap()
    }

    /// `client`'s entry in ListClients.
    pub async fn status(&self, client: &str) -> tokend::proto::ClientStatus {
        self.client()
            .await
            .list_clients(tokend::proto::ListClientsRequest {})
            .await
            .unwrap()
            .into_inner()
            .clients
            .into_iter()
            .find(|c| c.client == client)
            .unwrap_or_else(|| panic!("no client {client}"))
    }

    /// A raw channel, for the health and reflection services.
    pub async fn channel(&self) -> Channel {
        unix_channel(&self.socket).await
    }

    /// The daemon's resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the `tokend` binary with `args` (plus `--socket`) and returns (status, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_tokend"))
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    /// Stops the daemon with SIGTERM and returns its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        sigterm(child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        panic!("tokend did not stop within 5 s of SIGTERM");
    }
}

fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A child process (a daemon, usually) that is killed when this is dropped, so a failing
/// assertion never leaves it running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A GetToken request for `client`, any validity left, that gives up after 10 s.
pub fn get(client: &str) -> tonic::Request<tokend::proto::GetTokenRequest> {
    let mut r = tonic::Request::new(tokend::proto::GetTokenRequest {
        client: client.into(),
        min_valid_seconds: 0,
    });
    r.set_timeout(Duration::from_secs(10));
    r
}

/// A loopback port that was free a moment ago (for a listener the test must name in advance,
/// such as a redirect URI registered with the OAuth server).
///
/// Taken below Linux's ephemeral range (32768-60999 by default): a port from `bind(:0)` is
/// also what the kernel hands out as the local port of outgoing connections, so in the seconds
/// before the test listens on it, any test's connection could take it. Below the range only
/// another test's pick can collide, and the random start makes that rare.
pub fn free_port() -> u16 {
    const FIRST: u16 = 20_000;
    const COUNT: u16 = 12_000;
    let start = rand::random_range(0..COUNT);
    (0..COUNT)
        .map(|i| FIRST + (start + i) % COUNT)
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("no free loopback port in 20000-31999")
}

/// The claims of a JWT, without verification.
pub fn jwt_claims(token: &str) -> serde_json::Value {
    jws_part(token, 1)
}

/// The protected header of a JWS in compact form (not verified).
pub fn jwt_header(token: &str) -> serde_json::Value {
    jws_part(token, 0)
}

fn jws_part(token: &str, index: usize) -> serde_json::Value {
    use base64::Engine;
    let part = token.split('.').nth(index).expect("a JWS compact token");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// A gRPC channel over the Unix socket at `socket`.
pub async fn unix_channel(socket: &Path) -> Channel {
    let path = socket.to_path_buf();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap()
}

/// Runs `openssl ARGS` in `dir` (the TLS tests make their certificates with it).
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `openssl` ({e}): install OpenSSL's command line tool (Debian: openssl)"
            )
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the first sample line of `series` (name and labels, exactly) in a metrics text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `GET /metrics` on the loopback metrics listener at `port`.
pub async fn scrape(port: u16) -> String {
    tokend::testing::http_client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
