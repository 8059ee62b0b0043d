//! Secret files that fight back: a FIFO where a secret was (or a file on a hung mount) must fail
//! its own client with a clear error and never stall anyone else, a reload, the start or
//! `tokend check`; running out of descriptors is a condition of the moment, not an operator's
//! problem; and a secret is followed through symlinks only where systemd puts them, and must
//! belong to root or tokend's user.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokend::proto::{self, GetTokenRequest, ListClientsRequest};

use crate::common::{Daemon, eventually, secret_file};
use crate::fault::{FaultEndpoint, Reply};

/// How long a GetToken may take on a daemon that is not wedged: generous for a loaded CI
/// machine, far below "never".
const ANSWER_BOUND: Duration = Duration::from_secs(5);

fn client_toml(name: &str, endpoint: &str, secret: &Path) -> String {
    // client_secret_post puts the client id in the body, where the endpoint's record shows it.
    format!(
        "[clients.{name}]\ntoken_endpoint = \"{endpoint}\"\nclient_id = \"{name}\"\nauth_method = \"post\"\nclient_secret_file = \"{}\"\n\n",
        secret.display()
    )
}

/// Replaces `path` by a FIFO that nobody ever writes to (renamed over it, as an attacker with
/// write access to the directory, or an operator's mistake, would leave it).
fn plant_fifo(path: &Path) {
    let tmp = path.with_extension("fifo-tmp");
    nix::unistd::mkfifo(&tmp, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A GetToken over a new connection, which must be accepted and answered within `bound`.
async fn get_within(daemon: &Daemon, client: &str, bound: Duration) -> proto::Token {
    let answer = tokio::time::timeout(bound, async {
        tokend::cli::ctl::connect(&daemon.socket)
            .await
            .unwrap()
            .get_token(GetTokenRequest {
                client: client.into(),
                min_valid_seconds: 0,
            })
            .await
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "GetToken({client}) was not answered within {bound:?}: the daemon is wedged\n{}",
            daemon.log_text()
        )
    });
    answer.unwrap().into_inner()
}

async fn statuses(daemon: &Daemon) -> Vec<proto::ClientStatus> {
    tokio::time::timeout(ANSWER_BOUND, async {
        daemon
            .client()
            .await
            .list_clients(ListClientsRequest {})
            .await
            .unwrap()
            .into_inner()
            .clients
    })
    .await
    .expect("ListClients answers")
}

/// Token requests the endpoint saw from `client_id` (client_secret_post: its secret follows).
fn requests_from(endpoint: &FaultEndpoint, client_id: &str) -> usize {
    let needle = format!("client_id={client_id}&");
    endpoint
        .seen()
        .iter()
        .filter(|s| s.body.contains(&needle))
        .count()
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_secrets_fail_their_own_clients_and_never_wedge_the_daemon() {
    let endpoint = FaultEndpoint::start(Reply::token("short-lived", 2)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut clients = String::new();
    let mut secrets = Vec::new();
    for name in ["a", "b", "c"] {
        let secret = secret_file(dir.path(), &format!("{name}.secret"), "s3cret");
        clients.push_str(&client_toml(name, &endpoint.url, &secret));
        secrets.push(secret);
    }
    // As many workers as FIFO clients: on a daemon that reads secrets on its workers, the two
    // FIFOs hold every one of them.
    let daemon = Daemon::start_in_with_env(dir, &clients, &[("TOKIO_WORKER_THREADS", "2")]).await;
    for name in ["a", "b", "c"] {
        get_within(&daemon, name, Duration::from_secs(15)).await;
    }
    plant_fifo(&secrets[0]);
    plant_fifo(&secrets[1]);
    let before = requests_from(&endpoint, "c");
    // The tokens live 2 s, so every client refreshes about every 1.5 s: a and b hit their FIFO
    // at once, while c must go on refreshing and answering.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        get_within(&daemon, "c", ANSWER_BOUND).await;
        let failed = statuses(&daemon)
            .await
            .into_iter()
            .filter(|s| s.client != "c" && s.last_error.contains("a FIFO, not a regular file"))
            .count();
        if failed == 2 && requests_from(&endpoint, "c") >= before + 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "c did not keep refreshing, or a and b did not report their FIFOs: {:?}\n{}",
            statuses(&daemon).await,
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = statuses(&daemon).await;
    let a = status.iter().find(|s| s.client == "a").unwrap();
    assert!(
        a.last_error.contains(&secrets[0].display().to_string()),
        "the error names the file: {a:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_onto_a_fifo_keeps_the_running_config_and_the_daemon_answering() {
    let endpoint = FaultEndpoint::start(Reply::token("long-lived", 3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "a.secret", "s3cret");
    let other = secret_file(dir.path(), "b.secret", "s3cret");
    let mut daemon = Daemon::start_in(dir, &client_toml("a", &endpoint.url, &secret)).await;
    let token = get_within(&daemon, "a", Duration::from_secs(15)).await;

    let fifo = daemon.dir.path().join("new.secret");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let config = std::fs::read_to_string(daemon.config_path()).unwrap();
    let config = config.replace(&secret.display().to_string(), &fifo.display().to_string())
        + &client_toml("b", &endpoint.url, &other);
    std::fs::write(daemon.config_path(), config).unwrap();
    signal(daemon.pid(), "HUP");

    eventually(Duration::from_secs(15), "the reload to fail", || async {
        // New connections are accepted and answered all along.
        assert_eq!(
            get_within(&daemon, "a", ANSWER_BOUND).await.access_token,
            token.access_token
        );
        daemon.log_text().contains("reload failed").then_some(())
    })
    .await;
    let log = daemon.log_text();
    assert!(log.contains("a FIFO, not a regular file"), "{log}");
    let names: Vec<String> = statuses(&daemon)
        .await
        .into_iter()
        .map(|s| s.client)
        .collect();
    assert_eq!(names, ["a"], "the running configuration stays in effect");
    // SIGTERM is heard (stop() fails the test after 5 s).
    assert_eq!(daemon.stop(), Some(0));
}

/// Runs the `tokend` binary and waits at most `bound` for it to exit: (code, stderr).
fn run_bounded(
    args: &[&str],
    config: &Path,
    env: &[(&str, &Path)],
    bound: Duration,
) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(args)
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + bound;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tokend {args:?} did not exit within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code().unwrap_or(-1), stderr)
}

#[test]
fn check_and_serve_with_a_fifo_secret_exit_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("secret");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let config = dir.path().join("tokend.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nsocket = \"{}\"\n\n{}",
            dir.path().join("tokend.sock").display(),
            client_toml("a", "https://idp.example.com/token", &fifo)
        ),
    )
    .unwrap();
    for command in ["check", "serve"] {
        let (code, stderr) = run_bounded(&[command], &config, &[], Duration::from_secs(15));
        assert_eq!(code, 78, "{command}: {stderr}");
        assert!(
            stderr.contains("clients.a.client_secret_file")
                && stderr.contains("a FIFO, not a regular file"),
            "{command}: {stderr}"
        );
    }
}

/// The daemon's soft limit on open files.
fn soft_nofile(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().to_string()
}

fn set_soft_nofile(pid: u32, soft: &str) {
    let status = Command::new("prlimit")
        .args([
            "--pid".to_string(),
            pid.to_string(),
            format!("--nofile={soft}:"),
        ])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_is_transient_not_an_operator_error() {
    let endpoint = FaultEndpoint::start(Reply::token("short-lived", 2)).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "secret", "s3cret");
    secret_file(dir.path(), "rt.token", "rt-1");
    let clients = format!(
        "{}{}grant = \"refresh_token\"\nrefresh_token_file = \"{{dir}}/rt.token\"\n",
        client_toml("cc", &endpoint.url, &secret),
        client_toml("rt", &endpoint.url, &secret),
    );
    let daemon = Daemon::start_in(dir, &clients).await;
    for name in ["cc", "rt"] {
        get_within(&daemon, name, Duration::from_secs(15)).await;
    }
    // Below the descriptors it holds, the daemon can open nothing more: what callers holding
    // every descriptor (or a leak) look like to the refresh that falls due.
    let pid = daemon.pid();
    let soft = soft_nofile(pid);
    set_soft_nofile(pid, "3");
    let failed = |client: &str| {
        let log = daemon.log_text();
        let tag = format!("client={client}");
        log.lines()
            .any(|l| l.contains(&tag) && l.contains("os error 24"))
    };
    let waited = tokio::time::timeout(Duration::from_secs(15), async {
        while !(failed("cc") && failed("rt")) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    set_soft_nofile(pid, &soft);
    assert!(
        waited.is_ok(),
        "no EMFILE failure seen:\n{}",
        daemon.log_text()
    );
    let log = daemon.log_text();
    assert!(
        !log.contains("operator action needed") && !log.contains("authorization required"),
        "EMFILE was taken for bad credentials:\n{log}"
    );
    // Backoff, not operator_retry (5 minutes): both clients are refreshed within seconds.
    let (cc, rt) = (
        requests_from(&endpoint, "cc"),
        requests_from(&endpoint, "rt"),
    );
    eventually(
        Duration::from_secs(20),
        "both clients to refresh again",
        || async {
            (requests_from(&endpoint, "cc") > cc && requests_from(&endpoint, "rt") > rt)
                .then_some(())
        },
    )
    .await;
    for status in statuses(&daemon).await {
        assert_ne!(
            status.state,
            proto::ClientState::NeedsOperator as i32,
            "{status:?}"
        );
        assert_ne!(
            status.state,
            proto::ClientState::ReauthorizationRequired as i32,
            "{status:?}"
        );
    }
}

/// A config whose client `a` takes its secret as `source` (a TOML line).
fn config_with(dir: &Path, source: &str) -> PathBuf {
    let config = dir.join("tokend.toml");
    std::fs::write(
        &config,
        format!(
            "[clients.a]\ntoken_endpoint = \"https://idp.example.com/token\"\nclient_id = \"a\"\n{source}\n"
        ),
    )
    .unwrap();
    config
}

#[test]
fn secret_symlinks_are_followed_only_where_no_one_else_could_have_placed_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("store")).unwrap();
    let target = secret_file(&root.join("store"), "api", "s3cret");
    let creds = root.join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::os::unix::fs::symlink(&target, creds.join("api")).unwrap();
    // `root` is like /tmp: anyone may place a link in it.
    std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    std::os::unix::fs::symlink(&target, root.join("outside-link")).unwrap();
    // `store` is writable by tokend's user alone: a link there is the operator's.
    std::os::unix::fs::symlink(&target, root.join("store/link")).unwrap();
    let open = secret_file(root, "open", "s3cret");
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let file = |p: &Path| format!("client_secret_file = \"{}\"", p.display());
    let cases: &[(String, Option<&str>)] = &[
        // systemd's credentials may be symlinks.
        ("client_secret_credential = \"api\"".into(), None),
        (file(&creds.join("api")), None),
        // So may a link in a directory only root and tokend's user can write.
        (file(&root.join("store/link")), None),
        // Anywhere else a symlink is refused...
        (file(&root.join("outside-link")), Some("is a symbolic link")),
        // ...also when `..` walks out of the credentials directory...
        (
            file(&creds.join("../outside-link")),
            Some("is a symbolic link"),
        ),
        // ...where the rules on modes apply again...
        (
            file(&creds.join("../open")),
            Some("readable by other users"),
        ),
        // ...and a credential name cannot be the way out.
        (
            "client_secret_credential = \"..\"".into(),
            Some("is not a credential name"),
        ),
    ];
    for (source, refused) in cases {
        let config = config_with(root, source);
        let (code, stderr) = run_bounded(
            &["check"],
            &config,
            &[("CREDENTIALS_DIRECTORY", &creds)],
            Duration::from_secs(15),
        );
        match refused {
            None => assert_eq!(code, 0, "{source}: {stderr}"),
            Some(reason) => {
                assert_eq!(code, 78, "{source}: {stderr}");
                assert!(
                    stderr.contains(reason),
                    "{source}: want {reason:?}: {stderr}"
                );
            }
        }
    }
}

#[test]
fn a_secret_owned_by_another_user_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "secret", "s3cret");
    let config = config_with(
        dir.path(),
        &format!("client_secret_file = \"{}\"", secret.display()),
    );
    let (code, stderr) = run_bounded(&["check"], &config, &[], Duration::from_secs(15));
    assert_eq!(code, 0, "owned by root (tokend's user here): {stderr}");
    // nobody's file, mode 0600: nobody could have put anything there.
    std::os::unix::fs::chown(&secret, Some(65534), Some(65534)).unwrap();
    let (code, stderr) = run_bounded(&["check"], &config, &[], Duration::from_secs(15));
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("owned by uid 65534"), "{stderr}");
}
