//! tokend as a host service: the systemd units (verify, security exposure), socket activation
//! with `systemd-socket-activate`, the sd_notify sequence read from a datagram socket, reload on
//! SIGHUP (good and broken configs), and per-caller authorization with callers running under
//! different uids, over the Unix socket and TCP.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::notify::NotifySocket;
use common::{OidcServer, eventually, repo_root, secret_file};
use tokend::proto::{GetTokenRequest, ListClientsRequest, WatchTokenRequest};
use tokio::time::Instant;
use tonic::Code;

fn need(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} not found: install systemd (apt-get install systemd)"
    );
}

/// A `tokend serve` (or any command) in a directory of its own; killed when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    async fn wait_log(&self, what: &str, count: usize) {
        eventually(Duration::from_secs(15), what, || async {
            (self.log_text().matches(what).count() >= count).then_some(())
        })
        .await;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, command: &mut Command) -> Proc {
    let log = dir.join(format!("tokend-{}.log", rand::random::<u32>()));
    let child = command
        .env("RUST_LOG", "tokend=debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Proc { child, log }
}

fn serve(config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tokend"));
    c.args(["serve", "--config"]).arg(config);
    c
}

fn provider(ttl: u64, delay_ms: u64, ids: &[&str]) -> OidcServer {
    let clients: Vec<_> = ids
        .iter()
        .map(|id| {
            serde_json::json!({
                "client_id": id, "client_secret": "s3cret",
                "token_endpoint_auth_method": "client_secret_basic",
                "grant_types": ["client_credentials"], "scope": "api:read api:write"
            })
        })
        .collect();
    OidcServer::start(serde_json::json!({
        "accessTokenTtl": ttl, "tokenDelayMs": delay_ms, "clients": clients
    }))
}

fn client(name: &str, idp: &OidcServer, extra: &str) -> String {
    format!(
        "[clients.{name}]\ntoken_endpoint = \"{}\"\nclient_id = \"{name}\"\nclient_secret_file = \"{{dir}}/secret\"\nscope = \"api:read\"\n{extra}\n",
        idp.token_endpoint
    )
}

fn write_config(dir: &Path, server: &str, clients: &str) -> PathBuf {
    let path = dir.join("tokend.toml");
    let text =
        format!("[server]\n{server}\n{clients}").replace("{dir}", &dir.display().to_string());
    std::fs::write(&path, text).unwrap();
    path
}

fn get(client: &str, timeout: Duration) -> tonic::Request<GetTokenRequest> {
    let mut r = tonic::Request::new(GetTokenRequest {
        client: client.into(),
        min_valid_seconds: 0,
    });
    r.set_timeout(timeout);
    r
}

async fn connect(
    socket: &Path,
) -> tokend::proto::token_service_client::TokenServiceClient<tonic::transport::Channel> {
    eventually(Duration::from_secs(10), "the daemon's socket", || async {
        tokend::cli::ctl::connect(socket).await.ok()
    })
    .await
}

/// The container image runs with the malloc settings of the unit (the benchmark measures the
/// unit's): one changed without the other would leave the image unmeasured.
#[test]
fn the_image_has_the_units_malloc_settings() {
    let read = |file: &str| std::fs::read_to_string(repo_root().join(file)).unwrap();
    let setting = |text: &str, prefix: &str| -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::to_string)
    };
    let unit = setting(
        &read("config/systemd/tokend.service"),
        "Environment=GLIBC_TUNABLES=",
    );
    let image = setting(&read("Containerfile"), "ENV GLIBC_TUNABLES=");
    assert!(unit.is_some(), "the unit sets no GLIBC_TUNABLES");
    assert_eq!(unit, image);
}

