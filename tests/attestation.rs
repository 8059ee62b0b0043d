//! Callers told apart by what they are, not only their uid: every caller here is root, and only
//! its systemd unit (its cgroup), its executable or that file's digest decide. Callers are real
//! processes (`tokend get`, started in a cgroup of the test's making), the token endpoint the
//! real oidc-provider. And the attack attestation by pid invites: a caller that connects and
//! exits, its pid handed to a process that matches a rule, in a fresh PID namespace where pids
//! can be reused on demand.

mod common;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::cgroups::{Cgroup, get_in};
use common::{Daemon, KillOnDrop, OidcServer, secret_file};

const SECRET: &str = "attest-secret";

fn idp() -> OidcServer {
    OidcServer::start(serde_json::json!({
        "clients": [
            {"client_id": "attest-client", "client_secret": SECRET,
             "token_endpoint_auth_method": "client_secret_basic",
             "grant_types": ["client_credentials"], "scope": "api:read"}
        ]
    }))
}

/// One client table per (name, allow entries as TOML lines).
fn clients(idp: &OidcServer, tables: &[(&str, &str)]) -> String {
    tables
        .iter()
        .map(|(name, allow)| {
            format!(
                "[clients.{name}]\ntoken_endpoint = \"{}\"\nclient_id = \"attest-client\"\nclient_secret_file = \"{{dir}}/c.secret\"\nscope = \"api:read\"\n{allow}\n",
                idp.token_endpoint
            )
        })
        .collect()
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn callers_of_one_uid_are_told_apart_by_unit_executable_and_digest() {
    let idp = idp();
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "c.secret", SECRET);
    let tokend = std::fs::canonicalize(env!("CARGO_BIN_EXE_tokend")).unwrap();
    // The same program under another name, and one with other bytes.
    let copy = dir.path().join("tokend-copy");
    std::fs::copy(&tokend, &copy).unwrap();
    // A slice of the test's own (a unit is named by the cgroup below the slices).
    let slice = format!("tokend-test-{}.slice", std::process::id());
    let billing = Cgroup::new(&slice, "billing.service");
    let other = Cgroup::new(&slice, "other.service");
    let slice = billing
        .path()
        .trim_end_matches("/billing.service")
        .to_string();
    let config = clients(
        &idp,
        &[
            (
                "billing",
                "[[clients.billing.allow]]\nuser = \"nobody\"\n[[clients.billing.allow]]\nunit = \"billing.service\"\n",
            ),
            (
                "slice",
                &format!("[[clients.slice.allow]]\ncgroup = \"{slice}\"\n"),
            ),
            (
                "by-exe",
                &format!(
                    "[[clients.by-exe.allow]]\nexecutable = \"{}\"\n",
                    tokend.display()
                ),
            ),
            (
                "pinned",
                &format!(
                    "[[clients.pinned.allow]]\nexecutable = \"{}\"\nexecutable_sha256 = \"{}\"\n[[clients.pinned.allow]]\nexecutable = \"{}\"\nexecutable_sha256 = \"{}\"\n",
                    copy.display(),
                    sha256_hex(&tokend),
                    tokend.display(),
                    "0".repeat(64)
                ),
            ),
        ],
    );
    let daemon = Daemon::start_in(dir, &config).await;
    let s = &daemon.socket;

    let (code, out) = get_in(Some(&billing), &tokend, s, "billing");
    assert_eq!(code, 0, "the billing unit may: {out}");
    let (code, out) = get_in(Some(&other), &tokend, s, "billing");
    assert_ne!(code, 0, "another unit of the same uid may not: {out}");
    assert!(out.contains("no client named \"billing\""), "{out}");
    let (code, out) = get_in(None, &tokend, s, "billing");
    assert_ne!(code, 0, "outside any unit: {out}");

    // Both units are below the slice; the test's own cgroup is not.
    assert_eq!(get_in(Some(&other), &tokend, s, "slice").0, 0);
    assert_ne!(get_in(None, &tokend, s, "slice").0, 0);

    assert_eq!(get_in(None, &tokend, s, "by-exe").0, 0);
    let (code, out) = get_in(None, &copy, s, "by-exe");
    assert_ne!(code, 0, "the same bytes under another path: {out}");

    // The copy holds the bytes the digest names; the original is pinned to a digest it lacks.
    let (code, out) = get_in(None, &copy, s, "pinned");
    assert_eq!(code, 0, "{out}");
    assert_ne!(get_in(None, &tokend, s, "pinned").0, 0);
    // Changed in place: its callers no longer match.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&copy)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"\0"))
        .unwrap();
    let (code, out) = get_in(None, &copy, s, "pinned");
    assert_ne!(code, 0, "a changed executable: {out}");

    let log = daemon.log_text();
    assert!(
        log.lines().any(|l| l.contains("token handed out")
            && l.contains("client=billing")
            && l.contains("rule=allow[1]")
            && l.contains("unit billing.service")),
        "the audit line names the entry that matched and the caller's unit:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("denied") && l.contains("client=billing")),
        "{log}"
    );
}

/// Set by the test below for the copy of itself it runs in a fresh PID namespace.
const IN_NAMESPACE: &str = "TOKEND_TEST_IN_PID_NAMESPACE";

