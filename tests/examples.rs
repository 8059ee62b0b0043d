//! The example clients in `examples/` (Python with grpcio, Node with @grpc/grpc-js, the shell with
//! `tokend get`) against the real daemon and a real OAuth server issuing 3-second tokens: each
//! prints a token the daemon handed out, watches rotations without printing a token, and fails
//! with a clear message and exit code 1 for an unknown client or a missing socket.

mod common;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use common::{Daemon, OidcServer, eventually, repo_root, secret_file};
use sha2::{Digest, Sha256};
use tokend::proto::{Token, WatchTokenRequest};
use tokio_stream::StreamExt;

/// Rotations each watch example waits for: about 2 s apart with 3-second tokens.
const ROTATIONS: usize = 2;
/// Longest any example may run before the test gives up on it.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// A provider issuing 3-second tokens, the daemon serving one client, `app`, from it, and every
/// token the daemon published since.
struct Setup {
    _idp: OidcServer,
    daemon: Daemon,
    published: Arc<Mutex<Vec<Token>>>,
}

impl Setup {
    async fn start() -> Setup {
        let idp = OidcServer::start(serde_json::json!({
            "accessTokenTtl": 3,
            "clients": [{"client_id": "app-client", "client_secret": "app-s3cret",
                         "token_endpoint_auth_method": "client_secret_post",
                         "grant_types": ["client_credentials"], "scope": "api:read"}]
        }));
        let dir = tempfile::tempdir().unwrap();
        secret_file(dir.path(), "app.secret", "app-s3cret");
        let daemon = Daemon::start_in(
            dir,
            &format!(
                "[clients.app]\ntoken_endpoint = \"{}\"\nclient_id = \"app-client\"\n\
                 client_secret_file = \"{{dir}}/app.secret\"\nauth_method = \"post\"\n",
                idp.token_endpoint
            ),
        )
        .await;
        // WatchToken sees every token the daemon publishes, so whatever an example printed must
        // be among these.
        let mut stream = daemon
            .client()
            .await
            .watch_token(WatchTokenRequest {
                client: "app".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let published = Arc::new(Mutex::new(Vec::new()));
        let sink = published.clone();
        tokio::spawn(async move {
            while let Some(Ok(token)) = stream.next().await {
                sink.lock().unwrap().push(token);
            }
        });
        Setup {
            _idp: idp,
            daemon,
            published,
        }
    }

    /// The published token `matches` picks, waiting for it a little: an example may get a new
    /// token from the daemon before the recording stream does.
    async fn published(&self, what: &str, matches: impl Fn(&Token) -> bool) -> Token {
        let (tokens, matches) = (&self.published, &matches);
        eventually(Duration::from_secs(10), what, || async move {
            tokens.lock().unwrap().iter().find(|t| matches(t)).cloned()
        })
        .await
    }

    fn assert_no_token_in(&self, output: &str) {
        for token in self.published.lock().unwrap().iter() {
            assert!(
                !output.contains(&token.access_token),
                "a token was printed: {output}"
            );
        }
    }
}

/// One language's pair of examples, run as `INTERPRETER SCRIPT CLIENT [--count N]`.
struct Example {
    interpreter: PathBuf,
    /// What to install when the interpreter cannot be run.
    install: &'static str,
    get: PathBuf,
    watch: PathBuf,
    /// `PATH` for the examples, when it must differ from the test's.
    path: Option<OsString>,
    /// Whether the watch example prints each token's expiry.
    prints_expiry: bool,
}

impl Example {
    fn command(&self, script: &Path, socket: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.interpreter);
        cmd.arg(script).args(args).env("TOKEND_SOCKET", socket);
        if let Some(path) = &self.path {
            cmd.env("PATH", path);
        }
        cmd
    }

    async fn run(&self, script: &Path, socket: &Path, args: &[&str]) -> Output {
        let what = format!("{} {}", self.interpreter.display(), script.display());
        run(&mut self.command(script, socket, args), &what, self.install).await
    }

    /// The get example prints the current token; both examples fail clearly.
    async fn check_get_and_failures(&self, s: &Setup) {
        let socket = &s.daemon.socket;
        let out = self.run(&self.get, socket, &["app"]).await;
        let stdout = success(&out, &self.get);
        let printed = stdout.strip_suffix('\n').expect("one line");
        s.published("the printed token among the published ones", |t| {
            t.access_token == printed
        })
        .await;

        let missing = s.daemon.dir.path().join("missing.sock");
        for script in [&self.get, &self.watch] {
            let out = self.run(script, socket, &["no-such-client"]).await;
            let stderr = failure(&out, script);
            assert!(
                stderr.contains(r#"no client named "no-such-client""#),
                "{}: {stderr}",
                script.display()
            );
            let out = self.run(script, &missing, &["app"]).await;
            let stderr = failure(&out, script);
            assert!(
                stderr.contains(&missing.display().to_string()),
                "{}: {stderr}",
                script.display()
            );
        }
    }

    /// The watch example prints the current token, then `ROTATIONS` new ones, and stops.
    async fn check_watch(&self, s: &Setup) {
        let count = ROTATIONS.to_string();
        let out = self
            .run(&self.watch, &s.daemon.socket, &["app", "--count", &count])
            .await;
        let stdout = success(&out, &self.watch);
        s.assert_no_token_in(&stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), ROTATIONS + 1, "{stdout}");
        let mut seen = Vec::new();
        for (i, line) in lines.into_iter().enumerate() {
            let prefix = if i == 0 { "current" } else { "rotated" };
            let rest = line
                .strip_prefix(prefix)
                .and_then(|r| r.strip_prefix(" token sha256:"))
                .unwrap_or_else(|| panic!("line {i} is not \"{prefix} token sha256:...\": {line}"));
            let (print, expiry) = match rest.split_once(" expires ") {
                Some((print, expiry)) => (print, Some(expiry)),
                None => (rest, None),
            };
            assert_eq!(expiry.is_some(), self.prints_expiry, "{line}");
            assert!(!seen.contains(&print), "token repeated: {stdout}");
            seen.push(print);
            let token = s
                .published(
                    &format!("a published token with fingerprint {print}"),
                    |t| fingerprint(&t.access_token) == print,
                )
                .await;
            if let Some(expiry) = expiry {
                assert_eq!(expiry, rfc3339(&token), "{line}");
            }
        }
    }
}

/// The virtualenv's Python (scripts/test installs examples/python/requirements.txt into it).
fn python() -> PathBuf {
    PathBuf::from(std::env::var("TOKEND_TEST_PYTHON").unwrap_or_else(|_| "python3".into()))
}

/// Runs `cmd` to completion (killed after `RUN_LIMIT`); `install` says what to install when it
/// cannot be started.
async fn run(cmd: &mut Command, what: &str, install: &str) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what} ({e}): {install}"));
    let pid = child.id();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(RUN_LIMIT, output).await {
        Ok(output) => output.unwrap().unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{what} did not finish within {RUN_LIMIT:?}");
        }
    }
}

