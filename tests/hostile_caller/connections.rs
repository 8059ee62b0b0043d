//! Idle-connection floods and connections that never start: a socket user (uid 65534 through
//! `setpriv`) opens more connections than tokend's descriptor limit allows, or connections that
//! never finish the HTTP/2 handshake or never send a request. tokend closes the ones over its
//! caps at once, does not spin, keeps serving other uids and keeps refreshing; it advertises a
//! stream cap and refuses oversized requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    Daemon, DaemonOptions, KillOnDrop, OidcServer, eventually, free_port, secret_file,
};
use tokend::proto::{GetTokenRequest, RefreshTokenRequest, WatchTokenRequest};
use tonic::Code;

/// Tokens live this long, so a refresh falls due during every test.
const TTL: u64 = 4;
const SECRET: &str = "flood-s3cret";
/// The attacker, as nobody.
const ATTACKER: u32 = 65534;
/// A well-behaved caller of another unprivileged uid.
const NEIGHBOUR: u32 = 65533;

/// The attacker: opens N connections to a Unix socket (sending each the HTTP/2 preface and an
/// empty SETTINGS, so no handshake timeout applies) or to HOST:PORT (sending nothing), and holds
/// them idle; after a pause it reports how many the daemon has closed, then holds the rest until
/// its stdin closes.
const FLOOD: &str = r#"
import socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
if ":" in path:
    host, port = path.rsplit(":", 1)
    family, addr, hello = socket.AF_INET, (host, int(port)), b""
else:
    family, addr = socket.AF_UNIX, path
socks, failed = [], 0
for _ in range(n):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(addr)
        s.sendall(hello)
        socks.append(s)
    except TimeoutError:
        # The listen backlog is full: the rest would wait as long.
        s.close()
        failed = n - len(socks)
        break
    except OSError:
        failed += 1
        s.close()
time.sleep(1)
closed = 0
for s in socks:
    s.setblocking(False)
    try:
        while True:
            if s.recv(65536) == b"":
                closed += 1
                break
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
print("OPEN", len(socks) - closed, "CLOSED", closed + failed, flush=True)
sys.stdin.read()
"#;

fn provider() -> OidcServer {
    OidcServer::start(serde_json::json!({
        "accessTokenTtl": TTL,
        "clients": [{
            "client_id": "flood-client", "client_secret": SECRET,
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["client_credentials"], "scope": "api:read"
        }]
    }))
}

/// A daemon with one client (`fast`) anyone may read, on a socket every uid can reach.
async fn daemon(idp: &OidcServer, server: &str, wrapper: &[&str]) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    secret_file(dir.path(), "fast.secret", SECRET);
    let clients = format!(
        r#"
[clients.fast]
token_endpoint = "{}"
client_id = "flood-client"
client_secret_file = "{{dir}}/fast.secret"
scope = "api:read"
"#,
        idp.token_endpoint
    );
    let server = format!("socket_mode = \"0666\"\n{server}");
    let options = DaemonOptions {
        server: &server,
        wrapper,
        ..DaemonOptions::default()
    };
    Daemon::start_with(dir, &options, &clients).await
}

/// Runs [`FLOOD`] as `uid` with `n` connections to the daemon's socket; returns the process and
/// (open, closed).
fn flood(daemon: &Daemon, uid: u32, n: usize) -> (KillOnDrop, usize, usize) {
    flood_to(daemon, uid, n, &daemon.socket.display().to_string())
}