/// The attack: a process connects and passes the connection on, then exits; its pid is given
/// to a process the client's rule admits (`sleep`); the connection is then used. tokend must
/// see the dead connector, never the new holder of its pid.
#[test]
fn a_reused_pid_is_never_attested_as_the_new_process() {
    if std::env::var_os(IN_NAMESPACE).is_some() {
        return tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(reuse_in_this_namespace());
    }
    let unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_reused_pid_is_never_attested_as_the_new_process",
            "--nocapture",
        ])
        .env(IN_NAMESPACE, "1")
        .output()
        .expect("unshare (util-linux) runs this test in a fresh PID namespace: install util-linux");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&unshare.stdout),
        String::from_utf8_lossy(&unshare.stderr)
    );
    assert!(
        unshare.status.success() && out.contains("1 passed"),
        "in the PID namespace:\n{out}"
    );
}

/// Python: connect to tokend, print our pid and the connection's descriptor (which the test
/// takes with `pidfd_getfd`), and exit when stdin closes.
const CONNECT: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
print(os.getpid(), s.fileno(), flush=True)
sys.stdin.read()
"#;

async fn reuse_in_this_namespace() {
    let idp = idp();
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "c.secret", SECRET);
    let sleep = std::fs::canonicalize(which("sleep")).unwrap();
    let python = real_python();
    let config = clients(
        &idp,
        &[
            (
                "sleepers",
                &format!(
                    "[[clients.sleepers.allow]]\nexecutable = \"{}\"\n",
                    sleep.display()
                ),
            ),
            (
                "pythons",
                &format!(
                    "[[clients.pythons.allow]]\nexecutable = \"{}\"\n",
                    python.display()
                ),
            ),
        ],
    );
    let daemon = Daemon::start_in(dir, &config).await;

    // The control: a connector still alive is attested as what it is.
    let (held, mut holder, _) = take_connection(&python, &daemon.socket);
    let mut rpc = tokend::proto::token_service_client::TokenServiceClient::new(channel(held).await);
    let token = rpc.get_token(common::get("pythons")).await;
    assert!(token.is_ok(), "a live python caller: {token:?}");
    drop(holder.0.stdin.take());
    holder.0.wait().unwrap();

    // Connected while tokend cannot accept, so that the connector is gone by the accept.
    signal(daemon.pid(), nix::sys::signal::Signal::SIGSTOP);
    let (passed, mut connector, pid) = take_connection(&python, &daemon.socket);
    drop(connector.0.stdin.take());
    connector.0.wait().unwrap();
    let successor = reuse_pid(pid, &sleep);
    signal(daemon.pid(), nix::sys::signal::Signal::SIGCONT);

    let mut rpc =
        tokend::proto::token_service_client::TokenServiceClient::new(channel(passed).await);
    let refused = rpc.get_token(common::get("sleepers")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    drop(successor);
    let log = daemon.log_text();
    assert!(
        log.lines().any(|l| l.contains("denied")
            && l.contains("client=sleepers")
            && l.contains(&format!(
                "pid {pid} (no attributes: the caller's process has exited)"
            ))),
        "the denial says why:\n{log}"
    );
}

/// The real program behind `python3` (which may be a wrapper script, as pyenv's shims are).
fn real_python() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable))",
        ])
        .output()
        .expect("python3 is needed (install Python 3)");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn which(program: &str) -> PathBuf {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{program} not found: install it");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

/// A python process connected to `socket`, holding the connection until its stdin closes, and
/// a copy of that connection taken from it (as its own descriptor, `pidfd_getfd`), and its pid.
fn take_connection(python: &Path, socket: &Path) -> (OwnedFd, KillOnDrop, i32) {
    let mut child = Command::new(python)
        .arg("-c")
        .arg(CONNECT)
        .arg(socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let mut fields = line.split_whitespace().map(|f| f.parse::<i32>().unwrap());
    let (pid, fd) = (fields.next().unwrap(), fields.next().unwrap());
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::PidfdFlags::empty(),
    )
    .unwrap();
    let conn = rustix::process::pidfd_getfd(&pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
        .expect("pidfd_getfd needs root (PTRACE_MODE_ATTACH) over the connector");
    (conn, KillOnDrop(child), pid)
}

/// Makes the next process of this PID namespace get `pid`, and starts `program` (`sleep`) in it.
fn reuse_pid(pid: i32, program: &Path) -> KillOnDrop {
    std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
        .expect("writing ns_last_pid needs root in a fresh PID namespace");
    let child = Command::new(program).arg("60").spawn().unwrap();
    assert_eq!(child.id() as i32, pid, "the pid was not reused");
    KillOnDrop(child)
}

async fn channel(fd: OwnedFd) -> tonic::transport::Channel {
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    std_stream.set_nonblocking(true).unwrap();
    let stream = std::sync::Mutex::new(Some(tokio::net::UnixStream::from_std(std_stream).unwrap()));
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let stream = stream.lock().unwrap().take();
            async move {
                let stream = stream
                    .ok_or_else(|| std::io::Error::other("the passed connection is used once"))?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap()
}