#[test]
fn units_verify_without_warnings_and_expose_at_most_2() {
    need("systemd-analyze");
    let dir = tempfile::tempdir().unwrap();
    for unit in ["tokend.service", "tokend.socket"] {
        let text = std::fs::read_to_string(repo_root().join("config/systemd").join(unit))
            .unwrap()
            .replace("/usr/local/bin/tokend", env!("CARGO_BIN_EXE_tokend"));
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .args(["tokend.socket", "tokend.service"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "tokend.service"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for tokend.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {report}"));
    assert!(exposure <= 2.0, "exposure {exposure} > 2.0:\n{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_activation_serves_on_the_passed_socket() {
    need("systemd-socket-activate");
    let idp = provider(60, 0, &["app"]);
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "secret", "s3cret");
    let configured = dir.path().join("configured.sock");
    let config = write_config(
        dir.path(),
        &format!("socket = \"{}\"", configured.display()),
        &client("app", &idp, ""),
    );
    let passed = dir.path().join("passed.sock");
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(&passed)
        .args(["-E", "RUST_LOG", "-E", "NO_COLOR"])
        .arg(env!("CARGO_BIN_EXE_tokend"))
        .args(["serve", "--config"])
        .arg(&config);
    let proc = spawn(dir.path(), &mut cmd);
    let mut rpc = connect(&passed).await;
    let token = rpc
        .get_token(get("app", Duration::from_secs(10)))
        .await
        .unwrap()
        .into_inner();
    assert!(!token.access_token.is_empty());
    assert!(
        !configured.exists(),
        "the configured path is not bound when a socket is passed"
    );
    proc.wait_log("socket_activated=true", 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_ready_only_with_tokens_then_watchdog_and_stopping() {
    // Each token request takes 1 s at the provider: READY must wait for both tokens.
    let idp = provider(60, 1000, &["one", "two"]);
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "secret", "s3cret");
    let socket = dir.path().join("tokend.sock");
    let config = write_config(
        dir.path(),
        &format!("socket = \"{}\"", socket.display()),
        &format!("{}{}", client("one", &idp, ""), client("two", &idp, "")),
    );
    let notify = NotifySocket::bind(dir.path());
    let started = Instant::now();
    let mut proc = spawn(
        dir.path(),
        serve(&config)
            .env("NOTIFY_SOCKET", &notify.path)
            .env("WATCHDOG_USEC", "1000000"),
    );
    let (ready_at, ready) = notify.first("READY=1").await;
    assert!(
        ready_at - started >= Duration::from_millis(900),
        "READY before the tokens"
    );
    assert!(ready.contains("STATUS=2/2 clients fresh"), "{ready}");
    // At READY every required client has a token: answered at once.
    let mut rpc = connect(&socket).await;
    for name in ["one", "two"] {
        rpc.get_token(get(name, Duration::from_millis(200)))
            .await
            .unwrap();
    }
    let before_ready: Vec<_> = notify
        .all()
        .into_iter()
        .filter(|(t, _)| *t < ready_at)
        .collect();
    assert!(
        before_ready
            .iter()
            .any(|(_, m)| m.contains("STATUS=starting")),
        "status while starting: {before_ready:?}"
    );

    // WATCHDOG_USEC=1 s: pinged every 0.5 s. A loaded machine can delay pings but not add
    // any, so the test waits for pings however slowly they come, and bounds them only from
    // above by the half-seconds that passed (two more for a ping sent before `from` and
    // received after it).
    let from = Instant::now();
    eventually(Duration::from_secs(30), "4 watchdog pings", || async {
        (notify.count_since(from, "WATCHDOG=1") >= 4).then_some(())
    })
    .await;
    let pings = notify.count_since(from, "WATCHDOG=1");
    let elapsed = from.elapsed();
    assert!(
        pings <= (elapsed.as_secs_f64() / 0.5) as usize + 2,
        "{pings} watchdog pings in {elapsed:?}: more than one per 0.5 s"
    );

    proc.signal("TERM");
    notify.first("STOPPING=1").await;
    eventually(Duration::from_secs(15), "tokend to exit", || {
        let exited = proc.child.try_wait().unwrap().is_some();
        async move { exited.then_some(()) }
    })
    .await;
    // In the order sent: READY, pings, STOPPING, and no ping after it.
    let messages: Vec<String> = notify.all().into_iter().map(|(_, m)| m).collect();
    let position = |what: &str| {
        messages
            .iter()
            .position(|m| m.lines().any(|l| l == what))
            .unwrap()
    };
    let (ready, stopping) = (position("READY=1"), position("STOPPING=1"));
    let pinged = |range: &[String]| range.iter().filter(|m| is_ping(m)).count();
    assert!(
        pinged(&messages[ready..stopping]) >= 4,
        "pings between READY and STOPPING: {messages:?}"
    );
    assert_eq!(
        pinged(&messages[stopping..]),
        0,
        "no ping after STOPPING: {messages:?}"
    );
}

fn is_ping(message: &str) -> bool {
    message.lines().any(|l| l == "WATCHDOG=1")
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_limit_reports_ready_naming_the_clients_without_a_token() {
    let idp = provider(60, 0, &["good"]);
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "secret", "s3cret");
    let socket = dir.path().join("tokend.sock");
    let broken = "[clients.broken]\ntoken_endpoint = \"http://127.0.0.1:1/token\"\nclient_id = \"x\"\nclient_secret_file = \"{dir}/secret\"\n";
    let config = write_config(
        dir.path(),
        &format!(
            "socket = \"{}\"\nstartup_timeout = \"2s\"",
            socket.display()
        ),
        &format!("{}{broken}", client("good", &idp, "")),
    );
    let notify = NotifySocket::bind(dir.path());
    let started = Instant::now();
    let _proc = spawn(
        dir.path(),
        serve(&config).env("NOTIFY_SOCKET", &notify.path),
    );
    let (at, ready) = notify.first("READY=1").await;
    assert!(
        at - started >= Duration::from_millis(1900),
        "waited for the start-up limit"
    );
    assert!(ready.contains("without a token: broken"), "{ready}");
    assert!(ready.contains("1/2 clients fresh"), "{ready}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_applies_the_difference_and_a_broken_config_changes_nothing() {
    let idp = provider(10, 0, &["a", "b", "c", "d"]);
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "secret", "s3cret");
    let socket = dir.path().join("tokend.sock");
    let server = format!("socket = \"{}\"", socket.display());
    let config = write_config(
        dir.path(),
        &server,
        &[
            client("a", &idp, ""),
            client("b", &idp, ""),
            client("c", &idp, ""),
        ]
        .concat(),
    );
    let notify = NotifySocket::bind(dir.path());
    let proc = spawn(
        dir.path(),
        serve(&config).env("NOTIFY_SOCKET", &notify.path),
    );
    let mut rpc = connect(&socket).await;
    let a_before = rpc
        .get_token(get("a", Duration::from_secs(10)))
        .await
        .unwrap()
        .into_inner();
    let c_before = rpc
        .get_token(get("c", Duration::from_secs(10)))
        .await
        .unwrap()
        .into_inner();
    let mut a_stream = rpc
        .watch_token(WatchTokenRequest { client: "a".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        a_stream.message().await.unwrap().unwrap().access_token,
        a_before.access_token
    );

    // Remove b, change c's scope, add d; a is untouched.
    write_config(
        dir.path(),
        &server,
        &[
            client("a", &idp, ""),
            client("c", &idp, "").replace("scope = \"api:read\"", "scope = \"api:read api:write\""),
            client("d", &idp, ""),
        ]
        .concat(),
    );
    proc.signal("HUP");
    proc.wait_log("configuration reloaded", 1).await;
    // systemd hears RELOADING=1 (with the monotonic time it asks for), then READY=1 again.
    let (reloading_at, reloading) = notify.first("RELOADING=1").await;
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let ready_again = eventually(
        Duration::from_secs(5),
        "READY=1 after the reload",
        || async {
            notify
                .all()
                .into_iter()
                .find(|(t, m)| *t >= reloading_at && m.lines().any(|l| l == "READY=1"))
        },
    )
    .await;
    assert!(ready_again.1.contains("STATUS="), "{}", ready_again.1);
    let log = proc.log_text();
    assert!(
        log.contains("added=[\"d\"]")
            && log.contains("removed=[\"b\"]")
            && log.contains("refetched=[\"c\"]"),
        "{log}"
    );
    let a_after = rpc
        .get_token(get("a", Duration::from_secs(10)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        a_after.access_token, a_before.access_token,
        "an untouched client keeps its token"
    );
    let err = rpc
        .get_token(get("b", Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let c_after = rpc
        .get_token(get("c", Duration::from_secs(10)))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(c_after.access_token, c_before.access_token);
    assert_eq!(c_after.scopes, ["api:read", "api:write"]);
    rpc.get_token(get("d", Duration::from_secs(10)))
        .await
        .unwrap();

    // A broken config: logged with file, key and reason; the running one stays.
    write_config(
        dir.path(),
        &server,
        &client("a", &idp, "grant = \"password\""),
    );
    proc.signal("HUP");
    proc.wait_log("reload failed", 1).await;
    let log = proc.log_text();
    assert!(
        log.contains(&format!(
            "{}: clients.a.grant: \"password\" is not a supported grant",
            config.display()
        )),
        "{log}"
    );
    let names: Vec<String> = rpc
        .list_clients(ListClientsRequest {})
        .await
        .unwrap()
        .into_inner()
        .clients
        .into_iter()
        .map(|c| c.client)
        .collect();
    assert_eq!(names, ["a", "c", "d"]);
    rpc.get_token(get("d", Duration::from_secs(2)))
        .await
        .unwrap();

    // The untouched client's stream carried on through both reloads: its next rotation comes.
    let next = tokio::time::timeout(Duration::from_secs(15), a_stream.message())
        .await
        .expect("a rotation on the old stream")
        .unwrap()
        .unwrap();
    assert_ne!(next.access_token, a_before.access_token);
}

/// Runs `tokend ARGS` as uid/gid 65534 (nobody/nogroup) with no supplementary groups.
fn as_nobody(binary: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(binary)
        .args(args)
        .output()
        .expect("setpriv (util-linux) runs a command under another uid");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_get_exactly_what_their_allow_lists_say() {
    need("setpriv");
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "this test starts callers under other uids: run as root"
    );
    let ids = ["for-nobody", "for-root", "for-nogroup", "open", "tcp-ok"];
    let idp = provider(60, 0, &ids);
    let dir = tempfile::tempdir().unwrap();
    // The directory must be reachable by the other uid: the socket and a copy of the binary
    // live here (secrets stay 0600).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = dir.path().join("tokend");
    std::fs::copy(env!("CARGO_BIN_EXE_tokend"), &binary).unwrap();
    secret_file(dir.path(), "secret", "s3cret");
    let socket = dir.path().join("tokend.sock");
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "socket = \"{}\"\nsocket_mode = \"0666\"\ntcp = \"{tcp}\"",
            socket.display()
        ),
        &[
            client("for-nobody", &idp, "allowed_users = [\"nobody\"]"),
            client("for-root", &idp, "allowed_users = [\"0\"]"),
            client("for-nogroup", &idp, "allowed_groups = [\"nogroup\"]"),
            client("open", &idp, ""),
            client(
                "tcp-ok",
                &idp,
                "allowed_users = [\"root\"]\nallow_tcp = true",
            ),
        ]
        .concat(),
    );
    let proc = spawn(dir.path(), &mut serve(&config));
    let mut rpc = connect(&socket).await;
    let s = socket.to_str().unwrap();

    // nobody: its own client, its group's client, the open one; nothing else, not even listed.
    for (name, allowed) in [
        ("for-nobody", true),
        ("for-nogroup", true),
        ("open", true),
        ("for-root", false),
        ("tcp-ok", false),
    ] {
        let (code, out, err) = as_nobody(&binary, &["get", name, "--socket", s]);
        if allowed {
            assert_eq!(code, 0, "nobody gets {name}: {err}");
            assert!(out.trim().len() > 20);
        } else {
            assert_ne!(code, 0, "nobody must not get {name}");
            // Exactly what a name nobody configured gets: no hint that the client exists.
            assert!(
                err.contains(&format!(
                    "NotFound: no client named \"{name}\" is configured"
                )),
                "{err}"
            );
        }
    }
    let (_, status, _) = as_nobody(&binary, &["status", "--socket", s]);
    let listed: Vec<&str> = status
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(listed, ["for-nobody", "for-nogroup", "open"], "{status}");

    // root: only what names root (or nobody's lists exclude it).
    for (name, allowed) in [
        ("for-root", true),
        ("open", true),
        ("tcp-ok", true),
        ("for-nobody", false),
        ("for-nogroup", false),
    ] {
        let r = rpc.get_token(get(name, Duration::from_secs(10))).await;
        match allowed {
            true => assert!(r.is_ok(), "root gets {name}: {r:?}"),
            false => assert_eq!(
                r.unwrap_err().code(),
                Code::NotFound,
                "root must not get {name}"
            ),
        }
    }

    // TCP: no peer credentials, so only the client that opted in.
    let mut over_tcp =
        tokend::proto::token_service_client::TokenServiceClient::connect(format!("http://{tcp}"))
            .await
            .unwrap();
    assert!(
        over_tcp
            .get_token(get("tcp-ok", Duration::from_secs(10)))
            .await
            .is_ok()
    );
    for name in ["open", "for-root"] {
        let err = over_tcp
            .get_token(get(name, Duration::from_secs(10)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{name} over TCP");
    }

    // Audit: grants at debug with uid, pid and fingerprint; denials at warn; never the token.
    let log = proc.log_text();
    assert!(
        log.lines().any(|l| l.contains("DEBUG")
            && l.contains("token handed out")
            && l.contains("uid 65534")
            && l.contains("pid ")
            && l.contains("fingerprint=")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("denied") && l.contains("uid 65534")),
        "{log}"
    );
}

#[test]
fn secret_files_readable_by_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "secret", "s3cret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = write_config(
        dir.path(),
        "",
        "[clients.x]\ntoken_endpoint = \"https://idp.example.com/token\"\nclient_id = \"x\"\nclient_secret_file = \"{dir}/secret\"\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("clients.x.client_secret_file")
            && err.contains("readable by other users (mode 0644)"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_credentials_supply_client_secrets() {
    let idp = provider(60, 0, &["cred"]);
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    secret_file(&credentials, "cred.secret", "s3cret");
    let socket = dir.path().join("tokend.sock");
    let config = write_config(
        dir.path(),
        &format!("socket = \"{}\"", socket.display()),
        &format!(
            "[clients.cred]\ntoken_endpoint = \"{}\"\nclient_id = \"cred\"\nclient_secret_credential = \"cred.secret\"\n",
            idp.token_endpoint
        ),
    );
    let _proc = spawn(
        dir.path(),
        serve(&config).env("CREDENTIALS_DIRECTORY", &credentials),
    );
    let mut rpc = connect(&socket).await;
    rpc.get_token(get("cred", Duration::from_secs(10)))
        .await
        .unwrap();
    // Without LoadCredential= the config names what is missing.
    let out = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["check", "--config"])
        .arg(&config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CREDENTIALS_DIRECTORY is not set"));
}