fn flood_to(daemon: &Daemon, uid: u32, n: usize, target: &str) -> (KillOnDrop, usize, usize) {
    let script = daemon.dir.path().join(format!("flood-{uid}.py"));
    std::fs::write(&script, FLOOD).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut child = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", "/usr/bin/python3"])
        .arg(&script)
        .arg(target)
        .arg(n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv and /usr/bin/python3 are needed");
    let stdout = child.stdout.take().unwrap();
    let attacker = KillOnDrop(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the attacker reports within 60 s");
    let words: Vec<&str> = line.split_whitespace().collect();
    match words[..] {
        ["OPEN", open, "CLOSED", closed] => {
            (attacker, open.parse().unwrap(), closed.parse().unwrap())
        }
        _ => panic!("attacker said {line:?}"),
    }
}

/// The daemon's user plus system CPU time so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    let hz: u64 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    Duration::from_millis(ticks * 1000 / hz)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// `tokend get fast` as `uid`, with its exit code and output.
fn get_as(uid: u32, socket: &Path) -> (i32, String) {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args([
            "--clear-groups",
            env!("CARGO_BIN_EXE_tokend"),
            "get",
            "fast",
        ])
        .args(["--timeout", "5", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

async fn token(daemon: &Daemon) -> String {
    let mut request = tonic::Request::new(GetTokenRequest {
        client: "fast".into(),
        min_valid_seconds: 0,
    });
    request.set_timeout(Duration::from_secs(5));
    let mut client = daemon.client().await;
    client
        .get_token(request)
        .await
        .unwrap()
        .into_inner()
        .access_token
}

#[tokio::test]
async fn an_idle_flood_past_the_descriptor_limit_is_shed_and_other_uids_are_served() {
    let idp = provider();
    // 256 descriptors: the 1,100 connections below are beyond it (and beyond systemd's
    // default of 1024). The cap in effect is min(64, 256 - 128 reserved).
    let d = daemon(
        &idp,
        "max_connections = 64\nmax_connections_per_uid = 32",
        &["prlimit", "--nofile=256:256"],
    )
    .await;
    let pid = d.pid();
    let before = token(&d).await;
    let fds_before = open_fds(pid);

    let (_attacker, open, closed) = flood(&d, ATTACKER, 1100);
    assert!(
        open <= 32,
        "{open} of the attacker's connections stay open, over its cap of 32"
    );
    assert_eq!(open + closed, 1100);

    // Not spinning: a busy accept loop would burn a whole core.
    let cpu = cpu_time(pid);
    let wall = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_time(pid) - cpu;
    assert!(
        used < wall.elapsed() / 4,
        "tokend used {used:?} of CPU in {:?} while flooded",
        wall.elapsed()
    );

    // Another uid connects anew and is served at once, as is root.
    let asked = Instant::now();
    let (code, got) = get_as(NEIGHBOUR, &d.socket);
    assert_eq!(code, 0, "uid {NEIGHBOUR} was refused: {got}");
    assert!(!got.is_empty());
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    token(&d).await;

    // A refresh falls due (tokens live 4 s) and succeeds while the flood holds its connections.
    eventually(
        Duration::from_secs(3 * TTL),
        "a refreshed token during the flood",
        || async {
            let now = token(&d).await;
            (now != before).then_some(())
        },
    )
    .await;
    let fds = open_fds(pid);
    assert!(
        fds <= fds_before + 32 + 8,
        "tokend holds {fds} descriptors (before the flood: {fds_before})"
    );
    let log = d.log_text();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(
        log.contains("closing new connections over server.max_connections_per_uid (32)"),
        "{log}"
    );
    assert!(log.contains("max_connections=64"), "{log}");
}

#[tokio::test]
async fn connections_over_the_total_cap_are_closed_at_once_and_their_slots_come_back() {
    let idp = provider();
    let d = daemon(
        &idp,
        "max_connections = 8\nmax_connections_per_uid = 8",
        &[],
    )
    .await;
    // A well-behaved caller connected before the flood keeps its connection.
    let mut early = d.client().await;
    let (attacker, open, closed) = flood(&d, ATTACKER, 50);
    assert_eq!(
        (open, closed),
        (7, 43),
        "one slot is the early caller's, the attacker gets the other seven"
    );
    let mut request = tonic::Request::new(GetTokenRequest {
        client: "fast".into(),
        min_valid_seconds: 0,
    });
    request.set_timeout(Duration::from_secs(5));
    early.get_token(request).await.unwrap();
    assert!(
        d.log_text()
            .contains("closing new connections over server.max_connections (8)")
    );

    // The attacker leaves: its slots are free again.
    drop(attacker);
    eventually(
        Duration::from_secs(5),
        "a new connection served",
        || async {
            let client = tokend::cli::ctl::get(&d.socket, "fast", 0, Duration::from_secs(1)).await;
            client.ok()
        },
    )
    .await;
}

#[tokio::test]
async fn running_out_of_descriptors_pauses_accepting_instead_of_spinning() {
    let idp = provider();
    // The metrics listener's connections are not capped (they are not gRPC callers): enough of
    // them take every descriptor, and accepting on the Unix socket fails with EMFILE.
    let metrics = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    secret_file(dir.path(), "fast.secret", SECRET);
    let clients = format!(
        "[metrics]\nlisten = \"{metrics}\"\n\n[clients.fast]\ntoken_endpoint = \"{}\"\n\
         client_id = \"flood-client\"\nclient_secret_file = \"{{dir}}/fast.secret\"\n",
        idp.token_endpoint
    );
    let options = DaemonOptions {
        server: "socket_mode = \"0666\"",
        wrapper: &["prlimit", "--nofile=256:256"],
        ..DaemonOptions::default()
    };
    let d = Daemon::start_with(dir, &options, &clients).await;
    let pid = d.pid();
    let attacker = flood_to(&d, ATTACKER, 400, &metrics).0;
    eventually(
        Duration::from_secs(10),
        "tokend out of descriptors",
        || async { (open_fds(pid) >= 250).then_some(()) },
    )
    .await;
    // Callers knock: their connections wait in the backlog while tokend cannot accept them
    // (more than one, as a descriptor freed now and then lets one in).
    let _waiting: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&d.socket).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu = cpu_time(pid);
    let wall = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_time(pid) - cpu;
    assert!(
        used < wall.elapsed() / 4,
        "tokend used {used:?} of CPU in {:?} retrying accept",
        wall.elapsed()
    );
    eventually(Duration::from_secs(5), "the EMFILE warning", || async {
        d.log_text()
            .contains("cannot accept connections")
            .then_some(())
    })
    .await;
    assert_eq!(
        d.log_text().matches("cannot accept connections").count(),
        1,
        "warned once: {}",
        d.log_text()
    );
    // Descriptors come back: tokend accepts again. (Its token may be gone: the refresh that
    // fell due could not open the secret file. Only the callers' share is reserved.)
    drop(attacker);
    eventually(Duration::from_secs(10), "a caller served again", || async {
        let mut client = tokend::cli::ctl::connect(&d.socket).await.ok()?;
        let mut request = tonic::Request::new(tokend::proto::ListClientsRequest {});
        request.set_timeout(Duration::from_secs(1));
        client.list_clients(request).await.ok()
    })
    .await;
}

/// Reads until the daemon closes the connection; how long that took, or `None` if it did not
/// within `limit`.
fn closed_within(stream: &mut UnixStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0; 4096];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return None,
            Err(_) => return Some(start.elapsed()),
        }
    }
}

#[tokio::test]
async fn a_connection_that_never_finishes_the_handshake_is_closed() {
    let idp = provider();
    let d = daemon(&idp, "handshake_timeout = \"1s\"", &[]).await;
    let silent = UnixStream::connect(&d.socket).unwrap();
    // The preface and half a SETTINGS frame header, then nothing.
    let mut stalled = UnixStream::connect(&d.socket).unwrap();
    stalled
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00")
        .unwrap();
    let mut complete = UnixStream::connect(&d.socket).unwrap();
    complete
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    for (name, mut stream) in [("silent", silent), ("stalled", stalled)] {
        let after = closed_within(&mut stream, Duration::from_secs(4))
            .unwrap_or_else(|| panic!("the {name} connection is still open after 4 s"));
        assert!(
            after < Duration::from_secs(3),
            "{name}: closed after {after:?}"
        );
    }
    assert_eq!(
        closed_within(&mut complete, Duration::from_millis(1500)),
        None,
        "a connection that finished its handshake is not held to the handshake timeout"
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_a_watch_stream_is_not() {
    let idp = provider();
    let d = daemon(&idp, "idle_timeout = \"2s\"", &[]).await;

    // A raw HTTP/2 connection that makes one request (to a method tokend does not have: it is
    // answered at once) and then stays idle.
    let io = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(io).await.unwrap();
    let driver = tokio::spawn(connection);
    let request = http::Request::post("http://localhost/tokend.v1.Nope/Nope")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    response.await.unwrap();
    let idle_from = Instant::now();

    // A WatchToken stream on another connection, open across several idle timeouts.
    let mut watcher = d.client().await;
    let mut stream = watcher
        .watch_token(WatchTokenRequest {
            client: "fast".into(),
        })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    let watching = tokio::spawn(async move {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(6) {
            match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
                Ok(Ok(Some(_))) | Err(_) => {}
                Ok(other) => return Err(format!("{other:?} after {:?}", start.elapsed())),
            }
        }
        Ok(())
    });

    tokio::time::timeout(Duration::from_secs(6), driver)
        .await
        .expect("the idle connection is still open after 6 s")
        .unwrap()
        .ok();
    let after = idle_from.elapsed();
    assert!(
        after >= Duration::from_millis(1900),
        "closed after {after:?}, before the idle timeout"
    );
    watching
        .await
        .unwrap()
        .expect("the watch stream ended while idle connections were closed");
    // A caller whose idle connection was closed just reconnects.
    let mut request = tonic::Request::new(GetTokenRequest {
        client: "fast".into(),
        min_valid_seconds: 0,
    });
    request.set_timeout(Duration::from_secs(5));
    watcher.get_token(request).await.unwrap();
}

#[tokio::test]
async fn the_stream_cap_is_advertised_and_requests_are_bounded() {
    let idp = provider();
    let d = daemon(&idp, "", &[]).await;
    let io = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let (h2, connection) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(connection);
    let h2 = h2.ready().await.unwrap();
    eventually(
        Duration::from_secs(5),
        "SETTINGS_MAX_CONCURRENT_STREAMS = 128",
        || {
            let max = h2.current_max_send_streams();
            async move { (max == 128).then_some(()) }
        },
    )
    .await;
    // A request of 32 KiB is refused before tokend looks at it...
    let mut client = d.client().await;
    let err = client
        .get_token(GetTokenRequest {
            client: "x".repeat(32 * 1024),
            min_valid_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    // ...while a RefreshToken carrying a 12 KiB access token (a JWT with many claims) is not.
    let reply = client
        .refresh_token(RefreshTokenRequest {
            client: "fast".into(),
            rejected_access_token: "a".repeat(12 * 1024),
        })
        .await;
    assert!(
        reply
            .as_ref()
            .is_ok_and(|t| !t.get_ref().access_token.is_empty()),
        "{reply:?}"
    );
}

#[tokio::test]
async fn a_caller_that_makes_tokend_reset_stream_after_stream_is_cut_off() {
    let idp = provider();
    let d = daemon(&idp, "", &[]).await;
    let io = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let (h2, connection) = h2::client::handshake(io).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    // Each request announces a body it never sends: h2 on tokend's side resets the stream for
    // the protocol error (the work behind "MadeYouReset").
    let mut resets = 0;
    for _ in 0..1100 {
        let request = http::Request::post("http://localhost/tokend.v1.TokenService/GetToken")
            .header("content-type", "application/grpc")
            .header("content-length", "5")
            .body(())
            .unwrap();
        let Ok((response, _)) = h2.send_request(request, true) else {
            break;
        };
        if response.await.is_err() {
            resets += 1;
        }
        match h2.clone().ready().await {
            Ok(ready) => h2 = ready,
            Err(_) => break,
        }
    }
    let end = tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .expect("the connection is still open after 1,100 resets")
        .unwrap();
    let err = end.expect_err("tokend ends the connection");
    assert!(
        err.is_go_away() && err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM),
        "{err:?}"
    );
    // hyper's limit of 1024, and the stream that went over it.
    assert!(resets <= 1025, "{resets} streams reset");
    token(&d).await;
}