fn success(out: &Output, script: &Path) -> String {
    assert!(
        out.status.success(),
        "{} failed ({}): {}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Checks the example failed with exit code 1 and printed nothing, and returns its stderr.
fn failure(out: &Output, script: &Path) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}: {stderr}", script.display());
    assert!(out.stdout.is_empty(), "{}", script.display());
    stderr
}

/// The first 8 hex digits of the token's SHA-256, as tokend logs it and the examples print it.
fn fingerprint(token: &str) -> String {
    format!("{:x}", Sha256::digest(token.as_bytes()))[..8].to_string()
}

/// The token's expiry as the examples print it: RFC 3339, whole seconds, UTC.
fn rfc3339(token: &Token) -> String {
    let seconds = token.expires_at.as_ref().expect("expires_at").seconds;
    let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap());
    humantime::format_rfc3339_seconds(at).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn python_examples() {
    let dir = repo_root().join("examples/python");
    let install = "install Python 3.11+; scripts/test makes a virtualenv with \
                   examples/python/requirements.txt and points TOKEND_TEST_PYTHON at it";
    let mut generate = Command::new("bash");
    generate
        .arg(dir.join("generate.sh"))
        .env("PYTHON", python());
    let out = run(
        &mut generate,
        "bash examples/python/generate.sh",
        "install bash",
    )
    .await;
    assert!(
        out.status.success(),
        "examples/python/generate.sh failed: run `pip install -r examples/python/requirements.txt` \
         (scripts/test does, into its virtualenv): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let example = Example {
        interpreter: python(),
        install,
        get: dir.join("get_token.py"),
        watch: dir.join("watch_token.py"),
        path: None,
        prints_expiry: true,
    };
    let s = Setup::start().await;
    example.check_get_and_failures(&s).await;
    example.check_watch(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_examples() {
    let dir = repo_root().join("examples/node");
    assert!(
        dir.join("node_modules/@grpc/grpc-js").is_dir()
            && dir.join("node_modules/@grpc/proto-loader").is_dir(),
        "the Node example's packages are not installed: run `npm ci --prefix examples/node` \
         (needs Node.js 20+; scripts/test does it)"
    );
    let example = Example {
        interpreter: "node".into(),
        install: "install Node.js 20+",
        get: dir.join("get-token.js"),
        watch: dir.join("watch-token.js"),
        path: None,
        prints_expiry: true,
    };
    let s = Setup::start().await;
    example.check_get_and_failures(&s).await;
    example.check_watch(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_examples() {
    let dir = repo_root().join("examples/shell");
    // The examples call `tokend`: the binary under test, first on PATH.
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_tokend")).parent().unwrap();
    let path = std::env::join_paths(std::iter::once(bin_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let example = Example {
        interpreter: "bash".into(),
        install: "install bash (and coreutils and curl, which the examples use)",
        get: dir.join("get-token.sh"),
        watch: dir.join("watch.sh"),
        path: Some(path),
        prints_expiry: false,
    };
    let s = Setup::start().await;
    example.check_get_and_failures(&s).await;
    example.check_watch(&s).await;

    // With a URL, get-token.sh calls it with curl and the token as a Bearer token.
    let curl = run(
        Command::new("curl").arg("--version"),
        "curl",
        "install curl",
    )
    .await;
    assert!(curl.status.success(), "curl --version failed: install curl");
    let (url, request) = http_server_once();
    let out = example
        .run(&example.get, &s.daemon.socket, &["app", &url])
        .await;
    let stdout = success(&out, &example.get);
    assert_eq!(stdout, "hello");
    let request = request.join().unwrap();
    let sent = request
        .lines()
        .find_map(|l| l.strip_prefix("Authorization: Bearer "))
        .unwrap_or_else(|| panic!("no Bearer token in the request: {request:?}"));
    s.published("the token curl sent among the published ones", |t| {
        t.access_token == sent
    })
    .await;
}

/// An HTTP server on 127.0.0.1 answering one request with "hello": its URL, and a handle that
/// yields the request's head.
fn http_server_once() -> (String, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/api", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(&stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim_end().is_empty() {
                break;
            }
            head.push_str(line.trim_end());
            head.push('\n');
        }
        (&stream)
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
            .unwrap();
        head
    });
    (url, handle)
}
